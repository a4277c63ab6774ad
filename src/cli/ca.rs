//! `kai ca export`: print the local CA that `kai serve --tls auto` created.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::config::{Config, Overrides};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM) that clients install to trust `kai serve --tls auto`:
    /// `kai ca export > kai-ca.crt`, then on each client `kai setup docker --host HOST:PORT
    /// --ca kai-ca.crt`.
    Export(DataArgs),
}

/// Where to find the data directory (and so the CA): the configuration file or `--data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// The TOML configuration file of the Kai server; kai.example.toml documents every option.
    #[arg(long, env = "KAI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The Kai server's data directory; the CA is DATA/tls/ca.crt [default: ./kai-data].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

impl DataArgs {
    /// The layered configuration (file, `KAI_*` variables, `--data`).
    pub fn load(&self) -> anyhow::Result<Config> {
        let overrides = Overrides {
            data: self.data.clone(),
            ..Overrides::default()
        };
        Config::load(self.config.as_deref(), &overrides)
    }
}

pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Export(arguments) => {
            let config = arguments.load()?;
            let path = crate::tls::ca_certificate_path(&config.data);
            if !path.exists() {
                anyhow::bail!(
                    "no local CA at {}: `kai serve --tls auto --hostname HOST` creates it at its first \
                     start; is --data (or KAI_DATA, `data` in the config file) the server's data directory?",
                    path.display()
                );
            }
            // Checked, so that what is printed is a certificate clients can use.
            crate::tls::read_certificates(&path, "the local CA")?;
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the local CA {}", path.display()))?;
            print!("{pem}");
            Ok(())
        }
    }
}
