//! Kai's integration tests: one binary (one link step) driving the real server
//! over real HTTP on an ephemeral port.
//!
//! - `common`: starting a registry in-process and small HTTP helpers.
//! - `api`: every endpoint's success path, headers and status codes.
//! - `bad_input`: the table of malformed requests, each with its OCI error code
//!   and a check that nothing stored changed.
//! - `negotiation`: manifest content negotiation for old and new clients.
//! - `content`: what real tools push (buildx attestations, BuildKit caches,
//!   artifacts with subjects and the referrers API).
//! - `oci_client`: the `oci-client` crate pushing and pulling a multi-arch image.
//! - `restart`: the `kai` binary killed and restarted on the same data.

mod api;
mod bad_input;
mod common;
mod content;
mod negotiation;
mod oci_client;
mod restart;
