//! Subscription records (SPEC §2), their validation, and the in-memory table the processor
//! matches events against.
//!
//! Guarantees:
//! - A record is validated as a whole before it touches the table, by rules that depend on the
//!   record alone (never on the reader's configuration), so the CLI, every processor instance and
//!   every restart agree on what is valid. Sending policy (`http://` only with `http.allow_http`,
//!   the address guard) is applied when sending, not here.
//! - The latest record of a key decides, the same before and after a restart: the topic is
//!   compacted, so a valid version followed by an invalid one compacts to the invalid one alone
//!   and "keeping the last good version" could not survive the next restart. An invalid latest
//!   record (bad JSON, key ≠ id, bad URL, unknown event type, empty secret, …) therefore
//!   *suspends* the subscription: it leaves the matching table, and is kept in the table's list
//!   of invalid subscriptions with its reason code ([`SubscriptionTable::invalid`]) until a valid
//!   record or a tombstone for the key arrives.
//! - A null value (tombstone) deletes the subscription.
//! - The table is *ready* only once the loader has read every partition up to the end offsets
//!   captured when it started; [`SubscriptionTable::wait_ready`] lets the processor hold back
//!   event matching until then. See [`loader`] for how completion is judged.

pub mod loader;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use url::Url;

use crate::events::KNOWN_EVENT_TYPES;
use crate::matching::{self, WILDCARD};
use crate::secret::Secret;

/// Longest subscription id accepted.
pub const MAX_ID_LEN: usize = 128;

/// A validated subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub url: Url,
    pub event_types: Vec<String>,
    pub client_id: Option<String>,
    pub secret: Secret,
    pub enabled: bool,
}

/// The record as it travels on the topic: the only place the secret is written out in clear
/// (its `Debug` redacts it).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRecord {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    pub secret: String,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

fn default_enabled() -> bool {
    true
}

impl std::fmt::Debug for SubscriptionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionRecord")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("client_id", &self.client_id)
            .field("secret", &crate::secret::REDACTED)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// What a valid record does to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Subscription),
    Delete(String),
}

/// Why a subscription record was rejected: a bounded reason `code` and a message that names the
/// subscription and field but never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct InvalidSubscription {
    pub code: &'static str,
    pub message: String,
}

impl InvalidSubscription {
    /// The record field the problem is about, so a form can show it beside that field.
    pub fn field(&self) -> &'static str {
        match self.code {
            "bad_id" | "key_mismatch" | "missing_key" | "bad_key" => "id",
            "bad_url" => "url",
            "bad_event_types" => "event_types",
            "empty_secret" => "secret",
            "bad_client_id" => "client_id",
            _ => "record",
        }
    }
}

fn invalid(code: &'static str, message: impl Into<String>) -> InvalidSubscription {
    InvalidSubscription {
        code,
        message: message.into(),
    }
}

impl Subscription {
    /// The wire record, secret in clear, for producing to the subscriptions topic.
    pub fn to_record(&self) -> SubscriptionRecord {
        SubscriptionRecord {
            id: self.id.clone(),
            url: self.url.to_string(),
            event_types: self.event_types.clone(),
            client_id: self.client_id.clone(),
            secret: self.secret.expose().to_string(),
            enabled: self.enabled,
        }
    }
}

/// Validates an id: 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn validate_id(id: &str) -> Result<(), InvalidSubscription> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(invalid(
            "bad_id",
            format!("id must be 1 to {MAX_ID_LEN} characters"),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(invalid(
            "bad_id",
            format!("id {id:?} contains {c:?}; allowed are letters, digits and _ - . :"),
        ));
    }
    Ok(())
}

