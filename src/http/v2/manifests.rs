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
        Reference::Digest(digest) => match state.meta.manifest_by_digest(name, digest).await? {
            Some(stored) => Some(stored),
            // A conversion a client was given by tag is pullable by its digest.
            None => state.meta.conversion(name, &digest.to_string()).await?,
        },
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
                    convert_for_client(state, name, &digest, &media_type, &content, target)
                        .await?
                        .map(|converted| (target, converted))
                }
                Negotiated::Stored => None,
            };
            match converted {
                Some((target, converted)) => (
                    Digest::sha256_of(&converted).to_string(),
                    target.to_owned(),
                    converted.into(),
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
/// returns `None` when no faithful conversion exists. The conversion is stored
/// (apart from pushed manifests, holding no references) so that the digest the
/// client is given can be pulled by digest.
///
/// An OCI index becomes a Docker manifest list whose entries are Docker
/// manifests too, so an old client can follow them by digest: each child is
/// converted and stored the same way. Children with no Docker form
/// (attestations) are left out of the list.
async fn convert_for_client(
    state: &AppState,
    name: &RepositoryName,
    source_digest: &str,
    stored_media_type: &str,
    content: &[u8],
    target: &str,
) -> Result<Option<Vec<u8>>, ApiError> {
    let converted = if stored_media_type == media_type::OCI_IMAGE_INDEX
        && target == media_type::DOCKER_MANIFEST_LIST
    {
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
                Some(bytes) => {
                    let size = bytes.len() as u64;
                    let digest =
                        store_conversion(state, name, &child, media_type::DOCKER_MANIFEST, bytes)
                            .await?;
                    Some((digest, size))
                }
                None => None,
            };
            children.insert(child, entry);
        }
        convert::docker_list_from_index(content, &children)
    } else {
        convert::convert(stored_media_type, content, target)
    };
    let Some(converted) = converted else {
        return Ok(None);
    };
    store_conversion(state, name, source_digest, target, converted.clone()).await?;
    Ok(Some(converted))
}

/// Stores a conversion of manifest `source` unless it is stored already, and
/// returns its digest.
async fn store_conversion(
    state: &AppState,
    name: &RepositoryName,
    source: &str,
    media_type: &str,
    bytes: Vec<u8>,
) -> Result<String, ApiError> {
    let digest = Digest::sha256_of(&bytes).to_string();
    if state.meta.conversion(name, &digest).await?.is_none() {
        let conversion = StoredManifest {
            digest: digest.clone(),
            media_type: media_type.to_owned(),
            content: bytes.into(),
        };
        state
            .meta
            .store_conversion(name, source, &conversion)
            .await?;
    }
    Ok(digest)
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
