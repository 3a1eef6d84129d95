//! The observability files against the real tools: a real Prometheus (Debian's 2.42, found on the
//! PATH or at `PROMETHEUS_BIN`; `scripts/observability-check.sh` installs it) on 127.0.0.1 scrapes
//! the processor binary every second while it delivers a short load to one healthy and one failing
//! endpoint. Through Prometheus' HTTP API the test asserts that every query of the committed
//! Grafana dashboard and every recording and alerting rule evaluates without error and returns
//! series, and that `WebhooksDeliveryFailureRatioHigh` fires. The processor's JSON log, written
//! to a file, carries no escape codes and every delivery line carries the delivery fields; a text
//! log written to a file has no colour codes either.

use mgpass_testkit as testkit;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mgpass_webhooks::config::Config;
use serde_json::Value;
use testkit::process::{free_port, Options, Processor};
use testkit::receiver::{Behaviour, Receiver};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/dashboards/mgpass-webhooks.json"
);
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/rules/mgpass-webhooks.rules.yml"
);

/// A Prometheus server this test started; killed (by its own pid) when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn prometheus_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PROMETHEUS_BIN") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "this test needs a Prometheus server binary: `apt-get install prometheus` (Debian, \
             2.42) or `bash scripts/observability-check.sh`, or set PROMETHEUS_BIN"
        )
    })
}

/// Starts `mgpass-webhooks run` with the test's topics, logging to `log` in `format`; its admin
/// server on a free port of 127.0.0.1.
fn spawn_processor(c: &Config, receiver: &Receiver, log: &Path, format: &str) -> Processor {
    let mut c = c.clone();
    c.admin.listen = format!("127.0.0.1:{}", free_port().unwrap());
    c.http.ca_bundle = Some(receiver.ca_file());
    // The receiver is on 127.0.0.1, which the address guard refuses unless allow-listed:
    // `testkit::config` sets `http.allow_private = ["127.0.0.0/8"]`, and the harness writes it.
    let options = Options {
        sets: vec![format!("log.format={format}")],
        log: Some(log.to_path_buf()),
        rust_log: Some("info,mgpass_webhooks=debug".into()),
        ..Options::default()
    };
    Processor::spawn(
        Path::new(env!("CARGO_BIN_EXE_mgpass-webhooks")),
        &c,
        options,
    )
    .expect("start the processor binary")
}

/// Waits until the log has a line containing `needle`; returns that line.
async fn wait_for_line(log: &Path, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?} within {within:?}; log so far:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sigterm_and_wait(processor: &mut Processor) {
    processor.signal("-TERM").unwrap();
    processor
        .wait_exit(Duration::from_secs(40))
        .await
        .expect("the processor exits after SIGTERM");
}

fn event(event_type: &str, user: &str) -> Vec<u8> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    serde_json::json!({
        "event_type": event_type,
        "data": {"user_id": user, "points": 150},
        "timestamp": now,
    })
    .to_string()
    .into_bytes()
}

/// The rules with every `for:` set to 0s, so the alerts fire within this short test.
fn rules_without_for() -> String {
    std::fs::read_to_string(RULES)
        .expect("rules file")
        .lines()
        .map(|l| {
            let trimmed = l.trim_start();
            if trimmed.starts_with("for: ") {
                format!("{}for: 0s", &l[..l.len() - trimmed.len()])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every query of the dashboard, with Grafana's variables replaced as Grafana would for a
/// 1-second scrape interval and the `All` job.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("dashboard")).unwrap();
    let mut queries = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "30s")
                .replace("$__range", "5m")
                .replace("$job", ".+");
            queries.push((
                format!("panel {} {:?} {}", panel["id"], panel["title"], t["refId"]),
                expr,
            ));
        }
    }
    assert!(queries.len() > 20, "{} queries", queries.len());
    queries
}

