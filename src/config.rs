//! Typed, layered configuration: compiled-in defaults → optional TOML file → `MGPASS_*`
//! environment variables → command-line flags, followed by one validation pass that reports every
//! bad setting at once, each error naming its setting.
//!
//! Environment variables use `__` between levels (`MGPASS_KAFKA__BOOTSTRAP_SERVERS`,
//! `MGPASS_DELIVERY__MAX_IN_FLIGHT`). Arbitrary librdkafka properties pass through
//! `[kafka.properties]` in the file, or `MGPASS_KAFKA_PROP_<NAME>` in the environment where the
//! name is the property with dots written as underscores (`MGPASS_KAFKA_PROP_SECURITY_PROTOCOL`
//! → `security.protocol`). Secret-bearing properties are redacted by [`Config::redacted`].

use figment::providers::{Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::secret::REDACTED;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicNames,
    pub topic_setup: TopicSetup,
    pub http: HttpConfig,
    pub delivery: DeliveryConfig,
    pub admin: AdminConfig,
    pub console: ConsoleConfig,
    pub log: LogConfig,
    pub registry: RegistryConfig,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers` for every client.
    pub bootstrap_servers: String,
    /// Consumer group of the processor (events, retry and replay topics).
    pub group_id: String,
    /// `client.id` prefix; each client appends its role.
    pub client_id: String,
    /// Where a new consumer group (no committed offset) starts reading the events topic:
    /// `latest` (default: a first deploy delivers what is produced from then on, it does not
    /// resend the topic's whole retention) or `earliest`. The retry and replay topics always
    /// start at `earliest`: what waits there is ours and pending.
    pub events_offset_reset: String,
    /// Extra librdkafka properties applied to every client after our defaults (SASL, SSL, …).
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicNames {
    pub events: String,
    pub subscriptions: String,
    pub retry_1s: String,
    pub retry_5s: String,
    pub retry_25s: String,
    pub replay: String,
    pub delivery_log: String,
    pub failed: String,
    pub invalid: String,
    /// The admin console's audit trail: who changed or replayed what, when (never a secret).
    pub audit: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSetup {
    /// Partitions of every topic except the subscriptions topic.
    pub partitions: i32,
    /// Partitions of the compacted subscriptions topic (every instance reads all of them).
    pub subscription_partitions: i32,
    /// Replication factor of every topic; -1 takes the broker's `default.replication.factor`.
    pub replication_factor: i32,
    /// `retention.ms` of the delivery-log and failed topics.
    pub long_retention_ms: i64,
    /// `retention.ms` of the events, retry, replay and invalid topics.
    pub retention_ms: i64,
    /// `retention.ms` of the audit topic (a year by default: audits outlive deliveries).
    pub audit_retention_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Send to `http://` endpoint URLs. Only for local development. (A subscription record
    /// with an `http://` URL is valid either way; without this its attempts are refused.)
    pub allow_http: bool,
    /// TCP + TLS connect timeout.
    pub connect_timeout_ms: u64,
    /// Whole-request timeout, connect included.
    pub request_timeout_ms: u64,
    /// Extra PEM CA bundle trusted besides the built-in web roots (private CAs, tests).
    pub ca_bundle: Option<PathBuf>,
    /// At most this many bytes of a response body are read (the rest is never buffered); the
    /// excerpt is part of the attempt's result, not of the delivery-log record.
    pub max_response_bytes: usize,
    /// Exceptions to the address guard (`net_guard`): CIDRs (`10.0.0.0/8`), single addresses
    /// and host names (`localhost`, `*.dev.internal`) that may be dialled although they are not
    /// globally routable. Empty by default: only public addresses receive webhooks.
    #[serde(deserialize_with = "one_or_many")]
    pub allow_private: Vec<String>,
    /// Pinned names, `HOST=ADDRESS[,ADDRESS…]` (like `curl --resolve`): the host resolves to
    /// these addresses without a DNS lookup. The addresses are still checked by the guard.
    #[serde(deserialize_with = "one_or_many")]
    pub resolve: Vec<String>,
}

