//! `kai doctor URL`: run on a client machine, checks what stands between its
//! clients and a Kai registry, in the order a push meets it. One line each,
//! `ok`, `warn`, `fail` or `skip` (not run: an earlier check failed), with the
//! command that fixes a warning or failure on the line below.
//!
//! The TLS checks take the certificate chain the server presents once, then
//! ask of each trust store a client uses (the system's, the Docker engine's,
//! BuildKit's) whether it accepts that chain for the host name.

use std::fmt::Display;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use clap::Args;
use reqwest::{Method, StatusCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::setup::{self, RegistryHost};
use crate::tls::CertificateSummary;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const IN_TOTO: &str = "application/vnd.in-toto+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The registry as clients reach it: https://HOST[:PORT] (HOST:PORT alone means https).
    #[arg(value_name = "URL")]
    pub url: String,
    /// Also check with this CA certificate (PEM), e.g. the output of `kai ca export`; it is
    /// then used in the fix commands.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Check that the registry accepts this user's login; the password comes from
    /// standard input (--password-stdin).
    #[arg(long, value_name = "USER", requires = "password_stdin")]
    pub user: Option<String>,
    /// Read the password for --user from standard input.
    #[arg(long, requires = "user")]
    pub password_stdin: bool,
    /// Look for the files `kai setup --root DIR` wrote (Docker's certs.d, the buildx
    /// files) under DIR.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The buildkitd.toml to check [default: where `kai setup buildx` writes it].
    #[arg(long, value_name = "FILE")]
    pub buildkitd_config: Option<PathBuf>,
    /// The repository the round trip pushes to and deletes from again.
    #[arg(long, value_name = "NAME", default_value = "kai-doctor/round-trip")]
    pub repository: String,
    /// Seconds to wait for each network step.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// The printed lines and their tally.
#[derive(Default)]
struct Report {
    ok: usize,
    warn: usize,
    fail: usize,
    skip: usize,
    /// Whether a fix named the placeholder `kai-ca.crt`.
    named_ca_placeholder: bool,
}

impl Report {
    fn line(&mut self, status: Status, check: &str, message: impl Display, fix: Option<String>) {
        let label = match status {
            Status::Ok => {
                self.ok += 1;
                "ok"
            }
            Status::Warn => {
                self.warn += 1;
                "warn"
            }
            Status::Fail => {
                self.fail += 1;
                "fail"
            }
            Status::Skip => {
                self.skip += 1;
                "skip"
            }
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{label:<5} {check:<13} {message}");
        if let Some(fix) = fix {
            self.named_ca_placeholder |= fix.contains("--ca kai-ca.crt");
            let _ = writeln!(out, "      fix: {fix}");
        }
        let _ = out.flush();
    }

    fn ok(&mut self, check: &str, message: impl Display) {
        self.line(Status::Ok, check, message, None);
    }

    fn warn(&mut self, check: &str, message: impl Display, fix: impl Into<String>) {
        self.line(Status::Warn, check, message, Some(fix.into()));
    }

    fn fail(&mut self, check: &str, message: impl Display, fix: impl Into<String>) {
        self.line(Status::Fail, check, message, Some(fix.into()));
    }

    fn skip(&mut self, check: &str, why: impl Display) {
        self.line(Status::Skip, check, format!("not run: {why}"), None);
    }
}

/// What the checks share.
struct Doctor {
    arguments: DoctorArgs,
    https: bool,
    host: RegistryHost,
    base: String,
    timeout: Duration,
    /// How the fix commands name the CA file.
    ca_hint: String,
    password: Option<String>,
}

pub async fn run(arguments: DoctorArgs) -> anyhow::Result<bool> {
    let (https, host) = parse_url(&arguments.url)?;
    let password = if arguments.password_stdin {
        let mut password = String::new();
        std::io::stdin()
            .read_line(&mut password)
            .context("reading the password from standard input")?;
        Some(password.trim_end_matches(['\n', '\r']).to_owned())
    } else {
        None
    };
    let ca_hint = match &arguments.ca {
        Some(path) => setup::shell_quote(path),
        None => "kai-ca.crt".into(),
    };
    let doctor = Doctor {
        base: format!("{}://{}", if https { "https" } else { "http" }, host.key()),
        https,
        host,
        timeout: Duration::from_secs(arguments.timeout.max(1)),
        ca_hint,
        password,
        arguments,
    };
    println!("kai doctor {}", doctor.base);
    let mut report = Report::default();
    doctor.check(&mut report).await;
    println!(
        "\n{} ok, {} warn, {} fail, {} not run",
        report.ok, report.warn, report.fail, report.skip
    );
    if report.named_ca_placeholder {
        println!(
            "(fix commands name the CA kai-ca.crt: on the Kai server, `kai ca export > kai-ca.crt` writes it)"
        );
    }
    Ok(report.fail == 0)
}

/// `https://host[:port]`, `http://...` or `host[:port]` (https).
fn parse_url(text: &str) -> anyhow::Result<(bool, RegistryHost)> {
    let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else if text.contains("://") {
        anyhow::bail!("{text:?}: kai doctor checks https:// (or http://) registries");
    } else {
        (true, text)
    };
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix("/v2").unwrap_or(rest);
    let mut host = RegistryHost::parse(rest).map_err(|_| {
        anyhow::anyhow!("{text:?} is not a registry URL; give https://HOST[:PORT], e.g. https://registry.localhost.direct:5000")
    })?;
    if !https && host.port.is_none() {
        host.port = Some(80);
    }
    Ok((https, host))
}

impl Doctor {
    fn port(&self) -> u16 {
        self.host.port_or_default()
    }

    async fn check(&self, report: &mut Report) {
        let Some(addresses) = self.dns(report).await else {
            for check in ["tcp", "tls", "api", "round trip"] {
                report.skip(check, "the name does not resolve");
            }
            return;
        };
        let Some(address) = self.tcp(report, &addresses).await else {
            for check in ["tls", "api", "round trip"] {
                report.skip(check, "no TCP connection");
            }
            return;
        };
        let client = if self.https {
            match self.tls(report, address).await {
                Ok(roots) => match self.client(Some(roots)) {
                    Ok(client) => client,
                    Err(error) => {
                        report.fail(
                            "api",
                            format!("cannot build an HTTP client: {error:#}"),
                            "report this as a Kai bug",
                        );
                        return;
                    }
                },
                Err(why) => {
                    for check in ["api", "login", "round trip", "old docker"] {
                        report.skip(check, why);
                    }
                    return;
                }
            }
        } else {
            report.warn(
                "tls",
                "plain HTTP: Docker, podman and BuildKit refuse it for hosts outside 127.0.0.0/8 \
                 unless listed as an insecure registry",
                format!(
                    "serve HTTPS: kai serve --tls auto --hostname {}",
                    self.host.host
                ),
            );
            match self.client(None) {
                Ok(client) => client,
                Err(error) => {
                    report.fail(
                        "api",
                        format!("cannot build an HTTP client: {error:#}"),
                        "report this as a Kai bug",
                    );
                    return;
                }
            }
        };
        let Some(open) = self.api(report, &client).await else {
            for check in ["login", "round trip", "old docker"] {
                report.skip(check, "/v2/ does not answer as a registry");
            }
            return;
        };
        if !self.login(report, &client, open).await {
            for check in ["round trip", "old docker"] {
                report.skip(check, "no working login");
            }
            return;
        }
        self.round_trip(report, &client).await;
    }

    // --- DNS and TCP ------------------------------------------------------------------------

    async fn dns(&self, report: &mut Report) -> Option<Vec<SocketAddr>> {
        let host = &self.host.host;
        let loopback_fix = || {
            let lan = crate::tls::lan_address();
            let alternative = if host.parse::<IpAddr>().is_ok() {
                let lan = lan.map_or_else(|| "LAN-ADDRESS".to_owned(), |ip| ip.to_string());
                if self.https {
                    format!(
                        "name the registry by this machine's LAN address: kai serve --tls auto --hostname {lan}"
                    )
                } else {
                    format!(
                        "name the registry by this machine's LAN address, {lan}:{}",
                        self.port()
                    )
                }
            } else {
                let lan = lan.map(|ip| format!(" ({ip} here)")).unwrap_or_default();
                format!("make {host} resolve to this machine's LAN address{lan} in DNS")
            };
            if self.https {
                format!(
                    "kai setup buildx --host {} --ca {} (a builder on this machine's network), or {alternative}",
                    self.host.key(),
                    self.ca_hint
                )
            } else {
                format!(
                    "docker buildx create --name kai --driver docker-container --driver-opt network=host --use \
                     (a builder on this machine's network), or {alternative}"
                )
            }
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            let address = SocketAddr::new(ip, self.port());
            if ip.is_loopback() {
                report.warn(
                    "dns",
                    format!("{host} is a loopback address: fine for docker and podman on this machine, but \
                             containers (BuildKit's builder, devcontainers) reach themselves there"),
                    loopback_fix(),
                );
            } else {
                report.ok("dns", format!("{host} is an IP address"));
            }
            return Some(vec![address]);
        }
        let lookup = tokio::net::lookup_host((host.as_str(), self.port()));
        let addresses = match tokio::time::timeout(self.timeout, lookup).await {
            Ok(Ok(addresses)) => {
                let mut unique: Vec<SocketAddr> = Vec::new();
                for address in addresses {
                    if !unique.contains(&address) {
                        unique.push(address);
                    }
                }
                unique
            }
            Ok(Err(error)) => {
                report.fail(
                    "dns",
                    format!("{host} does not resolve: {error}"),
                    format!("add it to DNS, or on this machine: echo 'IP-OF-THE-KAI-SERVER {host}' | sudo tee -a /etc/hosts"),
                );
                return None;
            }
            Err(_) => {
                report.fail(
                    "dns",
                    format!(
                        "resolving {host} took more than {}s",
                        self.timeout.as_secs()
                    ),
                    "check /etc/resolv.conf and the DNS server",
                );
                return None;
            }
        };
        if addresses.is_empty() {
            report.fail(
                "dns",
                format!("{host} resolves to no address"),
                format!("add it to DNS, or: echo 'IP-OF-THE-KAI-SERVER {host}' | sudo tee -a /etc/hosts"),
            );
            return None;
        }
        let listed = addresses
            .iter()
            .map(|address| address.ip().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if addresses.iter().all(|address| address.ip().is_loopback()) {
            report.warn(
                "dns",
                format!(
                    "{host} resolves to {listed} (loopback): fine for docker and podman on this machine, \
                     but containers (BuildKit's builder, devcontainers) reach themselves there"
                ),
                loopback_fix(),
            );
        } else {
            report.ok("dns", format!("{host} resolves to {listed}"));
        }
        Some(addresses)
    }

    async fn tcp(&self, report: &mut Report, addresses: &[SocketAddr]) -> Option<SocketAddr> {
        let mut errors = Vec::new();
        for address in addresses {
            let started = Instant::now();
            match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(address)).await
            {
                Ok(Ok(_stream)) => {
                    report.ok(
                        "tcp",
                        format!(
                            "connected to {address} in {} ms",
                            started.elapsed().as_millis()
                        ),
                    );
                    return Some(*address);
                }
                Ok(Err(error)) => errors.push(format!("{address}: {error}")),
                Err(_) => errors.push(format!(
                    "{address}: no answer within {}s",
                    self.timeout.as_secs()
                )),
            }
        }
        report.fail(
            "tcp",
            format!("cannot connect to {}", errors.join("; ")),
            format!(
                "start Kai on the server: kai serve --tls auto --hostname {} --listen 0.0.0.0:{} \
                 (or open port {} in its firewall)",
                self.host.host,
                self.port(),
                self.port()
            ),
        );
        None
    }

    // --- TLS ----------------------------------------------------------------------------------

    /// The certificate line and one line per trust store. Returns the roots
    /// the API checks use (the first store that trusts the server), or why
    /// there are none.
    async fn tls(
        &self,
        report: &mut Report,
        address: SocketAddr,
    ) -> Result<RootCertStore, &'static str> {
        let probe = match self.probe(address).await {
            Ok(probe) => probe,
            Err(problem) => {
                report.fail(
                    "tls",
                    problem,
                    format!(
                        "serve HTTPS on this port: kai serve --tls auto --hostname {}",
                        self.host.host
                    ),
                );
                for check in ["tls system", "tls docker", "tls buildkit"] {
                    report.skip(check, "no TLS handshake");
                }
                return Err("no TLS handshake");
            }
        };
        let Some(leaf) = probe.chain.first() else {
            report.fail(
                "tls",
                "the server presented no certificate",
                "check the server's TLS files",
            );
            return Err("no certificate");
        };
        let summary = match CertificateSummary::parse(leaf) {
            Ok(summary) => summary,
            Err(error) => {
                report.fail(
                    "tls",
                    format!("the server's certificate: {error:#}"),
                    "check the server's TLS files",
                );
                return Err("the certificate does not parse");
            }
        };
        let issuer_summary = probe
            .chain
            .last()
            .and_then(|top| CertificateSummary::parse(top).ok());
        self.certificate_line(report, &probe, &summary);

        let mut trusted: Option<RootCertStore> = None;
        let use_roots = |roots: &RootCertStore, trusted: &mut Option<RootCertStore>| {
            if trusted.is_none() {
                *trusted = Some(roots.clone());
            }
        };

        // The CA file given on the command line.
        if let Some(path) = &self.arguments.ca {
            match load_roots(path) {
                Ok(roots) => match verify(&roots, &probe.chain, &self.host.host) {
                    Ok(()) => {
                        report.ok(
                            "tls --ca",
                            format!("{} verifies the server", path.display()),
                        );
                        use_roots(&roots, &mut trusted);
                    }
                    Err(error) => {
                        let (message, fix) = self.explain(
                            &error,
                            &format!("{}", path.display()),
                            &summary,
                            issuer_summary.as_ref(),
                            None,
                        );
                        report.fail("tls --ca", message, fix);
                    }
                },
                Err(error) => report.fail(
                    "tls --ca",
                    format!("{error:#}"),
                    "on the Kai server: kai ca export > kai-ca.crt, then copy it here",
                ),
            }
        }

        // The system store (curl, git, Go programs; dockerd at its start).
        let (system_roots, system_name) = system_roots();
        let system_trusts = match verify(&system_roots, &probe.chain, &self.host.host) {
            Ok(()) => {
                report.ok("tls system", format!("{system_name} trusts the server"));
                use_roots(&system_roots, &mut trusted);
                true
            }
            Err(error) => {
                let fix = format!(
                    "sudo kai setup system --host {} --ca {}",
                    self.host.key(),
                    self.ca_hint
                );
                let (message, fix) = self.explain(
                    &error,
                    &system_name,
                    &summary,
                    issuer_summary.as_ref(),
                    Some(fix),
                );
                report.fail("tls system", message, fix);
                false
            }
        };

        // The Docker engine: the system store plus certs.d/HOST:PORT/*.crt.
        let docker_directory = setup::docker_ca_path(self.arguments.root.as_deref(), &self.host)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let docker_fix = format!(
            "sudo kai setup docker --host {} --ca {}",
            self.host.key(),
            self.ca_hint
        );
        let docker_files = crt_files(&docker_directory);
        if docker_files.is_empty() {
            if system_trusts {
                report.ok(
                    "tls docker",
                    format!(
                        "no {}, but the system store trusts the server (dockerd reads it at its start: \
                         restart dockerd if the CA was added after)",
                        docker_directory.join("ca.crt").display()
                    ),
                );
            } else {
                report.fail(
                    "tls docker",
                    format!(
                        "the Docker engine will refuse the server: no {} and the system store does not trust it",
                        docker_directory.join("ca.crt").display()
                    ),
                    docker_fix,
                );
            }
        } else {
            let mut roots = system_roots.clone();
            let mut problems = Vec::new();
            for file in &docker_files {
                match load_roots(file) {
                    Ok(file_roots) => roots.roots.extend(file_roots.roots),
                    Err(error) => problems.push(format!("{error:#}")),
                }
            }
            let names = docker_files
                .iter()
                .map(|file| file.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            match verify(&roots, &probe.chain, &self.host.host) {
                Ok(()) => {
                    report.ok(
                        "tls docker",
                        format!("the Docker engine trusts the server ({names})"),
                    );
                    use_roots(&roots, &mut trusted);
                }
                Err(error) => {
                    let (mut message, fix) = self.explain(
                        &error,
                        &names,
                        &summary,
                        issuer_summary.as_ref(),
                        Some(docker_fix),
                    );
                    if !problems.is_empty() {
                        message = format!("{message} ({})", problems.join("; "));
                    }
                    report.fail("tls docker", message, fix);
                }
            }
        }

        // BuildKit in a docker-container builder: the buildkitd.toml `kai setup buildx` writes.
        self.buildkit(
            report,
            &probe.chain,
            &summary,
            issuer_summary.as_ref(),
            system_trusts,
            &mut trusted,
        );
        trusted.ok_or("no trust store accepts the server's certificate")
    }

    fn certificate_line(&self, report: &mut Report, probe: &Probe, summary: &CertificateSummary) {
        let names = if summary.names.is_empty() {
            "no names".to_owned()
        } else {
            summary.names.join(", ")
        };
        let alpn = match probe.alpn.as_deref() {
            Some(b"h2") => "HTTP/2 (ALPN h2)",
            Some(b"http/1.1") => "HTTP/1.1 (ALPN)",
            _ => "no ALPN",
        };
        let described = format!(
            "{} with {alpn}; certificate {} for {names}, issued by {}, valid until {}",
            probe.version,
            summary.subject,
            summary.issuer,
            summary.not_after_text()
        );
        let renew_fix = "with --tls auto restart kai serve (it renews); with --tls-cert replace the files (Kai reloads them)";
        if summary.not_after <= SystemTime::now() {
            report.fail("tls", format!("{described}: EXPIRED"), renew_fix);
        } else if !names_match(&summary.names, &self.host.host) {
            report.fail(
                "tls",
                format!("{described}: it does not name {}", self.host.host),
                format!(
                    "on the server: kai serve --tls auto --hostname {} (or a certificate that names it)",
                    self.host.host
                ),
            );
        } else if summary.not_after < SystemTime::now() + Duration::from_secs(14 * 24 * 60 * 60) {
            report.warn(
                "tls",
                format!("{described}: expires in less than 14 days"),
                renew_fix,
            );
        } else {
            report.ok("tls", described);
        }
    }

    /// Says why `store` rejects the chain, and how to fix it.
    fn explain(
        &self,
        error: &rustls::Error,
        store: &str,
        summary: &CertificateSummary,
        issuer: Option<&CertificateSummary>,
        trust_fix: Option<String>,
    ) -> (String, String) {
        let issuer_name = issuer.map_or(summary.issuer.as_str(), |issuer| issuer.subject.as_str());
        let trust_fix = trust_fix.unwrap_or_else(|| {
            "on the Kai server: kai ca export > kai-ca.crt, and pass that file".to_owned()
        });
        match error {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => (
                format!("{store} does not trust the server's CA \"{issuer_name}\""),
                trust_fix,
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => (
                format!(
                    "{store} trusts the CA, but the certificate does not name {}",
                    self.host.host
                ),
                format!(
                    "on the server: kai serve --tls auto --hostname {}",
                    self.host.host
                ),
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => (
                format!("{store}: the certificate has expired"),
                "with --tls auto restart kai serve (it renews); with --tls-cert replace the files"
                    .to_owned(),
            ),
            rustls::Error::General(message) if message.contains("no root") => {
                (format!("{store} holds no CA certificates"), trust_fix)
            }
            error => (
                format!("{store} rejects the certificate: {error}"),
                trust_fix,
            ),
        }
    }

    fn buildkit(
        &self,
        report: &mut Report,
        chain: &[CertificateDer<'static>],
        summary: &CertificateSummary,
        issuer: Option<&CertificateSummary>,
        system_trusts: bool,
        trusted: &mut Option<RootCertStore>,
    ) {
        let path = match &self.arguments.buildkitd_config {
            Some(path) => path.clone(),
            None => setup::buildx_directory(self.arguments.root.as_deref(), &self.host)
                .join("buildkitd.toml"),
        };
        let fix = format!(
            "kai setup buildx --host {} --ca {}, then create the builder it prints",
            self.host.key(),
            self.ca_hint
        );
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(_) => {
                let issued_by_kai =
                    issuer.is_some_and(|issuer| issuer.subject.contains("Kai local CA"));
                if system_trusts && !issued_by_kai {
                    report.ok(
                        "tls buildkit",
                        format!(
                            "no {}; the certificate comes from a CA the system trusts, which BuildKit's \
                             image likely trusts too",
                            path.display()
                        ),
                    );
                } else {
                    report.warn(
                        "tls buildkit",
                        format!(
                            "no {}: a docker buildx builder (docker-container driver) will not trust the server",
                            path.display()
                        ),
                        fix,
                    );
                }
                return;
            }
        };
        let parsed: toml::Table = match toml::from_str(&text) {
            Ok(parsed) => parsed,
            Err(error) => {
                report.fail(
                    "tls buildkit",
                    format!("{} is not valid TOML: {error}", path.display()),
                    fix,
                );
                return;
            }
        };
        let key = self.host.key();
        let Some(section) = parsed
            .get("registry")
            .and_then(|registries| registries.get(&key))
        else {
            report.fail(
                "tls buildkit",
                format!("{} has no [registry.\"{key}\"] section", path.display()),
                fix,
            );
            return;
        };
        if section.get("insecure").and_then(toml::Value::as_bool) == Some(true) {
            report.warn(
                "tls buildkit",
                format!(
                    "{} sets insecure = true for {key}: BuildKit does not check the certificate",
                    path.display()
                ),
                fix,
            );
            return;
        }
        let files: Vec<PathBuf> = section
            .get("ca")
            .and_then(toml::Value::as_array)
            .map(|files| {
                files
                    .iter()
                    .filter_map(toml::Value::as_str)
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        if files.is_empty() {
            report.fail(
                "tls buildkit",
                format!("{} names no ca for {key}", path.display()),
                fix,
            );
            return;
        }
        let mut roots = RootCertStore::empty();
        for file in &files {
            match load_roots(file) {
                Ok(file_roots) => roots.roots.extend(file_roots.roots),
                Err(error) => {
                    report.fail(
                        "tls buildkit",
                        format!("{} names {}: {error:#}", path.display(), file.display()),
                        fix,
                    );
                    return;
                }
            }
        }
        match verify(&roots, chain, &self.host.host) {
            Ok(()) => {
                report.ok(
                    "tls buildkit",
                    format!(
                        "{} trusts the server (a builder created with --buildkitd-config {} uses it)",
                        path.display(),
                        setup::shell_quote(&path)
                    ),
                );
                if trusted.is_none() {
                    *trusted = Some(roots);
                }
            }
            Err(error) => {
                let (message, fix) = self.explain(
                    &error,
                    &path.display().to_string(),
                    summary,
                    issuer,
                    Some(fix),
                );
                report.fail("tls buildkit", message, fix);
            }
        }
    }

    /// One handshake that accepts any certificate, to learn what the server
    /// presents; the trust checks then verify that chain.
    async fn probe(&self, address: SocketAddr) -> Result<Probe, String> {
        let recorder = Arc::new(Recorder {
            provider: crate::tls::provider(),
            chain: Mutex::default(),
        });
        let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let server_name = ServerName::try_from(self.host.host.clone())
            .map_err(|error| format!("{}: {error}", self.host.host))?;
        let handshake = async {
            let stream = tokio::net::TcpStream::connect(address).await?;
            connector.connect(server_name, stream).await
        };
        let stream = match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                let rustls_error = error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                return Err(match rustls_error {
                    Some(rustls::Error::InvalidMessage(_)) => format!(
                        "{address} does not speak TLS (plain HTTP?): {error}"
                    ),
                    _ if error.kind() == std::io::ErrorKind::UnexpectedEof => format!(
                        "{address} closed the connection during the TLS handshake: it does not speak TLS \
                         (plain HTTP?), or refused this client"
                    ),
                    _ => format!("TLS handshake with {address} failed: {error}"),
                });
            }
            Err(_) => {
                return Err(format!(
                    "no TLS handshake with {address} within {}s (plain HTTP?)",
                    self.timeout.as_secs()
                ))
            }
        };
        let (_, connection) = stream.get_ref();
        let version = match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2",
            _ => "TLS",
        };
        let chain = recorder
            .chain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(Probe {
            version,
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            chain,
        })
    }

    fn client(&self, roots: Option<RootCertStore>) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout * 3)
            .connect_timeout(self.timeout)
            .user_agent(concat!("kai-doctor/", env!("CARGO_PKG_VERSION")));
        if let Some(roots) = roots {
            let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            builder = builder.use_preconfigured_tls(config);
        }
        Ok(builder.build()?)
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let request = client.request(method, format!("{}{path}", self.base));
        match (&self.arguments.user, &self.password) {
            (Some(user), password) => request.basic_auth(user, password.clone()),
            _ => request,
        }
    }

    // --- the registry API -----------------------------------------------------------------------

    /// `GET /v2/`. Returns whether it answered without a login (200), or
    /// `None` when it does not answer as a registry.
    async fn api(&self, report: &mut Report, client: &reqwest::Client) -> Option<bool> {
        let response = match client.get(format!("{}/v2/", self.base)).send().await {
            Ok(response) => response,
            Err(error) => {
                report.fail(
                    "api",
                    format!("GET /v2/ failed: {}", error_chain(&error)),
                    "check the Kai server's log (it logs to standard error)",
                );
                return None;
            }
        };
        let status = response.status();
        let version = http_version(response.version());
        let api_version = response
            .headers()
            .get("docker-distribution-api-version")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        match (status, api_version.as_deref()) {
            (StatusCode::OK, Some("registry/2.0")) => {
                report.ok(
                    "api",
                    format!("GET /v2/: 200 over {version}, Docker-Distribution-API-Version: registry/2.0"),
                );
                Some(true)
            }
            (StatusCode::UNAUTHORIZED, Some("registry/2.0")) => {
                report.ok(
                    "api",
                    format!("GET /v2/: 401 over {version}: the registry wants a login"),
                );
                Some(false)
            }
            (status, None) => {
                report.fail(
                    "api",
                    format!("GET /v2/ answered {status} without Docker-Distribution-API-Version: not a registry?"),
                    format!(
                        "check that {} is Kai: on the server, kai serve prints `listening on https://ADDR`",
                        self.base
                    ),
                );
                None
            }
            (status, Some(api_version)) => {
                report.fail(
                    "api",
                    format!("GET /v2/ answered {status} (Docker-Distribution-API-Version: {api_version})"),
                    "check the Kai server's log (it logs to standard error)",
                );
                None
            }
        }
    }

    /// Returns whether the round trip can go ahead.
    async fn login(&self, report: &mut Report, client: &reqwest::Client, open: bool) -> bool {
        let Some(user) = &self.arguments.user else {
            if open {
                report.ok("login", "no login needed: /v2/ answers without credentials");
                return true;
            }
            report.warn(
                "login",
                "the registry wants a login",
                format!(
                    "kai doctor {} --user USER --password-stdin (and docker login {})",
                    self.base,
                    self.host.key()
                ),
            );
            return false;
        };
        let response = match self.request(client, Method::GET, "/v2/").send().await {
            Ok(response) => response,
            Err(error) => {
                report.fail(
                    "login",
                    format!("GET /v2/ as {user}: {}", error_chain(&error)),
                    "check the server's log",
                );
                return false;
            }
        };
        match response.status() {
            StatusCode::OK if open => {
                report.ok(
                    "login",
                    format!(
                        "credentials of {user} accepted; note: /v2/ also answers without credentials, \
                         so authentication may be off (auth.enabled = false) and any login passes"
                    ),
                );
                true
            }
            StatusCode::OK => {
                report.ok("login", format!("credentials of {user} accepted"));
                true
            }
            status => {
                report.fail(
                    "login",
                    format!("credentials of {user} rejected: {status}"),
                    format!(
                        "check the user and password, then: docker login {}",
                        self.host.key()
                    ),
                );
                false
            }
        }
    }

    /// Pushes a tiny multi-arch image with an attestation, pulls every part
    /// back byte for byte, asks for it as an old `docker manifest inspect`
    /// would, and deletes it again.
    async fn round_trip(&self, report: &mut Report, client: &reqwest::Client) {
        let image = TestImage::generate(&self.arguments.repository);
        let name = &self.arguments.repository;
        let tag = &image.tag;
        if let Err(problem) = self.push_and_pull(client, &image).await {
            let fix = if problem.contains(" 401 ") || problem.contains(" 403 ") {
                format!(
                    "give --repository NAMESPACE/NAME a repository {} may push to and delete from",
                    self.arguments.user.as_deref().unwrap_or("this user")
                )
            } else {
                "check the Kai server's log for this request (kai serve logs to standard error)"
                    .to_owned()
            };
            report.fail("round trip", format!("{name}:{tag}: {problem}"), fix);
            report.skip("old docker", "the round trip failed");
            let _ = self.delete(client, &image, &[]).await;
            return;
        }
        let old_docker = self.old_docker(client, &image).await;
        // Kai stores the Docker forms of the children it converted; they go too.
        let converted = match &old_docker {
            Ok((_, converted)) => converted.as_slice(),
            Err(_) => &[],
        };
        let deleted = self.delete(client, &image, converted).await;
        let pushed = format!(
            "pushed {name}:{tag} (2 platform images, an in-toto attestation, an index; {} blobs), pulled \
             every part back byte for byte",
            image.blobs.len()
        );
        match deleted {
            Ok(()) => report.ok("round trip", format!("{pushed}, deleted it by digest")),
            Err(problem) => report.warn(
                "round trip",
                format!("{pushed}; deleting it failed: {problem}"),
                format!("remove {name}:{tag} by hand; deletion may be disabled on this registry"),
            ),
        }
        match old_docker {
            Ok((platforms, _)) => report.ok(
                "old docker",
                format!(
                    "an Accept of Docker types only (docker manifest inspect before 24) gets a Docker \
                     manifest list ({platforms})"
                ),
            ),
            Err(problem) => report.fail(
                "old docker",
                problem,
                "upgrade Kai: an OCI index asked for by tag with Docker types only must be answered with a Docker manifest list",
            ),
        }
    }

    async fn push_and_pull(
        &self,
        client: &reqwest::Client,
        image: &TestImage,
    ) -> Result<(), String> {
        let name = &image.repository;
        for blob in &image.blobs {
            let digest = sha256(blob);
            let response = self
                .request(
                    client,
                    Method::POST,
                    &format!("/v2/{name}/blobs/uploads/?digest={digest}"),
                )
                .header("content-type", "application/octet-stream")
                .body(blob.clone())
                .send()
                .await
                .map_err(|error| format!("POST blob {digest}: {}", error_chain(&error)))?;
            expect(
                response,
                StatusCode::CREATED,
                &format!("POST /v2/{name}/blobs/uploads/?digest={digest}"),
            )
            .await?;
        }
        for (media_type, bytes) in &image.manifests {
            let digest = sha256(bytes);
            let response = self
                .request(
                    client,
                    Method::PUT,
                    &format!("/v2/{name}/manifests/{digest}"),
                )
                .header("content-type", *media_type)
                .body(bytes.clone())
                .send()
                .await
                .map_err(|error| format!("PUT manifest {digest}: {}", error_chain(&error)))?;
            expect(
                response,
                StatusCode::CREATED,
                &format!("PUT /v2/{name}/manifests/{digest}"),
            )
            .await?;
        }
        let response = self
            .request(
                client,
                Method::PUT,
                &format!("/v2/{name}/manifests/{}", image.tag),
            )
            .header("content-type", OCI_INDEX)
            .body(image.index.clone())
            .send()
            .await
            .map_err(|error| format!("PUT index: {}", error_chain(&error)))?;
        expect(
            response,
            StatusCode::CREATED,
            &format!("PUT /v2/{name}/manifests/{}", image.tag),
        )
        .await?;

        // Pull: the index by tag, each manifest by digest, each blob.
        let accept = format!("{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_LIST}, {DOCKER_MANIFEST}");
        let pulled = self
            .fetch(
                client,
                &format!("/v2/{name}/manifests/{}", image.tag),
                Some(&accept),
            )
            .await?;
        same_bytes(
            &format!("the index by tag {}", image.tag),
            &image.index,
            &pulled,
        )?;
        for (_, bytes) in &image.manifests {
            let digest = sha256(bytes);
            let pulled = self
                .fetch(
                    client,
                    &format!("/v2/{name}/manifests/{digest}"),
                    Some(&accept),
                )
                .await?;
            same_bytes(&format!("manifest {digest}"), bytes, &pulled)?;
        }
        for blob in &image.blobs {
            let digest = sha256(blob);
            let pulled = self
                .fetch(client, &format!("/v2/{name}/blobs/{digest}"), None)
                .await?;
            same_bytes(&format!("blob {digest}"), blob, &pulled)?;
        }
        Ok(())
    }

    async fn fetch(
        &self,
        client: &reqwest::Client,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Vec<u8>, String> {
        let mut request = self.request(client, Method::GET, path);
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request
            .send()
            .await
            .map_err(|error| format!("GET {path}: {}", error_chain(&error)))?;
        let response = expect(response, StatusCode::OK, &format!("GET {path}")).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|error| format!("GET {path}: reading the body: {}", error_chain(&error)))?;
        Ok(bytes.to_vec())
    }

    /// What `docker manifest inspect` of Docker 20.10 gets: it accepts only
    /// Docker media types. Returns the platforms of the list and the digests
    /// of the manifests it names that were not pushed (conversions).
    async fn old_docker(
        &self,
        client: &reqwest::Client,
        image: &TestImage,
    ) -> Result<(String, Vec<String>), String> {
        let path = format!("/v2/{}/manifests/{}", image.repository, image.tag);
        let accept = format!(
            "{DOCKER_MANIFEST}, {DOCKER_LIST}, application/vnd.docker.distribution.manifest.v1+prettyjws, application/json"
        );
        let response = self
            .request(client, Method::GET, &path)
            .header("accept", accept)
            .send()
            .await
            .map_err(|error| format!("GET {path}: {}", error_chain(&error)))?;
        let response = expect(
            response,
            StatusCode::OK,
            &format!("GET {path} with Docker types only"),
        )
        .await?;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body: Value = response.json().await.map_err(|error| {
            format!("GET {path} with Docker types only: the body is not JSON: {error}")
        })?;
        if content_type != DOCKER_LIST || body["mediaType"] != DOCKER_LIST {
            return Err(format!(
                "a client that accepts only Docker types got Content-Type {content_type:?} and mediaType {} \
                 instead of a Docker manifest list",
                body["mediaType"]
            ));
        }
        let platforms: Vec<String> = body["manifests"]
            .as_array()
            .map(|manifests| {
                manifests
                    .iter()
                    .filter_map(|manifest| {
                        let platform = &manifest["platform"];
                        Some(format!(
                            "{}/{}",
                            platform["os"].as_str()?,
                            platform["architecture"].as_str()?
                        ))
                    })
                    .filter(|platform| platform != "unknown/unknown")
                    .collect()
            })
            .unwrap_or_default();
        for expected in ["linux/amd64", "linux/arm64"] {
            if !platforms.iter().any(|platform| platform == expected) {
                return Err(format!(
                    "the Docker manifest list lacks {expected} (it lists {})",
                    platforms.join(", ")
                ));
            }
        }
        let pushed: Vec<String> = image
            .manifests
            .iter()
            .map(|(_, bytes)| sha256(bytes))
            .collect();
        let converted = body["manifests"]
            .as_array()
            .map(|manifests| {
                manifests
                    .iter()
                    .filter_map(|manifest| manifest["digest"].as_str())
                    .filter(|digest| !pushed.iter().any(|pushed| pushed == digest))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok((platforms.join(", "), converted))
    }

    /// Deletes the index, then the manifests it named and their `converted`
    /// forms, then the blobs.
    async fn delete(
        &self,
        client: &reqwest::Client,
        image: &TestImage,
        converted: &[String],
    ) -> Result<(), String> {
        let name = &image.repository;
        // (path, whether it may be gone already: a registry may delete the
        // conversions of a manifest with it)
        let mut paths = vec![(
            format!("/v2/{name}/manifests/{}", sha256(&image.index)),
            false,
        )];
        for digest in converted {
            paths.push((format!("/v2/{name}/manifests/{digest}"), true));
        }
        for (_, bytes) in image.manifests.iter().rev() {
            paths.push((format!("/v2/{name}/manifests/{}", sha256(bytes)), false));
        }
        for blob in &image.blobs {
            paths.push((format!("/v2/{name}/blobs/{}", sha256(blob)), false));
        }
        let mut problems = Vec::new();
        for (path, may_be_gone) in paths {
            match self.request(client, Method::DELETE, &path).send().await {
                Ok(response) if response.status() == StatusCode::ACCEPTED => {}
                Ok(response) if may_be_gone && response.status() == StatusCode::NOT_FOUND => {}
                Ok(response) => problems.push(format!("DELETE {path}: {}", response.status())),
                Err(error) => problems.push(format!("DELETE {path}: {}", error_chain(&error))),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// What the probe handshake learned.
struct Probe {
    version: &'static str,
    alpn: Option<Vec<u8>>,
    chain: Vec<CertificateDer<'static>>,
}

/// A verifier that accepts any certificate and remembers the chain; the
/// handshake signatures are still checked.
#[derive(Debug)]
struct Recorder {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(
            intermediates
                .iter()
                .map(|certificate| certificate.clone().into_owned()),
        );
        *self.chain.lock().unwrap_or_else(PoisonError::into_inner) = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether `chain` verifies with `roots` for `host` now.
fn verify(
    roots: &RootCertStore,
    chain: &[CertificateDer<'static>],
    host: &str,
) -> Result<(), rustls::Error> {
    if roots.is_empty() {
        return Err(rustls::Error::General("no root certificates".into()));
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots.clone()),
        crate::tls::provider(),
    )
    .build()
    .map_err(|error| rustls::Error::General(format!("no root certificates usable: {error}")))?;
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|error| rustls::Error::General(format!("{host}: {error}")))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    verifier
        .verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now())
        .map(|_| ())
}

/// The system store as Go and OpenSSL see it (SSL_CERT_FILE and SSL_CERT_DIR
/// override it), and how to name it.
fn system_roots() -> (RootCertStore, String) {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(loaded.certs);
    let name = match std::env::var_os("SSL_CERT_FILE") {
        Some(file) => format!(
            "the system store (SSL_CERT_FILE={})",
            file.to_string_lossy()
        ),
        None => "the system store".to_owned(),
    };
    (roots, name)
}

fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let certificates = crate::tls::read_certificates(path, "CA file")?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        anyhow::bail!("{} holds no usable CA certificate", path.display());
    }
    Ok(roots)
}

/// The `*.crt` files of a certs.d directory, as Docker reads them.
fn crt_files(directory: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "crt"))
        .collect();
    files.sort();
    files
}

/// Whether a certificate naming `names` is valid for `host` (exact, or one
/// wildcard label).
fn names_match(names: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    names.iter().any(|name| {
        let name = name.to_ascii_lowercase();
        if let Some(ip) = host_ip {
            return name.parse::<IpAddr>().ok() == Some(ip);
        }
        if name == host {
            return true;
        }
        match (name.strip_prefix("*."), host.split_once('.')) {
            (Some(suffix), Some((_, host_suffix))) => suffix == host_suffix,
            _ => false,
        }
    })
}

fn http_version(version: reqwest::Version) -> &'static str {
    match version {
        reqwest::Version::HTTP_2 => "HTTP/2",
        reqwest::Version::HTTP_11 => "HTTP/1.1",
        reqwest::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP",
    }
}

/// A reqwest error with its causes, which hold the useful part.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Passes the response on if it has `status`; else says what came back.
async fn expect(
    response: reqwest::Response,
    status: StatusCode,
    what: &str,
) -> Result<reqwest::Response, String> {
    if response.status() == status {
        return Ok(response);
    }
    let got = response.status();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    Err(format!(
        "{what} answered {got} (expected {status}): {}",
        body.trim()
    ))
}

fn same_bytes(what: &str, pushed: &[u8], pulled: &[u8]) -> Result<(), String> {
    if pushed == pulled {
        Ok(())
    } else {
        Err(format!(
            "{what} came back different: {} bytes pushed, {} bytes pulled (digest {})",
            pushed.len(),
            pulled.len(),
            sha256(pulled)
        ))
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A tiny image as `docker buildx build --platform linux/amd64,linux/arm64
/// --push` makes it: per platform a config and one layer (a real tar), an
/// attestation manifest whose layer is an in-toto statement, and an OCI index.
struct TestImage {
    repository: String,
    tag: String,
    blobs: Vec<Vec<u8>>,
    /// Children of the index, in push order, with their media types.
    manifests: Vec<(&'static str, Vec<u8>)>,
    index: Vec<u8>,
}

impl TestImage {
    fn generate(repository: &str) -> TestImage {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let tag = format!("doctor-{}", &run[..12]);
        let mut blobs = Vec::new();
        let mut manifests = Vec::new();
        let mut entries = Vec::new();
        let mut amd64_digest = String::new();
        for architecture in ["amd64", "arm64"] {
            let layer = tar_with_file(
                "kai-doctor.txt",
                format!("kai doctor round trip {run} linux/{architecture}\n").as_bytes(),
            );
            let config = serde_json::to_vec(&json!({
                "architecture": architecture,
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
            }))
            .unwrap_or_default();
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
                "layers": [{"mediaType": OCI_LAYER, "digest": sha256(&layer), "size": layer.len()}],
            }))
            .unwrap_or_default();
            if architecture == "amd64" {
                amd64_digest = sha256(&manifest);
            }
            entries.push(json!({
                "mediaType": OCI_MANIFEST,
                "digest": sha256(&manifest),
                "size": manifest.len(),
                "platform": {"architecture": architecture, "os": "linux"},
            }));
            blobs.push(config);
            blobs.push(layer);
            manifests.push((OCI_MANIFEST, manifest));
        }
        // The provenance attestation of the amd64 image, as buildx attaches it.
        let statement = serde_json::to_vec(&json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{
                "name": format!("pkg:docker/{repository}@{tag}?platform=linux%2Famd64"),
                "digest": {"sha256": amd64_digest.trim_start_matches("sha256:")},
            }],
            "predicate": {"builder": {"id": "kai doctor"}, "buildType": "kai-doctor/round-trip"},
        }))
        .unwrap_or_default();
        let attestation_config = serde_json::to_vec(&json!({
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&statement)]},
        }))
        .unwrap_or_default();
        let attestation = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(&attestation_config), "size": attestation_config.len()},
            "layers": [{
                "mediaType": IN_TOTO,
                "digest": sha256(&statement),
                "size": statement.len(),
                "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
            }],
        }))
        .unwrap_or_default();
        entries.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": sha256(&attestation),
            "size": attestation.len(),
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {
                "vnd.docker.reference.digest": amd64_digest,
                "vnd.docker.reference.type": "attestation-manifest",
            },
        }));
        blobs.push(attestation_config);
        blobs.push(statement);
        manifests.push((OCI_MANIFEST, attestation));
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries,
        }))
        .unwrap_or_default();
        TestImage {
            repository: repository.to_owned(),
            tag,
            blobs,
            manifests,
            index,
        }
    }
}

