//! Account, team and robot names. A user's or organisation's name is a
//! namespace, the first component of its repositories' names, so it follows
//! the repository name grammar (lower-case letters and digits, separated by
//! `.`, `_` or `-`) without slashes. A robot is `namespace+name`.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid name {0:?}: use 2 to 64 lower-case letters and digits, separated by '.', '_' or '-'")]
    Account(String),
    #[error("invalid team {0:?}: write it as ORGANIZATION/TEAM, each part lower-case letters and digits separated by '.', '_' or '-'")]
    Team(String),
    #[error("invalid robot {0:?}: write it as NAMESPACE+NAME, NAME being lower-case letters, digits and '_'")]
    Robot(String),
}

fn is_simple(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && !name.contains('/')
        && name.parse::<kai_oci::RepositoryName>().is_ok()
}

/// A user or organisation name (a namespace).
pub fn check_account(name: &str) -> Result<(), NameError> {
    if is_simple(name) {
        Ok(())
    } else {
        Err(NameError::Account(name.to_owned()))
    }
}

/// `ORG/TEAM`, split.
pub fn parse_team(text: &str) -> Result<(&str, &str), NameError> {
    let invalid = || NameError::Team(text.to_owned());
    let (organization, team) = text.split_once('/').ok_or_else(invalid)?;
    if is_simple(organization) && is_simple(team) {
        Ok((organization, team))
    } else {
        Err(invalid())
    }
}

/// `NAMESPACE+NAME`, split.
pub fn parse_robot(text: &str) -> Result<(&str, &str), NameError> {
    let invalid = || NameError::Robot(text.to_owned());
    let (namespace, name) = text.split_once('+').ok_or_else(invalid)?;
    let name_ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    if is_simple(namespace) && name_ok {
        Ok((namespace, name))
    } else {
        Err(invalid())
    }
}

/// Whether a name is a robot's (robots, and only robots, have a `+`).
pub fn is_robot(name: &str) -> bool {
    name.contains('+')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_account("alice").is_ok());
        assert!(check_account("acme-corp.io").is_ok());
        for bad in ["a", "Alice", "a/b", "a+b", "-a", "a..b", ""] {
            assert!(check_account(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_team("acme/devs").unwrap(), ("acme", "devs"));
        assert!(parse_team("acme").is_err());
        assert!(parse_team("acme/Devs").is_err());
        assert_eq!(parse_robot("acme+ci_1").unwrap(), ("acme", "ci_1"));
        assert!(parse_robot("acme+").is_err());
        assert!(parse_robot("acme+c-i").is_err());
        assert!(parse_robot("acme").is_err());
        assert!(is_robot("acme+ci"));
    }
}
