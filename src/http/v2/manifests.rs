//! `/v2/<name>/manifests/<reference>`: HEAD, GET, PUT and DELETE.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use kai_meta::{ContentReference, DeleteOutcome, ManifestRejection, NewManifest, StoredManifest};
use kai_oci::convert::{self, Negotiated};
use kai_oci::{Digest, Reference, RepositoryName, Tag};

use super::{content_length, empty, header, query_pairs};
use crate::app::AppState;
use crate::http::error::ApiError;

fn manifest_unknown(reference: &Reference) -> ApiError {
    ApiError::ManifestUnknown {
        reference: reference.to_string(),
    }
}

pub async fn get(
    state: &AppState,
    name: &RepositoryName,
    reference: &Reference,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let stored = match reference {
        Reference::Tag(tag) => state.meta.manifest_by_tag(name, tag.as_str()).await?,
        Reference::Digest(digest) => state.meta.manifest_by_digest(name, digest).await?,
    }
    .ok_or_else(|| manifest_unknown(reference))?;
    let StoredManifest {
        digest,
        media_type,
        content,
    } = stored;
    // Only a request by tag may be answered with a conversion: a digest names
    // exact bytes.
    let (digest, media_type, content) = match reference {
        Reference::Tag(_) => {
            let accepted = convert::accepted_media_types(
                headers.get_all("accept").iter().filter_map(|value| value.to_str().ok()),
            );
            match convert::negotiate(&media_type, &accepted) {
                Negotiated::Convert(target) => match convert::convert(&media_type, &content, target) {
                    Some(converted) => (
                        Digest::sha256_of(&converted).to_string(),
                        target.to_owned(),
                        converted,
                    ),
                    None => (digest, media_type, content),
                },
                Negotiated::Stored => (digest, media_type, content),
            }
        }
        Reference::Digest(_) => (digest, media_type, content),
    };
    let response = Response::builder()
        .header("content-type", header(&media_type))
        .header("docker-content-digest", header(&digest))
        .header("etag", header(format!("\"{digest}\"")))
        .header("content-length", content.len());
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(content)
    };
    response.body(body).map_err(ApiError::internal)
}

pub async fn put(
    state: &AppState,
    name: &RepositoryName,
    reference: &Reference,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let limit = state.config.limits.manifest_max_bytes;
    let (parts, body) = request.into_parts();
    if let Some(length) = content_length(&parts.headers) {
        if length > limit {
            return Err(ApiError::ManifestTooLarge { size: length, limit });
        }
    }
    let content = http_body_util::Limited::new(body, limit as usize)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                ApiError::ManifestTooLarge { size: limit + 1, limit }
            } else {
                ApiError::ManifestInvalid {
                    reason: format!("the request body could not be read: {error}"),
                }
            }
        })?
        .to_bytes();
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|value| value.to_str().ok());
    let parsed = kai_oci::manifest::parse(content_type, &content).map_err(|error| ApiError::ManifestInvalid {
        reason: error.to_string(),
    })?;

    let mut tags: Vec<String> = Vec::new();
    let digest = match reference {
        Reference::Digest(claimed) => {
            let actual = claimed.same_algorithm_of(&content);
            if &actual != claimed {
                return Err(ApiError::DigestMismatch {
                    expected: claimed.clone(),
                    actual,
                });
            }
            actual
        }
        Reference::Tag(tag) => {
            tags.push(tag.as_str().to_owned());
            Digest::sha256_of(&content)
        }
    };
    // OCI 1.1 lets a client name more tags with `?tag=` on the PUT.
    for (key, value) in query_pairs(parts.uri.query()) {
        if key == "tag" {
            let tag: Tag = value.parse().map_err(|error: kai_oci::ReferenceError| ApiError::TagInvalid {
                reason: error.to_string(),
            })?;
            tags.push(tag.as_str().to_owned());
        }
    }

    let references = |descriptors: &[kai_oci::Descriptor]| -> Vec<ContentReference> {
        descriptors
            .iter()
            .map(|descriptor| ContentReference {
                digest: descriptor.digest.clone(),
                size: descriptor.size,
            })
            .collect()
    };
    let blobs = references(&parsed.blobs);
    let manifests = references(&parsed.manifests);
    let annotations = parsed
        .annotations
        .as_ref()
        .filter(|annotations| !annotations.is_empty())
        .map(|annotations| serde_json::to_string(annotations).unwrap_or_default());
    let outcome = state
        .meta
        .put_manifest(NewManifest {
            repository: name,
            digest: &digest,
            media_type: &parsed.media_type,
            content: &content,
            artifact_type: parsed.artifact_type.as_deref(),
            subject: parsed.subject.as_ref().map(|subject| &subject.digest),
            annotations,
            blobs: &blobs,
            manifests: &manifests,
            tags: &tags,
        })
        .await?;
    match outcome {
        Ok(()) => {}
        Err(ManifestRejection::BlobUnknown(digest) | ManifestRejection::ManifestUnknown(digest)) => {
            return Err(ApiError::ManifestBlobUnknown { digest })
        }
        Err(ManifestRejection::SizeMismatch { digest, claimed, stored }) => {
            return Err(ApiError::ManifestInvalid {
                reason: format!("{digest} is {stored} bytes, but the manifest says {claimed}"),
            })
        }
    }
    let mut headers = vec![
        ("location", header(format!("/v2/{name}/manifests/{digest}"))),
        ("docker-content-digest", header(digest.to_string())),
    ];
    if let Some(subject) = &parsed.subject {
        headers.push(("oci-subject", header(subject.digest.to_string())));
    }
    Ok(empty(StatusCode::CREATED, headers))
}

pub async fn delete(state: &AppState, name: &RepositoryName, reference: &Reference) -> Result<Response, ApiError> {
    match reference {
        Reference::Tag(tag) => {
            if state.meta.delete_tag(name, tag.as_str()).await? {
                Ok(empty(StatusCode::ACCEPTED, vec![]))
            } else {
                Err(manifest_unknown(reference))
            }
        }
        Reference::Digest(digest) => match state.meta.delete_manifest(name, digest).await? {
            DeleteOutcome::Deleted => Ok(empty(StatusCode::ACCEPTED, vec![])),
            DeleteOutcome::NotFound => Err(manifest_unknown(reference)),
            DeleteOutcome::ReferencedBy(parent) => Err(ApiError::Conflict {
                reason: format!(
                    "manifest {digest} is listed by index {parent} in {name}; delete that index first"
                ),
            }),
        },
    }
}
