//! Managing accounts and access, shared by the command line (`kai user ...`)
//! and the REST API (`/api/v1/...`): each operation checks names, hashes
//! secrets (`kai-auth`), writes through `meta`, and records the audit log.
//!
//! Whether the actor may do it is the caller's business: the command line has
//! the database in hand, the REST API checks first (`http::api`).

use kai_auth::{names, AccountKind, Role, TeamRole};
use kai_meta::accounts::AuditEntry;
use kai_meta::{MetaError, MetaStore};
use kai_oci::RepositoryName;

/// Who is acting, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub address: String,
}

impl Actor {
    /// The registry itself (first start).
    pub fn system() -> Actor {
        Actor {
            name: "kai".into(),
            address: "local".into(),
        }
    }

    /// The command line, as the operating system user running it.
    pub fn command_line() -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Actor {
            name: format!("cli:{user}"),
            address: "local".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{0}")]
    Internal(String),
}

impl From<names::NameError> for ManageError {
    fn from(error: names::NameError) -> Self {
        ManageError::Invalid(error.to_string())
    }
}

pub type Result<T, E = ManageError> = std::result::Result<T, E>;

async fn audit(meta: &MetaStore, actor: &Actor, action: &str, target: &str, detail: &str) {
    let entry = AuditEntry {
        actor: actor.name.clone(),
        address: actor.address.clone(),
        action: action.into(),
        target: target.into(),
        outcome: "success".into(),
        detail: detail.into(),
    };
    if let Err(error) = meta.record_audit(&entry).await {
        tracing::warn!(%error, action, "cannot write the audit log");
    }
}

async fn hash_password(password: &str) -> Result<String> {
    let password = password.to_owned();
    crate::passwords::run(move || kai_auth::password::hash(&password))
        .await
        .map_err(|error| ManageError::Internal(error.to_string()))?
        .map_err(|error| ManageError::Invalid(error.to_string()))
}

fn parse_repository(name: &str) -> Result<RepositoryName> {
    name.parse()
        .map_err(|error: kai_oci::NameError| ManageError::Invalid(format!("{name:?}: {error}")))
}

async fn require_kind(meta: &MetaStore, name: &str, kind: AccountKind) -> Result<()> {
    match meta.account(name).await? {
        Some(account) if account.kind == kind => Ok(()),
        Some(account) => Err(ManageError::Invalid(format!(
            "{name} is a {}, not a {}",
            account.kind.as_str(),
            kind.as_str()
        ))),
        None => Err(ManageError::NotFound(format!(
            "no {} named {name}",
            kind.as_str()
        ))),
    }
}

pub async fn create_user(
    meta: &MetaStore,
    actor: &Actor,
    name: &str,
    password: &str,
    admin: bool,
) -> Result<()> {
    names::check_account(name)?;
    let hash = hash_password(password).await?;
    if !meta
        .create_account(name, AccountKind::User, Some(&hash), None, admin)
        .await?
    {
        return Err(ManageError::Conflict(format!(
            "the name {name} is taken (by a user or an organisation)"
        )));
    }
    let detail = if admin { "administrator" } else { "" };
    audit(meta, actor, "user.create", name, detail).await;
    Ok(())
}

pub async fn set_password(
    meta: &MetaStore,
    actor: &Actor,
    name: &str,
    password: &str,
) -> Result<()> {
    let hash = hash_password(password).await?;
    if !meta.set_password_hash(name, &hash).await? {
        return Err(ManageError::NotFound(format!("no user named {name}")));
    }
    audit(meta, actor, "user.passwd", name, "").await;
    Ok(())
}

/// Deletes a user or an organisation (with its teams and robots) or a robot.
pub async fn delete_account(meta: &MetaStore, actor: &Actor, name: &str) -> Result<()> {
    let Some(account) = meta.account(name).await? else {
        return Err(ManageError::NotFound(format!("no account named {name}")));
    };
    if account.admin {
        let admins = meta
            .accounts(AccountKind::User)
            .await?
            .into_iter()
            .filter(|user| user.admin)
            .count();
        if admins <= 1 {
            return Err(ManageError::Conflict(format!(
                "{name} is the last registry administrator; make another one first \
                 (kai user create NAME --admin)"
            )));
        }
    }
    meta.delete_account(name).await?;
    audit(
        meta,
        actor,
        &format!("{}.delete", kind_word(account.kind)),
        name,
        "",
    )
    .await;
    Ok(())
}

fn kind_word(kind: AccountKind) -> &'static str {
    match kind {
        AccountKind::User => "user",
        AccountKind::Organization => "org",
        AccountKind::Robot => "robot",
    }
}