/// A list setting given as a list, or as one string (`--set http.allow_private=127.0.0.0/8`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split_whitespace()
            .map(str::to_string)
            .filter(|s| !s.is_empty())
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Deliveries in flight across the whole process.
    pub max_in_flight: usize,
    /// Deliveries in flight to one endpoint (scheme + host + port), so a slow endpoint cannot
    /// take the whole budget. An endpoint that has not answered yet (no attempt to it ended
    /// other than in a timeout) has an eighth of it (at least 1) until it does.
    pub max_in_flight_per_endpoint: usize,
    /// When every connection to an endpoint is busy and none was freed for this long, further
    /// attempts to it fail at once as `endpoint_saturated` (and follow the retry schedule)
    /// instead of waiting: a hanging endpoint cannot hold the slots other endpoints need. Once
    /// the endpoint is slow (`slow_request_ms`) with every slot on the wire, that shorter time
    /// without a freed slot is enough.
    pub endpoint_stall_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight work may take to finish before exiting.
    pub shutdown_deadline_secs: u64,
    /// Largest rewards event value accepted, in bytes; a larger one goes to the invalid topic
    /// as `event_too_large`. At most the producer's `message.max.bytes`.
    pub max_event_bytes: usize,
    /// Deliveries of event records waiting or in flight across the process (matched, not yet
    /// finished): bounds memory however many subscriptions an event matches. An event that
    /// matches more takes the whole budget by itself.
    pub max_pending_deliveries: usize,
    /// An attempt still unanswered after this long marks its endpoint *slow*: the attempts of
    /// slow endpoints share at most `slow_share_percent` of `max_in_flight`, so any number of
    /// hanging endpoints leave the rest to the healthy ones. A slow endpoint whose connections
    /// are all on the wire and none freed for this long counts as stalled (see
    /// `endpoint_stall_ms`).
    pub slow_request_ms: u64,
    /// The share of `max_in_flight`, in percent, that slow endpoints may hold together.
    pub slow_share_percent: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin HTTP server (`/metrics`, `/livez`, `/readyz`).
    pub listen: String,
}

/// The Confluent-compatible schema registry of Avro events (src/avro/). Without `url`, an Avro
/// event goes to the invalid topic as `unsupported_avro`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g. `http://127.0.0.1:8081/apis/ccompat/v7`
    /// for Apicurio Registry, `https://sr.example:8081` for Confluent's.
    pub url: Option<String>,
    /// Basic-auth user name (Confluent Cloud: the API key).
    pub username: Option<String>,
    /// Basic-auth password (redacted by `check-config`).
    pub password: Option<String>,
    /// Extra PEM CA bundle trusted for the registry besides the built-in web roots.
    pub ca_bundle: Option<PathBuf>,
    /// Timeout of one registry request; a lookup that times out is retried, never bad input.
    pub timeout_ms: u64,
    /// Subject naming when we register a schema: `topic_name` (`<topic>-value`, Confluent's
    /// default) or `record_name` (the record's full name).
    pub subject_strategy: String,
    /// Format of the delivery-log and failed records we write: `json` (default) or `avro`
    /// (Confluent framing, schemas from `schemas/` registered in `registry.url`).
    pub output_format: String,
}

/// The password is a credential: `Debug` never shows it.
impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("ca_bundle", &self.ca_bundle)
            .field("timeout_ms", &self.timeout_ms)
            .field("subject_strategy", &self.subject_strategy)
            .field("output_format", &self.output_format)
            .finish()
    }
}

/// The admin console (`mgpass-webhooks console`, `src/console/`): its own listener, who may log in
/// and how sessions are kept. Checked by [`ConsoleConfig::validate`] always (shape) and by
/// [`ConsoleConfig::validate_for_serving`] when the console starts (an identity source).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Address of the console's web UI and JSON API (not the processor's admin port).
    pub listen: String,
    /// Where identities come from: `accounts` (log in with a name and password from
    /// `console.accounts`) or `proxy` (a trusted authenticating proxy sets
    /// `console.proxy_user_header`). No default: the console refuses to start without it.
    pub auth: String,
    /// `auth = "accounts"`: the admin accounts, each `{ username, password_hash, role }` with an
    /// argon2 PHC hash from `mgpass-webhooks console hash-password` and role `admin` or `viewer`.
    pub accounts: Vec<ConsoleAccount>,
    /// `auth = "proxy"`: the request header holding the authenticated user name.
    pub proxy_user_header: String,
    /// `auth = "proxy"`: users given the `admin` role; every other user is a `viewer`.
    #[serde(deserialize_with = "one_or_many")]
    pub proxy_admins: Vec<String>,
    /// `auth = "proxy"`: addresses (CIDRs or single addresses) the proxy connects from; a
    /// request from anywhere else is refused, so the header cannot be forged around the proxy.
    #[serde(deserialize_with = "one_or_many")]
    pub proxy_trusted: Vec<String>,
    /// Key signing session cookies and CSRF tokens (HMAC-SHA256), at least 32 bytes. Empty: a
    /// random key per process (sessions end when it restarts; one replica only). Give it through
    /// `MGPASS_CONSOLE__SESSION_KEY`, never in a committed file.
    pub session_key: String,
    /// How long a session lasts after login.
    pub session_ttl_secs: u64,
    /// Mark cookies `Secure` (sent over HTTPS only). Turn off only for local http:// use.
    pub cookie_secure: bool,
    /// Login attempts allowed per client address and per user name in any minute.
    pub login_attempts_per_minute: u32,
    /// How far back a subscription's deliveries page reads the delivery log by default.
    pub deliveries_lookback_secs: u64,
}

/// One console login.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleAccount {
    pub username: String,
    /// Argon2 PHC string (`$argon2id$v=19$…`).
    pub password_hash: String,
    /// `admin` (everything) or `viewer` (read only).
    #[serde(default = "default_role")]
    pub role: String,
}

fn default_role() -> String {
    "viewer".into()
}

