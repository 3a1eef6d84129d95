//! The processor binary as a child process, for the crash and shutdown tests and the benchmark:
//! configured through a TOML file written from a [`Config`] (only the settings a test or run
//! chooses, so the processor's own defaults apply to everything else and a binary built from
//! another commit still accepts the file), plus any `--set`; signalled, waited for, probed on
//! its admin port and stopped with SIGTERM then SIGKILL. Dropping a [`Processor`] kills it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mgpass_webhooks::config::Config;

/// How to start the processor besides its config.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// `--set KEY=VALUE` overrides, applied over the config file.
    pub sets: Vec<String>,
    /// Where the process' stdout and stderr go; inherited when `None`.
    pub log: Option<PathBuf>,
    /// `RUST_LOG` of the process; removed from its environment when `None`.
    pub rust_log: Option<String>,
    /// Where to write the config file; a temporary file when `None`.
    pub config_file: Option<PathBuf>,
    /// Extra environment variables of the process (set after the `MGPASS_*` of the test's own
    /// environment are removed), e.g. a debug build's test hooks.
    pub env: Vec<(String, String)>,
}

pub struct Processor {
    child: Child,
    admin_listen: String,
    log: Option<PathBuf>,
    http: reqwest::Client,
    _config_file: Option<tempfile::TempPath>,
}

impl Drop for Processor {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A free port for a server a test stops and starts again on the same port (its own registry
/// or broker): below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), so while it
/// is stopped no listener bound to port 0 and no outgoing connection of the other tests running
/// meanwhile can be given it. A port from [`free_port`] could be, and the restart then failed
/// with "already in use". Falls back to [`free_port`] when the range leaves no room below it.
pub fn restartable_port() -> Result<u16> {
    const LOW: u64 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32_768);
    if ephemeral_low <= LOW + 1_000 {
        return free_port();
    }
    let span = ephemeral_low - LOW;
    // Spread over the range by time and pid, so tests and processes starting together pick
    // different ports; bind to check that it is free now.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 20);
    for i in 0..500u64 {
        let x = seed
            .wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let port = (LOW + (x >> 32) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    free_port()
}

/// The processor's configuration file for `c`: Kafka connection and group, every topic name,
/// the HTTP client's CA and timeouts, the delivery limits and the admin address.
pub fn config_toml(c: &Config) -> String {
    let mut root = toml::Table::new();
    let mut set = |path: &str, value: toml::Value| {
        let (section, key) = path.split_once('.').expect("section.key");
        root.entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a section is a table")
            .insert(key.to_string(), value);
    };
    let int = |n: u64| toml::Value::Integer(n as i64);
    set(
        "kafka.bootstrap_servers",
        c.kafka.bootstrap_servers.clone().into(),
    );
    set("kafka.group_id", c.kafka.group_id.clone().into());
    set("kafka.client_id", c.kafka.client_id.clone().into());
    set(
        "kafka.events_offset_reset",
        c.kafka.events_offset_reset.clone().into(),
    );
    for (setting, name) in c.topics.all() {
        // The processor never touches the console's audit topic, and a binary from before the
        // console would refuse the setting.
        if setting != "topics.audit" {
            set(setting, name.into());
        }
    }
    if let Some(ca) = &c.http.ca_bundle {
        set("http.ca_bundle", ca.display().to_string().into());
    }
    set("http.connect_timeout_ms", int(c.http.connect_timeout_ms));
    set("http.request_timeout_ms", int(c.http.request_timeout_ms));
    if !c.http.allow_private.is_empty() {
        let allow = c.http.allow_private.iter().cloned().map(toml::Value::from);
        set("http.allow_private", toml::Value::Array(allow.collect()));
    }
    set(
        "delivery.max_in_flight",
        int(c.delivery.max_in_flight as u64),
    );
    set(
        "delivery.max_in_flight_per_endpoint",
        int(c.delivery.max_in_flight_per_endpoint as u64),
    );
    set(
        "delivery.shutdown_deadline_secs",
        int(c.delivery.shutdown_deadline_secs),
    );
    set("admin.listen", c.admin.listen.clone().into());
    toml::to_string(&root).expect("a TOML table serialises")
}

impl Processor {
    /// Starts `bin --config <file> [--set …] run` with the config file written from `config`.
    pub fn spawn(bin: &Path, config: &Config, options: Options) -> Result<Processor> {
        let (config_path, temp) = match &options.config_file {
            Some(path) => (path.clone(), None),
            None => {
                let file = tempfile::Builder::new()
                    .prefix("mgpass-processor-")
                    .suffix(".toml")
                    .tempfile()
                    .context("creating the processor's config file")?;
                let path = file.into_temp_path();
                (path.to_path_buf(), Some(path))
            }
        };
        std::fs::write(&config_path, config_toml(config))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&config_path);
        for s in &options.sets {
            cmd.arg("--set").arg(s);
        }
        cmd.arg("run").stdin(Stdio::null());
        // Settings from the environment would silently change what is tested or measured.
        for (k, _) in std::env::vars() {
            if k.starts_with("MGPASS_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        match &options.rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        if let Some(log) = &options.log {
            let out = std::fs::File::create(log)
                .with_context(|| format!("creating the processor log {}", log.display()))?;
            cmd.stdout(out.try_clone()?).stderr(out);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the processor {}", bin.display()))?;
        Ok(Processor {
            child,
            admin_listen: config.admin.listen.clone(),
            log: options.log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
            _config_file: temp,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name, as `kill` takes it (`-TERM`, `-INT`).
    pub fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill {sig} {} failed: {status}", self.child.id());
        }
        Ok(())
    }

    /// SIGKILL (if still running) and reap.
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Waits for the process to exit, failing after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("the processor did not exit within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running (`Ok(None)`) or how it ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Fails when the process has exited, quoting the end of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let tail = self.log.as_deref().map(|l| tail(l, 15)).unwrap_or_default();
            bail!("the processor exited ({status}); last lines of its log:\n{tail}");
        }
        Ok(())
    }

    fn admin_url(&self, path: &str) -> Result<String> {
        let port = self
            .admin_listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| anyhow!("admin.listen {:?} has no fixed port", self.admin_listen))?;
        Ok(format!("http://127.0.0.1:{port}{path}"))
    }

    /// Waits until `/readyz` answers 200; returns when it did.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        let url = self.admin_url("/readyz")?;
        loop {
            self.check_alive()?;
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(Instant::now());
                }
            }
            if Instant::now() > deadline {
                bail!("the processor was not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The processor's `/metrics`, as `name{labels}` → value.
    pub async fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let url = self.admin_url("/metrics")?;
        let text = self.http.get(&url).send().await?.text().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("webhooks_") && !l.contains("_bucket{"))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// SIGTERM, up to `grace` for the graceful shutdown, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = self.signal("-TERM");
        if self.wait_exit(grace).await.is_err() {
            self.child
                .kill()
                .map_err(|e| anyhow!("killing the processor: {e}"))?;
            let _ = self.child.wait();
        }
        Ok(())
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
