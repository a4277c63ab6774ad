//! TLS for `kai serve`, and the certificate helpers `kai setup` and `kai
//! doctor` share.
//!
//! Two sources of the server certificate:
//! - `files`: a PEM certificate chain and key the operator provides. They are
//!   checked every `tls.reload_interval` and reloaded when they change; a pair
//!   that does not load is logged and the previous one stays in service.
//! - `auto`: Kai creates a local CA once in `<data>/tls/` (`ca.crt`, `ca.key`)
//!   and issues a server certificate (`server.crt`, `server.key`) for
//!   `tls.hostname`, `localhost`, 127.0.0.1, ::1 and the listen address. It is
//!   reissued at start when it no longer fits (another CA, a missing name,
//!   fewer than 30 days left) and renewed while running.
//!
//! Connections are accepted and handshaken off the accept loop and handed to
//! axum through [`TlsListener`], so HTTP/1.1 and HTTP/2 (chosen by ALPN) are
//! served exactly as over plain TCP, graceful shutdown included.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TlsMode};

/// An auto certificate is renewed when less than this is left.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How long an auto server certificate is valid.
const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How long the local CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The one crypto provider Kai uses (ring), for the server and for `kai doctor`.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where `--tls auto` keeps its CA and server certificate.
pub fn tls_directory(data: &Path) -> PathBuf {
    data.join("tls")
}

/// The local CA certificate that clients install (`kai ca export` prints it).
pub fn ca_certificate_path(data: &Path) -> PathBuf {
    tls_directory(data).join("ca.crt")
}

/// Checks that `hostname` can be named in a certificate: a DNS name or an IP
/// address, without a scheme or port.
pub fn check_hostname(hostname: &str) -> anyhow::Result<()> {
    if hostname.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let looks_like_dns = !hostname.is_empty()
        && hostname.len() <= 253
        && hostname.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        });
    if !looks_like_dns {
        bail!(
            "tls.hostname {hostname:?} is not a host name: give the bare name clients use, \
             without scheme or port, e.g. --hostname registry.localhost.direct"
        );
    }
    Ok(())
}

/// The server-side TLS state: the rustls configuration and where its
/// certificate comes from.
pub struct Tls {
    config: Arc<ServerConfig>,
    current: Arc<CurrentCertificate>,
    source: Source,
    reload_interval: Duration,
}

enum Source {
    Files {
        cert: PathBuf,
        key: PathBuf,
        /// The files' state when they were last read, loaded or not.
        stamp: Mutex<Option<Stamp>>,
    },
    Auto(Box<Mutex<AutoCertificate>>),
}

/// Modification time and length of the certificate and key files.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let of = |path: &Path| match std::fs::metadata(path) {
        Ok(metadata) => (metadata.modified().ok(), metadata.len()),
        Err(_) => (None, 0),
    };
    [of(cert), of(key)]
}

