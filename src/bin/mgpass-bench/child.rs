//! The processor under test: the release `mgpass-webhooks run` as a child process, so its CPU
//! time and peak RSS are its own (read from `/proc`). Configured through a TOML file the bench
//! writes (plus any `--processor-set`), logging to a file in the work directory; stopped with
//! SIGTERM (then SIGKILL) when the run ends or the bench exits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub struct Processor {
    child: Child,
    pub admin_port: u16,
    pub log: PathBuf,
    http: reqwest::Client,
}

impl Drop for Processor {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Processor {
    /// Starts `bin --config config run` with `sets` as `--set` overrides.
    pub fn spawn(
        bin: &Path,
        config: &Path,
        sets: &[String],
        admin_port: u16,
        log: PathBuf,
    ) -> Result<Processor> {
        let out = std::fs::File::create(&log)
            .with_context(|| format!("creating the processor log {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(config);
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        cmd.arg("run")
            .env_remove("RUST_LOG")
            .env_remove("MGPASS_CONFIG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // Settings from the environment would silently change what is measured.
        for (k, _) in std::env::vars() {
            if k.starts_with("MGPASS_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the processor {}", bin.display()))?;
        Ok(Processor {
            child,
            admin_port,
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited, quoting the end of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the processor exited ({status}); last lines of {}:\n{}",
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// Waits until `/readyz` answers 200; returns when it did.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        loop {
            self.check_alive()?;
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(Instant::now());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the processor was not ready within {timeout:?}; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The processor's `/metrics`, as `name{labels}` → value.
    pub async fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
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
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child
            .kill()
            .map_err(|e| anyhow!("killing the processor: {e}"))?;
        let _ = self.child.wait();
        Ok(())
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
