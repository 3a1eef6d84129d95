//! The canonical webhook body: the exact bytes we POST and sign.
//!
//! This module owns the serialisation of a webhook body and guarantees that the bytes it produces
//! are a **fixed point of JavaScript's `JSON.stringify(JSON.parse(body))`**. Receivers (Node/Express
//! being the reference) verify `X-Webhook-Signature` as
//! `HMAC-SHA256(secret, JSON.stringify(req.body))` where `req.body = JSON.parse(<our bytes>)`, so a
//! signature over our bytes only verifies if re-serialising the parsed body in JavaScript gives back
//! exactly those bytes. [`write_js_json`] therefore serialises a [`serde_json::Value`] exactly as
//! ECMAScript `JSON.stringify` serialises `JSON.parse(<the JSON text the value was parsed from>)`:
//!
//! * **Numbers.** `JSON.parse` turns every number into an IEEE-754 double (round to nearest), and
//!   `JSON.stringify` prints it with `Number::toString` (shortest round-trip digits, `1e+21`,
//!   `5e-7`, `-0` → `0`, `150.0` → `150`). We convert serde_json integers with `as f64` (the same
//!   round-to-nearest), floats are already doubles (the `float_roundtrip` feature makes serde_json's
//!   decimal parsing correctly rounded, like `JSON.parse`), and we format with `ryu_js`, an
//!   ECMAScript-conformant `Number::toString`. Integral values with `|n| <= 2^53` (integers and
//!   doubles such as `150.0`) take an exact integer-printing fast path producing the same digits.
//! * **Strings** (values and keys) are escaped as `JSON.stringify` does: `"` → `\"`, `\` → `\\`,
//!   `\b \f \n \r \t`, every other code point below U+0020 as `\u00xx` (lowercase hex); everything
//!   else — DEL, `/`, U+2028/U+2029, all non-ASCII and astral characters — is emitted as raw UTF-8.
//!   `JSON.stringify` would escape a *lone* surrogate as `\udxxx`, but none can reach us: a Rust
//!   `String` is valid UTF-8, and serde_json rejects an escaped lone surrogate (`"\ud83d"`, `"\ude00"`)
//!   while parsing, so such input is rejected upstream as a parse error.
//! * **Objects** use JavaScript's own-property order: keys that are ECMAScript *array indices*
//!   (the canonical decimal form of an integer `0 <= n <= 2^32 - 2`, so not `"01"`, `"-1"`, `"1.0"`
//!   or `"4294967295"`) first, in ascending numeric order, then every other key in insertion order.
//!   serde_json's `preserve_order` map keeps insertion order, and on a duplicate key it keeps the
//!   first position with the last value — exactly what `JSON.parse` does (`{"a":1,"b":2,"a":3}` →
//!   `{"a":3,"b":2}`). A `__proto__` key is an ordinary own property for `JSON.parse` and is
//!   serialised like any other key.
//! * **Arrays, `true`, `false`, `null`** as usual. No whitespace anywhere.
//!
//! # Integers JavaScript cannot represent
//!
//! An integer with `|n| > 2^53` that is not exactly a double (e.g. `9007199254740993`,
//! `12345678901234567890`) cannot survive `JSON.parse` on the receiver's side. **Decision:** we send
//! what `JSON.parse` would have produced anyway — the nearest double, formatted as JavaScript
//! formats it (`9007199254740993` → `9007199254740992`, `12345678901234567890` →
//! `12345678901234567000`) — because that is the only body a receiver can verify. The value the
//! receiver sees is the same as if we had forwarded the original digits. Callers use
//! [`inexact_numbers`] to log/count such payloads. Limitation: integers outside the `i64`/`u64`
//! range are already turned into doubles by serde_json while parsing, so they are serialised
//! correctly but cannot be detected (and are not counted).
//!
//! # Input rejected upstream
//!
//! serde_json refuses some JSON that `JSON.parse` accepts; such events never reach this module:
//! numbers overflowing a double (`1e400` → serde_json error "number out of range", where
//! `JSON.parse` would give `Infinity`, serialised as `null`) and escaped lone surrogates (errors
//! "lone leading surrogate in hex escape" / "unexpected end of hex escape"). A non-finite number
//! cannot be stored in a [`serde_json::Number`]; should one ever appear it would be written as
//! `null`, as `JSON.stringify` does.
//!
//! # Recursion
//!
//! Serialisation recurses once per nesting level. serde_json's parser refuses input nested 128 or
//! more levels deep ("recursion limit exceeded"; `JSON.parse` has no such limit), so values parsed
//! from untrusted text cannot overflow the stack here. Values built programmatically are trusted
//! and assumed shallow.

