//! Authentication and authorization of HTTP requests, and the token endpoint.
//!
//! A request to `/v2/...` is authenticated (Basic credentials, a bearer token
//! from `/v2/auth`, or none) and then authorized from its parsed
//! [`Endpoint`] — the repository and the action — before any handler runs
//! ([`authorize`], called by `http::dispatch`). The decision follows
//! `kai_auth::policy` over facts from the metadata store; a bearer token
//! carries its decision (its `access` claim), made when it was issued.
//!
//! Answers: no or bad credentials, or a token without the scope → 401
//! UNAUTHORIZED with a `WWW-Authenticate: Bearer realm=...,service=...,scope=...`
//! challenge (`error="insufficient_scope"` for a token lacking it);
//! authenticated with Basic but not permitted → 403 DENIED; too many failed
//! logins → 429 TOOMANYREQUESTS with `Retry-After`.
//!
//! Secrets never reach a log line or an error body: only account names,
//! addresses and outcomes are logged and audited.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kai_auth::{policy, scope, AccountKind, Caller, Claims, Role, Scope, SigningKey};
use kai_meta::accounts::{AuditEntry, Viewer};
use kai_oci::{Reference, RepositoryName};
use serde_json::json;

use crate::app::AppState;
use crate::http::endpoint::{self, Endpoint};
use crate::http::error::ApiError;

/// Token signing keys by id, loaded from the database when a token names a
/// key not seen yet (a key made by another replica or by `kai auth rotate-key`).
#[derive(Default)]
pub struct KeyCache {
    keys: std::sync::RwLock<HashMap<String, SigningKey>>,
}

impl KeyCache {
    fn get(&self, id: &str) -> Option<SigningKey> {
        self.keys.read().ok()?.get(id).cloned()
    }

    fn insert(&self, key: SigningKey) {
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(key.id.clone(), key);
        }
    }
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub enum Identity {
    /// Authorization is off (`auth.enabled = false`): everything is allowed.
    Unchecked,
    Anonymous,
    /// Basic credentials (password, robot token or access token) on this request.
    Account(Caller),
    /// A bearer token from `/v2/auth`; `sub` is empty for an anonymous token.
    Token(Claims),
}

/// The identity and source address of a request, put in its extensions for
/// the handlers (upload ownership, mounts, the catalog).
#[derive(Debug, Clone)]
pub struct RequestAuth {
    pub identity: Identity,
    /// The source IP address, or `unknown`.
    pub address: String,
}

impl RequestAuth {
    pub fn unchecked() -> RequestAuth {
        RequestAuth {
            identity: Identity::Unchecked,
            address: "unknown".into(),
        }
    }

    /// The account acting, if any: the owner of the upload sessions it starts.
    pub fn account(&self) -> Option<&str> {
        match &self.identity {
            Identity::Unchecked | Identity::Anonymous => None,
            Identity::Account(caller) => Some(&caller.name),
            Identity::Token(claims) => (!claims.sub.is_empty()).then_some(claims.sub.as_str()),
        }
    }

    /// The actor in the audit log.
    pub fn actor(&self) -> String {
        self.account().unwrap_or("anonymous").to_owned()
    }

    /// Whether this request may do `action` on `repository`.
    pub async fn allows(
        &self,
        state: &AppState,
        repository: &RepositoryName,
        action: kai_auth::Action,
    ) -> Result<bool, ApiError> {
        Ok(match &self.identity {
            Identity::Unchecked => true,
            Identity::Anonymous => role(state, None, repository)
                .await?
                .is_some_and(|role| role.allows(action)),
            Identity::Account(caller) => role(state, Some(caller), repository)
                .await?
                .is_some_and(|role| role.allows(action)),
            Identity::Token(claims) => scope::allows(
                &claims.access,
                scope::REPOSITORY,
                repository.as_str(),
                action.as_str(),
            ),
        })
    }
}

