//! Accounts and access: users, organisations, robots, teams, repository
//! visibility and grants, personal access tokens, token signing keys, failed
//! login counters, the audit log, and which account owns an upload session.
//!
//! Like the rest of this crate, the SQL runs unchanged on SQLite and
//! PostgreSQL. Secrets arrive here already hashed (`kai-auth` hashes them);
//! this module stores and finds, and decides nothing: the rules are in
//! `kai_auth::policy`, fed by [`MetaStore::repository_facts`].

use kai_auth::{AccountKind, RepositoryFacts, Role, TeamRole};
use kai_oci::RepositoryName;
use sqlx::Row;

use kai_oci::Digest;

use crate::{
    link_blob_rows, now, Durability, MetaError, MetaStore, Result, StatementArguments, Upload,
};

/// A user, organisation or robot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub kind: AccountKind,
    pub admin: bool,
    pub created_at: i64,
}

/// An account with its stored secret hashes, for checking credentials.
#[derive(Clone)]
pub struct AccountSecrets {
    pub account: Account,
    /// Users: the argon2id PHC string.
    pub password_hash: Option<String>,
    /// Robots: the SHA-256 (hex) of the token.
    pub token_hash: Option<String>,
}

impl std::fmt::Debug for AccountSecrets {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AccountSecrets")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub organization: String,
    pub name: String,
    pub role: TeamRole,
    pub members: Vec<String>,
}

/// A grant of a role on a repository to a user, robot or team (`ORG/TEAM`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub repository: String,
    pub grantee: String,
    pub role: Role,
}

/// A personal access token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub id: String,
    pub account: String,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A stored token signing key.
#[derive(Clone)]
pub struct StoredSigningKey {
    pub id: String,
    pub algorithm: String,
    pub private_key: Vec<u8>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for StoredSigningKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StoredSigningKey")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// Who is listing repositories, for a filtered catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// The account, or `None` for anonymous.
    pub account: Option<String>,
    /// Whether public repositories are visible to this viewer.
    pub sees_public: bool,
    /// Whether the account is a user, owning the namespace of its name.
    pub owns_namespace: bool,
}

/// Something to write in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The account, `anonymous`, or `cli:<os user>` for the command line.
    pub actor: String,
    /// The source address, or `local` for the command line.
    pub address: String,
    /// `login`, `push`, `delete`, `tag.move`, `user.create`, `repo.grant`, ...
    pub action: String,
    /// What it acted on: a repository (`acme/app:v1`), an account, ...
    pub target: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// Anything else worth keeping (never a secret).
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    pub entry: AuditEntry,
}

fn account_from_row(row: &sqlx::any::AnyRow) -> Account {
    let kind: String = row.get("kind");
    Account {
        name: row.get("name"),
        kind: kind.parse().unwrap_or(AccountKind::User),
        admin: row.get::<i64, _>("admin") != 0,
        created_at: row.get("created_at"),
    }
}

const ACCOUNT_COLUMNS: &str = "name, kind, admin, created_at";

impl MetaStore {
    // --- accounts ---------------------------------------------------------------------------

    /// Creates an account. Returns false if the name is taken.
    pub async fn create_account(
        &self,
        name: &str,
        kind: AccountKind,
        password_hash: Option<&str>,
        token_hash: Option<&str>,
        admin: bool,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO accounts (name, kind, password_hash, token_hash, admin, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(kind.as_str())
        .bind(password_hash)
        .bind(token_hash)
        .bind(i64::from(admin))
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(inserted.rows_affected() > 0)
    }

    /// Creates an organisation with an `owners` team (role admin) holding
    /// `owner`, in one transaction. Returns false if the name is taken.
    pub async fn create_organization(&self, name: &str, owner: &str) -> Result<bool> {
        let now = now();
        let mut transaction = self.writer.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO accounts (name, kind, admin, created_at) VALUES ($1, 'organization', 0, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO teams (organization, name, role, created_at) VALUES ($1, 'owners', 'admin', $2)",
        )
        .bind(name)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO team_members (organization, team, member) VALUES ($1, 'owners', $2)",
        )
        .bind(name)
        .bind(owner)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(true)
    }

