//! Who is asking, and may they: the console's identities, sessions, CSRF tokens, password hashes
//! and login rate limit. Pure except the clock and the random nonce, so every rule is
//! table-tested here; `super` wires them into the request path.
//!
//! - **Identities** come from exactly one source, chosen by `console.auth`: `accounts` (name and
//!   argon2 password hash from the config, a role each) or `proxy` (a header set by an
//!   authenticating proxy, trusted only from `console.proxy_trusted`; `console.proxy_admins`
//!   get `admin`, everyone else `viewer`).
//! - **Sessions** (accounts) live in one cookie, `v1.<user hex>.<exp>.<nonce>.<mac>`, the MAC an
//!   HMAC-SHA256 over the rest with `console.session_key`, checked in constant time; it carries
//!   no role (the role is looked up in the config on every request, so a changed account takes
//!   effect at once) and expires (`console.session_ttl_secs`). Logging out revokes its nonce.
//! - **CSRF**: every state change carries a token derived from the session (HMAC of its nonce;
//!   for proxy identities, of the user name), in the `X-CSRF-Token` header or the `_csrf` form
//!   field. The login form carries a signed, time-limited token of its own.
//! - **Rate limit**: at most `console.login_attempts_per_minute` login attempts per client
//!   address and per user name in any 60 s window.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::ConsoleConfig;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "mgpass_console";
/// Shortest password `console hash-password` accepts.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// How long a login form's token is accepted.
pub const LOGIN_TOKEN_TTL_SECS: i64 = 3600;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: subscription changes, test webhooks, replays.
    Admin,
    /// Read only: every page and listing, no change, no replay.
    Viewer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// The user behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
    /// What the CSRF token is derived from: the session nonce, or `proxy:<user>`.
    pub csrf_seed: String,
    /// `accounts` or `proxy`.
    pub via: &'static str,
}

/// The HMAC key of sessions and tokens.
#[derive(Clone)]
pub struct Keys {
    key: Vec<u8>,
}

type HmacSha256 = Hmac<Sha256>;

impl Keys {
    pub fn new(key: &[u8]) -> Self {
        Keys { key: key.to_vec() }
    }

    /// A random key (when `console.session_key` is empty).
    pub fn random() -> Self {
        use rand::RngCore;
        let mut k = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Keys { key: k }
    }

    fn mac(&self, parts: &[&str]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        for p in parts {
            m.update(p.as_bytes());
            m.update(b"|");
        }
        m
    }

    fn sign(&self, parts: &[&str]) -> String {
        hex::encode(self.mac(parts).finalize().into_bytes())
    }

    fn verify(&self, parts: &[&str], mac_hex: &str) -> bool {
        match hex::decode(mac_hex) {
            Ok(bytes) => self.mac(parts).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    /// A session cookie value for `user`, valid until `exp` (Unix seconds).
    pub fn session(&self, user: &str, exp: i64, nonce: &str) -> String {
        let user_hex = hex::encode(user.as_bytes());
        let exp = exp.to_string();
        let mac = self.sign(&["v1", &user_hex, &exp, nonce]);
        format!("v1.{user_hex}.{exp}.{nonce}.{mac}")
    }

    /// The user and nonce of a valid, unexpired session cookie value.
    pub fn open_session(&self, value: &str, now: i64) -> Option<(String, String, i64)> {
        let mut it = value.split('.');
        let (v, user_hex, exp, nonce, mac) =
            (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
        if v != "v1" || it.next().is_some() || !self.verify(&["v1", user_hex, exp, nonce], mac) {
            return None;
        }
        let exp: i64 = exp.parse().ok()?;
        if now >= exp {
            return None;
        }
        let user = String::from_utf8(hex::decode(user_hex).ok()?).ok()?;
        Some((user, nonce.to_string(), exp))
    }

    /// The CSRF token of a session (or proxy identity) seed.
    pub fn csrf_token(&self, seed: &str) -> String {
        self.sign(&["csrf", seed])[..32].to_string()
    }

    /// Whether `token` is the CSRF token of `seed` (constant time).
    pub fn check_csrf(&self, seed: &str, token: &str) -> bool {
        let want = self.csrf_token(seed);
        want.len() == token.len()
            && want
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// A login form token issued at `now` (Unix seconds).
    pub fn login_token(&self, now: i64) -> String {
        let t = now.to_string();
        format!("{t}.{}", self.sign(&["login", &t]))
    }

    /// Whether a login form token is genuine and younger than [`LOGIN_TOKEN_TTL_SECS`].
    pub fn check_login_token(&self, token: &str, now: i64) -> bool {
        let Some((t, mac)) = token.split_once('.') else {
            return false;
        };
        let Ok(issued) = t.parse::<i64>() else {
            return false;
        };
        self.verify(&["login", t], mac) && (0..LOGIN_TOKEN_TTL_SECS).contains(&(now - issued))
    }
}

/// A fresh random session nonce (128 bits, hex).
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The argon2id PHC hash of `password` with a random salt (`console hash-password`).
pub fn hash_password(password: &str) -> Result<String, String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password is {} characters; at least {MIN_PASSWORD_CHARS} are required",
            password.chars().count()
        ));
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| format!("making a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing: {e}"))
}

