//! TLS: `--tls auto` and `--tls-cert/--tls-key` served to reqwest, curl and
//! skopeo; certificate reload without restart; start-up errors for bad files;
//! `kai ca export`, `kai setup` and `kai doctor` as people run them.

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kai::config::{Config, Tls, TlsMode};
use kai::server::RunningServer;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{sha256, TestRegistry, OCI_CONFIG, OCI_MANIFEST};

const KAI: &str = env!("CARGO_BIN_EXE_kai");

/// A client that trusts only `ca_pem` and reaches `host` at `address`.
fn client_trusting(ca_pem: &[u8], host: &str, address: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).expect("CA PEM"))
        .tls_built_in_root_certs(false)
        .resolve(host, address)
        .build()
        .expect("client")
}

fn auto_config(data: &Path, hostname: &str) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: data.to_path_buf(),
        tls: Tls {
            mode: TlsMode::Auto,
            hostname: Some(hostname.into()),
            ..Tls::default()
        },
        ..Config::default()
    };
    // Without credentials: tests/integration/auth.rs covers authorization.
    config.auth.enabled = false;
    config
}

#[tokio::test]
async fn auto_tls_serves_http2_and_http1_to_clients_that_trust_the_ca() {
    let directory = tempfile::tempdir().unwrap();
    let mut config = auto_config(directory.path(), "registry.test");
    config.tls.redirect_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = RunningServer::start(config)
        .await
        .expect("starts with --tls auto");
    assert_eq!(server.scheme, "https");
    let ca = std::fs::read(directory.path().join("tls/ca.crt")).expect("the CA is in DATA/tls");
    let base = format!("https://registry.test:{}", server.address.port());

    let client = client_trusting(&ca, "registry.test", server.address);
    let response = client.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "ALPN chose h2"
    );
    assert_eq!(
        response.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    // A blob over HTTP/2, pushed and pulled back.
    let blob: Vec<u8> = (0..3_000_000u32).map(|index| (index % 251) as u8).collect();
    let digest = sha256(&blob);
    let response = client
        .post(format!("{base}/v2/tls/test/blobs/uploads/?digest={digest}"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let pulled = client
        .get(format!("{base}/v2/tls/test/blobs/{digest}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(pulled == blob, "the blob came back different");

    // HTTP/1.1 by ALPN too, and the other names of the certificate.
    let http1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .tls_built_in_root_certs(false)
        .http1_only()
        .build()
        .unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let response = http1
            .get(format!("https://{host}:{}/v2/", server.address.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{host}");
        assert_eq!(response.version(), reqwest::Version::HTTP_11, "{host}");
    }

    // A client without the CA is refused.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("https://localhost:{}/v2/", server.address.port()))
        .send()
        .await
        .is_err());

    // Plain HTTP on the redirect address: 308 to the same path over HTTPS.
    let redirect = server.redirect_address.expect("a redirect listener");
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://{redirect}/v2/_catalog?n=1"))
        .header("host", "registry.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        response.headers()["location"],
        format!(
            "https://registry.test:{}/v2/_catalog?n=1",
            server.address.port()
        )
        .as_str()
    );
    server.stop().await.unwrap();

    // Restarted on the same data: the same CA, and the certificate still fits.
    let server_cert = std::fs::read(directory.path().join("tls/server.crt")).unwrap();
    let server = RunningServer::start(auto_config(directory.path(), "registry.test"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(directory.path().join("tls/ca.crt")).unwrap(),
        ca
    );
    assert_eq!(
        std::fs::read(directory.path().join("tls/server.crt")).unwrap(),
        server_cert,
        "an unchanged hostname keeps the certificate"
    );
    server.stop().await.unwrap();

    // Another hostname: a new server certificate from the same CA.
    let server = RunningServer::start(auto_config(directory.path(), "other.test"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(directory.path().join("tls/ca.crt")).unwrap(),
        ca
    );
    let client = client_trusting(&ca, "other.test", server.address);
    let response = client
        .get(format!("https://other.test:{}/v2/", server.address.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await.unwrap();
}

/// A CA and a server certificate it issued for `localhost`, as PEM.
struct Issued {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
}

fn issue_for_localhost(label: &str) -> Issued {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("test CA {label}"));
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("localhost {label}"));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    Issued {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    }
}

async fn get_v2(ca_pem: &str, port: u16) -> Result<StatusCode, reqwest::Error> {
    // A new client each time, so that no pooled connection hides the new certificate.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    Ok(client
        .get(format!("https://localhost:{port}/v2/"))
        .send()
        .await?
        .status())
}

#[tokio::test]
async fn changed_certificate_files_are_served_without_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let cert = directory.path().join("tls.crt");
    let key = directory.path().join("tls.key");
    let first = issue_for_localhost("first");
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: directory.path().join("data"),
        tls: Tls {
            mode: TlsMode::Files,
            cert: Some(cert.clone()),
            key: Some(key.clone()),
            reload_interval: Duration::from_millis(100),
            ..Tls::default()
        },
        ..Config::default()
    };
    config.auth.enabled = false;
    let server = RunningServer::start(config).await.unwrap();
    let port = server.address.port();
    let tls = server.tls.clone().expect("TLS is on");
    assert_eq!(get_v2(&first.ca_pem, port).await.unwrap(), StatusCode::OK);

    // Replace both files; the new pair is served within a few reload intervals.
    let second = issue_for_localhost("second");
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls.certificate_chain()[0].as_ref() != second.cert_der.as_slice() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not loaded within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_v2(&second.ca_pem, port).await.unwrap(), StatusCode::OK);
    assert!(
        get_v2(&first.ca_pem, port).await.is_err(),
        "the old CA no longer verifies the served certificate"
    );

    // A key that does not fit is refused; the last good pair stays in service.
    let third = issue_for_localhost("third");
    std::fs::write(&cert, &third.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tls.certificate_chain()[0].as_ref(),
        second.cert_der.as_slice()
    );
    assert_eq!(get_v2(&second.ca_pem, port).await.unwrap(), StatusCode::OK);
    server.stop().await.unwrap();
}

// --- the binary -------------------------------------------------------------------------------

/// `kai serve` as a child process, killed when dropped.
struct KaiServe {
    child: Child,
    address: SocketAddr,
    stderr: PathBuf,
}

impl KaiServe {
    /// Starts `kai serve ARGS` with authentication off and waits for
    /// `listening on https://ADDR`.
    fn start(directory: &Path, arguments: &[&str]) -> KaiServe {
        Self::start_with_auth(directory, arguments, false)
    }

    fn start_with_auth(directory: &Path, arguments: &[&str], auth: bool) -> KaiServe {
        let stderr = directory.join(format!("kai-{}.log", uuid::Uuid::new_v4()));
        let mut child = Command::new(KAI)
            .arg("serve")
            .args(arguments)
            .env_remove("KAI_CONFIG")
            // Mostly without credentials: tests/integration/auth.rs covers authorization.
            .env("KAI_AUTH__ENABLED", if auth { "true" } else { "false" })
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("kai starts");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "no ready line from kai serve {arguments:?}; its log:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        let address = line
            .strip_prefix("listening on https://")
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
            .parse()
            .expect("an address");
        KaiServe {
            child,
            address,
            stderr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for KaiServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `kai ARGS` to its end, with `environment` added, feeding `input`.
fn kai(arguments: &[&str], environment: &[(&str, &str)], input: Option<&str>) -> Output {
    let mut command = Command::new(KAI);
    command
        .args(arguments)
        .env_remove("KAI_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in environment {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("kai runs");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input.as_bytes()).unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kai {arguments:?} did not finish within 120s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether a client program is installed; absent ones skip the test unless CI=true.
fn installed(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{program} is not installed, and CI=true requires it (scripts/install-test-deps)"
        );
        eprintln!("skipped: {program} is not installed (scripts/install-test-deps installs it)");
    }
    found
}

/// The line of `kai doctor` output for `check`.
fn doctor_line<'a>(output: &'a str, check: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.get(6..19).map(str::trim_end) == Some(check))
        .unwrap_or_else(|| panic!("no {check:?} line in:\n{output}"))
}

/// The `fix:` line after the line for `check`.
fn doctor_fix<'a>(output: &'a str, check: &str) -> &'a str {
    let line = doctor_line(output, check);
    let mut lines = output.lines().skip_while(|candidate| *candidate != line);
    lines.next();
    lines
        .next()
        .and_then(|next| next.trim_start().strip_prefix("fix: "))
        .unwrap_or_else(|| panic!("no fix after the {check:?} line in:\n{output}"))
}

#[test]
fn ca_export_prints_the_ca_and_curl_speaks_http2_with_it() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let data_text = data.to_str().unwrap();
    let output = kai(&["ca", "export", "--data", data_text], &[], None);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("kai serve --tls auto --hostname"),
        "{}",
        text(&output.stderr)
    );

    let server = KaiServe::start(
        directory.path(),
        &[
            "--tls",
            "auto",
            "--hostname",
            "localhost",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data_text,
        ],
    );
    let output = kai(&["ca", "export", "--data", data_text], &[], None);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let exported = text(&output.stdout);
    assert!(
        exported.starts_with("-----BEGIN CERTIFICATE-----"),
        "{exported}"
    );
    assert_eq!(
        exported,
        std::fs::read_to_string(data.join("tls/ca.crt")).unwrap()
    );
    let ca = directory.path().join("kai-ca.crt");
    std::fs::write(&ca, &exported).unwrap();

    if !installed("curl") {
        return;
    }
    let output = Command::new("curl")
        .args(["--http2", "--silent", "--show-error", "--cacert"])
        .arg(&ca)
        .args([
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_version} %{http_code}",
        ])
        .arg(format!("https://localhost:{}/v2/", server.address.port()))
        .env_remove("SSL_CERT_FILE")
        .output()
        .unwrap();
    assert_eq!(
        text(&output.stdout),
        "2 200",
        "curl: {}\nkai: {}",
        text(&output.stderr),
        server.log()
    );
}

