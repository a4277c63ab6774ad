//! `kai setup docker|podman|system|buildx`: make a client trust Kai's CA.
//!
//! Each writes the CA where that client looks for it; `--print` shows the same
//! as shell commands and changes nothing; `--root DIR` puts every default path
//! under DIR (for tests and image builds).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::ca::DataArgs;
use crate::tls::CertificateSummary;

#[derive(Debug, Subcommand)]
pub enum SetupCommand {
    /// Trust the CA in the Docker engine: /etc/docker/certs.d/HOST:PORT/ca.crt. Docker reads it
    /// at the next pull or push; no restart needed.
    Docker(TrustArgs),
    /// Trust the CA in podman, buildah and skopeo: /etc/containers/certs.d/HOST:PORT/ca.crt.
    Podman(TrustArgs),
    /// Trust the CA system-wide (Debian, Ubuntu): /usr/local/share/ca-certificates/kai-HOST.crt,
    /// then update-ca-certificates. curl, git and Go programs use it; restart dockerd to include it.
    System(TrustArgs),
    /// Write a buildkitd.toml that trusts the CA for HOST:PORT, and print the `docker buildx
    /// create` command for a builder that uses it (and why it needs the host's network).
    Buildx(BuildxArgs),
}

#[derive(Debug, Args)]
pub struct TrustArgs {
    /// The registry as clients name it in image references: HOST or HOST:PORT
    /// (without a port, clients use 443).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub host: String,
    /// The CA certificate (PEM) to trust. On the Kai server, `kai ca export > kai-ca.crt`
    /// writes it [default: DATA/tls/ca.crt, when Kai runs on this machine].
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print what would be done, as shell commands, and change nothing.
    #[arg(long)]
    pub print: bool,
    /// Put every default path under DIR, e.g. DIR/etc/docker/certs.d/... (for tests and image builds).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BuildxArgs {
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Where to write buildkitd.toml and ca.crt
    /// [default: $XDG_CONFIG_HOME/kai/buildkit/HOST:PORT, or ~/.config/kai/buildkit/HOST:PORT].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The builder's name in the printed `docker buildx create` command.
    #[arg(long, value_name = "NAME", default_value = "kai")]
    pub name: String,
}

/// A registry host as image references name it: `host` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    pub host: String,
    pub port: Option<u16>,
}

impl RegistryHost {
    pub fn parse(text: &str) -> anyhow::Result<RegistryHost> {
        let bad = || {
            anyhow::anyhow!(
                "--host {text:?} is not HOST or HOST:PORT (e.g. registry.localhost.direct:5000), \
                 without https://"
            )
        };
        if text.contains("://") || text.contains('/') {
            return Err(bad());
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (host, port)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                _ => (text, None),
            }
        };
        let port = match port {
            Some(port) => Some(port.parse::<u16>().map_err(|_| bad())?),
            None => None,
        };
        crate::tls::check_hostname(host).map_err(|_| bad())?;
        Ok(RegistryHost {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// `host:port` (or `host`), as Docker names its certs.d directory and
    /// BuildKit its registry sections.
    pub fn key(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }

    /// The port clients connect to.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(443)
    }
}

/// `/etc/...` under `root`, if given.
pub fn under_root(root: Option<&Path>, path: &str) -> PathBuf {
    match root {
        Some(root) => root.join(path.trim_start_matches('/')),
        None => PathBuf::from(path),
    }
}

pub fn docker_ca_path(root: Option<&Path>, host: &RegistryHost) -> PathBuf {
    under_root(root, "/etc/docker/certs.d")
        .join(host.key())
        .join("ca.crt")
}

pub fn podman_ca_path(root: Option<&Path>, host: &RegistryHost) -> PathBuf {
    under_root(root, "/etc/containers/certs.d")
        .join(host.key())
        .join("ca.crt")
}

pub fn system_ca_path(root: Option<&Path>, host: &RegistryHost) -> PathBuf {
    let name: String = host
        .host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    under_root(root, "/usr/local/share/ca-certificates").join(format!("kai-{name}.crt"))
}

/// Where `kai setup buildx` writes by default, and `kai doctor` looks.
pub fn buildx_directory(root: Option<&Path>, host: &RegistryHost) -> PathBuf {
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/etc"));
    let directory = config_home.join("kai").join("buildkit").join(host.key());
    match root {
        Some(root) => under_root(Some(root), &directory.to_string_lossy()),
        None => directory,
    }
}

/// The CA to install: its path, PEM text and description.
struct CaFile {
    path: PathBuf,
    pem: String,
    summary: CertificateSummary,
}

impl CaFile {
    fn load(arguments: &TrustArgs) -> anyhow::Result<CaFile> {
        let (path, setting) = match &arguments.ca {
            Some(path) => (path.clone(), "--ca"),
            None => {
                let config = arguments.data.load()?;
                let path = crate::tls::ca_certificate_path(&config.data);
                if !path.exists() {
                    anyhow::bail!(
                        "no CA to install: pass --ca FILE. On the Kai server, `kai ca export > kai-ca.crt` \
                         writes it (there is no {} here, the CA of a `kai serve --tls auto` on this machine)",
                        path.display()
                    );
                }
                (path, "the local CA of --tls auto")
            }
        };
        let certificates = crate::tls::read_certificates(&path, setting)?;
        let summary = CertificateSummary::parse(&certificates[0])?;
        if !summary.is_ca {
            eprintln!(
                "warning: {} is not a CA certificate ({}); clients need the CA that issued Kai's \
                 certificate (with --tls auto: `kai ca export` on the server)",
                path.display(),
                summary.subject
            );
        }
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(CaFile { path, pem, summary })
    }

