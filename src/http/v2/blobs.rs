//! `/v2/<name>/blobs/<digest>`: HEAD, GET (with `Range`) and DELETE.

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use kai_meta::DeleteOutcome;
use kai_oci::{Digest, RepositoryName};
use kai_storage::ByteRange;

use super::header;
use crate::app::AppState;
use crate::http::error::ApiError;

/// What a `Range` header asks of a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send the whole blob.
    Whole,
    Partial(ByteRange),
    Unsatisfiable,
}

/// Reads a single `bytes=` range (`start-end`, `start-` or `-suffix`). Forms the
/// registry does not serve (several ranges, other units) get the whole blob,
/// as HTTP allows.
pub fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|value| value.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    let parse = |text: &str| text.trim().parse::<u64>().ok();
    let range = match (start.trim().is_empty(), end.trim().is_empty()) {
        (true, false) => {
            let Some(suffix) = parse(end) else {
                return RangeRequest::Unsatisfiable;
            };
            if suffix == 0 || size == 0 {
                return RangeRequest::Unsatisfiable;
            }
            ByteRange {
                start: size.saturating_sub(suffix),
                end: size - 1,
            }
        }
        (false, true) => {
            let Some(start) = parse(start) else {
                return RangeRequest::Unsatisfiable;
            };
            if start >= size {
                return RangeRequest::Unsatisfiable;
            }
            ByteRange {
                start,
                end: size - 1,
            }
        }
        (false, false) => {
            let (Some(start), Some(end)) = (parse(start), parse(end)) else {
                return RangeRequest::Unsatisfiable;
            };
            if start > end || start >= size {
                return RangeRequest::Unsatisfiable;
            }
            ByteRange {
                start,
                end: end.min(size - 1),
            }
        }
        (true, true) => return RangeRequest::Unsatisfiable,
    };
    RangeRequest::Partial(range)
}

pub async fn get(
    state: &AppState,
    name: &RepositoryName,
    digest: &Digest,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    // A GET also fetches the bytes of a blob kept in the database; a HEAD
    // needs only the size.
    let blob = if method == Method::HEAD {
        state
            .meta
            .repository_blob(name, digest)
            .await?
            .map(|size| kai_meta::BlobForRead {
                size,
                content: None,
            })
    } else {
        state.meta.repository_blob_for_read(name, digest).await?
    };
    let kai_meta::BlobForRead { size, content } = blob.ok_or_else(|| ApiError::BlobUnknown {
        digest: digest.clone(),
    })?;
    let range = match parse_range(
        headers.get("range").and_then(|value| value.to_str().ok()),
        size,
    ) {
        RangeRequest::Whole => None,
        RangeRequest::Partial(range) => Some(range),
        RangeRequest::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size }),
    };
    let mut response = Response::builder()
        .header("content-type", "application/octet-stream")
        .header("docker-content-digest", header(digest.to_string()))
        .header("etag", header(format!("\"{digest}\"")))
        .header("accept-ranges", "bytes")
        .header("cache-control", "max-age=31536000");
    let length = match range {
        Some(range) => {
            response = response.status(StatusCode::PARTIAL_CONTENT).header(
                "content-range",
                header(format!("bytes {}-{}/{size}", range.start, range.end)),
            );
            range.len()
        }
        None => size,
    };
    response = response.header("content-length", length);
    if method == Method::HEAD {
        return response.body(Body::empty()).map_err(ApiError::internal);
    }
    if let Some(content) = content {
        let content = bytes::Bytes::from(content);
        let content = match range {
            Some(range) => content.slice(range.start as usize..=range.end as usize),
            None => content,
        };
        return response
            .body(Body::from(content))
            .map_err(ApiError::internal);
    }
    if range.is_none() && state.config.s3.redirect {
        let valid_for = std::time::Duration::from_secs(300);
        match state.blobs.download_url(digest, valid_for).await {
            Ok(Some(url)) => {
                return Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header("location", header(url))
                    .header("docker-content-digest", header(digest.to_string()))
                    .header("content-length", 0)
                    .body(Body::empty())
                    .map_err(ApiError::internal);
            }
            Ok(None) => {}
            // The bytes can still pass through Kai: a signing failure (say,
            // credentials that cannot sign) must not fail the pull.
            Err(error) => tracing::warn!(
                %digest,
                error = %error,
                "cannot sign a download URL; serving the blob directly (check the storage credentials or turn [s3] redirect off)"
            ),
        }
    }
    let Some(stream) = state.blobs.read_blob(digest, range).await? else {
        tracing::error!(%digest, "blob is linked in the metadata but missing from storage");
        return Err(ApiError::BlobUnknown {
            digest: digest.clone(),
        });
    };
    response
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}

pub async fn delete(
    state: &AppState,
    name: &RepositoryName,
    digest: &Digest,
) -> Result<Response, ApiError> {
    match state.meta.unlink_blob(name, digest).await? {
        DeleteOutcome::Deleted => Ok(super::empty(StatusCode::ACCEPTED, vec![])),
        DeleteOutcome::NotFound => Err(ApiError::BlobUnknown { digest: digest.clone() }),
        DeleteOutcome::ReferencedBy(parent) => Err(ApiError::Conflict {
            reason: format!(
                "blob {digest} is still referenced by manifest {parent} in {name}; delete that manifest first"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, end })
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), partial(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), partial(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), partial(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), partial(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), partial(8, 9));
        assert_eq!(
            parse_range(Some("bytes=10-"), 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=5-4"), 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=x-4"), 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeRequest::Whole);
    }
}
