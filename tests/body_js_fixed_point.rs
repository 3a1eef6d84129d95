//! The webhook body is a fixed point of JavaScript's `JSON.stringify(JSON.parse(body))`, and our
//! `X-Webhook-Signature` equals what a Node receiver computes — checked by real Node.
//!
//! Several hundred producer payloads (hand-written edge cases plus a deterministic, seeded
//! generator of JSON *text*) are parsed with serde_json, turned into bodies with
//! [`build_body`] and signed with [`sign`]; then ONE `node` process (`tests/support/js_verify.js`)
//! checks every case. The test requires Node (set `NODE=/path/to/node` to choose one) and fails,
//! never skips, when it is missing.

use std::io::Write;
use std::process::{Command, Stdio};

use mgpass_webhooks::body::{build_body, inexact_numbers};
use mgpass_webhooks::signing::sign;
use serde_json::{Map, Value};

struct Case {
    name: String,
    event_type: String,
    /// The data object as JSON text, as the rewards service would produce it.
    data: String,
    timestamp: String,
    secret: String,
}

const SECRETS: &[&str] = &[
    "whsec_3f9a8b7c6d5e4f3a2b1c",
    "sécrèt-clé",
    "秘密の鍵",
    "🔑🔐 key",
    "",
    "quote\"back\\slash\nnewline",
    "nul\u{0}inside",
    " surrounding whitespace is part of the key\t",
    // Longer than the SHA-256 block (64 bytes): HMAC hashes the key first.
    "a-very-long-secret-that-exceeds-the-sha256-block-size-of-64-bytes-ü-😀-0123456789",
];

const EVENT_TYPES: &[&str] = &[
    "points.earned",
    "reward.redeemed",
    "tier.changed",
    "事件.测试",
    "emoji.😀",
    "quote\"and\\backslash",
    "control\u{1}\u{1f}\n",
    "",
];

const TIMESTAMPS: &[&str] = &[
    "2025-01-15T10:30:00.000Z",
    "1970-01-01T00:00:00.000Z",
    "2038-01-19T03:14:08.999Z",
];

/// The special numbers, as producer text.
const SPECIAL_NUMBERS: &[&str] = &[
    "150.0",
    "1e21",
    "1E21",
    "1e+21",
    "1e20",
    "1e-7",
    "-0",
    "-0.0",
    "5e-7",
    "0.1",
    "0.000001",
    "1.7976931348623157e308",
    "5e-324",
    "4.9406564584124654e-324",
    "2.2250738585072014e-308",
    "2.2250738585072011e-308",
    "2.5e-8",
    "123456789012345680000",
    "9007199254740992",
    "9007199254740993",
    "-9007199254740993",
    "9007199254740993.0",
    "12345678901234567890",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890",
    "1e-400",
    "-1e-400",
    "0e400",
    "1.00000000000000011102230246251565404236316680908203125",
    "1.00000000000000011102230246251565404236316680908203126",
    "0.30000000000000004",
    "1E+2",
    "1e007",
    "-1.5e-5",
    "100",
    "0",
];