#[tokio::test]
async fn skopeo_pushes_and_pulls_with_cert_dir() {
    if !installed("skopeo") {
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let server = KaiServe::start(
        directory.path(),
        &[
            "--tls",
            "auto",
            "--hostname",
            "localhost",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    let port = server.address.port();
    let certs = directory.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(data.join("tls/ca.crt"), certs.join("ca.crt")).unwrap();
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();

    // A tiny image pushed with reqwest.
    let client = client_trusting(&ca, "localhost", server.address);
    let base = format!("https://localhost:{port}");
    let layer = b"not really a tar, but skopeo copies blobs as they are".to_vec();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}
    }))
    .unwrap();
    for blob in [&config, &layer] {
        let response = client
            .post(format!(
                "{base}/v2/tls/skopeo/blobs/uploads/?digest={}",
                sha256(blob)
            ))
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let response = client
        .put(format!("{base}/v2/tls/skopeo/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let skopeo = |arguments: &[&str]| {
        let output = Command::new("skopeo")
            .args(arguments)
            .env_remove("SSL_CERT_FILE")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "skopeo {arguments:?}: {}\nkai: {}",
            text(&output.stderr),
            server.log()
        );
        text(&output.stdout)
    };
    let certs_text = certs.to_str().unwrap();
    let inspected = skopeo(&[
        "inspect",
        "--cert-dir",
        certs_text,
        &format!("docker://localhost:{port}/tls/skopeo:v1"),
    ]);
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(inspected["Digest"], sha256(&manifest));
    assert_eq!(inspected["Architecture"], "amd64");

    // Out to an OCI layout and back under another name.
    let layout = directory.path().join("layout");
    let layout_reference = format!("oci:{}:v1", layout.display());
    skopeo(&[
        "copy",
        "--insecure-policy",
        "--src-cert-dir",
        certs_text,
        &format!("docker://localhost:{port}/tls/skopeo:v1"),
        &layout_reference,
    ]);
    skopeo(&[
        "copy",
        "--insecure-policy",
        "--dest-cert-dir",
        certs_text,
        &layout_reference,
        &format!("docker://localhost:{port}/tls/skopeo-copy:v1"),
    ]);
    // skopeo compresses the layer on the way, so the manifest differs; the config does not.
    let copied = skopeo(&[
        "inspect",
        "--raw",
        "--cert-dir",
        certs_text,
        &format!("docker://localhost:{port}/tls/skopeo-copy:v1"),
    ]);
    let copied: serde_json::Value = serde_json::from_str(&copied).unwrap();
    assert_eq!(copied["config"]["digest"], sha256(&config));
    assert_eq!(copied["layers"].as_array().map(Vec::len), Some(1));

    // Without the CA, skopeo refuses the registry.
    let empty = directory.path().join("no-certs");
    std::fs::create_dir_all(&empty).unwrap();
    let output = Command::new("skopeo")
        .args(["inspect", "--cert-dir", empty.to_str().unwrap()])
        .arg(format!("docker://localhost:{port}/tls/skopeo:v1"))
        .env("SSL_CERT_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("certificate"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn bad_certificate_files_stop_start_up_with_the_file_and_the_problem() {
    let directory = tempfile::tempdir().unwrap();
    let path = |name: &str| directory.path().join(name);
    let first = issue_for_localhost("first");
    let second = issue_for_localhost("second");
    std::fs::write(path("good.crt"), &first.cert_pem).unwrap();
    std::fs::write(path("good.key"), &first.key_pem).unwrap();
    std::fs::write(path("other.key"), &second.key_pem).unwrap();
    std::fs::write(path("garbage.crt"), "this is not a certificate\n").unwrap();
    let data = path("data");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--tls-cert", "missing.crt", "--tls-key", "good.key"],
            &["cannot read the certificate", "missing.crt", "No such file"],
        ),
        (
            &["--tls-cert", "garbage.crt", "--tls-key", "good.key"],
            &["garbage.crt", "holds no PEM certificate"],
        ),
        (
            &["--tls-cert", "good.crt", "--tls-key", "other.key"],
            &[
                "other.key",
                "does not belong to the certificate",
                "good.crt",
            ],
        ),
        (
            &["--tls-cert", "good.key", "--tls-key", "good.crt"],
            &["good.key", "swapped"],
        ),
        (
            &["--tls-cert", "good.crt", "--tls-key", "missing.key"],
            &["cannot read the TLS private key", "missing.key"],
        ),
        (&["--tls", "auto"], &["tls.hostname", "--hostname"]),
        (&["--tls", "files"], &["--tls-cert FILE --tls-key FILE"]),
        (
            &["--tls", "auto", "--hostname", "https://registry:5000"],
            &["is not a host name"],
        ),
        (
            &["--http-redirect", "127.0.0.1:0"],
            &["tls.mode is \"off\""],
        ),
    ];
    for (arguments, expected) in cases {
        let arguments: Vec<String> = arguments
            .iter()
            .map(|argument| {
                if argument.ends_with(".crt") || argument.ends_with(".key") {
                    path(argument).display().to_string()
                } else {
                    (*argument).to_owned()
                }
            })
            .collect();
        let mut all = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ];
        all.extend(arguments.iter().map(String::as_str));
        let output = kai(&all, &[], None);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{arguments:?} started");
        assert!(
            !text(&output.stdout).contains("listening on"),
            "{arguments:?}: {}",
            text(&output.stdout)
        );
        for part in *expected {
            assert!(
                stderr.contains(part),
                "{arguments:?}: expected {part:?} in:\n{stderr}"
            );
        }
    }
}