/// The certificate handed to every handshake; replaced on reload.
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl CurrentCertificate {
    fn get(&self) -> Arc<CertifiedKey> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl Tls {
    /// Loads or creates the certificate `config.tls` asks for; `None` when TLS
    /// is off. Any problem with the files is an error that names the file.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Tls>> {
        let (certified, source) = match config.tls.mode {
            TlsMode::Off => return Ok(None),
            TlsMode::Files => {
                let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
                    bail!("tls.mode = \"files\" needs tls.cert and tls.key (--tls-cert FILE --tls-key FILE)");
                };
                let stamp_now = stamp(cert, key);
                let certified = load_files(cert, key)?;
                warn_if_expiring(cert, &certified);
                let source = Source::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                    stamp: Mutex::new(Some(stamp_now)),
                };
                (certified, source)
            }
            TlsMode::Auto => {
                let hostname = config
                    .tls
                    .hostname
                    .clone()
                    .context("tls.mode = \"auto\" needs tls.hostname (--hostname HOST)")?;
                let names = auto_names(&hostname, config.listen);
                let directory = tls_directory(&config.data);
                let ca = LocalCa::load_or_create(&directory, &hostname)?;
                let mut auto = AutoCertificate {
                    directory,
                    hostname,
                    names,
                    ca,
                    renew_at: SystemTime::UNIX_EPOCH,
                };
                let certified = auto.load_or_issue()?;
                (certified, Source::Auto(Box::new(Mutex::new(auto))))
            }
        };
        let current = Arc::new(CurrentCertificate(RwLock::new(Arc::new(certified))));
        let mut server_config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Tls {
            config: Arc::new(server_config),
            current,
            source,
            reload_interval: config.tls.reload_interval,
        }))
    }

    /// The certificate chain served now, server certificate first.
    pub fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.get().cert.clone()
    }

    /// Reloads changed files (`files`) or renews a certificate close to expiry
    /// (`auto`). Returns whether the served certificate changed.
    pub fn refresh(&self) -> anyhow::Result<bool> {
        match &self.source {
            Source::Files {
                cert,
                key,
                stamp: last,
            } => {
                let now = stamp(cert, key);
                {
                    let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
                    if last.as_ref() == Some(&now) {
                        return Ok(false);
                    }
                    // Remembered before loading, so that a pair that does not
                    // load is reported once, not at every tick.
                    *last = Some(now);
                }
                let certified = load_files(cert, key).context(
                    "the TLS files changed but do not load; still serving the previous certificate",
                )?;
                warn_if_expiring(cert, &certified);
                self.current.set(certified);
                tracing::info!(cert = %cert.display(), key = %key.display(), "reloaded the TLS certificate");
                Ok(true)
            }
            Source::Auto(auto) => {
                let mut auto = auto.lock().unwrap_or_else(PoisonError::into_inner);
                if SystemTime::now() < auto.renew_at {
                    return Ok(false);
                }
                let certified = auto.issue()?;
                self.current.set(certified);
                Ok(true)
            }
        }
    }

    /// Calls [`Tls::refresh`] every `tls.reload_interval` until shutdown.
    pub async fn maintain(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.reload_interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            if let Err(error) = self.refresh() {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "TLS certificate refresh failed"
                );
            }
        }
    }

    /// Accepts TCP connections on `listener` and completes their TLS
    /// handshakes in the background; axum takes the finished connections from
    /// the returned listener. Stops accepting when `shutdown` turns true.
    pub fn listen(
        &self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<TlsListener> {
        let local_address = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(self.config.clone());
        let (sender, incoming) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    _ = sender.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait, as axum does.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => {
                            // A client that does not trust the certificate ends here.
                            tracing::info!(%peer, %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            incoming,
            local_address,
        })
    }
}

/// Connections whose TLS handshake is complete, for `axum::serve`.
pub struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_address: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The acceptor stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_address)
    }
}

/// The plain-HTTP side of `tls.redirect_listen`: every request is sent to the
/// same host and path over HTTPS on `https_port`, with 308 so that the method
/// and body are kept.
pub fn redirect_router(https_port: u16) -> Router {
    Router::new().fallback(move |request: Request<Body>| async move {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().host().map(str::to_owned));
        let Some(host) = host else {
            return (
                StatusCode::BAD_REQUEST,
                "this address redirects to HTTPS; send a Host header\n",
            )
                .into_response();
        };
        let host = strip_port(&host);
        let authority = if https_port == 443 {
            host.to_owned()
        } else {
            format!("{host}:{https_port}")
        };
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str());
        let location = format!("https://{authority}{path}");
        match HeaderValue::from_str(&location) {
            Ok(location) => Response::builder()
                .status(StatusCode::PERMANENT_REDIRECT)
                .header(header::LOCATION, location)
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            Err(_) => (StatusCode::BAD_REQUEST, "invalid Host header\n").into_response(),
        }
    })
}

/// `host:port`, `[v6]:port`, `host` or `[v6]` without the port.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
}

// --- certificate files ----------------------------------------------------------------

/// Reads the PEM certificate chain and key and checks that they belong
/// together. Every error names the file and what is wrong with it.
pub fn load_files(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = read_certificates(cert, "tls.cert, --tls-cert")?;
    let key_bytes = std::fs::read(key).with_context(|| {
        format!(
            "cannot read the TLS private key {} (tls.key, --tls-key)",
            key.display()
        )
    })?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|error| {
        let found_certificate = CertificateDer::pem_slice_iter(&key_bytes).any(|item| item.is_ok());
        let hint = if found_certificate {
            "; it holds a certificate: are --tls-cert and --tls-key swapped?"
        } else {
            ""
        };
        anyhow::anyhow!(
            "the TLS private key {} (tls.key, --tls-key) holds no PEM private key \
             (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY): {error}{hint}",
            key.display()
        )
    })?;
    let certified =
        CertifiedKey::from_der(chain, private_key, &provider()).map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
                "the TLS private key {} does not belong to the certificate {} (their public keys \
                 differ); give the key the certificate was issued for",
                key.display(),
                cert.display()
            ),
            error => anyhow::anyhow!(
                "cannot use the TLS certificate {} with the key {}: {error}",
                cert.display(),
                key.display()
            ),
        })?;
    Ok(certified)
}

