//! Handlers of the OCI Distribution API, one module per kind of endpoint.

pub mod blobs;
pub mod listing;
pub mod manifests;
pub mod uploads;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use kai_storage::ByteStream;

use crate::app::AppState;
use crate::http::auth::RequestAuth;
use crate::http::endpoint::Endpoint;
use crate::http::error::ApiError;

pub async fn handle(
    state: AppState,
    endpoint: Endpoint,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let method = request.method().clone();
    let allowed = endpoint.allowed_methods();
    // Who is asking, as `http::auth::authorize` found (unchecked when the
    // handler is called without it).
    let auth = request
        .extensions()
        .get::<RequestAuth>()
        .cloned()
        .unwrap_or_else(RequestAuth::unchecked);
    // HEAD is answered wherever GET is.
    match (endpoint, method.clone()) {
        (Endpoint::Base, Method::GET | Method::HEAD) => {
            Ok(([("content-type", "application/json")], "{}").into_response())
        }
        (Endpoint::Catalog, Method::GET | Method::HEAD) => {
            let viewer = crate::http::auth::catalog_viewer(&state, &auth).await?;
            listing::catalog(&state, request.uri().query(), viewer.as_ref()).await
        }
        (Endpoint::Tags { name }, Method::GET | Method::HEAD) => {
            listing::tags(&state, &name, request.uri().query()).await
        }
        (Endpoint::Referrers { name, digest }, Method::GET | Method::HEAD) => {
            listing::referrers(&state, &name, &digest, request.uri().query()).await
        }
        (Endpoint::Blob { name, digest }, Method::GET | Method::HEAD) => {
            blobs::get(&state, &name, &digest, &method, request.headers()).await
        }
        (Endpoint::Blob { name, digest }, Method::DELETE) => {
            blobs::delete(&state, &name, &digest).await
        }
        (Endpoint::UploadStart { name }, Method::POST) => {
            uploads::start(&state, &name, &auth, request).await
        }
        (Endpoint::Upload { name, upload }, Method::GET) => {
            uploads::status(&state, &name, &upload, &auth).await
        }
        (Endpoint::Upload { name, upload }, Method::PATCH) => {
            uploads::patch(&state, &name, &upload, &auth, request).await
        }
        (Endpoint::Upload { name, upload }, Method::PUT) => {
            uploads::finish(&state, &name, &upload, &auth, request).await
        }
        (Endpoint::Upload { name, upload }, Method::DELETE) => {
            uploads::cancel(&state, &name, &upload, &auth).await
        }
        (Endpoint::Manifest { name, reference }, Method::GET | Method::HEAD) => {
            manifests::get(&state, &name, &reference, &method, request.headers()).await
        }
        (Endpoint::Manifest { name, reference }, Method::PUT) => {
            manifests::put(&state, &name, &reference, request).await
        }
        (Endpoint::Manifest { name, reference }, Method::DELETE) => {
            manifests::delete(&state, &name, &reference).await
        }
        (_, method) => Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allowed,
        }),
    }
}

/// A request body as a stream of bytes for the blob store.
pub(crate) fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

/// The declared `Content-Length`, if any and valid.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("content-length")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

/// A header value built from text the registry made itself (digests, paths of
/// validated names, numbers), which is always valid.
pub(crate) fn header(text: impl AsRef<str>) -> HeaderValue {
    HeaderValue::from_str(text.as_ref()).expect("registry-made header values are valid")
}

/// An empty response with a status and headers.
pub(crate) fn empty(status: StatusCode, headers: Vec<(&'static str, HeaderValue)>) -> Response {
    let mut response = (status, Body::empty()).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    response
        .headers_mut()
        .insert("content-length", HeaderValue::from_static("0"));
    response
}

/// The query parameters of a URL, decoded, in order.
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|query| {
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(key), percent_decode(value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The first value of query parameter `key`.
pub(crate) fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query_pairs(query)
        .into_iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => {
                decoded.push(b' ');
                index += 1;
            }
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        decoded.push(byte);
                        index += 3;
                    }
                    None => {
                        decoded.push(b'%');
                        index += 1;
                    }
                }
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        let query = Some("mount=sha256%3Aabc&from=a%2Fb&tag=x&tag=y&q=%zz&end=%4");
        assert_eq!(query_value(query, "mount").as_deref(), Some("sha256:abc"));
        assert_eq!(query_value(query, "from").as_deref(), Some("a/b"));
        assert_eq!(query_value(query, "q").as_deref(), Some("%zz"));
        assert_eq!(query_value(query, "end").as_deref(), Some("%4"));
        assert_eq!(query_value(query, "missing"), None);
        let tags: Vec<String> = query_pairs(query)
            .into_iter()
            .filter(|(key, _)| key == "tag")
            .map(|(_, value)| value)
            .collect();
        assert_eq!(tags, ["x", "y"]);
    }
}