#[test]
fn setup_prints_and_installs_the_ca_where_each_client_looks() {
    let directory = tempfile::tempdir().unwrap();
    let ca_path = directory.path().join("kai-ca.crt");
    std::fs::write(&ca_path, issue_for_localhost("setup").ca_pem).unwrap();
    let ca = ca_path.to_str().unwrap();
    let home = directory.path().join("home");
    let home_text = home.to_str().unwrap();
    let root = directory.path().join("root");
    let root_text = root.to_str().unwrap();
    let environment = [("HOME", home_text), ("XDG_CONFIG_HOME", "")];
    let host = "registry.localhost.direct:5000";

    let output = kai(
        &["setup", "docker", "--host", host, "--ca", ca, "--print"],
        &environment,
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed = text(&output.stdout);
    assert!(
        printed.contains(&format!("mkdir -p /etc/docker/certs.d/{host}\n")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "install -m 0644 {ca} /etc/docker/certs.d/{host}/ca.crt\n"
        )),
        "{printed}"
    );
    assert!(printed.contains("SHA-256 "), "{printed}");

    let output = kai(
        &[
            "setup", "docker", "--host", host, "--ca", ca, "--root", root_text,
        ],
        &environment,
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let installed = root.join(format!("etc/docker/certs.d/{host}/ca.crt"));
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&ca_path).unwrap()
    );
    assert!(text(&output.stdout).contains("no restart needed"));

    let output = kai(
        &[
            "setup", "podman", "--host", host, "--ca", ca, "--root", root_text,
        ],
        &environment,
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(root
        .join(format!("etc/containers/certs.d/{host}/ca.crt"))
        .exists());

    let output = kai(
        &["setup", "system", "--host", host, "--ca", ca, "--print"],
        &environment,
        None,
    );
    let printed = text(&output.stdout);
    assert!(
        printed.contains("/usr/local/share/ca-certificates/kai-registry.localhost.direct.crt")
            && printed.contains("update-ca-certificates"),
        "{printed}"
    );
    let output = kai(
        &[
            "setup", "system", "--host", host, "--ca", ca, "--root", root_text,
        ],
        &environment,
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(root
        .join("usr/local/share/ca-certificates/kai-registry.localhost.direct.crt")
        .exists());

    // buildx --print writes nothing and shows the file, the command and why.
    let output = kai(
        &["setup", "buildx", "--host", host, "--ca", ca, "--print"],
        &environment,
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed = text(&output.stdout);
    let config_dir = home.join(".config/kai/buildkit").join(host);
    for part in [
        format!("[registry.\"{host}\"]"),
        format!("ca = [\"{}\"]", config_dir.join("ca.crt").display()),
        "docker buildx create --name kai --driver docker-container --driver-opt network=host"
            .to_owned(),
        format!(
            "--buildkitd-config {}/buildkitd.toml --use",
            config_dir.display()
        ),
        "127.0.0.1 is that\ncontainer".to_owned(),
        "--add-host registry.localhost.direct:host-gateway".to_owned(),
    ] {
        assert!(printed.contains(&part), "expected {part:?} in:\n{printed}");
    }
    assert!(!home.exists(), "--print wrote files");

    // Without --print: the files, and a buildkitd.toml BuildKit can read.
    let output = kai(
        &["setup", "buildx", "--host", host, "--ca", ca],
        &environment,
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let written = std::fs::read_to_string(config_dir.join("buildkitd.toml")).unwrap();
    let parsed: toml::Table = toml::from_str(&written).unwrap();
    assert_eq!(
        parsed["registry"][host]["ca"][0].as_str().unwrap(),
        config_dir.join("ca.crt").to_str().unwrap()
    );
    assert_eq!(
        std::fs::read(config_dir.join("ca.crt")).unwrap(),
        std::fs::read(&ca_path).unwrap()
    );

    // No CA to install: say where to get one.
    let output = kai(
        &[
            "setup",
            "docker",
            "--host",
            host,
            "--data",
            directory.path().join("nothing").to_str().unwrap(),
        ],
        &environment,
        None,
    );
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("pass --ca FILE"),
        "{}",
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).contains("kai ca export"),
        "{}",
        text(&output.stderr)
    );
    let output = kai(
        &["setup", "docker", "--host", "https://registry", "--ca", ca],
        &environment,
        None,
    );
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("HOST:PORT"),
        "{}",
        text(&output.stderr)
    );
}

