//! The vocabulary of the OCI Distribution and Image specifications: digests,
//! repository names, references, media types, and the checks a registry runs on
//! a manifest before it stores it.
//!
//! This crate does no I/O and knows nothing of HTTP, databases or files. Every
//! value it hands out has been validated, so callers may put a [`Digest`] or a
//! [`RepositoryName`] into a path or a query without further checks.

pub mod convert;
pub mod digest;
pub mod manifest;
pub mod media_type;
pub mod name;
pub mod reference;

pub use digest::{ContentHasher, Digest, DigestAlgorithm, DigestError, Sha256Hasher};
pub use manifest::{Descriptor, ManifestError, ManifestKind, ParsedManifest, Platform};
pub use name::{NameError, RepositoryName};
pub use reference::{Reference, ReferenceError, Tag};