impl SubscriptionRecord {
    /// Validates the record into a [`Subscription`]. The rules are the record's own: `https` or
    /// `http` URLs are both valid records (whether `http://` is sent to is the sender's
    /// `http.allow_http`), so every reader of the topic judges a record the same way.
    pub fn validate(self) -> Result<Subscription, InvalidSubscription> {
        validate_id(&self.id)?;
        let id = &self.id;
        let url = Url::parse(&self.url)
            .map_err(|e| invalid("bad_url", format!("{id}: url is not a valid URL: {e}")))?;
        match url.scheme() {
            "https" | "http" => {}
            other => {
                return Err(invalid(
                    "bad_url",
                    format!("{id}: url scheme {other:?} is not https (or http)"),
                ))
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("bad_url", format!("{id}: url has no host")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "bad_url",
                format!("{id}: url must not carry credentials"),
            ));
        }
        if url.fragment().is_some() {
            return Err(invalid(
                "bad_url",
                format!("{id}: url must not have a #fragment"),
            ));
        }
        if self.event_types.is_empty() {
            return Err(invalid(
                "bad_event_types",
                format!("{id}: event_types must not be empty (use [\"*\"] for every event)"),
            ));
        }
        for t in &self.event_types {
            if t != WILDCARD && !KNOWN_EVENT_TYPES.contains(&t.as_str()) {
                return Err(invalid(
                    "bad_event_types",
                    format!("{id}: unknown event type {t:?}"),
                ));
            }
        }
        if self.secret.is_empty() {
            return Err(invalid("empty_secret", format!("{id}: secret is empty")));
        }
        if matches!(&self.client_id, Some(c) if c.is_empty()) {
            return Err(invalid(
                "bad_client_id",
                format!("{id}: client_id must be null or a non-empty string"),
            ));
        }
        let mut event_types = self.event_types;
        event_types.sort();
        event_types.dedup();
        Ok(Subscription {
            id: self.id,
            url,
            event_types,
            client_id: self.client_id,
            secret: Secret::new(self.secret),
            enabled: self.enabled,
        })
    }
}

impl SubscriptionRecord {
    /// Every field's problem at once (`validate` stops at the first), by the same rules: each
    /// field is validated in a record whose other fields are known good. Empty when the record
    /// is valid. For forms that show each error beside its field.
    pub fn field_problems(&self) -> Vec<InvalidSubscription> {
        let id_ok = validate_id(&self.id).is_ok();
        let good = SubscriptionRecord {
            id: if id_ok {
                self.id.clone()
            } else {
                "subscription".into()
            },
            url: "https://valid.example/".into(),
            event_types: vec![WILDCARD.into()],
            client_id: None,
            secret: "s".into(),
            enabled: true,
        };
        let probes = [
            SubscriptionRecord {
                id: self.id.clone(),
                ..good.clone()
            },
            SubscriptionRecord {
                url: self.url.clone(),
                ..good.clone()
            },
            SubscriptionRecord {
                event_types: self.event_types.clone(),
                ..good.clone()
            },
            SubscriptionRecord {
                client_id: self.client_id.clone(),
                ..good.clone()
            },
            SubscriptionRecord {
                secret: self.secret.clone(),
                ..good
            },
        ];
        probes
            .into_iter()
            .filter_map(|p| p.validate().err())
            .collect()
    }
}

/// Decodes one record of the subscriptions topic into a table change.
pub fn decode_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<Change, InvalidSubscription> {
    let key = key.ok_or_else(|| invalid("missing_key", "record has no key"))?;
    let key = std::str::from_utf8(key).map_err(|_| invalid("bad_key", "key is not UTF-8"))?;
    let Some(value) = value else {
        // Any key can be deleted, a malformed one too: that ends its listing as invalid.
        return Ok(Change::Delete(key.to_string()));
    };
    let record: SubscriptionRecord = serde_json::from_slice(value).map_err(|e| {
        invalid(
            "bad_json",
            format!(
                "{key}: value is not a subscription: {}",
                without_input_echo(&e)
            ),
        )
    })?;
    if record.id != key {
        return Err(invalid(
            "key_mismatch",
            format!("record key {key:?} differs from id {:?}", record.id),
        ));
    }
    record.validate().map(Change::Put)
}

/// serde_json errors can quote the offending input (which could be the secret): keep only the
/// category and position.
fn without_input_echo(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            let text = e.to_string();
            // "unknown field `x`, expected …" and "missing field `x`" name fields, not values.
            if text.starts_with("unknown field") || text.starts_with("missing field") {
                text
            } else {
                format!(
                    "wrong type or value at line {} column {}",
                    e.line(),
                    e.column()
                )
            }
        }
        _ => e.to_string(),
    }
}

/// Scope key of unscoped subscriptions in the index (client ids are never empty).
const UNSCOPED: &str = "";

/// subscription id → subscription.
type Bucket = HashMap<String, Arc<Subscription>>;

/// A subscription suspended because the latest record of its key is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLatest {
    /// The reason code (as in `webhooks_subscription_invalid_records_total{reason}`).
    pub reason: &'static str,
    /// Why, naming the field; never the secret.
    pub message: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Arc<Subscription>>,
    /// key → why its latest record is invalid (the subscription is suspended).
    invalid: HashMap<String, InvalidLatest>,
    /// event type (or `*`) → client scope (or [`UNSCOPED`]) → the subscriptions listing both, so
    /// matching an event reads four small buckets, however large the table.
    index: HashMap<String, HashMap<String, Bucket>>,
}

