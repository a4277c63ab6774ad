//! The behaviour every blob store must have, run against each backend.
//! `open` must return a fresh handle on the same storage each time, as a
//! restarted server or another replica would have.

use std::io;

use bytes::Bytes;
use futures::{stream, StreamExt};
use kai_oci::Digest;

use crate::{BlobStore, ByteRange, ByteStream, StorageError, UploadId, Written};

pub fn body(parts: &[&'static [u8]]) -> ByteStream {
    let parts: Vec<io::Result<Bytes>> = parts
        .iter()
        .map(|part| Ok(Bytes::from_static(part)))
        .collect();
    stream::iter(parts).boxed()
}

async fn read_all(stream: ByteStream) -> Vec<u8> {
    let chunks: Vec<Bytes> = stream.map(|chunk| chunk.unwrap()).collect().await;
    chunks.concat()
}

/// Appends `data` to `upload` at `offset` and waits until it is durable, as
/// a PATCH does before its 202.
pub async fn write_durably(
    store: &dyn BlobStore,
    upload: &UploadId,
    offset: u64,
    data: ByteStream,
    limit: Option<u64>,
) -> Written {
    store
        .write_upload(upload, offset, data, limit)
        .await
        .unwrap()
        .durable()
        .await
        .unwrap()
}

pub async fn run(open: impl Fn() -> Box<dyn BlobStore>) {
    chunked_upload_commits_a_verified_blob(open()).await;
    failed_write_is_discarded_and_wrong_digest_stores_nothing(&open).await;
    limits_and_cancel(open()).await;
    empty_upload_commits_the_empty_blob(open()).await;
    a_write_never_made_durable_is_unacknowledged(open()).await;
}

/// A write whose `PendingWrite` is dropped (as when the request turns out to
/// be the wrong length) leaves bytes that the next write at the acknowledged
/// size replaces.
async fn a_write_never_made_durable_is_unacknowledged(store: Box<dyn BlobStore>) {
    let upload = UploadId::generate();
    store.start_upload(&upload).await.unwrap();
    let pending = store
        .write_upload(&upload, 0, body(&[b"wrong ", b"length"]), None)
        .await
        .unwrap();
    assert_eq!(
        pending.written,
        Written {
            bytes: 12,
            size: 12
        }
    );
    drop(pending);
    let written = write_durably(store.as_ref(), &upload, 0, body(&[b"right"]), None).await;
    assert_eq!(written, Written { bytes: 5, size: 5 });
    let digest = Digest::sha256_of(b"right");
    store.commit_upload(&upload, 5, &digest).await.unwrap();
    let read = store.read_blob(&digest, None).await.unwrap().unwrap();
    assert_eq!(read_all(read).await, b"right");
}

/// An upload finished without a single write (a backend may not have made
/// its staging space yet) holds 0 bytes and commits as the empty blob.
async fn empty_upload_commits_the_empty_blob(store: Box<dyn BlobStore>) {
    let upload = UploadId::generate();
    store.start_upload(&upload).await.unwrap();
    assert!(store.read_upload(&upload, 0).await.unwrap().is_empty());
    let empty = Digest::sha256_of(b"");
    store.commit_upload(&upload, 0, &empty).await.unwrap();
    assert_eq!(store.blob_size(&empty).await.unwrap(), Some(0));
    let read = store.read_blob(&empty, None).await.unwrap().unwrap();
    assert!(read_all(read).await.is_empty());
    assert!(store.list_uploads().await.unwrap().is_empty());
}

async fn chunked_upload_commits_a_verified_blob(store: Box<dyn BlobStore>) {
    let upload = UploadId::generate();
    store.start_upload(&upload).await.unwrap();
    let first = write_durably(store.as_ref(), &upload, 0, body(&[b"hello "]), None).await;
    assert_eq!(first, Written { bytes: 6, size: 6 });
    let second = write_durably(store.as_ref(), &upload, 6, body(&[b"wor", b"ld"]), None).await;
    assert_eq!(second.size, 11);
    let digest = Digest::sha256_of(b"hello world");
    assert_eq!(
        store.read_upload(&upload, 11).await.unwrap(),
        b"hello world"
    );
    assert_eq!(store.read_upload(&upload, 6).await.unwrap(), b"hello ");
    assert!(matches!(
        store.read_upload(&upload, 12).await,
        Err(StorageError::UploadDataLost { expected: 12, .. })
    ));
    store.commit_upload(&upload, 11, &digest).await.unwrap();
    assert_eq!(store.blob_size(&digest).await.unwrap(), Some(11));
    let range = ByteRange { start: 6, end: 10 };
    let read = store
        .read_blob(&digest, Some(range))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_all(read).await, b"world");
    let whole = store.read_blob(&digest, None).await.unwrap().unwrap();
    assert_eq!(read_all(whole).await, b"hello world");
    assert!(store.list_uploads().await.unwrap().is_empty());
    assert_eq!(store.list_blobs().await.unwrap(), vec![digest.clone()]);
    store.delete_blob(&digest).await.unwrap();
    assert!(store.list_blobs().await.unwrap().is_empty());
    assert_eq!(store.blob_size(&digest).await.unwrap(), None);
    assert!(store.read_blob(&digest, None).await.unwrap().is_none());
}

