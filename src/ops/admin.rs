//! The secret side of subscription admin: where a secret comes from (`--secret`, `--secret-env`,
//! `--secret-stdin`, or generated), the minimum strength the CLI accepts, and the listing of a
//! subscription with a fingerprint in place of its secret.
//!
//! Guarantees: a listing never contains the secret, only the first 8 hex digits of its SHA-256
//! (enough to tell whether two places hold the same secret, useless to sign with); a secret
//! shorter than [`MIN_SECRET_BYTES`] is refused with a message before anything is written. The
//! minimum is enforced by this CLI only: subscriptions already on the topic with shorter secrets
//! keep working, so an upgrade never stops deliveries.

use sha2::{Digest, Sha256};

use crate::secret::Secret;
use crate::subscriptions::Subscription;

/// Shortest secret `subscriptions put` accepts, in bytes (192 bits when random).
pub const MIN_SECRET_BYTES: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "the secret is {0} bytes; at least {MIN_SECRET_BYTES} are required (omit --secret, \
         --secret-env and --secret-stdin to have a strong one generated)"
    )]
    TooShort(usize),
    #[error("--secret-env: variable {0} is not set or not UTF-8")]
    MissingEnv(String),
    #[error("--secret-stdin: cannot read standard input: {0}")]
    Stdin(#[from] std::io::Error),
}

/// Where the secret of `subscriptions put` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Given(String),
    Env(String),
    Stdin,
    Generate,
}

/// The secret to use, and whether it was generated (then the CLI prints it once). `env` and
/// `stdin` are the process's, passed in for tests. Standard input loses one trailing newline
/// (`\n` or `\r\n`), as `echo` or a heredoc adds it.
pub fn choose_secret(
    source: SecretSource,
    env: impl FnOnce(&str) -> Option<String>,
    stdin: impl FnOnce() -> std::io::Result<String>,
) -> Result<(Secret, bool), SecretError> {
    let value = match source {
        SecretSource::Generate => return Ok((Secret::generate(), true)),
        SecretSource::Given(s) => s,
        SecretSource::Env(var) => env(&var).ok_or(SecretError::MissingEnv(var))?,
        SecretSource::Stdin => {
            let mut s = stdin()?;
            if s.ends_with('\n') {
                s.pop();
                if s.ends_with('\r') {
                    s.pop();
                }
            }
            s
        }
    };
    if value.len() < MIN_SECRET_BYTES {
        return Err(SecretError::TooShort(value.len()));
    }
    Ok((Secret::new(value), false))
}

/// The first 8 hex digits of the SHA-256 of the secret's UTF-8 bytes.
pub fn fingerprint(secret: &Secret) -> String {
    let digest = Sha256::digest(secret.expose().as_bytes());
    hex::encode(&digest[..4])
}

/// A subscription as admins see it, in the CLI's listings and the console: the secret as its
/// fingerprint, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubscriptionView {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub client_id: Option<String>,
    pub secret_fingerprint: String,
    pub enabled: bool,
}

impl SubscriptionView {
    pub fn of(sub: &Subscription) -> Self {
        SubscriptionView {
            id: sub.id.clone(),
            url: sub.url.to_string(),
            event_types: sub.event_types.clone(),
            client_id: sub.client_id.clone(),
            secret_fingerprint: fingerprint(&sub.secret),
            enabled: sub.enabled,
        }
    }

    /// Whether `query` (case-insensitive) occurs in the id, URL, client scope, an event type
    /// or the fingerprint: the console's search. An empty query matches everything.
    pub fn matches_search(&self, query: &str) -> bool {
        let q = query.trim().to_lowercase();
        q.is_empty()
            || [&self.id, &self.url, &self.secret_fingerprint]
                .iter()
                .any(|f| f.to_lowercase().contains(&q))
            || self
                .client_id
                .as_deref()
                .is_some_and(|c| c.to_lowercase().contains(&q))
            || self
                .event_types
                .iter()
                .any(|t| t.to_lowercase().contains(&q))
    }
}

/// One subscription as a JSON line for `get` / `list` / `put`: the secret as its fingerprint.
pub fn describe(sub: &Subscription) -> String {
    serde_json::to_string(&SubscriptionView::of(sub)).expect("a view serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriptions::SubscriptionRecord;

    const STRONG: &str = "0123456789abcdef01234567";

    fn choose(source: SecretSource, stdin: &str) -> Result<(String, bool), String> {
        let input = stdin.to_string();
        choose_secret(
            source,
            |v| (v == "SET").then(|| STRONG.to_string()),
            move || Ok(input),
        )
        .map(|(s, g)| (s.expose().to_string(), g))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn secret_sources_and_the_minimum_length() {
        let given = |s: &str| SecretSource::Given(s.into());
        assert_eq!(choose(given(STRONG), ""), Ok((STRONG.into(), false)));
        let e = choose(given("hunter2"), "").unwrap_err();
        assert!(e.contains("7 bytes") && e.contains("at least 24"), "{e}");
        assert!(!e.contains("hunter2"), "the message never shows the secret");
        assert_eq!(
            choose(SecretSource::Env("SET".into()), ""),
            Ok((STRONG.into(), false))
        );
        let e = choose(SecretSource::Env("UNSET".into()), "").unwrap_err();
        assert!(e.contains("UNSET"), "{e}");
        for input in [
            format!("{STRONG}\n"),
            format!("{STRONG}\r\n"),
            STRONG.into(),
        ] {
            assert_eq!(
                choose(SecretSource::Stdin, &input),
                Ok((STRONG.into(), false)),
                "{input:?}"
            );
        }
        assert!(choose(SecretSource::Stdin, "short\n").is_err());
        // 23 bytes is one too few; 24 multi-byte-character bytes are enough.
        assert!(choose(given(&STRONG[..23]), "").is_err());
        assert!(choose(given("éééééééééééé"), "").is_ok());
        let (generated, was_generated) = choose(SecretSource::Generate, "").unwrap();
        assert!(was_generated && generated.len() >= MIN_SECRET_BYTES);
    }

    #[test]
    fn listings_show_a_fingerprint_never_the_secret() {
        let sub = SubscriptionRecord {
            id: "sub_1".into(),
            url: "https://p.example/h".into(),
            event_types: vec!["*".into()],
            client_id: None,
            secret: STRONG.into(),
            enabled: true,
        }
        .validate()
        .unwrap();
        let line = describe(&sub);
        assert!(!line.contains(STRONG), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        // sha256("0123456789abcdef01234567") starts with these four bytes.
        let expected = hex::encode(&Sha256::digest(STRONG.as_bytes())[..4]);
        assert_eq!(v["secret_fingerprint"], expected.as_str());
        assert_eq!(expected.len(), 8);
        let view = SubscriptionView::of(&sub);
        for (q, hit) in [
            ("", true),
            ("SUB_1", true),
            ("p.example", true),
            ("*", true),
            ("zzz", false),
        ] {
            assert_eq!(view.matches_search(q), hit, "{q:?}");
        }
        assert!(
            view.matches_search(&expected),
            "the fingerprint is searchable"
        );
        assert_eq!(
            fingerprint(&Secret::new("a")),
            "ca978112",
            "sha256(\"a\") = ca978112…"
        );
    }
}
