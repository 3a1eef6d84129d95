//! Our client of a Confluent-compatible schema registry (Confluent Schema Registry, Apicurio
//! Registry's `/apis/ccompat/v7`, Redpanda, Karapace): look a schema up by id, register one
//! under a subject. Schemas are cached by id for the life of the process (a registered id never
//! changes meaning), and so is a definite "no such schema" answer. Nothing else is cached: a
//! lookup that failed for a reason the registry may recover from — connection refused, a
//! timeout, a 5xx, a 429, an authentication failure an operator can fix, a 404 that is not the
//! registry's own "schema not found" (a wrong `registry.url`) — is [`LookupError::Unavailable`]
//! and is simply asked again later. The decision is [`classify`], a pure function with a table
//! test. Concurrent lookups of one id share one request.
//!
//! Why not `schema_registry_converter`: see README "Avro events" (it caches every lookup error
//! until told otherwise, counts a 500 and a connection error as non-retryable, has no setting
//! for an extra CA, and brings a second HTTP stack, reqwest 0.13).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use apache_avro::Schema;
use serde::Deserialize;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::config::RegistryConfig;

/// Confluent's error code for "schema not found" (`GET /schemas/ids/{id}`).
pub const SCHEMA_NOT_FOUND: i64 = 40403;

/// A schema as the registry holds it: its id and the parsed Avro schema.
#[derive(Debug)]
pub struct RegisteredSchema {
    pub id: u32,
    pub schema: Schema,
}

/// Why a lookup did not give a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The registry answered that it has no schema of this id: the record is bad input.
    #[error("the schema registry has no schema with id {0}")]
    NotFound(u32),
    /// The registry has the id, but not as an Avro schema we can read: bad input.
    #[error("schema {id} is not a usable Avro schema: {reason}")]
    BadSchema { id: u32, reason: String },
    /// The registry could not answer now (down, slow, 5xx, refused credentials, misrouted):
    /// not the record's fault; ask again later.
    #[error("the schema registry is unavailable: {0}")]
    Unavailable(String),
}

/// What an HTTP answer to `GET /schemas/ids/{id}` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx: the body holds the schema.
    Schema,
    /// The registry's own "schema not found".
    NotFound,
    /// Anything else: try again later.
    Unavailable,
}

