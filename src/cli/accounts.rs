//! `kai user|org|team|robot|repo|token|audit|auth`: managing accounts and
//! access on the database `kai serve` uses (also while it runs; SQLite takes
//! one writer at a time and waits for it). The operations are those of the
//! REST API (`crate::accounts`); here they run as the operating system user,
//! recorded in the audit log as `cli:USER`.
//!
//! Secrets are read from standard input (`--password-stdin`), never from
//! arguments; generated passwords and tokens are printed as the last line.

use std::io::BufRead as _;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use kai_auth::{AccountKind, Role, TeamRole};
use kai_meta::MetaStore;

use super::CommonArgs;
use crate::accounts::{self, Actor};

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Users: create, change a password, delete, list.
    #[command(subcommand)]
    User(UserCommand),
    /// Organisations: create (with an owner), delete.
    #[command(subcommand)]
    Org(OrgCommand),
    /// An organisation's teams: create, add and remove members, list.
    #[command(subcommand)]
    Team(TeamCommand),
    /// Robot accounts (NAMESPACE+NAME) with tokens, for CI.
    #[command(subcommand)]
    Robot(RobotCommand),
    /// A repository's visibility and grants.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Personal access tokens, for CLI and CI logins.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the audit log: logins, permission changes, pushes, deletes, tag moves.
    Audit(AuditArgs),
    /// Token signing keys.
    #[command(subcommand)]
    Auth(AuthCommand),
}