impl std::fmt::Debug for ConsoleAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleAccount")
            .field("username", &self.username)
            .field("password_hash", &REDACTED)
            .field("role", &self.role)
            .finish()
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: None,
            username: None,
            password: None,
            ca_bundle: None,
            timeout_ms: 5_000,
            subject_strategy: "topic_name".into(),
            output_format: "json".into(),
        }
    }
}

/// The session key is a secret: `Debug` never shows it.
impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("listen", &self.listen)
            .field("auth", &self.auth)
            .field("accounts", &self.accounts)
            .field("proxy_user_header", &self.proxy_user_header)
            .field("proxy_admins", &self.proxy_admins)
            .field("proxy_trusted", &self.proxy_trusted)
            .field("session_key", &REDACTED)
            .field("session_ttl_secs", &self.session_ttl_secs)
            .field("cookie_secure", &self.cookie_secure)
            .field("login_attempts_per_minute", &self.login_attempts_per_minute)
            .field("deliveries_lookback_secs", &self.deliveries_lookback_secs)
            .finish()
    }
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: "127.0.0.1:9465".into(),
            auth: String::new(),
            accounts: Vec::new(),
            proxy_user_header: "X-Forwarded-User".into(),
            proxy_admins: Vec::new(),
            proxy_trusted: vec!["127.0.0.1/32".into(), "::1/128".into()],
            session_key: String::new(),
            session_ttl_secs: 8 * 3600,
            cookie_secure: true,
            login_attempts_per_minute: 10,
            deliveries_lookback_secs: 24 * 3600,
        }
    }
}

impl RegistryConfig {
    /// Whether delivery-log and failed records are written as registered Avro.
    pub fn writes_avro(&self) -> bool {
        self.output_format == "avro"
    }

    fn validate(&self, p: &mut Vec<String>) {
        if let Some(u) = &self.url {
            match url::Url::parse(u) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                    if !parsed.username().is_empty() || parsed.password().is_some() {
                        p.push(
                            "registry.url: put credentials in registry.username and \
                             registry.password, not in the URL"
                                .into(),
                        );
                    }
                }
                Ok(parsed) => p.push(format!(
                    "registry.url: scheme {:?} is not http or https",
                    parsed.scheme()
                )),
                Err(e) => p.push(format!("registry.url: {u:?} is not a URL: {e}")),
            }
        }
        if self.password.is_some() && self.username.is_none() {
            p.push("registry.password: set without registry.username".into());
        }
        if let Some(ca) = &self.ca_bundle {
            if !ca.is_file() {
                p.push(format!("registry.ca_bundle: no such file {}", ca.display()));
            }
        }
        if self.timeout_ms == 0 {
            p.push("registry.timeout_ms: must be positive".into());
        }
        if !matches!(self.subject_strategy.as_str(), "topic_name" | "record_name") {
            p.push(format!(
                "registry.subject_strategy: {:?} is not `topic_name` or `record_name`",
                self.subject_strategy
            ));
        }
        match self.output_format.as_str() {
            "json" => {}
            "avro" if self.url.is_none() => {
                p.push("registry.output_format: `avro` needs registry.url".into())
            }
            "avro" => {}
            other => p.push(format!(
                "registry.output_format: {other:?} is not `json` or `avro`"
            )),
        }
    }
}

/// Shortest `console.session_key` accepted, in bytes.
pub const MIN_SESSION_KEY_BYTES: usize = 32;

