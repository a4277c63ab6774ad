//! Blob storage on an object store (S3-compatible services, Azure Blob
//! Storage and Google Cloud Storage through the `object_store` crate, or
//! memory for tests).
//!
//! Layout under the configured prefix:
//! - `blobs/<algorithm>/<first two hex digits>/<hex>`: finished blobs.
//! - `uploads/<upload id>/started`: a marker written when the upload starts.
//! - `uploads/<upload id>/<offset, 20 digits>`: one object per acknowledged
//!   write, named by the offset it starts at.
//!
//! An object appears only when its upload completes, so a failed write leaves
//! nothing; a write that completed but was never acknowledged is replaced by
//! the next write at the same offset. Commit assembles the chain of chunk
//! objects from offset 0 to the acknowledged size, verifies the digest first,
//! and only then writes the blob's object.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kai_oci::{ContentHasher, Digest, DigestAlgorithm};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};

use crate::progress::HashProgress;
use crate::{
    BlobStore, ByteRange, ByteStream, PendingWrite, Result, StorageError, UploadId, Written,
};

/// Multipart part size: S3 needs at least 5 MiB for every part but the last.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight at once for one upload.
const PART_CONCURRENCY: usize = 2;

pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    /// Signs download URLs, where the service supports it (S3, Azure, GCS).
    signer: Option<Arc<dyn object_store::signer::Signer>>,
    prefix: Path,
    hash_progress: HashProgress,
    /// Whether a server-side copy is complete when the service answers. Azure
    /// may finish a Copy Blob later, and deleting the source then would lose
    /// the copy, so there a one-chunk upload is streamed like a multi-chunk one.
    copy_is_synchronous: bool,
}

/// Settings for an S3-compatible service. Empty fields fall back to the
/// standard `AWS_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub allow_http: bool,
}

/// Maps an object store error. `Generic` is what `object_store` reports once
/// its retries of a transport failure or a server error (5xx) are spent: the
/// service is down or overloaded, so the client should retry later. The other
/// kinds are definite answers (missing, denied, conflicting) and stay errors.
fn storage_error(error: object_store::Error) -> StorageError {
    match error {
        object_store::Error::Generic { .. } => StorageError::Unavailable(error.to_string()),
        error => StorageError::Io(io::Error::other(error)),
    }
}

/// How long a request to the object store is retried before the registry
/// answers 503: long enough to ride out a restart of the service, short
/// enough that the client's own retry takes over well before its timeout.
pub fn retry_policy() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: 5,
        retry_timeout: std::time::Duration::from_secs(15),
    }
}

/// One kind of storage URL: `SCHEME://BUCKET[/PREFIX]`.
struct UrlForm {
    /// The schemes accepted, with their `://`.
    schemes: &'static [&'static str],
    /// What the service calls the first component.
    bucket: &'static str,
    /// The form to suggest in errors.
    expected: &'static str,
}

const S3_URL: UrlForm = UrlForm {
    schemes: &["s3://"],
    bucket: "bucket",
    expected: "s3://BUCKET[/PREFIX]",
};

const AZURE_URL: UrlForm = UrlForm {
    schemes: &["az://", "azure://"],
    bucket: "container",
    expected: "az://CONTAINER[/PREFIX]",
};

const GCS_URL: UrlForm = UrlForm {
    schemes: &["gs://"],
    bucket: "bucket",
    expected: "gs://BUCKET[/PREFIX]",
};

/// What to set for Azure Blob Storage, for error messages.
const AZURE_VARIABLES: &str = "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY \
    (or AZURE_STORAGE_SAS_KEY, AZURE_STORAGE_TOKEN, or AZURE_CLIENT_ID, AZURE_CLIENT_SECRET \
    and AZURE_TENANT_ID of a service principal; with none of them, the managed identity of \
    the Azure VM is used), AZURE_STORAGE_ENDPOINT for an endpoint other than \
    https://ACCOUNT.blob.core.windows.net, or AZURE_STORAGE_USE_EMULATOR=true for Azurite";

