//! `/v2/<name>/manifests/<reference>`: HEAD, GET, PUT and DELETE.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use kai_meta::{ContentReference, DeleteOutcome, ManifestRejection, NewManifest, StoredManifest};
use kai_oci::convert::{self, Negotiated};
use kai_oci::{media_type, Digest, Reference, RepositoryName, Tag};
use std::collections::HashMap;

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
                headers
                    .get_all("accept")
                    .iter()
                    .filter_map(|value| value.to_str().ok()),
            );
            let converted = match convert::negotiate(&media_type, &accepted) {
                Negotiated::Convert(target) => {
                    convert_for_client(state, name, &media_type, &content, target)
                        .await?
                        .map(|converted| (target, converted))
                }
                Negotiated::Stored => None,
            };
            match converted {
                Some((target, converted)) => (
                    Digest::sha256_of(&converted).to_string(),
                    target.to_owned(),
                    converted,
                ),
                None => (digest, media_type, content),
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

/// Converts a manifest for a client that does not accept its stored type, or
/// returns `None` when no faithful conversion exists.
///
/// An OCI index becomes a Docker manifest list whose entries are Docker
/// manifests too, so an old client can follow them by digest: each child is
/// converted and the conversion stored in the repository (once), as an untagged
/// manifest with the same blobs. Children with no Docker form (attestations)
/// are left out of the list.
async fn convert_for_client(
    state: &AppState,
    name: &RepositoryName,
    stored_media_type: &str,
    content: &[u8],
    target: &str,
) -> Result<Option<Vec<u8>>, ApiError> {
    if !(stored_media_type == media_type::OCI_IMAGE_INDEX
        && target == media_type::DOCKER_MANIFEST_LIST)
    {
        return Ok(convert::convert(stored_media_type, content, target));
    }
    let mut children = HashMap::new();
    for child in convert::oci_image_children(content) {
        let Ok(child_digest) = child.parse::<Digest>() else {
            continue;
        };
        let converted = match state.meta.manifest_by_digest(name, &child_digest).await? {
            Some(stored) => convert::convert(
                &stored.media_type,
                &stored.content,
                media_type::DOCKER_MANIFEST,
            ),
            None => None,
        };
        let entry = match converted {
            Some(bytes) => store_conversion(state, name, &bytes).await?,
            None => None,
        };
        children.insert(child, entry);
    }
    Ok(convert::docker_list_from_index(content, &children))
}

/// Stores a converted Docker manifest unless it is stored already. Returns its
/// digest and size, or `None` if it cannot be stored.
async fn store_conversion(
    state: &AppState,
    name: &RepositoryName,
    bytes: &[u8],
) -> Result<Option<(String, u64)>, ApiError> {
    let digest = Digest::sha256_of(bytes);
    let entry = Some((digest.to_string(), bytes.len() as u64));
    if state
        .meta
        .manifest_by_digest(name, &digest)
        .await?
        .is_some()
    {
        return Ok(entry);
    }
    let Ok(parsed) = kai_oci::manifest::parse(Some(media_type::DOCKER_MANIFEST), bytes) else {
        return Ok(None);
    };
    let blobs = references(&parsed.blobs);
    let stored = state
        .meta
        .put_manifest(NewManifest {
            repository: name,
            digest: &digest,
            media_type: &parsed.media_type,
            content: bytes,
            artifact_type: None,
            subject: None,
            annotations: None,
            blobs: &blobs,
            manifests: &[],
            tags: &[],
        })
        .await?;
    Ok(stored.ok().and(entry))
}

fn references(descriptors: &[kai_oci::Descriptor]) -> Vec<ContentReference> {
    descriptors
        .iter()
        .map(|descriptor| ContentReference {
            digest: descriptor.digest.clone(),
            size: descriptor.size,
        })
        .collect()
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
            return Err(ApiError::ManifestTooLarge {
                size: length,
                limit,
            });
        }
    }
    let content = http_body_util::Limited::new(body, limit as usize)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                ApiError::ManifestTooLarge {
                    size: limit + 1,
                    limit,
                }
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
    let parsed = kai_oci::manifest::parse(content_type, &content).map_err(|error| {
        ApiError::ManifestInvalid {
            reason: error.to_string(),
        }
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
            let tag: Tag =
                value
                    .parse()
                    .map_err(|error: kai_oci::ReferenceError| ApiError::TagInvalid {
                        reason: error.to_string(),
                    })?;
            tags.push(tag.as_str().to_owned());
        }
    }

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
        Err(
            ManifestRejection::BlobUnknown(digest) | ManifestRejection::ManifestUnknown(digest),
        ) => return Err(ApiError::ManifestBlobUnknown { digest }),
        Err(ManifestRejection::SizeMismatch {
            digest,
            claimed,
            stored,
        }) => {
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

pub async fn delete(
    state: &AppState,
    name: &RepositoryName,
    reference: &Reference,
) -> Result<Response, ApiError> {
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
