//! The schema registry for Avro tests: the shared one at `MGPASS_TEST_REGISTRY` (its
//! Confluent API base URL; `scripts/test.sh` starts Apicurio Registry and sets it), checked to
//! answer, never skipped; and a registry of a test's own ([`OwnRegistry`]), started and stopped
//! through `scripts/registry.sh` on ports of its own, for tests that stop it mid-run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::restartable_port;

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

/// A registry process of one test's own: Apicurio Registry through `scripts/registry.sh`, with
/// an H2 database file of its own (kept across a restart), on free ports, with its pid file and
/// log in a temporary directory. Stopped (by its pid, through the script) when dropped.
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
            port: restartable_port()?,
            management_port: restartable_port()?,
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
            // Its own H2 database file, so what was registered survives a restart as it does
            // in a production registry (in-memory storage would come back empty, and a lookup
            // between the restart and registering again would be a genuine "unknown id").
            .env("APICURIO_STORAGE_KIND", "sql")
            .env("APICURIO_STORAGE_SQL_KIND", "h2")
            .env(
                "APICURIO_DATASOURCE_URL",
                format!("jdbc:h2:file:{}/registry", self.dir.path().display()),
            )
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

    /// Starts it again on the same ports, with what was registered before.
    pub fn restart(&self) -> Result<()> {
        self.run("start")
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = self.run("stop");
    }
}

/// What a [`FaultyProxy`] does with the next requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forwards to the real registry behind it.
    Forward,
    /// Answers this status with this body (a 5xx, a bare 404 …) without asking the registry.
    Status(u16, String),
    /// Accepts the connection, reads the request and never answers (a registry too slow).
    Hang,
}

/// An HTTP/1.1 proxy on 127.0.0.1 in front of a real registry that injects faults on demand:
/// the registry answering 5xx, timing out, or a wrong URL's bare 404, which a registry that is
/// merely stopped cannot show. Stops when dropped.
pub struct FaultyProxy {
    addr: std::net::SocketAddr,
    fault: std::sync::Arc<std::sync::Mutex<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyProxy {
    /// A proxy to `upstream` (a registry base URL such as `http://127.0.0.1:8081/apis/ccompat/v7`;
    /// the proxy's own base URL keeps the path).
    pub async fn start(upstream: &str) -> Result<FaultyProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let fault = std::sync::Arc::new(std::sync::Mutex::new(Fault::Forward));
        let origin = {
            let u = url::Url::parse(upstream)?;
            format!(
                "{}://{}",
                u.scheme(),
                &u[url::Position::BeforeHost..url::Position::AfterPort]
            )
        };
        let (f, client) = (fault.clone(), reqwest::Client::new());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (f, client, origin) = (f.clone(), client.clone(), origin.clone());
                tokio::spawn(async move {
                    let _ = serve(socket, &f, &client, &origin).await;
                });
            }
        });
        Ok(FaultyProxy { addr, fault, task })
    }

    /// The proxy's base URL for a registry at `upstream`'s path.
    pub fn url(&self, upstream: &str) -> String {
        let path = url::Url::parse(upstream)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: reads one request, answers per the fault, closes.
async fn serve(
    mut socket: tokio::net::TcpStream,
    fault: &std::sync::Mutex<Fault>,
    client: &reqwest::Client,
    origin: &str,
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or("").split_whitespace();
    let (method, target) = (
        request_line.next().unwrap_or("GET").to_string(),
        request_line.next().unwrap_or("/").to_string(),
    );
    let mut content_length = 0usize;
    let mut content_type = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + content_length {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..].to_vec();
    let current = fault.lock().unwrap().clone();
    let (status, answer) = match current {
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Ok(());
        }
        Fault::Status(status, text) => (status, text.into_bytes()),
        Fault::Forward => {
            let method = reqwest::Method::from_bytes(method.as_bytes())?;
            let mut req = client
                .request(method, format!("{origin}{target}"))
                .body(body);
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let resp = req.send().await?;
            (resp.status().as_u16(), resp.bytes().await?.to_vec())
        }
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(&answer).await?;
    socket.shutdown().await?;
    Ok(())
}