fn hand_written_cases() -> Vec<(String, String)> {
    let mut cases: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, data: String| cases.push((name.to_owned(), data));

    let all_numbers: Vec<String> = SPECIAL_NUMBERS
        .iter()
        .enumerate()
        .map(|(i, n)| format!("\"n{i}\":{n}"))
        .collect();
    add(
        "all special numbers",
        format!("{{{}}}", all_numbers.join(",")),
    );
    add(
        "special numbers in an array",
        format!("{{\"a\":[{}]}}", SPECIAL_NUMBERS.join(" , ")),
    );
    for n in SPECIAL_NUMBERS {
        add(&format!("number {n}"), format!("{{\"v\":{n}}}"));
    }

    add(
        "unicode",
        concat!(
            r#"{"emoji":"😀👍🏽👨‍👩‍👧","cjk":"中文字符 日本語 한국어","combining":"e\u0301 a\u0308 ","#,
            r#""seps":"\u2028\u2029","#,
            "\"raw_seps\":\"\u{2028}|\u{2029}\",\"del\":\"\\u007f|\u{7f}\",",
            r#""bom":"\ufeff","#,
            r#""max":"\udbff\udfff 􏿿","rtl":"مرحبا ‏שלום","zwj":"a\u200db","replacement":"\ufffd�"}"#
        )
        .to_owned(),
    );
    let controls: String = (0u32..0x20).map(|c| format!("\\u{c:04x}")).collect();
    let controls_upper: String = (0u32..0x20).map(|c| format!("\\u{c:04X}")).collect();
    add(
        "all control characters",
        format!(r#"{{"c":"{controls}","C":"{controls_upper}","short":"\b\f\n\r\t\"\\\/"}}"#),
    );
    let control_keys: Vec<String> = (0u32..0x20)
        .map(|c| format!(r#""k\u{c:04x}":{c}"#))
        .collect();
    add(
        "control characters in keys",
        format!("{{{}}}", control_keys.join(",")),
    );
    add(
        "escaped surrogate pairs",
        r#"{"s":"\ud83d\ude00","S":"\uD83D\uDE00 \uDBFF\uDFFF \ud800\udc00","in key \ud83d\ude00":1}"#
            .to_owned(),
    );
    add(
        "escaped solidus",
        r#"{"url":"https:\/\/example.com\/a\/b","\/k":"\/"}"#.to_owned(),
    );
    add(
        "integer-like keys",
        r#"{"b":1,"10":2,"2":3,"a":4,"01":5,"-1":6,"4294967294":7,"4294967295":8,"1.0":9}"#
            .to_owned(),
    );
    add(
        "more integer-like keys",
        r#"{"z":0,"0":1,"-0":2,"+1":3," 1":4,"1e3":5,"4294967296":6,"00":7,"\u0031\u0030":8,"1":9,"99999999999":10}"#
            .to_owned(),
    );
    add(
        "nested integer-like keys",
        r#"{"x":{"3":"c","1":"a","2":"b"},"arr":[{"5":5,"y":"y","4":4}]}"#.to_owned(),
    );
    add("duplicate keys", r#"{"a":1,"b":2,"a":3}"#.to_owned());
    add(
        "duplicate keys, escaped spelling and index keys",
        r#"{"a":1,"1":"one","\u0061":2,"b":{"c":1,"c":{"d":2}},"1":"uno","0":0}"#.to_owned(),
    );
    add(
        "__proto__ and friends",
        r#"{"__proto__":{"polluted":true},"constructor":{"prototype":1},"toString":"x","hasOwnProperty":null}"#
            .to_owned(),
    );
    add("empty object", "{}".to_owned());
    add(
        "empty containers",
        r#"{"o":{},"a":[],"aa":[[],[{}]],"s":"","":""}"#.to_owned(),
    );
    add(
        "pretty-printed input",
        "{\n  \"user_id\" : \"u_1\" ,\n\t\"points\" :\r\n 150.0 ,\n  \"tags\" : [ \"a\" , \"b\" ]\n}\n"
            .to_owned(),
    );
    add(
        "literals",
        r#"{"t":true,"f":false,"n":null,"a":[true,false,null]}"#.to_owned(),
    );
    for depth in [50, 99] {
        let open: String = (0..depth)
            .map(|i| if i % 2 == 0 { "[" } else { "{\"k\":" })
            .collect();
        let close: String = (0..depth)
            .rev()
            .map(|i| if i % 2 == 0 { "]" } else { "}" })
            .collect();
        add(
            &format!("nesting {depth} levels"),
            format!("{{\"deep\":{open}1.50{close}}}"),
        );
    }
    add(
        "long strings",
        format!(
            r#"{{"ascii":"{}","mixed":"{}","escapes":"{}"}}"#,
            "abcdefghij".repeat(50),
            "abc\\\"defgh\\u0001ij€😀".repeat(30),
            "\\n".repeat(100)
        ),
    );
    add(
        "typical rewards payload",
        r#"{"user_id":"usr_8f2k","points":150.0,"balance":12500,"rate":0.1,"reason":"Purchase at Café ☕","order":{"id":"ord_1","total":42.50,"currency":"EUR"},"tags":["promo","2x"]}"#
            .to_owned(),
    );
    cases
}

/// SplitMix64: a tiny, fixed, seedable generator so the cases are identical on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())]
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    fn digits(&mut self, out: &mut String, count: u64, leading_nonzero: bool) {
        for i in 0..count {
            let d = if i == 0 && leading_nonzero {
                1 + self.below(9)
            } else {
                self.below(10)
            };
            out.push(char::from(b'0' + d as u8));
        }
    }
}

/// Generates producer-style JSON text: varied number spellings, escapes, raw Unicode, integer-like
/// and duplicate keys, optional whitespace.
struct Generator {
    rng: Rng,
}

const RAW_CHARS: &[&str] = &[
    "é",
    "中",
    "😀",
    "👍🏽",
    "e\u{301}",
    "\u{2028}",
    "\u{2029}",
    "\u{7f}",
    "\u{feff}",
    "\u{fffd}",
    "\u{10ffff}",
    "Ω",
    "ﷺ",
    "\u{200d}",
    "/",
    "'",
    "<script>",
    "&amp;",
    " ",
    "\u{85}",
    "\u{a0}",
];

const KEYS: &[&str] = &[
    "id",
    "user_id",
    "points",
    "amount",
    "tier",
    "a",
    "b",
    "__proto__",
    "constructor",
    "toString",
    "",
    "ключ",
    "キー",
    "😀",
    "0",
    "1",
    "2",
    "10",
    "01",
    "-1",
    "1.0",
    "4294967294",
    "4294967295",
    "4294967296",
    "007",
    "1e3",
    "\\u0031",
    "\\u0061",
];

impl Generator {
    fn ws(&mut self, out: &mut String) {
        if self.rng.below(5) == 0 {
            out.push_str(self.rng.pick(&[" ", "\n", "\t", "\r\n  ", "  "]));
        }
    }

    fn value(&mut self, out: &mut String, depth: u32) {
        let kind = if depth >= 5 {
            self.rng.below(5)
        } else {
            self.rng.below(9)
        };
        match kind {
            0 | 3 => self.number(out),
            1 | 4 => self.string(out),
            2 => out.push_str(self.rng.pick(&["null", "true", "false"])),
            5 | 6 => self.array(out, depth + 1),
            _ => self.object(out, depth + 1),
        }
    }

    fn array(&mut self, out: &mut String, depth: u32) {
        out.push('[');
        let len = self.rng.below(6);
        for i in 0..len {
            if i > 0 {
                out.push(',');
            }
            self.ws(out);
            self.value(out, depth);
            self.ws(out);
        }
        out.push(']');
    }

    fn object(&mut self, out: &mut String, depth: u32) {
        out.push('{');
        // The top-level data object is never empty (hand-written cases cover `{}`).
        let len = self.rng.below(7) + u64::from(depth == 0);
        let mut used: Vec<String> = Vec::new();
        for i in 0..len {
            if i > 0 {
                out.push(',');
            }
            self.ws(out);
            let key = if !used.is_empty() && self.rng.below(6) == 0 {
                used[self.rng.index(used.len())].clone() // a duplicate key
            } else {
                let mut key = String::new();
                match self.rng.below(4) {
                    0 | 1 => key.push_str(&format!("\"{}\"", self.rng.pick(KEYS))),
                    2 => key.push_str(&format!("\"{}\"", self.rng.next() % (1 << 33))),
                    _ => self.string(&mut key),
                }
                key
            };
            out.push_str(&key);
            used.push(key);
            self.ws(out);
            out.push(':');
            self.ws(out);
            self.value(out, depth);
            self.ws(out);
        }
        out.push('}');
    }

    fn number(&mut self, out: &mut String) {
        let rng = &mut self.rng;
        match rng.below(11) {
            0 => out.push_str(&(rng.below(2001) as i64 - 1000).to_string()),
            1 => out.push_str(&rng.next().to_string()),
            2 => out.push_str(&(rng.next() as i64).to_string()),
            3 => {
                let n = (1i64 << 53) + rng.below(7) as i64 - 3;
                out.push_str(&if rng.below(2) == 0 { n } else { -n }.to_string());
            }
            4 => {
                if rng.below(2) == 0 {
                    out.push('-');
                }
                if rng.below(3) == 0 {
                    out.push('0');
                } else {
                    let len = 1 + rng.below(20);
                    rng.digits(out, len, true);
                }
                out.push('.');
                let len = 1 + rng.below(20);
                rng.digits(out, len, false);
            }
            5 => {
                if rng.below(2) == 0 {
                    out.push('-');
                }
                let len = 1 + rng.below(3);
                rng.digits(out, len, true);
                if rng.below(2) == 0 {
                    out.push('.');
                    let len = 1 + rng.below(17);
                    rng.digits(out, len, false);
                }
                out.push_str(rng.pick(&["e", "E"]));
                let exponent = if rng.below(2) == 0 {
                    out.push_str(rng.pick(&["", "+"]));
                    rng.below(300)
                } else {
                    out.push('-');
                    rng.below(400)
                };
                out.push_str(&format!(
                    "{exponent:0width$}",
                    width = 1 + rng.below(3) as usize
                ));
            }
            6 | 7 => {
                let f = loop {
                    let f = f64::from_bits(rng.next());
                    if f.is_finite() {
                        break f;
                    }
                };
                if rng.below(2) == 0 {
                    out.push_str(&format!("{f:?}"));
                } else {
                    out.push_str(&format!("{f:e}"));
                }
            }
            8 => {
                let len = 20 + rng.below(12);
                if rng.below(2) == 0 {
                    out.push('-');
                }
                rng.digits(out, len, true);
            }
            9 => {
                // Small decimals and money amounts, the common case.
                out.push_str(&format!("{}.{:02}", rng.below(100_000), rng.below(100)));
            }
            _ => out.push_str(rng.pick(SPECIAL_NUMBERS)),
        }
    }

    fn string(&mut self, out: &mut String) {
        out.push('"');
        let pieces = self.rng.below(12);
        for _ in 0..pieces {
            let rng = &mut self.rng;
            match rng.below(9) {
                0 => {
                    let len = 1 + rng.below(8);
                    for _ in 0..len {
                        let c = char::from(0x20 + rng.below(0x5f) as u8);
                        match c {
                            '"' => out.push_str("\\\""),
                            '\\' => out.push_str("\\\\"),
                            c => out.push(c),
                        }
                    }
                }
                1 => out.push_str(
                    rng.pick(&["\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"]),
                ),
                2 => {
                    let c = rng.below(0x20) as u32;
                    out.push_str(&hex_escape(rng, c));
                }
                3 => {
                    let c = loop {
                        let c = rng.below(0x1_0000) as u32;
                        if !(0xd800..0xe000).contains(&c) {
                            break c;
                        }
                    };
                    out.push_str(&hex_escape(rng, c));
                }
                4 => {
                    let c = 0x1_0000 + rng.below(0x10_0000) as u32;
                    let high = 0xd800 + ((c - 0x1_0000) >> 10);
                    let low = 0xdc00 + ((c - 0x1_0000) & 0x3ff);
                    out.push_str(&hex_escape(rng, high));
                    out.push_str(&hex_escape(rng, low));
                }
                5 => out.push_str(rng.pick(RAW_CHARS)),
                6 => {
                    let c = loop {
                        let c = 0x7f + rng.below(0x10_ffff - 0x7f) as u32;
                        if let Some(c) = char::from_u32(c) {
                            break c;
                        }
                    };
                    out.push(c);
                }
                7 => {
                    let len = 20 + rng.below(60);
                    for _ in 0..len {
                        out.push(char::from(b'a' + rng.below(26) as u8));
                    }
                }
                _ => {
                    out.push_str(rng.pick(&["\u{2028}", "\\u2028", "\\u2029", "\u{7f}", "\\u007f"]))
                }
            }
        }
        out.push('"');
    }
}

/// `\uXXXX` with randomly upper- or lower-case hex digits.
fn hex_escape(rng: &mut Rng, c: u32) -> String {
    if rng.below(2) == 0 {
        format!("\\u{c:04x}")
    } else {
        format!("\\u{c:04X}")
    }
}

fn all_cases() -> Vec<Case> {
    let mut inputs = hand_written_cases();
    let mut generator = Generator {
        rng: Rng(0x6d67_5061_7373_2025),
    };
    for i in 0..400 {
        let mut text = String::new();
        generator.object(&mut text, 0);
        inputs.push((format!("generated #{i}"), text));
    }
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, (name, data))| Case {
            name,
            event_type: EVENT_TYPES[i % EVENT_TYPES.len()].to_owned(),
            data,
            timestamp: TIMESTAMPS[i % TIMESTAMPS.len()].to_owned(),
            secret: SECRETS[i % SECRETS.len()].to_owned(),
        })
        .collect()
}

fn parse_data(case: &Case) -> Map<String, Value> {
    serde_json::from_str(&case.data).unwrap_or_else(|e| {
        panic!(
            "case {:?}: input is not a JSON object: {e}\n{}",
            case.name, case.data
        )
    })
}

/// Runs `tests/support/js_verify.js` in one `node` process over all `lines`; returns its stdout and
/// whether it exited successfully. Panics if Node cannot be started.
fn run_node(lines: String) -> (String, String, bool) {
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/js_verify.js");
    let mut child = Command::new(&node)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "THIS TEST REQUIRES NODE.JS and could not start `{node}`: {e}. It checks the webhook \
                 body against real JavaScript and never skips: install Node.js (>= 18) on PATH or \
                 set NODE=/path/to/node."
            )
        });
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Write from another thread so a chatty Node cannot deadlock us on a full stdout pipe.
    let writer = std::thread::spawn(move || stdin.write_all(lines.as_bytes()));
    let output = child.wait_with_output().expect("waiting for node");
    writer
        .join()
        .expect("stdin writer thread")
        .expect("writing cases to node's stdin");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.success(),
    )
}