#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// Read the password from the first line of standard input; without it a
    /// password is generated and printed as the last line.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        name: String,
        /// A registry administrator, who may do everything.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Set a user's password.
    Passwd {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Delete a user with its robots, tokens, team memberships and grants.
    Delete {
        name: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organisation; its team `owners` (role admin) holds the owner.
    Create {
        name: String,
        /// The user who owns it.
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Delete an organisation with its teams, robots and grants.
    Delete {
        name: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TeamCommand {
    /// Create a team ORG/TEAM. Its role applies to all the organisation's
    /// repositories: member reads, creator writes (and creates), admin administers.
    Create {
        team: String,
        #[arg(long, default_value = "member", value_parser = ["member", "creator", "admin"])]
        role: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Add a user, or a robot of the organisation, to a team.
    Add {
        team: String,
        member: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Remove a member from a team.
    Remove {
        team: String,
        member: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List an organisation's teams and their members.
    List {
        organization: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RobotCommand {
    /// Create a robot NAMESPACE+NAME; prints its token as the last line (shown once).
    Create {
        robot: String,
        /// REPO=read|write|admin, for a repository of the namespace (REPO may omit
        /// the namespace). Repeat for several.
        #[arg(long = "grant", value_name = "REPO=ROLE")]
        grants: Vec<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Replace a robot's token (the old one stops working); prints the new one.
    Token {
        robot: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Delete a robot.
    Delete {
        robot: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List a namespace's robots and their grants.
    List {
        namespace: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Make a repository public (pullable by every account, and anonymously
    /// with auth.anonymous_pull) or private.
    Visibility {
        name: String,
        #[arg(value_parser = ["public", "private"])]
        visibility: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Grant read, write or admin on a repository to a user, robot or team (ORG/TEAM).
    Grant {
        name: String,
        grantee: String,
        #[arg(value_parser = ["read", "write", "admin"])]
        role: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Remove a grant.
    Revoke {
        name: String,
        grantee: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Print a repository's visibility and grants.
    Show {
        name: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a personal access token for USER; prints it as the last line
    /// (shown once). Log in with the user's name and the token as password.
    Create {
        user: String,
        /// What the token is for.
        #[arg(long, default_value = "cli")]
        name: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List a user's tokens (without their secrets).
    List {
        user: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Revoke one of a user's tokens by id.
    Revoke {
        user: String,
        id: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many records, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Make a new token signing key. Tokens signed with the old key stay valid
    /// until they expire (auth.token_ttl); every replica picks the new key up.
    RotateKey {
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// Opens the database of the configuration `common` names.
async fn open(common: &CommonArgs) -> anyhow::Result<(MetaStore, crate::config::Config)> {
    let config = common.load(None)?;
    if config.database.is_empty() {
        std::fs::create_dir_all(&config.data).with_context(|| {
            format!(
                "cannot create the data directory {}; choose another with --data",
                config.data.display()
            )
        })?;
    }
    let url = config.database_url();
    let meta = MetaStore::open(&url).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot open the database {}: {error}; check --data, --database or --config",
            kai_meta::redact_url(&url)
        )
    })?;
    Ok((meta, config))
}

fn read_password(arguments: &PasswordArgs) -> anyhow::Result<(String, bool)> {
    if !arguments.password_stdin {
        return Ok((kai_auth::secret::generate_password(), true));
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        anyhow::bail!("the password on standard input is empty");
    }
    Ok((password, false))
}

fn role(text: &str) -> anyhow::Result<Role> {
    text.parse().map_err(anyhow::Error::msg)
}

pub fn run(command: AccountCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_async(command))
}

async fn run_async(command: AccountCommand) -> anyhow::Result<()> {
    let actor = Actor::command_line();
    match command {
        AccountCommand::User(command) => user(command, &actor).await,
        AccountCommand::Org(OrgCommand::Create {
            name,
            owner,
            common,
        }) => {
            let (meta, _) = open(&common).await?;
            accounts::create_organization(&meta, &actor, &name, &owner).await?;
            println!("created organisation {name}, owned by {owner} (team {name}/owners)");
            Ok(())
        }
        AccountCommand::Org(OrgCommand::Delete { name, common }) => {
            let (meta, _) = open(&common).await?;
            require(&meta, &name, AccountKind::Organization).await?;
            accounts::delete_account(&meta, &actor, &name).await?;
            println!("deleted organisation {name}");
            Ok(())
        }
        AccountCommand::Team(command) => team(command, &actor).await,
        AccountCommand::Robot(command) => robot(command, &actor).await,
        AccountCommand::Repo(command) => repo(command, &actor).await,
        AccountCommand::Token(command) => token(command, &actor).await,
        AccountCommand::Audit(arguments) => {
            let (meta, _) = open(&arguments.common).await?;
            for record in meta.audit_log(arguments.limit.max(1)).await? {
                let at = time::OffsetDateTime::from_unix_timestamp(record.at)
                    .ok()
                    .and_then(|time| {
                        time.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| record.at.to_string());
                let entry = record.entry;
                println!(
                    "{at}  {}  {}  {}  {}  {}  {}",
                    entry.actor,
                    entry.address,
                    entry.action,
                    entry.target,
                    entry.outcome,
                    entry.detail
                );
            }
            Ok(())
        }
        AccountCommand::Auth(AuthCommand::RotateKey { common }) => {
            let (meta, config) = open(&common).await?;
            let ttl = config.auth.token_ttl.as_secs() as i64;
            let id = accounts::rotate_signing_key(&meta, &actor, ttl).await?;
            println!(
                "new token signing key {id}; tokens signed with the old key stay valid until they expire (at most {})",
                humantime_serde::re::humantime::format_duration(config.auth.token_ttl)
            );
            Ok(())
        }
    }
}

async fn require(meta: &MetaStore, name: &str, kind: AccountKind) -> anyhow::Result<()> {
    match meta.account(name).await? {
        Some(account) if account.kind == kind => Ok(()),
        _ => anyhow::bail!("no {} named {name}", kind.as_str()),
    }
}

async fn user(command: UserCommand, actor: &Actor) -> anyhow::Result<()> {
    match command {
        UserCommand::Create {
            name,
            admin,
            password,
            common,
        } => {
            let (password, generated) = read_password(&password)?;
            let (meta, _) = open(&common).await?;
            accounts::create_user(&meta, actor, &name, &password, admin).await?;
            let what = if admin { "administrator" } else { "user" };
            println!("created {what} {name}");
            if generated {
                println!("password: {password}");
            }
        }
        UserCommand::Passwd {
            name,
            password,
            common,
        } => {
            let (password, generated) = read_password(&password)?;
            let (meta, _) = open(&common).await?;
            accounts::set_password(&meta, actor, &name, &password).await?;
            println!("changed the password of {name}");
            if generated {
                println!("password: {password}");
            }
        }
        UserCommand::Delete { name, common } => {
            let (meta, _) = open(&common).await?;
            require(&meta, &name, AccountKind::User).await?;
            accounts::delete_account(&meta, actor, &name).await?;
            println!("deleted user {name}");
        }
        UserCommand::List { common } => {
            let (meta, _) = open(&common).await?;
            for user in meta.accounts(AccountKind::User).await? {
                let admin = if user.admin { "  (administrator)" } else { "" };
                println!("{}{admin}", user.name);
            }
        }
    }
    Ok(())
}

async fn team(command: TeamCommand, actor: &Actor) -> anyhow::Result<()> {
    match command {
        TeamCommand::Create { team, role, common } => {
            let (meta, _) = open(&common).await?;
            let role: TeamRole = role.parse().map_err(anyhow::Error::msg)?;
            accounts::create_team(&meta, actor, &team, role).await?;
            println!("created team {team} with role {role}");
        }
        TeamCommand::Add {
            team,
            member,
            common,
        } => {
            let (meta, _) = open(&common).await?;
            accounts::add_team_member(&meta, actor, &team, &member).await?;
            println!("added {member} to {team}");
        }
        TeamCommand::Remove {
            team,
            member,
            common,
        } => {
            let (meta, _) = open(&common).await?;
            accounts::remove_team_member(&meta, actor, &team, &member).await?;
            println!("removed {member} from {team}");
        }
        TeamCommand::List {
            organization,
            common,
        } => {
            let (meta, _) = open(&common).await?;
            for team in meta.teams(&organization).await? {
                println!(
                    "{}/{}  {}  {}",
                    team.organization,
                    team.name,
                    team.role,
                    team.members.join(", ")
                );
            }
        }
    }
    Ok(())
}

async fn robot(command: RobotCommand, actor: &Actor) -> anyhow::Result<()> {
    match command {
        RobotCommand::Create {
            robot,
            grants,
            common,
        } => {
            let grants = grants
                .iter()
                .map(|grant| {
                    let (repository, role_text) = grant.rsplit_once('=').with_context(|| {
                        format!("--grant {grant:?}: write REPO=read, REPO=write or REPO=admin")
                    })?;
                    Ok((repository.to_owned(), role(role_text)?))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (meta, _) = open(&common).await?;
            let token = accounts::create_robot(&meta, actor, &robot, &grants).await?;
            println!("created robot {robot}");
            for grant in meta.grants_to(&robot).await? {
                println!("  {} {}", grant.repository, grant.role);
            }
            println!("log in as {robot} with this token (shown only now):");
            println!("{token}");
        }
        RobotCommand::Token { robot, common } => {
            let (meta, _) = open(&common).await?;
            let token = accounts::regenerate_robot_token(&meta, actor, &robot).await?;
            println!("new token for {robot} (the old one no longer works):");
            println!("{token}");
        }
        RobotCommand::Delete { robot, common } => {
            let (meta, _) = open(&common).await?;
            require(&meta, &robot, AccountKind::Robot).await?;
            accounts::delete_account(&meta, actor, &robot).await?;
            println!("deleted robot {robot}");
        }
        RobotCommand::List { namespace, common } => {
            let (meta, _) = open(&common).await?;
            for robot in meta.robots(&namespace).await? {
                let grants: Vec<String> = meta
                    .grants_to(&robot.name)
                    .await?
                    .into_iter()
                    .map(|grant| format!("{}={}", grant.repository, grant.role))
                    .collect();
                println!("{}  {}", robot.name, grants.join(" "));
            }
        }
    }
    Ok(())
}

async fn repo(command: RepoCommand, actor: &Actor) -> anyhow::Result<()> {
    match command {
        RepoCommand::Visibility {
            name,
            visibility,
            common,
        } => {
            let (meta, _) = open(&common).await?;
            accounts::set_visibility(&meta, actor, &name, &visibility).await?;
            println!("{name} is {visibility}");
        }
        RepoCommand::Grant {
            name,
            grantee,
            role: role_text,
            common,
        } => {
            let (meta, _) = open(&common).await?;
            let role = role(&role_text)?;
            accounts::grant(&meta, actor, &name, &grantee, role).await?;
            println!("granted {role} on {name} to {grantee}");
        }
        RepoCommand::Revoke {
            name,
            grantee,
            common,
        } => {
            let (meta, _) = open(&common).await?;
            accounts::revoke(&meta, actor, &name, &grantee).await?;
            println!("revoked {grantee}'s grant on {name}");
        }
        RepoCommand::Show { name, common } => {
            let (meta, _) = open(&common).await?;
            let visibility = meta
                .repository_visibility(&name)
                .await?
                .unwrap_or_else(|| "private".into());
            println!("{name}  {visibility}");
            for grant in meta.grants(&name).await? {
                println!("  {} {}", grant.grantee, grant.role);
            }
        }
    }
    Ok(())
}

async fn token(command: TokenCommand, actor: &Actor) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { user, name, common } => {
            let (meta, _) = open(&common).await?;
            let (id, token) = accounts::create_access_token(&meta, actor, &user, &name).await?;
            println!("created token {id} ({name}) for {user}; log in as {user} with it (shown only now):");
            println!("{token}");
        }
        TokenCommand::List { user, common } => {
            let (meta, _) = open(&common).await?;
            for token in meta.access_tokens(&user).await? {
                let used = token
                    .last_used_at
                    .map_or_else(|| "never used".to_owned(), |at| format!("last used {at}"));
                println!(
                    "{}  {}  created {}  {used}",
                    token.id, token.name, token.created_at
                );
            }
        }
        TokenCommand::Revoke { user, id, common } => {
            let (meta, _) = open(&common).await?;
            accounts::delete_access_token(&meta, actor, &user, &id).await?;
            println!("revoked token {id} of {user}");
        }
    }
    Ok(())
}
