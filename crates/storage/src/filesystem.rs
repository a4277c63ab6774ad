//! The embedded blob store: plain files under the data directory.
//!
//! Layout:
//! - `blobs/<algorithm>/<first two hex digits>/<hex>`: finished blobs, written
//!   once by an atomic rename and never modified.
//! - `uploads/<upload id>`: staged upload data, appended to by each write.
//!
//! Every write is flushed to disk before it is acknowledged, and a blob's file
//! appears under `blobs/` only after its digest was verified and its bytes
//! synced; the directory entry is synced after the rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use kai_oci::{ContentHasher, Digest, DigestAlgorithm};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncSeekExt;

use crate::progress::HashProgress;
use crate::{BlobStore, ByteRange, ByteStream, Result, StorageError, UploadId, Written};

/// How many bytes one read of a blob file asks for.
const READ_CHUNK: usize = 512 * 1024;
/// How many bytes the upload writer gathers before a write system call.
const WRITE_BUFFER: usize = 1024 * 1024;
/// How many received chunks may wait for the writer thread.
const WRITE_QUEUE: usize = 64;

pub struct FilesystemStore {
    root: PathBuf,
    hash_progress: HashProgress,
}

impl FilesystemStore {
    /// Opens (creating as needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        for directory in ["blobs", "uploads"] {
            fs::create_dir_all(root.join(directory)).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!(
                        "cannot create {}: {error}; check that the data directory is writable",
                        root.join(directory).display()
                    ),
                )
            })?;
        }
        Ok(FilesystemStore {
            root,
            hash_progress: HashProgress::default(),
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        // The digest was validated as lower-case hex of fixed length, so it is a
        // safe file name.
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_path(&self, upload: &UploadId) -> PathBuf {
        self.root.join("uploads").join(upload.as_str())
    }
}

fn sync_directory(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn open_upload(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => StorageError::UploadUnknown,
            _ => StorageError::Io(error),
        })
}

/// Hashes the first `size` bytes of `file` with `algorithm`.
fn hash_file_prefix(file: &mut File, size: u64, algorithm: DigestAlgorithm) -> io::Result<Digest> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = ContentHasher::new(algorithm);
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut remaining = size;
    while remaining > 0 {
        let want = remaining.min(buffer.len() as u64) as usize;
        let read = file.read(&mut buffer[..want])?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upload file shorter than expected",
            ));
        }
        hasher.update(&buffer[..read]);
        remaining -= read as u64;
    }
    Ok(hasher.finish())
}

#[async_trait::async_trait]
impl BlobStore for FilesystemStore {
    async fn ping(&self) -> Result<()> {
        tokio::fs::metadata(&self.root).await?;
        Ok(())
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    async fn read_blob(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<ByteStream>> {
        let mut file = match tokio::fs::File::open(self.blob_path(digest)).await {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let length = match range {
            Some(range) => {
                file.seek(SeekFrom::Start(range.start)).await?;
                range.len()
            }
            None => file.metadata().await?.len(),
        };
        let reader = file.take(length);
        Ok(Some(
            tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK).boxed(),
        ))
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<()> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn start_upload(&self, upload: &UploadId) -> Result<()> {
        let path = self.upload_path(upload);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            File::create_new(&path)?;
            Ok(())
        })
        .await
        .map_err(io::Error::other)??;
        Ok(())
    }

    async fn write_upload(
        &self,
        upload: &UploadId,
        offset: u64,
        mut data: ByteStream,
        limit: Option<u64>,
    ) -> Result<Written> {
        let path = self.upload_path(upload);
        let hasher = self.hash_progress.take(upload, offset);
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);

        // Hashing and writing run on a blocking thread while this task keeps
        // reading the network, so the two overlap.
        let writer =
            tokio::task::spawn_blocking(move || -> Result<(u64, Option<ContentHasher>)> {
                let mut file = open_upload(&path)?;
                let length = file.metadata()?.len();
                if length < offset {
                    return Err(StorageError::UploadDataLost {
                        expected: offset,
                        actual: length,
                    });
                }
                if length > offset {
                    // Left over from a write that was never acknowledged.
                    file.set_len(offset)?;
                }
                file.seek(SeekFrom::Start(offset))?;
                let mut hasher = hasher;
                let mut output = BufWriter::with_capacity(WRITE_BUFFER, file);
                let mut written = 0u64;
                while let Some(chunk) = receiver.blocking_recv() {
                    if let Some(hasher) = hasher.as_mut() {
                        hasher.update(&chunk);
                    }
                    output.write_all(&chunk)?;
                    written += chunk.len() as u64;
                }
                let file = output.into_inner().map_err(|error| error.into_error())?;
                file.sync_data()?;
                Ok((written, hasher))
            });

        let mut received = 0u64;
        let mut failure = None;
        while let Some(item) = data.next().await {
            match item {
                Ok(chunk) => {
                    received += chunk.len() as u64;
                    if let Some(limit) = limit {
                        if received > limit {
                            failure = Some(StorageError::TooLarge { limit });
                            break;
                        }
                    }
                    if sender.send(chunk).await.is_err() {
                        // The writer stopped early; its own error is reported below.
                        break;
                    }
                }
                Err(error) => {
                    failure = Some(StorageError::Body(error.to_string()));
                    break;
                }
            }
        }
        drop(sender);
        let outcome = writer.await.map_err(io::Error::other)?;
        if let Some(failure) = failure {
            // The bytes written are not acknowledged; the next write truncates them.
            return Err(failure);
        }
        let (written, hasher) = outcome?;
        let size = offset + written;
        if let Some(hasher) = hasher {
            self.hash_progress.keep(upload, size, hasher);
        }
        Ok(Written {
            bytes: written,
            size,
        })
    }

