//! HTTP: the OCI Distribution API under `/v2/` (authorized in `auth`), the
//! token endpoint `/v2/auth`, the REST API under `/api/v1/`, plus health endpoints.

pub mod api;
pub mod auth;
pub mod endpoint;
pub mod error;
pub mod v2;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::app::AppState;
use endpoint::Endpoint;
use error::ApiError;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .route("/v2/auth", get(auth::token).post(auth::oauth_token))
        .nest("/api/v1", api::router())
        .fallback(dispatch)
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

async fn readiness(State(state): State<AppState>) -> Response {
    // A probe must answer quickly, even while a backend is down and its
    // client is still retrying.
    let limit = std::time::Duration::from_secs(3);
    match tokio::time::timeout(limit, state.meta.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return ApiError::database_unavailable(error).into_response(),
        Err(elapsed) => return ApiError::database_unavailable(elapsed).into_response(),
    }
    // Whatever keeps a backend from answering, the replica is not ready.
    match tokio::time::timeout(limit, state.blobs.ping()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(error)) => ApiError::storage_unavailable(error).into_response(),
        Err(elapsed) => ApiError::storage_unavailable(elapsed).into_response(),
    }
}

/// Every `/v2/` request: parse the path, authorize the endpoint's action on
/// its repository, then hand it to the endpoint's handler.
async fn dispatch(State(state): State<AppState>, mut request: Request<Body>) -> Response {
    let mut response = match Endpoint::parse(request.uri().path()) {
        Ok(endpoint) => match auth::authorize(&state, &endpoint, &mut request).await {
            Ok(audit) => {
                let response = v2::handle(state.clone(), endpoint, request)
                    .await
                    .unwrap_or_else(IntoResponse::into_response);
                audit
                    .record(&state, response.status(), response.headers())
                    .await;
                response
            }
            Err(error) => error.into_response(),
        },
        Err(error) => error.into_response(),
    };
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

/// One log line per request at `info`: method, path, status, time taken.
/// Query strings are left out: they may carry state a client considers private.
async fn log_request(request: Request<Body>, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    tracing::info!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        millis = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}
