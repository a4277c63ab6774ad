//! Listings: `/v2/<name>/tags/list`, `/v2/_catalog` and
//! `/v2/<name>/referrers/<digest>`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kai_oci::{media_type, Digest, RepositoryName};
use serde_json::{json, Value};

use super::{header, query_value};
use crate::app::AppState;
use crate::http::error::ApiError;

/// `n` and `last` of a paginated listing. Without `n`, a page holds up to
/// `limits.page_max_entries` entries.
struct Page {
    limit: i64,
    last: Option<String>,
}

fn page(state: &AppState, query: Option<&str>) -> Result<Page, ApiError> {
    let max = i64::from(state.config.limits.page_max_entries);
    let requested = match query_value(query, "n") {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .ok()
                .filter(|value| *value >= 0)
                .ok_or(ApiError::PaginationInvalid { value: text })?,
        ),
    };
    Ok(Page {
        limit: requested.unwrap_or(max).min(max),
        last: query_value(query, "last").filter(|last| !last.is_empty()),
    })
}

/// The listing response, with a `Link` to the next page when there may be one.
fn paged_response(
    path: &str,
    page: &Page,
    mut entries: Vec<String>,
    body: impl FnOnce(Vec<String>) -> Value,
) -> Response {
    let more = entries.len() as i64 > page.limit;
    entries.truncate(page.limit as usize);
    let next = match (more, entries.last()) {
        (true, Some(last)) => Some(format!(
            "<{path}?n={}&last={}>; rel=\"next\"",
            page.limit,
            encode(last)
        )),
        _ => None,
    };
    let mut response = axum::Json(body(entries)).into_response();
    if let Some(next) = next {
        response.headers_mut().insert("link", header(next));
    }
    response
}

/// Percent-encodes what may appear in a name or tag but not in a query value.
fn encode(text: &str) -> String {
    text.replace('%', "%25")
        .replace('/', "%2F")
        .replace('+', "%2B")
}

pub async fn tags(
    state: &AppState,
    name: &RepositoryName,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let page = page(state, query)?;
    let tags = state
        .meta
        .tags(name, page.last.as_deref(), page.limit + 1)
        .await?;
    if tags.is_empty() && !state.meta.repository_exists(name).await? {
        return Err(ApiError::NameUnknown {
            name: name.to_string(),
        });
    }
    let path = format!("/v2/{name}/tags/list");
    Ok(paged_response(
        &path,
        &page,
        tags,
        |tags| json!({ "name": name.as_str(), "tags": tags }),
    ))
}

/// `_catalog`: every repository, or only those `viewer` may see.
pub async fn catalog(
    state: &AppState,
    query: Option<&str>,
    viewer: Option<&kai_meta::accounts::Viewer>,
) -> Result<Response, ApiError> {
    let page = page(state, query)?;
    let names = match viewer {
        None => {
            state
                .meta
                .repositories(page.last.as_deref(), page.limit + 1)
                .await?
        }
        Some(viewer) => {
            state
                .meta
                .visible_repositories(viewer, page.last.as_deref(), page.limit + 1)
                .await?
        }
    };
    Ok(paged_response(
        "/v2/_catalog",
        &page,
        names,
        |names| json!({ "repositories": names }),
    ))
}

pub async fn referrers(
    state: &AppState,
    name: &RepositoryName,
    subject: &Digest,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    // A media type never holds a space, so a literal `+` (as in
    // `application/spdx+json`, which some clients send unencoded) is a plus.
    let query = query.map(|query| query.replace('+', "%2B"));
    let artifact_type =
        query_value(query.as_deref(), "artifactType").filter(|value| !value.is_empty());
    let referrers = state
        .meta
        .referrers(name, subject, artifact_type.as_deref())
        .await?;
    let manifests: Vec<Value> = referrers
        .into_iter()
        .map(|referrer| {
            let mut descriptor = json!({
                "mediaType": referrer.media_type,
                "digest": referrer.digest,
                "size": referrer.size,
            });
            if let Some(artifact_type) = referrer.artifact_type {
                descriptor["artifactType"] = Value::String(artifact_type);
            }
            if let Some(annotations) = referrer
                .annotations
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            {
                descriptor["annotations"] = annotations;
            }
            descriptor
        })
        .collect();
    let body = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_IMAGE_INDEX,
        "manifests": manifests,
    });
    let mut response = (
        StatusCode::OK,
        [("content-type", media_type::OCI_IMAGE_INDEX)],
        serde_json::to_vec(&body).map_err(ApiError::internal)?,
    )
        .into_response();
    if artifact_type.is_some() {
        response
            .headers_mut()
            .insert("oci-filters-applied", header("artifactType"));
    }
    Ok(response)
}