impl Inner {
    fn scope(sub: &Subscription) -> &str {
        sub.client_id.as_deref().unwrap_or(UNSCOPED)
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Subscription>> {
        let old = self.by_id.remove(id)?;
        for t in &old.event_types {
            if let Some(scopes) = self.index.get_mut(t) {
                if let Some(bucket) = scopes.get_mut(Self::scope(&old)) {
                    bucket.remove(id);
                    if bucket.is_empty() {
                        scopes.remove(Self::scope(&old));
                    }
                }
                if scopes.is_empty() {
                    self.index.remove(t);
                }
            }
        }
        Some(old)
    }

    fn insert(&mut self, sub: Arc<Subscription>) {
        for t in &sub.event_types {
            self.index
                .entry(t.clone())
                .or_default()
                .entry(Self::scope(&sub).to_string())
                .or_default()
                .insert(sub.id.clone(), sub.clone());
        }
        self.by_id.insert(sub.id.clone(), sub);
    }

    /// The buckets of one index key (an event type or `*`) that an event from `client_id`
    /// can match: the unscoped one and the client's own.
    fn buckets<'a>(
        &'a self,
        key: &str,
        client_id: Option<&str>,
    ) -> impl Iterator<Item = &'a Bucket> {
        let scopes = self.index.get(key);
        let unscoped = scopes.and_then(|s| s.get(UNSCOPED));
        let scoped = scopes.zip(client_id).and_then(|(s, c)| s.get(c));
        unscoped.into_iter().chain(scoped)
    }
}

/// The in-memory subscription table, shared by the loader (writer) and the processor (readers).
pub struct SubscriptionTable {
    inner: RwLock<Inner>,
    ready: watch::Sender<bool>,
}

impl Default for SubscriptionTable {
    fn default() -> Self {
        SubscriptionTable::new()
    }
}

impl SubscriptionTable {
    pub fn new() -> Self {
        SubscriptionTable {
            inner: RwLock::new(Inner::default()),
            ready: watch::channel(false).0,
        }
    }

    /// Applies a valid change (which ends any suspension of that id).
    pub fn apply(&self, change: Change) {
        let mut inner = self.inner.write().expect("table lock poisoned");
        match change {
            Change::Delete(id) => {
                inner.remove(&id);
                inner.invalid.remove(&id);
            }
            Change::Put(sub) => {
                inner.remove(&sub.id);
                inner.invalid.remove(&sub.id);
                inner.insert(Arc::new(sub));
            }
        }
    }

    /// The latest record of `key` is invalid: the subscription leaves the matching table (no
    /// deliveries, retries end as `subscription_invalid`) and is listed as invalid.
    pub fn suspend(&self, key: &str, why: InvalidLatest) {
        let mut inner = self.inner.write().expect("table lock poisoned");
        inner.remove(key);
        inner.invalid.insert(key.to_string(), why);
    }

    /// Why `id` is suspended, when its latest record is invalid.
    pub fn invalid(&self, id: &str) -> Option<InvalidLatest> {
        self.inner
            .read()
            .expect("table lock poisoned")
            .invalid
            .get(id)
            .cloned()
    }

    /// Number of subscriptions whose latest record is invalid.
    pub fn invalid_len(&self) -> usize {
        self.inner
            .read()
            .expect("table lock poisoned")
            .invalid
            .len()
    }