    fn describe(&self) -> String {
        format!(
            "CA \"{}\" (SHA-256 {})",
            self.summary.subject, self.summary.fingerprint
        )
    }
}

pub fn run(mut command: SetupCommand) -> anyhow::Result<()> {
    let trust = match &mut command {
        SetupCommand::Docker(trust) | SetupCommand::Podman(trust) | SetupCommand::System(trust) => {
            trust
        }
        SetupCommand::Buildx(arguments) => &mut arguments.trust,
    };
    // Absolute, because buildkitd.toml names the CA by its path.
    if let Some(root) = &trust.root {
        trust.root =
            Some(std::path::absolute(root).with_context(|| format!("--root {}", root.display()))?);
    }
    match command {
        SetupCommand::Docker(arguments) => {
            let host = RegistryHost::parse(&arguments.host)?;
            let target = docker_ca_path(arguments.root.as_deref(), &host);
            install_ca(&arguments, &host, &target, "docker")?;
            if !arguments.print {
                println!("The Docker engine reads it at the next pull or push; no restart needed.");
                println!("Check the whole setup: kai doctor https://{}", host.key());
            }
            Ok(())
        }
        SetupCommand::Podman(arguments) => {
            let host = RegistryHost::parse(&arguments.host)?;
            let target = podman_ca_path(arguments.root.as_deref(), &host);
            install_ca(&arguments, &host, &target, "podman")?;
            if !arguments.print {
                println!("podman, buildah and skopeo read it at their next run.");
            }
            Ok(())
        }
        SetupCommand::System(arguments) => setup_system(&arguments),
        SetupCommand::Buildx(arguments) => setup_buildx(&arguments),
    }
}

fn install_ca(
    arguments: &TrustArgs,
    host: &RegistryHost,
    target: &Path,
    what: &str,
) -> anyhow::Result<()> {
    let ca = CaFile::load(arguments)?;
    let directory = target.parent().unwrap_or(Path::new("/"));
    if arguments.print {
        println!(
            "# kai setup {what} would trust the {} for {}:",
            ca.describe(),
            host.key()
        );
        println!("mkdir -p {}", shell_quote(directory));
        println!(
            "install -m 0644 {} {}",
            shell_quote(&ca.path),
            shell_quote(target)
        );
        return Ok(());
    }
    let previous = std::fs::read_to_string(target).ok();
    write_file(target, &ca.pem, arguments.root.is_none(), what, host)?;
    let verb = match previous {
        Some(previous) if previous == ca.pem => "already trusted",
        Some(_) => "replaced the previous CA with",
        None => "installed",
    };
    println!("{verb} the {} for {}:", ca.describe(), host.key());
    println!("  {}", target.display());
    Ok(())
}

/// Writes `contents` to `path`, creating its directory; a permission error
/// says to run as root.
fn write_file(
    path: &Path,
    contents: &str,
    suggest_sudo: bool,
    what: &str,
    host: &RegistryHost,
) -> anyhow::Result<()> {
    let result = (|| -> std::io::Result<()> {
        if let Some(directory) = path.parent() {
            std::fs::create_dir_all(directory)?;
        }
        std::fs::write(path, contents)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    })();
    result.map_err(|error| {
        let hint = if error.kind() == std::io::ErrorKind::PermissionDenied && suggest_sudo {
            format!(
                "; run it as root: sudo kai setup {what} --host {} --ca FILE (or --print to see the commands)",
                host.key()
            )
        } else {
            String::new()
        };
        anyhow::anyhow!("cannot write {}: {error}{hint}", path.display())
    })
}

fn setup_system(arguments: &TrustArgs) -> anyhow::Result<()> {
    let host = RegistryHost::parse(&arguments.host)?;
    let ca = CaFile::load(arguments)?;
    let target = system_ca_path(arguments.root.as_deref(), &host);
    let directory = target.parent().unwrap_or(Path::new("/"));
    if arguments.print {
        println!(
            "# kai setup system would trust the {} system-wide:",
            ca.describe()
        );
        println!("mkdir -p {}", shell_quote(directory));
        println!(
            "install -m 0644 {} {}",
            shell_quote(&ca.path),
            shell_quote(&target)
        );
        if arguments.root.is_none() {
            println!("update-ca-certificates");
        }
        return Ok(());
    }
    write_file(&target, &ca.pem, arguments.root.is_none(), "system", &host)?;
    println!("installed the {}:", ca.describe());
    println!("  {}", target.display());
    if arguments.root.is_some() {
        println!(
            "update-ca-certificates skipped under --root; run it inside that root (chroot DIR update-ca-certificates)"
        );
        return Ok(());
    }
    let status = std::process::Command::new("update-ca-certificates").status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => anyhow::bail!(
            "update-ca-certificates failed ({status}); the CA is at {} but not yet in /etc/ssl/certs",
            target.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "update-ca-certificates is not installed (`apt-get install ca-certificates`). On Fedora or \
             RHEL instead: sudo cp {} /etc/pki/ca-trust/source/anchors/ && sudo update-ca-trust",
            target.display()
        ),
        Err(error) => anyhow::bail!("cannot run update-ca-certificates: {error}"),
    }
    println!(
        "The system store trusts it now (curl, git, Go and Rust programs). The Docker engine reads \
         the system store at start: restart it (sudo systemctl restart docker), or use \
         `kai setup docker --host {}`, which needs no restart.",
        host.key()
    );
    Ok(())
}