    pub async fn account(&self, name: &str) -> Result<Option<Account>> {
        let row = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.as_ref().map(account_from_row))
    }

    pub async fn account_secrets(&self, name: &str) -> Result<Option<AccountSecrets>> {
        let row = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS}, password_hash, token_hash FROM accounts WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|row| AccountSecrets {
            account: account_from_row(&row),
            password_hash: row.get("password_hash"),
            token_hash: row.get("token_hash"),
        }))
    }

    /// All accounts of a kind, by name.
    pub async fn accounts(&self, kind: AccountKind) -> Result<Vec<Account>> {
        let rows = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE kind = $1 ORDER BY name"
        ))
        .bind(kind.as_str())
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.iter().map(account_from_row).collect())
    }

    /// The robots of a namespace (`NAMESPACE+...`), by name.
    pub async fn robots(&self, namespace: &str) -> Result<Vec<Account>> {
        let rows = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE kind = 'robot' \
             AND substr(name, 1, length(CAST($1 AS TEXT)) + 1) = CAST($1 AS TEXT) || '+' ORDER BY name"
        ))
        .bind(namespace)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.iter().map(account_from_row).collect())
    }

    /// Whether any user account exists (the first start creates `admin` if not).
    pub async fn any_user(&self) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM accounts WHERE kind = 'user' LIMIT 1")
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.is_some())
    }

    /// Replaces a user's password hash. Returns false if there is no such user.
    pub async fn set_password_hash(&self, user: &str, password_hash: &str) -> Result<bool> {
        let updated =
            sqlx::query("UPDATE accounts SET password_hash = $1 WHERE name = $2 AND kind = 'user'")
                .bind(password_hash)
                .bind(user)
                .execute(&self.writer)
                .await?;
        Ok(updated.rows_affected() > 0)
    }

    /// Replaces a robot's token hash (the old token stops working). Returns
    /// false if there is no such robot.
    pub async fn set_robot_token_hash(&self, robot: &str, token_hash: &str) -> Result<bool> {
        let updated =
            sqlx::query("UPDATE accounts SET token_hash = $1 WHERE name = $2 AND kind = 'robot'")
                .bind(token_hash)
                .bind(robot)
                .execute(&self.writer)
                .await?;
        Ok(updated.rows_affected() > 0)
    }

    /// Deletes an account with everything that belongs to it: its tokens, team
    /// memberships and grants; for a user or organisation also its robots;
    /// for an organisation its teams and their grants. Repositories stay.
    /// Returns false if there was no such account.
    pub async fn delete_account(&self, name: &str) -> Result<bool> {
        let mut transaction = self.writer.begin().await?;
        // Grants to the account, to its robots and (organisations) to its teams.
        sqlx::query(
            "DELETE FROM permissions WHERE grantee = $1 \
             OR substr(grantee, 1, length(CAST($1 AS TEXT)) + 1) = CAST($1 AS TEXT) || '+' \
             OR substr(grantee, 1, length(CAST($1 AS TEXT)) + 1) = CAST($1 AS TEXT) || '/'",
        )
        .bind(name)
        .execute(&mut *transaction)
        .await?;
        for statement in [
            "DELETE FROM access_tokens WHERE account = $1 \
             OR substr(account, 1, length(CAST($1 AS TEXT)) + 1) = CAST($1 AS TEXT) || '+'",
            "DELETE FROM team_members WHERE member = $1 OR organization = $1 \
             OR substr(member, 1, length(CAST($1 AS TEXT)) + 1) = CAST($1 AS TEXT) || '+'",
            "DELETE FROM teams WHERE organization = $1",
            "DELETE FROM accounts WHERE kind = 'robot' \
             AND substr(name, 1, length(CAST($1 AS TEXT)) + 1) = CAST($1 AS TEXT) || '+'",
        ] {
            sqlx::query(statement)
                .bind(name)
                .execute(&mut *transaction)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM accounts WHERE name = $1")
            .bind(name)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    // --- teams ------------------------------------------------------------------------------

    /// Creates a team in an organisation. Returns false if it exists.
    pub async fn create_team(
        &self,
        organization: &str,
        team: &str,
        role: TeamRole,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO teams (organization, name, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (organization, name) DO NOTHING",
        )
        .bind(organization)
        .bind(team)
        .bind(role.as_str())
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(inserted.rows_affected() > 0)
    }

    /// Adds a user or robot to a team. Returns false if it was a member already.
    pub async fn add_team_member(
        &self,
        organization: &str,
        team: &str,
        member: &str,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO team_members (organization, team, member) VALUES ($1, $2, $3) \
             ON CONFLICT (organization, team, member) DO NOTHING",
        )
        .bind(organization)
        .bind(team)
        .bind(member)
        .execute(&self.writer)
        .await?;
        Ok(inserted.rows_affected() > 0)
    }

    /// Removes a member from a team. Returns whether it was one.
    pub async fn remove_team_member(
        &self,
        organization: &str,
        team: &str,
        member: &str,
    ) -> Result<bool> {
        let deleted = sqlx::query(
            "DELETE FROM team_members WHERE organization = $1 AND team = $2 AND member = $3",
        )
        .bind(organization)
        .bind(team)
        .bind(member)
        .execute(&self.writer)
        .await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// An organisation's teams with their members, by name.
    pub async fn teams(&self, organization: &str) -> Result<Vec<Team>> {
        let rows = sqlx::query(
            "SELECT t.name, t.role, m.member FROM teams t \
             LEFT JOIN team_members m ON m.organization = t.organization AND m.team = t.name \
             WHERE t.organization = $1 ORDER BY t.name, m.member",
        )
        .bind(organization)
        .fetch_all(&self.reader)
        .await?;
        let mut teams: Vec<Team> = Vec::new();
        for row in rows {
            let name: String = row.get(0);
            let role: String = row.get(1);
            let member: Option<String> = row.get(2);
            if teams.last().is_none_or(|team| team.name != name) {
                teams.push(Team {
                    organization: organization.to_owned(),
                    name,
                    role: role.parse().unwrap_or(TeamRole::Member),
                    members: Vec::new(),
                });
            }
            if let (Some(member), Some(team)) = (member, teams.last_mut()) {
                team.members.push(member);
            }
        }
        Ok(teams)
    }

    /// The caller's teams' roles in `organization`.
    pub async fn team_roles(&self, member: &str, organization: &str) -> Result<Vec<TeamRole>> {
        let rows = sqlx::query(
            "SELECT t.role FROM team_members m JOIN teams t \
             ON t.organization = m.organization AND t.name = m.team \
             WHERE m.member = $1 AND m.organization = $2",
        )
        .bind(member)
        .bind(organization)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.get::<String, _>(0).parse().ok())
            .collect())
    }

    // --- repositories: visibility and grants ------------------------------------------------

    /// `public` or `private` if the repository has a visibility setting.
    pub async fn repository_visibility(&self, repository: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT visibility FROM repository_settings WHERE repository = $1")
            .bind(repository)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Records a new repository's visibility unless it has one. Returns
    /// whether it was recorded.
    pub async fn create_repository_settings(
        &self,
        repository: &str,
        visibility: &str,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO repository_settings (repository, visibility, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (repository) DO NOTHING",
        )
        .bind(repository)
        .bind(visibility)
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(inserted.rows_affected() > 0)
    }

    /// Sets a repository's visibility (`public` or `private`).
    pub async fn set_repository_visibility(
        &self,
        repository: &str,
        visibility: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO repository_settings (repository, visibility, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (repository) DO UPDATE SET visibility = excluded.visibility",
        )
        .bind(repository)
        .bind(visibility)
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Grants `role` on `repository` to a user, robot or team (`ORG/TEAM`),
    /// replacing an earlier grant.
    pub async fn grant(&self, repository: &str, grantee: &str, role: Role) -> Result<()> {
        sqlx::query(
            "INSERT INTO permissions (repository, grantee, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (repository, grantee) DO UPDATE SET role = excluded.role",
        )
        .bind(repository)
        .bind(grantee)
        .bind(role.as_str())
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Removes a grant. Returns whether there was one.
    pub async fn revoke(&self, repository: &str, grantee: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM permissions WHERE repository = $1 AND grantee = $2")
            .bind(repository)
            .bind(grantee)
            .execute(&self.writer)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// The grants on a repository, by grantee.
    pub async fn grants(&self, repository: &str) -> Result<Vec<Grant>> {
        let rows = sqlx::query(
            "SELECT repository, grantee, role FROM permissions WHERE repository = $1 ORDER BY grantee",
        )
        .bind(repository)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.iter().map(grant_from_row).collect())
    }

    /// The grants to one grantee (a robot's repositories, say), by repository.
    pub async fn grants_to(&self, grantee: &str) -> Result<Vec<Grant>> {
        let rows = sqlx::query(
            "SELECT repository, grantee, role FROM permissions WHERE grantee = $1 ORDER BY repository",
        )
        .bind(grantee)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.iter().map(grant_from_row).collect())
    }

    /// Everything the permission rules need about `caller` (an account name,
    /// `None` for anonymous) and `repository`.
    pub async fn repository_facts(
        &self,
        caller: Option<&str>,
        repository: &RepositoryName,
    ) -> Result<RepositoryFacts> {
        let namespace = repository.namespace();
        let namespace_kind = sqlx::query("SELECT kind FROM accounts WHERE name = $1")
            .bind(namespace)
            .fetch_optional(&self.reader)
            .await?
            .and_then(|row| row.get::<String, _>(0).parse().ok());
        let public = self
            .repository_visibility(repository.as_str())
            .await?
            .is_some_and(|visibility| visibility == "public");
        let mut facts = RepositoryFacts {
            namespace_kind,
            public,
            ..RepositoryFacts::default()
        };
        let Some(caller) = caller else {
            return Ok(facts);
        };
        if namespace_kind == Some(AccountKind::Organization) {
            facts.team_roles = self.team_roles(caller, namespace).await?;
        }
        let rows = sqlx::query(
            "SELECT role FROM permissions WHERE repository = $1 AND (grantee = $2 OR grantee IN \
             (SELECT CAST(organization AS TEXT) || '/' || CAST(team AS TEXT) FROM team_members WHERE member = $2))",
        )
        .bind(repository.as_str())
        .bind(caller)
        .fetch_all(&self.reader)
        .await?;
        facts.grants = rows
            .iter()
            .filter_map(|row| row.get::<String, _>(0).parse().ok())
            .collect();
        Ok(facts)
    }

    /// Up to `limit` repository names after `last`, in byte order, that
    /// `viewer` may see: public ones (if it sees those), those of its own
    /// namespace, of organisations it is in a team of, and those granted to
    /// it directly or through a team.
    pub async fn visible_repositories(
        &self,
        viewer: &Viewer,
        last: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>> {
        let account = viewer.account.as_deref().unwrap_or("");
        let rows = sqlx::query(
            "SELECT r.name FROM repositories r \
             LEFT JOIN repository_settings s ON s.repository = r.name \
             WHERE r.name > $1 AND ( \
               ($2 = 1 AND s.visibility = 'public') \
               OR ($3 = 1 AND (r.name = $4 OR substr(r.name, 1, length(CAST($4 AS TEXT)) + 1) = CAST($4 AS TEXT) || '/')) \
               OR EXISTS (SELECT 1 FROM permissions p WHERE p.repository = r.name AND (p.grantee = $4 OR p.grantee IN \
                  (SELECT CAST(m.organization AS TEXT) || '/' || CAST(m.team AS TEXT) FROM team_members m WHERE m.member = $4))) \
               OR EXISTS (SELECT 1 FROM team_members m WHERE m.member = $4 AND (r.name = m.organization \
                  OR substr(r.name, 1, length(m.organization) + 1) = CAST(m.organization AS TEXT) || '/')) \
             ) ORDER BY r.name LIMIT $5",
        )
        .bind(last.unwrap_or(""))
        .bind(i64::from(viewer.sees_public))
        .bind(i64::from(viewer.owns_namespace && viewer.account.is_some()))
        .bind(account)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(|row| row.get(0)).collect())
    }

    /// The digest a tag names, if the tag exists.
    pub async fn tag_digest(
        &self,
        repository: &RepositoryName,
        tag: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query("SELECT digest FROM tags WHERE repository = $1 AND name = $2")
            .bind(repository.as_str())
            .bind(tag)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    // --- personal access tokens -------------------------------------------------------------

    pub async fn create_access_token(
        &self,
        id: &str,
        account: &str,
        name: &str,
        token_hash: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO access_tokens (id, account, name, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(account)
        .bind(name)
        .bind(token_hash)
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// An account's tokens, newest first, without their hashes.
    pub async fn access_tokens(&self, account: &str) -> Result<Vec<AccessToken>> {
        let rows = sqlx::query(
            "SELECT id, account, name, created_at, last_used_at FROM access_tokens \
             WHERE account = $1 ORDER BY created_at DESC, id",
        )
        .bind(account)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| AccessToken {
                id: row.get(0),
                account: row.get(1),
                name: row.get(2),
                created_at: row.get(3),
                last_used_at: row.get(4),
            })
            .collect())
    }

    /// `(id, token hash)` of each of an account's tokens, for checking a
    /// presented token against all of them.
    pub async fn access_token_hashes(&self, account: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT id, token_hash FROM access_tokens WHERE account = $1")
            .bind(account)
            .fetch_all(&self.reader)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    /// Notes that a token was used, at most once a minute per token.
    pub async fn touch_access_token(&self, id: &str) -> Result<()> {
        let now = now();
        sqlx::query(
            "UPDATE access_tokens SET last_used_at = $1 WHERE id = $2 \
             AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(now)
        .bind(id)
        .bind(now - 60)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Revokes one of an account's tokens. Returns whether it existed.
    pub async fn delete_access_token(&self, account: &str, id: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM access_tokens WHERE account = $1 AND id = $2")
            .bind(account)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    // --- token signing keys -----------------------------------------------------------------

    /// Every stored key, newest first.
    pub async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>> {
        let rows = sqlx::query(
            "SELECT id, algorithm, private_key, created_at, retired_at FROM signing_keys \
             ORDER BY created_at DESC, id DESC",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| StoredSigningKey {
                id: row.get(0),
                algorithm: row.get(1),
                private_key: row.get(2),
                created_at: row.get(3),
                retired_at: row.get(4),
            })
            .collect())
    }

    /// Stores a key as the one that signs from now on. With `rotate`, the
    /// keys signing until now are retired (they still verify); without it, the
    /// key is stored only if no key signs yet (the first start), and the
    /// return value says whether it was.
    pub async fn add_signing_key(
        &self,
        id: &str,
        algorithm: &str,
        private_key: &[u8],
        rotate: bool,
    ) -> Result<bool> {
        let now = now();
        let mut transaction = self.writer.begin().await?;
        if rotate {
            sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
                .bind(now)
                .execute(&mut *transaction)
                .await?;
        } else {
            let active = sqlx::query("SELECT 1 FROM signing_keys WHERE retired_at IS NULL LIMIT 1")
                .fetch_optional(&mut *transaction)
                .await?;
            if active.is_some() {
                return Ok(false);
            }
        }
        sqlx::query(
            "INSERT INTO signing_keys (id, algorithm, private_key, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(algorithm)
        .bind(private_key)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(true)
    }

    /// Removes keys retired before `before` (unix seconds): every token they
    /// signed has expired. Returns how many.
    pub async fn delete_retired_signing_keys(&self, before: i64) -> Result<u64> {
        let deleted = sqlx::query(
            "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1",
        )
        .bind(before)
        .execute(&self.writer)
        .await?;
        Ok(deleted.rows_affected())
    }

    // --- failed logins ----------------------------------------------------------------------

    /// Until when (unix seconds) logins for any of `keys` are refused, if
    /// that is later than `now`.
    pub async fn login_blocked_until(&self, keys: &[&str], now: i64) -> Result<Option<i64>> {
        let mut until: Option<i64> = None;
        for key in keys {
            let row = sqlx::query(
                "SELECT blocked_until FROM login_failures WHERE key = $1 AND blocked_until > $2",
            )
            .bind(*key)
            .bind(now)
            .fetch_optional(&self.reader)
            .await?;
            if let Some(row) = row {
                until = until.max(Some(row.get(0)));
            }
        }
        Ok(until)
    }

    /// Counts a failed login for `key`. Failures older than `window` seconds
    /// are forgotten; the `limit`-th within the window blocks the key for
    /// `lockout` seconds. Returns the new count.
    pub async fn record_login_failure(
        &self,
        key: &str,
        now: i64,
        window: i64,
        limit: i64,
        lockout: i64,
    ) -> Result<i64> {
        let mut transaction = self.writer.begin().await?;
        let row =
            sqlx::query("SELECT failures, first_failure_at FROM login_failures WHERE key = $1")
                .bind(key)
                .fetch_optional(&mut *transaction)
                .await?;
        let (failures, first) = match row {
            Some(row) if row.get::<i64, _>(1) + window > now => {
                (row.get::<i64, _>(0) + 1, row.get(1))
            }
            _ => (1, now),
        };
        let blocked_until = if failures >= limit { now + lockout } else { 0 };
        sqlx::query(
            "INSERT INTO login_failures (key, failures, first_failure_at, blocked_until) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, \
             first_failure_at = excluded.first_failure_at, blocked_until = excluded.blocked_until",
        )
        .bind(key)
        .bind(failures)
        .bind(first)
        .bind(blocked_until)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(failures)
    }

    /// Forgets the failed logins of `key` (after a successful login).
    pub async fn clear_login_failures(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE key = $1")
            .bind(key)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    // --- audit log --------------------------------------------------------------------------

    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, address, action, target, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now())
        .bind(&entry.actor)
        .bind(&entry.address)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.outcome)
        .bind(&entry.detail)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The newest `limit` audit records, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, address, action, target, outcome, detail FROM audit_log \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| AuditRecord {
                id: row.get(0),
                at: row.get(1),
                entry: AuditEntry {
                    actor: row.get(2),
                    address: row.get(3),
                    action: row.get(4),
                    target: row.get(5),
                    outcome: row.get(6),
                    detail: row.get(7),
                },
            })
            .collect())
    }

    // --- upload owners ----------------------------------------------------------------------

    /// Records a new upload session, owned by `owner` (`None` while
    /// authorization is off). Its commit is relaxed: a power loss right after
    /// may forget the session, and the client then gets `BLOB_UPLOAD_UNKNOWN`
    /// and starts again. Any later durable commit (the upload's first
    /// acknowledged bytes, say) makes it durable too, because commits reach
    /// the disk in order.
    pub async fn create_owned_upload(
        &self,
        id: &str,
        repository: &RepositoryName,
        owner: Option<&str>,
    ) -> Result<()> {
        let now = now();
        let (id, repository) = (id.to_owned(), repository.as_str().to_owned());
        let owner = owner.map(str::to_owned);
        let arguments = StatementArguments::default()
            .with(id)?
            .with(repository)?
            .with(now)?
            .with(owner)?;
        self.write_statement(
            Durability::Relaxed,
            "INSERT INTO uploads (id, repository, size, created_at, updated_at, owner) \
             VALUES ($1, $2, 0, $3, $3, $4)",
            arguments,
        )
        .await
    }

    /// Ends upload `upload` and stores the blob it delivered (`content`,
    /// verified as `digest` by the caller) in `repository`, in one durable
    /// commit, if the session belongs to `repository` and to `owner` (or to
    /// no one) and holds no staged bytes. Returns whether it did; otherwise
    /// nothing changes, and the caller reads the session to say why. This is
    /// [`Self::owned_upload`] and [`MetaStore::finish_upload`] in one trip to
    /// the database's writer: a small blob pushed as a POST and a PUT then
    /// costs one commit and no read.
    pub async fn finish_owned_unstaged_upload(
        &self,
        upload: &str,
        repository: &RepositoryName,
        owner: Option<&str>,
        digest: &Digest,
        content: Vec<u8>,
    ) -> Result<bool> {
        let now = now();
        let size = content.len() as i64;
        let (upload, repository) = (upload.to_owned(), repository.as_str().to_owned());
        let (digest, owner) = (digest.to_string(), owner.map(str::to_owned));
        if let Some(committer) = &self.grouped {
            let arguments = StatementArguments::default()
                .with(upload)?
                .with(repository)?
                .with(digest)?
                .with(size)?
                .with(now)?
                .with(content)?
                .with(owner)?;
            let ended = committer
                .write_statement(
                    Durability::Durable,
                    FINISH_OWNED_UNSTAGED_UPLOAD_SQLITE,
                    arguments.0,
                )
                .await?;
            return match ended {
                Some(count) => Ok(count == 1),
                None => Err(MetaError::NotCommitted(
                    "finishing an upload returned no count of ended sessions".into(),
                )),
            };
        }
        self.write(move |connection| {
            Box::pin(async move {
                let ended = sqlx::query(
                    "DELETE FROM uploads WHERE id = $1 AND repository = $2 AND size = 0 \
                     AND (owner IS NULL OR owner = $3)",
                )
                .bind(&upload)
                .bind(&repository)
                .bind(owner)
                .execute(&mut *connection)
                .await?
                .rows_affected();
                if ended != 1 {
                    return Ok(false);
                }
                link_blob_rows(
                    connection,
                    &repository,
                    &digest,
                    size as u64,
                    now,
                    Some(content),
                )
                .await?;
                Ok(true)
            })
        })
        .await
    }

    /// An upload session with the account that owns it (`None` if unowned).
    pub async fn owned_upload(&self, id: &str) -> Result<Option<(Upload, Option<String>)>> {
        let row = sqlx::query(
            "SELECT id, repository, size, created_at, updated_at, owner FROM uploads WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|row| {
            (
                Upload {
                    id: row.get(0),
                    repository: row.get(1),
                    size: row.get::<i64, _>(2) as u64,
                    created_at: row.get(3),
                    updated_at: row.get(4),
                },
                row.get(5),
            )
        }))
    }
}