/// The caller's role on a repository, by the permission rules.
pub async fn role(
    state: &AppState,
    caller: Option<&Caller>,
    repository: &RepositoryName,
) -> Result<Option<Role>, ApiError> {
    if caller.is_some_and(|caller| caller.admin) {
        return Ok(Some(Role::Admin));
    }
    let facts = state
        .meta
        .repository_facts(caller.map(|caller| caller.name.as_str()), repository)
        .await?;
    Ok(policy::repository_role(
        caller,
        repository.namespace(),
        &facts,
        state.config.auth.anonymous_pull,
    ))
}

/// The request's source IP address, from the connection.
pub fn source_address<B>(request: &Request<B>) -> String {
    address_in(request.extensions())
}

/// The source IP address recorded in a request's extensions, or `unknown`.
pub fn address_in(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn action_of(action: endpoint::Action) -> kai_auth::Action {
    match action {
        endpoint::Action::Pull => kai_auth::Action::Pull,
        endpoint::Action::Push => kai_auth::Action::Push,
        endpoint::Action::Delete => kai_auth::Action::Delete,
    }
}

/// Keeps a text fit for a quoted header parameter.
fn quotable(text: &str) -> String {
    text.chars()
        .filter(|character| !character.is_control() && *character != '"' && *character != '\\')
        .collect()
}

/// The token endpoint's URL: `auth.realm`, or built from the request's Host.
fn realm(state: &AppState, headers: &HeaderMap) -> String {
    if !state.config.auth.realm.is_empty() {
        return quotable(&state.config.auth.realm);
    }
    let scheme = if state.config.tls.mode == crate::config::TlsMode::Off {
        "http"
    } else {
        "https"
    };
    let host = headers
        .get("host")
        .and_then(|value| value.to_str().ok())
        .filter(|host| {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b".-:[]_".contains(&byte))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| state.config.listen.to_string());
    format!("{scheme}://{host}/v2/auth")
}

/// A `WWW-Authenticate` challenge sending the client to the token endpoint.
pub fn challenge(
    state: &AppState,
    headers: &HeaderMap,
    scope: Option<&str>,
    error: Option<&str>,
) -> String {
    let mut challenge = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        realm(state, headers),
        quotable(&state.config.auth.service)
    );
    if let Some(scope) = scope {
        challenge.push_str(&format!(",scope=\"{}\"", quotable(scope)));
    }
    if let Some(error) = error {
        challenge.push_str(&format!(",error=\"{error}\""));
    }
    challenge
}

pub fn basic_challenge(state: &AppState) -> String {
    format!("Basic realm=\"{}\"", quotable(&state.config.auth.service))
}

/// `Authorization: Basic` credentials, decoded.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    Some(
        decoded
            .and_then(|text| {
                text.split_once(':')
                    .map(|(user, secret)| (user.to_owned(), secret.to_owned()))
            })
            .ok_or(()),
    )
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Why a login failed.
#[derive(Debug)]
pub enum LoginError {
    /// Wrong name or secret.
    Invalid,
    /// Too many failures: retry after this many seconds.
    Throttled(u64),
    Failed(ApiError),
}

impl From<kai_meta::MetaError> for LoginError {
    fn from(error: kai_meta::MetaError) -> Self {
        LoginError::Failed(error.into())
    }
}