/// The decision for an HTTP status and the registry's Confluent `error_code`, if the body had
/// one. Only a 404 carrying Confluent's `40403` (or `40401`/`40402`-style "not found" codes
/// from the 404xx family) is a definite "no such schema": a bare 404 comes from a wrong base
/// URL or a proxy, and would otherwise send every Avro event to the invalid topic.
pub fn classify(status: u16, error_code: Option<i64>) -> Answer {
    match (status, error_code) {
        (200..=299, _) => Answer::Schema,
        (404, Some(code)) if (40400..40500).contains(&code) => Answer::NotFound,
        _ => Answer::Unavailable,
    }
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error_code: Option<i64>,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

type Cached = Result<Arc<RegisteredSchema>, LookupError>;

/// The registry client with its cache. Cheap to share (`Arc`).
pub struct Registry {
    client: reqwest::Client,
    base: String,
    auth: Option<(String, Option<String>)>,
    /// One cell per id: filled with a schema or a definite error; left empty after an
    /// unavailable registry, so the next lookup asks again.
    cache: Mutex<HashMap<u32, Arc<OnceCell<Cached>>>>,
    /// Unavailable lookups since start (mirrored into the metrics by the callers).
    failures: AtomicU64,
    /// When the last "unavailable" warning was logged (Unix ms), for rate limiting.
    last_warned_ms: AtomicI64,
    /// Failures since the last warning; also whether a recovery is worth logging.
    unlogged: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
}

/// At most one "registry unavailable" warning per this many milliseconds.
const WARN_EVERY_MS: i64 = 10_000;

impl Registry {
    /// The client of `config.url`; `None` when no registry is configured.
    pub fn from_config(config: &RegistryConfig) -> Result<Option<Arc<Registry>>> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(crate::delivery::http::USER_AGENT)
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            .redirect(reqwest::redirect::Policy::limited(3));
        if let Some(path) = &config.ca_bundle {
            let pem = std::fs::read(path)
                .with_context(|| format!("registry.ca_bundle: cannot read {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("registry.ca_bundle: {} is not a PEM bundle", path.display())
            })?;
            anyhow::ensure!(
                !certs.is_empty(),
                "registry.ca_bundle: {} holds no PEM certificate",
                path.display()
            );
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .context("building the schema registry client")?;
        Ok(Some(Arc::new(Registry {
            client,
            base: url.trim_end_matches('/').to_string(),
            auth: config
                .username
                .clone()
                .map(|u| (u, config.password.clone())),
            cache: Mutex::new(HashMap::new()),
            failures: AtomicU64::new(0),
            last_warned_ms: AtomicI64::new(i64::MIN / 2),
            unlogged: AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
        })))
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Lookups that found the registry unavailable since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .header(
                reqwest::header::ACCEPT,
                "application/vnd.schemaregistry.v1+json, application/json",
            );
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, password.as_deref());
        }
        req
    }

    /// Whether the registry answers `GET /subjects` with a 2xx (`check-config`).
    pub async fn check(&self) -> Result<()> {
        let resp = self
            .request(reqwest::Method::GET, "/subjects")
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("schema registry {}: {}", self.base, transport_error(&e))
            })?;
        anyhow::ensure!(
            resp.status().is_success(),
            "schema registry {}: GET /subjects answered {}",
            self.base,
            resp.status()
        );
        Ok(())
    }

    /// The schema of `id`, from the cache or the registry.
    pub async fn schema(&self, id: u32) -> Result<Arc<RegisteredSchema>, LookupError> {
        let cell = {
            let mut cache = self.cache.lock().expect("registry cache poisoned");
            cache.entry(id).or_default().clone()
        };
        let result = cell
            .get_or_try_init(|| async {
                match self.fetch(id).await {
                    Err(e @ LookupError::Unavailable(_)) => Err(e),
                    definite => Ok(definite),
                }
            })
            .await;
        match result {
            Ok(definite) => {
                self.recovered();
                definite.clone()
            }
            Err(e) => {
                self.unavailable(&e);
                Err(e)
            }
        }
    }

    async fn fetch(&self, id: u32) -> Cached {
        let unavailable = |e: String| LookupError::Unavailable(e);
        let resp = self
            .request(reqwest::Method::GET, &format!("/schemas/ids/{id}"))
            .send()
            .await
            .map_err(|e| unavailable(transport_error(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| unavailable(transport_error(&e)))?;
        let code = serde_json::from_slice::<ErrorAnswer>(&body)
            .ok()
            .and_then(|e| e.error_code);
        match classify(status.as_u16(), code) {
            Answer::NotFound => Err(LookupError::NotFound(id)),
            Answer::Unavailable => Err(unavailable(format!(
                "GET /schemas/ids/{id} answered {status}{}",
                code.map(|c| format!(" (error_code {c})"))
                    .unwrap_or_default()
            ))),
            Answer::Schema => {
                let answer: SchemaAnswer = serde_json::from_slice(&body).map_err(|e| {
                    unavailable(format!("GET /schemas/ids/{id}: unreadable answer: {e}"))
                })?;
                let bad = |reason: String| LookupError::BadSchema { id, reason };
                match answer.schema_type.as_deref() {
                    None | Some("AVRO") => {}
                    Some(other) => return Err(bad(format!("its type is {other}, not AVRO"))),
                }
                if answer.references.as_ref().is_some_and(|r| !r.is_empty()) {
                    return Err(bad("schema references are not supported".into()));
                }
                let schema = Schema::parse_str(&answer.schema).map_err(|e| bad(e.to_string()))?;
                Ok(Arc::new(RegisteredSchema { id, schema }))
            }
        }
    }

    /// Registers the Avro schema `text` under `subject` (or finds it registered) and returns
    /// its id. Also seeds the cache with it.
    pub async fn register(&self, subject: &str, text: &str) -> Result<u32> {
        let schema = Schema::parse_str(text).context("parsing the schema to register")?;
        let body = serde_json::json!({"schema": text, "schemaType": "AVRO"});
        let resp = self
            .request(
                reqwest::Method::POST,
                &format!("/subjects/{}/versions", urlencode(subject)),
            )
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/vnd.schemaregistry.v1+json",
            )
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("registering subject {subject:?}: {}", transport_error(&e))
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!(
                "registering subject {subject:?} at {}: {status} {}",
                self.base,
                String::from_utf8_lossy(&bytes)
            );
        }
        let IdAnswer { id } = serde_json::from_slice(&bytes)
            .with_context(|| format!("registering subject {subject:?}: unreadable answer"))?;
        let cell = {
            let mut cache = self.cache.lock().expect("registry cache poisoned");
            cache.entry(id).or_default().clone()
        };
        let _ = cell.set(Ok(Arc::new(RegisteredSchema { id, schema })));
        Ok(id)
    }

    /// Counts an unavailable lookup and logs it, at most once per [`WARN_EVERY_MS`].
    fn unavailable(&self, e: &LookupError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.failing.store(true, Ordering::Relaxed);
        let unlogged = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::delivery::now_ms();
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        if now - last >= WARN_EVERY_MS
            && self
                .last_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.unlogged.store(0, Ordering::Relaxed);
            warn!(
                registry = %self.base, error = %e, failed_lookups = unlogged,
                "schema registry unavailable; Avro records wait and are retried (logged at most every 10 s)"
            );
        }
    }

    fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            self.unlogged.store(0, Ordering::Relaxed);
            info!(registry = %self.base, "schema registry answers again");
        }
    }
}

/// A reqwest error with its causes (connection refused, timed out, …).
fn transport_error(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Percent-encodes a subject for a URL path segment.
fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_registrys_own_not_found_is_bad_input() {
        #[rustfmt::skip]
        let table: &[(u16, Option<i64>, Answer)] = &[
            (200, None, Answer::Schema),
            (404, Some(40403), Answer::NotFound),
            (404, Some(40401), Answer::NotFound),
            // A 404 without the registry's code: a wrong URL or a proxy, not the record.
            (404, None, Answer::Unavailable),
            (404, Some(50001), Answer::Unavailable),
            (500, Some(50001), Answer::Unavailable),
            (500, None, Answer::Unavailable),
            (502, None, Answer::Unavailable),
            (503, None, Answer::Unavailable),
            (504, None, Answer::Unavailable),
            (429, None, Answer::Unavailable),
            (401, Some(40101), Answer::Unavailable),
            (403, None, Answer::Unavailable),
            (408, None, Answer::Unavailable),
            (301, None, Answer::Unavailable),
            (422, Some(42201), Answer::Unavailable),
        ];
        for &(status, code, expected) in table {
            assert_eq!(classify(status, code), expected, "{status} {code:?}");
        }
    }

    #[test]
    fn subjects_are_encoded_for_the_path() {
        assert_eq!(urlencode("rewards.events-value"), "rewards.events-value");
        assert_eq!(urlencode("a/b c"), "a%2Fb%20c");
    }
}