fn grant_from_row(row: &sqlx::any::AnyRow) -> Grant {
    Grant {
        repository: row.get(0),
        grantee: row.get(1),
        role: row.get::<String, _>(2).parse().unwrap_or(Role::Read),
    }
}

/// The condition of `FINISH_OWNED_UNSTAGED_UPLOAD_SQLITE`: session `$1`
/// belongs to repository `$2` and to account `$7` (or to no one), and holds
/// no staged bytes.
macro_rules! unstaged_owned_session {
    () => {
        "EXISTS (SELECT 1 FROM uploads WHERE id = $1 AND repository = $2 AND size = 0 \
         AND (owner IS NULL OR owner = $7))"
    };
}

/// `LINK_BLOB_SQLITE` with the blob's content, each statement only if the
/// session qualifies, and its deletion last: `changes()` then counts the
/// sessions ended, 1 or 0. One SQL text, so that alone it is one trip to the
/// connection's thread. Arguments: upload, repository, digest, size, now,
/// content, owner.
const FINISH_OWNED_UNSTAGED_UPLOAD_SQLITE: &str = concat!(
    "INSERT INTO repositories (name, created_at) SELECT $2, $5 WHERE ",
    unstaged_owned_session!(),
    " ON CONFLICT (name) DO NOTHING; ",
    "INSERT INTO blobs (digest, size, created_at) SELECT $3, $4, $5 WHERE ",
    unstaged_owned_session!(),
    " ON CONFLICT (digest) DO NOTHING; ",
    "INSERT INTO repository_blobs (repository, digest, created_at) SELECT $2, $3, $5 WHERE ",
    unstaged_owned_session!(),
    " ON CONFLICT (repository, digest) DO NOTHING; ",
    "INSERT INTO blob_contents (digest, content) SELECT $3, $6 WHERE ",
    unstaged_owned_session!(),
    " ON CONFLICT (digest) DO NOTHING; ",
    "DELETE FROM uploads WHERE id = $1 AND repository = $2 AND size = 0 \
     AND (owner IS NULL OR owner = $7); ",
    "SELECT changes()"
);

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (MetaStore, tempfile::TempDir) {
        let directory = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", directory.path().join("kai.db").display());
        (MetaStore::open(&url).await.unwrap(), directory)
    }

    fn name(text: &str) -> RepositoryName {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn facts_follow_teams_grants_and_visibility() {
        let (store, _directory) = store().await;
        assert!(!store.any_user().await.unwrap());
        assert!(store
            .create_account("alice", AccountKind::User, Some("h"), None, false)
            .await
            .unwrap());
        assert!(!store
            .create_account("alice", AccountKind::User, Some("h"), None, false)
            .await
            .unwrap());
        store
            .create_account("bob", AccountKind::User, Some("h"), None, false)
            .await
            .unwrap();
        assert!(store.create_organization("acme", "alice").await.unwrap());
        store
            .create_team("acme", "devs", TeamRole::Creator)
            .await
            .unwrap();
        store.add_team_member("acme", "devs", "bob").await.unwrap();
        store
            .create_account("acme+ci", AccountKind::Robot, None, Some("t"), false)
            .await
            .unwrap();
        store
            .grant("acme/app", "acme+ci", Role::Write)
            .await
            .unwrap();
        store
            .grant("acme/app", "acme/devs", Role::Admin)
            .await
            .unwrap();

        let facts = store
            .repository_facts(Some("bob"), &name("acme/app"))
            .await
            .unwrap();
        assert_eq!(facts.namespace_kind, Some(AccountKind::Organization));
        assert_eq!(facts.team_roles, [TeamRole::Creator]);
        assert_eq!(facts.grants, [Role::Admin]);
        assert!(!facts.public);
        let robot = store
            .repository_facts(Some("acme+ci"), &name("acme/app"))
            .await
            .unwrap();
        assert_eq!(robot.grants, [Role::Write]);
        assert!(robot.team_roles.is_empty());
        let owner = store
            .repository_facts(Some("alice"), &name("acme/other"))
            .await
            .unwrap();
        assert_eq!(owner.team_roles, [TeamRole::Admin]);

        store
            .set_repository_visibility("acme/app", "public")
            .await
            .unwrap();
        let anonymous = store
            .repository_facts(None, &name("acme/app"))
            .await
            .unwrap();
        assert!(anonymous.public);
        assert!(!store
            .create_repository_settings("acme/app", "private")
            .await
            .unwrap());

        let teams = store.teams("acme").await.unwrap();
        assert_eq!(teams.len(), 2);
        assert_eq!(teams[0].name, "devs");
        assert_eq!(teams[0].members, ["bob"]);
        assert_eq!(teams[1].members, ["alice"]);
        assert_eq!(store.robots("acme").await.unwrap().len(), 1);

        // Deleting the organisation takes its teams, robots and grants along.
        assert!(store.delete_account("acme").await.unwrap());
        assert!(store.account("acme+ci").await.unwrap().is_none());
        assert!(store.grants("acme/app").await.unwrap().is_empty());
        assert!(store.teams("acme").await.unwrap().is_empty());
        assert!(store.account("bob").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn throttling_counts_within_the_window() {
        let (store, _directory) = store().await;
        let key = "account:alice";
        for expected in 1..=3 {
            assert_eq!(
                store
                    .record_login_failure(key, 1000, 60, 3, 30)
                    .await
                    .unwrap(),
                expected
            );
        }
        assert_eq!(
            store.login_blocked_until(&[key], 1001).await.unwrap(),
            Some(1030)
        );
        assert_eq!(store.login_blocked_until(&[key], 1030).await.unwrap(), None);
        // Outside the window the count starts again.
        assert_eq!(
            store
                .record_login_failure(key, 2000, 60, 3, 30)
                .await
                .unwrap(),
            1
        );
        store.clear_login_failures(key).await.unwrap();
        assert_eq!(store.login_blocked_until(&[key], 2000).await.unwrap(), None);
    }

    #[tokio::test]
    async fn signing_keys_rotate_and_audit_records_read_back() {
        let (store, _directory) = store().await;
        assert!(store
            .add_signing_key("k1", "EdDSA", &[1; 32], false)
            .await
            .unwrap());
        assert!(!store
            .add_signing_key("k2", "EdDSA", &[2; 32], false)
            .await
            .unwrap());
        assert!(store
            .add_signing_key("k3", "EdDSA", &[3; 32], true)
            .await
            .unwrap());
        let keys = store.signing_keys().await.unwrap();
        assert_eq!(keys.len(), 2);
        let current: Vec<&str> = keys
            .iter()
            .filter(|key| key.retired_at.is_none())
            .map(|key| key.id.as_str())
            .collect();
        assert_eq!(current, ["k3"]);
        assert_eq!(
            keys.iter().find(|key| key.id == "k1").unwrap().private_key,
            [1; 32]
        );

        let entry = AuditEntry {
            actor: "alice".into(),
            address: "127.0.0.1".into(),
            action: "push".into(),
            target: "alice/app:v1".into(),
            outcome: "success".into(),
            detail: String::new(),
        };
        store.record_audit(&entry).await.unwrap();
        store
            .record_audit(&AuditEntry {
                action: "delete".into(),
                ..entry.clone()
            })
            .await
            .unwrap();
        let log = store.audit_log(10).await.unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].entry.action, "delete");
        assert_eq!(log[1].entry, entry);
    }

    /// A PUT that completes an upload with a small body ends the session and
    /// stores the blob in one commit, but only the session's owner, in the
    /// session's repository, and only while nothing is staged; anyone else
    /// changes nothing. Finishes that commit together (a group) each get
    /// their own answer.
    #[tokio::test]
    async fn only_the_owner_finishes_an_unstaged_upload_in_one_commit() {
        let (meta, _directory) = store().await;
        let (repository, elsewhere) = (name("finish/here"), name("finish/elsewhere"));
        let digest = Digest::sha256_of(b"small");
        let finish =
            |upload: &'static str, repository: RepositoryName, owner: Option<&'static str>| {
                let (meta, digest) = (meta.clone(), digest.clone());
                async move {
                    meta.finish_owned_unstaged_upload(
                        upload,
                        &repository,
                        owner,
                        &digest,
                        b"small".to_vec(),
                    )
                    .await
                    .unwrap()
                }
            };
        meta.create_owned_upload("owned", &repository, Some("alice"))
            .await
            .unwrap();
        meta.create_owned_upload("staged", &repository, Some("alice"))
            .await
            .unwrap();
        assert!(meta.advance_upload("staged", 0, 2).await.unwrap());

        // Another account, no account, another repository, an unknown or a
        // staged session: nothing happens.
        assert!(!finish("owned", repository.clone(), Some("bob")).await);
        assert!(!finish("owned", repository.clone(), None).await);
        assert!(!finish("owned", elsewhere.clone(), Some("alice")).await);
        assert!(!finish("unknown", repository.clone(), Some("alice")).await);
        assert!(!finish("staged", repository.clone(), Some("alice")).await);
        assert!(meta.owned_upload("owned").await.unwrap().is_some());
        assert_eq!(
            meta.upload("staged")
                .await
                .unwrap()
                .map(|upload| upload.size),
            Some(2)
        );
        assert!(!meta.repository_exists(&repository).await.unwrap());
        assert!(!meta.repository_exists(&elsewhere).await.unwrap());
        assert_eq!(
            meta.repository_blob(&repository, &digest).await.unwrap(),
            None
        );

        assert!(finish("owned", repository.clone(), Some("alice")).await);
        assert!(meta.owned_upload("owned").await.unwrap().is_none());
        assert_eq!(
            meta.repository_blob_for_read(&repository, &digest)
                .await
                .unwrap(),
            Some(crate::BlobForRead {
                size: 5,
                content: Some(b"small".to_vec())
            })
        );
        // Ended once: a second finish finds no session.
        assert!(!finish("owned", repository.clone(), Some("alice")).await);

        // Concurrent finishes share a commit, each in a savepoint of its own.
        let mut sessions = Vec::new();
        for (upload, owner) in [
            ("a", None),
            ("b", Some("alice")),
            ("c", Some("bob")),
            ("d", None),
        ] {
            meta.create_owned_upload(upload, &elsewhere, owner)
                .await
                .unwrap();
            sessions.push(upload);
        }
        let answers = futures::future::join_all([
            finish("a", elsewhere.clone(), Some("carol")),
            finish("b", elsewhere.clone(), Some("bob")),
            finish("c", elsewhere.clone(), Some("bob")),
            finish("d", repository.clone(), None),
        ])
        .await;
        assert_eq!(answers, [true, false, true, false]);
        for (upload, left) in sessions.into_iter().zip([false, true, false, true]) {
            assert_eq!(
                meta.owned_upload(upload).await.unwrap().is_some(),
                left,
                "session {upload}"
            );
        }
        assert!(meta.repository_exists(&elsewhere).await.unwrap());
    }
}
