//! The permission rules, as pure functions over facts the application loads.
//!
//! - A repository's first path component is its namespace: a user or an
//!   organisation. A user is admin of every repository in their namespace.
//! - Organisation teams carry a role that applies to every repository of the
//!   organisation: `member` reads, `creator` writes (and so creates
//!   repositories), `admin` administers.
//! - Users, teams and robots get `read`, `write` or `admin` on single
//!   repositories by explicit grants. Robots have only what they are granted
//!   (directly or through teams).
//! - A public repository is readable by every account, and anonymously when
//!   anonymous pulls are allowed; a private one never anonymously.
//! - Registry administrators may do everything.
//!
//! Roles map to token actions: read → pull; write → pull, push; admin → pull,
//! push, delete (as Docker Hub separates "read & write" from "delete").

use std::fmt;
use std::str::FromStr;

/// A role on a repository, ordered by what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    /// The token actions this role permits.
    pub fn actions(self) -> &'static [&'static str] {
        match self {
            Role::Read => &["pull"],
            Role::Write => &["pull", "push"],
            Role::Admin => &["pull", "push", "delete"],
        }
    }

    pub fn allows(self, action: crate::Action) -> bool {
        self.actions().contains(&action.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {text:?}: use read, write or admin")),
        }
    }
}

/// A team's role in its organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TeamRole {
    Member,
    Creator,
    Admin,
}

impl TeamRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Member => "member",
            TeamRole::Creator => "creator",
            TeamRole::Admin => "admin",
        }
    }

    /// The role this team role gives on every repository of the organisation.
    pub fn repository_role(self) -> Role {
        match self {
            TeamRole::Member => Role::Read,
            TeamRole::Creator => Role::Write,
            TeamRole::Admin => Role::Admin,
        }
    }
}

impl fmt::Display for TeamRole {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for TeamRole {
    type Err = String;
    fn from_str(text: &str) -> Result<TeamRole, String> {
        match text {
            "member" => Ok(TeamRole::Member),
            "creator" => Ok(TeamRole::Creator),
            "admin" => Ok(TeamRole::Admin),
            _ => Err(format!(
                "unknown team role {text:?}: use member, creator or admin"
            )),
        }
    }
}

/// What kind of account a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountKind {
    User,
    Organization,
    Robot,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::User => "user",
            AccountKind::Organization => "organization",
            AccountKind::Robot => "robot",
        }
    }
}

impl FromStr for AccountKind {
    type Err = String;
    fn from_str(text: &str) -> Result<AccountKind, String> {
        match text {
            "user" => Ok(AccountKind::User),
            "organization" => Ok(AccountKind::Organization),
            "robot" => Ok(AccountKind::Robot),
            _ => Err(format!("unknown account kind {text:?}")),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub kind: AccountKind,
    /// A registry administrator.
    pub admin: bool,
}

/// What the database says about one repository and one caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepositoryFacts {
    /// The kind of the account the namespace (first path component) names,
    /// if any.
    pub namespace_kind: Option<AccountKind>,
    /// Whether the repository is public.
    pub public: bool,
    /// The caller's teams' roles in the namespace's organisation.
    pub team_roles: Vec<TeamRole>,
    /// Roles granted on this repository to the caller, directly or through a team.
    pub grants: Vec<Role>,
}

/// The caller's role on a repository in `namespace`, or `None` for no access.
/// `caller` is `None` for an anonymous request.
pub fn repository_role(
    caller: Option<&Caller>,
    namespace: &str,
    facts: &RepositoryFacts,
    anonymous_pull: bool,
) -> Option<Role> {
    let Some(caller) = caller else {
        return (facts.public && anonymous_pull).then_some(Role::Read);
    };
    if caller.admin {
        return Some(Role::Admin);
    }
    let mut role: Option<Role> = None;
    if caller.kind == AccountKind::User
        && caller.name == namespace
        && facts.namespace_kind == Some(AccountKind::User)
    {
        role = Some(Role::Admin);
    }
    if facts.namespace_kind == Some(AccountKind::Organization) {
        role = role.max(
            facts
                .team_roles
                .iter()
                .map(|team| team.repository_role())
                .max(),
        );
    }
    role = role.max(facts.grants.iter().copied().max());
    if facts.public && caller.kind != AccountKind::Organization {
        role = role.max(Some(Role::Read));
    }
    role
}

/// The token actions a role permits, none for `None`.
pub fn actions(role: Option<Role>) -> &'static [&'static str] {
    role.map_or(&[], Role::actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Caller {
        Caller {
            name: name.into(),
            kind: AccountKind::User,
            admin: false,
        }
    }

    fn facts(namespace_kind: Option<AccountKind>) -> RepositoryFacts {
        RepositoryFacts {
            namespace_kind,
            ..RepositoryFacts::default()
        }
    }

    /// Caller, namespace, facts, anonymous_pull, expected role.
    type Case<'a> = (
        Option<&'a Caller>,
        &'a str,
        RepositoryFacts,
        bool,
        Option<Role>,
    );

    #[test]
    fn the_permission_table() {
        use AccountKind::*;
        let alice = user("alice");
        let robot = Caller {
            name: "alice+ci".into(),
            kind: Robot,
            admin: false,
        };
        let admin = Caller {
            admin: true,
            ..user("root")
        };
        let public = RepositoryFacts {
            public: true,
            ..facts(Some(User))
        };
        let member = RepositoryFacts {
            team_roles: vec![TeamRole::Member],
            ..facts(Some(Organization))
        };
        let creator = RepositoryFacts {
            team_roles: vec![TeamRole::Member, TeamRole::Creator],
            ..facts(Some(Organization))
        };
        let granted = RepositoryFacts {
            grants: vec![Role::Write],
            ..facts(Some(Organization))
        };
        #[rustfmt::skip]
        let cases: Vec<Case<'_>> = vec![
            // Your own namespace is yours; another's is not.
            (Some(&alice), "alice", facts(Some(User)), true, Some(Role::Admin)),
            (Some(&alice), "bob", facts(Some(User)), true, None),
            // A namespace nobody owns is nobody's (but the administrators').
            (Some(&alice), "nobody", facts(None), true, None),
            (Some(&admin), "nobody", facts(None), true, Some(Role::Admin)),
            // Public: every account reads; anonymous only with anonymous_pull.
            (Some(&alice), "bob", public.clone(), false, Some(Role::Read)),
            (None, "bob", public.clone(), true, Some(Role::Read)),
            (None, "bob", public.clone(), false, None),
            (None, "bob", facts(Some(User)), true, None),
            // Organisation teams give org-wide roles.
            (Some(&alice), "acme", member.clone(), true, Some(Role::Read)),
            (Some(&alice), "acme", creator.clone(), true, Some(Role::Write)),
            // Explicit grants.
            (Some(&alice), "acme", granted.clone(), true, Some(Role::Write)),
            (Some(&robot), "acme", granted.clone(), true, Some(Role::Write)),
            // A robot has only what it is granted, even in its owner's namespace.
            (Some(&robot), "alice", facts(Some(User)), true, None),
        ];
        for (caller, namespace, facts, anonymous_pull, expected) in cases {
            assert_eq!(
                repository_role(caller, namespace, &facts, anonymous_pull),
                expected,
                "{caller:?} on {namespace} with {facts:?}"
            );
        }
        assert_eq!(actions(Some(Role::Write)), ["pull", "push"]);
        assert!(actions(None).is_empty());
        assert!(Role::Admin.allows(crate::Action::Delete));
        assert!(!Role::Write.allows(crate::Action::Delete));
    }
}