/// Checks a name and a secret (a user's password or access token, or a
/// robot's token), throttling failures per account and per source address.
/// Every failure is audited; a success only when `audit_success`.
pub async fn login(
    state: &AppState,
    name: &str,
    secret: &str,
    address: &str,
    audit_success: bool,
) -> Result<Caller, LoginError> {
    let auth = &state.config.auth;
    let now = kai_meta::unix_now();
    // Names come from the client: keep the keys bounded.
    let name: String = name.chars().take(128).collect();
    let account_key = format!("account:{name}");
    let address_key = format!("address:{address}");
    if let Some(until) = state
        .meta
        .login_blocked_until(&[&account_key, &address_key], now)
        .await?
    {
        audit(
            state,
            &name,
            address,
            "login",
            &name,
            "failure",
            "throttled",
        )
        .await;
        return Err(LoginError::Throttled((until - now).max(1) as u64));
    }
    let secrets = state.meta.account_secrets(&name).await?;
    let verified = check_secret(state, secrets, secret).await?;
    match verified {
        Some((caller, token_id)) => {
            state.meta.clear_login_failures(&account_key).await?;
            if let Some(token_id) = token_id {
                state.meta.touch_access_token(&token_id).await?;
            }
            if audit_success {
                audit(
                    state,
                    &caller.name,
                    address,
                    "login",
                    &caller.name,
                    "success",
                    "",
                )
                .await;
            }
            Ok(caller)
        }
        None => {
            let window = auth.failed_login_window.as_secs() as i64;
            let lockout = auth.lockout.as_secs().max(1) as i64;
            state
                .meta
                .record_login_failure(
                    &account_key,
                    now,
                    window,
                    i64::from(auth.max_failed_logins),
                    lockout,
                )
                .await?;
            state
                .meta
                .record_login_failure(
                    &address_key,
                    now,
                    window,
                    i64::from(auth.max_failed_logins_per_address),
                    lockout,
                )
                .await?;
            tracing::info!(account = %name, %address, "login failed");
            audit(
                state,
                &name,
                address,
                "login",
                &name,
                "failure",
                "bad credentials",
            )
            .await;
            Err(LoginError::Invalid)
        }
    }
}

/// The caller, and the access token used if it was one, when `secret` is right.
async fn check_secret(
    state: &AppState,
    secrets: Option<kai_meta::accounts::AccountSecrets>,
    secret: &str,
) -> Result<Option<(Caller, Option<String>)>, LoginError> {
    let Some(secrets) = secrets else {
        // Spend the time a real check takes, so timing does not tell names apart.
        let secret = secret.to_owned();
        let _ = crate::passwords::run(move || {
            kai_auth::password::verify(&secret, kai_auth::password::decoy_hash())
        })
        .await;
        return Ok(None);
    };
    let account = secrets.account.clone();
    let caller = Caller {
        name: account.name.clone(),
        kind: account.kind,
        admin: account.admin,
    };
    match account.kind {
        AccountKind::Robot => {
            let matches = secrets
                .token_hash
                .as_deref()
                .is_some_and(|stored| kai_auth::secret::token_matches(secret, stored));
            Ok(matches.then_some((caller, None)))
        }
        AccountKind::User => {
            if secret.starts_with("kai_pat_") {
                for (id, stored) in state.meta.access_token_hashes(&account.name).await? {
                    if kai_auth::secret::token_matches(secret, &stored) {
                        return Ok(Some((caller, Some(id))));
                    }
                }
            }
            let Some(hash) = secrets.password_hash.clone() else {
                return Ok(None);
            };
            let secret = secret.to_owned();
            let matches = crate::passwords::run(move || kai_auth::password::verify(&secret, &hash))
                .await
                .map_err(|error| LoginError::Failed(ApiError::internal(error)))?;
            Ok(matches.then_some((caller, None)))
        }
        AccountKind::Organization => Ok(None),
    }
}

/// Writes an audit record; a failure to write is logged, not fatal.
pub async fn audit(
    state: &AppState,
    actor: &str,
    address: &str,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &str,
) {
    let entry = AuditEntry {
        actor: actor.to_owned(),
        address: address.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: outcome.to_owned(),
        detail: detail.to_owned(),
    };
    if let Err(error) = state.meta.record_audit(&entry).await {
        tracing::warn!(error = %error, action, "cannot write the audit log");
    }
}

/// Loads the stored keys into the cache; returns the one that signs now.
async fn load_keys(state: &AppState) -> Result<Option<SigningKey>, ApiError> {
    let mut current = None;
    for stored in state.meta.signing_keys().await? {
        if stored.algorithm != kai_auth::jwt::ALGORITHM {
            continue;
        }
        let Some(key) = SigningKey::from_seed(stored.id.clone(), &stored.private_key) else {
            continue;
        };
        if stored.retired_at.is_none() && current.is_none() {
            current = Some(key.clone());
        }
        state.keys.insert(key);
    }
    Ok(current)
}