/// Reads every certificate of a PEM file; `setting` names where it came from.
pub fn read_certificates(
    path: &Path,
    setting: &str,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the certificate {} ({setting})", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            anyhow::anyhow!(
                "the certificate {} ({setting}) is not valid PEM: {error}",
                path.display()
            )
        })?;
    if chain.is_empty() {
        let hint = if PrivateKeyDer::from_pem_slice(&bytes).is_ok() {
            ": it holds a private key; are the certificate and key swapped?"
        } else {
            " (expected -----BEGIN CERTIFICATE-----)"
        };
        bail!(
            "the certificate {} ({setting}) holds no PEM certificate{hint}",
            path.display()
        );
    }
    for (index, certificate) in chain.iter().enumerate() {
        if x509_parser::parse_x509_certificate(certificate).is_err() {
            bail!(
                "the certificate {} ({setting}): certificate {} of the file is not a valid X.509 certificate",
                path.display(),
                index + 1
            );
        }
    }
    Ok(chain)
}

fn warn_if_expiring(cert: &Path, certified: &CertifiedKey) {
    let Some(leaf) = certified.cert.first() else {
        return;
    };
    let Ok(summary) = CertificateSummary::parse(leaf) else {
        return;
    };
    let now = SystemTime::now();
    if summary.not_after <= now {
        tracing::warn!(
            cert = %cert.display(),
            not_after = %summary.not_after_text(),
            "the TLS certificate has expired; clients will refuse it until it is replaced"
        );
    } else if summary.not_after < now + RENEW_BEFORE {
        tracing::warn!(
            cert = %cert.display(),
            not_after = %summary.not_after_text(),
            "the TLS certificate expires in less than 30 days; replace the file (Kai reloads it)"
        );
    }
}

// --- the local CA of `--tls auto` ------------------------------------------------------

/// The CA Kai creates in `<data>/tls/`.
pub struct LocalCa {
    pub certificate_pem: String,
    pub certificate: CertificateDer<'static>,
    key: rcgen::KeyPair,
    /// The CA rebuilt from its file and key, for rcgen to sign with.
    issuer: rcgen::Certificate,
}