struct Prometheus {
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.expect("Prometheus answers");
        let body: Value = serde_json::from_str(&text).expect("Prometheus answers JSON");
        assert!(
            status.is_success() || status.as_u16() == 400 || status.as_u16() == 422,
            "{path}: {status} {body}"
        );
        body
    }

    /// Evaluates `expr` now; the error text, or the number of series returned.
    async fn query(&self, expr: &str) -> Result<usize, String> {
        let body = self.get("/api/v1/query", &[("query", expr)]).await;
        if body["status"] != "success" {
            return Err(format!("{} {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"].as_array().map_or(0, Vec::len))
    }

    async fn firing(&self) -> BTreeSet<String> {
        let body = self.get("/api/v1/alerts", &[]).await;
        body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// Metric and recording-rule names an expression reads.
fn series_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("webhooks") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        names.insert(expr[start..end].to_string());
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_dashboard_query_and_rule_and_the_failure_alert_fires() {
    let started = Instant::now();
    let prometheus = prometheus_bin();
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    receiver.set_behaviour("/fail", Behaviour::Status(503));
    let c = testkit::config("obs");
    testkit::setup_topics(&c).await;
    let producer = testkit::producer();
    for (id, path) in [("healthy", "/ok"), ("failing", "/fail")] {
        receiver.set_secret(path, "s3cret");
        let value =
            testkit::subscription_json(id, receiver.url(path).as_str(), &["*"], None, "s3cret");
        testkit::produce_all(
            &producer,
            &c.topics.subscriptions,
            &[(Some(id.into()), Some(value))],
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("processor.log");
    let mut processor = spawn_processor(&c, &receiver, &log, "json");
    let line = wait_for_line(&log, "admin server listening", Duration::from_secs(30)).await;
    let line: Value = serde_json::from_str(&line).expect("a JSON log line");
    let admin = line["local"]
        .as_str()
        .expect("local address field")
        .to_string();
    processor
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("the processor gets ready");
    let http = reqwest::Client::new();

    // A short load: 10 events a second (known types and one the guide does not list), one
    // invalid record, until the assertions are done (at most 2 minutes).
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let stop = stop.clone();
        let topic = c.topics.events.clone();
        async move {
            let producer = testkit::producer();
            testkit::produce_all(&producer, &topic, &[(None, Some(b"not json".to_vec()))]).await;
            let types = [
                "rewards.points_awarded",
                "cashback.processed",
                "partner.custom",
            ];
            let until = Instant::now() + Duration::from_secs(120);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let batch: Vec<_> = (0..5)
                    .map(|i| {
                        n += 1;
                        let user = format!("u{n}");
                        (
                            Some(user.clone()),
                            Some(event(types[i % types.len()], &user)),
                        )
                    })
                    .collect();
                testkit::produce_all(&producer, &topic, &batch).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            n
        }
    });

    let prom_port = free_port().unwrap();
    std::fs::write(dir.path().join("rules.yml"), rules_without_for()).unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yml\n\
             scrape_configs:\n  - job_name: mgpass-webhooks\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    let prom_log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = Started(
        Command::new(&prometheus)
            .current_dir(dir.path())
            .args([
                "--config.file=prometheus.yml",
                "--storage.tsdb.path=data",
                &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(prom_log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", prometheus.display())),
    );
    let prom = Prometheus {
        base: format!("http://127.0.0.1:{prom_port}"),
        http: http.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http.get(format!("{}/-/ready", prom.base)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus not ready; its log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The failing endpoint's deliveries reach the failed topic 31 s after their first attempt.
    let deadline = Instant::now() + Duration::from_secs(100);
    loop {
        let firing = prom.firing().await;
        if firing.contains("WebhooksDeliveryFailureRatioHigh") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "WebhooksDeliveryFailureRatioHigh did not fire; firing: {firing:?}; metrics:\n{}",
            http.get(format!("http://{admin}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let firing = prom.firing().await;
    for quiet in ["WebhooksNotReady", "WebhooksEventsFlowingNothingDelivered"] {
        assert!(!firing.contains(quiet), "{quiet} fires: {firing:?}");
    }

    let mut problems = Vec::new();
    for (name, expr) in dashboard_queries() {
        match prom.query(&expr).await {
            Ok(0) => problems.push(format!("{name}: no series for {expr}")),
            Ok(_) => {}
            Err(e) => problems.push(format!("{name}: {e} in {expr}")),
        }
    }
    let rules = prom.get("/api/v1/rules", &[]).await;
    let mut alerts = 0;
    let mut records = 0;
    for group in rules["data"]["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["name"].as_str().unwrap_or("?");
            let expr = rule["query"].as_str().expect("rule query");
            if rule["health"] != "ok" {
                problems.push(format!(
                    "rule {name}: {} {}",
                    rule["health"], rule["lastError"]
                ));
            }
            match prom.query(expr).await {
                Err(e) => problems.push(format!("rule {name}: {e} in {expr}")),
                Ok(n) if rule["type"] == "recording" && n == 0 => {
                    problems.push(format!("recording rule {name}: no series for {expr}"))
                }
                Ok(_) => {}
            }
            if rule["type"] == "recording" {
                records += 1;
                continue;
            }
            alerts += 1;
            // An alert expression is a filter (empty while it does not fire): every series it
            // reads must exist.
            for series in series_names(expr) {
                match prom.query(&series).await {
                    Ok(n) if n > 0 => {}
                    other => problems.push(format!("alert {name}: {series} gives {other:?}")),
                }
            }
        }
    }
    assert_eq!((records, alerts), (5, 7), "rules loaded: {rules}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    stop.store(true, Ordering::Relaxed);
    let produced = load.await.unwrap();
    sigterm_and_wait(&mut processor).await;

    // The JSON log in a file: plain, one JSON object a line, delivery fields on delivery lines.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "escape codes in the log file");
    assert!(
        !text.contains("Client stats"),
        "librdkafka statistics are read for the lag, not logged"
    );
    let mut outcomes = BTreeSet::new();
    let mut delivery_lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v.get("delivery_id").is_none() {
            continue;
        }
        delivery_lines += 1;
        for field in ["subscription_id", "attempt", "outcome"] {
            assert!(
                v.get(field).is_some(),
                "delivery line without {field}: {line}"
            );
        }
        outcomes.insert(v["outcome"].as_str().unwrap().to_string());
    }
    assert!(
        outcomes.contains("success") && outcomes.contains("http_error"),
        "{outcomes:?}"
    );
    println!(
        "observability: {produced} events, {delivery_lines} delivery log lines, \
         outcomes {outcomes:?}, {} s",
        started.elapsed().as_secs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_log_written_to_a_file_has_no_colour_codes() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = testkit::config("obs-text");
    testkit::setup_topics(&c).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("processor.log");
    let mut processor = spawn_processor(&c, &receiver, &log, "text");
    wait_for_line(&log, "consuming events", Duration::from_secs(60)).await;
    sigterm_and_wait(&mut processor).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(" INFO "), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text:?}"
    );
}