/// This machine's non-loopback address that a server can listen on, if any.
fn lan_address() -> Option<IpAddr> {
    kai::tls::lan_address().filter(|ip| std::net::TcpListener::bind((*ip, 0)).is_ok())
}

#[test]
fn doctor_passes_every_check_once_clients_trust_the_ca() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    // A non-loopback name, so that the DNS check has nothing to warn about.
    let host = lan_address().map_or_else(|| "localhost".to_owned(), |ip| ip.to_string());
    let listen = format!(
        "{}:0",
        if host == "localhost" {
            "127.0.0.1"
        } else {
            host.as_str()
        }
    );
    let server = KaiServe::start(
        directory.path(),
        &[
            "--tls",
            "auto",
            "--hostname",
            &host,
            "--listen",
            &listen,
            "--data",
            data.to_str().unwrap(),
        ],
    );
    let registry = format!("{host}:{}", server.address.port());
    let ca = data.join("tls/ca.crt");
    let ca_text = ca.to_str().unwrap();
    let root = directory.path().join("root");
    let root_text = root.to_str().unwrap();
    let home = directory.path().join("home");
    let environment = [
        ("HOME", home.to_str().unwrap()),
        ("XDG_CONFIG_HOME", ""),
        // The system store of this test: the Kai CA only.
        ("SSL_CERT_FILE", ca_text),
        ("SSL_CERT_DIR", ""),
    ];
    for client in ["docker", "buildx"] {
        let output = kai(
            &[
                "setup", client, "--host", &registry, "--ca", ca_text, "--root", root_text,
            ],
            &environment,
            None,
        );
        assert!(output.status.success(), "{}", text(&output.stderr));
    }
    let url = format!("https://{registry}");
    let output = kai(
        &[
            "doctor",
            &url,
            "--root",
            root_text,
            "--user",
            "alice",
            "--password-stdin",
        ],
        &environment,
        Some("secret\n"),
    );
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}\nkai: {}",
        text(&output.stderr),
        server.log()
    );
    for check in [
        "tcp",
        "tls",
        "tls system",
        "tls docker",
        "tls buildkit",
        "api",
        "login",
        "round trip",
        "old docker",
    ] {
        assert!(
            doctor_line(&stdout, check).starts_with("ok "),
            "{check}:\n{stdout}"
        );
    }
    if host != "localhost" {
        assert!(doctor_line(&stdout, "dns").starts_with("ok "), "{stdout}");
        assert!(stdout.contains("0 warn, 0 fail"), "{stdout}");
    }
    assert!(doctor_line(&stdout, "api").contains("HTTP/2"), "{stdout}");
    assert!(
        doctor_line(&stdout, "login").contains("also answers without credentials"),
        "{stdout}"
    );
    assert!(
        doctor_line(&stdout, "old docker").contains("linux/amd64, linux/arm64"),
        "{stdout}"
    );
    // The round trip cleaned up after itself.
    assert!(
        doctor_line(&stdout, "round trip").contains("deleted it by digest"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_what_is_wrong_and_the_command_that_fixes_it() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let server = KaiServe::start(
        directory.path(),
        &[
            "--tls",
            "auto",
            "--hostname",
            "localhost",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    let port = server.address.port();
    let empty_root = directory.path().join("empty-root");
    let home = directory.path().join("home");
    let environment = [
        ("HOME", home.to_str().unwrap()),
        ("XDG_CONFIG_HOME", ""),
        ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
        ("SSL_CERT_DIR", ""),
    ];
    let root = empty_root.to_str().unwrap();

    // Nothing trusts the CA yet, and localhost is loopback.
    let output = kai(
        &[
            "doctor",
            &format!("https://localhost:{port}"),
            "--root",
            root,
        ],
        &environment,
        None,
    );
    let stdout = text(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(doctor_line(&stdout, "dns").starts_with("warn "), "{stdout}");
    assert!(doctor_line(&stdout, "dns").contains("loopback"), "{stdout}");
    assert!(
        doctor_fix(&stdout, "dns")
            .starts_with(&format!("kai setup buildx --host localhost:{port}")),
        "{stdout}"
    );
    assert!(doctor_line(&stdout, "tcp").starts_with("ok "), "{stdout}");
    assert!(doctor_line(&stdout, "tls").starts_with("ok "), "{stdout}");
    let system = doctor_line(&stdout, "tls system");
    assert!(
        system.starts_with("fail ")
            && system.contains("does not trust the server's CA \"CN=Kai local CA localhost"),
        "{stdout}"
    );
    assert_eq!(
        doctor_fix(&stdout, "tls system"),
        format!("sudo kai setup system --host localhost:{port} --ca kai-ca.crt")
    );
    assert!(
        doctor_line(&stdout, "tls docker").starts_with("fail "),
        "{stdout}"
    );
    assert_eq!(
        doctor_fix(&stdout, "tls docker"),
        format!("sudo kai setup docker --host localhost:{port} --ca kai-ca.crt")
    );
    assert!(
        doctor_line(&stdout, "tls buildkit").starts_with("warn "),
        "{stdout}"
    );
    assert!(doctor_line(&stdout, "api").starts_with("skip "), "{stdout}");
    assert!(stdout.contains("kai ca export > kai-ca.crt"), "{stdout}");

    // A CA file that is not the server's: the --ca line fails with a way out.
    let other_ca = directory.path().join("other-ca.crt");
    std::fs::write(&other_ca, issue_for_localhost("other").ca_pem).unwrap();
    let output = kai(
        &[
            "doctor",
            &format!("https://localhost:{port}"),
            "--root",
            root,
            "--ca",
            other_ca.to_str().unwrap(),
        ],
        &environment,
        None,
    );
    let stdout = text(&output.stdout);
    assert!(!output.status.success());
    assert!(
        doctor_line(&stdout, "tls --ca").starts_with("fail "),
        "{stdout}"
    );
    assert!(
        doctor_line(&stdout, "tls --ca").contains("does not trust"),
        "{stdout}"
    );

    // Nothing listens on the port.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let output = kai(
        &[
            "doctor",
            &format!("https://127.0.0.1:{closed}"),
            "--root",
            root,
        ],
        &environment,
        None,
    );
    let stdout = text(&output.stdout);
    assert!(!output.status.success());
    let tcp = doctor_line(&stdout, "tcp");
    assert!(
        tcp.starts_with("fail ") && tcp.contains("cannot connect to 127.0.0.1"),
        "{stdout}"
    );
    assert!(
        doctor_fix(&stdout, "tcp").starts_with("start Kai on the server: kai serve --tls auto"),
        "{stdout}"
    );
    assert!(doctor_line(&stdout, "tls").starts_with("skip "), "{stdout}");

    // A plain-HTTP registry on the port: TLS fails, and says how to serve it.
    let plain = TestRegistry::start().await;
    let plain_port = plain.base.rsplit(':').next().unwrap().to_owned();
    let output = tokio::task::spawn_blocking({
        let root = root.to_owned();
        let environment: Vec<(String, String)> = environment
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        move || {
            let environment: Vec<(&str, &str)> = environment
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            kai(
                &[
                    "doctor",
                    &format!("https://127.0.0.1:{plain_port}"),
                    "--root",
                    &root,
                ],
                &environment,
                None,
            )
        }
    })
    .await
    .unwrap();
    let stdout = text(&output.stdout);
    assert!(!output.status.success());
    let tls = doctor_line(&stdout, "tls");
    assert!(
        tls.starts_with("fail ") && tls.contains("does not speak TLS"),
        "{stdout}"
    );
    assert_eq!(
        doctor_fix(&stdout, "tls"),
        "serve HTTPS on this port: kai serve --tls auto --hostname 127.0.0.1"
    );
    plain.stop().await;
}

#[test]
fn doctor_logs_in_when_the_registry_wants_credentials() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let server = KaiServe::start_with_auth(
        directory.path(),
        &[
            "--tls",
            "auto",
            "--hostname",
            "localhost",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ],
        true,
    );
    // The administrator Kai creates at its first start, with the password it prints once.
    let log = server.log();
    let password = log
        .lines()
        .find_map(|line| {
            line.contains("administrator")
                .then(|| line.split("password ").nth(1))
                .flatten()
        })
        .map(|password| password.trim().trim_matches('`').to_owned())
        .unwrap_or_else(|| panic!("no administrator password in the log:\n{log}"));
    let url = format!("https://localhost:{}", server.address.port());
    let ca = data.join("tls/ca.crt");
    let home = directory.path().join("home");
    let environment = [
        ("HOME", home.to_str().unwrap()),
        ("XDG_CONFIG_HOME", ""),
        ("SSL_CERT_FILE", ca.to_str().unwrap()),
        ("SSL_CERT_DIR", ""),
    ];

    let output = kai(&["doctor", &url], &environment, None);
    let stdout = text(&output.stdout);
    assert!(doctor_line(&stdout, "api").contains("401"), "{stdout}");
    assert!(
        doctor_line(&stdout, "login").starts_with("warn "),
        "{stdout}"
    );
    assert!(
        doctor_fix(&stdout, "login").contains("--user USER --password-stdin"),
        "{stdout}"
    );
    assert!(
        doctor_line(&stdout, "round trip").starts_with("skip "),
        "{stdout}"
    );

    let output = kai(
        &["doctor", &url, "--user", "admin", "--password-stdin"],
        &environment,
        Some(&format!("{password}\n")),
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}\nkai: {}", server.log());
    assert!(
        doctor_line(&stdout, "login")
            .starts_with("ok    login         credentials of admin accepted"),
        "{stdout}"
    );
    assert!(
        doctor_line(&stdout, "round trip").starts_with("ok "),
        "{stdout}"
    );
    assert!(
        doctor_line(&stdout, "old docker").starts_with("ok "),
        "{stdout}"
    );

    let output = kai(
        &["doctor", &url, "--user", "admin", "--password-stdin"],
        &environment,
        Some("wrong\n"),
    );
    let stdout = text(&output.stdout);
    assert!(!output.status.success());
    assert!(
        doctor_line(&stdout, "login").starts_with("fail "),
        "{stdout}"
    );
    assert!(
        doctor_fix(&stdout, "login").contains("docker login localhost:"),
        "{stdout}"
    );
}
