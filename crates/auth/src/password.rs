//! Password hashes: argon2id in the PHC string format
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), which records its own
//! parameters, so stronger parameters later still verify old hashes.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is empty")]
    Empty,
    #[error("the password is longer than {MAX_PASSWORD_LENGTH} bytes")]
    TooLong,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Longer passwords are refused, so a request cannot make the server hash megabytes.
pub const MAX_PASSWORD_LENGTH: usize = 1024;

/// Hashes `password` with argon2id and a fresh random salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.len() > MAX_PASSWORD_LENGTH {
        return Err(PasswordError::TooLong);
    }
    let salt = SaltString::encode_b64(&crate::secret::random_bytes::<16>())
        .map_err(|error| PasswordError::Hash(error.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| PasswordError::Hash(error.to_string()))
}

/// Whether `password` matches the PHC string `hash`. The comparison inside
/// argon2 is constant-time. A malformed hash never matches.
pub fn verify(password: &str, hash: &str) -> bool {
    if password.is_empty() || password.len() > MAX_PASSWORD_LENGTH {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A hash of a random password, for spending the same time on an unknown
/// account as on a known one, so response times do not tell which names exist.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash(&crate::secret::generate_token("decoy")).unwrap_or_else(|_| String::from("$invalid"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password() {
        let hashed = hash("correct horse").unwrap();
        assert!(hashed.starts_with("$argon2id$"), "{hashed}");
        assert!(verify("correct horse", &hashed));
        assert!(!verify("correct horsf", &hashed));
        assert!(!verify("", &hashed));
        assert!(!verify("correct horse", "not a hash"));
        assert_ne!(hash("correct horse").unwrap(), hashed, "salted");
        assert!(matches!(hash(""), Err(PasswordError::Empty)));
        assert!(matches!(
            hash(&"x".repeat(MAX_PASSWORD_LENGTH + 1)),
            Err(PasswordError::TooLong)
        ));
    }
}
