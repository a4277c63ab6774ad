//! Repository names, checked against the distribution spec's grammar.

use std::fmt;
use std::str::FromStr;

/// The longest repository name the registry accepts, in bytes.
pub const MAX_NAME_LENGTH: usize = 255;

/// A repository name such as `acme/team/app`, validated against the grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
/// and at most [`MAX_NAME_LENGTH`] bytes long.
///
/// Because of that grammar a name never contains `..`, an empty component, a
/// leading or trailing separator, or anything outside `[a-z0-9._/-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is {0} characters long; the limit is {MAX_NAME_LENGTH}")]
    TooLong(usize),
    #[error(
        "repository name component {component:?} is invalid: use lower-case letters and digits, \
         separated by '.', '_', '__' or '-'"
    )]
    InvalidComponent { component: String },
}

impl RepositoryName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component, which names the namespace (user or organisation).
    pub fn namespace(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

fn is_valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alphanumeric = |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    if bytes.is_empty() || !is_alphanumeric(bytes[0]) || !is_alphanumeric(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if is_alphanumeric(byte) {
            index += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let run_start = index;
        match byte {
            b'.' => index += 1,
            b'_' => {
                index += 1;
                if index < bytes.len() && bytes[index] == b'_' {
                    index += 1;
                }
            }
            b'-' => {
                while index < bytes.len() && bytes[index] == b'-' {
                    index += 1;
                }
            }
            _ => return false,
        }
        // Every separator must be followed by an alphanumeric character.
        if index >= bytes.len() || !is_alphanumeric(bytes[index]) || index == run_start {
            return false;
        }
    }
    true
}

impl FromStr for RepositoryName {
    type Err = NameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(NameError::Empty);
        }
        if input.len() > MAX_NAME_LENGTH {
            return Err(NameError::TooLong(input.len()));
        }
        for component in input.split('/') {
            if !is_valid_component(component) {
                return Err(NameError::InvalidComponent {
                    component: component.chars().take(64).collect(),
                });
            }
        }
        Ok(RepositoryName(input.to_owned()))
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_of_any_depth() {
        for good in [
            "a",
            "library/ubuntu",
            "acme/team/app",
            "admin/template-ausbildung",
            "a.b_c__d---e/f0",
            "x/y/z/w/v",
        ] {
            assert!(
                good.parse::<RepositoryName>().is_ok(),
                "{good:?} should be accepted"
            );
        }
    }

    #[test]
    fn rejects_names_outside_the_grammar() {
        let too_long = format!("a/{}", "b".repeat(254));
        for bad in [
            "",
            "Upper/case",
            "a//b",
            "/a",
            "a/",
            "..",
            "a/../b",
            "a/./b",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a b",
            "a%2fb",
            too_long.as_str(),
        ] {
            assert!(
                bad.parse::<RepositoryName>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!("a".repeat(255).parse::<RepositoryName>().is_ok());
    }
}
