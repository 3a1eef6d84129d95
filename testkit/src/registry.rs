//! The schema registry for Avro tests: the shared one at `MGPASS_TEST_REGISTRY` (its
//! Confluent API base URL; `scripts/test.sh` starts Apicurio Registry and sets it), checked to
//! answer, never skipped; and a registry of a test's own ([`OwnRegistry`]), started and stopped
//! through `scripts/registry.sh` on ports of its own, for tests that stop it mid-run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::free_port;

/// The base URL of the shared test registry's Confluent API; panics with instructions when
/// it is not set or does not answer.
pub async fn registry_url() -> String {
    let url = std::env::var("MGPASS_TEST_REGISTRY").unwrap_or_else(|_| {
        panic!(
            "MGPASS_TEST_REGISTRY is not set: these tests need a Confluent-compatible schema \
             registry. Run them through `bash scripts/test.sh` (which starts Apicurio Registry), \
             or start one with `bash scripts/registry.sh start` and set \
             MGPASS_TEST_REGISTRY=$(bash scripts/registry.sh url)."
        )
    });
    if let Err(e) = answers(&url).await {
        panic!(
            "the schema registry at MGPASS_TEST_REGISTRY={url} does not answer: {e:#}. Start it \
             with `bash scripts/registry.sh start` or run the suite with `bash scripts/test.sh`."
        );
    }
    url
}

/// Whether `GET <url>/subjects` answers 200.
pub async fn answers(url: &str) -> Result<()> {
    let resp = reqwest::Client::new()
        .get(format!("{url}/subjects"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("GET {url}/subjects"))?;
    if !resp.status().is_success() {
        bail!("GET {url}/subjects answered {}", resp.status());
    }
    Ok(())
}

/// The subjects the registry at `url` holds.
pub async fn subjects(url: &str) -> Result<Vec<String>> {
    let resp = reqwest::Client::new()
        .get(format!("{url}/subjects"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    Ok(serde_json::from_slice(&resp.bytes().await?)?)
}

/// A registry process of one test's own: Apicurio Registry through `scripts/registry.sh`,
/// in-memory, on free ports, with its pid file and log in a temporary directory. Stopped
/// (by its pid, through the script) when dropped.
pub struct OwnRegistry {
    pub port: u16,
    management_port: u16,
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/registry.sh")
}

impl OwnRegistry {
    /// Starts one and waits until it answers.
    pub fn start() -> Result<OwnRegistry> {
        let r = OwnRegistry {
            port: free_port()?,
            management_port: free_port()?,
            dir: tempfile::tempdir()?,
        };
        r.run("start")?;
        Ok(r)
    }

    /// The base URL of its Confluent API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/apis/ccompat/v7", self.port)
    }

    fn run(&self, command: &str) -> Result<()> {
        let status = Command::new("bash")
            .arg(script())
            .arg(command)
            .env("REGISTRY_PORT", self.port.to_string())
            .env("REGISTRY_MANAGEMENT_PORT", self.management_port.to_string())
            .env("REGISTRY_DATA_DIR", self.dir.path())
            .status()
            .with_context(|| format!("running scripts/registry.sh {command}"))?;
        if !status.success() {
            bail!("scripts/registry.sh {command} failed ({status})");
        }
        Ok(())
    }

    /// Stops the process (SIGTERM, then SIGKILL after 20 s).
    pub fn stop(&self) -> Result<()> {
        self.run("stop")
    }

    /// Starts it again on the same ports (in-memory: an empty registry).
    pub fn restart(&self) -> Result<()> {
        self.run("start")
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = self.run("stop");
    }
}