impl LocalCa {
    /// Loads `ca.crt` and `ca.key` from `directory`, or creates both.
    pub fn load_or_create(directory: &Path, hostname: &str) -> anyhow::Result<LocalCa> {
        let cert_path = directory.join("ca.crt");
        let key_path = directory.join("ca.key");
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => {
                std::fs::create_dir_all(directory).with_context(|| {
                    format!(
                        "cannot create {} for the local CA; check the data directory's permissions",
                        directory.display()
                    )
                })?;
                let ca = Self::create(hostname)?;
                write_private(&key_path, &ca.key.serialize_pem())?;
                write_public(&cert_path, &ca.certificate_pem)?;
                tracing::info!(
                    ca = %cert_path.display(),
                    "created a local CA for --tls auto; clients trust it with `kai setup docker|podman|system|buildx`"
                );
                Ok(ca)
            }
            (true, false) => bail!(
                "{} exists but its key {} does not: restore the key, or remove {} to create a new CA \
                 (clients that trust the old one must then trust the new one)",
                cert_path.display(),
                key_path.display(),
                cert_path.display()
            ),
            (false, true) => bail!(
                "{} exists but its certificate {} does not: restore the certificate, or remove {} \
                 to create a new CA (clients must then trust the new one)",
                key_path.display(),
                cert_path.display(),
                key_path.display()
            ),
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<LocalCa> {
        let certificate_pem = std::fs::read_to_string(cert_path)
            .with_context(|| format!("cannot read the local CA {}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(key_path)
            .with_context(|| format!("cannot read the local CA's key {}", key_path.display()))?;
        let key = rcgen::KeyPair::from_pem(&key_pem).with_context(|| {
            format!(
                "{} is not a PEM private key; restore it or remove the tls directory to create a new CA",
                key_path.display()
            )
        })?;
        let params = rcgen::CertificateParams::from_ca_cert_pem(&certificate_pem).with_context(|| {
            format!(
                "{} is not a PEM CA certificate; restore it or remove the tls directory to create a new CA",
                cert_path.display()
            )
        })?;
        let certificate = CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .with_context(|| format!("{} holds no PEM certificate", cert_path.display()))?;
        let issuer = params.self_signed(&key).with_context(|| {
            format!(
                "the key {} does not fit the CA certificate {}",
                key_path.display(),
                cert_path.display()
            )
        })?;
        let ca = LocalCa {
            certificate_pem,
            certificate,
            key,
            issuer,
        };
        // The key must be the CA's: a certificate it signs must verify.
        let issued = ca.issue(
            "localhost",
            &["localhost".into()],
            Duration::from_secs(3600),
        )?;
        verify_for_name(&ca.certificate, &issued.chain, "localhost").map_err(|reason| {
            anyhow::anyhow!(
                "the key {} does not belong to the CA certificate {} ({reason}); restore the pair, \
                 or remove both to create a new CA",
                key_path.display(),
                cert_path.display()
            )
        })?;
        Ok(ca)
    }

    fn create(hostname: &str) -> anyhow::Result<LocalCa> {
        let key = rcgen::KeyPair::generate().context("generating the CA key")?;
        let mut params = rcgen::CertificateParams::default();
        let mut name = rcgen::DistinguishedName::new();
        // A random suffix keeps two Kai CAs for the same host apart in trust stores.
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        name.push(
            rcgen::DnType::CommonName,
            format!("Kai local CA {hostname} {suffix}"),
        );
        name.push(rcgen::DnType::OrganizationName, "Kai registry");
        params.distinguished_name = name;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let issuer = params
            .self_signed(&key)
            .context("signing the CA certificate")?;
        Ok(LocalCa {
            certificate_pem: issuer.pem(),
            certificate: issuer.der().clone(),
            key,
            issuer,
        })
    }

    /// Issues a server certificate for `names` with a new key.
    fn issue(
        &self,
        common_name: &str,
        names: &[String],
        validity: Duration,
    ) -> anyhow::Result<Issued> {
        let key = rcgen::KeyPair::generate().context("generating the server key")?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())
            .with_context(|| format!("cannot put {names:?} in a certificate"))?;
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + validity;
        params.serial_number = Some(random_serial());
        let certificate = params
            .signed_by(&key, &self.issuer, &self.key)
            .context("signing the server certificate")?;
        Ok(Issued {
            chain: vec![certificate.der().clone(), self.certificate.clone()],
            chain_pem: format!("{}{}", certificate.pem(), self.certificate_pem),
            key,
        })
    }
}

/// A server certificate from the local CA.
struct Issued {
    /// The server certificate, then the CA's.
    chain: Vec<CertificateDer<'static>>,
    chain_pem: String,
    key: rcgen::KeyPair,
}

fn random_serial() -> rcgen::SerialNumber {
    let mut bytes = uuid::Uuid::new_v4().into_bytes().to_vec();
    // Positive and without a leading zero byte.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    rcgen::SerialNumber::from(bytes)
}

/// The auto server certificate, its names and when to renew it.
struct AutoCertificate {
    directory: PathBuf,
    hostname: String,
    names: Vec<String>,
    ca: LocalCa,
    renew_at: SystemTime,
}

impl AutoCertificate {
    /// Serves `server.crt` if it still fits, else issues a new one.
    fn load_or_issue(&mut self) -> anyhow::Result<CertifiedKey> {
        let cert = self.directory.join("server.crt");
        let key = self.directory.join("server.key");
        if cert.exists() && key.exists() {
            match self.check_existing(&cert, &key) {
                Ok(certified) => return Ok(certified),
                Err(reason) => {
                    tracing::info!(cert = %cert.display(), %reason, "issuing a new server certificate");
                }
            }
        }
        self.issue()
    }

    fn check_existing(&mut self, cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
        let certified = load_files(cert, key).map_err(|error| format!("{error:#}"))?;
        for name in &self.names {
            verify_for_name(&self.ca.certificate, &certified.cert, name)?;
        }
        let summary =
            CertificateSummary::parse(&certified.cert[0]).map_err(|error| format!("{error:#}"))?;
        let renew_at = summary.not_after - RENEW_BEFORE;
        if renew_at <= SystemTime::now() {
            return Err(format!("it expires on {}", summary.not_after_text()));
        }
        self.renew_at = renew_at;
        Ok(certified)
    }

    fn issue(&mut self) -> anyhow::Result<CertifiedKey> {
        let issued = self
            .ca
            .issue(&self.hostname, &self.names, SERVER_VALIDITY)?;
        write_private(
            &self.directory.join("server.key"),
            &issued.key.serialize_pem(),
        )?;
        write_public(&self.directory.join("server.crt"), &issued.chain_pem)?;
        let private_key = PrivateKeyDer::try_from(issued.key.serialize_der())
            .map_err(|error| anyhow::anyhow!("the new server key: {error}"))?;
        let certified = CertifiedKey::from_der(issued.chain, private_key, &provider())
            .context("the new server certificate")?;
        self.renew_at = SystemTime::now() + SERVER_VALIDITY - RENEW_BEFORE;
        tracing::info!(
            names = ?self.names,
            cert = %self.directory.join("server.crt").display(),
            "issued the server certificate from the local CA"
        );
        Ok(certified)
    }
}

/// The names an auto certificate covers.
fn auto_names(hostname: &str, listen: SocketAddr) -> Vec<String> {
    let mut names = vec![
        hostname.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let listen_ip = listen.ip();
    if !listen_ip.is_unspecified() {
        names.push(listen_ip.to_string());
    } else if let Some(lan) = lan_address() {
        // Listening everywhere: the address other machines most likely use.
        names.push(lan.to_string());
    }
    let mut unique = Vec::new();
    for name in names {
        let canonical = name
            .parse::<IpAddr>()
            .map_or_else(|_| name.to_ascii_lowercase(), |ip| ip.to_string());
        if !unique.contains(&canonical) {
            unique.push(canonical);
        }
    }
    unique
}

/// This machine's address on the network its default route leads to, if any.
/// No packet is sent: connecting a UDP socket only picks the route.
pub fn lan_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("8.8.8.8:53").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Checks that `chain` verifies with `ca` as the only root for `name` now.
pub fn verify_for_name(
    ca: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    name: &str,
) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|error| format!("the CA is not usable as a root: {error}"))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|error| format!("{error}"))?;
    let server_name =
        ServerName::try_from(name.to_owned()).map_err(|error| format!("{name:?}: {error}"))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("no certificate".into());
    };
    verifier
        .verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|error| format!("not valid for {name} with this CA: {error}"))
}