async fn failed_write_is_discarded_and_wrong_digest_stores_nothing(
    open: &impl Fn() -> Box<dyn BlobStore>,
) {
    let store = open();
    let upload = UploadId::generate();
    store.start_upload(&upload).await.unwrap();
    write_durably(store.as_ref(), &upload, 0, body(&[b"abc"]), None).await;
    assert_eq!(store.list_uploads().await.unwrap(), vec![upload.clone()]);
    let broken = stream::iter(vec![
        Ok(Bytes::from_static(b"garbage")),
        Err(io::Error::other("connection reset")),
    ])
    .boxed();
    let error = store
        .write_upload(&upload, 3, broken, None)
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::Body(_)));
    // Reading back gives the acknowledged bytes, not what the failed write left.
    assert_eq!(store.read_upload(&upload, 3).await.unwrap(), b"abc");
    // A fresh handle has no hash progress, so commit reads the staged data.
    let reopened = open();
    write_durably(reopened.as_ref(), &upload, 3, body(&[b"def"]), None).await;
    let wrong = Digest::sha256_of(b"something else");
    let error = reopened
        .commit_upload(&upload, 6, &wrong)
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::DigestMismatch { .. }));
    assert_eq!(reopened.blob_size(&wrong).await.unwrap(), None);
    assert_eq!(
        reopened
            .blob_size(&Digest::sha256_of(b"abcdef"))
            .await
            .unwrap(),
        None
    );
    assert!(reopened.list_uploads().await.unwrap().is_empty());

    let upload = UploadId::generate();
    reopened.start_upload(&upload).await.unwrap();
    write_durably(reopened.as_ref(), &upload, 0, body(&[b"abcdef"]), None).await;
    let digest = Digest::sha256_of(b"abcdef");
    reopened.commit_upload(&upload, 6, &digest).await.unwrap();
    let read = reopened.read_blob(&digest, None).await.unwrap().unwrap();
    assert_eq!(read_all(read).await, b"abcdef");
}

async fn limits_and_cancel(store: Box<dyn BlobStore>) {
    let upload = UploadId::generate();
    store.start_upload(&upload).await.unwrap();
    let error = store
        .write_upload(&upload, 0, body(&[b"12345"]), Some(4))
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::TooLarge { limit: 4 }));
    write_durably(store.as_ref(), &upload, 0, body(&[b"1234"]), Some(4)).await;
    store.cancel_upload(&upload).await.unwrap();
    assert!(store.list_uploads().await.unwrap().is_empty());
    let error = store
        .commit_upload(&upload, 4, &Digest::sha256_of(b"1234"))
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::UploadUnknown), "{error:?}");
    assert!("../../etc/passwd".parse::<UploadId>().is_err());
    assert!("6F9619FF-8B86-D011-B42D-00C04FC964FF"
        .parse::<UploadId>()
        .is_err());
}
