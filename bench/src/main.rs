//! `mgpass-bench`: the performance benchmark of issue #4 (see docs/benchmarks.md).
//!
//! Against a real local broker, each run creates topics of its own (the product's topic setup,
//! a unique prefix), writes its subscriptions pointing at the bench's in-process HTTPS receiver,
//! produces rewards events, runs the release processor (`mgpass-webhooks run`) as a child process
//! and measures at the receiver: deliveries per second, end-to-end latency (event handed to the
//! producer → request received), the processor's CPU seconds per 1,000 deliveries and its peak
//! RSS; then the same receiver is driven by a plain reqwest loop with the same concurrency (the
//! raw ceiling) and the ratio printed.
//!
//! Runs: `a` throughput (a backlog of events, one matching subscription each), `b` fan-out
//! (events × 10 subscriptions), `c` latency (a steady rate after the processor is ready),
//! `d-rate` / `d-latency` isolation (10 % of deliveries to an endpoint that never answers),
//! `e` scale (100,000 subscriptions: table load time and RSS, then a backlog of events).
//!
//! Everything stays on 127.0.0.1 and is bounded in time and traffic.

mod broker;
mod ceiling;
mod floor;
mod load;
mod procfs;
mod receiver;
mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use mgpass_webhooks::config::{Config, TopicNames};
use mgpass_webhooks::events::KNOWN_EVENT_TYPES;
use rdkafka::producer::FutureProducer;

use crate::ceiling::Ceiling;
use crate::receiver::{secret_for, Alpn, Receiver};
use crate::report::{LatencyMs, RunResult, Window};
use mgpass_testkit::process::{self, Options, Processor};

/// The same allocator as the processor: the receiver and the ceiling client allocate per request,
/// and the system allocator's arena locks would make the bench, not the processor, the bottleneck.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    /// Throughput: a backlog of events, one matching subscription each.
    A,
    /// Fan-out: a backlog of events × 10 subscriptions.
    B,
    /// Latency: a steady rate for a while, after the processor is ready.
    C,
    /// Isolation: 10 % of deliveries to an endpoint that hangs (rate run and latency run).
    D,
    /// Scale: 100,000 subscriptions (load time, RSS), then a backlog of events.
    E,
    /// Isolation at scale: as d-rate, with the hanging share spread over 32 hanging origins
    /// beside the 16 healthy ones (more than the global budget if each took its full limit).
    F,
    /// Memory: events each matched by 20,000 `*` subscriptions (peak RSS).
    G,
    All,
}