/// What to set for Google Cloud Storage, for error messages.
const GCS_VARIABLES: &str = "GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT_PATH \
    to a service account key file, or GOOGLE_SERVICE_ACCOUNT_KEY to the key's JSON \
    (`gcloud auth application-default login` also works); on Google Compute Engine or GKE, \
    set GCE_METADATA_HOST=metadata.google.internal to use the instance's service account";

/// The variables that name Google Cloud credentials, or that opt in to the
/// metadata server of Compute Engine and GKE.
const GCS_CREDENTIAL_VARIABLES: &[&str] = &[
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "SERVICE_ACCOUNT",
    "GCE_METADATA_HOST",
    "GCE_METADATA_ROOT",
    "GCE_METADATA_IP",
];

/// Whether Google Cloud credentials are configured: a variable names them,
/// or `gcloud auth application-default login` left its file. Without any,
/// `object_store` would ask the Compute Engine metadata server at every
/// request, which outside Google Cloud fails slowly and obscurely; so that
/// server is used only when a `GCE_METADATA_*` variable asks for it.
fn gcs_credentials_configured(variable: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    let set = |name: &str| variable(name).is_some_and(|value| !value.is_empty());
    if GCS_CREDENTIAL_VARIABLES.iter().any(|name| set(name)) {
        return true;
    }
    variable("HOME").is_some_and(|home| {
        std::path::Path::new(&home)
            .join(".config/gcloud/application_default_credentials.json")
            .exists()
    })
}

/// Splits a storage URL into its bucket (or container) and its prefix.
fn split_storage_url<'a>(
    url: &'a str,
    form: &UrlForm,
) -> std::result::Result<(&'a str, &'a str), String> {
    let rest = form
        .schemes
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .ok_or_else(|| {
            format!(
                "storage URL {url:?} does not start with {}; use {}",
                form.schemes.join(" or "),
                form.expected
            )
        })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!(
            "storage URL {url:?} names no {}; use {}",
            form.bucket, form.expected
        ));
    }
    Ok((bucket, prefix))
}