impl ConsoleConfig {
    /// Problems of the settings' shape, whatever command runs (the processor ignores them, but
    /// one config file serves both).
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "console.listen: {:?} is not an address such as 127.0.0.1:9465",
                self.listen
            ));
        }
        if !matches!(self.auth.as_str(), "" | "accounts" | "proxy") {
            p.push(format!(
                "console.auth: {:?} is neither \"accounts\" nor \"proxy\"",
                self.auth
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            if a.username.trim().is_empty() {
                p.push(format!("console.accounts[{i}].username: must not be empty"));
            }
            if !names.insert(a.username.as_str()) {
                p.push(format!(
                    "console.accounts[{i}].username: {:?} appears twice",
                    a.username
                ));
            }
            if !matches!(a.role.as_str(), "admin" | "viewer") {
                p.push(format!(
                    "console.accounts[{i}].role: {:?} is neither \"admin\" nor \"viewer\"",
                    a.role
                ));
            }
            if !a.password_hash.starts_with("$argon2") {
                p.push(format!(
                    "console.accounts[{i}].password_hash: not an argon2 hash (make one with \
                     `mgpass-webhooks console hash-password`)"
                ));
            }
        }
        if !self.session_key.is_empty() && self.session_key.len() < MIN_SESSION_KEY_BYTES {
            p.push(format!(
                "console.session_key: {} bytes; at least {MIN_SESSION_KEY_BYTES} are required",
                self.session_key.len()
            ));
        }
        if self.session_ttl_secs == 0 {
            p.push("console.session_ttl_secs: must be positive".into());
        }
        if self.login_attempts_per_minute == 0 {
            p.push("console.login_attempts_per_minute: must be positive".into());
        }
        if self.deliveries_lookback_secs == 0 {
            p.push("console.deliveries_lookback_secs: must be positive".into());
        }
        for (i, t) in self.proxy_trusted.iter().enumerate() {
            if parse_net(t).is_none() {
                p.push(format!(
                    "console.proxy_trusted[{i}]: {t:?} is not an address or CIDR"
                ));
            }
        }
        p
    }

    /// Problems that stop the console from starting: an identity source must be chosen and
    /// usable.
    pub fn validate_for_serving(&self) -> Vec<String> {
        let mut p = Vec::new();
        match self.auth.as_str() {
            "" => p.push(
                "console.auth: not set; choose \"accounts\" (console.accounts) or \"proxy\" \
                 (console.proxy_user_header)"
                    .into(),
            ),
            "accounts" if self.accounts.is_empty() => p.push(
                "console.accounts: no account; add one with a hash from \
                 `mgpass-webhooks console hash-password`"
                    .into(),
            ),
            "proxy" if self.proxy_user_header.trim().is_empty() => {
                p.push("console.proxy_user_header: must not be empty with auth = \"proxy\"".into())
            }
            "proxy" if self.proxy_trusted.is_empty() => p.push(
                "console.proxy_trusted: must name the proxy's addresses with auth = \"proxy\""
                    .into(),
            ),
            _ => {}
        }
        if self
            .proxy_user_header
            .parse::<axum::http::HeaderName>()
            .is_err()
        {
            p.push(format!(
                "console.proxy_user_header: {:?} is not a header name",
                self.proxy_user_header
            ));
        }
        p
    }
}

/// An address or CIDR (`10.0.0.0/8`, `127.0.0.1`).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter directive, e.g. `info` or `info,mgpass_webhooks=debug`. `RUST_LOG` wins.
    pub level: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "mgpass-webhooks".into(),
            client_id: "mgpass-webhooks".into(),
            events_offset_reset: "latest".into(),
            properties: BTreeMap::new(),
        }
    }
}

impl Default for TopicNames {
    fn default() -> Self {
        TopicNames {
            events: "rewards.events".into(),
            subscriptions: "webhooks.subscriptions".into(),
            retry_1s: "webhooks.retry.1s".into(),
            retry_5s: "webhooks.retry.5s".into(),
            retry_25s: "webhooks.retry.25s".into(),
            replay: "webhooks.replay".into(),
            delivery_log: "webhooks.delivery-log".into(),
            failed: "webhooks.failed".into(),
            invalid: "webhooks.invalid".into(),
            audit: "webhooks.audit".into(),
        }
    }
}

impl TopicNames {
    /// Every topic with its setting name, for validation and topic setup.
    pub fn all(&self) -> [(&'static str, &str); 10] {
        [
            ("topics.events", &self.events),
            ("topics.subscriptions", &self.subscriptions),
            ("topics.retry_1s", &self.retry_1s),
            ("topics.retry_5s", &self.retry_5s),
            ("topics.retry_25s", &self.retry_25s),
            ("topics.replay", &self.replay),
            ("topics.delivery_log", &self.delivery_log),
            ("topics.failed", &self.failed),
            ("topics.invalid", &self.invalid),
            ("topics.audit", &self.audit),
        ]
    }

    /// All names derived from one prefix, so that tests (and tenants) can run side by side.
    pub fn with_prefix(prefix: &str) -> Self {
        let d = TopicNames::default();
        let p = |s: &str| format!("{prefix}{s}");
        TopicNames {
            events: p(&d.events),
            subscriptions: p(&d.subscriptions),
            retry_1s: p(&d.retry_1s),
            retry_5s: p(&d.retry_5s),
            retry_25s: p(&d.retry_25s),
            replay: p(&d.replay),
            delivery_log: p(&d.delivery_log),
            failed: p(&d.failed),
            invalid: p(&d.invalid),
            audit: p(&d.audit),
        }
    }
}

impl Default for TopicSetup {
    fn default() -> Self {
        TopicSetup {
            partitions: 6,
            subscription_partitions: 3,
            replication_factor: -1,
            long_retention_ms: 30 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            audit_retention_ms: 365 * 24 * 3600 * 1000,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allow_http: false,
            connect_timeout_ms: 3_000,
            request_timeout_ms: 10_000,
            ca_bundle: None,
            max_response_bytes: 4096,
            allow_private: Vec::new(),
            resolve: Vec::new(),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_in_flight: 1024,
            max_in_flight_per_endpoint: 64,
            endpoint_stall_ms: 2_000,
            shutdown_deadline_secs: 30,
            max_event_bytes: crate::kafka::produce::DEFAULT_MAX_MESSAGE_BYTES,
            max_pending_deliveries: 50_000,
            slow_request_ms: 1_000,
            slow_share_percent: 25,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "0.0.0.0:9464".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// Every problem found while loading or validating the configuration, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Environment variable prefix of every setting.
pub const ENV_PREFIX: &str = "MGPASS_";
/// Environment variable prefix of librdkafka pass-through properties.
pub const ENV_KAFKA_PROP_PREFIX: &str = "MGPASS_KAFKA_PROP_";

/// Command-line overrides, the last layer. `set` holds `dotted.key=value` pairs.
#[derive(Default, Clone)]
pub struct Overrides {
    pub bootstrap_servers: Option<String>,
    pub set: Vec<String>,
}

/// `--set kafka.properties.sasl.password=…` holds a secret: `Debug` shows its key only.
impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: Vec<String> = self
            .set
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_property(k) => format!("{k}={REDACTED}"),
                _ => pair.clone(),
            })
            .collect();
        f.debug_struct("Overrides")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("set", &set)
            .finish()
    }
}

