//! The management REST API under `/api/v1/`: users, organisations, teams,
//! robots, repository visibility and grants, access tokens and the audit log,
//! as JSON. Described by `openapi.json` (served at `/api/v1/openapi.json`).
//!
//! Callers authenticate with a bearer token from `/v2/auth` or with Basic
//! credentials. Each handler checks that the caller may manage what it names
//! (registry administrators may manage everything), then calls the operation
//! in `crate::accounts`, which the command line shares.
//!
//! The router is built from [`ROUTES`], so the test that compares it with the
//! OpenAPI document compares the real routes. Path parameters are single
//! segments: a repository or team name's `/` is sent as `%2F`.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use kai_auth::{AccountKind, Caller, Role, TeamRole};
use kai_oci::RepositoryName;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::accounts::{self, Actor, ManageError};
use crate::app::AppState;
use crate::http::auth::{self, Identity};
use crate::http::error::ApiError;

/// Every route of the API: method and path (relative to `/api/v1`). The
/// router is made from this table; `openapi.json` must describe exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/openapi.json"),
    ("GET", "/user"),
    ("GET", "/users"),
    ("POST", "/users"),
    ("GET", "/users/{name}"),
    ("DELETE", "/users/{name}"),
    ("PUT", "/users/{name}/password"),
    ("GET", "/users/{name}/tokens"),
    ("POST", "/users/{name}/tokens"),
    ("DELETE", "/users/{name}/tokens/{id}"),
    ("POST", "/orgs"),
    ("GET", "/orgs/{org}"),
    ("DELETE", "/orgs/{org}"),
    ("POST", "/orgs/{org}/teams"),
    ("PUT", "/orgs/{org}/teams/{team}/members/{member}"),
    ("DELETE", "/orgs/{org}/teams/{team}/members/{member}"),
    ("GET", "/namespaces/{namespace}/robots"),
    ("POST", "/namespaces/{namespace}/robots"),
    ("DELETE", "/robots/{robot}"),
    ("POST", "/robots/{robot}/token"),
    ("GET", "/repositories/{name}"),
    ("PUT", "/repositories/{name}/visibility"),
    ("GET", "/repositories/{name}/permissions"),
    ("PUT", "/repositories/{name}/permissions/{grantee}"),
    ("DELETE", "/repositories/{name}/permissions/{grantee}"),
    ("GET", "/audit"),
];

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

fn handler(method: &str, path: &str) -> MethodRouter<AppState> {
    let filter = match method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "DELETE" => MethodFilter::DELETE,
        _ => unreachable!("ROUTES has only GET, POST, PUT and DELETE"),
    };
    match (method, path) {
        ("GET", "/openapi.json") => on(filter, openapi),
        ("GET", "/user") => on(filter, current_user),
        ("GET", "/users") => on(filter, list_users),
        ("POST", "/users") => on(filter, create_user),
        ("GET", "/users/{name}") => on(filter, get_user),
        ("DELETE", "/users/{name}") => on(filter, delete_user),
        ("PUT", "/users/{name}/password") => on(filter, set_password),
        ("GET", "/users/{name}/tokens") => on(filter, list_tokens),
        ("POST", "/users/{name}/tokens") => on(filter, create_token),
        ("DELETE", "/users/{name}/tokens/{id}") => on(filter, delete_token),
        ("POST", "/orgs") => on(filter, create_organization),
        ("GET", "/orgs/{org}") => on(filter, get_organization),
        ("DELETE", "/orgs/{org}") => on(filter, delete_organization),
        ("POST", "/orgs/{org}/teams") => on(filter, create_team),
        ("PUT", "/orgs/{org}/teams/{team}/members/{member}") => on(filter, add_member),
        ("DELETE", "/orgs/{org}/teams/{team}/members/{member}") => on(filter, remove_member),
        ("GET", "/namespaces/{namespace}/robots") => on(filter, list_robots),
        ("POST", "/namespaces/{namespace}/robots") => on(filter, create_robot),
        ("DELETE", "/robots/{robot}") => on(filter, delete_robot),
        ("POST", "/robots/{robot}/token") => on(filter, regenerate_robot_token),
        ("GET", "/repositories/{name}") => on(filter, get_repository),
        ("PUT", "/repositories/{name}/visibility") => on(filter, set_visibility),
        ("GET", "/repositories/{name}/permissions") => on(filter, list_permissions),
        ("PUT", "/repositories/{name}/permissions/{grantee}") => on(filter, grant),
        ("DELETE", "/repositories/{name}/permissions/{grantee}") => on(filter, revoke),
        ("GET", "/audit") => on(filter, audit_log),
        _ => unreachable!("every entry of ROUTES has a handler: {method} {path}"),
    }
}

