//! Figures of one run and the final table (plain text, and Markdown for docs/benchmarks.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::ceiling::Ceiling;
use crate::floor::Floor;
use crate::load::Paced;
use crate::procfs::CpuDelta;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencyMs {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyMs {
    pub fn of(h: &Histogram<u64>) -> LatencyMs {
        if h.is_empty() {
            return LatencyMs::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencyMs {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Throughput seen at the receiver.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Window {
    /// First to last arrival.
    pub secs: f64,
    /// Arrivals per second from first to last.
    pub rate: f64,
    /// Arrivals per second between the 10th and the 90th percentile arrival (ramp-up and tail
    /// excluded).
    pub steady_rate: f64,
}

impl Window {
    pub fn of(arrivals: &[Instant]) -> Window {
        let n = arrivals.len();
        if n < 2 {
            return Window::default();
        }
        let span = |a: usize, b: usize| arrivals[b].duration_since(arrivals[a]).as_secs_f64();
        let secs = span(0, n - 1);
        let (lo, hi) = (n / 10, n * 9 / 10);
        let steady = span(lo, hi.min(n - 1));
        Window {
            secs,
            rate: if secs > 0.0 {
                (n - 1) as f64 / secs
            } else {
                0.0
            },
            steady_rate: if steady > 0.0 {
                (hi - lo) as f64 / steady
            } else {
                0.0
            },
        }
    }
}

/// Arrivals per second, from the first arrival on.
pub fn per_second(arrivals: &[Instant]) -> Vec<u64> {
    let Some(first) = arrivals.first() else {
        return Vec::new();
    };
    let mut out: Vec<u64> = Vec::new();
    for a in arrivals {
        let s = a.duration_since(*first).as_secs() as usize;
        if out.len() <= s {
            out.resize(s + 1, 0);
        }
        out[s] += 1;
    }
    out
}

/// Every figure of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub id: String,
    /// `--label` of the invocation, shown after the id.
    pub label: Option<String>,
    pub title: String,
    pub events: u64,
    pub subscriptions: u64,
    /// Healthy deliveries the run waits for.
    pub expected: u64,
    /// Distinct healthy deliveries received.
    pub delivered: u64,
    pub complete: bool,
    pub duplicates: u64,
    pub bad_signatures: u64,
    pub unstamped: u64,
    /// Requests that reached the hanging endpoint (attempts, retries included).
    pub hung_requests: u64,
    /// Time to produce the pre-produced events (backlog runs).
    pub produce_secs: Option<f64>,
    pub paced: Option<Paced>,
    /// Process start to `/readyz` 200.
    pub start_to_ready_secs: f64,
    /// `/readyz` 200 to the first delivery (backlog runs) or the probe's delivery (latency runs).
    pub ready_to_first_delivery_secs: Option<f64>,
    /// `webhooks_subscription_load_seconds` as the processor reports it.
    pub load_seconds_metric: Option<f64>,
    /// CPU seconds the processor spent from its start to ready (table load).
    pub load_cpu_secs: Option<f64>,
    pub window: Window,
    /// Healthy deliveries in each second from the first one on.
    pub per_second: Vec<u64>,
    pub latency: LatencyMs,
    /// From ready to the last awaited delivery.
    pub cpu: CpuDelta,
    /// Processor CPU seconds per 1,000 healthy deliveries (ready → done).
    pub cpu_per_1k: Option<f64>,
    /// Broker CPU seconds per 1,000 healthy deliveries over the same window.
    pub broker_cpu_per_1k: Option<f64>,
    /// The processor's CPU per delivery ÷ the ceiling's client + receiver CPU per request.
    pub cpu_vs_ceiling: Option<f64>,
    /// The broker's requests during the run, by type (`--broker-requests-cmd`).
    pub broker_requests: BTreeMap<String, crate::broker::RequestDelta>,
    /// VmHWM of the processor at the end, in MB (10^6 bytes).
    pub rss_peak_mb: Option<f64>,
    /// VmRSS of the processor right after ready, in MB.
    pub rss_ready_mb: Option<f64>,
    /// `webhooks_*` counters of interest at the end.
    pub metrics: BTreeMap<String, f64>,
    pub ceiling: Option<Ceiling>,
    /// Produce → consume latency of the same paced events with no processor (latency runs).
    pub kafka_floor: Option<Floor>,
    /// Pipeline rate / ceiling rate (throughput runs).
    pub ratio: Option<f64>,
    pub target: String,
    pub verdict: String,
    pub notes: Vec<String>,
}

/// Broker CPU seconds per 1,000 deliveries above the floor: a run's `run_secs` less the floor's
/// `floor_per_1k` seconds per 1,000 events for its `events`, never below 0.
pub fn above_floor_per_1k(run_secs: f64, floor_per_1k: f64, events: u64, delivered: u64) -> f64 {
    let above = (run_secs - floor_per_1k * events as f64 / 1000.0).max(0.0);
    per_1k_of(above, delivered)
}

/// `n` per 1,000 of `delivered` (at least one).
fn per_1k_of(n: f64, delivered: u64) -> f64 {
    n / (delivered.max(1) as f64) * 1000.0
}

impl RunResult {
    /// The broker's CPU per delivery ÷ the processor's.
    pub fn broker_vs_processor(&self) -> Option<f64> {
        match (self.broker_cpu_per_1k, self.cpu_per_1k) {
            (Some(b), Some(p)) if p > 0.0 => Some(b / p),
            _ => None,
        }
    }

    /// The broker's CPU per 1,000 deliveries beyond what producing and plainly consuming this
    /// run's events cost it in the Kafka floor: what the processor's own requests (outputs,
    /// commits, retry tiers) and the way it fetches add (paced runs).
    pub fn broker_above_floor_per_1k(&self) -> Option<f64> {
        let floor = self.kafka_floor.as_ref()?.broker_cpu_per_1k?;
        Some(above_floor_per_1k(
            self.cpu.broker_secs?,
            floor,
            self.events,
            self.delivered,
        ))
    }

    /// [`Self::broker_above_floor_per_1k`] ÷ the processor's CPU per delivery.
    pub fn broker_above_floor_vs_processor(&self) -> Option<f64> {
        match (self.broker_above_floor_per_1k(), self.cpu_per_1k) {
            (Some(b), Some(p)) if p > 0.0 => Some(b / p),
            _ => None,
        }
    }

    /// `n` per 1,000 of this run's healthy deliveries.
    pub fn per_1k(&self, n: f64) -> f64 {
        per_1k_of(n, self.delivered)
    }

    /// The id with the label, as shown.
    pub fn name(&self) -> String {
        match &self.label {
            Some(l) => format!("{} ({l})", self.id),
            None => self.id.clone(),
        }
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "—".into(),
    }
}

fn rate(x: f64) -> String {
    if x <= 0.0 {
        "—".into()
    } else {
        format!("{x:.0}")
    }
}

const HEADERS: [&str; 18] = [
    "run",
    "deliveries",
    "sustained/s",
    "steady/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "CPU s/1k",
    "÷ ceiling CPU",
    "broker CPU s/1k",
    "broker ÷ proc",
    "peak RSS MB",
    "ceiling/s",
    "ceiling p99 ms",
    "Kafka p99 ms",
    "ratio",
    "target",
    "result",
];

fn row(r: &RunResult) -> Vec<String> {
    let lat = |x: f64| {
        if r.latency.count == 0 {
            "—".to_string()
        } else {
            format!("{x:.1}")
        }
    };
    let (ceil_rate, ceil_p99) = match &r.ceiling {
        Some(c) if c.mode.starts_with("closed") => (rate(c.rate), format!("{:.1}", c.latency.p99)),
        Some(c) => ("—".into(), format!("{:.1}", c.latency.p99)),
        None => ("—".into(), "—".into()),
    };
    let delivered = if r.complete {
        r.delivered.to_string()
    } else {
        format!("{}/{}", r.delivered, r.expected)
    };
    vec![
        r.name(),
        delivered,
        rate(r.window.rate),
        rate(r.window.steady_rate),
        lat(r.latency.p50),
        lat(r.latency.p99),
        lat(r.latency.p999),
        opt(r.cpu_per_1k, 3),
        opt(r.cpu_vs_ceiling, 2),
        opt(r.broker_cpu_per_1k, 3),
        opt(r.broker_vs_processor(), 2),
        opt(r.rss_peak_mb, 0),
        ceil_rate,
        ceil_p99,
        r.kafka_floor
            .as_ref()
            .map_or("—".into(), |f| format!("{:.1}", f.latency.p99)),
        r.ratio
            .map_or("—".into(), |x| format!("{:.0} %", x * 100.0)),
        r.target.clone(),
        r.verdict.clone(),
    ]
}

/// The results as an aligned text table.
pub fn text_table(results: &[RunResult]) -> String {
    let rows: Vec<Vec<String>> = results.iter().map(row).collect();
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(HEADERS.iter().map(|s| s.to_string()).collect(), &mut out);
    line(widths.iter().map(|w| "-".repeat(*w)).collect(), &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

/// The results as a Markdown table.
pub fn markdown_table(results: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(HEADERS.len()));
    for r in results {
        let _ = writeln!(out, "| {} |", row(r).join(" | "));
    }
    out
}

/// `name="value"` out of a Prometheus label set such as `client="events",request="Fetch"}`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

/// The processor's `webhooks_kafka_requests_total` per 1,000 deliveries, "client request n",
/// the largest first, those under 0.05 left out.
fn processor_requests(r: &RunResult) -> Vec<String> {
    let per = |n| r.per_1k(n);
    let mut rows: Vec<(f64, String)> = r
        .metrics
        .iter()
        .filter_map(|(k, v)| {
            let labels = k.strip_prefix("webhooks_kafka_requests_total{")?;
            let client = label(labels, "client")?;
            // Retry tier clients are named after their topic, which carries the run's prefix.
            let client = client.find("webhooks.").map_or(client, |at| &client[at..]);
            Some((per(*v), format!("{client} {}", label(labels, "request")?)))
        })
        .filter(|(n, _)| *n >= 0.05)
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    rows.into_iter()
        .map(|(n, name)| format!("{name} {n:.1}"))
        .collect()
}

/// The details of one run, a few lines.
pub fn details(r: &RunResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} — {}", r.name(), r.title);
    let _ = writeln!(
        out,
        "  events {}  subscriptions {}  healthy deliveries {}/{}  duplicates {}  bad signatures {}  hung requests {}",
        r.events, r.subscriptions, r.delivered, r.expected, r.duplicates, r.bad_signatures, r.hung_requests
    );
    if let Some(s) = r.produce_secs {
        let _ = writeln!(
            out,
            "  pre-produced in {s:.1} s ({:.0} events/s)",
            r.events as f64 / s.max(1e-9)
        );
    }
    if let Some(p) = &r.paced {
        let _ = writeln!(
            out,
            "  paced: {} events in {:.1} s ({:.0}/s), producer at most {:.1} ms behind schedule",
            p.sent,
            p.secs,
            p.sent as f64 / p.secs.max(1e-9),
            p.max_behind_ms
        );
    }
    let _ = writeln!(
        out,
        "  start → ready {:.2} s, ready → first delivery {} s  (load metric {} s, load CPU {} s, RSS at ready {} MB)",
        r.start_to_ready_secs,
        opt(r.ready_to_first_delivery_secs, 2),
        opt(r.load_seconds_metric, 2),
        opt(r.load_cpu_secs, 2),
        opt(r.rss_ready_mb, 0),
    );
    let _ = writeln!(
        out,
        "  window {:.2} s  sustained {}/s  steady {}/s  latency p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} ms",
        r.window.secs,
        rate(r.window.rate),
        rate(r.window.steady_rate),
        r.latency.p50,
        r.latency.p99,
        r.latency.p999,
        r.latency.max
    );
    let _ = writeln!(
        out,
        "  CPU s (ready → done): processor {}  bench {}  broker {}  host busy {} of {} cores (others {} cores); processor {} s per 1,000 deliveries; peak RSS {} MB",
        opt(r.cpu.processor_secs, 2),
        opt(r.cpu.bench_secs, 2),
        opt(r.cpu.broker_secs, 2),
        opt(r.cpu.host_busy_cores, 2),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        opt(r.cpu.other_cores, 2),
        opt(r.cpu_per_1k, 3),
        opt(r.rss_peak_mb, 0),
    );
    if let Some(c) = &r.ceiling {
        let _ = writeln!(
            out,
            "  ceiling ({}, concurrency {} over {} endpoints): {} requests, {} failed, {}/s, p50 {:.1} p99 {:.1} p99.9 {:.1} ms, bench CPU {} s/1k (client + receiver)",
            c.mode,
            c.concurrency,
            c.endpoints,
            c.requests,
            c.failed,
            rate(c.rate),
            c.latency.p50,
            c.latency.p99,
            c.latency.p999,
            opt(c.bench_cpu_per_1k, 3),
        );
    }
    if !r.broker_requests.is_empty() {
        let per = |n| r.per_1k(n);
        let shown: Vec<String> = r
            .broker_requests
            .iter()
            .filter(|(_, d)| per(d.count) >= 0.05)
            .map(|(k, d)| match k.as_str() {
                "MessagesIn" => format!("records in {:.0}", per(d.count)),
                "BytesIn" | "BytesOut" => format!("{k} {:.0} KB", per(d.count) / 1000.0),
                _ if d.bytes > 0.0 => {
                    format!("{k} {:.1} (avg {:.0} B)", per(d.count), d.bytes / d.count)
                }
                _ => format!("{k} {:.1}", per(d.count)),
            })
            .collect();
        let _ = writeln!(
            out,
            "  broker requests per 1,000 deliveries: {}",
            shown.join(", ")
        );
    }
    if r.per_second.len() > 1 {
        let shown: Vec<String> = r
            .per_second
            .iter()
            .take(90)
            .map(|n| n.to_string())
            .collect();
        let more = if r.per_second.len() > 90 { " …" } else { "" };
        let _ = writeln!(out, "  deliveries per second: {}{more}", shown.join(" "));
    }
    if let Some(f) = &r.kafka_floor {
        let _ = writeln!(
            out,
            "  Kafka floor (plain consumer, {:.0}/s for {:.0} s, {} received): p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} ms",
            f.rate, f.secs, f.received, f.latency.p50, f.latency.p99, f.latency.p999, f.latency.max
        );
        if let (Some(floor), Some(above), Some(ratio)) = (
            f.broker_cpu_per_1k,
            r.broker_above_floor_per_1k(),
            r.broker_above_floor_vs_processor(),
        ) {
            let _ = writeln!(
                out,
                "  broker CPU: the floor's (the same producer and a plain consumer) {floor:.3} s per 1,000 events; this run's above it {above:.3} s per 1,000 deliveries = {ratio:.2} × the processor's"
            );
        }
    }
    let own = processor_requests(r);
    if !own.is_empty() {
        let _ = writeln!(
            out,
            "  processor's own Kafka requests per 1,000 deliveries (since its start, librdkafka statistics): {}",
            own.join(", ")
        );
    }
    let batches: Vec<String> = r
        .metrics
        .iter()
        .filter_map(|(k, v)| {
            let topic = label(
                k.strip_prefix("webhooks_kafka_produce_batch_records{")?,
                "topic",
            )?;
            Some(format!("{topic} {v:.1}"))
        })
        .collect();
    if !batches.is_empty() {
        let _ = writeln!(
            out,
            "  records per batch (last interval; produced by the processor, or fetched for the topics it consumes): {}",
            batches.join(", ")
        );
    }
    if !r.metrics.is_empty() {
        let m: Vec<String> = r
            .metrics
            .iter()
            .filter(|(k, _)| !k.starts_with("webhooks_kafka_"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "  metrics: {}", m.join(", "));
    }
    for n in &r.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_cpu_above_the_floor_is_per_delivery_and_never_negative() {
        // c: 60,000 events and deliveries, 15 s of broker CPU, the floor 0.2 s per 1,000 events.
        assert!((above_floor_per_1k(15.0, 0.2, 60_000, 60_000) - 0.05).abs() < 1e-9);
        // d-latency: 20,000 events, 18,000 healthy deliveries.
        assert!((above_floor_per_1k(5.8, 0.2, 20_000, 18_000) - 0.1).abs() < 1e-9);
        assert_eq!(above_floor_per_1k(1.0, 0.2, 60_000, 60_000), 0.0);
    }
}
