//! A wrapper for secret values (subscription secrets, SASL passwords) whose `Debug`, `Display` and
//! `Serialize` never reveal the value, so a secret cannot leak through logs, metrics, the
//! delivery log, the failed topic or CLI listings by accident. The only way to the bytes is the
//! explicit [`Secret::expose`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Placeholder printed wherever a secret would otherwise appear.
pub const REDACTED: &str = "[redacted]";

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Call sites are few and greppable: signing and producing records.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A fresh random secret: 32 bytes from the OS generator, hex encoded (256 bits).
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Secret(format!("whsec_{}", hex::encode(bytes)))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{REDACTED}\"")
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), "whsec_".len() + 64);
    }
}
