//! Application state and the router, built the same way by `kai serve` and by
//! the tests.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use kai_meta::MetaStore;
use kai_storage::{BlobStore, FilesystemStore};

use crate::config::Config;
use crate::http;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub meta: MetaStore,
    pub blobs: Arc<dyn BlobStore>,
    pub upload_locks: Arc<http::v2::uploads::UploadLocks>,
}

impl AppState {
    /// Opens storage and metadata as configured, creating the data directory.
    pub async fn open(config: Config) -> anyhow::Result<AppState> {
        std::fs::create_dir_all(&config.data).with_context(|| {
            format!(
                "cannot create the data directory {}; choose another with --data or KAI_DATA",
                config.data.display()
            )
        })?;
        let blobs = FilesystemStore::open(&config.data)
            .with_context(|| format!("cannot open blob storage in {}", config.data.display()))?;
        let meta = MetaStore::open(&config.database_url())
            .await
            .with_context(|| {
                format!(
                    "cannot open the metadata database {}",
                    config.database_url()
                )
            })?;
        Ok(AppState {
            config: Arc::new(config),
            meta,
            blobs: Arc::new(blobs),
            upload_locks: Arc::default(),
        })
    }
}

/// The HTTP application for `state`.
pub fn router(state: AppState) -> Router {
    http::router(state)
}
