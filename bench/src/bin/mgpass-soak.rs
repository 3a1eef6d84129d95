//! `mgpass-soak`: a long steady run of the release processor (issue 10, point 10; not part of
//! CI). Events at a steady rate for `--minutes`, each matched by two subscriptions: one endpoint
//! that always answers 200 and one that answers 500 to every 20th request (5 % of its attempts
//! fail and go through the retry tiers). Every `--sample-secs` it prints the processor's resident
//! memory, its deliveries in flight, the consumer lag summed over its partitions, and what the
//! receiver has accepted; at the end, the first-half and second-half peaks side by side and
//! whether every event reached both endpoints. `scripts/soak.sh` builds and runs it; its output
//! is committed in docs/soak.md.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mgpass_testkit as testkit;
use mgpass_webhooks::events::KNOWN_EVENT_TYPES;
use testkit::process::{free_port, Options, Processor};
use testkit::receiver::{Behaviour, Receiver};

#[derive(Parser, Debug)]
#[command(
    name = "mgpass-soak",
    about = "Soak run of the mgpass-webhooks processor against a local broker"
)]
struct Args {
    /// Kafka bootstrap servers (a local broker: the run creates topics of its own there).
    #[arg(long, short = 'b', default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
    /// How long events are produced.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Events per second (each is delivered to two endpoints).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Seconds between two printed samples.
    #[arg(long, default_value_t = 15)]
    sample_secs: u64,
    /// The processor binary.
    #[arg(long, default_value = "target/release/mgpass-webhooks")]
    processor: PathBuf,
}

const SECRET: &str = "soak-secret-of-at-least-24-bytes";

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss_mib: f64,
    in_flight: f64,
    events_lag: f64,
    tasks_lag: f64,
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn lag(metrics: &BTreeMap<String, f64>, topic: impl Fn(&str) -> bool) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| k.starts_with("webhooks_consumer_lag{"))
        .filter(|(k, _)| {
            k.split("topic=\"")
                .nth(1)
                .and_then(|t| t.split('"').next())
                .is_some_and(&topic)
        })
        .map(|(_, v)| v.max(0.0))
        .sum()
}