#[derive(Parser, Debug)]
#[command(
    name = "mgpass-bench",
    version,
    about = "Benchmark of the mgpass-webhooks processor against a local broker (issue #4)"
)]
struct Args {
    /// Kafka bootstrap servers (a local broker: the bench creates and deletes topics there).
    #[arg(long, short = 'b', default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
    /// Which runs (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    scenario: Vec<Scenario>,
    /// Tiny sizes for CI: 2,000 events, 5 s latency run, 5,000 subscriptions, 1 s ceilings.
    /// Prints the same figures; targets are not judged.
    #[arg(long)]
    smoke: bool,
    /// Events of the throughput (a) and isolation rate (d-rate) runs [200000; smoke 2000].
    #[arg(long)]
    events: Option<u64>,
    /// Events of an unreported warm-up run first (a fresh broker JVM compiles its hot paths
    /// for a minute or so, which would otherwise land in the first run) [20000; smoke 0].
    #[arg(long)]
    warmup_events: Option<u64>,
    /// Events of the fan-out run (b) [20000; smoke 200].
    #[arg(long)]
    fanout_events: Option<u64>,
    /// Subscriptions every event of the fan-out run matches.
    #[arg(long, default_value_t = 10)]
    fanout: u64,
    /// Events per second of the latency runs (c, d-latency).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds of the latency run (c) [30; smoke 5]; d-latency runs min(this, 10).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Subscriptions of the scale run (e) [100000; smoke 5000].
    #[arg(long)]
    subscriptions: Option<u64>,
    /// Events delivered after the scale run's table load, each matching one subscription
    /// [20000; smoke 500].
    #[arg(long)]
    scale_events: Option<u64>,
    /// Share of the isolation runs' events that go to the hanging endpoint, in percent.
    #[arg(long, default_value_t = 10)]
    hang_percent: u64,
    /// Hanging origins (distinct listeners) of the isolation-at-scale run (f).
    #[arg(long, default_value_t = 32)]
    hang_origins: u64,
    /// Subscriptions (all `*`) every event of the memory run (g) matches [20000; smoke 2000].
    #[arg(long)]
    huge_fanout: Option<u64>,
    /// Events of the memory run (g) [2000; smoke 5].
    #[arg(long)]
    huge_fanout_events: Option<u64>,
    /// `http.request_timeout_ms` of the isolation runs (how long a hanging attempt lasts); the
    /// product default. Below `delivery.endpoint_stall_ms` (2 s) a hanging endpoint is never
    /// seen as stalled: see docs/benchmarks.md.
    #[arg(long, default_value_t = 10000)]
    hang_timeout_ms: u64,
    /// Longest the isolation rate run waits for its healthy deliveries [120; smoke 30].
    #[arg(long)]
    isolation_secs: Option<u64>,
    /// Longest any other run waits for its deliveries after the processor is ready.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Healthy listeners of the receiver (distinct origins, i.e. partners); the subscriptions of
    /// a run are spread over them (a, c, d: one client-scoped subscription per endpoint, event n
    /// from client n mod endpoints). 16 × the per-endpoint limit of 64 = the global limit of
    /// 1024. With 1, every delivery shares one endpoint's limit and wait queue.
    #[arg(long, default_value_t = 16)]
    endpoints: usize,
    /// End a run early when no healthy delivery arrived for this long (retries come 1, 5 and
    /// 25 s after a failed attempt, so keep it above 30).
    #[arg(long, default_value_t = 40)]
    stall_secs: u64,
    /// Protocols the receiver offers (ALPN).
    #[arg(long, value_enum, default_value = "both")]
    alpn: Alpn,
    /// Partitions of the run's topics (events, retry, output); the subscriptions topic has 3.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// `delivery.max_in_flight` of the processor (the product default).
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// `delivery.max_in_flight_per_endpoint` of the processor (the product default).
    #[arg(long, default_value_t = 64)]
    max_in_flight_per_endpoint: usize,
    /// Extra processor setting (repeatable), passed as `--set KEY=VALUE`.
    #[arg(long = "processor-set", value_name = "KEY=VALUE")]
    processor_set: Vec<String>,
    /// The processor binary [the `mgpass-webhooks` next to this one].
    #[arg(long)]
    processor_bin: Option<PathBuf>,
    /// `linger.ms` of the bench's event producer.
    #[arg(long, default_value_t = 1)]
    producer_linger_ms: u32,
    /// Seconds of each closed-loop ceiling [10; smoke 1].
    #[arg(long)]
    ceiling_secs: Option<f64>,
    /// Pid of the broker, to report its CPU time too.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// A command printing the broker's request counters (`bash scripts/kafka.sh requests`, which
    /// bench.sh passes for a broker it can read over JMX): run before and after each run, so the
    /// run reports produce, fetch and commit requests per delivery and their sizes.
    #[arg(long)]
    broker_requests_cmd: Option<String>,
    /// Latency runs: seconds between the probe's delivery and the start of the paced events,
    /// for the processor's consumer group to settle (members join one by one; each join
    /// rebalances the group, and the heartbeat is 3 s).
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Before each run, wait up to this many seconds for the host to be quiet (other processes
    /// using less than --quiet-cores); 0 = do not wait [default: 60, --smoke 0].
    #[arg(long)]
    wait_quiet_secs: Option<u64>,
    /// What "quiet" means for --wait-quiet-secs, in busy cores (our broker not counted); a run
    /// during which other processes used more than this on average is marked disturbed.
    #[arg(long, default_value_t = 0.3)]
    quiet_cores: f64,
    /// A label for this invocation's runs in the table (e.g. the variant of --processor-set used).
    #[arg(long)]
    label: Option<String>,
    /// Keep each run's topics (they are deleted by default).
    #[arg(long)]
    keep_topics: bool,
    /// Print each delivery slower than this many milliseconds (end to end) with its arrival
    /// time, to see when a latency tail happens; 0 = off.
    #[arg(long, default_value_t = 0.0)]
    log_slow_ms: f64,
    /// Also print the table as Markdown (for docs/benchmarks.md).
    #[arg(long)]
    markdown: bool,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the CA, configs and processor logs go [a new directory under the temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

impl Args {
    fn pick<T>(&self, given: Option<T>, full: T, smoke: T) -> T {
        given.unwrap_or(if self.smoke { smoke } else { full })
    }
    fn has(&self, s: Scenario) -> bool {
        self.scenario.contains(&s) || self.scenario.contains(&Scenario::All)
    }
}

/// How a run makes its events.
#[derive(Debug, Clone, Copy)]
enum Mix {
    /// `rewards.points_awarded`; with `clients` > 1, event `n` comes from client `c<n % clients>`
    /// and each client has its own subscription.
    Plain { clients: u64 },
    /// `rewards.points_awarded`, matched by every one of `subs` subscriptions.
    Fanout { subs: u64 },
    /// Every `every`-th event is `rewards.redeemed`, which only a hanging subscription takes
    /// (with `hanging` > 1, the one of client `h<i>`, in turn); the others are as [`Mix::Plain`].
    Isolation {
        every: u64,
        clients: u64,
        hanging: u64,
    },
    /// Event `n` matches exactly subscription `(n × 7919) mod subs` (by type and client).
    Scale { subs: u64 },
}

impl Mix {
    /// (event type, client id, healthy deliveries it makes) of event `seq`.
    fn event(&self, seq: u64) -> (&'static str, Option<String>, u64) {
        match *self {
            Mix::Plain { clients } if clients > 1 => (
                "rewards.points_awarded",
                Some(format!("c{}", seq % clients)),
                1,
            ),
            Mix::Plain { .. } => ("rewards.points_awarded", None, 1),
            Mix::Fanout { subs } => ("rewards.points_awarded", None, subs),
            Mix::Isolation { every, hanging, .. } if seq % every == every - 1 => {
                let client = (hanging > 1).then(|| format!("h{}", (seq / every) % hanging));
                ("rewards.redeemed", client, 0)
            }
            Mix::Isolation { clients, .. } => Mix::Plain { clients }.event(seq),
            Mix::Scale { subs } => {
                let j = (seq * 7919) % subs;
                (
                    KNOWN_EVENT_TYPES[(j as usize) % KNOWN_EVENT_TYPES.len()],
                    Some(format!("c{j}")),
                    1,
                )
            }
        }
    }
}

/// One subscription of a run: number `n` (id `sub_<n>`, path `/s/<n>`, secret
/// [`secret_for`]`(n)`).
struct Sub {
    n: u64,
    event_types: Vec<&'static str>,
    client_id: Option<String>,
    hang: bool,
}

enum Plan {
    /// Produce this many events before the processor starts.
    Backlog(u64),
    /// Produce at this rate for this long once the processor is ready.
    Paced { rate: f64, secs: f64 },
}

struct RunSpec {
    id: &'static str,
    title: String,
    subs: Vec<Sub>,
    plan: Plan,
    mix: Mix,
    request_timeout_ms: Option<u64>,
    deadline: Duration,
    ceiling: ceiling::Mode,
    target: String,
}

impl RunSpec {
    fn events(&self) -> u64 {
        match self.plan {
            Plan::Backlog(n) => n,
            Plan::Paced { rate, secs } => (rate * secs).round() as u64,
        }
    }

    fn expected(&self) -> u64 {
        (0..self.events()).map(|s| self.mix.event(s).2).sum()
    }
}

fn specs(args: &Args) -> Vec<RunSpec> {
    let k = args.endpoints.max(1) as u64;
    let events_a = args.pick(args.events, 200_000, 2_000);
    let ceiling_secs = args.pick(args.ceiling_secs, 10.0, 1.0);
    let closed = ceiling::Mode::Closed { secs: ceiling_secs };
    let backlog_deadline = Duration::from_secs(args.timeout_secs);
    let plain_subs = |clients: u64| -> Vec<Sub> {
        if clients <= 1 {
            vec![Sub {
                n: 0,
                event_types: vec!["rewards.points_awarded"],
                client_id: None,
                hang: false,
            }]
        } else {
            (0..clients)
                .map(|n| Sub {
                    n,
                    event_types: vec!["rewards.points_awarded"],
                    client_id: Some(format!("c{n}")),
                    hang: false,
                })
                .collect()
        }
    };
    let mut out = Vec::new();
    let warmup = args.pick(args.warmup_events, 20_000, 0);
    if warmup > 0 {
        out.push(RunSpec {
            id: "warmup",
            title: format!("warm-up (not reported): {warmup} pre-produced events"),
            subs: plain_subs(k),
            plan: Plan::Backlog(warmup),
            mix: Mix::Plain { clients: k },
            request_timeout_ms: None,
            deadline: backlog_deadline,
            ceiling: closed,
            target: String::new(),
        });
    }
    let throughput = |id: &'static str, what: &str| RunSpec {
        id,
        title: format!(
            "throughput{what}: {events_a} pre-produced events, one matching subscription each"
        ),
        subs: plain_subs(k),
        plan: Plan::Backlog(events_a),
        mix: Mix::Plain { clients: k },
        request_timeout_ms: None,
        deadline: backlog_deadline,
        ceiling: closed,
        target: "≥ 60 % of ceiling".into(),
    };
    if args.has(Scenario::A) {
        out.push(throughput("a", ""));
    }
    if args.has(Scenario::B) {
        let n = args.pick(args.fanout_events, 20_000, 200);
        out.push(RunSpec {
            id: "b",
            title: format!(
                "fan-out: {n} pre-produced events × {} subscriptions, {} endpoint(s)",
                args.fanout,
                k.min(args.fanout)
            ),
            subs: (0..args.fanout)
                .map(|n| Sub {
                    n,
                    event_types: vec!["rewards.points_awarded"],
                    client_id: None,
                    hang: false,
                })
                .collect(),
            plan: Plan::Backlog(n),
            mix: Mix::Fanout { subs: args.fanout },
            request_timeout_ms: None,
            deadline: backlog_deadline,
            ceiling: closed,
            target: "≥ 75 % of ceiling".into(),
        });
    }
    let secs_c = args.pick(args.duration_secs, 30.0, 5.0);
    if args.has(Scenario::C) {
        out.push(RunSpec {
            id: "c",
            title: format!(
                "latency: {:.0} events/s for {secs_c:.0} s after ready, one subscription each, {k} endpoint(s)",
                args.rate
            ),
            subs: plain_subs(k),
            plan: Plan::Paced {
                rate: args.rate,
                secs: secs_c,
            },
            mix: Mix::Plain { clients: k },
            request_timeout_ms: None,
            deadline: Duration::from_secs_f64(secs_c + 60.0),
            ceiling: ceiling::Mode::Open {
                rate: args.rate,
                secs: secs_c.min(10.0),
            },
            target: "p99 ≤ 20 ms".into(),
        });
    }
    if args.has(Scenario::D) {
        let every = (100 / args.hang_percent.clamp(1, 100)).max(1);
        // The healthy subscriptions of a, plus one on the hanging endpoint for every
        // `rewards.redeemed` event.
        let subs = || {
            let mut subs = plain_subs(k);
            subs.push(Sub {
                n: k.max(2),
                event_types: vec!["rewards.redeemed"],
                client_id: None,
                hang: true,
            });
            subs
        };
        let isolation = Duration::from_secs(args.pick(args.isolation_secs, 120, 30));
        out.push(RunSpec {
            id: "d-rate",
            title: format!(
                "isolation: {events_a} pre-produced events, 1 in {every} to an endpoint that hangs ({} ms timeout), the rest as a",
                args.hang_timeout_ms
            ),
            subs: subs(),
            plan: Plan::Backlog(events_a),
            mix: Mix::Isolation {
                every,
                clients: k,
                hanging: 1,
            },
            request_timeout_ms: Some(args.hang_timeout_ms),
            deadline: isolation,
            ceiling: closed,
            target: "≥ 90 % of a".into(),
        });
        let secs = secs_c.min(10.0);
        out.push(RunSpec {
            id: "d-latency",
            title: format!(
                "isolation: {:.0} events/s for {secs:.0} s, 1 in {every} to an endpoint that hangs",
                args.rate
            ),
            subs: subs(),
            plan: Plan::Paced {
                rate: args.rate,
                secs,
            },
            mix: Mix::Isolation {
                every,
                clients: k,
                hanging: 1,
            },
            request_timeout_ms: Some(args.hang_timeout_ms),
            deadline: Duration::from_secs_f64(secs + 60.0),
            ceiling: ceiling::Mode::Open {
                rate: args.rate * (every - 1) as f64 / every as f64,
                secs,
            },
            target: "p99 ≤ 20 ms (as c)".into(),
        });
    }
    if args.has(Scenario::F) {
        let every = (100 / args.hang_percent.clamp(1, 100)).max(1);
        let hanging = args.hang_origins.max(1);
        let mut subs = plain_subs(k);
        // One client-scoped subscription per hanging origin (sub n picks hanging listener
        // n mod hang_origins).
        subs.extend((0..hanging).map(|i| Sub {
            n: 100_000 * hanging.div_ceil(100_000) + i,
            event_types: vec!["rewards.redeemed"],
            client_id: Some(format!("h{i}")),
            hang: true,
        }));
        out.push(RunSpec {
            id: "f",
            title: format!(
                "isolation at scale: {events_a} pre-produced events, 1 in {every} to one of {hanging} hanging origins ({} ms timeout), the rest as a over {k} healthy",
                args.hang_timeout_ms
            ),
            subs,
            plan: Plan::Backlog(events_a),
            mix: Mix::Isolation {
                every,
                clients: k,
                hanging,
            },
            request_timeout_ms: Some(args.hang_timeout_ms),
            deadline: Duration::from_secs(args.pick(args.isolation_secs, 120, 30)),
            ceiling: closed,
            target: "≥ 90 % of a, no healthy attempt shed".into(),
        });
    }
    // d-rate and f are judged against a; the host's speed drifts by tens of percent over the
    // minutes between them, so a runs again after them and they are judged against the mean.
    if args.has(Scenario::A) && (args.has(Scenario::D) || args.has(Scenario::F)) {
        out.push(throughput(
            A_AGAIN,
            " again (with a, the reference of d-rate and f)",
        ));
    }
    if args.has(Scenario::G) {
        let subs = args.pick(args.huge_fanout, 20_000, 2_000);
        let n = args.pick(args.huge_fanout_events, 2_000, 5);
        out.push(RunSpec {
            id: "g",
            title: format!(
                "memory: {n} pre-produced events × {subs} `*` subscriptions over {k} endpoint(s)"
            ),
            subs: (0..subs)
                .map(|n| Sub {
                    n,
                    event_types: vec!["*"],
                    client_id: None,
                    hang: false,
                })
                .collect(),
            plan: Plan::Backlog(n),
            mix: Mix::Fanout { subs },
            request_timeout_ms: None,
            deadline: Duration::from_secs(args.timeout_secs.max(n * subs / 2_000)),
            ceiling: closed,
            target: "complete, peak RSS < 500 MB".into(),
        });
    }
    if args.has(Scenario::E) {
        let s = args.pick(args.subscriptions, 100_000, 5_000);
        let n = args.pick(args.scale_events, 20_000, 500);
        out.push(RunSpec {
            id: "e",
            title: format!(
                "scale: {s} subscriptions (one event type and client each, over {k} endpoint(s)), then {n} events matching one each"
            ),
            subs: (0..s)
                .map(|n| Sub {
                    n,
                    event_types: vec![KNOWN_EVENT_TYPES[(n as usize) % KNOWN_EVENT_TYPES.len()]],
                    client_id: Some(format!("c{n}")),
                    hang: false,
                })
                .collect(),
            plan: Plan::Backlog(n),
            mix: Mix::Scale { subs: s },
            request_timeout_ms: None,
            deadline: backlog_deadline,
            ceiling: closed,
            target: "load ≤ 5 s, RSS ≤ 300 MB".into(),
        });
    }
    out
}

struct Bench {
    args: Args,
    receiver: Receiver,
    ca_file: PathBuf,
    work_dir: PathBuf,
    bin: PathBuf,
    producer: FutureProducer,
    ceilings: HashMap<String, Ceiling>,
    floors: HashMap<String, floor::Floor>,
}

fn mb(mib: Option<f64>) -> Option<f64> {
    mib.map(|m| m * 1024.0 * 1024.0 / 1e6)
}

impl Bench {
    /// The concurrency the processor can reach in a run: its global limit, or the per-endpoint
    /// limit times the healthy origins the run's subscriptions use.
    fn concurrency(&self, spec: &RunSpec) -> (usize, usize) {
        let origins = spec
            .subs
            .iter()
            .filter(|s| !s.hang)
            .map(|s| s.n as usize % self.receiver.healthy_listeners())
            .collect::<std::collections::HashSet<_>>()
            .len()
            .max(1);
        let c = self
            .args
            .max_in_flight
            .min(self.args.max_in_flight_per_endpoint * origins);
        (origins, c)
    }

    fn url(&self, sub: &Sub) -> String {
        if sub.hang {
            self.receiver.hanging_url(sub.n)
        } else {
            self.receiver.healthy_url(sub.n as usize, sub.n)
        }
    }

    fn config(&self, spec: &RunSpec, prefix: &str, admin_port: u16) -> Config {
        let mut c = Config::default();
        c.kafka.bootstrap_servers = self.args.bootstrap_servers.clone();
        c.kafka.group_id = format!("{prefix}group");
        c.kafka.client_id = "mgpass-bench-processor".into();
        // Backlog runs produce before the processor starts.
        c.kafka.events_offset_reset = "earliest".into();
        c.topics = TopicNames::with_prefix(prefix);
        c.topic_setup.partitions = self.args.partitions;
        c.topic_setup.subscription_partitions = 3;
        c.topic_setup.replication_factor = 1;
        c.topic_setup.retention_ms = 3_600_000;
        c.topic_setup.long_retention_ms = 3_600_000;
        c.http.ca_bundle = Some(self.ca_file.clone());
        c.http.allow_private = vec!["127.0.0.0/8".into()];
        if let Some(t) = spec.request_timeout_ms {
            c.http.request_timeout_ms = t;
            c.http.connect_timeout_ms = c.http.connect_timeout_ms.min(t);
        }
        c.delivery.max_in_flight = self.args.max_in_flight;
        c.delivery.max_in_flight_per_endpoint = self.args.max_in_flight_per_endpoint;
        c.delivery.shutdown_deadline_secs = 5;
        c.admin.listen = format!("127.0.0.1:{admin_port}");
        c
    }

    async fn run(&mut self, spec: &RunSpec) -> Result<RunResult> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis();
        let prefix = format!("bench-{stamp}-{}.", spec.id);
        let admin_port = process::free_port()?;
        let config = self.config(spec, &prefix, admin_port);
        let problems = config.validate();
        if !problems.is_empty() {
            bail!("bench config is invalid: {}", problems.join("; "));
        }
        let config_file = self.work_dir.join(format!("{}.toml", spec.id));
        load::create_topics(&config).await?;
        let result = self.run_on_topics(spec, &config, &config_file).await;
        if !self.args.keep_topics {
            load::delete_topics(&config).await;
        }
        result
    }

    async fn run_on_topics(
        &mut self,
        spec: &RunSpec,
        config: &Config,
        config_file: &std::path::Path,
    ) -> Result<RunResult> {
        let topic = config.topics.events.clone();
        let mix = spec.mix;
        let expected = spec.expected();
        eprintln!("[bench] {}: {}", spec.id, spec.title);

        // Subscriptions first, then (backlog runs) the events, all acknowledged before start.
        let subs = spec.subs.iter().map(|s| {
            let id = format!("sub_{:06}", s.n);
            let value = mgpass_testkit::subscription_json(
                &id,
                &self.url(s),
                &s.event_types,
                s.client_id.as_deref(),
                &secret_for(s.n),
            );
            (Some(id), Some(value))
        });
        let t = Instant::now();
        let n_subs =
            mgpass_testkit::try_produce_all(&self.producer, &config.topics.subscriptions, subs)
                .await?;
        if n_subs > 1000 {
            eprintln!(
                "[bench] {}: {n_subs} subscriptions produced in {:.1} s",
                spec.id,
                t.elapsed().as_secs_f64()
            );
        }
        let mut produce_secs = None;
        if let Plan::Backlog(n) = spec.plan {
            let took = load::produce_backlog(&self.producer, &topic, n, |seq| {
                let (t, c, _) = mix.event(seq);
                load::stamped_event(seq, t, c.as_deref())
            })
            .await?;
            eprintln!(
                "[bench] {}: {n} events produced in {:.1} s",
                spec.id,
                took.as_secs_f64()
            );
            produce_secs = Some(took.as_secs_f64());
        }

        let wait_quiet_secs = self.args.pick(self.args.wait_quiet_secs, 60, 0);
        if wait_quiet_secs > 0 {
            procfs::wait_quiet(
                self.args.quiet_cores,
                Duration::from_secs(wait_quiet_secs),
                self.args.broker_pid,
            )
            .await;
        }
        let _ = self.receiver.take();
        // Backlog runs count the broker's requests from before the processor starts (its group
        // join and table load are a handful); paced runs from the start of the paced events.
        let mut requests_before = None;
        if let (Plan::Backlog(_), Some(cmd)) = (&spec.plan, &self.args.broker_requests_cmd) {
            requests_before = broker::snapshot(cmd).await;
        }
        // librdkafka statistics every second (5 s by default), for the processor's own request
        // counters (`webhooks_kafka_requests_total`); --processor-set may override it.
        let mut sets = vec!["kafka.properties.statistics.interval.ms=1000".to_string()];
        sets.extend(self.args.processor_set.iter().cloned());
        sets.retain(|s| !s.trim().is_empty());
        let started = Instant::now();
        let mut proc = Processor::spawn(
            &self.bin,
            config,
            Options {
                sets,
                log: Some(self.work_dir.join(format!("{}.processor.log", spec.id))),
                rust_log: None,
                config_file: Some(config_file.to_path_buf()),
                env: Vec::new(),
            },
        )?;
        let pid = proc.pid();
        let ready = proc.wait_ready(Duration::from_secs(180)).await?;
        let at_ready = procfs::CpuSample::take(Some(pid), self.args.broker_pid);
        let rss_ready = procfs::status_mib(pid, "VmRSS");
        let start_to_ready = ready.duration_since(started).as_secs_f64();

        // Latency runs start producing once the processor really consumes: a probe event is
        // delivered, then the consumer group gets time to settle (its members join one by one).
        let mut ready_to_first = None;
        let mut window_start = None;
        let paced = match spec.plan {
            Plan::Paced { rate, secs } => {
                let (t, c, _) = mix.event(0);
                let probe = load::stamped_event(u64::MAX / 2, t, c.as_deref());
                let (key, value) = probe;
                mgpass_testkit::try_produce_all(&self.producer, &topic, [(Some(key), Some(value))])
                    .await?;
                let probe_deadline = Instant::now() + Duration::from_secs(120);
                while self.receiver.healthy_count() == 0 {
                    proc.check_alive()?;
                    if Instant::now() > probe_deadline {
                        bail!("the probe event was not delivered within 120 s of ready");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                ready_to_first = Some(ready.elapsed().as_secs_f64());
                tokio::time::sleep(Duration::from_secs(self.args.settle_secs)).await;
                if let Some(cmd) = &self.args.broker_requests_cmd {
                    requests_before = broker::snapshot(cmd).await;
                }
                let _ = self.receiver.take();
                window_start = Some((
                    Instant::now(),
                    procfs::CpuSample::take(Some(pid), self.args.broker_pid),
                ));
                let producer = self.producer.clone();
                let topic = topic.clone();
                Some(tokio::spawn(async move {
                    load::produce_paced(&producer, &topic, rate, secs, |seq| {
                        let (t, c, _) = mix.event(seq);
                        load::stamped_event(seq, t, c.as_deref())
                    })
                    .await
                }))
            }
            Plan::Backlog(_) => None,
        };

        // Wait for the healthy deliveries (or the deadline), reporting progress. Backlog runs
        // measure CPU from the first delivery on.
        let deadline = ready + spec.deadline;
        let stall = Duration::from_secs(self.args.stall_secs);
        let mut last_report = Instant::now();
        let mut last_progress = (0u64, Instant::now());
        let mut stalled = false;
        loop {
            let got = self.receiver.healthy_count();
            if got != last_progress.0 {
                last_progress = (got, Instant::now());
            } else if got > 0 && last_progress.1.elapsed() > stall {
                stalled = true;
                break;
            }
            if window_start.is_none() && got > 0 {
                ready_to_first = Some(ready.elapsed().as_secs_f64());
                window_start = Some((
                    Instant::now(),
                    procfs::CpuSample::take(Some(pid), self.args.broker_pid),
                ));
            }
            if got >= expected || Instant::now() > deadline {
                break;
            }
            proc.check_alive()?;
            if last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!(
                    "[bench] {}: {got}/{expected} delivered, {} hung requests, {:.0} s since ready",
                    spec.id,
                    self.receiver.hung_count(),
                    ready.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let at_done = procfs::CpuSample::take(Some(pid), self.args.broker_pid);
        let rss_peak = procfs::status_mib(pid, "VmHWM");
        let broker_requests = match (&requests_before, &self.args.broker_requests_cmd) {
            (Some(before), Some(cmd)) => broker::snapshot(cmd)
                .await
                .map(|after| broker::delta(before, &after))
                .unwrap_or_default(),
            _ => Default::default(),
        };
        let paced = match paced {
            Some(p) => Some(p.await??),
            None => None,
        };
        // One more statistics interval (1 s, set below), so the request counters include the
        // end of the run.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let metrics = proc.metrics().await.unwrap_or_default();
        proc.stop(Duration::from_secs(10)).await?;
        let rec = self.receiver.take();

        let delivered = rec.healthy;
        let cpu = procfs::CpuDelta::between(
            window_start.as_ref().map_or(&at_ready, |(_, c)| c),
            &at_done,
        );
        let load_seconds_metric = metrics.get("webhooks_subscription_load_seconds").copied();
        let keep = [
            "webhooks_kafka_requests_total{",
            "webhooks_kafka_produce_batch_records{",
            "webhooks_attempts_total{",
            "webhooks_deliveries_total{",
            "webhooks_retries_scheduled_total{",
            "webhooks_events_total{",
            "webhooks_subscriptions",
        ];
        let metrics = metrics
            .into_iter()
            .filter(|(k, v)| *v != 0.0 && keep.iter().any(|p| k == p || k.starts_with(p)))
            .filter(|(k, _)| k.contains('{') || k == "webhooks_subscriptions")
            .collect();
        let mut result = RunResult {
            id: spec.id.to_string(),
            label: self.args.label.clone(),
            title: spec.title.clone(),
            events: spec.events(),
            subscriptions: spec.subs.len() as u64,
            expected,
            delivered,
            complete: delivered >= expected,
            duplicates: rec.duplicates,
            bad_signatures: rec.bad_signatures,
            unstamped: rec.unstamped,
            hung_requests: rec.hung,
            produce_secs,
            paced,
            start_to_ready_secs: start_to_ready,
            ready_to_first_delivery_secs: ready_to_first,
            load_seconds_metric,
            load_cpu_secs: at_ready.processor,
            window: Window::of(&rec.arrivals),
            per_second: report::per_second(&rec.arrivals),
            latency: LatencyMs::of(&rec.latency_us),
            cpu,
            cpu_per_1k: cpu
                .processor_secs
                .filter(|_| delivered > 0)
                .map(|s| s / delivered as f64 * 1000.0),
            broker_cpu_per_1k: cpu
                .broker_secs
                .filter(|_| delivered > 0)
                .map(|s| s / delivered as f64 * 1000.0),
            broker_requests,
            cpu_vs_ceiling: None,
            rss_peak_mb: mb(rss_peak),
            rss_ready_mb: mb(rss_ready),
            metrics,
            ceiling: None,
            kafka_floor: None,
            ratio: None,
            target: spec.target.clone(),
            verdict: String::new(),
            notes: Vec::new(),
        };
        if matches!(spec.plan, Plan::Backlog(_)) {
            result.notes.push(
                "backlog run: latency counts from production, before the processor started, so it measures queueing, not the pipeline".into(),
            );
        }
        if !result.complete {
            result.notes.push(if stalled {
                format!(
                    "only {delivered} of {expected} healthy deliveries arrived: none for {stall:?}, run ended"
                )
            } else {
                format!(
                    "only {delivered} of {expected} healthy deliveries arrived within {:?} of ready",
                    spec.deadline
                )
            });
        }

        // The raw ceiling for this run's concurrency and mode (measured once, reused; a-again
        // measures its own, minutes after a's, to show how far the host drifted).
        let (origins, conc) = self.concurrency(spec);
        let mut key = format!("{origins} {conc} {:?}", spec.ceiling);
        if spec.id == A_AGAIN {
            key.push_str(A_AGAIN);
        }
        if !self.ceilings.contains_key(&key) {
            eprintln!(
                "[bench] {}: ceiling, plain reqwest, concurrency {conc} over {origins} endpoints, {:?}",
                spec.id, spec.ceiling
            );
            let c = ceiling::run(&self.receiver, origins, conc, spec.ceiling).await?;
            self.ceilings.insert(key.clone(), c);
        }
        let c = self.ceilings[&key].clone();
        if matches!(spec.ceiling, ceiling::Mode::Closed { .. }) && c.rate > 0.0 {
            result.ratio = Some(result.window.rate / c.rate);
        }
        if let (Some(p), Some(b)) = (result.cpu_per_1k, c.bench_cpu_per_1k) {
            result.cpu_vs_ceiling = Some(p / b);
        }
        result.ceiling = Some(c);

        // The Kafka floor of latency runs (measured once per rate, reused).
        if let Plan::Paced { rate, secs } = spec.plan {
            let secs = secs.min(10.0);
            let key = format!("floor {rate} {secs}");
            if !self.floors.contains_key(&key) {
                eprintln!(
                    "[bench] {}: Kafka floor, {rate:.0} events/s for {secs:.0} s, plain consumer",
                    spec.id
                );
                let f = floor::run(
                    &self.args.bootstrap_servers,
                    &self.producer,
                    self.args.partitions,
                    rate,
                    secs,
                    self.args.broker_pid,
                )
                .await?;
                self.floors.insert(key.clone(), f);
            }
            result.kafka_floor = Some(self.floors[&key].clone());
        }
        Ok(result)
    }
}

/// The id of a's second run, after d-rate and f.
const A_AGAIN: &str = "a-again";

/// The reference rate of d-rate and f: a's, or the mean of a and a-again when both ran, with a
/// note saying how far the host drifted between them.
fn a_reference(results: &[RunResult]) -> Option<(f64, String)> {
    let rate = |id: &str| {
        results
            .iter()
            .find(|r| r.id == id && r.window.rate > 0.0)
            .map(|r| r.window.rate)
    };
    let a = rate("a")?;
    Some(match rate(A_AGAIN) {
        Some(again) => (
            (a + again) / 2.0,
            format!(
                "the mean of a's {a:.0}/s and a-again's {again:.0}/s (the host drifted {:.0} % between them)",
                ((again - a) / a * 100.0).abs()
            ),
        ),
        None => (a, format!("a's {a:.0}/s")),
    })
}

/// Fills in the verdicts once every run is done (d-rate and f are judged against a). A run
/// during which other processes used more than `quiet_cores` says so in its verdict.
fn judge(results: &mut [RunResult], smoke: bool, quiet_cores: f64) {
    let a_ref = a_reference(results);
    let c_p99 = results.iter().find(|r| r.id == "c").map(|r| r.latency.p99);
    for r in results.iter_mut() {
        let verdict = match r.id.as_str() {
            _ if smoke => "smoke: not judged".to_string(),
            _ if !r.complete && r.id != "d-rate" && r.id != "f" => "INCOMPLETE".to_string(),
            "a" | A_AGAIN => throughput_verdict(r, 0.60),
            "b" => throughput_verdict(r, 0.75),
            "c" | "d-latency" => met(r.latency.p99 <= 20.0),
            "d-rate" => match &a_ref {
                Some((a, of)) => {
                    let share = r.window.rate / a;
                    r.notes
                        .push(format!("healthy rate is {:.0} % of {of}", share * 100.0));
                    met(share >= 0.9 && r.complete)
                }
                _ => "n/a (run a too)".into(),
            },
            "f" => match &a_ref {
                Some((a, of)) => {
                    let share = r.window.rate / a;
                    let shed = healthy_not_success(r);
                    r.notes.push(format!(
                        "healthy rate is {:.0} % of {of}; {shed} healthy attempts not successful",
                        share * 100.0
                    ));
                    met(share >= 0.9 && r.complete && shed == 0.0)
                }
                _ => "n/a (run a too)".into(),
            },
            "g" => met(r.rss_peak_mb.is_some_and(|m| m < 500.0)),
            "e" => {
                let load = r.load_seconds_metric.unwrap_or(r.start_to_ready_secs);
                met(load <= 5.0 && r.rss_peak_mb.is_some_and(|m| m <= 300.0))
            }
            _ => String::new(),
        };
        if let Some(ratio) = r.broker_above_floor_vs_processor() {
            r.notes.push(format!(
                "broker CPU above the Kafka floor {ratio:.2} × the processor's (target ≤ 0.25; \
                 with the floor's producing and plain consuming of the same events: {:.2} ×)",
                r.broker_vs_processor().unwrap_or(f64::NAN)
            ));
        }
        if r.id == "d-latency" {
            if let Some(c) = c_p99 {
                r.notes.push(format!(
                    "healthy p99 {:.1} ms vs c's {:.1} ms",
                    r.latency.p99, c
                ));
            }
        }
        r.verdict = match r.cpu.other_cores {
            Some(others) if !smoke && others > quiet_cores && !verdict.is_empty() => {
                format!("{verdict}, DISTURBED (others used {others:.2} cores)")
            }
            _ => verdict,
        };
    }
}

/// Runs a and b: the rate against the ceiling, the processor's CPU per delivery against the
/// ceiling's client and receiver per request (≤ 0.6×), the broker's against the processor's
/// (≤ 0.25×); each missed part is named.
fn throughput_verdict(r: &mut RunResult, min_ratio: f64) -> String {
    let mut missed = Vec::new();
    if r.ratio.is_none_or(|x| x < min_ratio) {
        missed.push("rate");
    }
    if r.cpu_vs_ceiling.is_none_or(|x| x > 0.6) {
        missed.push("processor CPU");
    }
    if r.broker_vs_processor().is_none_or(|x| x > 0.25) {
        missed.push("broker CPU");
    }
    if missed.is_empty() {
        "met".into()
    } else {
        format!("MISSED ({})", missed.join(", "))
    }
}

/// Attempts of the healthy deliveries (`rewards.points_awarded`) that did not succeed, from
/// the processor's `webhooks_attempts_total`.
fn healthy_not_success(r: &RunResult) -> f64 {
    r.metrics
        .iter()
        .filter(|(k, _)| {
            k.starts_with("webhooks_attempts_total{")
                && k.contains("\"rewards.points_awarded\"")
                && !k.contains("outcome=\"success\"")
        })
        // A fold from +0: an empty f64 sum is -0, printed "-0".
        .fold(0.0, |sum, (_, v)| sum + v)
}

fn met(ok: bool) -> String {
    if ok { "met" } else { "MISSED" }.to_string()
}

async fn main_async(args: Args) -> Result<bool> {
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("mgpass-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let bin = match &args.processor_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("mgpass-webhooks"),
    };
    if !bin.is_file() {
        bail!(
            "processor binary {} not found: build it (cargo build --release) or pass --processor-bin",
            bin.display()
        );
    }
    let hanging = if args.has(Scenario::F) {
        args.hang_origins.max(1) as usize
    } else {
        1
    };
    let receiver = Receiver::start(args.endpoints.max(1), hanging, args.alpn).await?;
    let ca_file = work_dir.join("ca.pem");
    std::fs::write(&ca_file, receiver.ca_pem())?;
    let producer =
        mgpass_testkit::fixtures::producer_to(&args.bootstrap_servers, args.producer_linger_ms)?;
    let specs = specs(&args);
    if specs.is_empty() {
        bail!("no scenario selected");
    }
    eprintln!(
        "[bench] {} run(s) on {}; processor {}; work dir {}",
        specs.len(),
        procfs::cpu_model(),
        bin.display(),
        work_dir.display()
    );
    let mut bench = Bench {
        args,
        receiver,
        ca_file,
        work_dir,
        bin,
        producer,
        ceilings: HashMap::new(),
        floors: HashMap::new(),
    };
    let mut results = Vec::new();
    let mut failed = false;
    for spec in &specs {
        match bench.run(spec).await {
            Ok(r) => {
                eprintln!("{}", report::details(&r));
                if r.id != "warmup" {
                    results.push(r);
                }
            }
            Err(e) => {
                eprintln!("[bench] {} FAILED: {e:#}", spec.id);
                failed = true;
            }
        }
    }
    let noted: Vec<usize> = results.iter().map(|r| r.notes.len()).collect();
    judge(&mut results, bench.args.smoke, bench.args.quiet_cores);
    for r in &results {
        // d-rate may legitimately end before all healthy deliveries arrive: that is its finding.
        if !r.complete && r.id != "d-rate" && r.id != "f" {
            failed = true;
        }
        if r.duplicates > 0 || r.bad_signatures > 0 || r.unstamped > 0 {
            eprintln!(
                "[bench] {}: {} duplicates, {} bad signatures, {} unstamped requests",
                r.id, r.duplicates, r.bad_signatures, r.unstamped
            );
        }
        if r.bad_signatures > 0 {
            failed = true;
        }
    }
    println!();
    println!("CPU: {}", procfs::cpu_model());
    println!("{}", report::text_table(&results));
    // What the verdicts were judged on (the per-run details above were printed before).
    for (r, before) in results.iter().zip(noted) {
        for note in &r.notes[before..] {
            println!("{}: {note}", r.id);
        }
    }
    if bench.args.markdown {
        println!("{}", report::markdown_table(&results));
    }
    if let Some(path) = &bench.args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "[bench] processor logs and configs in {}",
        bench.work_dir.display()
    );
    Ok(!failed)
}

fn main() -> ExitCode {
    mgpass_webhooks::allocator::tune();
    let args = Args::parse();
    receiver::LOG_SLOW_US.store(
        (args.log_slow_ms * 1000.0).max(0.0) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mgpass-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mgpass-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
