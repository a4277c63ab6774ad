//! `/v2/<name>/blobs/uploads/`: starting, continuing, finishing and cancelling
//! blob uploads, and cross-repository mounts.
//!
//! An upload session is a row in the metadata store (its acknowledged size) and
//! staged data in the blob store, so a restarted server, or another replica,
//! continues it. The order of steps keeps crashes harmless: the row is created
//! before the staged data and removed after it; a blob is linked into the
//! repository only after the blob store verified and stored it.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kai_oci::{Digest, RepositoryName};
use kai_storage::{StorageError, UploadId};

use super::{body_stream, content_length, empty, header, query_value};
use crate::app::AppState;
use crate::http::auth::RequestAuth;
use crate::http::error::{range_header, ApiError};

/// Serialises requests to the same upload within this process, so two chunks
/// sent at once cannot interleave their writes. Striped: a fixed set of locks,
/// picked by the upload id's hash.
pub struct UploadLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Default for UploadLocks {
    fn default() -> Self {
        UploadLocks {
            stripes: (0..128).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }
}

impl UploadLocks {
    pub async fn lock(&self, upload: &UploadId) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        upload.hash(&mut hasher);
        let stripe = (hasher.finish() % self.stripes.len() as u64) as usize;
        self.stripes[stripe].lock().await
    }
}

fn upload_location(name: &RepositoryName, upload: &UploadId) -> String {
    format!("/v2/{name}/blobs/uploads/{upload}")
}

fn upload_response(
    status: StatusCode,
    name: &RepositoryName,
    upload: &UploadId,
    size: u64,
) -> Response {
    empty(
        status,
        vec![
            ("location", header(upload_location(name, upload))),
            ("range", range_header(size)),
            ("docker-upload-uuid", header(upload.as_str())),
        ],
    )
}

fn blob_created(name: &RepositoryName, digest: &Digest) -> Response {
    empty(
        StatusCode::CREATED,
        vec![
            ("location", header(format!("/v2/{name}/blobs/{digest}"))),
            ("docker-content-digest", header(digest.to_string())),
        ],
    )
}

fn digest_parameter(query: Option<&str>) -> Result<Option<Digest>, ApiError> {
    query_value(query, "digest")
        .map(|text| {
            text.parse()
                .map_err(|error: kai_oci::DigestError| ApiError::DigestInvalid {
                    reason: error.to_string(),
                })
        })
        .transpose()
}

/// `Content-Range` of a chunk: `start-end`, inclusive (a `bytes ` or `bytes=`
/// prefix is tolerated).
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(value) = headers.get("content-range") else {
        return Ok(None);
    };
    let invalid = || ApiError::BlobUploadInvalid {
        reason: "Content-Range must be <start>-<end>, both inclusive byte offsets".into(),
    };
    let text = value.to_str().map_err(|_| invalid())?.trim();
    let text = text
        .strip_prefix("bytes=")
        .or_else(|| text.strip_prefix("bytes "))
        .unwrap_or(text);
    let text = text.split('/').next().unwrap_or_default();
    let (start, end) = text.split_once('-').ok_or_else(invalid)?;
    let start: u64 = start.trim().parse().map_err(|_| invalid())?;
    let end: u64 = end.trim().parse().map_err(|_| invalid())?;
    if end < start {
        return Err(invalid());
    }
    Ok(Some((start, end)))
}

/// The session of `upload`, which must belong to repository `name` and to
/// the account asking (another account's session is unknown to it).
async fn session(
    state: &AppState,
    name: &RepositoryName,
    upload: &UploadId,
    auth: &RequestAuth,
) -> Result<kai_meta::Upload, ApiError> {
    match state.meta.owned_upload(upload.as_str()).await? {
        Some((session, owner))
            if session.repository == name.as_str()
                && (owner.is_none() || owner.as_deref() == auth.account()) =>
        {
            Ok(session)
        }
        _ => Err(ApiError::BlobUploadUnknown),
    }
}

