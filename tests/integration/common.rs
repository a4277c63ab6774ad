//! A registry started in-process on `127.0.0.1:0`, and helpers that speak the
//! distribution API with reqwest.

use std::path::PathBuf;

use kai::config::Config;
use kai::server::RunningServer;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub struct TestRegistry {
    pub base: String,
    pub client: reqwest::Client,
    pub data: PathBuf,
    server: Option<RunningServer>,
    _directory: Option<tempfile::TempDir>,
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        Self::start_with(|_| {}).await
    }

    /// Starts a registry on a fresh data directory, with the test's changes to
    /// the default configuration.
    pub async fn start_with(change: impl FnOnce(&mut Config)) -> TestRegistry {
        let directory = tempfile::tempdir().expect("temporary directory");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data: directory.path().to_path_buf(),
            ..Config::default()
        };
        change(&mut config);
        let data = config.data.clone();
        let server = RunningServer::start(config).await.expect("registry starts");
        TestRegistry {
            base: format!("http://{}", server.address),
            client: reqwest::Client::new(),
            data,
            server: Some(server),
            _directory: Some(directory),
        }
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("registry stops cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path)
            .send()
            .await
            .expect("request sent")
    }

    /// Pushes a blob monolithically and returns its digest.
    pub async fn push_blob(&self, name: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let response = self
            .request(
                Method::POST,
                &format!("/v2/{name}/blobs/uploads/?digest={digest}"),
            )
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap()
        );
        digest
    }

    pub async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.request(Method::PUT, &format!("/v2/{name}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Pushes a config and one layer, then an OCI image manifest naming them
    /// under `reference`. Returns the manifest bytes and digest.
    pub async fn push_image(&self, name: &str, reference: &str, layer: &[u8]) -> (Vec<u8>, String) {
        let config = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}});
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = image_manifest(
            (&self.push_blob(name, &config).await, config.len()),
            &[(&self.push_blob(name, layer).await, layer.len())],
        );
        let response = self
            .put_manifest(name, reference, OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap()
        );
        let digest = sha256(&manifest);
        (manifest, digest)
    }

    /// Counts what the registry stores: manifests, tags, blob links, blob
    /// files and uploads, for "nothing changed" checks.
    pub async fn stored(&self) -> Stored {
        use sqlx::Connection;
        let url = format!("sqlite://{}?mode=ro", self.data.join("kai.db").display());
        let mut connection = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("database opens");
        let mut count = async |table: &str| -> u64 {
            let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&mut connection)
                .await
                .expect("count query");
            count as u64
        };
        Stored {
            manifests: count("manifests").await,
            tags: count("tags").await,
            blob_links: count("repository_blobs").await,
            uploads: count("uploads").await,
            blob_files: count_files(&self.data.join("blobs")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub manifests: u64,
    pub tags: u64,
    pub blob_links: u64,
    pub uploads: u64,
    pub blob_files: u64,
}

pub fn count_files(directory: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            if entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
                count_files(&entry.path())
            } else {
                1
            }
        })
        .sum()
}

/// An OCI image manifest with the given config and layers.
pub fn image_manifest(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|(digest, size)| json!({"mediaType": OCI_LAYER, "digest": digest, "size": size}))
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.0, "size": config.1},
        "layers": layers,
    }))
    .unwrap()
}

/// The first OCI error code in a response body.
pub async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.expect("error body is JSON");
    body["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default()
}
