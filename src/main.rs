//! The `mgpass-webhooks` binary: one command-line front end over the library's subcommands.
//! Configuration errors and bad arguments fail at start with a message naming the setting.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use clap::{Args, Parser, Subcommand};
use mgpass_webhooks::config::{Config, Overrides};
use mgpass_webhooks::events::KNOWN_EVENT_TYPES;
use mgpass_webhooks::metrics::Metrics;
use mgpass_webhooks::ops::{self, admin, admin::choose_secret, admin::SecretSource};
use mgpass_webhooks::subscriptions::SubscriptionRecord;
use mgpass_webhooks::topics::{self, SetupOutcome};
use mgpass_webhooks::{app, commands, console};
use mgpass_webhooks::{healthcheck, kafka, telemetry};
use tokio_util::sync::CancellationToken;

// glibc malloc/free was about a quarter of the processor's CPU under load (docs/benchmarks.md);
// its settings are `mgpass_webhooks::allocator`'s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mgpass-webhooks",
    version,
    about = "Kafka-native webhook delivery for mgPass rewards"
)]
struct Cli {
    /// TOML configuration file (layered over the built-in defaults, under the environment).
    #[arg(long, short = 'c', global = true, env = "MGPASS_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides kafka.bootstrap_servers).
    #[arg(long, short = 'b', global = true)]
    bootstrap_servers: Option<String>,
    /// Override any setting: --set delivery.max_in_flight=512 (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor: load subscriptions, consume events, deliver webhooks.
    Run,
    /// Create every topic with its policy (harmless when they exist).
    SetupTopics {
        /// Partitions of the event, retry, replay and output topics.
        #[arg(long)]
        partitions: Option<i32>,
        /// Replication factor of every topic (-1: broker default).
        #[arg(long)]
        replication_factor: Option<i32>,
    },
    /// Print the effective configuration, secrets redacted, after validating it.
    CheckConfig,
    /// Manage subscriptions (records of the compacted subscriptions topic).
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
    /// Re-inject failed deliveries through the replay topic with a fresh attempt budget (a
    /// bounded job: reads the failed topic to its end at start). Needs a selector or --all.
    Replay(ops::replay::ReplayArgs),
    /// Inspect failed deliveries.
    #[command(subcommand)]
    Failed(ops::failed::FailedCommand),
    /// Inspect deliveries in the delivery log.
    #[command(subcommand)]
    Deliveries(ops::failed::DeliveriesCommand),
    /// Produce sample rewards events, for trying the processor out.
    ProduceSample {
        #[arg(long, default_value = "rewards.points_awarded")]
        event_type: String,
        #[arg(long, default_value = "usr_abc123")]
        user_id: String,
        /// OAuth client the event comes from.
        #[arg(long)]
        client_id: Option<String>,
        /// How many events.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// `json`, or `avro`: registers schemas/rewards-event.avsc in registry.url and
        /// produces the event in the Confluent wire format.
        #[arg(long, default_value = "json", value_parser = ["json", "avro"])]
        format: String,
        /// Subject naming for `--format avro`: `topic_name` (`<topic>-value`) or
        /// `record_name` (`com.mgpass.rewards.RewardsEvent`); default registry.subject_strategy.
        #[arg(long, value_parser = ["topic_name", "record_name"])]
        subject_strategy: Option<String>,
    },
    /// The admin console: a web UI and JSON API on console.listen (login required). With
    /// `hash-password`, prints the argon2 hash of a password for console.accounts.
    #[command(args_conflicts_with_subcommands = true)]
    Console {
        #[command(subcommand)]
        command: Option<ConsoleCommand>,
    },
    /// Probe the admin server's /livez (exit 0 on 200, else 1): the container health check.
    Healthcheck {
        /// URL to GET instead of http://<admin.listen>/livez (0.0.0.0 probed as 127.0.0.1).
        #[arg(long)]
        url: Option<String>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Read a password from standard input (one line) and print its argon2id hash, the
    /// `password_hash` of a console.accounts entry.
    HashPassword {
        /// Also print a TOML entry for console.accounts with this user name.
        #[arg(long)]
        username: Option<String>,
        /// The role of that entry: admin or viewer.
        #[arg(long, default_value = "admin", value_parser = ["admin", "viewer"])]
        role: String,
    },
}

#[derive(Subcommand)]
enum SubscriptionsCommand {
    /// Create or replace a subscription.
    Put(PutArgs),
    /// Delete a subscription (writes a tombstone).
    Delete {
        #[arg(long)]
        id: String,
    },
    /// Show one subscription (the secret as its fingerprint: first 8 hex digits of its SHA-256).
    Get {
        #[arg(long)]
        id: String,
    },
    /// List every subscription (secrets as fingerprints).
    List,
    /// Enable a subscription (keeps everything else).
    Enable {
        #[arg(long)]
        id: String,
    },
    /// Disable a subscription (keeps everything else).
    Disable {
        #[arg(long)]
        id: String,
    },
    /// Give a subscription a new generated secret, printed once.
    RotateSecret {
        #[arg(long)]
        id: String,
    },
    /// Send a sample event to this subscription only, through the normal delivery path
    /// (the replay topic: signed, logged, retried). Prints the delivery id.
    Test {
        #[arg(long)]
        id: String,
        /// Event type of the sample (default: the subscription's first, or
        /// rewards.points_awarded).
        #[arg(long)]
        event_type: Option<String>,
    },
}

#[derive(Args)]
struct PutArgs {
    #[arg(long)]
    id: String,
    /// Endpoint URL (https://…; http:// is sent to only with http.allow_http).
    #[arg(long)]
    url: String,
    /// Event type to receive (repeatable); `*` for every event.
    #[arg(long = "event-type", default_value = "*")]
    event_types: Vec<String>,
    /// Only receive events from this OAuth client.
    #[arg(long)]
    client_id: Option<String>,
    /// Secret to sign with (at least 24 bytes); generated (and printed once) when no secret
    /// option is given. It shows in `ps` and shell history: prefer --secret-stdin.
    #[arg(long, conflicts_with_all = ["secret_env", "secret_stdin"])]
    secret: Option<String>,
    /// Name of an environment variable holding the secret.
    #[arg(long, conflicts_with = "secret_stdin")]
    secret_env: Option<String>,
    /// Read the secret from standard input (one trailing newline is dropped).
    #[arg(long)]
    secret_stdin: bool,
    /// Create the subscription disabled.
    #[arg(long)]
    disabled: bool,
}

fn main() -> ExitCode {
    mgpass_webhooks::allocator::tune();
    let cli = Cli::parse();
    let overrides = Overrides {
        bootstrap_servers: cli.bootstrap_servers.clone(),
        set: cli.set.clone(),
    };
    let config = match Config::from_process(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mgpass-webhooks: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mgpass-webhooks: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ops::UsageError>().is_some() => {
            eprintln!("mgpass-webhooks: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("mgpass-webhooks: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, mut config: Config) -> Result<()> {
    match command {
        Command::Run => {
            let cancel = CancellationToken::new();
            tokio::spawn(shutdown_on_signal(cancel.clone()));
            let metrics = Arc::new(Metrics::new());
            app::run_processor(config, metrics, cancel).await
        }
        Command::SetupTopics {
            partitions,
            replication_factor,
        } => {
            if let Some(p) = partitions {
                config.topic_setup.partitions = p;
            }
            if let Some(r) = replication_factor {
                config.topic_setup.replication_factor = r;
            }
            let problems = config.validate();
            if !problems.is_empty() {
                return Err(anyhow!("{}", problems.join("; ")));
            }
            for (name, outcome) in topics::setup(&config).await? {
                match outcome {
                    SetupOutcome::Created => println!("created  {name}"),
                    SetupOutcome::Existed => println!("exists   {name}"),
                    SetupOutcome::ExistedWithDifferences(diffs) => {
                        for (k, want, got) in diffs {
                            println!("exists   {name}  WARNING {k}={got:?}, expected {want:?}");
                        }
                    }
                }
            }
            Ok(())
        }
        Command::CheckConfig => {
            print!("{}", config.redacted());
            kafka::check_reachable(&config, kafka::METADATA_TIMEOUT)
                .map(|()| eprintln!("kafka: reachable at {}", config.kafka.bootstrap_servers))?;
            if let Some(registry) =
                mgpass_webhooks::avro::registry::Registry::from_config(&config.registry)?
            {
                registry.check().await?;
                eprintln!("schema registry: answers at {}", registry.base_url());
            }
            Ok(())
        }
        Command::Subscriptions(cmd) => subscriptions(cmd, &config).await,
        Command::Replay(args) => ops::replay::run(&config, &args, &mut std::io::stdout().lock())
            .await
            .map(|_| ()),
        Command::Failed(ops::failed::FailedCommand::List(args)) => {
            ops::failed::list(&config, &args, &mut std::io::stdout().lock())
                .await
                .map(|_| ())
        }
        Command::Deliveries(ops::failed::DeliveriesCommand::Show(args)) => {
            ops::failed::show(&config, &args, &mut std::io::stdout().lock())
                .await
                .map(|_| ())
        }
        Command::Deliveries(ops::failed::DeliveriesCommand::List(args)) => {
            ops::deliveries::list(&config, &args, &mut std::io::stdout().lock())
                .await
                .map(|_| ())
        }
        Command::Console { command: None } => {
            let cancel = CancellationToken::new();
            tokio::spawn(shutdown_on_signal(cancel.clone()));
            console::serve(config, cancel, None).await
        }
        Command::Console {
            command: Some(ConsoleCommand::HashPassword { username, role }),
        } => {
            let mut line = String::new();
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("password (shown as you type; Enter ends it): ");
            }
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| anyhow!("reading the password from standard input: {e}"))?;
            let password = line.trim_end_matches(['\n', '\r']);
            let hash = console::auth::hash_password(password).map_err(ops::UsageError)?;
            println!("{hash}");
            if let Some(user) = username {
                eprintln!(
                    "[[console.accounts]]\nusername = {}\npassword_hash = {}\nrole = {}",
                    toml_str(&user),
                    toml_str(&hash),
                    toml_str(&role)
                );
            }
            Ok(())
        }
        Command::ProduceSample {
            event_type,
            user_id,
            client_id,
            count,
            format,
            subject_strategy,
        } => {
            let producer = kafka::producer(&config)?;
            let strategy = subject_strategy.unwrap_or(config.registry.subject_strategy.clone());
            let subject = commands::event_subject(&strategy, &config.topics.events)?;
            for _ in 0..count {
                let event = commands::sample_event(&event_type, &user_id, client_id.as_deref());
                let bytes = if format == "avro" {
                    let (bytes, id) = commands::avro_event(&config, &subject, &event).await?;
                    eprintln!(
                        "avro: schema id {id}, subject {subject}, {} bytes",
                        bytes.len()
                    );
                    bytes
                } else {
                    serde_json::to_vec(&event)?
                };
                commands::produce(
                    &producer,
                    &config.topics.events,
                    Some(&user_id),
                    Some(&bytes),
                )
                .await?;
                println!("{event}");
            }
            Ok(())
        }
        Command::Healthcheck { url, timeout_ms } => {
            let url = match url {
                Some(u) => u,
                None => healthcheck::livez_url(&config.admin.listen)?,
            };
            healthcheck::probe(&url, std::time::Duration::from_millis(timeout_ms)).await?;
            println!("ok {url}");
            Ok(())
        }
    }
}

async fn subscriptions(cmd: SubscriptionsCommand, config: &Config) -> Result<()> {
    match cmd {
        SubscriptionsCommand::Put(a) => {
            let source = match (a.secret, a.secret_env, a.secret_stdin) {
                (Some(s), _, _) => SecretSource::Given(s),
                (None, Some(var), _) => SecretSource::Env(var),
                (None, None, true) => SecretSource::Stdin,
                (None, None, false) => SecretSource::Generate,
            };
            let (secret, generated) = choose_secret(
                source,
                |var| std::env::var(var).ok(),
                || std::io::read_to_string(std::io::stdin()),
            )
            .map_err(|e| ops::UsageError(e.to_string()))?;
            let record = SubscriptionRecord {
                id: a.id,
                url: a.url,
                event_types: a.event_types,
                client_id: a.client_id,
                secret: secret.expose().to_string(),
                enabled: !a.disabled,
            };
            let sub = commands::put_subscription(config, record).await?;
            for warning in commands::url_warnings(config, &sub.url).await {
                eprintln!("warning: {}: {warning}", sub.id);
            }
            println!("{}", admin::describe(&sub));
            if generated {
                // Shown once, on stdout only, so the admin can hand it to the partner.
                println!("secret: {}", secret.expose());
            }
            Ok(())
        }
        SubscriptionsCommand::Delete { id } => {
            commands::delete_subscription(config, &id).await?;
            println!("deleted {id}");
            Ok(())
        }
        SubscriptionsCommand::Get { id } => {
            let table = commands::load_table(config).await?;
            if let Some(why) = table.invalid(&id) {
                println!("{}", describe_invalid(&id, &why));
                return Ok(());
            }
            let sub = table
                .get(&id)
                .ok_or_else(|| anyhow!("no subscription with id {id:?}"))?;
            println!("{}", admin::describe(&sub));
            Ok(())
        }
        SubscriptionsCommand::Enable { id } => {
            let sub = commands::set_enabled(config, &id, true).await?;
            println!("{}", admin::describe(&sub));
            Ok(())
        }
        SubscriptionsCommand::Disable { id } => {
            let sub = commands::set_enabled(config, &id, false).await?;
            println!("{}", admin::describe(&sub));
            Ok(())
        }
        SubscriptionsCommand::RotateSecret { id } => {
            let (sub, secret) = commands::rotate_secret(config, &id).await?;
            println!("{}", admin::describe(&sub));
            // Shown once, on stdout only, as for a generated secret.
            println!("secret: {}", secret.expose());
            Ok(())
        }
        SubscriptionsCommand::Test { id, event_type } => {
            let task = ops::test_webhook::send(config, &id, event_type.as_deref()).await?;
            println!(
                "test webhook {} ({}) queued for {} on {}",
                task.delivery_id, task.event_type, task.subscription_id, config.topics.replay
            );
            Ok(())
        }
        SubscriptionsCommand::List => {
            let table = commands::load_table(config).await?;
            for sub in table.snapshot() {
                println!("{}", admin::describe(&sub));
            }
            let invalid = table.invalid_snapshot();
            for (id, why) in &invalid {
                println!("{}", describe_invalid(id, why));
            }
            eprintln!(
                "{} subscriptions, {} suspended (latest record invalid); known event types: {}",
                table.len(),
                invalid.len(),
                KNOWN_EVENT_TYPES.join(", ")
            );
            Ok(())
        }
    }
}

/// A suspended subscription (its latest record is invalid) as JSON: the reason, no secret.
fn describe_invalid(id: &str, why: &mgpass_webhooks::subscriptions::InvalidLatest) -> String {
    serde_json::json!({
        "id": id,
        "status": "invalid",
        "reason": why.reason,
        "error": why.message,
        "partition": why.partition,
        "offset": why.offset,
    })
    .to_string()
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The first SIGTERM/SIGINT cancels (graceful shutdown); a second exits at once.
async fn shutdown_on_signal(cancel: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            return;
        }
    };
    for n in 0.. {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        if n == 0 {
            tracing::info!("shutdown requested; a second signal exits at once");
            cancel.cancel();
        } else {
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        }
    }
}