use serde_json::{Map, Number, Value};

/// Largest integer magnitude below which every integer is exactly a double, and printed by
/// `Number::toString` as its plain decimal digits.
const MAX_SAFE: u64 = 1 << 53;

/// Serialises `value` exactly as JavaScript's `JSON.stringify(JSON.parse(text))` would, where `text`
/// is the JSON that `value` was parsed from. Appends to `out`. See the module documentation for the
/// rules and guarantees.
pub fn write_js_json(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_js_number(out, n),
        Value::String(s) => write_js_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            let mut first = true;
            for item in items {
                if !first {
                    out.push(b',');
                }
                first = false;
                write_js_json(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_js_object(out, map),
    }
}

/// Builds the exact webhook body
/// `{"event_type":<string>,"data":<object>,"timestamp":<string>}` (these three keys, in this order,
/// compact), serialised as described in the module documentation. `timestamp` is written verbatim
/// as a JSON string, so the caller passes it already normalised (e.g. `2025-01-15T10:30:00.000Z`).
pub fn build_body(event_type: &str, data: &Map<String, Value>, timestamp: &str) -> Vec<u8> {
    // `{"event_type":` + `,"data":` + `,"timestamp":` + `}` + 4 quotes = 40 bytes.
    const FRAME: usize = 40;
    let mut out =
        Vec::with_capacity(FRAME + event_type.len() + timestamp.len() + object_size_hint(data));
    out.extend_from_slice(b"{\"event_type\":");
    write_js_string(&mut out, event_type);
    out.extend_from_slice(b",\"data\":");
    write_js_object(&mut out, data);
    out.extend_from_slice(b",\"timestamp\":");
    write_js_string(&mut out, timestamp);
    out.push(b'}');
    out
}

/// Counts the numbers in `value` that JavaScript cannot represent exactly: integers (with
/// `|n| > 2^53`) that do not round-trip through a double. Their body carries the nearest double
/// instead (see the module documentation); callers log/count a non-zero result. Integers beyond the
/// `i64`/`u64` range were already rounded by serde_json while parsing and are not counted.
pub fn inexact_numbers(value: &Value) -> usize {
    match value {
        Value::Number(n) => usize::from(!number_is_exact(n)),
        Value::Array(items) => items.iter().map(inexact_numbers).sum(),
        Value::Object(map) => map.values().map(inexact_numbers).sum(),
        Value::Null | Value::Bool(_) | Value::String(_) => 0,
    }
}

fn number_is_exact(n: &Number) -> bool {
    // `f as i128` is exact for every integral double below 2^127, and `as f64` rounds to nearest,
    // so comparing in i128 avoids the saturation of `as u64` (u64::MAX as f64 == 2^64).
    if let Some(u) = n.as_u64() {
        u <= MAX_SAFE || (u as f64) as i128 == i128::from(u)
    } else if let Some(i) = n.as_i64() {
        i.unsigned_abs() <= MAX_SAFE || (i as f64) as i128 == i128::from(i)
    } else {
        true
    }
}

/// Writes a JSON string literal with `JSON.stringify`'s escaping (see the module documentation).
pub fn write_js_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    // Jump from one byte needing an escape to the next, copying the runs in between whole.
    let mut start = 0;
    while let Some(pos) = find_escape(bytes, start) {
        out.extend_from_slice(&bytes[start..pos]);
        write_escape(out, bytes[pos]);
        start = pos + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// What follows the backslash for each byte: 0 = copied raw, `u` = `\u00xx`, else that letter.
/// Only bytes below 0x20, `"` and `\` are escaped; in particular every byte of a multi-byte UTF-8
/// sequence (>= 0x80) is copied raw.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// The position of the first byte at or after `from` that needs an escape.
#[inline(always)]
fn find_escape(bytes: &[u8], mut from: usize) -> Option<usize> {
    // Eight bytes at a time (SWAR) ...
    while let Some(chunk) = bytes.get(from..from + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("a chunk of 8 bytes"));
        let mask = escape_mask(word);
        if mask != 0 {
            // Little-endian load: the lowest flagged byte is the first one in the string.
            return Some(from + (mask.trailing_zeros() / 8) as usize);
        }
        from += 8;
    }
    // ... then the last few one by one.
    bytes[from..]
        .iter()
        .position(|&b| ESCAPE[usize::from(b)] != 0)
        .map(|offset| from + offset)
}

/// Sets the high bit of each byte of `word` that is `< 0x20`, `"` or `\` (SWAR). Borrows can also
/// flag bytes *above* a flagged one, never below it, so the lowest flagged byte is always exact —
/// which is all [`find_escape`] uses.
#[inline(always)]
fn escape_mask(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (control | quote | backslash) & HIGHS
}

#[inline(always)]
fn write_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match ESCAPE[usize::from(b)] {
        b'u' => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
        letter => out.extend_from_slice(&[b'\\', letter]),
    }
}

