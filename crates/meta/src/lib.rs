//! The registry's metadata: repositories, which blobs each may see, manifests
//! (stored byte for byte), tags, referrers and upload sessions.
//!
//! Queries are written once in SQL that SQLite and PostgreSQL both run, through
//! sqlx's `Any` driver. This crate never touches blob bytes.
//!
//! Writes that must stay consistent (a manifest with its references and tags)
//! run in one transaction, so a crash leaves either all of it or none.

pub mod accounts;
mod group_commit;
mod manifest_cache;
mod serve_lock;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use futures::future::BoxFuture;
use kai_oci::{Digest, RepositoryName};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

use group_commit::GroupCommitter;
use manifest_cache::ManifestCache;
use serve_lock::ServeLock;
pub use serve_lock::ServeLockError;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("metadata database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A write ran but the transaction holding it did not commit.
    #[error("metadata write not committed: {0}")]
    NotCommitted(String),
    #[error("unsupported database URL {0:?}; use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    UnsupportedUrl(String),
    #[error(transparent)]
    ServeLock(#[from] ServeLockError),
}

impl MetaError {
    /// Whether the database could not be reached (as opposed to refusing a
    /// query): worth a retry by the client.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            MetaError::Database(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
            )
        )
    }
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// The size of a blob that a repository may see: `$1` repository, `$2` digest.
const REPOSITORY_BLOB_SIZE: &str = "SELECT blobs.size FROM repository_blobs \
     JOIN blobs ON blobs.digest = repository_blobs.digest \
     WHERE repository_blobs.repository = $1 AND repository_blobs.digest = $2";

/// As `REPOSITORY_BLOB_SIZE`, with the blob's bytes when the database holds them.
const REPOSITORY_BLOB_FOR_READ: &str =
    "SELECT blobs.size, blob_contents.content FROM repository_blobs \
     JOIN blobs ON blobs.digest = repository_blobs.digest \
     LEFT JOIN blob_contents ON blob_contents.digest = blobs.digest \
     WHERE repository_blobs.repository = $1 AND repository_blobs.digest = $2";

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or_default()
}

/// A blob as a read needs it: its size, and its bytes when the database
/// holds them (small blobs); otherwise the blob store does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobForRead {
    pub size: u64,
    pub content: Option<Vec<u8>>,
}

/// A manifest as stored.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: String,
    pub media_type: String,
    pub content: Bytes,
}

/// A manifest whose `subject` is another manifest, as the referrers API lists it.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub artifact_type: Option<String>,
    /// The manifest's annotations as a JSON object, if it has any.
    pub annotations: Option<String>,
}

/// A reference from a manifest to a blob or a child manifest, with the size
/// the manifest claims for it.
#[derive(Debug, Clone)]
pub struct ContentReference {
    pub digest: Digest,
    pub size: i64,
}

/// Everything stored with a new manifest, in one transaction.
#[derive(Debug, Clone)]
pub struct NewManifest<'a> {
    pub repository: &'a RepositoryName,
    pub digest: &'a Digest,
    pub media_type: &'a str,
    pub content: &'a [u8],
    pub artifact_type: Option<&'a str>,
    pub subject: Option<&'a Digest>,
    pub annotations: Option<String>,
    pub blobs: &'a [ContentReference],
    pub manifests: &'a [ContentReference],
    pub tags: &'a [String],
}

/// A `NewManifest` that owns its parts, so that its write can run on a task
/// of its own (see `MetaStore::write_manifests`).
struct OwnedManifest {
    repository: RepositoryName,
    digest: Digest,
    media_type: String,
    content: Vec<u8>,
    artifact_type: Option<String>,
    subject: Option<Digest>,
    annotations: Option<String>,
    blobs: Vec<ContentReference>,
    manifests: Vec<ContentReference>,
    tags: Vec<String>,
}

impl From<NewManifest<'_>> for OwnedManifest {
    fn from(manifest: NewManifest<'_>) -> Self {
        OwnedManifest {
            repository: manifest.repository.clone(),
            digest: manifest.digest.clone(),
            media_type: manifest.media_type.to_owned(),
            content: manifest.content.to_vec(),
            artifact_type: manifest.artifact_type.map(str::to_owned),
            subject: manifest.subject.cloned(),
            annotations: manifest.annotations,
            blobs: manifest.blobs.to_vec(),
            manifests: manifest.manifests.to_vec(),
            tags: manifest.tags.to_vec(),
        }
    }
}

impl OwnedManifest {
    fn view(&self) -> NewManifest<'_> {
        NewManifest {
            repository: &self.repository,
            digest: &self.digest,
            media_type: &self.media_type,
            content: &self.content,
            artifact_type: self.artifact_type.as_deref(),
            subject: self.subject.as_ref(),
            annotations: self.annotations.clone(),
            blobs: &self.blobs,
            manifests: &self.manifests,
            tags: &self.tags,
        }
    }
}

/// Why a manifest was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRejection {
    BlobUnknown(Digest),
    ManifestUnknown(Digest),
    SizeMismatch {
        digest: Digest,
        claimed: i64,
        stored: i64,
    },
}

/// What deleting something that others may depend on did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    /// Still referenced by this manifest, so nothing was deleted.
    ReferencedBy(String),
}