/// The key that signs new tokens (made on first use if there is none).
async fn signing_key(state: &AppState) -> Result<SigningKey, ApiError> {
    if let Some(key) = load_keys(state).await? {
        return Ok(key);
    }
    let key = SigningKey::generate();
    state
        .meta
        .add_signing_key(&key.id, kai_auth::jwt::ALGORITHM, &key.seed(), false)
        .await?;
    load_keys(state)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no token signing key")))
}

/// Verifies a bearer token: signature (by the key it names), audience
/// (`auth.service`) and expiry.
pub async fn verify_token(state: &AppState, token: &str) -> Result<Claims, ApiError> {
    let invalid = |_| ApiError::Unauthorized {
        challenge: String::new(),
        message: "the bearer token is invalid or has expired; ask /v2/auth for a new one",
    };
    let kid = kai_auth::jwt::key_id(token).map_err(invalid)?;
    if state.keys.get(&kid).is_none() {
        load_keys(state).await?;
    }
    kai_auth::jwt::verify(
        token,
        &state.config.auth.service,
        kai_meta::unix_now(),
        |kid| state.keys.get(kid),
    )
    .map_err(invalid)
}

/// Who sent the request: Basic credentials, a bearer token, or nobody.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    address: &str,
    audit_basic_success: bool,
) -> Result<Identity, ApiError> {
    if !state.config.auth.enabled {
        return Ok(Identity::Unchecked);
    }
    if let Some(token) = bearer_token(headers) {
        return match verify_token(state, token).await {
            Ok(claims) => Ok(Identity::Token(claims)),
            Err(ApiError::Unauthorized { message, .. }) => Err(ApiError::Unauthorized {
                challenge: challenge(state, headers, None, Some("invalid_token")),
                message,
            }),
            Err(error) => Err(error),
        };
    }
    match basic_credentials(headers) {
        None => Ok(Identity::Anonymous),
        Some(Err(())) => Err(ApiError::Unauthorized {
            challenge: challenge(state, headers, None, None),
            message: "the Basic credentials are malformed",
        }),
        Some(Ok((name, secret))) => {
            match login(state, &name, &secret, address, audit_basic_success).await {
                Ok(caller) => Ok(Identity::Account(caller)),
                Err(error) => Err(login_error(state, headers, error, false)),
            }
        }
    }
}

fn login_error(state: &AppState, headers: &HeaderMap, error: LoginError, basic: bool) -> ApiError {
    match error {
        LoginError::Invalid => ApiError::Unauthorized {
            challenge: if basic {
                basic_challenge(state)
            } else {
                challenge(state, headers, None, None)
            },
            message: "incorrect username or password",
        },
        LoginError::Throttled(retry_after) => ApiError::TooManyRequests { retry_after },
        LoginError::Failed(error) => error,
    }
}

/// An audit record to write once the handler has answered.
pub struct PendingAudit {
    event: Option<AuditEvent>,
}

struct AuditEvent {
    actor: String,
    address: String,
    action: &'static str,
    target: String,
    /// For a manifest PUT by tag: the digest the tag named before.
    previous: Option<String>,
}

impl PendingAudit {
    /// Records a push (and a tag move), or a delete, that succeeded.
    pub async fn record(self, state: &AppState, status: StatusCode, headers: &HeaderMap) {
        let Some(event) = self.event else {
            return;
        };
        if !status.is_success() {
            return;
        }
        let digest = headers
            .get("docker-content-digest")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        audit(
            state,
            &event.actor,
            &event.address,
            event.action,
            &event.target,
            "success",
            &digest,
        )
        .await;
        if let Some(previous) = event.previous {
            if previous != digest {
                let detail = format!("{previous} -> {digest}");
                audit(
                    state,
                    &event.actor,
                    &event.address,
                    "tag.move",
                    &event.target,
                    "success",
                    &detail,
                )
                .await;
            }
        }
    }
}

