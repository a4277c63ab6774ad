//! Generated secrets: robot tokens and personal access tokens. They carry 32
//! random bytes, so a plain SHA-256 digest is a safe way to store them (no
//! slow hash needed), and lookups compare digests in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// `N` bytes from the operating system's random number generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).expect("the operating system provides random bytes");
    bytes
}

/// A new token `kai_<kind>_<43 base64url characters>` (32 random bytes). The
/// prefix lets secret scanners and people recognise it.
pub fn generate_token(kind: &str) -> String {
    format!(
        "kai_{kind}_{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    )
}

/// A random password for a generated account, 24 base64url characters.
pub fn generate_password() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<18>())
}

/// A short random identifier (for token ids and signing key ids).
pub fn generate_id() -> String {
    hex::encode(random_bytes::<8>())
}

/// The stored form of a generated token: its SHA-256 digest in hex.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two secrets (or digests) in constant time.
pub fn equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Whether `token` is the one whose digest is `stored_digest`, in constant time.
pub fn token_matches(token: &str, stored_digest: &str) -> bool {
    equal(&token_digest(token), stored_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_match_their_digest() {
        let token = generate_token("pat");
        assert!(token.starts_with("kai_pat_"));
        assert_eq!(token.len(), "kai_pat_".len() + 43);
        assert_ne!(token, generate_token("pat"));
        let digest = token_digest(&token);
        assert_eq!(digest.len(), 64);
        assert!(token_matches(&token, &digest));
        assert!(!token_matches(&generate_token("pat"), &digest));
        assert!(!equal("abc", "abcd"));
        assert!(equal("abc", "abc"));
    }
}