/// Whether `password` matches the PHC `hash` (false for a malformed hash).
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// The identity of a proxied request: `None` unless it comes from a trusted address and names
/// a user. `peer` is the connecting address (never a forwarded-for header).
pub fn proxy_identity(config: &ConsoleConfig, peer: IpAddr, header: Option<&str>) -> ProxyCheck {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    let trusted = config
        .proxy_trusted
        .iter()
        .filter_map(|t| crate::config::parse_net(t))
        .any(|n| n.contains(&peer));
    if !trusted {
        return ProxyCheck::Untrusted;
    }
    match header.map(str::trim).filter(|u| !u.is_empty()) {
        None => ProxyCheck::NoUser,
        Some(user) => {
            let role = if config.proxy_admins.iter().any(|a| a == user) {
                Role::Admin
            } else {
                Role::Viewer
            };
            ProxyCheck::User(Identity {
                user: user.to_string(),
                role,
                csrf_seed: format!("proxy:{user}"),
                via: "proxy",
            })
        }
    }
}

/// What [`proxy_identity`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyCheck {
    User(Identity),
    /// The request did not come from a `console.proxy_trusted` address.
    Untrusted,
    /// From the proxy, without the user header.
    NoUser,
}

/// Login attempts in the last minute, per key (`ip:…`, `user:…`).
pub struct RateLimit {
    per_minute: u32,
    seen: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimit {
    pub fn new(per_minute: u32) -> Self {
        RateLimit {
            per_minute,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an attempt under every key at `now`; `Err(wait)` when any key already had its
    /// allowance in the last 60 s (the attempt is then not recorded).
    pub fn attempt(&self, keys: &[String], now: Instant) -> Result<(), Duration> {
        let window = Duration::from_secs(60);
        let mut seen = self.seen.lock().expect("rate limit lock");
        seen.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        let mut wait = Duration::ZERO;
        for k in keys {
            if let Some(q) = seen.get_mut(k) {
                while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
                    q.pop_front();
                }
                if q.len() >= self.per_minute as usize {
                    let oldest = *q.front().expect("non-empty");
                    wait = wait.max(window - now.duration_since(oldest));
                }
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for k in keys {
            seen.entry(k.clone()).or_default().push_back(now);
        }
        Ok(())
    }
}

/// Revoked session nonces, until their sessions would have expired anyway.
#[derive(Default)]
pub struct Revoked(Mutex<HashMap<String, i64>>);

impl Revoked {
    pub fn revoke(&self, nonce: &str, exp: i64, now: i64) {
        let mut m = self.0.lock().expect("revoked lock");
        m.retain(|_, e| *e > now);
        m.insert(nonce.to_string(), exp);
    }

    pub fn is_revoked(&self, nonce: &str) -> bool {
        self.0.lock().expect("revoked lock").contains_key(nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_only_unaltered_and_unexpired() {
        let k = Keys::new(b"0123456789abcdef0123456789abcdef");
        let v = k.session("alice", 1_000, "n1");
        assert_eq!(
            k.open_session(&v, 999),
            Some(("alice".into(), "n1".into(), 1_000))
        );
        assert_eq!(k.open_session(&v, 1_000), None, "expired");
        let other = Keys::new(b"another key of thirty-two bytes!");
        assert_eq!(other.open_session(&v, 0), None, "another key");
        let forged = v.replace(&hex::encode("alice"), &hex::encode("admin"));
        assert_eq!(k.open_session(&forged, 0), None, "user changed");
        let later = v.replace(".1000.", ".9999.");
        assert_eq!(k.open_session(&later, 0), None, "expiry extended");
        for bad in [
            "",
            "v1",
            "v1.a.b.c.d",
            &format!("{v}.x"),
            "v2.61.1000.n1.00",
        ] {
            assert_eq!(k.open_session(bad, 0), None, "{bad:?}");
        }
        // A name with the delimiter in it survives the round trip.
        let dotted = k.session("a.b|c", 10, "n");
        assert_eq!(k.open_session(&dotted, 0).unwrap().0, "a.b|c");
    }

    #[test]
    fn csrf_and_login_tokens() {
        let k = Keys::new(b"0123456789abcdef0123456789abcdef");
        let t = k.csrf_token("n1");
        assert!(k.check_csrf("n1", &t));
        assert!(!k.check_csrf("n2", &t), "another session's token");
        assert!(!k.check_csrf("n1", ""));
        assert!(!k.check_csrf("n1", &t[..31]));
        let l = k.login_token(100);
        assert!(k.check_login_token(&l, 100));
        assert!(k.check_login_token(&l, 100 + LOGIN_TOKEN_TTL_SECS - 1));
        assert!(
            !k.check_login_token(&l, 100 + LOGIN_TOKEN_TTL_SECS),
            "too old"
        );
        assert!(!k.check_login_token(&l, 99), "from the future");
        assert!(
            !k.check_login_token(&l.replace("100.", "200."), 200),
            "time altered"
        );
        assert!(!k.check_login_token("garbage", 100));
    }

    #[test]
    fn passwords_hash_with_argon2_and_verify() {
        assert!(hash_password("short").unwrap_err().contains("at least 12"));
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterx", &h));
        assert!(!verify_password("x", "not a hash"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn proxy_identities_only_from_trusted_addresses() {
        let c = ConsoleConfig {
            proxy_trusted: vec!["10.0.0.0/8".into(), "127.0.0.1".into()],
            proxy_admins: vec!["root@corp".into()],
            ..ConsoleConfig::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let user = |c: &ProxyCheck| match c {
            ProxyCheck::User(i) => Some((i.user.clone(), i.role)),
            _ => None,
        };
        let check = |peer: &str, h: Option<&str>| proxy_identity(&c, ip(peer), h);
        assert_eq!(
            user(&check("10.1.2.3", Some("root@corp"))),
            Some(("root@corp".into(), Role::Admin))
        );
        assert_eq!(
            user(&check("127.0.0.1", Some("ops"))),
            Some(("ops".into(), Role::Viewer))
        );
        assert_eq!(
            user(&check("::ffff:10.0.0.1", Some("ops"))).map(|u| u.1),
            Some(Role::Viewer),
            "IPv4-mapped"
        );
        assert_eq!(
            check("192.168.1.1", Some("root@corp")),
            ProxyCheck::Untrusted
        );
        assert_eq!(check("10.0.0.1", None), ProxyCheck::NoUser);
        assert_eq!(check("10.0.0.1", Some("  ")), ProxyCheck::NoUser);
    }

    #[test]
    fn login_attempts_are_limited_per_key_per_minute() {
        let r = RateLimit::new(2);
        let t0 = Instant::now();
        let keys = |ip: &str, u: &str| vec![format!("ip:{ip}"), format!("user:{u}")];
        assert!(r.attempt(&keys("a", "x"), t0).is_ok());
        assert!(r.attempt(&keys("a", "y"), t0).is_ok());
        let wait = r.attempt(&keys("a", "z"), t0 + Duration::from_secs(10));
        assert_eq!(wait, Err(Duration::from_secs(50)), "third from one address");
        assert!(r.attempt(&keys("b", "x"), t0).is_ok(), "x has one left");
        assert!(
            r.attempt(&keys("c", "x"), t0).is_err(),
            "x is used up from any address"
        );
        assert!(
            r.attempt(&keys("a", "z"), t0 + Duration::from_secs(60))
                .is_ok(),
            "a minute later"
        );
    }
}
