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
    /// The metadata database URL: `sqlite://PATH` or `postgres://...`. Empty
    /// means `sqlite://<data>/kai.db`.
    pub database: String,
    /// Where blobs are stored: `file:///PATH`, `s3://BUCKET[/PREFIX]`,
    /// `az://CONTAINER[/PREFIX]` (Azure Blob Storage, configured by the
    /// standard `AZURE_STORAGE_*` variables) or `gs://BUCKET[/PREFIX]` (Google
    /// Cloud Storage, by `GOOGLE_APPLICATION_CREDENTIALS` and the like). Empty
    /// means the data directory.
    pub storage: String,
    /// S3-compatible storage settings; empty fields fall back to the standard
    /// `AWS_*` environment variables.
    pub s3: S3,
    pub limits: Limits,
    pub uploads: Uploads,
    pub cache: Cache,
    pub log: Log,
    pub tls: Tls,
    pub auth: Auth,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3 {
    /// The service's URL, e.g. `http://127.0.0.1:3900` (or `AWS_ENDPOINT_URL`).
    pub endpoint: String,
    /// The region (or `AWS_REGION`).
    pub region: String,
    /// The access key id (or `AWS_ACCESS_KEY_ID`).
    pub access_key_id: String,
    /// The secret key (or `AWS_SECRET_ACCESS_KEY`). Never printed.
    #[serde(serialize_with = "serialize_secret")]
    pub secret_access_key: String,
    /// Allow a plain-HTTP endpoint (or `AWS_ALLOW_HTTP=true`).
    pub allow_http: bool,
    /// Answer a whole-blob GET with a redirect to a presigned URL valid for five
    /// minutes, so the bytes flow from the bucket to the client, not through Kai.
    /// Also applies to `az://` and `gs://` storage, despite the section's name.
    pub redirect: bool,
}

/// Secrets are printed as `***` (an empty secret stays empty, so defaults
/// round-trip through the configuration layers).
fn serialize_secret<S: serde::Serializer>(secret: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(if secret.is_empty() { "" } else { "***" })
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
    /// Blobs of at most this many bytes are kept in the metadata database,
    /// written by the commit that links them: one sync per push instead of
    /// three. 0 keeps every blob in the blob store.
    pub inline_max_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cache {
    /// Memory for manifests recently pulled by tag or digest, in bytes, so a
    /// pull needs no database query. Only with the embedded SQLite database,
    /// which `kai serve` then locks to itself; replicas on PostgreSQL never
    /// cache. A manifest over a sixteenth of this is not kept. 0 turns the
    /// cache off.
    pub manifest_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// A tracing filter: `info`, `warn`, `kai=debug,info`, ...
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

/// How `kai serve` speaks TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain HTTP.
    #[default]
    Off,
    /// A local CA in `<data>/tls/` issues and renews the server certificate.
    Auto,
    /// The certificate and key in `tls.cert` and `tls.key`, reloaded on change.
    Files,
}

impl std::str::FromStr for TlsMode {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<TlsMode> {
        match text {
            "off" => Ok(TlsMode::Off),
            "auto" => Ok(TlsMode::Auto),
            "files" => Ok(TlsMode::Files),
            _ => anyhow::bail!("TLS mode must be \"off\", \"auto\" or \"files\", not {text:?}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// `off`, `auto` or `files`.
    pub mode: TlsMode,
    /// `files`: the PEM certificate chain, server certificate first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// `files`: the PEM private key of the certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// `auto`: the name clients use to reach Kai; the certificate also names
    /// `localhost`, 127.0.0.1, ::1 and the listen address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// A plain-HTTP address that redirects every request to HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_listen: Option<SocketAddr>,
    /// How often the certificate files are checked for changes (`files`) and
    /// the issued certificate for renewal (`auto`).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            mode: TlsMode::Off,
            cert: None,
            key: None,
            hostname: None,
            redirect_listen: None,
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5000".parse().expect("valid default address"),
            data: PathBuf::from("./kai-data"),
            database: String::new(),
            storage: String::new(),
            s3: S3::default(),
            limits: Limits::default(),
            uploads: Uploads::default(),
            cache: Cache::default(),
            log: Log::default(),
            tls: Tls::default(),
            auth: Auth::default(),
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
            inline_max_bytes: 64 * 1024,
        }
    }
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            manifest_bytes: 8 * 1024 * 1024,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    #[serde(skip_serializing_if = "TlsOverrides::is_empty")]
    pub tls: TlsOverrides,
}

/// The `[tls]` settings given on the command line.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TlsOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_listen: Option<SocketAddr>,
}

impl TlsOverrides {
    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.cert.is_none()
            && self.key.is_none()
            && self.hostname.is_none()
            && self.redirect_listen.is_none()
    }
}