/// Whether `receive` records the new size in the session.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Acknowledge {
    /// A chunk (PATCH): the session's size moves on, so the next chunk or a
    /// retry, on any replica, knows where to continue.
    Size,
    /// The last bytes before `complete`, which ends the session in the same
    /// transaction that links the blob: recording the size first would only
    /// cost a commit. If the completion fails, the bytes stay unacknowledged
    /// and a retry writes them again at the session's recorded size.
    Nothing,
}

/// How many bytes the request body holds, as the client announced it: its
/// `Content-Length`, or the `Content-Range` of a chunk, which must start at
/// the upload's acknowledged `size` and agree with the length. `None` when the
/// client announced neither.
fn announced_length(
    name: &RepositoryName,
    upload: &UploadId,
    size: u64,
    headers: &HeaderMap,
) -> Result<Option<u64>, ApiError> {
    let declared_length = content_length(headers);
    let Some((start, end)) = content_range(headers)? else {
        return Ok(declared_length);
    };
    if start != size {
        return Err(ApiError::ChunkOutOfOrder {
            size,
            location: upload_location(name, upload),
        });
    }
    let range_length = end - start + 1;
    if declared_length.is_some_and(|length| length != range_length) {
        return Err(ApiError::SizeInvalid {
            reason: format!(
                "Content-Range covers {range_length} bytes but Content-Length is {}",
                declared_length.unwrap_or_default()
            ),
        });
    }
    Ok(Some(range_length))
}

/// Appends the request body to the upload, checking `Content-Range` and
/// `Content-Length`, and (with `Acknowledge::Size`) records the new size.
/// Returns it once the bytes are on the disk.
///
/// The size is recorded while the blob store syncs the bytes, so the two
/// syncs overlap; the caller's answer waits for both. If the server stops
/// in between, the recorded size may count bytes that did not reach the
/// disk. That loses nothing acknowledged, and stores nothing wrong: the
/// next write finds the staged data shorter than the session
/// (`UploadDataLost`, which tells the client to restart), and a completion
/// after a restart hashes the staged bytes again, so lost or damaged bytes
/// fail the digest check.
#[allow(clippy::too_many_arguments)]
async fn receive(
    state: &AppState,
    name: &RepositoryName,
    upload: &UploadId,
    auth: &RequestAuth,
    size: u64,
    headers: &HeaderMap,
    body: Body,
    acknowledge: Acknowledge,
) -> Result<u64, ApiError> {
    let expected = announced_length(name, upload, size, headers)?;
    if expected == Some(0) {
        return Ok(size);
    }
    let pending = state
        .blobs
        .write_upload(upload, size, body_stream(body), expected)
        .await?;
    let written = pending.written;
    if let Some(expected) = expected {
        if written.bytes != expected {
            return Err(ApiError::SizeInvalid {
                reason: format!(
                    "received {} bytes, but {expected} were announced",
                    written.bytes
                ),
            });
        }
    }
    if acknowledge == Acknowledge::Nothing {
        pending.durable().await?;
        return Ok(written.size);
    }
    let (synced, advanced) = tokio::join!(
        pending.durable(),
        state
            .meta
            .advance_upload(upload.as_str(), size, written.size)
    );
    match (synced, advanced) {
        (Ok(_), Ok(true)) => Ok(written.size),
        (Err(error), advanced) => {
            if matches!(advanced, Ok(true)) {
                // The bytes may not be on the disk: the recorded size goes
                // back, and the client writes them again.
                if let Err(undo) = state
                    .meta
                    .advance_upload(upload.as_str(), written.size, size)
                    .await
                {
                    tracing::warn!(%upload, error = %undo, "cannot take back the recorded size of a chunk that failed to sync; its completion hashes the staged bytes again");
                }
            }
            Err(error.into())
        }
        (Ok(_), Err(error)) => Err(error.into()),
        (Ok(_), Ok(false)) => {
            let current = session(state, name, upload, auth).await?.size;
            Err(ApiError::ChunkOutOfOrder {
                size: current,
                location: upload_location(name, upload),
            })
        }
    }
}