/// The pass-through properties may hold credentials: `Debug` redacts them as
/// [`Config::redacted`] does.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_property(k) {
                    REDACTED
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group_id", &self.group_id)
            .field("client_id", &self.client_id)
            .field("properties", &properties)
            .finish()
    }
}

impl Config {
    /// Loads the layers in order and validates the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                problems.push(format!("--config {}: no such file", path.display()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        // figment reads the process environment itself; filter what it would see by our prefix.
        let ours: Vec<(String, String)> = env
            .iter()
            // Settings always name a section (`MGPASS_<SECTION>__<KEY>`); other `MGPASS_*`
            // variables (`MGPASS_CONFIG`, the scripts' `MGPASS_CACHE_DIR`, …) are not settings.
            .filter(|(k, _)| {
                k.starts_with(ENV_PREFIX)
                    && !k.starts_with(ENV_KAFKA_PROP_PREFIX)
                    && k[ENV_PREFIX.len()..].contains("__")
            })
            .cloned()
            .collect();
        for (key, value) in &ours {
            let path = key[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            figment = figment.merge(Serialized::global(&path, parse_scalar(value)));
        }
        // Property names contain dots, which figment would read as nesting: collect them into one
        // map and merge that under `kafka.properties`.
        let mut props = BTreeMap::new();
        for (key, value) in &env {
            if let Some(name) = key.strip_prefix(ENV_KAFKA_PROP_PREFIX) {
                props.insert(name.to_ascii_lowercase().replace('_', "."), value.clone());
            }
        }
        if let Some(bs) = &overrides.bootstrap_servers {
            figment = figment.merge(Serialized::global("kafka.bootstrap_servers", bs.clone()));
        }
        for pair in &overrides.set {
            match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    let k = k.trim();
                    if let Some(prop) = k.strip_prefix("kafka.properties.") {
                        props.insert(prop.to_string(), v.to_string());
                    } else {
                        figment = figment.merge(Serialized::global(k, parse_scalar(v)));
                    }
                }
                _ => problems.push(format!("--set {pair:?}: expected KEY=VALUE")),
            }
        }
        if !props.is_empty() {
            figment = figment.merge(Serialized::global("kafka.properties", props));
        }
        let config = extract_all(&figment, &mut problems);
        if let Some(config) = &config {
            problems.extend(config.validate());
        }
        match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ConfigError { problems }),
        }
    }

    /// Loads from the process environment.
    pub fn from_process(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load(file, std::env::vars(), overrides)
    }

    /// Every semantic problem of an otherwise well-typed config, each naming its setting.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.kafka.bootstrap_servers.trim().is_empty() {
            p.push("kafka.bootstrap_servers: must not be empty".into());
        }
        if self.kafka.group_id.trim().is_empty() {
            p.push("kafka.group_id: must not be empty".into());
        }
        for (key, value) in &self.kafka.properties {
            if key.trim().is_empty() || key.contains(char::is_whitespace) {
                p.push(format!("kafka.properties: invalid property name {key:?}"));
            }
            if value.is_empty() {
                p.push(format!("kafka.properties.{key}: empty value"));
            }
        }
        let mut seen = std::collections::HashMap::new();
        for (setting, name) in self.topics.all() {
            if let Err(e) = validate_topic_name(name) {
                p.push(format!("{setting}: {e}"));
            }
            if let Some(other) = seen.insert(name, setting) {
                p.push(format!("{setting}: same topic {name:?} as {other}"));
            }
        }
        if self.topic_setup.partitions < 1 {
            p.push("topic_setup.partitions: must be at least 1".into());
        }
        if self.topic_setup.subscription_partitions < 1 {
            p.push("topic_setup.subscription_partitions: must be at least 1".into());
        }
        if self.topic_setup.replication_factor == 0 || self.topic_setup.replication_factor < -1 {
            p.push(
                "topic_setup.replication_factor: must be -1 (broker default) or at least 1".into(),
            );
        }
        if self.topic_setup.long_retention_ms < -1 || self.topic_setup.long_retention_ms == 0 {
            p.push("topic_setup.long_retention_ms: must be positive or -1 (forever)".into());
        }
        if self.topic_setup.retention_ms < -1 || self.topic_setup.retention_ms == 0 {
            p.push("topic_setup.retention_ms: must be positive or -1 (forever)".into());
        }
        if self.topic_setup.audit_retention_ms < -1 || self.topic_setup.audit_retention_ms == 0 {
            p.push("topic_setup.audit_retention_ms: must be positive or -1 (forever)".into());
        }
        if self.http.connect_timeout_ms == 0 {
            p.push("http.connect_timeout_ms: must be positive".into());
        }
        if self.http.request_timeout_ms == 0 {
            p.push("http.request_timeout_ms: must be positive".into());
        }
        if self.http.connect_timeout_ms > self.http.request_timeout_ms {
            p.push("http.connect_timeout_ms: must not exceed http.request_timeout_ms".into());
        }
        if let Some(ca) = &self.http.ca_bundle {
            if !ca.is_file() {
                p.push(format!("http.ca_bundle: no such file {}", ca.display()));
            }
        }
        if let Err(problems) = crate::net_guard::Policy::from_config(&self.http) {
            p.extend(problems);
        }
        if self.delivery.max_in_flight == 0 {
            p.push("delivery.max_in_flight: must be positive".into());
        }
        if self.delivery.endpoint_stall_ms == 0 {
            p.push("delivery.endpoint_stall_ms: must be positive".into());
        }
        if self.delivery.max_pending_deliveries < self.delivery.max_in_flight
            || self.delivery.max_pending_deliveries > u32::MAX as usize
        {
            p.push(format!(
                "delivery.max_pending_deliveries: must be between delivery.max_in_flight ({}) and {}",
                self.delivery.max_in_flight,
                u32::MAX
            ));
        }
        if self.delivery.slow_request_ms == 0 {
            p.push("delivery.slow_request_ms: must be positive".into());
        }
        if !(1..=100).contains(&self.delivery.slow_share_percent) {
            p.push("delivery.slow_share_percent: must be between 1 and 100".into());
        }
        if self.delivery.max_event_bytes == 0 {
            p.push("delivery.max_event_bytes: must be positive".into());
        }
        let producer_limit = crate::kafka::produce::max_message_bytes(self);
        if self.delivery.max_event_bytes > producer_limit {
            p.push(format!(
                "delivery.max_event_bytes: must not exceed the producer's message.max.bytes ({producer_limit})"
            ));
        }
        if !["earliest", "latest"].contains(&self.kafka.events_offset_reset.as_str()) {
            p.push(format!(
                "kafka.events_offset_reset: {:?} is neither \"earliest\" nor \"latest\"",
                self.kafka.events_offset_reset
            ));
        }
        if self.delivery.max_in_flight_per_endpoint == 0 {
            p.push("delivery.max_in_flight_per_endpoint: must be positive".into());
        }
        if self.delivery.max_in_flight_per_endpoint > self.delivery.max_in_flight {
            p.push(
                "delivery.max_in_flight_per_endpoint: must not exceed delivery.max_in_flight"
                    .into(),
            );
        }
        if self.admin.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "admin.listen: {:?} is not an address such as 0.0.0.0:9464",
                self.admin.listen
            ));
        }
        p.extend(self.console.validate());
        if !matches!(self.log.format.as_str(), "text" | "json") {
            p.push(format!(
                "log.format: {:?} is not `text` or `json`",
                self.log.format
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            p.push(format!(
                "log.level: {:?} is not a tracing filter",
                self.log.level
            ));
        }
        self.registry.validate(&mut p);
        p
    }

    /// The effective configuration as TOML with every secret-bearing value redacted.
    pub fn redacted(&self) -> String {
        let mut shown = self.clone();
        for (key, value) in shown.kafka.properties.iter_mut() {
            if is_secret_property(key) {
                *value = REDACTED.into();
            }
        }
        if shown.registry.password.is_some() {
            shown.registry.password = Some(REDACTED.into());
        }
        if !shown.console.session_key.is_empty() {
            shown.console.session_key = REDACTED.into();
        }
        for a in shown.console.accounts.iter_mut() {
            a.password_hash = REDACTED.into();
        }
        toml_string(&shown)
    }
}