// --- describing certificates ---------------------------------------------------------------

/// What people need to know of a certificate.
#[derive(Debug, Clone)]
pub struct CertificateSummary {
    pub subject: String,
    pub issuer: String,
    pub not_after: SystemTime,
    pub names: Vec<String>,
    pub is_ca: bool,
    /// SHA-256 of the DER bytes, as colon-separated upper-case hex pairs.
    pub fingerprint: String,
}

impl CertificateSummary {
    pub fn parse(der: &CertificateDer<'_>) -> anyhow::Result<CertificateSummary> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der)
            .map_err(|error| anyhow::anyhow!("not a valid X.509 certificate: {error}"))?;
        let not_after = certificate.validity().not_after.timestamp();
        let not_after = if not_after >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        };
        let mut names = Vec::new();
        if let Ok(Some(alternative)) = certificate.subject_alternative_name() {
            for name in &alternative.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        names.push((*dns).to_owned())
                    }
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                        if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                            names.push(IpAddr::from(octets).to_string());
                        } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                            names.push(IpAddr::from(octets).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(CertificateSummary {
            subject: certificate.subject().to_string(),
            issuer: certificate.issuer().to_string(),
            not_after,
            names,
            is_ca: certificate.is_ca(),
            fingerprint: fingerprint(der),
        })
    }

    /// The expiry date as `YYYY-MM-DD`.
    pub fn not_after_text(&self) -> String {
        time::OffsetDateTime::from(self.not_after)
            .date()
            .to_string()
    }
}

/// SHA-256 of a certificate as `AB:CD:...`, the form `openssl x509 -fingerprint -sha256` prints.
pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    Sha256::digest(der.as_ref())
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

// --- files ---------------------------------------------------------------------------------