/// Verifies and stores the upload's content as `digest`, links it into the
/// repository and ends the session.
async fn complete(
    state: &AppState,
    name: &RepositoryName,
    upload: &UploadId,
    size: u64,
    digest: &Digest,
) -> Result<Response, ApiError> {
    match state.blobs.commit_upload(upload, size, digest).await {
        Ok(()) => {}
        Err(error @ StorageError::DigestMismatch { .. }) => {
            // The staged data is gone; the session goes with it.
            state.meta.delete_upload(upload.as_str()).await?;
            return Err(error.into());
        }
        Err(error) => return Err(error.into()),
    }
    state
        .meta
        .finish_upload(upload.as_str(), name, digest, size, None)
        .await?;
    Ok(blob_created(name, digest))
}

/// The length of the last request of an upload, if the blob it completes
/// (`staged` bytes already acknowledged, then this body) is small enough to
/// be kept in the metadata database.
fn inline_length(
    state: &AppState,
    name: &RepositoryName,
    upload: &UploadId,
    staged: u64,
    headers: &HeaderMap,
    body: &Body,
) -> Result<Option<u64>, ApiError> {
    use axum::body::HttpBody as _;
    // A request without Content-Length or chunked encoding has no body.
    let length = match announced_length(name, upload, staged, headers)? {
        Some(length) => Some(length),
        None => body.size_hint().exact(),
    };
    let limit = state.config.uploads.inline_max_bytes;
    Ok(length.filter(|&length| {
        limit > 0
            && staged
                .checked_add(length)
                .is_some_and(|total| total <= limit)
    }))
}

/// `complete` for a blob small enough to be kept in the metadata database:
/// the staged bytes and the body (`length` bytes) are gathered in memory and
/// verified, and the one commit that links the blob and ends the session
/// stores them. That is one sync per push where the blob store needs three
/// (the file, its directory entry, then the commit). The staged data is
/// removed afterwards; if that is interrupted, the clean-up at start removes
/// it, as it has no session any more.
async fn complete_inline(
    state: &AppState,
    name: &RepositoryName,
    upload: &UploadId,
    staged: u64,
    body: Body,
    length: u64,
    digest: &Digest,
) -> Result<Response, ApiError> {
    let content = if staged > 0 {
        state.blobs.read_upload(upload, staged).await?
    } else {
        Vec::new()
    };
    let content = append_body(content, body, length).await?;
    let actual = digest.same_algorithm_of(&content);
    if actual != *digest {
        // As in `complete`: a mismatch ends the session and its staged data.
        discard_session(state, upload).await?;
        return Err(ApiError::DigestMismatch {
            expected: digest.clone(),
            actual,
        });
    }
    let size = content.len() as u64;
    state
        .meta
        .finish_upload(upload.as_str(), name, digest, size, Some(content))
        .await?;
    if staged > 0 {
        remove_finished_staging(state.blobs.as_ref(), upload).await;
    } else {
        remove_unstaged_remnant(state, upload);
    }
    Ok(blob_created(name, digest))
}

/// Appends `body`, announced as `length` bytes, to `content`.
async fn append_body(mut content: Vec<u8>, body: Body, length: u64) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt as _;
    let mut received = 0u64;
    let mut pieces = body_stream(body);
    while let Some(piece) = pieces.next().await {
        let piece = piece.map_err(|error| StorageError::Body(error.to_string()))?;
        received += piece.len() as u64;
        if received > length {
            return Err(StorageError::TooLarge { limit: length }.into());
        }
        content.extend_from_slice(&piece);
    }
    if received != length {
        return Err(ApiError::SizeInvalid {
            reason: format!("received {received} bytes, but {length} were announced"),
        });
    }
    Ok(content)
}

/// After a completion that found nothing acknowledged, there is at most the
/// remnant of a failed write to remove. That happens while the client gets
/// its answer: waiting would only delay it by a hand-off to a blocking thread
/// and back.
fn remove_unstaged_remnant(state: &AppState, upload: &UploadId) {
    let (blobs, upload) = (state.blobs.clone(), upload.clone());
    tokio::spawn(async move { remove_finished_staging(blobs.as_ref(), &upload).await });
}