/// An upload session.
#[derive(Debug, Clone)]
pub struct Upload {
    pub id: String,
    pub repository: String,
    /// Bytes acknowledged so far.
    pub size: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The metadata store. SQLite gets a single writer connection (SQLite admits one
/// writer at a time; queuing in the pool is cheaper than lock retries), whose
/// frequent small writes are group-committed, and several reader connections.
/// Whether a write's commit must be on disk before the write returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Synced before the answer: it survives a power loss. Everything a client
    /// is told is stored (bytes, blobs, manifests, tags, accounts) is written so.
    Durable,
    /// Written to the database's log but not synced: it survives a killed
    /// process, and a power loss may undo it along with nothing acknowledged
    /// durably after it. Only for state a client can recreate by retrying.
    Relaxed,
}

#[derive(Clone)]
pub struct MetaStore {
    reader: AnyPool,
    writer: AnyPool,
    /// SQLite only: commits concurrent writes together (see `group_commit`).
    grouped: Option<GroupCommitter>,
    /// Only when this process is the database's sole writer (see
    /// `open_for_serving`): manifests read by tag or digest.
    manifest_cache: Option<Arc<ManifestCache>>,
    /// Held while any clone of the store lives: makes this process the sole
    /// writer of a SQLite database.
    _serve_lock: Option<Arc<ServeLock>>,
}

impl MetaStore {
    /// Opens the database at `url` (`sqlite://PATH` or `postgres://...`),
    /// creating a SQLite file if needed, and applies pending migrations.
    /// PostgreSQL migrations run under an advisory lock, so replicas starting
    /// together do not race.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            Self::open_sqlite(url).await
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Self::open_postgres(url).await
        } else {
            Err(MetaError::UnsupportedUrl(redact_url(url)))
        }
    }

    /// Opens the database for `kai serve`. A SQLite database is then locked
    /// to this process (a second server on it fails to start with
    /// `ServeLockError`; `kai accounts` and other commands still open it), so
    /// manifests read by tag or digest can be kept in memory, up to
    /// `manifest_cache_bytes` (0: none). PostgreSQL is shared by replicas and
    /// opens as with `open`, with no cache.
    pub async fn open_for_serving(url: &str, manifest_cache_bytes: usize) -> Result<Self> {
        let Some(path) = sqlite_path(url) else {
            return Self::open(url).await;
        };
        let lock = ServeLock::acquire(&path)?;
        let mut store = Self::open(url).await?;
        store._serve_lock = Some(Arc::new(lock));
        if manifest_cache_bytes > 0 {
            store.manifest_cache = Some(Arc::new(ManifestCache::new(manifest_cache_bytes)));
        }
        Ok(store)
    }

    async fn open_sqlite(url: &str) -> Result<Self> {
        let url = if url.contains('?') {
            url.to_owned()
        } else {
            format!("{url}?mode=rwc")
        };
        let options: AnyConnectOptions = url.parse()?;
        // Every connection: WAL, durable commits, foreign keys, and a small
        // page cache (512 KiB for the writer, 256 KiB for each reader): a
        // query touches a few pages, the kernel's page cache holds the file
        // anyway, and default caches (2 MiB each) would be most of the
        // server's memory once the database is large. Readers with 256 KiB
        // once served manifest GETs 25 % slower than with 512 KiB when the
        // database held 200,000 rows; under `kai serve` repeated GETs are now
        // answered from the manifest cache, and the smaller caches lowered the
        // server's peaks by 1-2 MiB after 30,000 tags and repositories. Four
        // readers (each a thread with its cache) serve as many queries on two
        // cores as eight did, with 3 MiB less resident memory.
        // A SQLite connection is a file handle in this process: it cannot go
        // stale the way a network connection can, so the pool hands it out
        // without the ping sqlx would otherwise send first (one trip to the
        // connection's thread and back per query).
        let pool_options = |pragmas: &'static str| {
            AnyPoolOptions::new()
                .test_before_acquire(false)
                .after_connect(move |connection, _| {
                    Box::pin(async move {
                        connection.execute(pragmas).await?;
                        Ok(())
                    })
                })
        };
        // The writer checkpoints only as a safety net; see `group_commit`.
        let writer = pool_options(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
             PRAGMA cache_size = -512; PRAGMA wal_autocheckpoint = 10000;",
        )
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
        SQLITE_MIGRATIONS.run(&writer).await?;
        let reader = pool_options(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
             PRAGMA cache_size = -256;",
        )
        .max_connections(4)
        .connect_with(options)
        .await?;
        Ok(MetaStore {
            grouped: Some(GroupCommitter::start(writer.clone(), reader.clone())),
            reader,
            writer,
            manifest_cache: None,
            _serve_lock: None,
        })
    }

    async fn open_postgres(url: &str) -> Result<Self> {
        let options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok(MetaStore {
            reader: pool.clone(),
            writer: pool,
            grouped: None,
            manifest_cache: None,
            _serve_lock: None,
        })
    }

    /// Runs `write` in a write transaction and returns its result once the
    /// transaction is committed; if `write` fails, none of it is kept. On
    /// SQLite the transaction may be shared with other concurrent writes.
    async fn write<T, F>(&self, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.write_with(Durability::Durable, write).await
    }

    /// Runs `sql` with `arguments` as one write: grouped on SQLite, where a
    /// lone write then costs a single trip to the connection's thread (see
    /// `group_commit`). `sql` may hold several statements on SQLite only;
    /// PostgreSQL prepares one statement at a time.
    async fn write_statement(
        &self,
        durability: Durability,
        sql: &'static str,
        arguments: StatementArguments,
    ) -> Result<()> {
        let arguments = arguments.0;
        if let Some(committer) = &self.grouped {
            committer
                .write_statement(durability, sql, arguments)
                .await?;
            return Ok(());
        }
        self.write_with(durability, move |connection| {
            Box::pin(async move {
                sqlx::query_with(sql, arguments).execute(connection).await?;
                Ok(())
            })
        })
        .await
    }

    async fn write_with<T, F>(&self, durability: Durability, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        if let Some(committer) = &self.grouped {
            return committer.write(durability, write).await;
        }
        let mut transaction = self.writer.begin().await?;
        if durability == Durability::Relaxed {
            // PostgreSQL: this transaction's commit does not wait for its WAL
            // flush; later durable commits flush it with theirs.
            transaction
                .execute("SET LOCAL synchronous_commit TO OFF")
                .await?;
        }
        let value = write(&mut transaction).await?;
        transaction.commit().await?;
        Ok(value)
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        let mut connection = self.reader.acquire().await?;
        connection.ping().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    pub async fn repository_exists(&self, repository: &RepositoryName) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM repositories WHERE name = $1")
            .bind(repository.as_str())
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.is_some())
    }

    /// The size of a blob if the repository may see it.
    pub async fn repository_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let row = sqlx::query(REPOSITORY_BLOB_SIZE)
            .bind(repository.as_str())
            .bind(digest.to_string())
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(|row| row.get::<i64, _>(0) as u64))
    }

    /// A blob the repository may see, for reading: its size, and its bytes
    /// if the database holds them (see [`MetaStore::finish_upload`]).
    pub async fn repository_blob_for_read(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<BlobForRead>> {
        let row = sqlx::query(REPOSITORY_BLOB_FOR_READ)
            .bind(repository.as_str())
            .bind(digest.to_string())
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(|row| BlobForRead {
            size: row.get::<i64, _>(0) as u64,
            content: row.get(1),
        }))
    }

    /// Records that a verified blob is stored and visible in `repository`.
    pub async fn link_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        self.link_blob_finishing(repository, digest, size, None, None)
            .await
    }

    /// Records a verified blob as [`MetaStore::link_blob`] does and, in the same
    /// transaction, ends the upload session that delivered it. With `content`,
    /// the blob's bytes are stored too (once per digest): that one commit
    /// makes a small blob durable and visible, where the blob store would
    /// need syncs of its own.
    pub async fn finish_upload(
        &self,
        upload: &str,
        repository: &RepositoryName,
        digest: &Digest,
        size: u64,
        content: Option<Vec<u8>>,
    ) -> Result<()> {
        self.link_blob_finishing(repository, digest, size, Some(upload), content)
            .await
    }

    async fn link_blob_finishing(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        size: u64,
        upload: Option<&str>,
        content: Option<Vec<u8>>,
    ) -> Result<()> {
        let now = now();
        let repository = repository.as_str().to_owned();
        let digest = digest.to_string();
        let upload = upload.map(str::to_owned);
        if self.grouped.is_some() {
            // SQLite: one SQL text, so that alone it is one trip to the
            // connection's thread.
            let arguments = StatementArguments::default()
                .with(upload)?
                .with(repository)?
                .with(digest)?
                .with(size as i64)?
                .with(now)?
                .with(content)?;
            return self
                .write_statement(Durability::Durable, LINK_BLOB_SQLITE, arguments)
                .await;
        }
        self.write(move |connection| {
            Box::pin(async move {
                if let Some(upload) = upload {
                    sqlx::query("DELETE FROM uploads WHERE id = $1")
                        .bind(upload)
                        .execute(&mut *connection)
                        .await?;
                }
                link_blob_rows(connection, &repository, &digest, size, now, content).await
            })
        })
        .await
    }

    /// Makes a blob visible in `repository`, if `from` may see it. Returns the
    /// blob's size, or `None` when `from` has no such blob.
    pub async fn mount_blob(
        &self,
        repository: &RepositoryName,
        from: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let Some(size) = self.repository_blob(from, digest).await? else {
            return Ok(None);
        };
        self.link_blob(repository, digest, size).await?;
        Ok(Some(size))
    }

    /// Removes a blob from a repository, unless a manifest there refers to it.
    pub async fn unlink_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<DeleteOutcome> {
        let mut transaction = self.writer.begin().await?;
        let referenced = sqlx::query(
            "SELECT parent FROM manifest_references WHERE repository = $1 AND kind = 'blob' AND child = $2 LIMIT 1",
        )
        .bind(repository.as_str())
        .bind(digest.to_string())
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(row) = referenced {
            return Ok(DeleteOutcome::ReferencedBy(row.get(0)));
        }
        let deleted =
            sqlx::query("DELETE FROM repository_blobs WHERE repository = $1 AND digest = $2")
                .bind(repository.as_str())
                .bind(digest.to_string())
                .execute(&mut *transaction)
                .await?;
        transaction.commit().await?;
        Ok(if deleted.rows_affected() > 0 {
            DeleteOutcome::Deleted
        } else {
            DeleteOutcome::NotFound
        })
    }

    pub async fn manifest_by_digest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>> {
        let digest = digest.to_string();
        self.cached_manifest(repository, &digest, async {
            let row = sqlx::query("SELECT digest, media_type, content FROM manifests WHERE repository = $1 AND digest = $2")
                .bind(repository.as_str())
                .bind(&digest)
                .fetch_optional(&self.reader)
                .await?;
            Ok(row.map(stored_manifest))
        })
        .await
    }

    /// A stored conversion of a manifest, by the conversion's digest.
    pub async fn conversion(
        &self,
        repository: &RepositoryName,
        digest: &str,
    ) -> Result<Option<StoredManifest>> {
        let row = sqlx::query(
            "SELECT digest, media_type, content FROM manifest_conversions WHERE repository = $1 AND digest = $2",
        )
        .bind(repository.as_str())
        .bind(digest)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(stored_manifest))
    }

    /// Stores a conversion of manifest `source` (a client was given its
    /// digest), unless the source is gone or the conversion is stored already.
    pub async fn store_conversion(
        &self,
        repository: &RepositoryName,
        source: &str,
        conversion: &StoredManifest,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO manifest_conversions (repository, digest, source_digest, media_type, content, created_at) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS \
             (SELECT 1 FROM manifests WHERE repository = $1 AND digest = $3) \
             ON CONFLICT (repository, digest) DO NOTHING",
        )
        .bind(repository.as_str())
        .bind(&conversion.digest)
        .bind(source)
        .bind(&conversion.media_type)
        .bind(&conversion.content[..])
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn manifest_by_tag(
        &self,
        repository: &RepositoryName,
        tag: &str,
    ) -> Result<Option<StoredManifest>> {
        self.cached_manifest(repository, tag, async {
            let row = sqlx::query(
                "SELECT manifests.digest, manifests.media_type, manifests.content FROM tags \
                 JOIN manifests ON manifests.repository = tags.repository AND manifests.digest = tags.digest \
                 WHERE tags.repository = $1 AND tags.name = $2",
            )
            .bind(repository.as_str())
            .bind(tag)
            .fetch_optional(&self.reader)
            .await?;
            Ok(row.map(stored_manifest))
        })
        .await
    }

    /// The manifest `reference` (a tag or a digest) names in `repository`:
    /// from the manifest cache when there is one and it holds it, otherwise
    /// from `query`, whose answer the cache then keeps (see `manifest_cache`).
    async fn cached_manifest(
        &self,
        repository: &RepositoryName,
        reference: &str,
        query: impl std::future::Future<Output = Result<Option<StoredManifest>>>,
    ) -> Result<Option<StoredManifest>> {
        let Some(cache) = &self.manifest_cache else {
            return query.await;
        };
        if let Some(cached) = cache.get(repository.as_str(), reference) {
            return Ok(Some(cached));
        }
        let seen = cache.generation();
        let found = query.await?;
        if let Some(manifest) = &found {
            cache.insert(seen, repository.as_str(), reference, manifest);
        }
        Ok(found)
    }

    /// Runs `write`, which may change what a tag or digest names, and then
    /// ends every cached answer of `manifest_by_tag` and `manifest_by_digest`,
    /// whether it committed or not. With a cache, the write runs on a task of
    /// its own: a client that disconnects drops its request's future, and a
    /// write already queued would still commit, so the invalidation must not
    /// depend on the caller waiting.
    async fn write_manifests<T, W>(&self, write: W) -> Result<T>
    where
        T: Send + 'static,
        W: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let Some(cache) = self.manifest_cache.clone() else {
            return write.await;
        };
        let task = tokio::spawn(async move {
            let outcome = write.await;
            cache.invalidate();
            outcome
        });
        match task.await {
            Ok(outcome) => outcome,
            Err(error) => {
                // The task panicked or was aborted: whatever it wrote, the
                // cache must not outlive it.
                if let Some(cache) = &self.manifest_cache {
                    cache.invalidate();
                }
                Err(MetaError::NotCommitted(format!(
                    "the manifest write stopped: {error}"
                )))
            }
        }
    }

    /// Stores a manifest with its references and tags, after checking in the same
    /// transaction that everything it refers to is present with the claimed size.
    pub async fn put_manifest(
        &self,
        manifest: NewManifest<'_>,
    ) -> Result<Result<(), ManifestRejection>> {
        if self.manifest_cache.is_none() {
            // Nothing to invalidate, so no task and no copy of the manifest.
            return self.put_manifest_uncached(manifest).await;
        }
        let store = self.clone();
        let manifest = OwnedManifest::from(manifest);
        self.write_manifests(async move { store.put_manifest_uncached(manifest.view()).await })
            .await
    }

    async fn put_manifest_uncached(
        &self,
        manifest: NewManifest<'_>,
    ) -> Result<Result<(), ManifestRejection>> {
        if let Some(committer) = &self.grouped {
            if let Some((sql, arguments)) = put_manifest_sqlite(&manifest)? {
                let stored = committer
                    .write_statement(Durability::Durable, sql, arguments.0)
                    .await?;
                if stored == Some(1) {
                    return Ok(Ok(()));
                }
                // Something it refers to is missing or of another size, and
                // nothing was written: the checks below name what.
            }
        }
        self.put_manifest_checked(manifest).await
    }

    /// `put_manifest` a statement at a time: each reference checked in
    /// order, so a rejection names the first that fails.
    async fn put_manifest_checked(
        &self,
        manifest: NewManifest<'_>,
    ) -> Result<Result<(), ManifestRejection>> {
        let now = now();
        let repository = manifest.repository.as_str();
        let mut transaction = self.writer.begin().await?;
        for blob in manifest.blobs {
            let row = sqlx::query(REPOSITORY_BLOB_SIZE)
                .bind(repository)
                .bind(blob.digest.to_string())
                .fetch_optional(&mut *transaction)
                .await?;
            match row.map(|row| row.get::<i64, _>(0)) {
                None => return Ok(Err(ManifestRejection::BlobUnknown(blob.digest.clone()))),
                Some(stored) if stored != blob.size => {
                    return Ok(Err(ManifestRejection::SizeMismatch {
                        digest: blob.digest.clone(),
                        claimed: blob.size,
                        stored,
                    }))
                }
                Some(_) => {}
            }
        }
        for child in manifest.manifests {
            let row =
                sqlx::query("SELECT size FROM manifests WHERE repository = $1 AND digest = $2")
                    .bind(repository)
                    .bind(child.digest.to_string())
                    .fetch_optional(&mut *transaction)
                    .await?;
            match row.map(|row| row.get::<i64, _>(0)) {
                None => {
                    return Ok(Err(ManifestRejection::ManifestUnknown(
                        child.digest.clone(),
                    )))
                }
                Some(stored) if stored != child.size => {
                    return Ok(Err(ManifestRejection::SizeMismatch {
                        digest: child.digest.clone(),
                        claimed: child.size,
                        stored,
                    }))
                }
                Some(_) => {}
            }
        }
        ensure_repository(&mut transaction, manifest.repository.as_str(), now).await?;
        let digest = manifest.digest.to_string();
        let inserted = sqlx::query(
            "INSERT INTO manifests (repository, digest, media_type, artifact_type, subject, annotations, size, content, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (repository, digest) DO NOTHING",
        )
        .bind(repository)
        .bind(&digest)
        .bind(manifest.media_type)
        .bind(manifest.artifact_type)
        .bind(manifest.subject.map(|subject| subject.to_string()))
        .bind(manifest.annotations.as_deref())
        .bind(manifest.content.len() as i64)
        .bind(manifest.content)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        if inserted.rows_affected() > 0 {
            let references: BTreeSet<(&str, String)> = manifest
                .blobs
                .iter()
                .map(|blob| ("blob", blob.digest.to_string()))
                .chain(
                    manifest
                        .manifests
                        .iter()
                        .map(|child| ("manifest", child.digest.to_string())),
                )
                .collect();
            for (kind, child) in references {
                sqlx::query("INSERT INTO manifest_references (repository, parent, kind, child) VALUES ($1, $2, $3, $4)")
                    .bind(repository)
                    .bind(&digest)
                    .bind(kind)
                    .bind(child)
                    .execute(&mut *transaction)
                    .await?;
            }
        }
        for tag in manifest.tags {
            sqlx::query(
                "INSERT INTO tags (repository, name, digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
            )
            .bind(repository)
            .bind(tag)
            .bind(&digest)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(Ok(()))
    }

    /// Deletes a manifest and the tags naming it, unless an index in the same
    /// repository lists it.
    pub async fn delete_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<DeleteOutcome> {
        let (store, repository, digest) = (self.clone(), repository.clone(), digest.clone());
        self.write_manifests(
            async move { store.delete_manifest_uncached(&repository, &digest).await },
        )
        .await
    }

    async fn delete_manifest_uncached(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<DeleteOutcome> {
        let digest = digest.to_string();
        let mut transaction = self.writer.begin().await?;
        let exists = sqlx::query("SELECT 1 FROM manifests WHERE repository = $1 AND digest = $2")
            .bind(repository.as_str())
            .bind(&digest)
            .fetch_optional(&mut *transaction)
            .await?;
        if exists.is_none() {
            return Ok(DeleteOutcome::NotFound);
        }
        let parent = sqlx::query(
            "SELECT parent FROM manifest_references WHERE repository = $1 AND kind = 'manifest' AND child = $2 LIMIT 1",
        )
        .bind(repository.as_str())
        .bind(&digest)
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(row) = parent {
            return Ok(DeleteOutcome::ReferencedBy(row.get(0)));
        }
        for statement in [
            "DELETE FROM manifest_conversions WHERE repository = $1 AND source_digest = $2",
            "DELETE FROM tags WHERE repository = $1 AND digest = $2",
            "DELETE FROM manifest_references WHERE repository = $1 AND parent = $2",
            "DELETE FROM manifests WHERE repository = $1 AND digest = $2",
        ] {
            sqlx::query(statement)
                .bind(repository.as_str())
                .bind(&digest)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(DeleteOutcome::Deleted)
    }

    /// Removes a tag; the manifest stays. Returns whether the tag existed.
    pub async fn delete_tag(&self, repository: &RepositoryName, tag: &str) -> Result<bool> {
        let (writer, repository, tag) = (
            self.writer.clone(),
            repository.as_str().to_owned(),
            tag.to_owned(),
        );
        self.write_manifests(async move {
            let deleted = sqlx::query("DELETE FROM tags WHERE repository = $1 AND name = $2")
                .bind(repository)
                .bind(tag)
                .execute(&writer)
                .await?;
            Ok(deleted.rows_affected() > 0)
        })
        .await
    }

    /// Up to `limit` tags after `last`, in byte order.
    pub async fn tags(
        &self,
        repository: &RepositoryName,
        last: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT name FROM tags WHERE repository = $1 AND name > $2 ORDER BY name LIMIT $3",
        )
        .bind(repository.as_str())
        .bind(last.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(|row| row.get(0)).collect())
    }

    /// Up to `limit` repository names after `last`, in byte order.
    pub async fn repositories(&self, last: Option<&str>, limit: i64) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2")
                .bind(last.unwrap_or(""))
                .bind(limit)
                .fetch_all(&self.reader)
                .await?;
        Ok(rows.into_iter().map(|row| row.get(0)).collect())
    }

    /// Manifests in `repository` whose subject is `subject`, optionally only
    /// those of one artifact type, ordered by digest.
    pub async fn referrers(
        &self,
        repository: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let rows = sqlx::query(
            "SELECT digest, media_type, size, artifact_type, annotations FROM manifests \
             WHERE repository = $1 AND subject = $2 AND ($3 = '' OR artifact_type = $3) ORDER BY digest",
        )
        .bind(repository.as_str())
        .bind(subject.to_string())
        .bind(artifact_type.unwrap_or(""))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| Referrer {
                digest: row.get(0),
                media_type: row.get(1),
                size: row.get(2),
                artifact_type: row.get(3),
                annotations: row.get(4),
            })
            .collect())
    }

    /// Records a new upload session with no owner; see
    /// [`MetaStore::create_owned_upload`].
    pub async fn create_upload(&self, id: &str, repository: &RepositoryName) -> Result<()> {
        self.create_owned_upload(id, repository, None).await
    }

    pub async fn upload(&self, id: &str) -> Result<Option<Upload>> {
        let row = sqlx::query(
            "SELECT id, repository, size, created_at, updated_at FROM uploads WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|row| Upload {
            id: row.get(0),
            repository: row.get(1),
            size: row.get::<i64, _>(2) as u64,
            created_at: row.get(3),
            updated_at: row.get(4),
        }))
    }

    /// Moves an upload's acknowledged size from `from` to `to`. Returns false
    /// when another request changed it first (or the upload is gone).
    pub async fn advance_upload(&self, id: &str, from: u64, to: u64) -> Result<bool> {
        let (id, now) = (id.to_owned(), now());
        self.write(move |connection| {
            Box::pin(async move {
                let updated = sqlx::query(
                    "UPDATE uploads SET size = $1, updated_at = $2 WHERE id = $3 AND size = $4",
                )
                .bind(to as i64)
                .bind(now)
                .bind(id)
                .bind(from as i64)
                .execute(connection)
                .await?;
                Ok(updated.rows_affected() > 0)
            })
        })
        .await
    }

    /// Removes an upload session. Returns whether it existed.
    pub async fn delete_upload(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |connection| {
            Box::pin(async move {
                let deleted = sqlx::query("DELETE FROM uploads WHERE id = $1")
                    .bind(id)
                    .execute(connection)
                    .await?;
                Ok(deleted.rows_affected() > 0)
            })
        })
        .await
    }

    /// Uploads not written to since `before` (unix seconds).
    pub async fn stale_uploads(&self, before: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM uploads WHERE updated_at < $1")
            .bind(before)
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.into_iter().map(|row| row.get(0)).collect())
    }
}