/// librdkafka properties whose values are credentials.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "ssl.key.pem",
        "ssl.keystore",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 249 {
        return Err(format!("{name:?} is longer than 249 characters"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; only [a-zA-Z0-9._-] are allowed"
        ));
    }
    Ok(())
}

/// An environment or `--set` value, read as figment's own `Env` provider reads one: numbers and
/// booleans typed, `"quoted"` text forced to a string, anything else a string.
fn parse_scalar(v: &str) -> figment::value::Value {
    v.parse().expect("figment value parsing is infallible")
}

/// Extracts each section on its own so that one bad section does not hide the problems of the
/// others, and reports unknown top-level sections.
fn extract_all(figment: &Figment, problems: &mut Vec<String>) -> Option<Config> {
    fn section<T: serde::de::DeserializeOwned>(
        figment: &Figment,
        name: &str,
        problems: &mut Vec<String>,
    ) -> Option<T> {
        match figment.extract_inner::<T>(name) {
            Ok(v) => Some(v),
            Err(errors) => {
                for e in errors {
                    let mut e = e;
                    if e.path.first().is_none_or(|p| p != name) {
                        e.path.insert(0, name.to_string());
                    }
                    problems.push(describe_figment_error(&e));
                }
                None
            }
        }
    }
    const SECTIONS: [&str; 9] = [
        "kafka",
        "topics",
        "topic_setup",
        "http",
        "delivery",
        "admin",
        "console",
        "log",
        "registry",
    ];
    if let Ok(dict) = figment.data() {
        for key in dict.values().flat_map(|d| d.keys()) {
            if !SECTIONS.contains(&key.as_str()) {
                problems.push(format!(
                    "{key}: unknown setting (sections are {})",
                    SECTIONS.join(", ")
                ));
            }
        }
    }
    // Every section is extracted before any is unwrapped, so all problems are collected.
    let kafka = section(figment, "kafka", problems);
    let topics = section(figment, "topics", problems);
    let topic_setup = section(figment, "topic_setup", problems);
    let http = section(figment, "http", problems);
    let delivery = section(figment, "delivery", problems);
    let admin = section(figment, "admin", problems);
    let console = section(figment, "console", problems);
    let log = section(figment, "log", problems);
    let registry = section(figment, "registry", problems);
    let config = Config {
        kafka: kafka?,
        topics: topics?,
        topic_setup: topic_setup?,
        http: http?,
        delivery: delivery?,
        admin: admin?,
        console: console?,
        log: log?,
        registry: registry?,
    };
    Some(config)
}