#[test]
fn bodies_are_js_fixed_points_and_signatures_verify_in_node() {
    let cases = all_cases();
    assert!(cases.len() >= 400, "expected several hundred cases");
    let mut lines = String::new();
    for (id, case) in cases.iter().enumerate() {
        let data = parse_data(case);
        let body = build_body(&case.event_type, &data, &case.timestamp);
        let signature = sign(case.secret.as_bytes(), &body);
        let line = serde_json::json!({
            "id": id,
            "name": case.name,
            "body_hex": hex::encode(&body),
            "signature": signature,
            "secret_hex": hex::encode(case.secret.as_bytes()),
            "event_type_hex": hex::encode(case.event_type.as_bytes()),
            "data_hex": hex::encode(case.data.as_bytes()),
            "timestamp": case.timestamp,
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }

    let (stdout, stderr, success) = run_node(lines);
    let summary = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("SUMMARY "))
        .unwrap_or_else(|| {
            panic!("node printed no SUMMARY line\nstdout:\n{stdout}\nstderr:\n{stderr}")
        });
    let field = |name: &str| -> usize {
        summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("malformed SUMMARY line: {summary}"))
    };
    let (checked, failed) = (field("checked"), field("failed"));
    assert!(
        success && failed == 0,
        "{failed} of {checked} webhook bodies failed the Node check:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(
        checked,
        cases.len(),
        "node checked {checked} cases but {} were sent\n{stdout}",
        cases.len()
    );
    println!("node verified {checked} webhook bodies: {summary}");
}