fn write_js_number(out: &mut Vec<u8>, n: &Number) {
    if let Some(u) = n.as_u64() {
        if u <= MAX_SAFE {
            write_decimal(out, u);
        } else {
            write_f64(out, u as f64);
        }
    } else if let Some(i) = n.as_i64() {
        // serde_json stores non-negative integers as u64, so `i` is negative here.
        if i.unsigned_abs() <= MAX_SAFE {
            if i < 0 {
                out.push(b'-');
            }
            write_decimal(out, i.unsigned_abs());
        } else {
            write_f64(out, i as f64);
        }
    } else if let Some(f) = n.as_f64() {
        write_f64(out, f);
    } else {
        // Unreachable without serde_json's `arbitrary_precision`; JSON.stringify's answer for a
        // number it cannot print would be `null`.
        out.extend_from_slice(b"null");
    }
}

/// `Number::toString` for a double; non-finite values become `null` like in `JSON.stringify`.
fn write_f64(out: &mut Vec<u8>, f: f64) {
    if f.fract() == 0.0 && f.abs() <= MAX_SAFE as f64 {
        // Fast path for integral doubles such as `150.0` (also turns `-0.0` into `0`).
        if f < 0.0 {
            out.push(b'-');
        }
        write_decimal(out, f.abs() as u64);
    } else if f.is_finite() {
        let mut buffer = ryu_js::Buffer::new();
        out.extend_from_slice(buffer.format_finite(f).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Plain decimal digits of `n` (what `Number::toString` prints for an integer `<= 2^53`).
fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut pos = digits.len();
    loop {
        pos -= 1;
        digits[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[pos..]);
}

fn write_js_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'{');
    if map.keys().any(|key| array_index(key).is_some()) {
        // Rare: array-index keys first in ascending numeric order, then the rest in insertion
        // order. Distinct canonical keys have distinct indices, so the sort order is total.
        let mut indexed: Vec<(u32, &String, &Value)> = map
            .iter()
            .filter_map(|(key, value)| array_index(key).map(|index| (index, key, value)))
            .collect();
        indexed.sort_unstable_by_key(|&(index, _, _)| index);
        let others = map.iter().filter(|(key, _)| array_index(key).is_none());
        let entries = indexed
            .into_iter()
            .map(|(_, key, value)| (key, value))
            .chain(others);
        write_members(out, entries);
    } else {
        write_members(out, map.iter());
    }
    out.push(b'}');
}

fn write_members<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a String, &'a Value)>) {
    let mut first = true;
    for (key, value) in entries {
        if !first {
            out.push(b',');
        }
        first = false;
        write_js_string(out, key);
        out.push(b':');
        write_js_json(out, value);
    }
}