pub async fn create_organization(
    meta: &MetaStore,
    actor: &Actor,
    name: &str,
    owner: &str,
) -> Result<()> {
    names::check_account(name)?;
    require_kind(meta, owner, AccountKind::User).await?;
    if !meta.create_organization(name, owner).await? {
        return Err(ManageError::Conflict(format!(
            "the name {name} is taken (by a user or an organisation)"
        )));
    }
    audit(meta, actor, "org.create", name, &format!("owner {owner}")).await;
    Ok(())
}

pub async fn create_team(
    meta: &MetaStore,
    actor: &Actor,
    team: &str,
    role: TeamRole,
) -> Result<()> {
    let (organization, name) = names::parse_team(team)?;
    require_kind(meta, organization, AccountKind::Organization).await?;
    if !meta.create_team(organization, name, role).await? {
        return Err(ManageError::Conflict(format!("team {team} exists")));
    }
    audit(meta, actor, "team.create", team, &format!("role {role}")).await;
    Ok(())
}

/// Adds a user, or a robot of the same organisation, to a team.
pub async fn add_team_member(
    meta: &MetaStore,
    actor: &Actor,
    team: &str,
    member: &str,
) -> Result<()> {
    let (organization, name) = names::parse_team(team)?;
    team_must_exist(meta, organization, name).await?;
    match meta.account(member).await? {
        Some(account) if account.kind == AccountKind::User => {}
        Some(account) if account.kind == AccountKind::Robot => {
            let (namespace, _) = names::parse_robot(member)?;
            if namespace != organization {
                return Err(ManageError::Invalid(format!(
                    "robot {member} belongs to {namespace}; only {organization}'s robots may join its teams"
                )));
            }
        }
        Some(_) => {
            return Err(ManageError::Invalid(format!(
                "{member} is an organisation; add users or robots"
            )))
        }
        None => {
            return Err(ManageError::NotFound(format!(
                "no user or robot named {member}"
            )))
        }
    }
    meta.add_team_member(organization, name, member).await?;
    audit(meta, actor, "team.add", team, member).await;
    Ok(())
}

pub async fn remove_team_member(
    meta: &MetaStore,
    actor: &Actor,
    team: &str,
    member: &str,
) -> Result<()> {
    let (organization, name) = names::parse_team(team)?;
    if !meta.remove_team_member(organization, name, member).await? {
        return Err(ManageError::NotFound(format!(
            "{member} is not in team {team}"
        )));
    }
    audit(meta, actor, "team.remove", team, member).await;
    Ok(())
}

async fn team_must_exist(meta: &MetaStore, organization: &str, name: &str) -> Result<()> {
    if meta
        .teams(organization)
        .await?
        .iter()
        .any(|team| team.name == name)
    {
        Ok(())
    } else {
        Err(ManageError::NotFound(format!(
            "no team {organization}/{name}; create it with `kai team create {organization}/{name}`"
        )))
    }
}

/// A repository a robot is granted: `REPO` within its namespace, or the full
/// name, which must be in the namespace.
fn robot_repository(namespace: &str, repository: &str) -> Result<RepositoryName> {
    let full = if repository.contains('/') || repository == namespace {
        repository.to_owned()
    } else {
        format!("{namespace}/{repository}")
    };
    let parsed = parse_repository(&full)?;
    if parsed.namespace() != namespace {
        return Err(ManageError::Invalid(format!(
            "a robot of {namespace} may only be granted {namespace}'s repositories, not {full}"
        )));
    }
    Ok(parsed)
}

/// Creates a robot `NAMESPACE+NAME` with grants; returns its token, which is
/// stored only as a digest.
pub async fn create_robot(
    meta: &MetaStore,
    actor: &Actor,
    robot: &str,
    grants: &[(String, Role)],
) -> Result<String> {
    let (namespace, _) = names::parse_robot(robot)?;
    match meta.account(namespace).await? {
        Some(account) if account.kind != AccountKind::Robot => {}
        _ => {
            return Err(ManageError::NotFound(format!(
                "no user or organisation named {namespace}"
            )))
        }
    }
    let repositories = grants
        .iter()
        .map(|(repository, role)| Ok((robot_repository(namespace, repository)?, *role)))
        .collect::<Result<Vec<_>>>()?;
    let token = kai_auth::secret::generate_token("robot");
    let digest = kai_auth::secret::token_digest(&token);
    if !meta
        .create_account(robot, AccountKind::Robot, None, Some(&digest), false)
        .await?
    {
        return Err(ManageError::Conflict(format!("robot {robot} exists")));
    }
    audit(meta, actor, "robot.create", robot, "").await;
    for (repository, role) in repositories {
        meta.grant(repository.as_str(), robot, role).await?;
        audit(
            meta,
            actor,
            "repo.grant",
            repository.as_str(),
            &format!("{robot} {role}"),
        )
        .await;
    }
    Ok(token)
}