/// A tar archive (ustar) holding one regular file.
fn tar_with_file(name: &str, contents: &[u8]) -> Vec<u8> {
    fn octal(field: &mut [u8], value: u64) {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    }
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], contents.len() as u64);
    octal(&mut header[136..148], 0);
    header[148..156].fill(b' ');
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    let checksum: u32 = header.iter().map(|&byte| u32::from(byte)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    let mut archive = header.to_vec();
    archive.extend_from_slice(contents);
    archive.resize(archive.len().div_ceil(512) * 512, 0);
    archive.resize(archive.len() + 1024, 0);
    archive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let (https, host) = parse_url("https://registry.localhost.direct:5000/").unwrap();
        assert!(https);
        assert_eq!(host.key(), "registry.localhost.direct:5000");
        let (https, host) = parse_url("registry.example").unwrap();
        assert!(https);
        assert_eq!(host.port_or_default(), 443);
        let (https, host) = parse_url("http://127.0.0.1:5000/v2/").unwrap();
        assert!(!https);
        assert_eq!(host.key(), "127.0.0.1:5000");
        assert!(parse_url("ftp://registry").is_err());
    }

    #[test]
    fn wildcards_match_one_label() {
        let names = vec!["*.localhost.direct".to_owned(), "127.0.0.1".to_owned()];
        assert!(names_match(&names, "registry.localhost.direct"));
        assert!(!names_match(&names, "a.b.localhost.direct"));
        assert!(names_match(&names, "127.0.0.1"));
        assert!(!names_match(&names, "::1"));
    }

    #[test]
    fn the_tar_is_well_formed() {
        let archive = tar_with_file("hello.txt", b"hello\n");
        assert_eq!(archive.len(), 512 * 4);
        let header = &archive[..512];
        let stored: u32 =
            u32::from_str_radix(std::str::from_utf8(&header[148..154]).unwrap(), 8).unwrap();
        let mut copy = header.to_vec();
        copy[148..156].fill(b' ');
        assert_eq!(
            stored,
            copy.iter().map(|&byte| u32::from(byte)).sum::<u32>()
        );
    }
}