/// The length of a completing PUT's body if it may be the whole blob, kept in
/// the metadata database: announced by `Content-Length`, not empty, at most
/// `uploads.inline_max_bytes`, and without `Content-Range` (which says where
/// the bytes go, so the session must be read first). An empty body is how
/// chunked uploads end; those have bytes staged.
fn whole_small_body_length(state: &AppState, headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key("content-range") {
        return None;
    }
    let length = content_length(headers)?;
    (length > 0 && length <= state.config.uploads.inline_max_bytes).then_some(length)
}

/// The completion of an upload whose session has nothing staged by a body
/// that holds the whole blob, small enough to keep in the metadata database:
/// the body is received and verified first, then one commit checks the
/// session (its repository, its owner, nothing staged), ends it and stores
/// the blob. That saves reading the session before the commit: serial
/// 4 KiB pushes went from about 840 to 1,030 a second. Returns the body
/// back when the commit finds the session otherwise or the digest differs:
/// the caller then reads the session and completes as usual, which reports
/// why.
async fn complete_whole_small_body(
    state: &AppState,
    name: &RepositoryName,
    upload: &UploadId,
    auth: &RequestAuth,
    body: Body,
    length: u64,
    digest: &Digest,
) -> Result<Result<Response, Vec<u8>>, ApiError> {
    let content = match append_body(Vec::new(), body, length).await {
        Ok(content) => content,
        Err(error) => {
            // An unknown session is the first thing to report.
            session(state, name, upload, auth).await?;
            return Err(error);
        }
    };
    if digest.same_algorithm_of(&content) != *digest {
        return Ok(Err(content));
    }
    let finished = state
        .meta
        .finish_owned_unstaged_upload(
            upload.as_str(),
            name,
            auth.account(),
            digest,
            content.clone(),
        )
        .await?;
    if !finished {
        return Ok(Err(content));
    }
    remove_unstaged_remnant(state, upload);
    Ok(Ok(blob_created(name, digest)))
}

/// Removes the staged data of an upload whose blob is stored. A failure only
/// leaves a file that the clean-up at start removes.
async fn remove_finished_staging(blobs: &dyn kai_storage::BlobStore, upload: &UploadId) {
    if let Err(error) = blobs.cancel_upload(upload).await {
        tracing::warn!(%upload, %error, "cannot remove the staged data of a finished upload; the next start removes it");
    }
}

/// Creates an upload session, owned by the account asking: the metadata row
/// first, then the staged data.
async fn open_session(
    state: &AppState,
    name: &RepositoryName,
    auth: &RequestAuth,
) -> Result<UploadId, ApiError> {
    let upload = UploadId::generate();
    state
        .meta
        .create_owned_upload(upload.as_str(), name, auth.account())
        .await?;
    if let Err(error) = state.blobs.start_upload(&upload).await {
        state.meta.delete_upload(upload.as_str()).await?;
        return Err(error.into());
    }
    Ok(upload)
}

/// Removes a session's staged data, then its row.
async fn discard_session(state: &AppState, upload: &UploadId) -> Result<(), ApiError> {
    state.blobs.cancel_upload(upload).await?;
    state.meta.delete_upload(upload.as_str()).await?;
    Ok(())
}

