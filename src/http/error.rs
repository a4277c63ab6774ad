//! The one place that maps failures to HTTP statuses and OCI error codes.
//!
//! `Display` of an [`ApiError`] is what the client reads: it never carries
//! internal detail. Internal errors are logged with their cause and answered
//! with a plain 500 (or 503 when the metadata database cannot be reached).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kai_oci::Digest;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("blob unknown to registry")]
    BlobUnknown { digest: Digest },
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("blob upload invalid: {reason}")]
    BlobUploadInvalid { reason: String },
    #[error("chunk out of order: the upload holds {size} bytes, so the next chunk must start at byte {size}")]
    ChunkOutOfOrder { size: u64, location: String },
    #[error("provided digest did not match uploaded content")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("digest invalid: {reason}")]
    DigestInvalid { reason: String },
    #[error("manifest references a blob or manifest unknown to this repository")]
    ManifestBlobUnknown { digest: Digest },
    #[error("manifest invalid: {reason}")]
    ManifestInvalid { reason: String },
    #[error("manifest of {size} bytes is larger than the limit of {limit} bytes (limits.manifest_max_bytes)")]
    ManifestTooLarge { size: u64, limit: u64 },
    #[error("manifest unknown to registry")]
    ManifestUnknown { reference: String },
    #[error("invalid repository name: {reason}")]
    NameInvalid { reason: String },
    #[error("repository name not known to registry")]
    NameUnknown { name: String },
    #[error("invalid tag: {reason}")]
    TagInvalid { reason: String },
    #[error("provided length did not match content length: {reason}")]
    SizeInvalid { reason: String },
    #[error("invalid number of entries n={value:?}: use a whole number")]
    PaginationInvalid { value: String },
    #[error("requested range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("requested access to the resource is denied: {reason}")]
    Denied { reason: String },
    /// No credentials, bad credentials, or a token without the needed scope:
    /// 401 with a `WWW-Authenticate` challenge.
    #[error("{message}")]
    Unauthorized {
        challenge: String,
        message: &'static str,
    },
    #[error("too many failed logins; try again in {retry_after} seconds")]
    TooManyRequests { retry_after: u64 },
    /// A request to the token endpoint or the REST API that makes no sense.
    #[error("{reason}")]
    Invalid { reason: String },
    /// A REST API resource (account, team, token) that does not exist.
    #[error("{what} not found")]
    ResourceUnknown { what: String },
    #[error("{reason}")]
    Conflict { reason: String },
    #[error("the operation is unsupported: {reason}")]
    Unsupported { reason: String },
    #[error("method {method} is not allowed here; use {allowed}")]
    MethodNotAllowed {
        method: String,
        allowed: &'static str,
    },
    #[error("no such endpoint; the registry API is under /v2/")]
    NotFound,
    /// A backend (`service`: the metadata database or the blob storage) could
    /// not be reached. Answered 503 with `Retry-After`.
    #[error("the registry's {service} is unavailable; try again shortly")]
    Unavailable {
        service: &'static str,
        #[source]
        cause: anyhow::Error,
    },
    #[error("internal server error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn database_unavailable(cause: impl Into<anyhow::Error>) -> Self {
        ApiError::Unavailable {
            service: "metadata database",
            cause: cause.into(),
        }
    }

    pub fn storage_unavailable(cause: impl Into<anyhow::Error>) -> Self {
        ApiError::Unavailable {
            service: "blob storage",
            cause: cause.into(),
        }
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(error.into())
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BlobUnknown { .. } => "BLOB_UNKNOWN",
            ApiError::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ApiError::BlobUploadInvalid { .. } | ApiError::ChunkOutOfOrder { .. } => {
                "BLOB_UPLOAD_INVALID"
            }
            ApiError::DigestMismatch { .. } | ApiError::DigestInvalid { .. } => "DIGEST_INVALID",
            ApiError::ManifestBlobUnknown { .. } => "MANIFEST_BLOB_UNKNOWN",
            ApiError::ManifestInvalid { .. } | ApiError::ManifestTooLarge { .. } => {
                "MANIFEST_INVALID"
            }
            ApiError::ManifestUnknown { .. } => "MANIFEST_UNKNOWN",
            ApiError::NameInvalid { .. } => "NAME_INVALID",
            ApiError::NameUnknown { .. } => "NAME_UNKNOWN",
            ApiError::TagInvalid { .. } => "TAG_INVALID",
            ApiError::SizeInvalid { .. } => "SIZE_INVALID",
            ApiError::PaginationInvalid { .. } => "PAGINATION_NUMBER_INVALID",
            ApiError::RangeNotSatisfiable { .. } => "RANGE_INVALID",
            ApiError::Denied { .. } | ApiError::Conflict { .. } => "DENIED",
            ApiError::Unauthorized { .. } => "UNAUTHORIZED",
            ApiError::TooManyRequests { .. } => "TOOMANYREQUESTS",
            ApiError::Invalid { .. } => "INVALID",
            ApiError::ResourceUnknown { .. } => "NOT_FOUND",
            ApiError::Unsupported { .. }
            | ApiError::MethodNotAllowed { .. }
            | ApiError::NotFound => "UNSUPPORTED",
            ApiError::Unavailable { .. } => "UNAVAILABLE",
            ApiError::Internal(_) => "UNKNOWN",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BlobUnknown { .. }
            | ApiError::BlobUploadUnknown
            | ApiError::ManifestUnknown { .. }
            | ApiError::NameUnknown { .. }
            | ApiError::ResourceUnknown { .. }
            | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ChunkOutOfOrder { .. } | ApiError::RangeNotSatisfiable { .. } => {
                StatusCode::RANGE_NOT_SATISFIABLE
            }
            ApiError::ManifestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Denied { .. } => StatusCode::FORBIDDEN,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed { .. } | ApiError::Unsupported { .. } => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn detail(&self) -> serde_json::Value {
        match self {
            ApiError::BlobUnknown { digest } | ApiError::ManifestBlobUnknown { digest } => {
                json!({ "digest": digest.to_string() })
            }
            ApiError::DigestMismatch { expected, actual } => {
                json!({ "expected": expected.to_string(), "actual": actual.to_string() })
            }
            ApiError::ManifestUnknown { reference } => json!({ "reference": reference }),
            ApiError::NameUnknown { name } => json!({ "name": name }),
            ApiError::ChunkOutOfOrder { size, .. } => json!({ "size": size }),
            ApiError::RangeNotSatisfiable { size } => json!({ "size": size }),
            _ => serde_json::Value::Null,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed")
            }
            ApiError::Unavailable { service, cause } => {
                tracing::warn!(error = format!("{cause:#}"), "{service} unavailable")
            }
            _ => {}
        }
        let mut entry = json!({ "code": self.code(), "message": self.to_string() });
        let detail = self.detail();
        if !detail.is_null() {
            entry["detail"] = detail;
        }
        let body = json!({ "errors": [entry] });
        let mut response = (self.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::ChunkOutOfOrder { size, location } => {
                headers.insert("range", range_header(*size));
                if let Ok(location) = HeaderValue::from_str(location) {
                    headers.insert("location", location);
                }
            }
            ApiError::RangeNotSatisfiable { size } => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert("content-range", value);
                }
            }
            ApiError::Unavailable { .. } => {
                headers.insert("retry-after", HeaderValue::from_static("5"));
            }
            ApiError::Unauthorized { challenge, .. } => {
                if let Ok(value) = HeaderValue::from_str(challenge) {
                    headers.insert("www-authenticate", value);
                }
            }
            ApiError::TooManyRequests { retry_after } => {
                headers.insert("retry-after", HeaderValue::from(*retry_after));
            }
            ApiError::MethodNotAllowed { allowed, .. } => {
                headers.insert("allow", HeaderValue::from_static(allowed));
            }
            _ => {}
        }
        response
    }
}