/// Authenticates a `/v2/` request and decides, from its endpoint, whether it
/// may run. On success the request carries its [`RequestAuth`] for the handler.
pub async fn authorize(
    state: &AppState,
    endpoint: &Endpoint,
    request: &mut Request<Body>,
) -> Result<PendingAudit, ApiError> {
    let address = source_address(request);
    let is_base = matches!(endpoint, Endpoint::Base);
    let identity = authenticate(state, request.headers(), &address, is_base).await?;
    let auth = RequestAuth { identity, address };
    let decision = decide(state, endpoint, request.method(), request.headers(), &auth).await;
    let pending = match decision {
        Ok(()) => audit_event(state, endpoint, request.method(), &auth).await?,
        Err(error) => return Err(error),
    };
    request.extensions_mut().insert(auth);
    Ok(pending)
}

async fn decide(
    state: &AppState,
    endpoint: &Endpoint,
    method: &Method,
    headers: &HeaderMap,
    auth: &RequestAuth,
) -> Result<(), ApiError> {
    if matches!(auth.identity, Identity::Unchecked) {
        return Ok(());
    }
    let Some(repository) = endpoint.repository() else {
        // `/v2/` and `/v2/_catalog`: any authenticated caller; the catalog
        // needs `registry:catalog:*` in a token, and is filtered anyway.
        let scope = matches!(endpoint, Endpoint::Catalog).then_some("registry:catalog:*");
        return match &auth.identity {
            Identity::Anonymous => Err(ApiError::Unauthorized {
                challenge: challenge(state, headers, scope, None),
                message: "authentication required",
            }),
            Identity::Token(claims)
                if scope.is_some()
                    && !scope::allows(&claims.access, scope::REGISTRY, "catalog", "*") =>
            {
                Err(ApiError::Unauthorized {
                    challenge: challenge(state, headers, scope, Some("insufficient_scope")),
                    message: "the token does not grant registry:catalog:*",
                })
            }
            _ => Ok(()),
        };
    };
    let action = action_of(endpoint.action(method));
    if auth.allows(state, repository, action).await? {
        let creates = matches!(
            (endpoint, method.as_str()),
            (Endpoint::UploadStart { .. }, _) | (Endpoint::Manifest { .. }, "PUT")
        );
        if creates {
            ensure_repository_settings(state, repository).await?;
        }
        return Ok(());
    }
    let scope_actions = match action {
        kai_auth::Action::Pull => "pull",
        kai_auth::Action::Push => "pull,push",
        kai_auth::Action::Delete => "delete",
    };
    let scope = format!("repository:{repository}:{scope_actions}");
    match &auth.identity {
        Identity::Account(caller) => Err(ApiError::Denied {
            reason: format!("{} may not {action} {repository}", caller.name),
        }),
        Identity::Token(_) => Err(ApiError::Unauthorized {
            challenge: challenge(state, headers, Some(&scope), Some("insufficient_scope")),
            message: "the token does not grant this access to the repository",
        }),
        _ => Err(ApiError::Unauthorized {
            challenge: challenge(state, headers, Some(&scope), None),
            message: "authentication required",
        }),
    }
}

/// A push that may create a repository records its visibility first: the
/// configured default for a new repository, private for one that exists
/// from before authorization was on.
async fn ensure_repository_settings(
    state: &AppState,
    repository: &RepositoryName,
) -> Result<(), ApiError> {
    if state
        .meta
        .repository_visibility(repository.as_str())
        .await?
        .is_some()
    {
        return Ok(());
    }
    let visibility = if state.meta.repository_exists(repository).await? {
        "private"
    } else {
        state.config.auth.default_visibility.as_str()
    };
    state
        .meta
        .create_repository_settings(repository.as_str(), visibility)
        .await?;
    Ok(())
}

