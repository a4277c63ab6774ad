//! A registry started in-process on `127.0.0.1:0`, and helpers that speak the
//! distribution API with reqwest.

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
        // These tests speak the API without credentials; tests/integration/auth.rs
        // turns authorization back on.
        config.auth.enabled = false;
        use_test_backends(&mut config).await;
        change(&mut config);

        let server = RunningServer::start(config).await.expect("registry starts");
        TestRegistry {
            base: format!("http://{}", server.address),
            client: reqwest::Client::new(),
            server: Some(server),
            _directory: Some(directory),
        }
    }

    /// Starts another server on this registry's database and storage, as a
    /// second replica behind a load balancer would run.
    pub async fn start_replica(&self) -> TestRegistry {
        let mut config = (*self.state().config).clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        let server = RunningServer::start(config).await.expect("replica starts");
        TestRegistry {
            base: format!("http://{}", server.address),
            client: reqwest::Client::new(),
            server: Some(server),
            _directory: None,
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

    /// Starts an upload session in `name`. Returns its `Location`.
    pub async fn start_upload(&self, name: &str) -> String {
        let response = self
            .request(Method::POST, &format!("/v2/{name}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        header(&response, "location")
    }

    /// Appends a chunk at `start`, asserting the registry acknowledged it.
    /// Returns the upload's `Location`.
    pub async fn patch_chunk(&self, location: &str, start: usize, bytes: &[u8]) -> String {
        let response = self
            .request(Method::PATCH, location)
            .header(
                "content-range",
                format!("{start}-{}", start + bytes.len() - 1),
            )
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "{}",
            response.text().await.unwrap()
        );
        assert_eq!(
            header(&response, "range"),
            format!("0-{}", start + bytes.len() - 1)
        );
        header(&response, "location")
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

    /// The running server's state: its blob store and metadata.
    pub fn state(&self) -> &kai::app::AppState {
        &self.server.as_ref().expect("registry is running").state
    }

    /// Uploads with staged data in the blob store.
    pub async fn staged_uploads(&self) -> u64 {
        self.state()
            .blobs
            .list_uploads()
            .await
            .expect("uploads list")
            .len() as u64
    }

    /// Counts what the registry stores: manifests, tags, blob links, stored
    /// blobs and uploads, for "nothing changed" checks. Works on every backend.
    pub async fn stored(&self) -> Stored {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&self.state().config.database_url())
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
            stored_blobs: self
                .state()
                .blobs
                .list_blobs()
                .await
                .expect("blob list")
                .len() as u64
                + count("blob_contents").await,
        }
    }
}

/// With `[s3] redirect` on: a blob GET answers 307 to a signed URL of the
/// object store (its query names `signature_marker`), following it yields the
/// bytes, and a ranged GET is served by Kai itself. So is a blob small enough
/// to be kept in the database, which has no object to point to.
pub async fn blob_get_redirects_to_signed_url(
    registry: &TestRegistry,
    name: &str,
    signature_marker: &str,
) {
    // Larger than `uploads.inline_max_bytes`: stored as an object.
    let bytes = b"served straight from the object store".repeat(2000);
    let digest = registry.push_blob(name, &bytes).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let path = format!("/v2/{name}/blobs/{digest}");
    let response = client.get(registry.url(&path)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(header(&response, "docker-content-digest"), digest);
    let location = header(&response, "location");
    assert!(location.contains(signature_marker), "{location}");
    // Following the redirect, as clients do, yields the blob.
    let followed = registry.get(&path).await;
    assert_eq!(followed.status(), StatusCode::OK);
    assert_eq!(followed.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // Ranges are served by Kai itself.
    assert_ranged_get(registry, &path, &bytes, 0, 5).await;

    let small = b"kept in the database".to_vec();
    let small_digest = registry.push_blob(name, &small).await;
    let path = format!("/v2/{name}/blobs/{small_digest}");
    let response = client.get(registry.url(&path)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), small.as_slice());
}

/// `GET path` with `Range: bytes=start-end` answers 206 with the matching
/// `Content-Range` and exactly those bytes of `blob`.
pub async fn assert_ranged_get(
    registry: &TestRegistry,
    path: &str,
    blob: &[u8],
    start: usize,
    end: usize,
) {
    let ranged = registry
        .request(Method::GET, path)
        .header("range", format!("bytes={start}-{end}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&ranged, "content-range"),
        format!("bytes {start}-{end}/{}", blob.len())
    );
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), &blob[start..=end]);
}

/// Whether the scale-out backends (PostgreSQL and S3) are configured. Without
/// them, tests that need them print why they skip; under CI they must be there.
pub fn scale_out_backends() -> bool {
    let present =
        std::env::var("KAI_TEST_POSTGRES").is_ok() && std::env::var("KAI_TEST_S3_BUCKET").is_ok();
    if !present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but KAI_TEST_POSTGRES / KAI_TEST_S3_BUCKET are not set: run the tests through scripts/test"
        );
        eprintln!("skipped: needs PostgreSQL and S3 (scripts/test starts them; or source scripts/backends.sh and run backends_start)");
    }
    present
}

/// With `KAI_TEST_POSTGRES` (a server URL without a database, e.g.
/// `postgres://kai@127.0.0.1:55432`), each registry gets a fresh PostgreSQL
/// database; with `KAI_TEST_S3_BUCKET` (and the `AWS_*` variables), a fresh
/// prefix in that bucket. Without them: SQLite and files in the data directory.
pub async fn use_test_backends(config: &mut Config) {
    let unique = format!("kai_test_{}", uuid::Uuid::new_v4().simple());
    if let Ok(server) = std::env::var("KAI_TEST_POSTGRES") {
        use sqlx::{Connection, Executor};
        sqlx::any::install_default_drivers();
        let server = server.trim_end_matches('/');
        let mut connection = sqlx::AnyConnection::connect(&format!("{server}/postgres"))
            .await
            .expect("the test PostgreSQL server answers");
        connection
            .execute(format!("CREATE DATABASE {unique}").as_str())
            .await
            .expect("test database created");
        config.database = format!("{server}/{unique}");
    }
    if let Ok(bucket) = std::env::var("KAI_TEST_S3_BUCKET") {
        config.storage = format!("s3://{bucket}/{unique}");
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub manifests: u64,
    pub tags: u64,
    pub blob_links: u64,
    pub uploads: u64,
    /// Blobs whose bytes are stored: files or objects in the blob store, and
    /// small blobs in the database.
    pub stored_blobs: u64,
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
