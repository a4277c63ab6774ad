//! The `kai` binary as an operator runs it: started on a data directory,
//! killed with SIGKILL and started again on the same data, stopped with
//! SIGTERM, started on a port that is taken or on data another server uses,
//! and asked for its configuration.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::{error_code, image_manifest, sha256, OCI_MANIFEST};

const NAME: &str = "acme/app";

/// `kai` with no `KAI_*` variables from the environment the tests run in.
fn kai() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kai"));
    for (key, _) in std::env::vars() {
        if key.starts_with("KAI_") {
            command.env_remove(key);
        }
    }
    // These tests speak the API without credentials (tests/integration/auth.rs
    // covers authorization).
    command.env("KAI_AUTH__ENABLED", "false");
    command
}

/// A `kai serve` process.
struct Kai {
    child: Child,
    base: String,
    log: PathBuf,
    client: reqwest::Client,
}

impl Kai {
    /// Starts `kai serve` on `data` and waits for its `listening on` line.
    /// Its log goes to `log`.
    async fn start(data: &Path, log: &Path) -> Kai {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = kai()
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("kai starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("kai prints its address within 30 s")
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "kai exited before listening: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            });
        let address = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        // Keep reading, so a later line never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Kai {
            child,
            base: format!("http://{address}"),
            log: log.to_path_buf(),
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.request(Method::GET, path).send().await.unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up.
    async fn kill(mut self) {
        self.child.kill().await.unwrap();
        let status = self.child.wait().await.unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }

    /// SIGTERM, then the exit status, which must come within `limit`.
    async fn terminate(mut self, limit: Duration) -> (ExitStatus, Duration, String) {
        let pid = self.child.id().unwrap();
        let started = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("kai still runs {limit:?} after SIGTERM:\n{}", self.log()))
            .unwrap();
        (status, started.elapsed(), self.log())
    }

    async fn push_blob(&self, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let response = self
            .request(
                Method::POST,
                &format!("/v2/{NAME}/blobs/uploads/?digest={digest}"),
            )
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        digest
    }

    async fn put_manifest(&self, reference: &str, bytes: &[u8]) {
        let response = self
            .request(Method::PUT, &format!("/v2/{NAME}/manifests/{reference}"))
            .header("content-type", OCI_MANIFEST)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    /// Starts an upload session; returns its location.
    async fn start_upload(&self) -> String {
        let response = self
            .request(Method::POST, &format!("/v2/{NAME}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response.headers()["location"].to_str().unwrap().to_owned()
    }

    async fn patch(&self, location: &str, start: usize, bytes: &[u8]) -> String {
        let end = start + bytes.len() - 1;
        let response = self
            .request(Method::PATCH, location)
            .header("content-range", format!("{start}-{end}"))
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()["range"], format!("0-{end}").as_str());
        response.headers()["location"].to_str().unwrap().to_owned()
    }

    /// The `Range` the upload's status reports.
    async fn upload_range(&self, location: &str) -> String {
        let response = self.get(location).await;
        assert_eq!(
            response.status(),
            StatusCode::NO_CONTENT,
            "status of {location}"
        );
        response.headers()["range"].to_str().unwrap().to_owned()
    }
}

/// A data directory and a log file beside it.
struct Workspace {
    directory: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        Workspace {
            directory: tempfile::tempdir().unwrap(),
        }
    }

    fn data(&self) -> PathBuf {
        self.directory.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.directory.path().join("kai.log")
    }
}

/// Content deterministic enough to check byte for byte.
fn content(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn killed_registry_restarts_with_everything_and_resumes_an_upload() {
    let workspace = Workspace::new();
    let kai = Kai::start(&workspace.data(), &workspace.log()).await;

    // An image under two tags, and a blob no manifest names.
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []}}))
    .unwrap();
    let layer = content(100_000, 1);
    let loose = content(5_000, 2);
    let manifest = image_manifest(
        (&kai.push_blob(&config).await, config.len()),
        &[(&kai.push_blob(&layer).await, layer.len())],
    );
    kai.put_manifest("v1", &manifest).await;
    kai.put_manifest("stable", &manifest).await;
    kai.push_blob(&loose).await;

    // A chunked upload with two acknowledged chunks, and a third whose request
    // is still arriving when the process dies.
    let upload = content(40_000, 3);
    let location = kai.start_upload().await;
    let location = kai.patch(&location, 0, &upload[..10_000]).await;
    let location = kai.patch(&location, 10_000, &upload[10_000..25_000]).await;
    let address = kai.base.trim_start_matches("http://").to_owned();
    let mut in_flight = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {address}\r\nContent-Range: 25000-39999\r\nContent-Length: 15000\r\n\r\n"
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(&upload[25_000..32_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kai.kill().await;
    drop(in_flight);

    let kai = Kai::start(&workspace.data(), &workspace.log()).await;
    let digest = sha256(&manifest);
    for reference in ["v1", "stable", digest.as_str()] {
        let response = kai.get(&format!("/v2/{NAME}/manifests/{reference}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{reference}");
        assert_eq!(response.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            manifest.as_slice()
        );
    }
    let tags: Value = kai
        .get(&format!("/v2/{NAME}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["stable", "v1"]));
    let catalog: Value = kai.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!([NAME]));
    for bytes in [&config, &layer, &loose] {
        let response = kai
            .get(&format!("/v2/{NAME}/blobs/{}", sha256(bytes)))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.bytes().await.unwrap().as_ref() == bytes.as_slice());
    }

    // The upload holds what was acknowledged, not what was half-received.
    assert_eq!(
        kai.upload_range(&location).await,
        "0-24999",
        "{}",
        kai.log()
    );
    let location = kai.patch(&location, 25_000, &upload[25_000..]).await;
    let response = kai
        .request(
            Method::PUT,
            &format!("{location}?digest={}", sha256(&upload)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
    let response = kai
        .get(&format!("/v2/{NAME}/blobs/{}", sha256(&upload)))
        .await;
    assert!(response.bytes().await.unwrap().as_ref() == upload.as_slice());
    kai.kill().await;
}

#[tokio::test]
async fn sigterm_exits_zero_quickly() {
    let workspace = Workspace::new();
    let kai = Kai::start(&workspace.data(), &workspace.log()).await;
    // An idle keep-alive connection must not hold the shutdown up.
    let response = kai.get("/v2/").await;
    assert_eq!(response.status(), StatusCode::OK);
    let _keep_alive = kai.client.clone();
    let (status, took, log) = kai.terminate(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status:?}\n{log}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
}

#[tokio::test]
async fn sigterm_lets_an_upload_in_flight_finish() {
    let workspace = Workspace::new();
    let kai = Kai::start(&workspace.data(), &workspace.log()).await;
    let location = kai.start_upload().await;
    let bytes = content(64_000, 4);
    // The chunk arrives in eight parts over about 800 ms.
    let parts: Vec<Vec<u8>> = bytes.chunks(8_000).map(<[u8]>::to_vec).collect();
    let body = futures::stream::unfold(parts.into_iter(), |mut parts| async move {
        let part = parts.next()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(part), parts))
    });
    let request = kai
        .request(Method::PATCH, &location)
        .header("content-range", format!("0-{}", bytes.len() - 1))
        .header("content-length", bytes.len().to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let request = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, _, log) = kai.terminate(Duration::from_secs(10)).await;
    let response = request
        .await
        .unwrap()
        .expect("the chunk in flight is answered");
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{log}");
    assert_eq!(
        response.headers()["range"],
        format!("0-{}", bytes.len() - 1).as_str()
    );
    assert_eq!(status.code(), Some(0), "{status:?}\n{log}");

    // The acknowledged chunk is there after a restart.
    let kai = Kai::start(&workspace.data(), &workspace.log()).await;
    assert_eq!(
        kai.upload_range(&location).await,
        format!("0-{}", bytes.len() - 1)
    );
    kai.kill().await;
}

/// A chunk's size is recorded while its bytes sync, so a power loss can
/// leave a session that counts bytes the disk lost. Such an upload must fail
/// with a clear error, and never store a blob whose bytes are wrong. The
/// loss is simulated on the staged files between a kill and a restart.
#[tokio::test]
async fn an_upload_whose_staged_bytes_were_lost_fails_and_stores_nothing() {
    let workspace = Workspace::new();
    let kai = Kai::start(&workspace.data(), &workspace.log()).await;
    let upload = content(300_000, 4);
    let mut locations = Vec::new();
    for _ in 0..2 {
        let location = kai.start_upload().await;
        let location = kai.patch(&location, 0, &upload[..100_000]).await;
        let location = kai
            .patch(&location, 100_000, &upload[100_000..250_000])
            .await;
        locations.push(location);
    }
    kai.kill().await;

    let staged = |location: &str| {
        workspace
            .data()
            .join("uploads")
            .join(location.rsplit('/').next().unwrap())
    };
    // The first upload lost the end of its second chunk.
    let shortened = std::fs::OpenOptions::new()
        .write(true)
        .open(staged(&locations[0]))
        .unwrap();
    shortened.set_len(180_000).unwrap();
    drop(shortened);
    // The second kept its length, but some of its bytes are not the ones sent.
    let mut damaged = std::fs::read(staged(&locations[1])).unwrap();
    assert_eq!(damaged.len(), 250_000);
    damaged[120_000..130_000].fill(0);
    std::fs::write(staged(&locations[1]), &damaged).unwrap();

    let kai = Kai::start(&workspace.data(), &workspace.log()).await;
    let digest = sha256(&upload);

    let response = kai
        .request(Method::PATCH, &locations[0])
        .header("content-range", "250000-299999")
        .body(upload[250_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_INVALID", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("restart the upload"), "{message}");
    let response = kai
        .request(Method::PUT, &format!("{}?digest={digest}", locations[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "BLOB_UPLOAD_INVALID");

    let location = kai.patch(&locations[1], 250_000, &upload[250_000..]).await;
    let response = kai
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "DIGEST_INVALID");

    let response = kai.get(&format!("/v2/{NAME}/blobs/{digest}")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    kai.kill().await;
}

#[tokio::test]
async fn orphan_staged_upload_is_removed_at_start() {
    let workspace = Workspace::new();
    let kai = Kai::start(&workspace.data(), &workspace.log()).await;
    let location = kai.start_upload().await;
    let location = kai.patch(&location, 0, b"kept").await;
    let (status, _, log) = kai.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{log}");

    let uploads = workspace.data().join("uploads");
    let session_file = uploads.join(location.rsplit('/').next().unwrap());
    assert!(session_file.exists(), "staged data of a live session");
    let orphan = uploads.join("0b6c5f44-2b1a-4c7e-9d3f-5a8e1c2d3b4a");
    std::fs::write(&orphan, b"left by a crash between two steps").unwrap();

    let kai = Kai::start(&workspace.data(), &workspace.log()).await;
    assert!(
        !orphan.exists(),
        "staged data with no session is removed at start"
    );
    assert!(
        session_file.exists(),
        "staged data of a live session is kept"
    );
    assert_eq!(kai.upload_range(&location).await, "0-3");
    let response = kai
        .get(&format!(
            "/v2/{NAME}/blobs/uploads/0b6c5f44-2b1a-4c7e-9d3f-5a8e1c2d3b4a"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    kai.kill().await;
}

#[tokio::test]
async fn serve_on_a_port_in_use_fails_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let workspace = Workspace::new();
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        kai()
            .args(["serve", "--listen", &address, "--data"])
            .arg(workspace.data())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("kai gives up within 30 s")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&address),
        "the error names {address}: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening on"),
        "it must not claim to listen"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_embedded_database_refuses_to_start() {
    let workspace = Workspace::new();
    let first = Kai::start(&workspace.data(), &workspace.log()).await;
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        kai()
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(workspace.data())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the second kai gives up within 30 s")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let database = workspace.data().join("kai.db");
    assert!(
        stderr.contains("another `kai serve` is using the database")
            && stderr.contains(&database.display().to_string())
            && stderr.contains("PostgreSQL"),
        "the error names the database and what to do: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening on"),
        "it must not claim to listen"
    );
    // The first one serves on, and `kai accounts` still opens the database.
    assert_eq!(first.get("/v2/").await.status(), StatusCode::OK);
    let accounts = kai()
        .args(["user", "list", "--data"])
        .arg(workspace.data())
        .output()
        .await
        .unwrap();
    assert!(
        accounts.status.success(),
        "{}",
        String::from_utf8_lossy(&accounts.stderr)
    );
    // A killed server leaves no lock behind.
    first.kill().await;
    let again = Kai::start(&workspace.data(), &workspace.log()).await;
    assert_eq!(again.get("/v2/").await.status(), StatusCode::OK);
    again.kill().await;
}

/// Runs `kai config` in an empty directory and returns what it printed, parsed.
async fn effective_config(configure: impl FnOnce(&mut Command)) -> (toml::Table, String) {
    let directory = tempfile::tempdir().unwrap();
    let mut command = kai();
    command.arg("config").current_dir(directory.path());
    configure(&mut command);
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = stdout
        .parse()
        .unwrap_or_else(|error| panic!("kai config prints TOML ({error}):\n{stdout}"));
    (table, stdout)
}

/// The value at a dotted path such as `limits.manifest_max_bytes`.
fn setting<'a>(table: &'a toml::Table, path: &str) -> &'a toml::Value {
    let (sections, key) = path.rsplit_once('.').unwrap_or(("", path));
    let mut current = table;
    for section in sections.split('.').filter(|section| !section.is_empty()) {
        current = current
            .get(section)
            .and_then(toml::Value::as_table)
            .unwrap_or_else(|| panic!("kai config prints no section {section}"));
    }
    current
        .get(key)
        .unwrap_or_else(|| panic!("kai config prints no {path}"))
}

#[tokio::test]
async fn config_prints_the_defaults_as_a_config_file_kai_reads_back() {
    let (defaults, printed) = effective_config(|_| {}).await;
    assert_eq!(setting(&defaults, "listen").as_str(), Some("0.0.0.0:5000"));
    assert_eq!(setting(&defaults, "data").as_str(), Some("./kai-data"));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &printed).unwrap();
    let (_, again) = effective_config(|command| {
        command.arg("--config").arg(file.path());
    })
    .await;
    assert_eq!(again, printed);
}

#[tokio::test]
async fn config_honours_kai_variables() {
    let (from_env, printed) = effective_config(|command| {
        command
            .env("KAI_DATA", "/srv/from-env")
            .env("KAI_LIMITS__MANIFEST_MAX_BYTES", "12345");
    })
    .await;
    assert_eq!(
        setting(&from_env, "data").as_str(),
        Some("/srv/from-env"),
        "{printed}"
    );
    assert_eq!(
        setting(&from_env, "limits.manifest_max_bytes").as_integer(),
        Some(12345),
        "{printed}"
    );
}

#[tokio::test]
async fn config_layers_flags_over_environment_over_file() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "data = \"/srv/from-file\"\nlisten = \"127.0.0.1:7000\"\n[uploads]\nexpire_after = \"2h\"\n",
    )
    .unwrap();
    let (from_file, _) = effective_config(|command| {
        command.env("KAI_CONFIG", file.path());
    })
    .await;
    assert_eq!(setting(&from_file, "data").as_str(), Some("/srv/from-file"));
    assert_eq!(
        setting(&from_file, "listen").as_str(),
        Some("127.0.0.1:7000")
    );
    assert_eq!(
        setting(&from_file, "uploads.expire_after").as_str(),
        Some("2h")
    );

    let (layered, printed) = effective_config(|command| {
        command
            .env("KAI_CONFIG", file.path())
            .env("KAI_DATA", "/srv/from-env");
    })
    .await;
    assert_eq!(
        setting(&layered, "data").as_str(),
        Some("/srv/from-env"),
        "{printed}"
    );
    assert_eq!(setting(&layered, "listen").as_str(), Some("127.0.0.1:7000"));

    let (flagged, _) = effective_config(|command| {
        command
            .env("KAI_CONFIG", file.path())
            .env("KAI_DATA", "/srv/from-env")
            .args(["--data", "/srv/from-flag"]);
    })
    .await;
    assert_eq!(setting(&flagged, "data").as_str(), Some("/srv/from-flag"));
}