/// Replaces a robot's token (the old one stops working); returns the new one.
pub async fn regenerate_robot_token(
    meta: &MetaStore,
    actor: &Actor,
    robot: &str,
) -> Result<String> {
    let token = kai_auth::secret::generate_token("robot");
    if !meta
        .set_robot_token_hash(robot, &kai_auth::secret::token_digest(&token))
        .await?
    {
        return Err(ManageError::NotFound(format!("no robot named {robot}")));
    }
    audit(meta, actor, "robot.token", robot, "regenerated").await;
    Ok(token)
}

pub async fn set_visibility(
    meta: &MetaStore,
    actor: &Actor,
    repository: &str,
    visibility: &str,
) -> Result<()> {
    let repository = parse_repository(repository)?;
    if !matches!(visibility, "public" | "private") {
        return Err(ManageError::Invalid(format!(
            "visibility must be public or private, not {visibility:?}"
        )));
    }
    meta.set_repository_visibility(repository.as_str(), visibility)
        .await?;
    audit(
        meta,
        actor,
        "repo.visibility",
        repository.as_str(),
        visibility,
    )
    .await;
    Ok(())
}

/// Checks that a grantee exists: a user, a robot, or a team `ORG/TEAM`.
async fn grantee_must_exist(meta: &MetaStore, grantee: &str) -> Result<()> {
    if grantee.contains('/') {
        let (organization, name) = names::parse_team(grantee)?;
        return team_must_exist(meta, organization, name).await;
    }
    match meta.account(grantee).await? {
        Some(account) if account.kind != AccountKind::Organization => Ok(()),
        Some(_) => Err(ManageError::Invalid(format!(
            "{grantee} is an organisation: grant to one of its teams (ORG/TEAM)"
        ))),
        None => Err(ManageError::NotFound(format!(
            "no user, robot or team named {grantee}"
        ))),
    }
}

pub async fn grant(
    meta: &MetaStore,
    actor: &Actor,
    repository: &str,
    grantee: &str,
    role: Role,
) -> Result<()> {
    let repository = parse_repository(repository)?;
    grantee_must_exist(meta, grantee).await?;
    if names::is_robot(grantee) {
        let (namespace, _) = names::parse_robot(grantee)?;
        robot_repository(namespace, repository.as_str())?;
    }
    meta.grant(repository.as_str(), grantee, role).await?;
    audit(
        meta,
        actor,
        "repo.grant",
        repository.as_str(),
        &format!("{grantee} {role}"),
    )
    .await;
    Ok(())
}

pub async fn revoke(
    meta: &MetaStore,
    actor: &Actor,
    repository: &str,
    grantee: &str,
) -> Result<()> {
    let repository = parse_repository(repository)?;
    if !meta.revoke(repository.as_str(), grantee).await? {
        return Err(ManageError::NotFound(format!(
            "{grantee} has no grant on {repository}"
        )));
    }
    audit(meta, actor, "repo.revoke", repository.as_str(), grantee).await;
    Ok(())
}

/// Creates a personal access token for a user; returns `(id, token)`.
pub async fn create_access_token(
    meta: &MetaStore,
    actor: &Actor,
    user: &str,
    name: &str,
) -> Result<(String, String)> {
    require_kind(meta, user, AccountKind::User).await?;
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ManageError::Invalid(
            "a token name is 1 to 100 printable characters".into(),
        ));
    }
    let id = kai_auth::secret::generate_id();
    let token = kai_auth::secret::generate_token("pat");
    meta.create_access_token(&id, user, name, &kai_auth::secret::token_digest(&token))
        .await?;
    audit(meta, actor, "token.create", user, &format!("{id} {name}")).await;
    Ok((id, token))
}

pub async fn delete_access_token(
    meta: &MetaStore,
    actor: &Actor,
    user: &str,
    id: &str,
) -> Result<()> {
    if !meta.delete_access_token(user, id).await? {
        return Err(ManageError::NotFound(format!("{user} has no token {id}")));
    }
    audit(meta, actor, "token.delete", user, id).await;
    Ok(())
}

/// Makes a new token signing key; tokens signed by the old ones still verify
/// until they expire. Keys retired longer than `token_ttl` ago are removed.
/// Returns the new key's id.
pub async fn rotate_signing_key(meta: &MetaStore, actor: &Actor, token_ttl: i64) -> Result<String> {
    let key = kai_auth::SigningKey::generate();
    meta.add_signing_key(&key.id, kai_auth::jwt::ALGORITHM, &key.seed(), true)
        .await?;
    meta.delete_retired_signing_keys(kai_meta::unix_now() - token_ttl - 60)
        .await?;
    audit(meta, actor, "key.rotate", &key.id, "").await;
    Ok(key.id)
}
