//! Content digests (`sha256:<hex>`), validated so they are safe in paths.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// The hash algorithms a digest may name. The registry verifies content with
/// either; sha256 is what every client sends in practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

impl DigestAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest such as `sha256:e3b0c442...`.
///
/// The encoded part is always lower-case hex of the algorithm's exact length, so
/// a digest can be used as a file name without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} has no algorithm prefix; expected the form sha256:<64 hex characters>")]
    MissingAlgorithm(String),
    #[error("digest algorithm {0:?} is not supported; use sha256 or sha512")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} is not lower-case hex of the algorithm's length")]
    InvalidEncoding(String),
}

impl Digest {
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The encoded (hex) part, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest {
            algorithm: DigestAlgorithm::Sha256,
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The digest of `bytes` computed with this digest's algorithm.
    pub fn same_algorithm_of(&self, bytes: &[u8]) -> Digest {
        match self.algorithm {
            DigestAlgorithm::Sha256 => Digest::sha256_of(bytes),
            DigestAlgorithm::Sha512 => Digest {
                algorithm: DigestAlgorithm::Sha512,
                hex: hex::encode(Sha512::digest(bytes)),
            },
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let Some((algorithm, encoded)) = input.split_once(':') else {
            return Err(DigestError::MissingAlgorithm(input.to_owned()));
        };
        let algorithm = match algorithm {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        let valid = encoded.len() == algorithm.hex_len()
            && encoded
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if !valid {
            return Err(DigestError::InvalidEncoding(input.to_owned()));
        }
        Ok(Digest {
            algorithm,
            hex: encoded.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental sha256 hasher, for content that arrives in pieces.
#[derive(Clone, Default)]
pub struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Digest {
        Digest {
            algorithm: DigestAlgorithm::Sha256,
            hex: hex::encode(self.0.finalize()),
        }
    }
}

/// An incremental hasher for either algorithm, chosen by the digest a client
/// announced.
#[derive(Clone)]
pub enum ContentHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl ContentHasher {
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => ContentHasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => ContentHasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            ContentHasher::Sha256(hasher) => hasher.update(bytes),
            ContentHasher::Sha512(hasher) => hasher.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            ContentHasher::Sha256(hasher) => Digest {
                algorithm: DigestAlgorithm::Sha256,
                hex: hex::encode(hasher.finalize()),
            },
            ContentHasher::Sha512(hasher) => Digest {
                algorithm: DigestAlgorithm::Sha512,
                hex: hex::encode(hasher.finalize()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_a_sha256_digest() {
        let digest: Digest = EMPTY.parse().unwrap();
        assert_eq!(digest.to_string(), EMPTY);
        assert_eq!(digest, Digest::sha256_of(b""));
    }

    #[test]
    fn rejects_malformed_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000000",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn incremental_hash_equals_one_shot_hash() {
        let mut hasher = ContentHasher::new(DigestAlgorithm::Sha256);
        hasher.update(b"hello ");
        hasher.update(b"world");
        assert_eq!(hasher.finish(), Digest::sha256_of(b"hello world"));
        let sha512: Digest = format!("sha512:{}", "0".repeat(128)).parse().unwrap();
        let mut hasher = ContentHasher::new(DigestAlgorithm::Sha512);
        hasher.update(b"abc");
        assert_eq!(hasher.finish(), sha512.same_algorithm_of(b"abc"));
    }
}