fn describe_figment_error(e: &figment::Error) -> String {
    let path = e.path.join(".");
    // A type error quotes the value it found: never for a credential.
    let mut msg = if is_secret_property(&path) || path == "registry.password" {
        "invalid value (not shown: the setting holds a secret)".to_string()
    } else {
        e.kind.to_string()
    };
    if let Some(src) = e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        msg = format!("{msg} (from {src})");
    }
    if path.is_empty() {
        msg
    } else {
        format!("{path}: {msg}")
    }
}

fn toml_string(config: &Config) -> String {
    toml::to_string(config).expect("the config serialises as TOML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[kafka]\nbootstrap_servers = \"file:9092\"\ngroup_id = \"from-file\"\n\
             [delivery]\nmax_in_flight = 10\nmax_in_flight_per_endpoint = 5\n\
             [kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = \"pw\""
        )
        .unwrap();
        let c = Config::load(
            Some(file.path()),
            env(&[
                ("MGPASS_KAFKA__GROUP_ID", "from-env"),
                ("MGPASS_DELIVERY__MAX_IN_FLIGHT", "20"),
                ("MGPASS_KAFKA_PROP_SASL_MECHANISM", "PLAIN"),
                ("OTHER", "ignored"),
                ("MGPASS_CONFIG", "read by the CLI, not a setting"),
                ("MGPASS_TEST_BOOTSTRAP", "not a setting"),
            ]),
            &Overrides {
                bootstrap_servers: Some("flag:9092".into()),
                set: vec![
                    "delivery.max_in_flight=30".into(),
                    "kafka.properties.ssl.ca.location=/etc/ca.pem".into(),
                ],
            },
        )
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "flag:9092");
        assert_eq!(c.kafka.group_id, "from-env");
        assert_eq!(c.delivery.max_in_flight, 30);
        assert_eq!(c.delivery.max_in_flight_per_endpoint, 5);
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka.properties["sasl.mechanism"], "PLAIN");
        assert_eq!(c.kafka.properties["ssl.ca.location"], "/etc/ca.pem");
        let shown = c.redacted();
        assert!(
            shown.contains("\"sasl.password\" = \"[redacted]\""),
            "{shown}"
        );
        assert!(!shown.contains("\"pw\""), "{shown}");
    }

    #[test]
    fn every_error_names_its_setting() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[delivery]\nmax_in_flight = \"lots\"\n[http]\nunknown_knob = 1\n"
        )
        .unwrap();
        let err = Config::load(Some(file.path()), env(&[]), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("delivery.max_in_flight"), "{text}");
        assert!(text.contains("unknown_knob"), "{text}");
    }

    #[test]
    fn validation_reports_all_problems_at_once() {
        let err = Config::load(
            None,
            env(&[
                ("MGPASS_TOPICS__RETRY_5S", "webhooks.retry.1s"),
                ("MGPASS_ADMIN__LISTEN", "nowhere"),
                ("MGPASS_LOG__FORMAT", "xml"),
                ("MGPASS_TOPICS__INVALID", "bad topic"),
                ("MGPASS_DELIVERY__MAX_IN_FLIGHT", "0"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        for setting in [
            "topics.retry_5s",
            "admin.listen",
            "log.format",
            "topics.invalid",
            "delivery.max_in_flight",
        ] {
            assert!(text.contains(setting), "{setting} missing from {text}");
        }
        assert_eq!(err.problems.len(), 6, "{text}");
    }

    #[test]
    fn allow_list_and_pins_take_one_value_or_a_list_and_bad_entries_are_named() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[http]\nallow_private = [\"127.0.0.0/8\", \"localhost\"]\n\
             resolve = [\"hooks.partner.example=127.0.0.1\"]"
        )
        .unwrap();
        let c = Config::load(Some(file.path()), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.http.allow_private, ["127.0.0.0/8", "localhost"]);
        assert_eq!(c.http.resolve, ["hooks.partner.example=127.0.0.1"]);
        let c = Config::load(
            None,
            env(&[("MGPASS_HTTP__ALLOW_PRIVATE", "10.0.0.0/8 fd00::/8")]),
            &Overrides {
                bootstrap_servers: None,
                set: vec!["http.resolve=a.example=127.0.0.1".into()],
            },
        )
        .unwrap();
        assert_eq!(c.http.allow_private, ["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(c.http.resolve, ["a.example=127.0.0.1"]);
        let err = Config::load(
            None,
            env(&[]),
            &Overrides {
                bootstrap_servers: None,
                set: vec![
                    "http.allow_private=[10.0.0.0/40]".into(),
                    "http.resolve=a.example=nowhere".into(),
                ],
            },
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("http.allow_private"), "{text}");
        assert!(text.contains("http.resolve"), "{text}");
        assert_eq!(Config::default().http.allow_private, Vec::<String>::new());
    }

    #[test]
    fn debug_of_the_config_and_the_overrides_redacts_secret_properties() {
        let c = Config::load(
            None,
            env(&[("MGPASS_KAFKA_PROP_SASL_PASSWORD", "pw-in-env")]),
            &Overrides::default(),
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("pw-in-env"), "{shown}");
        assert!(shown.contains("sasl.password"), "{shown}");
        let o = Overrides {
            bootstrap_servers: None,
            set: vec![
                "kafka.properties.sasl.password=pw-in-flag".into(),
                "delivery.max_in_flight=3".into(),
            ],
        };
        let shown = format!("{o:?}");
        assert!(!shown.contains("pw-in-flag"), "{shown}");
        assert!(shown.contains("delivery.max_in_flight=3"), "{shown}");
        // A type error on a secret property does not quote the value.
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[kafka.properties]\n\"sasl.password\" = 987654321").unwrap();
        let err = Config::load(Some(file.path()), env(&[]), &Overrides::default()).unwrap_err();
        assert!(!err.to_string().contains("987654321"), "{err}");
    }

    #[test]
    fn registry_settings_are_validated_by_name_and_the_password_redacted() {
        let c = Config::load(
            None,
            env(&[
                (
                    "MGPASS_REGISTRY__URL",
                    "http://127.0.0.1:8081/apis/ccompat/v7",
                ),
                ("MGPASS_REGISTRY__USERNAME", "sr-user"),
                ("MGPASS_REGISTRY__PASSWORD", "sr-pass-in-env"),
                ("MGPASS_REGISTRY__OUTPUT_FORMAT", "avro"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(c.registry.writes_avro());
        assert_eq!(c.registry.timeout_ms, 5_000);
        for shown in [c.redacted(), format!("{c:?}")] {
            assert!(!shown.contains("sr-pass-in-env"), "{shown}");
            assert!(shown.contains("sr-user"), "{shown}");
        }
        let err = Config::load(
            None,
            env(&[
                ("MGPASS_REGISTRY__URL", "ftp://sr"),
                ("MGPASS_REGISTRY__PASSWORD", "p"),
                ("MGPASS_REGISTRY__TIMEOUT_MS", "0"),
                ("MGPASS_REGISTRY__SUBJECT_STRATEGY", "by_topic"),
                ("MGPASS_REGISTRY__OUTPUT_FORMAT", "xml"),
                ("MGPASS_REGISTRY__CA_BUNDLE", "/nonexistent/ca.pem"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        for setting in [
            "registry.url",
            "registry.password",
            "registry.timeout_ms",
            "registry.subject_strategy",
            "registry.output_format",
            "registry.ca_bundle",
        ] {
            assert!(text.contains(setting), "{setting} missing from {text}");
        }
        let err = Config::load(
            None,
            env(&[
                ("MGPASS_REGISTRY__URL", "http://u:p@sr:8081"),
                ("MGPASS_REGISTRY__OUTPUT_FORMAT", "avro"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("registry.url: put credentials"),
            "{err}"
        );
        let err = Config::load(
            None,
            env(&[("MGPASS_REGISTRY__OUTPUT_FORMAT", "avro")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("needs registry.url"), "{err}");
    }

    #[test]
    fn missing_config_file_is_named() {
        let err = Config::load(
            Some(Path::new("/nonexistent/mgpass.toml")),
            env(&[]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/mgpass.toml"));
    }

    #[test]
    fn malformed_set_flag_is_named() {
        let err = Config::load(
            None,
            env(&[]),
            &Overrides {
                bootstrap_servers: None,
                set: vec!["novalue".into()],
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("--set \"novalue\""));
    }
}