impl ObjectBlobStore {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        ObjectBlobStore {
            store,
            signer: None,
            prefix: Path::from(prefix.trim_matches('/')),
            hash_progress: HashProgress::default(),
            copy_is_synchronous: true,
        }
    }

    /// A store in memory, for tests.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()), "")
    }

    /// Opens `s3://BUCKET[/PREFIX]`.
    pub fn s3(url: &str, settings: &S3Settings) -> std::result::Result<Self, String> {
        let (bucket, prefix) = split_storage_url(url, &S3_URL)?;
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        let from_environment =
            |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let endpoint = Some(settings.endpoint.clone())
            .filter(|value| !value.is_empty())
            .or_else(|| from_environment("AWS_ENDPOINT_URL"));
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if !settings.region.is_empty() {
            builder = builder.with_region(&settings.region);
        }
        if !settings.access_key_id.is_empty() {
            builder = builder.with_access_key_id(&settings.access_key_id);
        }
        if !settings.secret_access_key.is_empty() {
            builder = builder.with_secret_access_key(&settings.secret_access_key);
        }
        if settings.allow_http {
            builder = builder.with_allow_http(true);
        }
        builder = builder.with_retry(retry_policy());
        let store = builder.build().map_err(|error| {
            format!("cannot configure S3 storage for bucket {bucket:?}: {error}")
        })?;
        let store = Arc::new(store);
        let mut blob_store = Self::new(store.clone(), prefix);
        blob_store.signer = Some(store);
        Ok(blob_store)
    }

    /// Opens `az://CONTAINER[/PREFIX]` (or `azure://`) on Azure Blob Storage.
    /// The account, its credentials and the endpoint come from the standard
    /// `AZURE_STORAGE_*` variables; the container must exist.
    pub fn azure(url: &str) -> std::result::Result<Self, String> {
        let (container, prefix) = split_storage_url(url, &AZURE_URL)?;
        let store = object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_container_name(container)
            .with_retry(retry_policy())
            .build()
            .map_err(|error| {
                format!(
                    "cannot configure Azure Blob storage for {url:?}: {error}; set {AZURE_VARIABLES}"
                )
            })?;
        let store = Arc::new(store);
        let mut blob_store = Self::new(store.clone(), prefix);
        // Signing needs the account key or a token for a user delegation key;
        // with other credentials (a SAS) it fails when a URL is asked for.
        blob_store.signer = Some(store);
        blob_store.copy_is_synchronous = false;
        Ok(blob_store)
    }

    /// Opens `gs://BUCKET[/PREFIX]` on Google Cloud Storage, with the
    /// credentials that the standard `GOOGLE_*` variables name. Refused when
    /// none are configured (see `gcs_credentials_configured`).
    pub fn gcs(url: &str) -> std::result::Result<Self, String> {
        let (bucket, prefix) = split_storage_url(url, &GCS_URL)?;
        if !gcs_credentials_configured(|name| std::env::var_os(name)) {
            return Err(format!(
                "storage URL {url:?} needs Google Cloud credentials, and none are configured; \
                 set {GCS_VARIABLES}"
            ));
        }
        let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry_policy())
            .build()
            .map_err(|error| {
                format!(
                    "cannot configure Google Cloud Storage for {url:?}: {error}; set {GCS_VARIABLES}"
                )
            })?;
        let store = Arc::new(store);
        let mut blob_store = Self::new(store.clone(), prefix);
        blob_store.signer = Some(store);
        Ok(blob_store)
    }

    fn path(&self, relative: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in relative.split('/') {
            path = path.child(part);
        }
        path
    }

    fn blob_path(&self, digest: &Digest) -> Path {
        let hex = digest.hex();
        self.path(&format!(
            "blobs/{}/{}/{hex}",
            digest.algorithm().as_str(),
            &hex[..2]
        ))
    }

    fn upload_directory(&self, upload: &UploadId) -> Path {
        self.path(&format!("uploads/{upload}"))
    }

    fn chunk_path(&self, upload: &UploadId, offset: u64) -> Path {
        self.path(&format!("uploads/{upload}/{offset:020}"))
    }

    /// The chunk objects that form bytes `0..size` of the upload, in order.
    async fn chunk_chain(&self, upload: &UploadId, size: u64) -> Result<Vec<(Path, u64)>> {
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.upload_directory(upload)))
            .try_collect()
            .await
            .map_err(storage_error)?;
        if objects.is_empty() {
            return Err(StorageError::UploadUnknown);
        }
        let chunks: BTreeMap<u64, (Path, u64)> = objects
            .into_iter()
            .filter_map(|object| {
                let offset = object.location.filename()?.parse::<u64>().ok()?;
                Some((offset, (object.location, object.size)))
            })
            .collect();
        let mut chain = Vec::new();
        let mut position = 0;
        while position < size {
            match chunks.get(&position) {
                Some((path, length)) if *length > 0 && position + length <= size => {
                    chain.push((path.clone(), *length));
                    position += length;
                }
                _ => {
                    return Err(StorageError::UploadDataLost {
                        expected: size,
                        actual: position,
                    })
                }
            }
        }
        Ok(chain)
    }

    fn chain_stream(&self, chain: Vec<(Path, u64)>) -> ByteStream {
        let store = self.store.clone();
        futures::stream::iter(chain)
            .then(move |(path, _)| {
                let store = store.clone();
                async move {
                    let result = store.get(&path).await.map_err(io::Error::other)?;
                    Ok::<_, io::Error>(result.into_stream().map_err(io::Error::other))
                }
            })
            .try_flatten()
            .boxed()
    }

    async fn delete_prefix(&self, prefix: &Path) -> Result<()> {
        let locations = self
            .store
            .list(Some(prefix))
            .map_ok(|object| object.location)
            .boxed();
        self.store
            .delete_stream(locations)
            .try_collect::<Vec<_>>()
            .await
            .map_err(storage_error)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlobStore for ObjectBlobStore {
    async fn ping(&self) -> Result<()> {
        // Any answer, "not found" included, shows that the service is up and
        // accepts the credentials.
        match self.store.head(&self.path("readiness-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(storage_error(error)),
        }
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        match self.store.head(&self.blob_path(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(storage_error(error)),
        }
    }

    async fn read_blob(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<ByteStream>> {
        let options = GetOptions {
            range: range.map(|range| GetRange::Bounded(range.start..range.end + 1)),
            ..GetOptions::default()
        };
        match self.store.get_opts(&self.blob_path(digest), options).await {
            Ok(result) => Ok(Some(result.into_stream().map_err(io::Error::other).boxed())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(storage_error(error)),
        }
    }

    async fn download_url(
        &self,
        digest: &Digest,
        valid_for: std::time::Duration,
    ) -> Result<Option<String>> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(http::Method::GET, &self.blob_path(digest), valid_for)
            .await
            .map_err(storage_error)?;
        Ok(Some(url.to_string()))
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<()> {
        match self.store.delete(&self.blob_path(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(storage_error(error)),
        }
    }

    async fn start_upload(&self, upload: &UploadId) -> Result<()> {
        self.store
            .put(
                &self.path(&format!("uploads/{upload}/started")),
                Vec::new().into(),
            )
            .await
            .map_err(storage_error)?;
        Ok(())
    }

    async fn write_upload(
        &self,
        upload: &UploadId,
        offset: u64,
        mut data: ByteStream,
        limit: Option<u64>,
    ) -> Result<PendingWrite> {
        let mut hasher = self.hash_progress.take(upload, offset);
        let multipart = self
            .store
            .put_multipart(&self.chunk_path(upload, offset))
            .await
            .map_err(storage_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(multipart, PART_SIZE);
        let mut written = 0u64;
        let mut failure = None;
        while let Some(item) = data.next().await {
            match item {
                Ok(chunk) => {
                    written += chunk.len() as u64;
                    if limit.is_some_and(|limit| written > limit) {
                        failure = Some(StorageError::TooLarge {
                            limit: limit.unwrap_or_default(),
                        });
                        break;
                    }
                    if let Some(hasher) = hasher.as_mut() {
                        hasher.update(&chunk);
                    }
                    if let Err(error) = writer.wait_for_capacity(PART_CONCURRENCY).await {
                        failure = Some(storage_error(error));
                        break;
                    }
                    writer.put(chunk);
                }
                Err(error) => {
                    failure = Some(StorageError::Body(error.to_string()));
                    break;
                }
            }
        }
        if let Some(failure) = failure {
            // Nothing becomes visible: the multipart upload is abandoned.
            let _ = writer.abort().await;
            return Err(failure);
        }
        if written == 0 {
            let _ = writer.abort().await;
            return Ok(PendingWrite::durable_now(Written {
                bytes: 0,
                size: offset,
            }));
        }
        // A chunk object exists only once complete and stored.
        writer.finish().await.map_err(storage_error)?;
        Ok(PendingWrite::durable_now(
            self.hash_progress.wrote(upload, offset, written, hasher),
        ))
    }

    async fn commit_upload(&self, upload: &UploadId, size: u64, expected: &Digest) -> Result<()> {
        let progress = self
            .hash_progress
            .take(upload, size)
            .filter(|_| expected.algorithm() == DigestAlgorithm::Sha256);
        let chain = self.chunk_chain(upload, size).await?;
        let actual = match progress {
            Some(hasher) => hasher.finish(),
            None => {
                let mut hasher = ContentHasher::new(expected.algorithm());
                let mut stream = self.chain_stream(chain.clone());
                while let Some(chunk) = stream.next().await {
                    hasher.update(&chunk?);
                }
                hasher.finish()
            }
        };
        if &actual != expected {
            self.cancel_upload(upload).await?;
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let target = self.blob_path(expected);
        if self.blob_size(expected).await?.is_none() {
            match chain.as_slice() {
                [] => {
                    self.store
                        .put(&target, Vec::new().into())
                        .await
                        .map_err(storage_error)?;
                }
                [(only, _)] if self.copy_is_synchronous => {
                    self.store
                        .copy(only, &target)
                        .await
                        .map_err(storage_error)?;
                }
                _ => {
                    let multipart = self
                        .store
                        .put_multipart(&target)
                        .await
                        .map_err(storage_error)?;
                    let mut writer = WriteMultipart::new_with_chunk_size(multipart, PART_SIZE);
                    let mut stream = self.chain_stream(chain);
                    while let Some(chunk) = stream.next().await {
                        let chunk = match chunk {
                            Ok(chunk) => chunk,
                            Err(error) => {
                                let _ = writer.abort().await;
                                return Err(error.into());
                            }
                        };
                        writer
                            .wait_for_capacity(PART_CONCURRENCY)
                            .await
                            .map_err(storage_error)?;
                        writer.put(chunk);
                    }
                    writer.finish().await.map_err(storage_error)?;
                }
            }
        }
        self.cancel_upload(upload).await
    }

    async fn read_upload(&self, upload: &UploadId, size: u64) -> Result<Vec<u8>> {
        let chain = self.chunk_chain(upload, size).await?;
        let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or_default());
        let mut pieces = self.chain_stream(chain);
        while let Some(piece) = pieces.next().await {
            content.extend_from_slice(&piece?);
        }
        Ok(content)
    }

    async fn cancel_upload(&self, upload: &UploadId) -> Result<()> {
        self.hash_progress.forget(upload);
        self.delete_prefix(&self.upload_directory(upload)).await
    }

    async fn list_blobs(&self) -> Result<Vec<Digest>> {
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.path("blobs")))
            .try_collect()
            .await
            .map_err(storage_error)?;
        let mut digests: Vec<Digest> = objects
            .iter()
            .filter_map(|object| {
                let parts: Vec<&str> = object.location.as_ref().rsplitn(3, '/').collect();
                // The last three components are <algorithm>/<shard>/<hex>.
                let hex = parts.first()?;
                let algorithm = parts.get(2)?.rsplit('/').next()?;
                format!("{algorithm}:{hex}").parse().ok()
            })
            .collect();
        digests.sort();
        Ok(digests)
    }

    async fn list_uploads(&self) -> Result<Vec<UploadId>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.path("uploads")))
            .await
            .map_err(storage_error)?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|prefix| prefix.filename()?.parse().ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_suite() {
        let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        crate::suite::run(move || Box::new(ObjectBlobStore::new(memory.clone(), "some/prefix")))
            .await;
    }

    #[test]
    fn storage_urls_split_into_bucket_and_prefix() {
        let split = |url, form| split_storage_url(url, form).unwrap();
        assert_eq!(split("s3://bucket", &S3_URL), ("bucket", ""));
        assert_eq!(split("s3://bucket/a/b", &S3_URL), ("bucket", "a/b"));
        assert_eq!(
            split("az://container/prefix", &AZURE_URL),
            ("container", "prefix")
        );
        assert_eq!(split("azure://container/", &AZURE_URL), ("container", ""));
        assert_eq!(
            split("gs://bucket/registry", &GCS_URL),
            ("bucket", "registry")
        );

        let error = split_storage_url("gs:///registry", &GCS_URL).unwrap_err();
        assert_eq!(
            error,
            r#"storage URL "gs:///registry" names no bucket; use gs://BUCKET[/PREFIX]"#
        );
        let error = ObjectBlobStore::azure("az://").err().unwrap();
        assert_eq!(
            error,
            r#"storage URL "az://" names no container; use az://CONTAINER[/PREFIX]"#
        );
        let error = split_storage_url("s3:/bucket", &S3_URL).unwrap_err();
        assert_eq!(
            error,
            r#"storage URL "s3:/bucket" does not start with s3://; use s3://BUCKET[/PREFIX]"#
        );
        let error = split_storage_url("abfs://container", &AZURE_URL).unwrap_err();
        assert!(error.contains("az:// or azure://"), "{error}");
    }

    #[test]
    fn gcs_credentials_come_from_variables_or_the_gcloud_file() {
        let home = tempfile::tempdir().unwrap();
        let environment = |pairs: Vec<(&'static str, std::ffi::OsString)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.clone())
            }
        };
        let home_only = vec![("HOME", home.path().as_os_str().to_owned())];
        assert!(!gcs_credentials_configured(environment(home_only.clone())));
        assert!(!gcs_credentials_configured(environment(vec![(
            "GOOGLE_APPLICATION_CREDENTIALS",
            "".into()
        )])));
        for name in GCS_CREDENTIAL_VARIABLES {
            assert!(gcs_credentials_configured(environment(vec![(
                name,
                "/etc/key.json".into()
            )])));
        }
        let gcloud = home.path().join(".config/gcloud");
        std::fs::create_dir_all(&gcloud).unwrap();
        std::fs::write(gcloud.join("application_default_credentials.json"), "{}").unwrap();
        assert!(gcs_credentials_configured(environment(home_only)));
    }

    /// Without credentials, `gs://` is refused when the store is opened, not
    /// at the first request (which would go to the Compute Engine metadata
    /// server). Runs where this process has no Google Cloud credentials.
    #[test]
    fn gcs_without_credentials_names_the_url_and_the_variables() {
        if gcs_credentials_configured(|name| std::env::var_os(name)) {
            eprintln!("skipped: this environment has Google Cloud credentials");
            return;
        }
        let error = ObjectBlobStore::gcs("gs://registry-bucket/kai")
            .err()
            .expect("gs:// without credentials is refused");
        assert!(error.contains(r#""gs://registry-bucket/kai""#), "{error}");
        for variable in [
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            "GCE_METADATA_HOST",
        ] {
            assert!(error.contains(variable), "{error}");
        }
    }

    /// Without an account, `az://` names the URL and the variables to set.
    /// Runs where no Azure account is configured (not under Azurite).
    #[test]
    fn azure_without_an_account_names_the_url_and_the_variables() {
        let configured = ["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_USE_EMULATOR"]
            .iter()
            .any(|name| std::env::var_os(name).is_some());
        if configured {
            eprintln!("skipped: this environment configures an Azure account");
            return;
        }
        let error = ObjectBlobStore::azure("azure://container/kai")
            .err()
            .expect("az:// without an account is refused");
        assert!(error.contains(r#""azure://container/kai""#), "{error}");
        assert!(error.contains("AZURE_STORAGE_ACCOUNT_NAME"), "{error}");
        assert!(error.contains("AZURE_STORAGE_ACCOUNT_KEY"), "{error}");
    }
}

/// The shared suite against a real Azure Blob service: Azurite, which
/// `scripts/backends.sh` starts and names in `KAI_TEST_AZURE_CONTAINER` (with
/// the `AZURE_STORAGE_*` variables). Without it the test says why it skips;
/// under `CI=true` it fails instead.
#[cfg(test)]
mod azure {
    use super::*;

    fn test_container() -> Option<String> {
        let container = std::env::var("KAI_TEST_AZURE_CONTAINER").ok();
        if container.is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but KAI_TEST_AZURE_CONTAINER is not set: run the tests through scripts/test"
            );
            eprintln!(
                "skipped: needs Azurite (source scripts/backends.sh and run backends_start_azurite)"
            );
        }
        container
    }

    /// A fresh prefix in the test container, so runs never see each other's blobs.
    fn fresh_url(container: &str) -> String {
        format!(
            "az://{container}/kai-storage-test-{}",
            uuid::Uuid::new_v4().simple()
        )
    }

    #[tokio::test]
    async fn shared_suite() {
        let Some(container) = test_container() else {
            return;
        };
        let url = fresh_url(&container);
        crate::suite::run(move || Box::new(ObjectBlobStore::azure(&url).unwrap())).await;
    }

    #[tokio::test]
    async fn download_urls_are_signed() {
        let Some(container) = test_container() else {
            return;
        };
        let store = ObjectBlobStore::azure(&fresh_url(&container)).unwrap();
        let digest = Digest::sha256_of(b"signed");
        let url = store
            .download_url(&digest, std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .expect("Azure signs download URLs");
        assert!(url.contains(digest.hex()), "{url}");
        assert!(url.contains("sig="), "{url}");
    }
}