fn setup_buildx(arguments: &BuildxArgs) -> anyhow::Result<()> {
    let trust = &arguments.trust;
    let host = RegistryHost::parse(&trust.host)?;
    let ca = CaFile::load(trust)?;
    let directory = match &arguments.dir {
        Some(directory) => std::path::absolute(directory)
            .with_context(|| format!("--dir {}", directory.display()))?,
        None => buildx_directory(trust.root.as_deref(), &host),
    };
    let config_path = directory.join("buildkitd.toml");
    let ca_path = directory.join("ca.crt");
    let config = buildkitd_toml(&host, &ca_path);
    if trust.print {
        println!(
            "# kai setup buildx would make BuildKit trust the {} for {}:",
            ca.describe(),
            host.key()
        );
        println!("mkdir -p {}", shell_quote(&directory));
        println!(
            "install -m 0644 {} {}",
            shell_quote(&ca.path),
            shell_quote(&ca_path)
        );
        println!("cat > {} <<'EOF'", shell_quote(&config_path));
        print!("{config}");
        println!("EOF");
    } else {
        write_file(&ca_path, &ca.pem, false, "buildx", &host)?;
        write_file(&config_path, &config, false, "buildx", &host)?;
        println!(
            "wrote {}: BuildKit trusts the {} for {}",
            config_path.display(),
            ca.describe(),
            host.key()
        );
        println!("wrote {}", ca_path.display());
    }
    print!(
        "{}",
        buildx_instructions(&host, &config_path, &arguments.name)
    );
    Ok(())
}