/// Whether an environment variable (without `KAI_`, lower-cased) names a
/// setting. Other `KAI_*` variables (`KAI_CONFIG`, those of scripts) are not
/// the configuration's business.
fn is_setting(key: &str) -> bool {
    const SECTIONS: [&str; 10] = [
        "listen", "data", "database", "storage", "s3", "limits", "uploads", "log", "tls", "auth",
    ];
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
                    .filter(|key| is_setting(&key.as_str().to_ascii_lowercase()))
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
        self.tls.check()?;
        self.auth.check()
    }

    /// The blob storage URL, defaulting to the data directory.
    pub fn storage_url(&self) -> String {
        if self.storage.is_empty() {
            format!("file://{}", self.data.display())
        } else {
            self.storage.clone()
        }
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

/// Accounts and access: who may pull and push (see ARCHITECTURE.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Whether requests are authenticated and authorized. Off, everyone may
    /// do everything.
    pub enabled: bool,
    /// Whether public repositories may be pulled without logging in.
    pub anonymous_pull: bool,
    /// The visibility of a repository created by a push: `private` or `public`.
    pub default_visibility: String,
    /// The token endpoint's URL in challenges. Empty means
    /// `<scheme>://<Host header>/v2/auth`.
    pub realm: String,
    /// The service name tokens are issued for (their audience).
    pub service: String,
    /// How long a bearer token from `/v2/auth` is valid.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Failed logins to one account within `failed_login_window` before
    /// further logins to it are refused for `lockout`.
    pub max_failed_logins: u32,
    /// Failed logins from one source address within `failed_login_window`
    /// before further logins from it are refused for `lockout`.
    pub max_failed_logins_per_address: u32,
    #[serde(with = "humantime_serde")]
    pub failed_login_window: Duration,
    #[serde(with = "humantime_serde")]
    pub lockout: Duration,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            enabled: true,
            anonymous_pull: true,
            default_visibility: "private".into(),
            realm: String::new(),
            service: "kai".into(),
            token_ttl: Duration::from_secs(5 * 60),
            max_failed_logins: 5,
            max_failed_logins_per_address: 30,
            failed_login_window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(60),
        }
    }
}

impl Auth {
    fn check(&self) -> anyhow::Result<()> {
        if !matches!(self.default_visibility.as_str(), "private" | "public") {
            anyhow::bail!(
                "auth.default_visibility must be \"private\" or \"public\", not {:?}",
                self.default_visibility
            );
        }
        if self.service.is_empty() {
            anyhow::bail!("auth.service must not be empty (the default is \"kai\")");
        }
        if self.token_ttl < Duration::from_secs(10) {
            anyhow::bail!("auth.token_ttl must be at least 10s");
        }
        if self.max_failed_logins == 0 || self.max_failed_logins_per_address == 0 {
            anyhow::bail!(
                "auth.max_failed_logins and auth.max_failed_logins_per_address must be more than 0"
            );
        }
        Ok(())
    }
}

impl Tls {
    fn check(&self) -> anyhow::Result<()> {
        match self.mode {
            TlsMode::Off => {
                if self.redirect_listen.is_some() {
                    anyhow::bail!(
                        "tls.redirect_listen (--http-redirect) redirects to HTTPS, but tls.mode is \"off\"; \
                         serve HTTPS with --tls auto --hostname HOST or --tls-cert FILE --tls-key FILE"
                    );
                }
            }
            TlsMode::Files => {
                if self.cert.is_none() || self.key.is_none() {
                    anyhow::bail!(
                        "tls.mode = \"files\" needs tls.cert and tls.key (--tls-cert FILE --tls-key FILE): \
                         the PEM certificate chain and its private key; or use --tls auto --hostname HOST"
                    );
                }
            }
            TlsMode::Auto => {
                let Some(hostname) = self.hostname.as_deref() else {
                    anyhow::bail!(
                        "tls.mode = \"auto\" needs tls.hostname (--hostname HOST): the name clients use \
                         to reach Kai, e.g. registry.localhost.direct"
                    );
                };
                crate::tls::check_hostname(hostname)?;
            }
        }
        if self.reload_interval.is_zero() {
            anyhow::bail!("tls.reload_interval must be more than 0 (e.g. \"5s\")");
        }
        Ok(())
    }
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment::Jail's closures return figment::Error, which is large"
)]
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
    fn tls_settings_layer_and_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "kai.toml",
                "[tls]\nmode = \"auto\"\nhostname = \"from.file\"\n",
            )?;
            jail.set_env("KAI_TLS__HOSTNAME", "registry.localhost.direct");
            jail.set_env("KAI_TLS__RELOAD_INTERVAL", "2s");
            let config = Config::load(Some(Path::new("kai.toml")), &Overrides::default()).unwrap();
            assert_eq!(config.tls.mode, TlsMode::Auto);
            assert_eq!(
                config.tls.hostname.as_deref(),
                Some("registry.localhost.direct")
            );
            assert_eq!(config.tls.reload_interval, Duration::from_secs(2));
            let overrides = Overrides {
                tls: TlsOverrides {
                    mode: Some(TlsMode::Files),
                    ..TlsOverrides::default()
                },
                ..Overrides::default()
            };
            let error = Config::load(Some(Path::new("kai.toml")), &overrides).unwrap_err();
            assert!(
                format!("{error:#}").contains("--tls-cert FILE --tls-key FILE"),
                "{error:#}"
            );
            jail.set_env("KAI_TLS__HOSTNAME", "https://registry:5000");
            let error =
                Config::load(Some(Path::new("kai.toml")), &Overrides::default()).unwrap_err();
            assert!(
                format!("{error:#}").contains("not a host name"),
                "{error:#}"
            );
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