    async fn commit_upload(&self, upload: &UploadId, size: u64, expected: &Digest) -> Result<()> {
        let source = self.upload_path(upload);
        let target = self.blob_path(expected);
        let expected = expected.clone();
        let progress = self
            .hash_progress
            .take(upload, size)
            .filter(|_| expected.algorithm() == DigestAlgorithm::Sha256);
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut file = open_upload(&source)?;
            let length = file.metadata()?.len();
            if length < size {
                return Err(StorageError::UploadDataLost {
                    expected: size,
                    actual: length,
                });
            }
            if length > size {
                file.set_len(size)?;
                file.sync_data()?;
            }
            let actual = match progress {
                Some(hasher) => hasher.finish(),
                None => hash_file_prefix(&mut file, size, expected.algorithm())?,
            };
            drop(file);
            if actual != expected {
                fs::remove_file(&source)?;
                return Err(StorageError::DigestMismatch { expected, actual });
            }
            if target.exists() {
                // Content-addressed: the stored blob has these very bytes.
                fs::remove_file(&source)?;
                return Ok(());
            }
            let shard = target.parent().expect("blob paths have a parent");
            if !shard.exists() {
                fs::create_dir_all(shard)?;
                sync_directory(shard.parent().expect("shards have a parent"))?;
            }
            fs::rename(&source, &target)?;
            sync_directory(shard)?;
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn cancel_upload(&self, upload: &UploadId) -> Result<()> {
        self.hash_progress.forget(upload);
        match tokio::fs::remove_file(self.upload_path(upload)).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn list_blobs(&self) -> Result<Vec<Digest>> {
        let root = self.root.join("blobs");
        tokio::task::spawn_blocking(move || -> io::Result<Vec<Digest>> {
            let mut digests = Vec::new();
            for algorithm in fs::read_dir(&root)? {
                let algorithm = algorithm?;
                let algorithm_name = algorithm.file_name().to_string_lossy().into_owned();
                for shard in fs::read_dir(algorithm.path())? {
                    for blob in fs::read_dir(shard?.path())? {
                        let name = blob?.file_name().to_string_lossy().into_owned();
                        if let Ok(digest) = format!("{algorithm_name}:{name}").parse() {
                            digests.push(digest);
                        }
                    }
                }
            }
            digests.sort();
            Ok(digests)
        })
        .await
        .map_err(io::Error::other)?
        .map_err(StorageError::from)
    }

    async fn list_uploads(&self) -> Result<Vec<UploadId>> {
        let mut uploads = Vec::new();
        let mut entries = tokio::fs::read_dir(self.root.join("uploads")).await?;
        while let Some(entry) = entries.next_entry().await? {
            if let Some(upload) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse().ok())
            {
                uploads.push(upload);
            }
        }
        Ok(uploads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_suite() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().to_path_buf();
        crate::suite::run(move || Box::new(FilesystemStore::open(&path).unwrap())).await;
    }

    #[tokio::test]
    async fn write_past_the_staged_data_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let store = FilesystemStore::open(directory.path()).unwrap();
        let upload = UploadId::generate();
        store.start_upload(&upload).await.unwrap();
        let error = store
            .write_upload(&upload, 10, crate::suite::body(&[b"x"]), None)
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            StorageError::UploadDataLost {
                expected: 10,
                actual: 0
            }
        ));
    }
}
