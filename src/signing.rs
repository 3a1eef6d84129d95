//! The webhook signature header.
//!
//! This module owns `X-Webhook-Signature`: the lowercase hex HMAC-SHA256 of the exact body bytes we
//! send, keyed with the subscription secret's UTF-8 bytes. Because [`crate::body`] guarantees that
//! those bytes are a fixed point of `JSON.stringify(JSON.parse(body))`, the value equals what a Node
//! receiver computes:
//!
//! ```js
//! crypto.createHmac('sha256', secret).update(JSON.stringify(req.body)).digest('hex')
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The name of the header carrying [`sign`]'s result.
pub const SIGNATURE_HEADER: &str = "X-Webhook-Signature";

/// Lowercase hex HMAC-SHA256 of `body` keyed with `secret` (pass the secret's UTF-8 bytes).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The receiver's check from the public guide: `signature` must equal [`sign`]`(secret, body)`
/// exactly (so uppercase hex or any length mismatch is rejected), compared in constant time like
/// Node's `crypto.timingSafeEqual`.
pub fn verify(secret: &[u8], body: &[u8], signature: &[u8]) -> bool {
    let expected = sign(secret, body);
    let expected = expected.as_bytes();
    signature.len() == expected.len()
        && signature
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_only_the_exact_signature() {
        let good = sign(b"Jefe", b"body");
        assert!(verify(b"Jefe", b"body", good.as_bytes()));
        assert!(!verify(b"Jefe", b"body ", good.as_bytes()), "other body");
        assert!(!verify(b"Jeff", b"body", good.as_bytes()), "other secret");
        assert!(
            !verify(b"Jefe", b"body", good.to_uppercase().as_bytes()),
            "uppercase hex"
        );
        assert!(!verify(b"Jefe", b"body", &good.as_bytes()[..63]), "short");
        assert!(!verify(b"Jefe", b"body", b""), "empty");
    }

    #[test]
    fn rfc4231_test_vectors() {
        // Test case 1.
        assert_eq!(
            sign(&[0x0b; 20], b"Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block size is hashed first.
        assert_eq!(
            sign(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn matches_node_for_a_non_ascii_secret() {
        // node -e "console.log(require('crypto').createHmac('sha256','sécret🔑')
        //          .update('{\"a\":\"ü\"}').digest('hex'))"
        assert_eq!(
            sign("sécret🔑".as_bytes(), "{\"a\":\"ü\"}".as_bytes()),
            "2f6a9419392d302c715d1c8720014aed18fd5c3ef826364b353110cd4b55da1c"
        );
    }

    #[test]
    fn header_name() {
        assert_eq!(SIGNATURE_HEADER, "X-Webhook-Signature");
    }
}
