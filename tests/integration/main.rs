//! Kai's integration tests: one binary (one link step) driving the real server
//! over real HTTP on an ephemeral port.
//!
//! - `common`: starting a registry in-process and small HTTP helpers.
//! - `api`: every endpoint's success path, headers and status codes.
//! - `auth`: accounts and access with authorization on (the others run with
//!   it off): the token flow, permissions, throttling, upload ownership, the
//!   filtered catalog, the REST API and OpenAPI document, the audit log, the
//!   CLI and `oci-client` with Basic credentials.
//! - `azure`: blobs and images on Azure Blob Storage (Azurite; runs when
//!   scripts/test started it).
//! - `bad_input`: the table of malformed requests, each with its OCI error code
//!   and a check that nothing stored changed.
//! - `negotiation`: manifest content negotiation for old and new clients.
//! - `content`: what real tools push (buildx attestations, BuildKit caches,
//!   artifacts with subjects and the referrers API).
//! - `oci_client`: the `oci-client` crate pushing and pulling a multi-arch image.
//! - `outage`: PostgreSQL or S3 stopped during pushes: clean 503s, nothing
//!   half-visible, recovery without a restart (runs with the scale-out
//!   backends).
//! - `replicas`: two servers on one PostgreSQL database and S3 bucket (runs
//!   when scripts/test started those backends).
//! - `restart`: the `kai` binary killed and restarted on the same data.
//! - `tls`: HTTPS (auto CA, files, reload) with reqwest, curl and skopeo; `kai ca`, `kai setup`, `kai doctor`.

mod api;
mod auth;
mod azure;
mod bad_input;
mod common;
mod content;
mod negotiation;
mod oci_client;
mod outage;
mod replicas;
mod restart;
mod tls;
