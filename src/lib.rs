//! Kai: a self-hosted OCI container registry. The binary's library: the CLI,
//! configuration, application state and HTTP layer. See ARCHITECTURE.md.

pub mod accounts;
pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod memory;
pub mod passwords;
pub mod server;
pub mod tls;
