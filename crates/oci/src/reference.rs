//! Manifest references: a tag or a digest.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The longest tag the registry accepts.
pub const MAX_TAG_LENGTH: usize = 128;

/// A tag, matching `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bytes = input.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_TAG_LENGTH
            && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
            && bytes[1..]
                .iter()
                .all(|&byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'));
        if valid {
            Ok(Tag(input.to_owned()))
        } else {
            Err(ReferenceError::InvalidTag(
                input.chars().take(140).collect(),
            ))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// What follows `/manifests/` in a URL: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error(
        "tag {0:?} is invalid: use up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
    )]
    InvalidTag(String),
    #[error(transparent)]
    InvalidDigest(#[from] DigestError),
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        // A tag can never contain ':', so anything with one is meant as a digest.
        if input.contains(':') {
            Ok(Reference::Digest(input.parse()?))
        } else {
            Ok(Reference::Tag(input.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => tag.fmt(formatter),
            Reference::Digest(digest) => digest.fmt(formatter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_digests() {
        assert!(matches!("latest".parse(), Ok(Reference::Tag(_))));
        assert!(matches!("_v1.0-rc.1".parse(), Ok(Reference::Tag(_))));
        assert!(matches!(
            "sha256:abc".parse::<Reference>(),
            Err(ReferenceError::InvalidDigest(_))
        ));
        for bad in ["", ".hidden", "-x", "a/b", "a b", &"t".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?} should be rejected");
        }
        assert!("t".repeat(128).parse::<Tag>().is_ok());
    }
}
