//! The command line: `kai serve`, `kai config`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides};

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
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The address to listen on; port 0 picks a free port [default: 0.0.0.0:5000].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

impl CommonArgs {
    fn load(&self, listen: Option<std::net::SocketAddr>) -> anyhow::Result<Config> {
        let overrides = Overrides {
            listen,
            data: self.data.clone(),
        };
        Config::load(self.config.as_deref(), &overrides)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(arguments) => {
            let config = arguments.common.load(arguments.listen)?;
            crate::server::init_logging(&config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(crate::server::serve(config))
        }
        Command::Config(arguments) => {
            print!("{}", arguments.load(None)?.to_toml());
            Ok(())
        }
    }
}