#[test]
fn unrepresentable_integers_are_sent_as_javascript_reads_them_and_reported() {
    let data: Map<String, Value> = serde_json::from_str(
        r#"{"big":12345678901234567890,"odd":9007199254740993,"safe":9007199254740992,"f":0.1}"#,
    )
    .unwrap();
    let body = String::from_utf8(build_body(
        "points.earned",
        &data,
        "2025-01-15T10:30:00.000Z",
    ))
    .unwrap();
    assert_eq!(
        body,
        r#"{"event_type":"points.earned","data":{"big":12345678901234567000,"odd":9007199254740992,"safe":9007199254740992,"f":0.1},"timestamp":"2025-01-15T10:30:00.000Z"}"#
    );
    assert!(body.contains("12345678901234567000"));
    assert_eq!(inexact_numbers(&Value::Object(data)), 2);
}

#[test]
fn node_agrees_on_the_unrepresentable_integer_body() {
    let data: Map<String, Value> =
        serde_json::from_str(r#"{"big":12345678901234567890,"odd":9007199254740993}"#).unwrap();
    let body = build_body("points.earned", &data, "2025-01-15T10:30:00.000Z");
    let secret = "sécrèt";
    let line = serde_json::json!({
        "id": 0,
        "name": "unrepresentable integers",
        "body_hex": hex::encode(&body),
        "signature": sign(secret.as_bytes(), &body),
        "secret_hex": hex::encode(secret.as_bytes()),
    });
    let (stdout, stderr, success) = run_node(format!("{line}\n"));
    assert!(
        success && stdout.contains("SUMMARY checked=1 passed=1 failed=0"),
        "node rejected the body:\n{stdout}\n{stderr}"
    );
}