/// `POST /v2/<name>/blobs/uploads/`: a mount (`?mount=&from=`), a monolithic
/// upload (`?digest=` with the body), or the start of a session.
pub async fn start(
    state: &AppState,
    name: &RepositoryName,
    auth: &RequestAuth,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let query = request.uri().query().map(str::to_owned);
    let query = query.as_deref();
    if let Some(mount) = query_value(query, "mount") {
        let digest: Digest =
            mount
                .parse()
                .map_err(|error: kai_oci::DigestError| ApiError::DigestInvalid {
                    reason: error.to_string(),
                })?;
        if let Some(from) = query_value(query, "from") {
            let from: RepositoryName =
                from.parse()
                    .map_err(|error: kai_oci::NameError| ApiError::NameInvalid {
                        reason: format!("in from: {error}"),
                    })?;
            // Mounting reads from `from`: the caller must be allowed to pull there.
            if auth.allows(state, &from, kai_auth::Action::Pull).await?
                && state.meta.mount_blob(name, &from, &digest).await?.is_some()
            {
                return Ok(blob_created(name, &digest));
            }
        }
        // Not mountable: the client gets a session to upload the blob instead.
    } else if let Some(digest) = digest_parameter(query)? {
        let (parts, body) = request.into_parts();
        let upload = open_session(state, name, auth).await?;
        let outcome = async {
            if let Some(length) = inline_length(state, name, &upload, 0, &parts.headers, &body)? {
                return complete_inline(state, name, &upload, 0, body, length, &digest).await;
            }
            let size = receive(
                state,
                name,
                &upload,
                auth,
                0,
                &parts.headers,
                body,
                Acknowledge::Nothing,
            )
            .await?;
            complete(state, name, &upload, size, &digest).await
        }
        .await;
        if outcome.is_err() {
            discard_session(state, &upload).await?;
        }
        return outcome;
    }
    let upload = open_session(state, name, auth).await?;
    Ok(upload_response(StatusCode::ACCEPTED, name, &upload, 0))
}

/// `GET /v2/<name>/blobs/uploads/<id>`: how much the registry holds.
pub async fn status(
    state: &AppState,
    name: &RepositoryName,
    upload: &UploadId,
    auth: &RequestAuth,
) -> Result<Response, ApiError> {
    let session = session(state, name, upload, auth).await?;
    Ok(upload_response(
        StatusCode::NO_CONTENT,
        name,
        upload,
        session.size,
    ))
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: append a chunk (or stream the rest).
pub async fn patch(
    state: &AppState,
    name: &RepositoryName,
    upload: &UploadId,
    auth: &RequestAuth,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let _guard = state.upload_locks.lock(upload).await;
    let session = session(state, name, upload, auth).await?;
    let (parts, body) = request.into_parts();
    let size = receive(
        state,
        name,
        upload,
        auth,
        session.size,
        &parts.headers,
        body,
        Acknowledge::Size,
    )
    .await?;
    Ok(upload_response(StatusCode::ACCEPTED, name, upload, size))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: the last chunk, if any, then
/// verification.
pub async fn finish(
    state: &AppState,
    name: &RepositoryName,
    upload: &UploadId,
    auth: &RequestAuth,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let digest =
        digest_parameter(request.uri().query())?.ok_or_else(|| ApiError::DigestInvalid {
            reason: "the digest query parameter is required to finish an upload".into(),
        })?;
    let _guard = state.upload_locks.lock(upload).await;
    let (parts, body) = request.into_parts();
    let body = match whole_small_body_length(state, &parts.headers) {
        Some(length) => {
            match complete_whole_small_body(state, name, upload, auth, body, length, &digest)
                .await?
            {
                Ok(response) => return Ok(response),
                Err(content) => Body::from(content),
            }
        }
        None => body,
    };
    let session = session(state, name, upload, auth).await?;
    if let Some(length) = inline_length(state, name, upload, session.size, &parts.headers, &body)? {
        return complete_inline(state, name, upload, session.size, body, length, &digest).await;
    }
    let size = receive(
        state,
        name,
        upload,
        auth,
        session.size,
        &parts.headers,
        body,
        Acknowledge::Nothing,
    )
    .await?;
    complete(state, name, upload, size, &digest).await
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`: cancel, dropping the staged data.
pub async fn cancel(
    state: &AppState,
    name: &RepositoryName,
    upload: &UploadId,
    auth: &RequestAuth,
) -> Result<Response, ApiError> {
    let _guard = state.upload_locks.lock(upload).await;
    session(state, name, upload, auth).await?;
    discard_session(state, upload).await?;
    Ok(empty(StatusCode::NO_CONTENT, vec![]))
}