/// The ECMAScript array index a property key denotes: the canonical decimal string (no sign, no
/// leading zero except `"0"` itself) of an integer `0 <= n <= 2^32 - 2`.
fn array_index(key: &str) -> Option<u32> {
    let bytes = key.as_bytes();
    match bytes {
        [] => None,
        [b'0'] => Some(0),
        [b'1'..=b'9', rest @ ..] if rest.len() <= 9 && rest.iter().all(u8::is_ascii_digit) => {
            let n = bytes
                .iter()
                .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
            u32::try_from(n).ok().filter(|&n| n != u32::MAX)
        }
        _ => None,
    }
}

/// A cheap, shallow estimate of the serialised size of an object, used to pre-size the body
/// buffer: exact for top-level keys and strings, a guess for numbers and nested containers (the
/// buffer still grows if needed). Deliberately not recursive: a full walk costs about as much as
/// the reallocations it would save.
fn object_size_hint(map: &Map<String, Value>) -> usize {
    2 + map
        .iter()
        .map(|(key, value)| {
            key.len()
                + 4
                + match value {
                    Value::Null | Value::Bool(_) => 5,
                    Value::Number(_) => 8,
                    Value::String(s) => s.len() + 2,
                    Value::Array(items) => 2 + 24 * items.len(),
                    Value::Object(map) => 2 + 32 * map.len(),
                }
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn js(value: &Value) -> String {
        let mut out = Vec::new();
        write_js_json(&mut out, value);
        String::from_utf8(out).expect("output is UTF-8")
    }

    fn js_of_text(text: &str) -> String {
        js(&serde_json::from_str(text).expect("valid JSON"))
    }

    /// `JSON.stringify(JSON.parse(input))` in Node 20, for each input.
    #[test]
    fn numbers_match_node() {
        let cases = [
            ("150.0", "150"),
            ("150", "150"),
            ("1e21", "1e+21"),
            ("1E21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("100000000000000000000", "100000000000000000000"),
            ("5e-7", "5e-7"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("0", "0"),
            ("1e-7", "1e-7"),
            ("0.000001", "0.000001"),
            ("0.0000001234", "1.234e-7"),
            ("123e-20", "1.23e-18"),
            ("0.1", "0.1"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("5e-324", "5e-324"),
            ("2.5e-8", "2.5e-8"),
            ("1e-400", "0"),
            ("-1e-400", "0"),
            ("123456789012345680000", "123456789012345680000"),
            ("9007199254740992", "9007199254740992"),
            ("-9007199254740992", "-9007199254740992"),
            ("9007199254740993", "9007199254740992"),
            ("1152921504606846976", "1152921504606847000"),
            ("12345678901234567890", "12345678901234567000"),
            ("-9223372036854775808", "-9223372036854776000"),
            ("18446744073709551615", "18446744073709552000"),
            ("18446744073709551616", "18446744073709552000"),
            ("-42", "-42"),
        ];
        for (input, expected) in cases {
            assert_eq!(js_of_text(input), expected, "input {input}");
        }
    }

    #[test]
    fn strings_match_node() {
        let all_controls: String = (0u8..0x20)
            .map(char::from)
            .chain(['"', '\\', '\u{7f}'])
            .collect();
        assert_eq!(
            js(&Value::String(all_controls)),
            concat!(
                r#""\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f"#,
                r#"\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c"#,
                "\\u001d\\u001e\\u001f\\\"\\\\\u{7f}\""
            )
        );
        assert_eq!(
            js_of_text(r#""\ud83d\ude00\/ \u2028\u2029\u007f é 中 😀""#),
            "\"😀/ \u{2028}\u{2029}\u{7f} é 中 😀\""
        );
        assert_eq!(js_of_text(r#""e\u0301 \u00E9""#), "\"e\u{301} é\"");
        assert_eq!(js(&json!("")), r#""""#);
        assert_eq!(
            js(&json!("plain ascii text, long enough for words")),
            r#""plain ascii text, long enough for words""#
        );
        assert_eq!(js(&json!("12345678\"\n")), r#""12345678\"\n""#);
    }

    #[test]
    fn object_key_order_matches_node() {
        // Node: {"0":10,"2":3,"10":2,"4294967294":7,"b":1,"a":4,"01":5,"-1":6,"4294967295":8,
        //        "1.0":9,"-0":11,"+1":12," 1":13,"1e3":14,"4294967296":15}
        let input = r#"{"b":1,"10":2,"2":3,"a":4,"01":5,"-1":6,"4294967294":7,"4294967295":8,"1.0":9,"0":10,"-0":11,"+1":12," 1":13,"1e3":14,"4294967296":15}"#;
        assert_eq!(
            js_of_text(input),
            r#"{"0":10,"2":3,"10":2,"4294967294":7,"b":1,"a":4,"01":5,"-1":6,"4294967295":8,"1.0":9,"-0":11,"+1":12," 1":13,"1e3":14,"4294967296":15}"#
        );
    }

    #[test]
    fn duplicate_keys_keep_first_position_and_last_value_like_node() {
        assert_eq!(js_of_text(r#"{"a":1,"b":2,"a":3}"#), r#"{"a":3,"b":2}"#);
        assert_eq!(js_of_text(r#"{"1":1,"1":2,"0":3}"#), r#"{"0":3,"1":2}"#);
        assert_eq!(
            js_of_text(r#"{"x":{"k":1},"y":0,"x":[2]}"#),
            r#"{"x":[2],"y":0}"#
        );
    }

    #[test]
    fn structure_matches_node() {
        assert_eq!(
            js_of_text(r#"{"__proto__":1,"x":2}"#),
            r#"{"__proto__":1,"x":2}"#
        );
        assert_eq!(js_of_text(" [ ] "), "[]");
        assert_eq!(js_of_text(" { } "), "{}");
        assert_eq!(
            js_of_text(r#" [ true , false , null , { "a" : [ 1 , "x" ] } ] "#),
            r#"[true,false,null,{"a":[1,"x"]}]"#
        );
    }

    #[test]
    fn array_index_follows_ecmascript() {
        for (key, expected) in [
            ("0", Some(0)),
            ("1", Some(1)),
            ("10", Some(10)),
            ("4294967294", Some(4_294_967_294)),
            ("4294967295", None),
            ("4294967296", None),
            ("99999999999", None),
            ("", None),
            ("00", None),
            ("01", None),
            ("-0", None),
            ("-1", None),
            ("+1", None),
            ("1.0", None),
            ("1e3", None),
            (" 1", None),
            ("1 ", None),
            ("١", None),
            ("a", None),
        ] {
            assert_eq!(array_index(key), expected, "key {key:?}");
        }
    }

    #[test]
    fn build_body_frames_the_three_keys() {
        let data: Map<String, Value> =
            serde_json::from_str(r#"{"points":150.0,"2":"two","user":"ü\n"}"#).unwrap();
        let body = build_body("points.earned", &data, "2025-01-15T10:30:00.000Z");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"event_type":"points.earned","data":{"2":"two","points":150,"user":"ü\n"},"timestamp":"2025-01-15T10:30:00.000Z"}"#
        );
        let body = build_body("a\"b", &Map::new(), "t");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"event_type":"a\"b","data":{},"timestamp":"t"}"#
        );
    }

    #[test]
    fn inexact_numbers_counts_unrepresentable_integers() {
        let value: Value = serde_json::from_str(
            r#"{"a":9007199254740992,"b":9007199254740993,"c":[12345678901234567890,-9223372036854775808,
               -9223372036854775807,18446744073709551615,9007199254740994,1.5,0.1,1e300,-9007199254740993],
               "d":"12345678901234567890","e":123456789012345678901234567890}"#,
        )
        .unwrap();
        // b, 12345678901234567890, -9223372036854775807, 18446744073709551615, -9007199254740993.
        // -2^63 and 2^53+2 are exact; the 30-digit integer was already a double (not detectable).
        assert_eq!(inexact_numbers(&value), 5);
        assert_eq!(inexact_numbers(&json!({"ok": [1, 2.5, "x", null]})), 0);
    }

    #[test]
    fn serde_json_rejects_what_the_body_cannot_represent() {
        let overflow = serde_json::from_str::<Value>("[1e400]").unwrap_err();
        assert!(
            overflow.to_string().starts_with("number out of range"),
            "{overflow}"
        );
        let lone = serde_json::from_str::<Value>(r#""\ude00x""#).unwrap_err();
        assert!(
            lone.to_string().starts_with("lone leading surrogate"),
            "{lone}"
        );
        let unpaired = serde_json::from_str::<Value>(r#""\ud83d""#).unwrap_err();
        assert!(
            unpaired
                .to_string()
                .starts_with("unexpected end of hex escape"),
            "{unpaired}"
        );
        let unpaired = serde_json::from_str::<Value>(r#""\ud83dx""#).unwrap_err();
        assert!(unpaired.is_syntax(), "{unpaired}");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let too_deep = serde_json::from_str::<Value>(&deep).unwrap_err();
        assert!(
            too_deep.to_string().starts_with("recursion limit exceeded"),
            "{too_deep}"
        );
    }

    /// Reference escaper: one code point at a time, straight from the ECMAScript spec.
    fn naive_escape(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn fast_escape_equals_reference(s in "(?s)[\\x00-\\x7f\"\\\\\u{80}-\u{10ffff}]{0,40}") {
            let mut out = Vec::new();
            write_js_string(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), naive_escape(&s));
        }

        #[test]
        fn fast_escape_equals_reference_mostly_ascii(s in "[a-z \"\\\\\\x00-\\x1f]{0,64}") {
            let mut out = Vec::new();
            write_js_string(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), naive_escape(&s));
        }

        #[test]
        fn integer_fast_path_equals_ryu_js(n in -(MAX_SAFE as i64)..=(MAX_SAFE as i64)) {
            let mut fast = Vec::new();
            write_js_number(&mut fast, &Number::from(n));
            let mut buffer = ryu_js::Buffer::new();
            prop_assert_eq!(std::str::from_utf8(&fast).unwrap(), buffer.format_finite(n as f64));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5_000, ..ProptestConfig::default() })]

        #[test]
        fn fast_escape_finds_a_rare_escape_at_any_offset(
            s in "[a-zé]{0,30}[\"\\\\\\x00-\\x1f]?[a-z]{0,30}[\\x00-\\x1f]?[a-z]{0,9}"
        ) {
            let mut out = Vec::new();
            write_js_string(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), naive_escape(&s));
        }

        #[test]
        fn f64_formatting_equals_ryu_js(bits in any::<u64>()) {
            let f = f64::from_bits(bits);
            prop_assume!(f.is_finite());
            let mut ours = Vec::new();
            write_f64(&mut ours, f);
            let mut buffer = ryu_js::Buffer::new();
            prop_assert_eq!(std::str::from_utf8(&ours).unwrap(), buffer.format_finite(f));
        }

        #[test]
        fn integral_f64_formatting_equals_ryu_js(n in -(1i64 << 60)..(1i64 << 60)) {
            let f = n as f64;
            let mut ours = Vec::new();
            write_f64(&mut ours, f);
            let mut buffer = ryu_js::Buffer::new();
            prop_assert_eq!(std::str::from_utf8(&ours).unwrap(), buffer.format_finite(f));
        }
    }

    #[test]
    fn f64_fast_path_edges_equal_ryu_js() {
        let mut buffer = ryu_js::Buffer::new();
        let safe = MAX_SAFE as f64;
        for f in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            150.0,
            safe,
            -safe,
            safe + 2.0,
            -safe - 2.0,
            1e21,
            0.5,
            1e300,
        ] {
            let mut ours = Vec::new();
            write_f64(&mut ours, f);
            assert_eq!(
                std::str::from_utf8(&ours).unwrap(),
                buffer.format_finite(f),
                "{f:?}"
            );
        }
        let mut nonfinite = Vec::new();
        write_f64(&mut nonfinite, f64::NAN);
        write_f64(&mut nonfinite, f64::INFINITY);
        write_f64(&mut nonfinite, f64::NEG_INFINITY);
        assert_eq!(nonfinite, b"nullnullnull");
    }

    #[test]
    fn integer_fast_path_edges_equal_ryu_js() {
        let mut buffer = ryu_js::Buffer::new();
        for n in [
            0u64,
            1,
            9,
            10,
            99,
            100,
            999_999_999_999_999,
            MAX_SAFE - 1,
            MAX_SAFE,
        ] {
            let mut fast = Vec::new();
            write_js_number(&mut fast, &Number::from(n));
            assert_eq!(
                std::str::from_utf8(&fast).unwrap(),
                buffer.format_finite(n as f64)
            );
        }
    }
}
