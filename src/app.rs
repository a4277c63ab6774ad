//! Application state and the router, built the same way by `kai serve` and by
//! the tests.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use kai_meta::MetaStore;
use kai_storage::{BlobStore, FilesystemStore, ObjectBlobStore, S3Settings};

use crate::config::Config;
use crate::http;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub meta: MetaStore,
    pub blobs: Arc<dyn BlobStore>,
    pub upload_locks: Arc<http::v2::uploads::UploadLocks>,
    /// Token signing keys, cached from the database.
    pub keys: Arc<http::auth::KeyCache>,
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
        let blobs = open_blob_store(&config)?;
        let manifest_cache_bytes =
            usize::try_from(config.cache.manifest_bytes).unwrap_or(usize::MAX);
        let meta = MetaStore::open_for_serving(&config.database_url(), manifest_cache_bytes)
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
            blobs,
            upload_locks: Arc::default(),
            keys: Arc::default(),
        })
    }
}

/// The blob store that `storage` names: `file:///PATH`, `s3://BUCKET[/PREFIX]`,
/// `az://CONTAINER[/PREFIX]` or `gs://BUCKET[/PREFIX]`.
fn open_blob_store(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    let url = config.storage_url();
    if let Some(path) = url.strip_prefix("file://") {
        let store = FilesystemStore::open(path).with_context(|| {
            format!("cannot open blob storage in {path}; check --storage / KAI_STORAGE")
        })?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("s3://") {
        let s3 = &config.s3;
        let environment_allows_http =
            std::env::var("AWS_ALLOW_HTTP").is_ok_and(|value| value == "true");
        let settings = S3Settings {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            access_key_id: s3.access_key_id.clone(),
            secret_access_key: s3.secret_access_key.clone(),
            allow_http: s3.allow_http || environment_allows_http,
        };
        let store = ObjectBlobStore::s3(&url, &settings).map_err(anyhow::Error::msg)?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("az://") || url.starts_with("azure://") {
        let store = ObjectBlobStore::azure(&url).map_err(anyhow::Error::msg)?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("gs://") {
        let store = ObjectBlobStore::gcs(&url).map_err(anyhow::Error::msg)?;
        return Ok(Arc::new(store));
    }
    anyhow::bail!(
        "storage URL {url:?} is not supported; use file:///PATH, s3://BUCKET[/PREFIX], \
         az://CONTAINER[/PREFIX] or gs://BUCKET[/PREFIX]"
    )
}

/// The HTTP application for `state`.
pub fn router(state: AppState) -> Router {
    http::router(state)
}