/// Arguments of a [`MetaStore::write_statement`], bound to `$1`, `$2`, ... in
/// the order they are added.
#[derive(Default)]
pub(crate) struct StatementArguments(sqlx::any::AnyArguments<'static>);

impl StatementArguments {
    pub(crate) fn with<T>(mut self, value: T) -> Result<Self>
    where
        T: sqlx::Encode<'static, sqlx::Any> + sqlx::Type<sqlx::Any> + 'static,
    {
        use sqlx::Arguments as _;
        self.0
            .add(value)
            .map_err(|error| MetaError::Database(sqlx::Error::Encode(error)))?;
        Ok(self)
    }
}

/// The most parameters one SQLite statement may bind (SQLite's default
/// limit is 32,766); a manifest needing more is stored statement by statement.
const SQLITE_MAX_PARAMETERS: usize = 32_000;

/// On SQLite, `put_manifest` as one SQL text for the group committer, so a
/// manifest PUT costs one trip to the writer's thread (with its commit)
/// instead of one per statement. Every statement is conditioned on the same
/// check, that each blob and child manifest it refers to is in the
/// repository with its claimed size, and the text ends by selecting that
/// check: 1 when the manifest, its references and tags are stored, 0 when
/// nothing was written. `None` when the manifest needs too many parameters.
///
/// Parameters: `$1` repository, `$2` digest, `$3` media type, `$4` artifact
/// type, `$5` subject, `$6` annotations, `$7` size, `$8` content, `$9` now;
/// then digest and size of each distinct blob, of each distinct child
/// manifest, and each distinct tag. References are inserted whether or not
/// the manifest was new: a manifest already stored has exactly these
/// references already (its digest fixes its content), so they change nothing.
fn put_manifest_sqlite(manifest: &NewManifest<'_>) -> Result<Option<(String, StatementArguments)>> {
    let distinct_pairs = |references: &[ContentReference]| {
        references
            .iter()
            .map(|reference| (reference.digest.to_string(), reference.size))
            .collect::<BTreeSet<_>>()
    };
    let blobs = distinct_pairs(manifest.blobs);
    let children = distinct_pairs(manifest.manifests);
    let tags: BTreeSet<&String> = manifest.tags.iter().collect();
    if 9 + 2 * (blobs.len() + children.len()) + tags.len() > SQLITE_MAX_PARAMETERS {
        return Ok(None);
    }
    let mut arguments = StatementArguments::default()
        .with(manifest.repository.as_str().to_owned())?
        .with(manifest.digest.to_string())?
        .with(manifest.media_type.to_owned())?
        .with(manifest.artifact_type.map(str::to_owned))?
        .with(manifest.subject.map(|subject| subject.to_string()))?
        .with(manifest.annotations.clone())?
        .with(manifest.content.len() as i64)?
        .with(manifest.content.to_vec())?
        .with(now())?;
    let mut next = 10;
    // The `(digest, size)` rows checked for blobs and for child manifests,
    // and the `(kind, digest)` rows of `manifest_references`.
    let (mut blob_rows, mut child_rows, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
    for (rows, kind, pairs) in [
        (&mut blob_rows, "blob", blobs),
        (&mut child_rows, "manifest", children),
    ] {
        for (digest, size) in pairs {
            rows.push(format!("(${next}, ${})", next + 1));
            kinds.push(format!("('{kind}', ${next})"));
            arguments = arguments.with(digest)?.with(size)?;
            next += 2;
        }
    }
    let mut tag_rows = Vec::new();
    for tag in tags {
        tag_rows.push(format!("(${next})"));
        arguments = arguments.with(tag.clone())?;
        next += 1;
    }

    let mut checks = Vec::new();
    if !blob_rows.is_empty() {
        checks.push(format!(
            "(SELECT count(*) FROM repository_blobs JOIN blobs ON blobs.digest = repository_blobs.digest \
             WHERE repository_blobs.repository = $1 AND (repository_blobs.digest, blobs.size) IN (VALUES {})) = {}",
            blob_rows.join(", "),
            blob_rows.len()
        ));
    }
    if !child_rows.is_empty() {
        checks.push(format!(
            "(SELECT count(*) FROM manifests WHERE repository = $1 AND (digest, size) IN (VALUES {})) = {}",
            child_rows.join(", "),
            child_rows.len()
        ));
    }
    let present = if checks.is_empty() {
        "1".to_owned()
    } else {
        checks.join(" AND ")
    };
    let mut sql = format!(
        "INSERT INTO repositories (name, created_at) SELECT $1, $9 WHERE {present} \
         ON CONFLICT (name) DO NOTHING; \
         INSERT INTO manifests (repository, digest, media_type, artifact_type, subject, annotations, size, content, created_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE {present} ON CONFLICT (repository, digest) DO NOTHING; "
    );
    if !kinds.is_empty() {
        sql.push_str(&format!(
            "INSERT INTO manifest_references (repository, parent, kind, child) \
             SELECT $1, $2, column1, column2 FROM (VALUES {}) WHERE {present} ON CONFLICT DO NOTHING; ",
            kinds.join(", ")
        ));
    }
    if !tag_rows.is_empty() {
        sql.push_str(&format!(
            "INSERT INTO tags (repository, name, digest, updated_at) \
             SELECT $1, column1, $2, $9 FROM (VALUES {}) WHERE {present} \
             ON CONFLICT (repository, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at; ",
            tag_rows.join(", ")
        ));
    }
    sql.push_str(&format!("SELECT {present}"));
    Ok(Some((sql, arguments)))
}

fn stored_manifest(row: sqlx::any::AnyRow) -> StoredManifest {
    StoredManifest {
        digest: row.get(0),
        media_type: row.get(1),
        content: Bytes::from(row.get::<Vec<u8>, _>(2)),
    }
}

/// On SQLite, what `link_blob_finishing` does, as one multi-statement query:
/// end the upload session `$1` (none when NULL), then make sure repository
/// `$2`, blob `$3` of size `$4` and their link exist, all created at `$5`,
/// and store the blob's bytes `$6` unless NULL or already stored.
/// (PostgreSQL prepares one statement at a time, so there they run apart.)
const LINK_BLOB_SQLITE: &str = "\
    DELETE FROM uploads WHERE id = $1; \
    INSERT INTO repositories (name, created_at) VALUES ($2, $5) ON CONFLICT (name) DO NOTHING; \
    INSERT INTO blobs (digest, size, created_at) VALUES ($3, $4, $5) ON CONFLICT (digest) DO NOTHING; \
    INSERT INTO repository_blobs (repository, digest, created_at) VALUES ($2, $3, $5) \
        ON CONFLICT (repository, digest) DO NOTHING; \
    INSERT INTO blob_contents (digest, content) SELECT $3, $6 WHERE $6 IS NOT NULL \
        ON CONFLICT (digest) DO NOTHING";

/// Stores a blob's bytes `$2` under digest `$1`, unless they are stored already.
const INSERT_BLOB_CONTENT: &str =
    "INSERT INTO blob_contents (digest, content) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING";

/// The rows that make blob `digest` (`size` bytes, with its `content` if it
/// is kept in the database) visible in `repository`: the statements of
/// `LINK_BLOB_SQLITE` after its first, one at a time (for PostgreSQL).
async fn link_blob_rows(
    connection: &mut AnyConnection,
    repository: &str,
    digest: &str,
    size: u64,
    now: i64,
    content: Option<Vec<u8>>,
) -> Result<()> {
    ensure_repository(connection, repository, now).await?;
    sqlx::query(
        "INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING",
    )
    .bind(digest)
    .bind(size as i64)
    .bind(now)
    .execute(&mut *connection)
    .await?;
    sqlx::query(
        "INSERT INTO repository_blobs (repository, digest, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (repository, digest) DO NOTHING",
    )
    .bind(repository)
    .bind(digest)
    .bind(now)
    .execute(&mut *connection)
    .await?;
    if let Some(content) = content {
        sqlx::query(INSERT_BLOB_CONTENT)
            .bind(digest)
            .bind(content)
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

async fn ensure_repository(
    connection: &mut AnyConnection,
    repository: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(repository)
    .bind(now)
    .execute(connection)
    .await?;
    Ok(())
}

/// A database URL fit for messages and logs: any password is replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = userinfo.split(':').next().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    format!("{scheme}://{user}:***@{host}{path}")
}

/// The file of a `sqlite:` URL, or `None` for another database or an
/// in-memory one.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, options) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = path.is_empty()
        || path == ":memory:"
        || options.split('&').any(|option| option == "mode=memory");
    (!in_memory).then(|| std::path::PathBuf::from(path))
}

/// Unix seconds now, as the store records times.
pub fn unix_now() -> i64 {
    now()
}

#[cfg(test)]
mod tests {
    use super::{redact_url, BlobForRead, MetaStore};
    use kai_oci::RepositoryName;

    /// A store on a new SQLite file: the directory that holds it (removed
    /// when dropped), its URL for reopening, and the open store.
    async fn sqlite_store() -> (tempfile::TempDir, String, MetaStore) {
        let directory = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/kai.db", directory.path().display());
        let meta = MetaStore::open(&url).await.unwrap();
        (directory, url, meta)
    }

    /// On SQLite a manifest PUT is one SQL text whose statements are all
    /// conditioned on its references being present (`put_manifest_sqlite`).
    /// Everything must take effect when they are, nothing when one is not,
    /// and the rejection must name the first reference that fails.
    #[tokio::test]
    async fn a_manifest_is_stored_whole_or_not_at_all_with_the_first_missing_reference_named() {
        use super::{ContentReference, DeleteOutcome, ManifestRejection, NewManifest};
        use kai_oci::Digest;
        let (_directory, _url, meta) = sqlite_store().await;
        let repository: RepositoryName = "put/app".parse().unwrap();
        let (config, layer) = (Digest::sha256_of(b"config"), Digest::sha256_of(b"layer"));
        meta.link_blob(&repository, &config, 6).await.unwrap();
        meta.link_blob(&repository, &layer, 5).await.unwrap();
        let reference = |digest: &Digest, size: i64| ContentReference {
            digest: digest.clone(),
            size,
        };
        let put = |content: &'static [u8],
                   blobs: Vec<ContentReference>,
                   manifests: Vec<ContentReference>,
                   tags: Vec<String>| {
            let meta = meta.clone();
            let repository = repository.clone();
            async move {
                let digest = Digest::sha256_of(content);
                let outcome = meta
                    .put_manifest(NewManifest {
                        repository: &repository,
                        digest: &digest,
                        media_type: "application/vnd.oci.image.manifest.v1+json",
                        content,
                        artifact_type: None,
                        subject: None,
                        annotations: None,
                        blobs: &blobs,
                        manifests: &manifests,
                        tags: &tags,
                    })
                    .await
                    .unwrap();
                (digest, outcome)
            }
        };
        let tags = |names: &[&str]| names.iter().map(|name| name.to_string()).collect();

        // Stored, with a blob listed twice and a tag given twice.
        let (image, outcome) = put(
            b"image",
            vec![
                reference(&config, 6),
                reference(&layer, 5),
                reference(&layer, 5),
            ],
            vec![],
            tags(&["one", "two", "one"]),
        )
        .await;
        assert_eq!(outcome, Ok(()));
        for tag in ["one", "two"] {
            let stored = meta.manifest_by_tag(&repository, tag).await.unwrap();
            assert_eq!(stored.map(|stored| stored.digest), Some(image.to_string()));
        }
        assert_eq!(
            meta.unlink_blob(&repository, &layer).await.unwrap(),
            DeleteOutcome::ReferencedBy(image.to_string())
        );

        // An index listing it; then the image cannot be deleted alone.
        let (index, outcome) =
            put(b"index", vec![], vec![reference(&image, 5)], tags(&["one"])).await;
        assert_eq!(outcome, Ok(()));
        let moved = meta.manifest_by_tag(&repository, "one").await.unwrap();
        assert_eq!(moved.map(|stored| stored.digest), Some(index.to_string()));
        assert_eq!(
            meta.delete_manifest(&repository, &image).await.unwrap(),
            DeleteOutcome::ReferencedBy(index.to_string())
        );

        // Rejected: nothing of it is stored, and the first failing reference
        // in the manifest's order is named.
        let unknown = Digest::sha256_of(b"unknown");
        let rejected = [
            (
                put(
                    b"missing",
                    vec![reference(&config, 6), reference(&unknown, 3)],
                    vec![],
                    tags(&["bad"]),
                )
                .await,
                ManifestRejection::BlobUnknown(unknown.clone()),
            ),
            (
                put(
                    b"sized",
                    vec![reference(&layer, 5), reference(&config, 7)],
                    vec![],
                    tags(&["bad"]),
                )
                .await,
                ManifestRejection::SizeMismatch {
                    digest: config.clone(),
                    claimed: 7,
                    stored: 6,
                },
            ),
            (
                put(
                    b"twice",
                    vec![reference(&layer, 5), reference(&layer, 4)],
                    vec![],
                    tags(&["bad"]),
                )
                .await,
                ManifestRejection::SizeMismatch {
                    digest: layer.clone(),
                    claimed: 4,
                    stored: 5,
                },
            ),
            (
                put(
                    b"child",
                    vec![],
                    vec![reference(&unknown, 3)],
                    tags(&["bad"]),
                )
                .await,
                ManifestRejection::ManifestUnknown(unknown.clone()),
            ),
            (
                put(
                    b"child size",
                    vec![],
                    vec![reference(&image, 9)],
                    tags(&["bad"]),
                )
                .await,
                ManifestRejection::SizeMismatch {
                    digest: image.clone(),
                    claimed: 9,
                    stored: 5,
                },
            ),
        ];
        for ((digest, outcome), expected) in rejected {
            assert_eq!(outcome, Err(expected));
            assert!(meta
                .manifest_by_digest(&repository, &digest)
                .await
                .unwrap()
                .is_none());
        }
        assert!(meta
            .manifest_by_tag(&repository, "bad")
            .await
            .unwrap()
            .is_none());
    }

    /// A client that disconnects drops its request's future, possibly after
    /// the write was queued. The write still commits, and a tag read before
    /// must not be served from the manifest cache afterwards.
    #[tokio::test]
    async fn a_manifest_write_whose_caller_stops_waiting_still_empties_the_cache() {
        use super::{NewManifest, StoredManifest};
        use kai_oci::Digest;
        let directory = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/kai.db", directory.path().display());
        let meta = MetaStore::open_for_serving(&url, 1 << 20).await.unwrap();
        let repository: RepositoryName = "cache/app".parse().unwrap();
        let tags = vec!["latest".to_owned()];
        let manifest = |content: &'static [u8], digest: &'static Digest| NewManifest {
            repository: &repository,
            digest,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            content,
            artifact_type: None,
            subject: None,
            annotations: None,
            blobs: &[],
            manifests: &[],
            tags: &tags,
        };
        let first: &'static Digest = Box::leak(Box::new(Digest::sha256_of(b"first")));
        let second: &'static Digest = Box::leak(Box::new(Digest::sha256_of(b"second")));
        let latest = |meta: MetaStore| {
            let repository = repository.clone();
            async move {
                let stored: Option<StoredManifest> =
                    meta.manifest_by_tag(&repository, "latest").await.unwrap();
                stored.map(|stored| stored.digest)
            }
        };
        assert_eq!(
            meta.put_manifest(manifest(b"first", first)).await.unwrap(),
            Ok(())
        );
        for _ in 0..2 {
            assert_eq!(latest(meta.clone()).await, Some(first.to_string()));
        }
        // Poll the second PUT once, then drop it, as hyper does.
        {
            let put = meta.put_manifest(manifest(b"second", second));
            tokio::pin!(put);
            let waker = futures::task::noop_waker();
            let mut context = std::task::Context::from_waker(&waker);
            assert!(std::future::Future::poll(put.as_mut(), &mut context).is_pending());
        }
        // The write lands; then the tag names it.
        let mut landed = false;
        for _ in 0..200 {
            if meta
                .manifest_by_digest(&repository, second)
                .await
                .unwrap()
                .is_some()
            {
                landed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(landed, "the dropped PUT's write was queued and commits");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(latest(meta.clone()).await, Some(second.to_string()));
    }

    /// Finishing an upload ends its session and links the blob; linking
    /// without a session (a mount) links only. On SQLite both run as one
    /// multi-statement query, and every statement in it must take effect.
    #[tokio::test]
    async fn finishing_an_upload_links_its_blob_and_ends_the_session() {
        let (_directory, _url, meta) = sqlite_store().await;
        let first: RepositoryName = "link/first".parse().unwrap();
        let second: RepositoryName = "link/second".parse().unwrap();
        let digest = kai_oci::Digest::sha256_of(b"hello");
        meta.create_upload("finishing", &first).await.unwrap();
        meta.finish_upload("finishing", &first, &digest, 5, None)
            .await
            .unwrap();
        assert!(meta.upload("finishing").await.unwrap().is_none());
        assert!(meta.repository_exists(&first).await.unwrap());
        assert_eq!(
            meta.repository_blob(&first, &digest).await.unwrap(),
            Some(5)
        );
        assert!(!meta.repository_exists(&second).await.unwrap());
        assert_eq!(
            meta.mount_blob(&second, &first, &digest).await.unwrap(),
            Some(5)
        );
        assert!(meta.repository_exists(&second).await.unwrap());
        assert_eq!(
            meta.repository_blob(&second, &digest).await.unwrap(),
            Some(5)
        );
        // Finishing the same blob again (a second push) changes nothing.
        meta.create_upload("again", &first).await.unwrap();
        meta.finish_upload("again", &first, &digest, 5, None)
            .await
            .unwrap();
        assert!(meta.upload("again").await.unwrap().is_none());
        assert_eq!(
            meta.repository_blob(&first, &digest).await.unwrap(),
            Some(5)
        );
    }

    /// A small blob's bytes are stored with its record, once per digest, and
    /// every repository that may see the blob reads them; a blob recorded
    /// without bytes (kept in the blob store) reads as its size alone.
    #[tokio::test]
    async fn a_small_blobs_bytes_are_stored_with_its_record() {
        let (_directory, _url, meta) = sqlite_store().await;
        let first: RepositoryName = "inline/first".parse().unwrap();
        let second: RepositoryName = "inline/second".parse().unwrap();
        let digest = kai_oci::Digest::sha256_of(b"small");
        let with_bytes = Some(BlobForRead {
            size: 5,
            content: Some(b"small".to_vec()),
        });
        meta.create_upload("small", &first).await.unwrap();
        meta.finish_upload("small", &first, &digest, 5, Some(b"small".to_vec()))
            .await
            .unwrap();
        assert_eq!(
            meta.repository_blob_for_read(&first, &digest)
                .await
                .unwrap(),
            with_bytes
        );
        assert_eq!(
            meta.repository_blob_for_read(&second, &digest)
                .await
                .unwrap(),
            None
        );
        meta.mount_blob(&second, &first, &digest).await.unwrap();
        assert_eq!(
            meta.repository_blob_for_read(&second, &digest)
                .await
                .unwrap(),
            with_bytes
        );
        // A second push of the same bytes is no conflict.
        meta.create_upload("again", &second).await.unwrap();
        meta.finish_upload("again", &second, &digest, 5, Some(b"small".to_vec()))
            .await
            .unwrap();
        assert!(meta.upload("again").await.unwrap().is_none());
        assert_eq!(
            meta.repository_blob_for_read(&second, &digest)
                .await
                .unwrap(),
            with_bytes
        );
        let elsewhere = kai_oci::Digest::sha256_of(b"in the blob store");
        meta.link_blob(&first, &elsewhere, 17).await.unwrap();
        assert_eq!(
            meta.repository_blob_for_read(&first, &elsewhere)
                .await
                .unwrap(),
            Some(BlobForRead {
                size: 17,
                content: None
            })
        );
    }

    /// Relaxed writes (new upload sessions) share groups with durable ones.
    /// Whatever the mix, every write is committed, and the writer connection
    /// is left with `synchronous = FULL` for the next group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relaxed_and_durable_writes_mix_and_the_writer_stays_durable() {
        let (_directory, url, meta) = sqlite_store().await;
        let repository: RepositoryName = "relaxed/commit".parse().unwrap();
        for index in 0..50 {
            meta.create_upload(&format!("old-{index}"), &repository)
                .await
                .unwrap();
        }
        let writes = (0..50).flat_map(|index| {
            let created = {
                let (meta, repository) = (meta.clone(), repository.clone());
                tokio::spawn(async move {
                    meta.create_upload(&format!("new-{index}"), &repository)
                        .await
                        .map(|()| true)
                })
            };
            let advanced = {
                let meta = meta.clone();
                tokio::spawn(
                    async move { meta.advance_upload(&format!("old-{index}"), 0, 10).await },
                )
            };
            [created, advanced]
        });
        for outcome in futures::future::join_all(writes).await {
            assert!(outcome.unwrap().unwrap());
        }
        // The last group is a relaxed one, alone.
        meta.create_upload("last", &repository).await.unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&meta.writer)
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "the writer is back to synchronous = FULL");
        meta.close().await;
        let reopened = MetaStore::open(&url).await.unwrap();
        for index in 0..50 {
            let new = reopened.upload(&format!("new-{index}")).await.unwrap();
            assert!(new.is_some(), "new-{index} was committed");
            let old = reopened
                .upload(&format!("old-{index}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(old.size, 10);
        }
    }

    /// A lone statement write runs with its transaction in one trip. When a
    /// statement in the middle of it fails, nothing of it is kept, its caller
    /// gets the error, and the next writes commit durably as usual.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_write_that_fails_halfway_keeps_nothing() {
        let (_directory, url, meta) = sqlite_store().await;
        let repository: RepositoryName = "lone/write".parse().unwrap();
        meta.create_upload("session", &repository).await.unwrap();
        sqlx::query(
            "CREATE TRIGGER refuse_links BEFORE INSERT ON repository_blobs \
             BEGIN SELECT RAISE(ABORT, 'links refused by the test'); END",
        )
        .execute(&meta.writer)
        .await
        .unwrap();
        let digest = kai_oci::Digest::sha256_of(b"refused");
        let error = meta
            .finish_upload(
                "session",
                &repository,
                &digest,
                7,
                Some(b"refused".to_vec()),
            )
            .await
            .expect_err("the trigger refuses the link");
        assert!(error.to_string().contains("links refused"), "{error}");
        // The session's removal and the blob's record came before the failing
        // statement, in the same transaction: both were rolled back.
        assert!(meta.upload("session").await.unwrap().is_some());
        assert_eq!(
            meta.repository_blob(&repository, &digest).await.unwrap(),
            None
        );
        let blobs: i64 = sqlx::query_scalar("SELECT count(*) FROM blobs")
            .fetch_one(&meta.reader)
            .await
            .unwrap();
        assert_eq!(blobs, 0);

        sqlx::query("DROP TRIGGER refuse_links")
            .execute(&meta.writer)
            .await
            .unwrap();
        meta.create_upload("after", &repository).await.unwrap();
        meta.finish_upload(
            "session",
            &repository,
            &digest,
            7,
            Some(b"refused".to_vec()),
        )
        .await
        .unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&meta.writer)
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "the writer is back to synchronous = FULL");
        meta.close().await;
        let reopened = MetaStore::open(&url).await.unwrap();
        assert!(reopened.upload("session").await.unwrap().is_none());
        assert!(reopened.upload("after").await.unwrap().is_some());
        assert_eq!(
            reopened
                .repository_blob_for_read(&repository, &digest)
                .await
                .unwrap(),
            Some(BlobForRead {
                size: 7,
                content: Some(b"refused".to_vec())
            })
        );
    }

    /// Concurrent writes on SQLite share transactions; a write that fails
    /// (here: a duplicate upload id) must fail alone, and every other write
    /// must be committed and visible afterwards, also to a fresh connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_writes_fail_alone_and_the_rest_commit() {
        let (_directory, url, meta) = sqlite_store().await;
        let repository: RepositoryName = "group/commit".parse().unwrap();
        meta.create_upload("taken", &repository).await.unwrap();
        let writes = (0..200).map(|index| {
            let (meta, repository) = (meta.clone(), repository.clone());
            tokio::spawn(async move {
                let id = if index % 50 == 7 {
                    "taken".to_owned()
                } else {
                    format!("upload-{index}")
                };
                (index, meta.create_upload(&id, &repository).await)
            })
        });
        let outcomes = futures::future::join_all(writes).await;
        for outcome in outcomes {
            let (index, result) = outcome.unwrap();
            if index % 50 == 7 {
                let error = result.expect_err("a duplicate id is refused");
                assert!(error.to_string().contains("UNIQUE"), "{error}");
            } else {
                result.unwrap();
            }
        }
        meta.close().await;
        let reopened = MetaStore::open(&url).await.unwrap();
        for index in (0..200).filter(|index| index % 50 != 7) {
            let upload = reopened.upload(&format!("upload-{index}")).await.unwrap();
            assert!(upload.is_some(), "upload-{index} was committed");
        }
    }

    /// Commits leave their pages in the write-ahead log, under the writer's
    /// automatic checkpoint threshold; shortly after, the background
    /// checkpoint has copied them into the database file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_are_checkpointed_in_the_background() {
        let (directory, _url, meta) = sqlite_store().await;
        let database = directory.path().join("kai.db");
        let size = || std::fs::metadata(&database).unwrap().len();
        let before = size();
        let repository: RepositoryName = "checkpoint/background".parse().unwrap();
        for index in 0..20 {
            meta.create_upload(&format!("upload-{index}"), &repository)
                .await
                .unwrap();
        }
        let started = std::time::Instant::now();
        while size() == before {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the database file is still {before} bytes 10 s after the commits"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://kai:s3cret@db:5432/kai?sslmode=require&password=x"),
            "postgres://kai:***@db:5432/kai"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/kai/kai.db"),
            "sqlite:///var/lib/kai/kai.db"
        );
    }
}