async fn audit_event(
    state: &AppState,
    endpoint: &Endpoint,
    method: &Method,
    auth: &RequestAuth,
) -> Result<PendingAudit, ApiError> {
    if matches!(auth.identity, Identity::Unchecked) {
        return Ok(PendingAudit { event: None });
    }
    let event = match (endpoint, method.as_str()) {
        (Endpoint::Manifest { name, reference }, "PUT") => {
            let previous = match reference {
                Reference::Tag(tag) => state.meta.tag_digest(name, tag.as_str()).await?,
                Reference::Digest(_) => None,
            };
            Some(("push", format!("{name}:{reference}"), previous))
        }
        (Endpoint::Manifest { name, reference }, "DELETE") => {
            Some(("delete", format!("{name}:{reference}"), None))
        }
        (Endpoint::Blob { name, digest }, "DELETE") => {
            Some(("delete", format!("{name}@{digest}"), None))
        }
        _ => None,
    };
    Ok(PendingAudit {
        event: event.map(|(action, target, previous)| AuditEvent {
            actor: auth.actor(),
            address: auth.address.clone(),
            action,
            target,
            previous,
        }),
    })
}

/// Who may see what in `_catalog`: `None` for everything.
pub async fn catalog_viewer(
    state: &AppState,
    auth: &RequestAuth,
) -> Result<Option<Viewer>, ApiError> {
    let anonymous = Viewer {
        account: None,
        sees_public: state.config.auth.anonymous_pull,
        owns_namespace: false,
    };
    let caller = match &auth.identity {
        Identity::Unchecked => return Ok(None),
        Identity::Anonymous => return Ok(Some(anonymous)),
        Identity::Account(caller) => caller.clone(),
        Identity::Token(claims) if claims.sub.is_empty() => return Ok(Some(anonymous)),
        Identity::Token(claims) => match state.meta.account(&claims.sub).await? {
            Some(account) => Caller {
                name: account.name,
                kind: account.kind,
                admin: account.admin,
            },
            None => return Ok(Some(anonymous)),
        },
    };
    if caller.admin {
        return Ok(None);
    }
    Ok(Some(Viewer {
        owns_namespace: caller.kind == AccountKind::User,
        account: Some(caller.name),
        sees_public: true,
    }))
}

// --- the token endpoint -------------------------------------------------------------------