/// The buildkitd.toml that trusts `ca` for `host`. `docker buildx create
/// --buildkitd-config` copies the CA files it names into the builder.
pub fn buildkitd_toml(host: &RegistryHost, ca: &Path) -> String {
    let ca = ca.to_string_lossy();
    format!(
        "# Written by `kai setup buildx --host {key}`: BuildKit trusts Kai's CA for {key}.\n\
         # `docker buildx create --buildkitd-config THIS_FILE` copies the CA into the builder.\n\
         [registry.{section}]\n  ca = [{ca}]\n",
        key = host.key(),
        section = toml_string(&host.key()),
        ca = toml_string(&ca),
    )
}

fn buildx_instructions(host: &RegistryHost, config_path: &Path, name: &str) -> String {
    let key = host.key();
    let config = shell_quote(config_path);
    let lan = crate::tls::lan_address();
    let lan_text = lan.map(|ip| format!(" (here: {ip})")).unwrap_or_default();
    let mut text = String::new();
    let _ = write!(
        text,
        "\nCreate a builder that uses it (remove an older one of that name first: docker buildx rm {name}):\n\n\
         \x20 docker buildx create --name {name} --driver docker-container --driver-opt network=host \\\n\
         \x20   --buildkitd-config {config} --use\n\n\
         Then push as usual: docker buildx build --platform linux/amd64,linux/arm64 -t {key}/team/app:1.0 --push .\n\n\
         Why network=host: BuildKit runs in a container of its own, where 127.0.0.1 is that\n\
         container, not this machine. A registry name that resolves to 127.0.0.1 (such as\n\
         *.localhost.direct, or localhost) leads BuildKit to itself, and the push fails with\n\
         \"connection refused\". With network=host the builder shares this machine's network,\n\
         so 127.0.0.1 is this machine again.\n\n",
    );
    match host.host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => {
            let lan = lan.map_or_else(|| "LAN-ADDRESS".to_owned(), |ip| ip.to_string());
            let _ = write!(
                text,
                "Without network=host, name the registry by this machine's LAN address{lan_text}, which\n\
                 containers reach: kai serve --tls auto --hostname {lan}, then\n\
                 kai setup buildx --host {lan}:{port} and a builder without --driver-opt network=host.\n",
                port = host.port_or_default(),
            );
        }
        Ok(_) => {
            let _ = write!(
                text,
                "{ip} is not a loopback address, so a builder on Docker's default network reaches it\n\
                 too: the same command without --driver-opt network=host works.\n",
                ip = host.host,
            );
        }
        Err(_) => {
            let _ = write!(
                text,
                "Without network=host, {host} must resolve, through DNS, to an address of this machine\n\
                 that containers reach: its LAN address{lan_text} (the builder does not see this\n\
                 machine's /etc/hosts). Then create the builder without --driver-opt network=host.\n\
                 `docker buildx build --add-host {host}:host-gateway` maps the name for RUN steps only;\n\
                 BuildKit's own pushes and pulls still resolve {host} through DNS, and\n\
                 `docker buildx create` has no option to add a host entry to the builder.\n",
                host = host.host,
            );
        }
    }
    text
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// A path as one shell word.
pub fn shell_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-:+=@,".contains(c))
    {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        let host = RegistryHost::parse("Registry.localhost.direct:5000").unwrap();
        assert_eq!(host.key(), "registry.localhost.direct:5000");
        assert_eq!(host.port_or_default(), 5000);
        let host = RegistryHost::parse("registry.example").unwrap();
        assert_eq!(host.key(), "registry.example");
        assert_eq!(host.port_or_default(), 443);
        let host = RegistryHost::parse("[::1]:5000").unwrap();
        assert_eq!(host.key(), "[::1]:5000");
        assert_eq!(
            RegistryHost::parse("127.0.0.1:5000").unwrap().host,
            "127.0.0.1"
        );
        for bad in [
            "https://registry",
            "registry:port",
            "registry/path",
            "",
            "[::1",
        ] {
            assert!(RegistryHost::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buildkitd_toml_names_the_registry_and_ca() {
        let host = RegistryHost::parse("registry.localhost.direct:5000").unwrap();
        let text = buildkitd_toml(&host, Path::new("/home/me/.config/kai/ca.crt"));
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            parsed["registry"]["registry.localhost.direct:5000"]["ca"][0].as_str(),
            Some("/home/me/.config/kai/ca.crt")
        );
    }
}
