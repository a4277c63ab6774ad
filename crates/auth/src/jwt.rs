//! The registry's bearer tokens: compact JSON Web Tokens (RFC 7519) signed with
//! Ed25519 (`alg: EdDSA`, RFC 8037), written and checked here without a JWT
//! library: base64url(header) . base64url(claims) . base64url(signature).
//!
//! The header names the signing key (`kid`), so keys can rotate: a token
//! verifies with whichever stored key signed it, as long as it has not expired.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};

use crate::scope::Access;

/// The algorithm name stored beside each key and written in token headers.
pub const ALGORITHM: &str = "EdDSA";

/// Tokens larger than this are refused before any parsing.
const MAX_TOKEN_LENGTH: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token uses an unsupported algorithm")]
    Algorithm,
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued for another service")]
    Audience,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    pub kid: Option<String>,
}

/// What a token says: who (`sub`, empty for anonymous), for which service
/// (`aud`), until when (`exp`, unix seconds), and the granted `access`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Access>,
}

/// An Ed25519 signing key with its identifier. Only the 32-byte seed is stored.
#[derive(Clone)]
pub struct SigningKey {
    pub id: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key with a random identifier.
    pub fn generate() -> SigningKey {
        SigningKey::from_seed(
            crate::secret::generate_id(),
            &crate::secret::random_bytes::<32>(),
        )
        .expect("32 bytes are a valid seed")
    }

    /// The key stored as `seed` (32 bytes). `None` if it is not 32 bytes long.
    pub fn from_seed(id: String, seed: &[u8]) -> Option<SigningKey> {
        let seed: [u8; 32] = seed.try_into().ok()?;
        Some(SigningKey {
            id,
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// The 32-byte seed, for storing the key.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: ALGORITHM.into(),
            typ: Some("JWT".into()),
            kid: Some(self.id.clone()),
        };
        let header =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serialises"));
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let signing_input = format!("{header}.{claims}");
        let signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }

    /// Verifies a token signed by this key, as [`verify`] does.
    pub fn verify(&self, token: &str, audience: &str, now: i64) -> Result<Claims, JwtError> {
        verify(token, audience, now, |kid| {
            (kid == self.id).then(|| self.clone())
        })
    }
}

/// The key id a token's header names, read without verifying anything, so the
/// caller can look the key up.
pub fn key_id(token: &str) -> Result<String, JwtError> {
    let header = token.split('.').next().ok_or(JwtError::Malformed)?;
    let header: Header = decode_part(header)?;
    header.kid.ok_or(JwtError::UnknownKey)
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// Verifies `token`: the signature with the key `key` returns for the header's
/// `kid`, then that it is meant for `audience` and valid at `now` (unix
/// seconds; a few seconds of clock skew between replicas are tolerated for
/// `nbf`, none for `exp`).
pub fn verify(
    token: &str,
    audience: &str,
    now: i64,
    key: impl FnOnce(&str) -> Option<SigningKey>,
) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN_LENGTH {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header_part), Some(claims_part), Some(signature_part), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Header = decode_part(header_part)?;
    if header.alg != ALGORITHM {
        return Err(JwtError::Algorithm);
    }
    let kid = header.kid.ok_or(JwtError::UnknownKey)?;
    let key = key(&kid).ok_or(JwtError::UnknownKey)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_part)
        .map_err(|_| JwtError::Malformed)?;
    let signature =
        ed25519_dalek::Signature::from_slice(&signature).map_err(|_| JwtError::Malformed)?;
    let signing_input = &token[..header_part.len() + 1 + claims_part.len()];
    key.key
        .verifying_key()
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| JwtError::Signature)?;
    let claims: Claims = decode_part(claims_part)?;
    if !crate::secret::equal(&claims.aud, audience) {
        return Err(JwtError::Audience);
    }
    if now >= claims.exp {
        return Err(JwtError::Expired);
    }
    const SKEW: i64 = 30;
    if claims.nbf > now + SKEW {
        return Err(JwtError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: "kai".into(),
            sub: "alice".into(),
            aud: "kai".into(),
            exp,
            nbf: 1000,
            iat: 1000,
            jti: "x".into(),
            access: vec![Access {
                resource_type: "repository".into(),
                name: "alice/app".into(),
                actions: vec!["pull".into()],
            }],
        }
    }

    #[test]
    fn signed_tokens_verify_and_tampering_is_caught() {
        let key = SigningKey::generate();
        let token = key.sign(&claims(2000));
        assert_eq!(key_id(&token).unwrap(), key.id);
        assert_eq!(key.verify(&token, "kai", 1500).unwrap(), claims(2000));
        assert_eq!(key.verify(&token, "kai", 2000), Err(JwtError::Expired));
        assert_eq!(key.verify(&token, "other", 1500), Err(JwtError::Audience));
        assert_eq!(key.verify(&token, "kai", 980).unwrap().sub, "alice");
        assert_eq!(key.verify(&token, "kai", 500), Err(JwtError::NotYetValid));

        // Another key, even with the same id, does not verify it.
        let other = SigningKey::from_seed(key.id.clone(), &[7u8; 32]).unwrap();
        assert_eq!(other.verify(&token, "kai", 1500), Err(JwtError::Signature));

        // Widening the claims breaks the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let mut widened = claims(2000);
        widened.access[0].actions.push("push".into());
        let widened = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&widened).unwrap());
        let forged = format!("{}.{}.{}", parts[0], widened, parts[2]);
        assert_eq!(key.verify(&forged, "kai", 1500), Err(JwtError::Signature));

        // alg none and garbage are refused.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"x"}"#);
        let unsigned = format!("{none}.{}.", parts[1]);
        assert_eq!(key.verify(&unsigned, "kai", 1500), Err(JwtError::Algorithm));
        assert_eq!(key.verify("a.b", "kai", 1500), Err(JwtError::Malformed));
        assert_eq!(key.verify("", "kai", 1500), Err(JwtError::Malformed));
    }

    #[test]
    fn keys_round_trip_through_their_seed() {
        let key = SigningKey::generate();
        let stored = SigningKey::from_seed(key.id.clone(), &key.seed()).unwrap();
        let token = key.sign(&claims(2000));
        assert!(stored.verify(&token, "kai", 1500).is_ok());
        assert!(SigningKey::from_seed("x".into(), &[1, 2, 3]).is_none());
    }
}
