//! Docker token scopes (`repository:acme/app:pull,push`, `registry:catalog:*`)
//! and the access a token grants: for each requested scope, only the actions
//! that are both asked for and permitted.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == text)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A requested scope: `type:name:action,action`. The type may carry a class in
/// parentheses (`repository(plugin)`), which is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub resource_type: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// The resource type of repositories.
pub const REPOSITORY: &str = "repository";
/// The resource type of registry-wide resources (`registry:catalog:*`).
pub const REGISTRY: &str = "registry";

impl Scope {
    /// Parses one scope. The name is what lies between the first and the last
    /// colon; `None` for anything else.
    pub fn parse(text: &str) -> Option<Scope> {
        let (resource_type, rest) = text.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let resource_type = resource_type
            .split_once('(')
            .map_or(resource_type, |(kind, _)| kind);
        if resource_type.is_empty() || name.is_empty() {
            return None;
        }
        let mut parsed: Vec<String> = Vec::new();
        for action in actions.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            if !parsed.iter().any(|seen| seen == action) {
                parsed.push(action.to_owned());
            }
        }
        Some(Scope {
            resource_type: resource_type.to_owned(),
            name: name.to_owned(),
            actions: parsed,
        })
    }

    /// Parses a `scope` parameter, which some clients send space-separated.
    pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Scope> {
        let mut scopes: Vec<Scope> = Vec::new();
        for scope in values
            .into_iter()
            .flat_map(str::split_whitespace)
            .filter_map(Scope::parse)
        {
            match scopes
                .iter_mut()
                .find(|seen| seen.resource_type == scope.resource_type && seen.name == scope.name)
            {
                Some(seen) => {
                    for action in scope.actions {
                        if !seen.actions.contains(&action) {
                            seen.actions.push(action);
                        }
                    }
                }
                None => scopes.push(scope),
            }
        }
        scopes
    }

    /// The access to grant for this scope when the caller is `permitted` these
    /// actions: the requested ones that are permitted (`*` asks for all of
    /// them), in a canonical order. `None` when that leaves nothing.
    pub fn grant(&self, permitted: &[&str]) -> Option<Access> {
        let wants_all = self.actions.iter().any(|action| action == "*");
        let actions: Vec<String> = permitted
            .iter()
            .filter(|action| wants_all || self.actions.iter().any(|asked| asked == *action))
            .map(|action| (*action).to_owned())
            .collect();
        (!actions.is_empty()).then(|| Access {
            resource_type: self.resource_type.clone(),
            name: self.name.clone(),
            actions,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}:{}:{}",
            self.resource_type,
            self.name,
            self.actions.join(",")
        )
    }
}

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// Whether `access` grants `action` on resource `name` of `resource_type`.
pub fn allows(access: &[Access], resource_type: &str, name: &str, action: &str) -> bool {
    access.iter().any(|entry| {
        entry.resource_type == resource_type
            && entry.name == name
            && entry
                .actions
                .iter()
                .any(|granted| granted == action || granted == "*")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse() {
        let scope = Scope::parse("repository:acme/app:pull,push").unwrap();
        assert_eq!(scope.resource_type, "repository");
        assert_eq!(scope.name, "acme/app");
        assert_eq!(scope.actions, ["pull", "push"]);
        assert_eq!(scope.to_string(), "repository:acme/app:pull,push");
        let plugin = Scope::parse("repository(plugin):a/b:pull").unwrap();
        assert_eq!(plugin.resource_type, "repository");
        let host = Scope::parse("repository:host:5000/a:pull").unwrap();
        assert_eq!(host.name, "host:5000/a");
        assert_eq!(Scope::parse("registry:catalog:*").unwrap().actions, ["*"]);
        assert!(Scope::parse("repository:a").is_none());
        assert!(Scope::parse("repository::pull").is_none());
        assert!(Scope::parse("").is_none());
    }

    #[test]
    fn scopes_merge_by_resource() {
        let scopes = Scope::parse_all([
            "repository:a:pull",
            "repository:a:push repository:b:pull",
            "bogus",
        ]);
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[0].actions, ["pull", "push"]);
        assert_eq!(scopes[1].name, "b");
    }

    #[test]
    fn grants_are_the_intersection() {
        let scope = Scope::parse("repository:a:push,pull,delete").unwrap();
        assert_eq!(scope.grant(&["pull"]).unwrap().actions, ["pull"]);
        assert_eq!(
            scope.grant(&["pull", "push"]).unwrap().actions,
            ["pull", "push"]
        );
        assert!(scope.grant(&[]).is_none());
        let pull_only = Scope::parse("repository:a:pull").unwrap();
        assert_eq!(
            pull_only
                .grant(&["pull", "push", "delete"])
                .unwrap()
                .actions,
            ["pull"],
            "asking for less gets less"
        );
        let star = Scope::parse("repository:a:*").unwrap();
        assert_eq!(
            star.grant(&["pull", "push"]).unwrap().actions,
            ["pull", "push"]
        );
        let catalog = Scope::parse("registry:catalog:*").unwrap();
        let access = vec![catalog.grant(&["*"]).unwrap()];
        assert!(allows(&access, "registry", "catalog", "*"));
        assert!(!allows(&access, "repository", "catalog", "pull"));
    }
}
