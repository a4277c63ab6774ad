//! Configuration: built-in defaults, then the TOML file, then `KAI_*`
//! environment variables, then command-line flags; each layer overrides the one
//! before. `kai config` prints the result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The address and port to listen on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The data directory: blobs, upload staging and the SQLite database.
    pub data: PathBuf,
    /// The metadata database URL. Empty means `sqlite://<data>/kai.db`.
    pub database: String,
    pub limits: Limits,
    pub uploads: Uploads,
    pub log: Log,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The largest manifest accepted, in bytes.
    pub manifest_max_bytes: u64,
    /// The most entries one page of `tags/list` or `_catalog` returns.
    pub page_max_entries: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Uploads {
    /// An upload session not written to for this long is removed with its data.
    #[serde(with = "humantime_serde")]
    pub expire_after: Duration,
    /// How often expired uploads are looked for.
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// A tracing filter: `info`, `warn`, `kai=debug,info`, ...
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5000".parse().expect("valid default address"),
            data: PathBuf::from("./kai-data"),
            database: String::new(),
            limits: Limits::default(),
            uploads: Uploads::default(),
            log: Log::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            manifest_max_bytes: 4 * 1024 * 1024,
            page_max_entries: 10_000,
        }
    }
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads {
            expire_after: Duration::from_secs(24 * 60 * 60),
            cleanup_interval: Duration::from_secs(10 * 60),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Settings given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
}

/// Whether an environment variable (without `KAI_`, lower-cased) names a
/// setting. Other `KAI_*` variables (`KAI_CONFIG`, those of scripts) are not
/// the configuration's business.
fn is_setting(key: &str) -> bool {
    const SECTIONS: [&str; 6] = ["listen", "data", "database", "limits", "uploads", "log"];
    SECTIONS.iter().any(|section| {
        key == *section
            || key
                .strip_prefix(section)
                .is_some_and(|rest| rest.starts_with("__"))
    })
}

impl Config {
    /// Loads the layered configuration. `file` is the `--config` path; without
    /// it, `KAI_CONFIG` names the file, if set.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                anyhow::bail!(
                    "config file {} does not exist; copy kai.example.toml there or drop --config",
                    file.display()
                );
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment
            .merge(
                Env::prefixed("KAI_")
                    .filter(|key| is_setting(key.as_str()))
                    .split("__"),
            )
            .merge(Serialized::defaults(overrides));
        let config: Config = figment.extract().with_context(|| match file {
            Some(file) => format!(
                "invalid configuration (from {} and KAI_* variables); see kai.example.toml for every option",
                file.display()
            ),
            None => "invalid configuration in KAI_* variables; see kai.example.toml for every option".into(),
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.limits.manifest_max_bytes == 0 {
            anyhow::bail!("limits.manifest_max_bytes must be more than 0");
        }
        if self.limits.page_max_entries == 0 {
            anyhow::bail!("limits.page_max_entries must be more than 0");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            anyhow::bail!(
                "log.format must be \"text\" or \"json\", not {:?}",
                self.log.format
            );
        }
        Ok(())
    }

    /// The metadata database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> String {
        if self.database.is_empty() {
            format!("sqlite://{}", self.data.join("kai.db").display())
        } else {
            self.database.clone()
        }
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# cannot print: {error}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "kai.toml",
                "listen = \"127.0.0.1:6000\"\ndata = \"/from/file\"\n[limits]\nmanifest_max_bytes = 1000\n",
            )?;
            jail.set_env("KAI_DATA", "/from/env");
            jail.set_env("KAI_UPLOADS__EXPIRE_AFTER", "2h");
            jail.set_env("KAI_BIN", "/not/a/setting");
            let config = Config::load(Some(Path::new("kai.toml")), &Overrides::default()).unwrap();
            assert_eq!(config.listen.to_string(), "127.0.0.1:6000");
            assert_eq!(config.data, PathBuf::from("/from/env"));
            assert_eq!(config.limits.manifest_max_bytes, 1000);
            assert_eq!(config.uploads.expire_after, Duration::from_secs(7200));
            let overrides = Overrides {
                data: Some("/from/flag".into()),
                ..Overrides::default()
            };
            let config = Config::load(Some(Path::new("kai.toml")), &overrides).unwrap();
            assert_eq!(config.data, PathBuf::from("/from/flag"));
            Ok(())
        });
    }

    #[test]
    fn unknown_options_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("kai.toml", "lisen = \"127.0.0.1:6000\"\n")?;
            let error =
                Config::load(Some(Path::new("kai.toml")), &Overrides::default()).unwrap_err();
            assert!(format!("{error:#}").contains("lisen"), "{error:#}");
            Ok(())
        });
    }
}