async fn run(args: Args) -> Result<bool> {
    std::env::set_var("MGPASS_TEST_BOOTSTRAP", &args.bootstrap_servers);
    if !args.processor.exists() {
        bail!(
            "no processor binary at {} (build it: cargo build --release -p mgpass-webhooks)",
            args.processor.display()
        );
    }
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    receiver.set_behaviour("/flaky", Behaviour::FailEvery(20, 500));
    receiver.set_secret("/ok", SECRET);
    receiver.set_secret("/flaky", SECRET);

    let mut c = testkit::config("soak");
    c.topic_setup.partitions = 6;
    c.admin.listen = format!("127.0.0.1:{}", free_port()?);
    c.http.ca_bundle = Some(receiver.ca_file());
    testkit::setup_topics(&c).await;
    let producer = testkit::producer();
    let subs: Vec<(Option<String>, Option<Vec<u8>>)> = ["ok", "flaky"]
        .iter()
        .map(|name| {
            let id = format!("sub_{name}");
            let url = receiver.url(&format!("/{name}"));
            let value = testkit::subscription_json(&id, url.as_str(), &["*"], None, SECRET);
            (Some(id), Some(value))
        })
        .collect();
    testkit::produce_all(&producer, &c.topics.subscriptions, &subs).await;

    let log = std::env::temp_dir().join(format!("{}soak.log", c.kafka.group_id));
    let mut processor = Processor::spawn(
        &args.processor,
        &c,
        Options {
            log: Some(log.clone()),
            rust_log: Some("warn".into()),
            ..Options::default()
        },
    )?;
    processor.wait_ready(Duration::from_secs(60)).await?;
    let pid = processor.pid();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "soak: {} min at {} events/s, two subscriptions (one endpoint answers 500 to every 20th request), processor pid {pid}, CPU {cpu}, {} cores",
        args.minutes,
        args.rate,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // The producer: a batch every 100 ms.
    let total = args.rate * args.minutes * 60;
    let topic = c.topics.events.clone();
    let rate = args.rate;
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let produced_by = produced.clone();
    let producing = tokio::spawn(async move {
        let producer = testkit::producer();
        let per_tick = (rate / 10).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut seq = 0u64;
        while seq < total {
            tick.tick().await;
            let batch: Vec<(Option<String>, Option<Vec<u8>>)> = (seq..(seq + per_tick).min(total))
                .map(|i| {
                    let user = format!("u{i:08}");
                    let event_type = KNOWN_EVENT_TYPES[i as usize % KNOWN_EVENT_TYPES.len()];
                    (
                        Some(user.clone()),
                        Some(testkit::event_json(event_type, &user)),
                    )
                })
                .collect();
            seq += batch.len() as u64;
            testkit::try_produce_all(&producer, &topic, batch).await?;
            produced_by.store(seq, std::sync::atomic::Ordering::Relaxed);
        }
        anyhow::Ok(())
    });

    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>8} {:>9} {:>10} {:>10}",
        "t s", "produced", "ok 2xx", "flaky 2xx", "RSS MiB", "in flight", "events lag", "tasks lag"
    );
    let started = Instant::now();
    let mut samples: Vec<(u64, Sample)> = Vec::new();
    let every = Duration::from_secs(args.sample_secs);
    let end_of_production = Duration::from_secs(args.minutes * 60);
    let mut next = every;
    while started.elapsed() < end_of_production + Duration::from_secs(60) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + next)).await;
        next += every;
        processor.check_alive()?;
        let metrics = processor.metrics().await.context("reading /metrics")?;
        let events = c.topics.events.clone();
        let sample = Sample {
            rss_mib: rss_mib(pid).unwrap_or(f64::NAN),
            in_flight: metrics
                .get("webhooks_in_flight")
                .copied()
                .unwrap_or(f64::NAN),
            events_lag: lag(&metrics, |t| t == events),
            tasks_lag: lag(&metrics, |t| t != events),
        };
        let t = started.elapsed().as_secs();
        println!(
            "{t:>6} {:>9} {:>9} {:>9} {:>8.1} {:>9.0} {:>10.0} {:>10.0}",
            produced.load(std::sync::atomic::Ordering::Relaxed),
            receiver.count_answered("/ok", 200),
            receiver.count_answered("/flaky", 200),
            sample.rss_mib,
            sample.in_flight,
            sample.events_lag,
            sample.tasks_lag
        );
        if started.elapsed() <= end_of_production {
            samples.push((t, sample));
        }
        let done = producing.is_finished()
            && receiver.count_answered("/ok", 200) >= total as usize
            && receiver.count_answered("/flaky", 200) >= total as usize;
        if done && started.elapsed() > end_of_production {
            break;
        }
    }
    producing.await.context("the producer task")??;

    // Every event reached both endpoints (at least once; the flaky one after its retries).
    let received = receiver.received();
    let distinct = |path: &str| -> usize {
        received
            .iter()
            .filter(|r| r.path == path && r.status == Some(200))
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .filter_map(|b| b["data"]["user_id"].as_str().map(str::to_string))
            .collect::<HashSet<_>>()
            .len()
    };
    let (ok, flaky) = (distinct("/ok"), distinct("/flaky"));
    let failed_500 = received
        .iter()
        .filter(|r| r.path == "/flaky" && r.status == Some(500))
        .count();
    let bad = received
        .iter()
        .filter(|r| r.signature_valid != Some(true))
        .count();
    processor.stop(Duration::from_secs(30)).await?;

    let half = samples.len() / 2;
    let peak = |s: &[(u64, Sample)], f: fn(&Sample) -> f64| {
        s.iter().map(|(_, x)| f(x)).fold(f64::NAN, f64::max)
    };
    let (first, second) = samples.split_at(half.max(1).min(samples.len()));
    println!("\npeaks while producing     first half   second half");
    for (name, f) in [
        ("RSS MiB", (|s: &Sample| s.rss_mib) as fn(&Sample) -> f64),
        ("in flight", |s: &Sample| s.in_flight),
        ("events lag", |s: &Sample| s.events_lag),
        ("tasks lag", |s: &Sample| s.tasks_lag),
    ] {
        println!(
            "{name:<24} {:>11.1} {:>13.1}",
            peak(first, f),
            peak(second, f)
        );
    }
    println!(
        "\n{total} events; distinct deliveries: ok {ok}, flaky {flaky}; 500s answered by the flaky endpoint {failed_500}; bad signatures {bad}"
    );
    let flat = peak(second, |s| s.rss_mib) <= peak(first, |s| s.rss_mib) * 1.10 + 8.0;
    let complete = ok == total as usize && flaky == total as usize && bad == 0;
    println!(
        "every event delivered to both: {}; RSS flat (second-half peak within 10 % + 8 MiB of the first): {}",
        if complete { "yes" } else { "NO" },
        if flat { "yes" } else { "NO" }
    );
    Ok(complete && flat)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mgpass-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}