    /// Every suspended key with its reason, sorted by key.
    pub fn invalid_snapshot(&self) -> Vec<(String, InvalidLatest)> {
        let mut all: Vec<_> = self
            .inner
            .read()
            .expect("table lock poisoned")
            .invalid
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn get(&self, id: &str) -> Option<Arc<Subscription>> {
        self.inner
            .read()
            .expect("table lock poisoned")
            .by_id
            .get(id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("table lock poisoned").by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every subscription, sorted by id.
    pub fn snapshot(&self) -> Vec<Arc<Subscription>> {
        let mut all: Vec<_> = self
            .inner
            .read()
            .expect("table lock poisoned")
            .by_id
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The subscriptions that receive an event: the candidates indexed under its type or `*`
    /// and its client or no scope, filtered by [`matching::matches`]. Each appears once.
    pub fn matching(&self, event_type: &str, client_id: Option<&str>) -> Vec<Arc<Subscription>> {
        let inner = self.inner.read().expect("table lock poisoned");
        let mut out = Vec::new();
        // An event whose type is literally `*` has only wildcard candidates.
        if event_type != WILDCARD {
            for sub in inner
                .buckets(event_type, client_id)
                .flat_map(|b| b.values())
            {
                if matching::matches(sub, event_type, client_id) {
                    out.push(sub.clone());
                }
            }
        }
        for sub in inner.buckets(WILDCARD, client_id).flat_map(|b| b.values()) {
            // One listing both the type and `*` was a typed candidate already.
            let typed = event_type != WILDCARD && sub.event_types.iter().any(|t| t == event_type);
            if !typed && matching::matches(sub, event_type, client_id) {
                out.push(sub.clone());
            }
        }
        out
    }

    /// Marks the initial load complete.
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once the initial load is complete.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we hold `&self`.
        let _ = rx.wait_for(|ready| *ready).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, url: &str, types: &[&str], secret: &str) -> String {
        serde_json::json!({"id": id, "url": url, "event_types": types, "secret": secret})
            .to_string()
    }

    fn decode(key: &str, value: &str) -> Result<Change, InvalidSubscription> {
        decode_record(Some(key.as_bytes()), Some(value.as_bytes()))
    }

    #[test]
    fn every_field_problem_is_reported_with_its_field() {
        let r = SubscriptionRecord {
            id: "bad id".into(),
            url: "ftp://x".into(),
            event_types: vec![],
            client_id: Some(String::new()),
            secret: String::new(),
            enabled: true,
        };
        let fields: Vec<&str> = r.field_problems().iter().map(|p| p.field()).collect();
        assert_eq!(fields, ["id", "url", "event_types", "client_id", "secret"]);
        let ok = SubscriptionRecord {
            id: "s1".into(),
            url: "https://p.example/h".into(),
            event_types: vec!["*".into()],
            client_id: None,
            secret: "x".into(),
            enabled: true,
        };
        assert!(ok.field_problems().is_empty());
        let one = SubscriptionRecord {
            url: "nope".into(),
            ..ok
        };
        let p = one.field_problems();
        assert_eq!(p.len(), 1);
        assert!(p[0].message.starts_with("s1: url"), "{}", p[0].message);
        assert_eq!(
            one.validate().unwrap_err(),
            p[0],
            "the same rule as validate"
        );
    }

    #[test]
    fn decodes_a_full_record() {
        let v = r#"{"id":"sub_123","url":"https://partner.example/webhook","event_types":["rewards.points_awarded"],"client_id":"oauth-client","secret":"s3cret","enabled":false}"#;
        let Change::Put(s) = decode("sub_123", v).unwrap() else {
            panic!()
        };
        assert_eq!(s.client_id.as_deref(), Some("oauth-client"));
        assert!(!s.enabled);
        assert_eq!(s.secret.expose(), "s3cret");
        assert_eq!(s.to_record().secret, "s3cret");
    }

    #[test]
    fn tombstone_deletes() {
        assert_eq!(
            decode_record(Some(b"sub_1"), None).unwrap(),
            Change::Delete("sub_1".into())
        );
        // A malformed key can be deleted too (ending its listing as invalid).
        assert_eq!(
            decode_record(Some(b"a b"), None).unwrap(),
            Change::Delete("a b".into())
        );
    }

    #[test]
    fn invalid_records_have_reason_codes_and_never_echo_the_secret() {
        let ok_url = "https://p.example/h";
        #[rustfmt::skip]
        let cases: Vec<(Option<&str>, Option<String>, &str)> = vec![
            (None, Some(record("a", ok_url, &["*"], "s")), "missing_key"),
            (Some("a"), Some("not json".into()), "bad_json"),
            (Some("a"), Some(r#"{"id":"a","url":"https://p.example/h","event_types":["*"],"secret":42}"#.into()), "bad_json"),
            (Some("a"), Some(r#"{"id":"a","url":"https://p.example/h","event_types":["*"],"secret":"s","colour":"red"}"#.into()), "bad_json"),
            (Some("a"), Some(r#"{"id":"a","url":"https://p.example/h","event_types":["*"]}"#.into()), "bad_json"),
            (Some("b"), Some(record("a", ok_url, &["*"], "s")), "key_mismatch"),
            (Some("a b"), Some(record("a b", ok_url, &["*"], "s")), "bad_id"),
            (Some("a"), Some(record("a", "not a url", &["*"], "s")), "bad_url"),
            (Some("a"), Some(record("a", "ftp://p.example/h", &["*"], "s")), "bad_url"),
            (Some("a"), Some(record("a", "https://user:pw@p.example/h", &["*"], "s")), "bad_url"),
            (Some("a"), Some(record("a", ok_url, &[], "s")), "bad_event_types"),
            (Some("a"), Some(record("a", ok_url, &["rewards.nope"], "s")), "bad_event_types"),
            (Some("a"), Some(record("a", ok_url, &["*"], "")), "empty_secret"),
            (Some("a"), Some(r#"{"id":"a","url":"https://p.example/h","event_types":["*"],"secret":"s","client_id":""}"#.into()), "bad_client_id"),
        ];
        for (key, value, code) in cases {
            let err = decode_record(key.map(str::as_bytes), value.as_deref().map(str::as_bytes))
                .unwrap_err();
            assert_eq!(err.code, code, "{key:?} {value:?}: {err}");
            assert!(!err.message.contains("s3cr"), "{err}");
        }
    }

    #[test]
    fn http_records_are_valid_whatever_the_reader_config_sending_decides() {
        let v = record("a", "http://127.0.0.1:8080/h", &["*"], "s");
        assert!(decode_record(Some(b"a"), Some(v.as_bytes())).is_ok());
    }

    #[test]
    fn record_debug_redacts_the_secret() {
        let r: SubscriptionRecord =
            serde_json::from_str(&record("a", "https://p.example/h", &["*"], "s3cr3t-value"))
                .unwrap();
        let shown = format!("{r:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains(crate::secret::REDACTED), "{shown}");
        let sub = r.validate().unwrap();
        let shown = format!("{sub:?} {:?}", Change::Put(sub.clone()));
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
    }

    #[test]
    fn an_invalid_latest_record_suspends_until_a_valid_one_or_a_tombstone() {
        let t = SubscriptionTable::new();
        put(&t, "a", &["*"], None);
        let why = InvalidLatest {
            reason: "empty_secret",
            message: "a: secret is empty".into(),
            partition: 0,
            offset: 7,
        };
        t.suspend("a", why.clone());
        assert!(t.get("a").is_none());
        assert!(t.matching("rewards.redeemed", None).is_empty());
        assert_eq!(t.invalid("a"), Some(why.clone()));
        assert_eq!(t.invalid_len(), 1);
        put(&t, "a", &["*"], None);
        assert!(t.get("a").is_some());
        assert_eq!(t.invalid_len(), 0);
        t.suspend("a", why);
        t.apply(Change::Delete("a".into()));
        assert_eq!((t.len(), t.invalid_len()), (0, 0));
    }

    fn put(table: &SubscriptionTable, id: &str, types: &[&str], client: Option<&str>) {
        let mut r: SubscriptionRecord =
            serde_json::from_str(&record(id, "https://p.example/h", types, "s")).unwrap();
        r.client_id = client.map(str::to_string);
        table.apply(Change::Put(r.validate().unwrap()));
    }

    fn ids(mut subs: Vec<Arc<Subscription>>) -> Vec<String> {
        subs.sort_by(|a, b| a.id.cmp(&b.id));
        subs.iter().map(|s| s.id.clone()).collect()
    }

    #[test]
    fn table_index_follows_puts_updates_and_deletes() {
        let t = SubscriptionTable::new();
        let pts = "rewards.points_awarded";
        put(&t, "a", &[pts], None);
        put(&t, "b", &["*"], None);
        put(&t, "c", &[pts, "*"], None);
        put(&t, "d", &["cashback.processed"], None);
        put(&t, "e", &[pts], Some("app"));
        assert_eq!(ids(t.matching(pts, None)), ["a", "b", "c"]);
        assert_eq!(ids(t.matching(pts, Some("app"))), ["a", "b", "c", "e"]);
        assert_eq!(ids(t.matching("other.type", None)), ["b", "c"]);
        // Update moves "a" from points_awarded to cashback only.
        put(&t, "a", &["cashback.processed"], None);
        assert_eq!(ids(t.matching(pts, None)), ["b", "c"]);
        assert_eq!(
            ids(t.matching("cashback.processed", None)),
            ["a", "b", "c", "d"]
        );
        t.apply(Change::Delete("c".into()));
        t.apply(Change::Delete("never-existed".into()));
        assert_eq!(ids(t.matching(pts, None)), ["b"]);
        assert_eq!(t.len(), 4);
        assert!(t.get("c").is_none());
    }

    #[tokio::test]
    async fn ready_wakes_waiters() {
        let t = Arc::new(SubscriptionTable::new());
        assert!(!t.is_ready());
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.wait_ready().await }
        });
        t.set_ready();
        waiter.await.unwrap();
        assert!(t.is_ready());
    }
}