/// The API's router, to be nested under `/api/v1`.
pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    for (method, path) in ROUTES {
        router = router.route(path, handler(method, path));
    }
    router.fallback(|| async {
        ApiError::ResourceUnknown {
            what: "API route (see /api/v1/openapi.json)".into(),
        }
    })
}

impl From<ManageError> for ApiError {
    fn from(error: ManageError) -> Self {
        match error {
            ManageError::Invalid(reason) => ApiError::Invalid { reason },
            ManageError::Conflict(reason) => ApiError::Conflict { reason },
            ManageError::NotFound(what) => ApiError::ResourceUnknown { what },
            ManageError::Meta(error) => error.into(),
            ManageError::Internal(reason) => ApiError::internal(anyhow::anyhow!(reason)),
        }
    }
}

/// The authenticated caller of an API request.
pub struct ApiCaller {
    pub caller: Caller,
    pub address: String,
}

impl ApiCaller {
    fn actor(&self) -> Actor {
        Actor {
            name: self.caller.name.clone(),
            address: self.address.clone(),
        }
    }

    fn require_admin(&self) -> Result<(), ApiError> {
        if self.caller.admin {
            Ok(())
        } else {
            Err(denied("only registry administrators may do this"))
        }
    }

    /// The caller is `user` or an administrator.
    fn require_self_or_admin(&self, user: &str) -> Result<(), ApiError> {
        if self.caller.admin || (self.caller.kind == AccountKind::User && self.caller.name == user)
        {
            Ok(())
        } else {
            Err(denied(&format!(
                "only {user} and registry administrators may do this"
            )))
        }
    }

    /// The caller administers namespace `namespace`: it is that user, an admin
    /// team member of that organisation, or a registry administrator.
    async fn require_namespace_admin(
        &self,
        state: &AppState,
        namespace: &str,
    ) -> Result<(), ApiError> {
        if self.caller.admin {
            return Ok(());
        }
        let manages = match state.meta.account(namespace).await? {
            Some(account) if account.kind == AccountKind::User => {
                self.caller.kind == AccountKind::User && self.caller.name == namespace
            }
            Some(account) if account.kind == AccountKind::Organization => state
                .meta
                .team_roles(&self.caller.name, namespace)
                .await?
                .contains(&TeamRole::Admin),
            _ => false,
        };
        if manages {
            Ok(())
        } else {
            Err(denied(&format!(
                "only administrators of {namespace} may do this"
            )))
        }
    }

    async fn role(
        &self,
        state: &AppState,
        repository: &RepositoryName,
    ) -> Result<Option<Role>, ApiError> {
        auth::role(state, Some(&self.caller), repository).await
    }

    async fn require_repository_admin(
        &self,
        state: &AppState,
        repository: &RepositoryName,
    ) -> Result<(), ApiError> {
        if self.role(state, repository).await? == Some(Role::Admin) {
            Ok(())
        } else {
            Err(denied(&format!(
                "only administrators of {repository} may do this"
            )))
        }
    }
}

fn denied(reason: &str) -> ApiError {
    ApiError::Denied {
        reason: reason.to_owned(),
    }
}

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let address = auth::address_in(&parts.extensions);
        let unauthorized = || ApiError::Unauthorized {
            challenge: auth::basic_challenge(state),
            message:
                "authentication required: send Basic credentials or a bearer token from /v2/auth",
        };
        let caller = match auth::authenticate(state, &parts.headers, &address, true).await {
            // Authorization is off: everything is allowed, as on /v2/.
            Ok(Identity::Unchecked) => Caller {
                name: "anonymous".into(),
                kind: AccountKind::User,
                admin: true,
            },
            Ok(Identity::Anonymous) => return Err(unauthorized()),
            Ok(Identity::Account(caller)) => caller,
            Ok(Identity::Token(claims)) => match state.meta.account(&claims.sub).await? {
                Some(account) if !claims.sub.is_empty() => Caller {
                    name: account.name,
                    kind: account.kind,
                    admin: account.admin,
                },
                _ => return Err(unauthorized()),
            },
            Err(ApiError::Unauthorized { message, .. }) => {
                return Err(ApiError::Unauthorized {
                    challenge: auth::basic_challenge(state),
                    message,
                })
            }
            Err(error) => return Err(error),
        };
        Ok(ApiCaller { caller, address })
    }
}

fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| ApiError::Invalid {
        reason: format!("invalid JSON body: {error} (see /api/v1/openapi.json)"),
    })
}

fn repository_name(name: &str) -> Result<RepositoryName, ApiError> {
    name.parse()
        .map_err(|error: kai_oci::NameError| ApiError::NameInvalid {
            reason: error.to_string(),
        })
}

fn account_json(account: &kai_meta::accounts::Account) -> Value {
    json!({
        "name": account.name,
        "kind": account.kind.as_str(),
        "admin": account.admin,
        "created_at": account.created_at,
    })
}

fn created(value: Value) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

type ApiResult = Result<Response, ApiError>;

async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

// --- users --------------------------------------------------------------------------------

async fn current_user(State(state): State<AppState>, caller: ApiCaller) -> ApiResult {
    let account = state.meta.account(&caller.caller.name).await?;
    Ok(Json(match account {
        Some(account) => account_json(&account),
        None => json!({ "name": caller.caller.name, "kind": "user", "admin": caller.caller.admin }),
    })
    .into_response())
}

async fn list_users(State(state): State<AppState>, caller: ApiCaller) -> ApiResult {
    caller.require_admin()?;
    let users = state.meta.accounts(AccountKind::User).await?;
    Ok(
        Json(json!({ "users": users.iter().map(account_json).collect::<Vec<_>>() }))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

async fn create_user(State(state): State<AppState>, caller: ApiCaller, bytes: Bytes) -> ApiResult {
    caller.require_admin()?;
    let user: NewUser = body(&bytes)?;
    accounts::create_user(
        &state.meta,
        &caller.actor(),
        &user.name,
        &user.password,
        user.admin,
    )
    .await?;
    let account = state.meta.account(&user.name).await?;
    Ok(created(
        account.as_ref().map(account_json).unwrap_or_default(),
    ))
}

async fn get_user(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(name): Path<String>,
) -> ApiResult {
    caller.require_self_or_admin(&name)?;
    match state.meta.account(&name).await? {
        Some(account) if account.kind == AccountKind::User => {
            Ok(Json(account_json(&account)).into_response())
        }
        _ => Err(ApiError::ResourceUnknown {
            what: format!("user {name}"),
        }),
    }
}

async fn delete_user(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(name): Path<String>,
) -> ApiResult {
    caller.require_admin()?;
    match state.meta.account(&name).await? {
        Some(account) if account.kind == AccountKind::User => {}
        _ => {
            return Err(ApiError::ResourceUnknown {
                what: format!("user {name}"),
            })
        }
    }
    accounts::delete_account(&state.meta, &caller.actor(), &name).await?;
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
}

async fn set_password(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    caller.require_self_or_admin(&name)?;
    let password: NewPassword = body(&bytes)?;
    accounts::set_password(&state.meta, &caller.actor(), &name, &password.password).await?;
    Ok(no_content())
}

// --- access tokens ------------------------------------------------------------------------

async fn list_tokens(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(name): Path<String>,
) -> ApiResult {
    caller.require_self_or_admin(&name)?;
    let tokens = state.meta.access_tokens(&name).await?;
    let tokens: Vec<Value> = tokens
        .iter()
        .map(|token| {
            json!({
                "id": token.id,
                "name": token.name,
                "created_at": token.created_at,
                "last_used_at": token.last_used_at,
            })
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default)]
    name: Option<String>,
}

async fn create_token(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    caller.require_self_or_admin(&name)?;
    let request: NewToken = if bytes.is_empty() {
        NewToken { name: None }
    } else {
        body(&bytes)?
    };
    let token_name = request.name.unwrap_or_else(|| "token".into());
    let (id, token) =
        accounts::create_access_token(&state.meta, &caller.actor(), &name, &token_name).await?;
    Ok(created(
        json!({ "id": id, "name": token_name, "token": token }),
    ))
}

async fn delete_token(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult {
    caller.require_self_or_admin(&name)?;
    accounts::delete_access_token(&state.meta, &caller.actor(), &name, &id).await?;
    Ok(no_content())
}

// --- organisations and teams --------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrganization {
    name: String,
    #[serde(default)]
    owner: Option<String>,
}

async fn create_organization(
    State(state): State<AppState>,
    caller: ApiCaller,
    bytes: Bytes,
) -> ApiResult {
    let request: NewOrganization = body(&bytes)?;
    let owner = match request.owner {
        Some(owner) if owner != caller.caller.name => {
            caller.require_admin()?;
            owner
        }
        _ => caller.caller.name.clone(),
    };
    accounts::create_organization(&state.meta, &caller.actor(), &request.name, &owner).await?;
    organization_response(&state, &request.name, StatusCode::CREATED).await
}

async fn organization_response(state: &AppState, org: &str, status: StatusCode) -> ApiResult {
    let teams: Vec<Value> = state
        .meta
        .teams(org)
        .await?
        .into_iter()
        .map(|team| json!({ "name": team.name, "role": team.role.as_str(), "members": team.members }))
        .collect();
    Ok((status, Json(json!({ "name": org, "teams": teams }))).into_response())
}

async fn require_organization(state: &AppState, org: &str) -> Result<(), ApiError> {
    match state.meta.account(org).await? {
        Some(account) if account.kind == AccountKind::Organization => Ok(()),
        _ => Err(ApiError::ResourceUnknown {
            what: format!("organisation {org}"),
        }),
    }
}

async fn get_organization(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(org): Path<String>,
) -> ApiResult {
    require_organization(&state, &org).await?;
    if !caller.caller.admin
        && state
            .meta
            .team_roles(&caller.caller.name, &org)
            .await?
            .is_empty()
    {
        return Err(denied(&format!("only members of {org} may see its teams")));
    }
    organization_response(&state, &org, StatusCode::OK).await
}

async fn delete_organization(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(org): Path<String>,
) -> ApiResult {
    require_organization(&state, &org).await?;
    caller.require_namespace_admin(&state, &org).await?;
    accounts::delete_account(&state.meta, &caller.actor(), &org).await?;
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTeam {
    name: String,
    #[serde(default)]
    role: Option<String>,
}

async fn create_team(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(org): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    require_organization(&state, &org).await?;
    caller.require_namespace_admin(&state, &org).await?;
    let team: NewTeam = body(&bytes)?;
    let role: TeamRole = team
        .role
        .as_deref()
        .unwrap_or("member")
        .parse()
        .map_err(|reason| ApiError::Invalid { reason })?;
    accounts::create_team(
        &state.meta,
        &caller.actor(),
        &format!("{org}/{}", team.name),
        role,
    )
    .await?;
    organization_response(&state, &org, StatusCode::CREATED).await
}

async fn add_member(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path((org, team, member)): Path<(String, String, String)>,
) -> ApiResult {
    caller.require_namespace_admin(&state, &org).await?;
    accounts::add_team_member(
        &state.meta,
        &caller.actor(),
        &format!("{org}/{team}"),
        &member,
    )
    .await?;
    Ok(no_content())
}

async fn remove_member(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path((org, team, member)): Path<(String, String, String)>,
) -> ApiResult {
    caller.require_namespace_admin(&state, &org).await?;
    accounts::remove_team_member(
        &state.meta,
        &caller.actor(),
        &format!("{org}/{team}"),
        &member,
    )
    .await?;
    Ok(no_content())
}

// --- robots -------------------------------------------------------------------------------

async fn robot_json(
    state: &AppState,
    robot: &kai_meta::accounts::Account,
) -> Result<Value, ApiError> {
    let grants: Vec<Value> = state
        .meta
        .grants_to(&robot.name)
        .await?
        .into_iter()
        .map(|grant| json!({ "repository": grant.repository, "role": grant.role.as_str() }))
        .collect();
    Ok(json!({ "name": robot.name, "created_at": robot.created_at, "grants": grants }))
}

async fn list_robots(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(namespace): Path<String>,
) -> ApiResult {
    caller.require_namespace_admin(&state, &namespace).await?;
    let mut robots = Vec::new();
    for robot in state.meta.robots(&namespace).await? {
        robots.push(robot_json(&state, &robot).await?);
    }
    Ok(Json(json!({ "robots": robots })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRobot {
    name: String,
    #[serde(default)]
    grants: Vec<RobotGrant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotGrant {
    repository: String,
    role: String,
}

async fn create_robot(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(namespace): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    caller.require_namespace_admin(&state, &namespace).await?;
    let robot: NewRobot = body(&bytes)?;
    let grants = robot
        .grants
        .iter()
        .map(|grant| {
            grant
                .role
                .parse::<Role>()
                .map(|role| (grant.repository.clone(), role))
                .map_err(|reason| ApiError::Invalid { reason })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let name = format!("{namespace}+{}", robot.name);
    let token = accounts::create_robot(&state.meta, &caller.actor(), &name, &grants).await?;
    let account = state.meta.account(&name).await?.ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("robot {name} vanished after its creation"))
    })?;
    let mut value = robot_json(&state, &account).await?;
    value["token"] = Value::String(token);
    Ok(created(value))
}

async fn robot_namespace_admin(
    state: &AppState,
    caller: &ApiCaller,
    robot: &str,
) -> Result<(), ApiError> {
    let (namespace, _) =
        kai_auth::names::parse_robot(robot).map_err(|error| ApiError::Invalid {
            reason: error.to_string(),
        })?;
    caller.require_namespace_admin(state, namespace).await
}

async fn delete_robot(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(robot): Path<String>,
) -> ApiResult {
    robot_namespace_admin(&state, &caller, &robot).await?;
    match state.meta.account(&robot).await? {
        Some(account) if account.kind == AccountKind::Robot => {}
        _ => {
            return Err(ApiError::ResourceUnknown {
                what: format!("robot {robot}"),
            })
        }
    }
    accounts::delete_account(&state.meta, &caller.actor(), &robot).await?;
    Ok(no_content())
}

async fn regenerate_robot_token(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(robot): Path<String>,
) -> ApiResult {
    robot_namespace_admin(&state, &caller, &robot).await?;
    let token = accounts::regenerate_robot_token(&state.meta, &caller.actor(), &robot).await?;
    Ok(created(json!({ "name": robot, "token": token })))
}

// --- repositories -------------------------------------------------------------------------

async fn get_repository(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(name): Path<String>,
) -> ApiResult {
    let repository = repository_name(&name)?;
    let Some(role) = caller.role(&state, &repository).await? else {
        return Err(denied(&format!(
            "{} may not see {repository}",
            caller.caller.name
        )));
    };
    let visibility = state
        .meta
        .repository_visibility(repository.as_str())
        .await?
        .unwrap_or_else(|| "private".into());
    Ok(Json(json!({
        "name": repository.as_str(),
        "exists": state.meta.repository_exists(&repository).await?,
        "visibility": visibility,
        "role": role.as_str(),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Visibility {
    visibility: String,
}

async fn set_visibility(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let repository = repository_name(&name)?;
    caller.require_repository_admin(&state, &repository).await?;
    let request: Visibility = body(&bytes)?;
    accounts::set_visibility(
        &state.meta,
        &caller.actor(),
        repository.as_str(),
        &request.visibility,
    )
    .await?;
    Ok(no_content())
}

async fn list_permissions(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path(name): Path<String>,
) -> ApiResult {
    let repository = repository_name(&name)?;
    caller.require_repository_admin(&state, &repository).await?;
    let grants: Vec<Value> = state
        .meta
        .grants(repository.as_str())
        .await?
        .into_iter()
        .map(|grant| json!({ "grantee": grant.grantee, "role": grant.role.as_str() }))
        .collect();
    Ok(Json(json!({ "repository": repository.as_str(), "permissions": grants })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRole {
    role: String,
}

async fn grant(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path((name, grantee)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    let repository = repository_name(&name)?;
    caller.require_repository_admin(&state, &repository).await?;
    let request: GrantRole = body(&bytes)?;
    let role: Role = request
        .role
        .parse()
        .map_err(|reason| ApiError::Invalid { reason })?;
    accounts::grant(
        &state.meta,
        &caller.actor(),
        repository.as_str(),
        &grantee,
        role,
    )
    .await?;
    Ok(no_content())
}

async fn revoke(
    State(state): State<AppState>,
    caller: ApiCaller,
    Path((name, grantee)): Path<(String, String)>,
) -> ApiResult {
    let repository = repository_name(&name)?;
    caller.require_repository_admin(&state, &repository).await?;
    accounts::revoke(&state.meta, &caller.actor(), repository.as_str(), &grantee).await?;
    Ok(no_content())
}

// --- audit --------------------------------------------------------------------------------

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
}

async fn audit_log(
    State(state): State<AppState>,
    caller: ApiCaller,
    Query(query): Query<AuditQuery>,
) -> ApiResult {
    caller.require_admin()?;
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let records: Vec<Value> = state
        .meta
        .audit_log(limit)
        .await?
        .into_iter()
        .map(|record| {
            json!({
                "id": record.id,
                "at": record.at,
                "actor": record.entry.actor,
                "address": record.entry.address,
                "action": record.entry.action,
                "target": record.entry.target,
                "outcome": record.entry.outcome,
                "detail": record.entry.detail,
            })
        })
        .collect();
    Ok(Json(json!({ "records": records })).into_response())
}
