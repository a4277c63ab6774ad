//! The command line: `kai serve`, `kai config`, `kai ca`, `kai setup`, `kai doctor`,
//! and managing accounts (`kai user`, `org`, `team`, `robot`, `repo`, `token`, `audit`, `auth`).

mod accounts;
mod ca;
mod doctor;
mod setup;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides, TlsMode, TlsOverrides};

#[derive(Debug, Parser)]
#[command(
    name = "kai",
    version,
    about = "Kai: a self-hosted OCI container registry",
    long_about = "Kai is a self-hosted OCI container registry. `kai serve` runs it on embedded \
                  storage (blobs on the filesystem, metadata in SQLite) with nothing else to install.\n\n\
                  Settings come from built-in defaults, then the TOML file (--config or KAI_CONFIG), \
                  then KAI_* environment variables (nested options with `__`, e.g. \
                  KAI_LIMITS__MANIFEST_MAX_BYTES), then flags."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry.
    Serve(ServeArgs),
    /// Print the effective configuration as TOML (defaults, file, environment and flags merged).
    Config(CommonArgs),
    /// Apply pending metadata database migrations and exit (`serve` also applies
    /// them at start; on PostgreSQL under an advisory lock, so replicas may start together).
    Migrate(CommonArgs),
    /// The local CA of `kai serve --tls auto`.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Make a client trust Kai's CA: docker, podman, the system store, or a buildx builder.
    #[command(subcommand)]
    Setup(setup::SetupCommand),
    /// Check, from a client machine, that a Kai registry works: DNS, TCP, TLS trust
    /// (system, Docker, BuildKit), the API, login, a push/pull round trip, old clients.
    Doctor(doctor::DoctorArgs),
    #[command(flatten)]
    Accounts(accounts::AccountCommand),
}

/// Options every subcommand that reads the configuration takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// The TOML configuration file; kai.example.toml documents every option.
    #[arg(long, env = "KAI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data directory: blobs, upload staging and the SQLite database [default: ./kai-data].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The metadata database: sqlite://PATH or postgres://USER:PASSWORD@HOST/DATABASE
    /// [default: sqlite://DATA/kai.db].
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Where blobs are stored: file:///PATH, s3://BUCKET[/PREFIX] (endpoint, region and
    /// credentials from [s3] or AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP), az://CONTAINER[/PREFIX] (Azure Blob Storage:
    /// AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_ENDPOINT, ...) or
    /// gs://BUCKET[/PREFIX] (Google Cloud Storage: GOOGLE_APPLICATION_CREDENTIALS, ...)
    /// [default: file://DATA].
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The address to listen on; port 0 picks a free port [default: 0.0.0.0:5000].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Serve HTTPS: `auto` (a local CA in DATA/tls/ issues and renews a certificate
    /// for --hostname) or `files` (--tls-cert and --tls-key); `off` is plain HTTP [default: off].
    #[arg(long, value_name = "MODE", value_parser = ["off", "auto", "files"])]
    pub tls: Option<String>,
    /// The PEM certificate chain to serve; implies --tls files. Reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert. Reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// With --tls auto: the name clients use, e.g. registry.localhost.direct. The
    /// certificate also names localhost, 127.0.0.1, ::1 and the listen address.
    #[arg(long, value_name = "HOST")]
    pub hostname: Option<String>,
    /// Also listen for plain HTTP on ADDR and redirect every request to HTTPS.
    #[arg(long, value_name = "ADDR")]
    pub http_redirect: Option<std::net::SocketAddr>,
}

impl ServeArgs {
    fn tls_overrides(&self) -> anyhow::Result<TlsOverrides> {
        let mode = match &self.tls {
            Some(mode) => Some(mode.parse::<TlsMode>()?),
            None if self.tls_cert.is_some() || self.tls_key.is_some() => Some(TlsMode::Files),
            None => None,
        };
        Ok(TlsOverrides {
            mode,
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            hostname: self.hostname.clone(),
            redirect_listen: self.http_redirect,
        })
    }
}

impl CommonArgs {
    fn load(&self, listen: Option<std::net::SocketAddr>) -> anyhow::Result<Config> {
        self.load_with(Overrides {
            listen,
            ..Overrides::default()
        })
    }

    fn load_with(&self, overrides: Overrides) -> anyhow::Result<Config> {
        let overrides = Overrides {
            data: self.data.clone(),
            database: self.database.clone(),
            storage: self.storage.clone(),
            ..overrides
        };
        Config::load(self.config.as_deref(), &overrides)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(arguments) => {
            let config = arguments.common.load_with(Overrides {
                listen: arguments.listen,
                tls: arguments.tls_overrides()?,
                ..Overrides::default()
            })?;
            crate::server::init_logging(&config)?;
            crate::memory::keep_resident_memory_low();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(crate::server::serve(config))
        }
        Command::Config(arguments) => {
            print!("{}", arguments.load(None)?.to_toml());
            Ok(())
        }
        Command::Migrate(arguments) => {
            let config = arguments.load(None)?;
            let url = config.database_url();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let meta = kai_meta::MetaStore::open(&url).await.map_err(|error| {
                    anyhow::anyhow!(
                        "cannot migrate {}: {error}; check --database / KAI_DATABASE",
                        kai_meta::redact_url(&url)
                    )
                })?;
                meta.close().await;
                anyhow::Ok(())
            })?;
            println!("database {} is up to date", kai_meta::redact_url(&url));
            Ok(())
        }
        Command::Accounts(command) => accounts::run(command),
        Command::Ca(command) => ca::run(command),
        Command::Setup(command) => setup::run(command),
        Command::Doctor(arguments) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let healthy = runtime.block_on(doctor::run(arguments))?;
            if healthy {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "kai doctor found problems; see the fail lines above"
                ))
            }
        }
    }
}