/// Writes a file readable by its owner only, atomically.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_atomically(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_atomically(path, contents, 0o644)
}

fn write_atomically(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut temporary_name = path.file_name().unwrap_or_default().to_os_string();
    temporary_name.push(".tmp");
    let temporary = path.with_file_name(temporary_name);
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        let mut file = options.open(&temporary)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().with_context(|| {
        format!(
            "cannot write {}; check the data directory's permissions",
            path.display()
        )
    })?;
    #[cfg(not(unix))]
    let _ = mode;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("registry.example:80"), "registry.example");
        assert_eq!(strip_port("registry.example"), "registry.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn hostnames_are_checked() {
        check_hostname("registry.localhost.direct").unwrap();
        check_hostname("127.0.0.1").unwrap();
        check_hostname("::1").unwrap();
        assert!(check_hostname("https://registry").is_err());
        assert!(check_hostname("registry:5000").is_err());
        assert!(check_hostname("").is_err());
    }

    #[test]
    fn the_local_ca_issues_and_reloads() {
        let directory = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(directory.path(), "registry.test").unwrap();
        let names = auto_names("registry.test", "127.0.0.1:0".parse().unwrap());
        let issued = ca.issue("registry.test", &names, SERVER_VALIDITY).unwrap();
        for name in &names {
            verify_for_name(&ca.certificate, &issued.chain, name).unwrap();
        }
        assert!(verify_for_name(&ca.certificate, &issued.chain, "other.test").is_err());
        // Loaded again from its files, the CA signs certificates that verify
        // with the CA certificate clients already trust.
        let again = LocalCa::load_or_create(directory.path(), "registry.test").unwrap();
        assert_eq!(again.certificate, ca.certificate);
        let issued = again
            .issue("registry.test", &names, SERVER_VALIDITY)
            .unwrap();
        verify_for_name(&ca.certificate, &issued.chain, "registry.test").unwrap();
        let summary = CertificateSummary::parse(&ca.certificate).unwrap();
        assert!(summary.is_ca);
        assert!(
            summary.subject.contains("Kai local CA registry.test"),
            "{summary:?}"
        );
    }

    #[test]
    fn auto_certificates_close_to_expiry_are_renewed() {
        let directory = tempfile::tempdir().unwrap();
        let names = auto_names("registry.test", "127.0.0.1:0".parse().unwrap());
        let ca = LocalCa::load_or_create(directory.path(), "registry.test").unwrap();
        // A certificate with 10 days left, as if issued long ago.
        let old = ca
            .issue(
                "registry.test",
                &names,
                Duration::from_secs(10 * 24 * 60 * 60),
            )
            .unwrap();
        write_private(
            &directory.path().join("server.key"),
            &old.key.serialize_pem(),
        )
        .unwrap();
        write_public(&directory.path().join("server.crt"), &old.chain_pem).unwrap();
        let mut auto = AutoCertificate {
            directory: directory.path().to_path_buf(),
            hostname: "registry.test".into(),
            names,
            ca,
            renew_at: SystemTime::UNIX_EPOCH,
        };
        let certified = auto.load_or_issue().unwrap();
        assert_ne!(certified.cert[0], old.chain[0], "renewed at start");
        let summary = CertificateSummary::parse(&certified.cert[0]).unwrap();
        assert!(summary.not_after > SystemTime::now() + Duration::from_secs(300 * 24 * 60 * 60));
        assert!(auto.renew_at > SystemTime::now() + Duration::from_secs(300 * 24 * 60 * 60));
        // The new one is kept at the next start.
        let again = auto.load_or_issue().unwrap();
        assert_eq!(again.cert[0], certified.cert[0]);

        // While running: renewed once renew_at has passed.
        let current = Arc::new(CurrentCertificate(RwLock::new(Arc::new(again))));
        auto.renew_at = SystemTime::now() - Duration::from_secs(1);
        let tls = Tls {
            config: Arc::new(
                ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_cert_resolver(current.clone()),
            ),
            current,
            source: Source::Auto(Box::new(Mutex::new(auto))),
            reload_interval: Duration::from_secs(1),
        };
        assert!(tls.refresh().unwrap());
        assert_ne!(tls.certificate_chain()[0], certified.cert[0]);
        assert!(
            !tls.refresh().unwrap(),
            "not again before the next renewal date"
        );
    }
}
