//! Content-addressed blob storage.
//!
//! A [`BlobStore`] knows digests and upload identifiers, never repositories or
//! tags: which repository may see which blob is the metadata store's business.
//! Upload data is staged apart from finished blobs, and a blob becomes readable
//! only once its bytes are on disk and their digest verified.
//!
//! The embedded default is [`FilesystemStore`]. Other backends implement the
//! same trait and run the same shared test suite.

mod filesystem;
mod object;
mod progress;
mod staged_file;
#[cfg(test)]
mod suite;

use std::fmt;
use std::io;
use std::str::FromStr;

use bytes::Bytes;
use futures::stream::BoxStream;
use kai_oci::Digest;

pub use filesystem::FilesystemStore;
pub use object::{ObjectBlobStore, S3Settings};

/// A stream of blob bytes, read from storage or received from a client.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// The identifier of an upload session: a UUID, so it is safe in a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    pub fn generate() -> Self {
        UploadId(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UploadId {
    type Err = uuid::Error;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let parsed = uuid::Uuid::parse_str(input)?;
        // Only the canonical hyphenated lower-case form names an upload.
        if parsed.hyphenated().to_string() != input {
            return Err(uuid::Uuid::parse_str("not-a-uuid").unwrap_err());
        }
        Ok(UploadId(input.to_owned()))
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// An inclusive byte range within a blob, already checked against its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    /// The last byte, inclusive.
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the upload has no staged data (it expired, was cancelled or finished)")]
    UploadUnknown,
    #[error(
        "the upload holds {actual} bytes, but {expected} were acknowledged; restart the upload"
    )]
    UploadDataLost { expected: u64, actual: u64 },
    #[error("the uploaded content has digest {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("the request body ended early or failed: {0}")]
    Body(String),
    #[error("the upload exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("storage I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The storage service could not be reached or answered with a server
    /// error after retries: worth a retry by the client.
    #[error("the storage service is unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What a finished write to an upload reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes this write appended.
    pub bytes: u64,
    /// The upload's total size afterwards.
    pub size: u64,
}

/// A write to an upload whose bytes are all written, but perhaps not yet on
/// the disk: `durable` waits until they are. A caller can record the new size
/// meanwhile, so that the data sync and the metadata commit overlap, but must
/// not acknowledge the bytes to the client before `durable` returns.
/// Dropping it unawaited is harmless: the sync still runs, and the bytes
/// count as unacknowledged.
#[must_use = "the written bytes are not known to be on the disk until `durable` returns"]
pub struct PendingWrite {
    /// What was written.
    pub written: Written,
    sync: Option<futures::future::BoxFuture<'static, Result<()>>>,
}

impl std::fmt::Debug for PendingWrite {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PendingWrite")
            .field("written", &self.written)
            .field("durable", &self.sync.is_none())
            .finish()
    }
}

impl PendingWrite {
    /// A write that was durable when it returned.
    pub fn durable_now(written: Written) -> Self {
        PendingWrite {
            written,
            sync: None,
        }
    }

    /// A write whose bytes are durable once `sync` completes.
    pub fn durable_after(
        written: Written,
        sync: impl std::future::Future<Output = Result<()>> + Send + 'static,
    ) -> Self {
        use futures::FutureExt as _;
        PendingWrite {
            written,
            sync: Some(sync.boxed()),
        }
    }

    /// Waits until the written bytes are on the disk.
    pub async fn durable(self) -> Result<Written> {
        if let Some(sync) = self.sync {
            sync.await?;
        }
        Ok(self.written)
    }
}

#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Checks that the storage answers (for the readiness probe).
    async fn ping(&self) -> Result<()>;

    /// The size of a stored blob, or `None` when it is not stored.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;

    /// A stream of the blob's bytes (all of them, or one range), or `None`
    /// when it is not stored.
    async fn read_blob(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<ByteStream>>;

    /// A time-limited URL from which a client may download the blob directly,
    /// where the backend can sign one (S3); `None` otherwise.
    async fn download_url(
        &self,
        _digest: &Digest,
        _valid_for: std::time::Duration,
    ) -> Result<Option<String>> {
        Ok(None)
    }

    /// Removes a stored blob. Removing a blob that is not stored is not an error.
    async fn delete_blob(&self, digest: &Digest) -> Result<()>;

    /// Prepares staging space for a new upload (which may be made only by
    /// its first write): until written to, an upload holds 0 bytes.
    async fn start_upload(&self, upload: &UploadId) -> Result<()>;

    /// Appends `data` to an upload whose acknowledged size is `offset`.
    /// Returns once every byte is written; they are durable when the
    /// returned write's `durable` returns. Bytes beyond `offset` left by an
    /// earlier failed write are discarded first. With `limit`, the write fails
    /// once more than `limit` bytes arrive.
    async fn write_upload(
        &self,
        upload: &UploadId,
        offset: u64,
        data: ByteStream,
        limit: Option<u64>,
    ) -> Result<PendingWrite>;

    /// Verifies that the first `size` bytes of the upload have digest
    /// `expected` and makes them the stored blob of that digest. On a mismatch
    /// nothing is stored and the staged data is removed.
    async fn commit_upload(&self, upload: &UploadId, size: u64, expected: &Digest) -> Result<()>;

    /// The first `size` bytes of an upload's staged data, for a blob small
    /// enough to be kept in the metadata database. Fails with
    /// `UploadDataLost` if fewer are staged.
    async fn read_upload(&self, upload: &UploadId, size: u64) -> Result<Vec<u8>>;

    /// Removes an upload's staged data. Removing unknown uploads is not an error.
    async fn cancel_upload(&self, upload: &UploadId) -> Result<()>;

    /// Every stored blob, for garbage collection and checks.
    async fn list_blobs(&self) -> Result<Vec<Digest>>;

    /// Every upload that has staged data, for clean-up at start.
    async fn list_uploads(&self) -> Result<Vec<UploadId>>;
}
