//! Who may do what, without any I/O: password hashes (argon2id), generated
//! tokens (stored as SHA-256 digests), the registry's JSON Web Tokens (EdDSA),
//! Docker token scopes and their intersection with what a caller is
//! permitted, and the permission rules over users, organisations, teams and
//! robots.
//!
//! This crate knows nothing of HTTP or databases: the application loads the
//! facts (an account's teams, a repository's grants and visibility) and asks
//! [`policy`] what they allow.

pub mod jwt;
pub mod names;
pub mod password;
pub mod policy;
pub mod scope;
pub mod secret;

pub use jwt::{Claims, JwtError, SigningKey};
pub use policy::{AccountKind, Caller, RepositoryFacts, Role, TeamRole};
pub use scope::{Access, Action, Scope};