/// `GET /v2/auth?service=...&scope=...`: Docker's token endpoint. Basic
/// credentials, or none for an anonymous token.
pub async fn token(State(state): State<AppState>, request: Request<Body>) -> Response {
    let query = request.uri().query().map(str::to_owned);
    let pairs = crate::http::v2::query_pairs(query.as_deref());
    let address = source_address(&request);
    issue(&state, request.headers(), &pairs, &address, None)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v2/auth`: the OAuth2 password grant
/// (`grant_type=password&username=&password=&service=&scope=`).
pub async fn oauth_token(State(state): State<AppState>, request: Request<Body>) -> Response {
    let address = source_address(&request);
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::Invalid {
                reason: "the form is larger than 64 KiB".into(),
            }
            .into_response()
        }
    };
    let form = String::from_utf8_lossy(&body).into_owned();
    let pairs = crate::http::v2::query_pairs(Some(&form));
    let value = |key: &str| {
        pairs
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.clone())
    };
    if value("grant_type").as_deref() != Some("password") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "error": "unsupported_grant_type",
                "error_description": "only grant_type=password is supported; use GET /v2/auth with Basic credentials otherwise",
            })),
        )
            .into_response();
    }
    let (Some(username), Some(password)) = (value("username"), value("password")) else {
        return ApiError::Invalid {
            reason: "grant_type=password needs username and password".into(),
        }
        .into_response();
    };
    issue(
        &state,
        &parts.headers,
        &pairs,
        &address,
        Some((username, password)),
    )
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

async fn issue(
    state: &AppState,
    headers: &HeaderMap,
    pairs: &[(String, String)],
    address: &str,
    form_credentials: Option<(String, String)>,
) -> Result<Response, ApiError> {
    if !state.config.auth.enabled {
        return Err(ApiError::ResourceUnknown {
            what: "the token endpoint (authorization is off: auth.enabled = false)".into(),
        });
    }
    let auth = &state.config.auth;
    if let Some((_, service)) = pairs.iter().find(|(key, _)| key == "service") {
        if service != &auth.service {
            return Err(ApiError::Invalid {
                reason: format!(
                    "this registry issues tokens for service {:?}, not {service:?}",
                    auth.service
                ),
            });
        }
    }
    let credentials = match form_credentials {
        Some(credentials) => Some(credentials),
        None => match basic_credentials(headers) {
            None => None,
            Some(Ok(credentials)) => Some(credentials),
            Some(Err(())) => {
                return Err(ApiError::Unauthorized {
                    challenge: basic_challenge(state),
                    message: "the Basic credentials are malformed",
                })
            }
        },
    };
    let caller = match credentials {
        None => None,
        Some((name, secret)) => Some(
            login(state, &name, &secret, address, true)
                .await
                .map_err(|error| login_error(state, headers, error, true))?,
        ),
    };
    let scopes = Scope::parse_all(
        pairs
            .iter()
            .filter(|(key, _)| key == "scope")
            .map(|(_, value)| value.as_str()),
    );
    let mut access = Vec::new();
    for requested in &scopes {
        let permitted: Vec<&str> = match requested.resource_type.as_str() {
            scope::REPOSITORY => match requested.name.parse::<RepositoryName>() {
                Ok(repository) => {
                    policy::actions(role(state, caller.as_ref(), &repository).await?).to_vec()
                }
                Err(_) => Vec::new(),
            },
            scope::REGISTRY
                if requested.name == "catalog" && (caller.is_some() || auth.anonymous_pull) =>
            {
                vec!["*"]
            }
            _ => Vec::new(),
        };
        if let Some(granted) = requested.grant(&permitted) {
            access.push(granted);
        }
    }
    let now = kai_meta::unix_now();
    let ttl = auth.token_ttl.as_secs() as i64;
    let claims = Claims {
        iss: auth.service.clone(),
        sub: caller
            .as_ref()
            .map(|caller| caller.name.clone())
            .unwrap_or_default(),
        aud: auth.service.clone(),
        exp: now + ttl,
        nbf: now,
        iat: now,
        jti: kai_auth::secret::generate_id(),
        access,
    };
    let key = signing_key(state).await?;
    let token = key.sign(&claims);
    let issued_at = time::OffsetDateTime::from_unix_timestamp(now)
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let granted: Vec<String> = claims
        .access
        .iter()
        .map(|access| {
            format!(
                "{}:{}:{}",
                access.resource_type,
                access.name,
                access.actions.join(",")
            )
        })
        .collect();
    let body = json!({
        "token": token,
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "issued_at": issued_at,
        "scope": granted.join(" "),
    });
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert("cache-control", "no-store".parse().expect("valid header"));
    Ok(response)
}

// --- start-up and key rotation ------------------------------------------------------------

/// At start with authorization on: makes the first token signing key, and,
/// when there is no user at all, the administrator `admin` with the password
/// in `KAI_ADMIN_PASSWORD` or a generated one, printed once to standard error.
pub async fn bootstrap(state: &AppState) -> anyhow::Result<()> {
    if !state.config.auth.enabled {
        return Ok(());
    }
    signing_key(state)
        .await
        .map_err(|error| anyhow::anyhow!("cannot create the token signing key: {error:?}"))?;
    if state.meta.any_user().await? {
        return Ok(());
    }
    let (password, generated) = match std::env::var("KAI_ADMIN_PASSWORD") {
        Ok(password) if !password.is_empty() => (password, false),
        _ => (kai_auth::secret::generate_password(), true),
    };
    let actor = crate::accounts::Actor::system();
    match crate::accounts::create_user(&state.meta, &actor, "admin", &password, true).await {
        Ok(()) => {
            if generated {
                eprintln!(
                    "kai: created the registry administrator `admin` with the password {password}\n\
                     kai: it is shown only this once; change it with `kai user passwd admin --password-stdin`"
                );
            } else {
                tracing::info!(
                    "created the registry administrator `admin` with the password in KAI_ADMIN_PASSWORD"
                );
            }
            Ok(())
        }
        // Another replica made it first.
        Err(crate::accounts::ManageError::Conflict(_)) => Ok(()),
        Err(error) => Err(anyhow::anyhow!("cannot create the administrator: {error}")),
    }
}