/// The `Range` header of an upload holding `size` bytes: the inclusive range
/// received so far. An empty upload reports `0-0`, as other registries do.
pub fn range_header(size: u64) -> HeaderValue {
    let end = size.saturating_sub(1);
    HeaderValue::from_str(&format!("0-{end}")).expect("digits are a valid header")
}

impl From<kai_meta::MetaError> for ApiError {
    fn from(error: kai_meta::MetaError) -> Self {
        if error.is_unavailable() {
            ApiError::database_unavailable(error)
        } else {
            ApiError::Internal(error.into())
        }
    }
}

impl From<kai_storage::StorageError> for ApiError {
    fn from(error: kai_storage::StorageError) -> Self {
        use kai_storage::StorageError;
        match error {
            StorageError::UploadUnknown => ApiError::BlobUploadUnknown,
            StorageError::UploadDataLost { .. } => ApiError::BlobUploadInvalid {
                reason: format!("{error}"),
            },
            StorageError::DigestMismatch { expected, actual } => {
                ApiError::DigestMismatch { expected, actual }
            }
            StorageError::Body(reason) => ApiError::BlobUploadInvalid {
                reason: format!("the request body ended early or failed: {reason}"),
            },
            StorageError::TooLarge { limit } => ApiError::SizeInvalid {
                reason: format!("the body is longer than the {limit} bytes announced"),
            },
            StorageError::Io(cause) => ApiError::Internal(cause.into()),
            StorageError::Unavailable(reason) => {
                ApiError::storage_unavailable(anyhow::anyhow!(reason))
            }
        }
    }
}
