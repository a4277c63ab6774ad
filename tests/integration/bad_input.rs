//! The table of malformed requests. Each case asserts the status and OCI error
//! code the distribution spec asks for, that the error body is the spec's JSON,
//! and that nothing the registry stores changed: the same manifests, tags, blob
//! links, blob files, upload sessions and staged upload files, with the content
//! pushed before still served byte for byte.
//!
//! Requests are written as raw HTTP/1.1 on a TCP socket, so the server sees the
//! exact path (an HTTP library would normalise `a/../b` before sending it).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{
    error_code, header, image_manifest, sha256, Stored, TestRegistry, OCI_INDEX, OCI_MANIFEST,
};

const NAME: &str = "acme/app";
const OTHER: &str = "other/repo";

/// A response read off the socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

fn address(registry: &TestRegistry) -> String {
    registry.base.trim_start_matches("http://").to_owned()
}

/// The bytes of one HTTP/1.1 request that closes the connection afterwards.
fn request_bytes(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let declares_length = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
    if !declares_length && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Parses a response read to the end of the connection. `None` when the server
/// closed the connection without answering.
fn parse_response(bytes: &[u8]) -> Option<RawResponse> {
    let split = bytes.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..split]).expect("response head is text");
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = bytes[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    if chunked {
        body = decode_chunked(&body);
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut bytes: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::new();
    while let Some(line_end) = bytes.windows(2).position(|window| window == b"\r\n") {
        let size_text = std::str::from_utf8(&bytes[..line_end]).unwrap_or("0");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        decoded.extend_from_slice(&bytes[start..(start + size).min(bytes.len())]);
        bytes = &bytes[(start + size + 2).min(bytes.len())..];
    }
    decoded
}

/// Sends one request on a fresh connection and reads the whole response.
async fn send_raw(
    registry: &TestRegistry,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> RawResponse {
    let host = address(registry);
    let mut stream = TcpStream::connect(&host)
        .await
        .expect("registry accepts connections");
    stream
        .write_all(&request_bytes(&host, method, path, headers, body))
        .await
        .expect("request written");
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received))
        .await
        .expect("registry answers within 30 s")
        .expect("response read");
    parse_response(&received)
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP response in {received:?}"))
}

/// Sends a request whose body is shorter than its `Content-Length`, then closes
/// the sending half, as a client that crashed mid-upload would. Returns the
/// response, if the server sent one before closing.
async fn send_truncated(
    registry: &TestRegistry,
    method: &str,
    path: &str,
    declared: usize,
    sent: &[u8],
) -> Option<RawResponse> {
    assert!(sent.len() < declared);
    let host = address(registry);
    let mut stream = TcpStream::connect(&host)
        .await
        .expect("registry accepts connections");
    let headers = [("Content-Length", declared.to_string())];
    stream
        .write_all(&request_bytes(&host, method, path, &headers, sent))
        .await
        .expect("request written");
    stream.shutdown().await.expect("write half closed");
    let mut received = Vec::new();
    // A reset connection is one of the things a server may answer with here.
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received))
        .await
        .expect("registry closes the connection within 30 s");
    parse_response(&received)
}

/// Checks an error body: JSON `{"errors":[{"code":..,"message":..}]}`. Returns
/// the first code.
fn error_body_code(content_type: Option<&str>, body: &[u8]) -> Result<String, String> {
    if !content_type.is_some_and(|value| value.starts_with("application/json")) {
        return Err(format!(
            "error Content-Type is {content_type:?}, not application/json"
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        format!(
            "error body is not JSON ({error}): {}",
            String::from_utf8_lossy(body)
        )
    })?;
    let errors = value["errors"]
        .as_array()
        .filter(|errors| !errors.is_empty())
        .ok_or_else(|| format!("error body has no `errors` list: {value}"))?;
    for error in errors {
        let code_ok = error["code"].as_str().is_some_and(|code| !code.is_empty());
        let message_ok = error["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty());
        if !code_ok || !message_ok {
            return Err(format!("error entry lacks a code or a message: {error}"));
        }
    }
    Ok(errors[0]["code"].as_str().unwrap_or_default().to_owned())
}

/// What the registry stores, plus the staged upload files on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    stored: Stored,
    staged_files: u64,
}

async fn snapshot(registry: &TestRegistry) -> Snapshot {
    Snapshot {
        stored: registry.stored().await,
        staged_files: registry.staged_uploads().await,
    }
}

/// Waits until the snapshot equals `expected` (a server may still be cleaning
/// up after a connection it closed), then returns the last one seen.
async fn settled_snapshot(registry: &TestRegistry, expected: &Snapshot) -> Snapshot {
    let mut current = snapshot(registry).await;
    for _ in 0..40 {
        if &current == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        current = snapshot(registry).await;
    }
    current
}

/// The `Range` an upload's status reports, or the error code.
async fn upload_status(registry: &TestRegistry, location: &str) -> Result<String, String> {
    let response = registry.get(location).await;
    if response.status() == StatusCode::NO_CONTENT {
        Ok(header(&response, "range"))
    } else {
        Err(format!(
            "{} {}",
            response.status().as_u16(),
            error_code(response).await
        ))
    }
}

fn with_query(location: &str, query: &str) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!("{location}{separator}{query}")
}

/// A request and what the registry must answer.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// The OCI error code; `None` for HEAD, whose response has no body.
    code: Option<&'static str>,
    /// Headers the response must carry.
    response_headers: Vec<(&'static str, String)>,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: impl Into<String>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        headers: Vec::new(),
        body: Vec::new(),
        status,
        code: if method == "HEAD" { None } else { Some(code) },
        response_headers: Vec::new(),
    }
}

impl Case {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = body.into();
        self
    }

    fn manifest(self, content_type: &str, body: impl Into<Vec<u8>>) -> Case {
        self.header("Content-Type", content_type).body(body)
    }

    fn expect_header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.response_headers.push((name, value.into()));
        self
    }
}

/// Content pushed before the table runs, which every case must leave intact.
struct Fixture {
    registry: TestRegistry,
    manifest: Vec<u8>,
    manifest_digest: String,
    config: (String, usize),
    layer: Vec<u8>,
    layer_digest: String,
    other_blob_digest: String,
    other_blob_size: usize,
    /// A session in NAME holding 10 acknowledged bytes.
    open_upload: String,
    open_upload_bytes: Vec<u8>,
    /// A session in OTHER.
    other_upload: String,
    finished_upload: String,
    cancelled_upload: String,
}

async fn fixture() -> Fixture {
    let registry = TestRegistry::start().await;
    let layer = b"layer bytes of acme/app".to_vec();
    let (manifest, manifest_digest) = registry.push_image(NAME, "latest", &layer).await;
    let parsed: Value = serde_json::from_slice(&manifest).unwrap();
    let config = (
        parsed["config"]["digest"].as_str().unwrap().to_owned(),
        parsed["config"]["size"].as_u64().unwrap() as usize,
    );
    let other_blob = b"a blob only other/repo holds";
    let other_blob_digest = registry.push_blob(OTHER, other_blob).await;

    let open_upload_bytes = b"0123456789abcdefghij".to_vec();
    let open_upload = registry.start_upload(NAME).await;
    let open_upload = registry
        .patch_chunk(&open_upload, 0, &open_upload_bytes[..10])
        .await;
    let other_upload = registry.start_upload(OTHER).await;

    let finished_upload = registry.start_upload(NAME).await;
    let finished_bytes = b"a blob that was uploaded and finished";
    let response = registry
        .request(
            Method::PUT,
            &with_query(
                &finished_upload,
                &format!("digest={}", sha256(finished_bytes)),
            ),
        )
        .body(finished_bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let cancelled_upload = registry.start_upload(NAME).await;
    let response = registry
        .request(Method::DELETE, &cancelled_upload)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    Fixture {
        layer_digest: sha256(&layer),
        registry,
        manifest,
        manifest_digest,
        config,
        layer,
        other_blob_digest,
        other_blob_size: other_blob.len(),
        open_upload,
        open_upload_bytes,
        other_upload,
        finished_upload,
        cancelled_upload,
    }
}

impl Fixture {
    /// Checks that the content pushed before is still served byte for byte.
    async fn check_content(&self) -> Result<(), String> {
        let response = self
            .registry
            .get(&format!("/v2/{NAME}/manifests/latest"))
            .await;
        let status = response.status();
        let body = response.bytes().await.unwrap();
        if status != StatusCode::OK || body.as_ref() != self.manifest.as_slice() {
            return Err(format!(
                "manifest `latest` changed: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let response = self
            .registry
            .get(&format!("/v2/{NAME}/blobs/{}", self.layer_digest))
            .await;
        let status = response.status();
        let body = response.bytes().await.unwrap();
        if status != StatusCode::OK || body.as_ref() != self.layer.as_slice() {
            return Err(format!("layer changed: {status}"));
        }
        match upload_status(&self.registry, &self.open_upload).await {
            Ok(range) if range == "0-9" => Ok(()),
            other => Err(format!("the open upload changed: {other:?}")),
        }
    }

    fn valid_index(&self, child_size: usize) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": self.manifest_digest,
                "size": child_size,
                "platform": {"architecture": "amd64", "os": "linux"},
            }],
        }))
        .unwrap()
    }
}

fn upload_id(location: &str) -> &str {
    location
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
}

fn cases(fixture: &Fixture) -> Vec<Case> {
    let config = (fixture.config.0.as_str(), fixture.config.1);
    let layer = (fixture.layer_digest.as_str(), fixture.layer.len());
    let never_pushed = sha256(b"never pushed");
    let manifest_path = format!("/v2/{NAME}/manifests/latest");
    let unknown_digest = sha256(b"no such content");
    let long_name = "a".repeat(256);
    let long_nested_name = format!("a/{}", "b".repeat(254));
    let long_tag = "t".repeat(129);
    let open = fixture.open_upload.clone();
    let finished = fixture.finished_upload.clone();
    let cancelled = fixture.cancelled_upload.clone();
    let foreign_upload = format!(
        "/v2/{NAME}/blobs/uploads/{}",
        upload_id(&fixture.other_upload)
    );
    let chunk = b"0123456789".to_vec();
    let wrong_blob = b"these bytes do not hash to the digest claimed".to_vec();
    let a_digest = |location: &str| with_query(location, &format!("digest={}", sha256(&chunk)));

    vec![
        // Blob uploads whose content does not match the digest: nothing stored,
        // and the session opened for a monolithic upload is gone again.
        case(
            "monolithic POST with the wrong digest",
            "POST",
            format!(
                "/v2/{NAME}/blobs/uploads/?digest={}",
                sha256(b"something else")
            ),
            400,
            "DIGEST_INVALID",
        )
        .body(wrong_blob.clone()),
        case(
            "monolithic POST with a malformed digest",
            "POST",
            format!("/v2/{NAME}/blobs/uploads/?digest=sha256:nothex"),
            400,
            "DIGEST_INVALID",
        )
        .body(wrong_blob.clone()),
        case(
            "monolithic POST with an unsupported algorithm",
            "POST",
            format!("/v2/{NAME}/blobs/uploads/?digest=md5:d41d8cd98f00b204e9800998ecf8427e"),
            400,
            "DIGEST_INVALID",
        )
        .body(wrong_blob.clone()),
        case(
            "PUT finishing an upload with a malformed digest",
            "PUT",
            with_query(&open, "digest=sha256:123"),
            400,
            "DIGEST_INVALID",
        ),
        // Chunks out of order: 416 with the Range the registry holds.
        case(
            "chunk starting past the upload's end",
            "PATCH",
            open.clone(),
            416,
            "BLOB_UPLOAD_INVALID",
        )
        .header("Content-Range", "20-29")
        .body(chunk.clone())
        .expect_header("range", "0-9"),
        case(
            "chunk overlapping what the upload holds",
            "PATCH",
            open.clone(),
            416,
            "BLOB_UPLOAD_INVALID",
        )
        .header("Content-Range", "5-14")
        .body(chunk.clone())
        .expect_header("range", "0-9"),
        case(
            "first chunk sent again",
            "PATCH",
            open.clone(),
            416,
            "BLOB_UPLOAD_INVALID",
        )
        .header("Content-Range", "0-9")
        .body(chunk.clone())
        .expect_header("range", "0-9"),
        case(
            "PUT whose last chunk starts past the upload's end",
            "PUT",
            a_digest(&open),
            416,
            "BLOB_UPLOAD_INVALID",
        )
        .header("Content-Range", "11-20")
        .body(chunk.clone())
        .expect_header("range", "0-9"),
        case(
            "Content-Range longer than the body",
            "PATCH",
            open.clone(),
            400,
            "SIZE_INVALID",
        )
        .header("Content-Range", "10-29")
        .body(chunk.clone()),
        case(
            "malformed Content-Range",
            "PATCH",
            open.clone(),
            400,
            "BLOB_UPLOAD_INVALID",
        )
        .header("Content-Range", "ten-twenty")
        .body(chunk.clone()),
        // Upload URLs of sessions that are gone or belong elsewhere.
        case(
            "status of a finished upload",
            "GET",
            finished.clone(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        case(
            "chunk to a finished upload",
            "PATCH",
            finished.clone(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .header("Content-Range", "0-9")
        .body(chunk.clone()),
        case(
            "PUT to a finished upload",
            "PUT",
            a_digest(&finished),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .body(chunk.clone()),
        case(
            "cancel of a finished upload",
            "DELETE",
            finished.clone(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        case(
            "status of a cancelled upload",
            "GET",
            cancelled.clone(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        case(
            "chunk to a cancelled upload",
            "PATCH",
            cancelled.clone(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .header("Content-Range", "0-9")
        .body(chunk.clone()),
        case(
            "PUT to a cancelled upload",
            "PUT",
            a_digest(&cancelled),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .body(chunk.clone()),
        case(
            "status of another repository's upload",
            "GET",
            foreign_upload.clone(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        case(
            "chunk to another repository's upload",
            "PATCH",
            foreign_upload.clone(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .header("Content-Range", "0-9")
        .body(chunk.clone()),
        case(
            "PUT to another repository's upload",
            "PUT",
            a_digest(&foreign_upload),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .body(chunk.clone()),
        case(
            "cancel of another repository's upload",
            "DELETE",
            foreign_upload.clone(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        case(
            "upload id that is no UUID",
            "GET",
            format!("/v2/{NAME}/blobs/uploads/not-a-uuid"),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        case(
            "upload id as an upper-case UUID",
            "GET",
            format!(
                "/v2/{NAME}/blobs/uploads/{}",
                upload_id(&open).to_ascii_uppercase()
            ),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        case(
            "upload id climbing out of the directory",
            "PATCH",
            format!("/v2/{NAME}/blobs/uploads/..%2F..%2Fkai.db"),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .body(chunk.clone()),
        // Repository names outside the grammar.
        case(
            "name with ..",
            "GET",
            "/v2/acme/../app/manifests/latest",
            400,
            "NAME_INVALID",
        ),
        case(
            "name that is ..",
            "GET",
            "/v2/../tags/list",
            400,
            "NAME_INVALID",
        ),
        case(
            "upload to a name with ..",
            "POST",
            "/v2/acme/../../blobs/uploads/",
            400,
            "NAME_INVALID",
        ),
        case(
            "manifest PUT to a name with ..",
            "PUT",
            "/v2/acme/../app/manifests/latest",
            400,
            "NAME_INVALID",
        )
        .manifest(OCI_MANIFEST, fixture.manifest.clone()),
        case(
            "name with upper case",
            "GET",
            "/v2/Acme/App/manifests/latest",
            400,
            "NAME_INVALID",
        ),
        case(
            "upload to a name with upper case",
            "POST",
            "/v2/Acme/blobs/uploads/",
            400,
            "NAME_INVALID",
        ),
        case(
            "name with an empty component",
            "GET",
            "/v2/acme//app/tags/list",
            400,
            "NAME_INVALID",
        ),
        case(
            "name ending in a slash",
            "GET",
            "/v2/acme/app//manifests/latest",
            400,
            "NAME_INVALID",
        ),
        case(
            "name of 256 characters",
            "GET",
            format!("/v2/{long_name}/tags/list"),
            400,
            "NAME_INVALID",
        ),
        case(
            "nested name of 256 characters",
            "PUT",
            format!("/v2/{long_nested_name}/manifests/latest"),
            400,
            "NAME_INVALID",
        )
        .manifest(OCI_MANIFEST, fixture.manifest.clone()),
        case(
            "name with a space",
            "GET",
            "/v2/acme/my%20app/tags/list",
            400,
            "NAME_INVALID",
        ),
        case(
            "mount from an invalid name",
            "POST",
            format!(
                "/v2/{NAME}/blobs/uploads/?mount={}&from=Other/..",
                fixture.layer_digest
            ),
            400,
            "NAME_INVALID",
        ),
        // Tags outside the grammar.
        case(
            "tag starting with a dot",
            "GET",
            format!("/v2/{NAME}/manifests/.x"),
            400,
            "TAG_INVALID",
        ),
        case(
            "tag of 129 characters",
            "GET",
            format!("/v2/{NAME}/manifests/{long_tag}"),
            400,
            "TAG_INVALID",
        ),
        case(
            "PUT to a tag starting with a dot",
            "PUT",
            format!("/v2/{NAME}/manifests/.x"),
            400,
            "TAG_INVALID",
        )
        .manifest(OCI_MANIFEST, fixture.manifest.clone()),
        case(
            "PUT to a tag of 129 characters",
            "PUT",
            format!("/v2/{NAME}/manifests/{long_tag}"),
            400,
            "TAG_INVALID",
        )
        .manifest(OCI_MANIFEST, fixture.manifest.clone()),
        case(
            "PUT with an invalid ?tag=",
            "PUT",
            format!("/v2/{NAME}/manifests/{}?tag=.x", fixture.manifest_digest),
            400,
            "TAG_INVALID",
        )
        .manifest(OCI_MANIFEST, fixture.manifest.clone()),
        // Malformed digests in paths.
        case(
            "blob digest too short",
            "GET",
            format!("/v2/{NAME}/blobs/sha256:123"),
            400,
            "DIGEST_INVALID",
        ),
        case(
            "blob digest in upper case",
            "GET",
            format!(
                "/v2/{NAME}/blobs/{}",
                fixture
                    .layer_digest
                    .to_ascii_uppercase()
                    .replace("SHA256", "sha256")
            ),
            400,
            "DIGEST_INVALID",
        ),
        case(
            "blob digest of an unknown algorithm",
            "GET",
            format!("/v2/{NAME}/blobs/md5:d41d8cd98f00b204e9800998ecf8427e"),
            400,
            "DIGEST_INVALID",
        ),
        case(
            "blob named by a tag",
            "GET",
            format!("/v2/{NAME}/blobs/latest"),
            400,
            "DIGEST_INVALID",
        ),
        case(
            "manifest digest too short",
            "GET",
            format!("/v2/{NAME}/manifests/sha256:abc"),
            400,
            "DIGEST_INVALID",
        ),
        case(
            "manifest digest with no hex",
            "DELETE",
            format!("/v2/{NAME}/manifests/sha256:"),
            400,
            "DIGEST_INVALID",
        ),
        case(
            "referrers of a malformed digest",
            "GET",
            format!("/v2/{NAME}/referrers/sha256:xyz"),
            400,
            "DIGEST_INVALID",
        ),
        case(
            "blob DELETE of a malformed digest",
            "DELETE",
            format!("/v2/{NAME}/blobs/sha256:00"),
            400,
            "DIGEST_INVALID",
        ),
        // Manifests that must not be stored. All go to the existing tag
        // `latest`, which must keep its manifest.
        case(
            "manifest naming an unknown layer",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_BLOB_UNKNOWN",
        )
        .manifest(OCI_MANIFEST, image_manifest(config, &[(&never_pushed, 12)])),
        case(
            "manifest naming an unknown config",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_BLOB_UNKNOWN",
        )
        .manifest(OCI_MANIFEST, image_manifest((&never_pushed, 12), &[layer])),
        case(
            "manifest naming a blob only another repository holds",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_BLOB_UNKNOWN",
        )
        .manifest(
            OCI_MANIFEST,
            image_manifest(
                config,
                &[(&fixture.other_blob_digest, fixture.other_blob_size)],
            ),
        ),
        case(
            "index naming an unknown child manifest",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_BLOB_UNKNOWN",
        )
        .manifest(
            OCI_INDEX,
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{"mediaType": OCI_MANIFEST, "digest": never_pushed, "size": 100,
                    "platform": {"architecture": "amd64", "os": "linux"}}],
            }))
            .unwrap(),
        ),
        case(
            "invalid JSON",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(OCI_MANIFEST, &b"{\"schemaVersion\": 2, \"config\": "[..]),
        case(
            "empty body",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(OCI_MANIFEST, Vec::new()),
        case(
            "JSON that is not an object",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(OCI_MANIFEST, &b"[1, 2, 3]"[..]),
        case(
            "schema version 1",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            &br#"{"schemaVersion": 1, "name": "acme/app", "tag": "latest", "fsLayers": []}"#[..],
        ),
        case(
            "layer with the wrong size",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(
            OCI_MANIFEST,
            image_manifest(config, &[(layer.0, layer.1 + 1)]),
        ),
        case(
            "config with the wrong size",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(
            OCI_MANIFEST,
            image_manifest((config.0, config.1 - 1), &[layer]),
        ),
        case(
            "index entry with the wrong size",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(OCI_INDEX, fixture.valid_index(fixture.manifest.len() + 1)),
        case(
            "layer with a negative size",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(
            OCI_MANIFEST,
            with_layer_size(&image_manifest(config, &[layer]), -(layer.1 as i64)),
        ),
        case(
            "layer with a malformed digest",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(
            OCI_MANIFEST,
            image_manifest(config, &[("sha256:nothex", layer.1)]),
        ),
        case(
            "Content-Type index, body an image manifest",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(OCI_INDEX, fixture.manifest.clone()),
        case(
            "Content-Type Docker manifest, body an OCI manifest",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(crate::common::DOCKER_MANIFEST, fixture.manifest.clone()),
        case(
            "Content-Type image manifest, body an index",
            "PUT",
            manifest_path.clone(),
            400,
            "MANIFEST_INVALID",
        )
        .manifest(OCI_MANIFEST, fixture.valid_index(fixture.manifest.len())),
        case(
            "PUT by a digest the body does not hash to",
            "PUT",
            format!("/v2/{NAME}/manifests/{unknown_digest}"),
            400,
            "DIGEST_INVALID",
        )
        .manifest(OCI_MANIFEST, fixture.manifest.clone()),
        // Things that do not exist.
        case(
            "unknown tag",
            "GET",
            format!("/v2/{NAME}/manifests/nope"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "unknown tag, HEAD",
            "HEAD",
            format!("/v2/{NAME}/manifests/nope"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "unknown manifest digest",
            "GET",
            format!("/v2/{NAME}/manifests/{unknown_digest}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "unknown manifest digest, HEAD",
            "HEAD",
            format!("/v2/{NAME}/manifests/{unknown_digest}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "a blob's digest asked for as a manifest",
            "GET",
            format!("/v2/{NAME}/manifests/{}", fixture.layer_digest),
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "DELETE of an unknown tag",
            "DELETE",
            format!("/v2/{NAME}/manifests/nope"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "DELETE of an unknown manifest digest",
            "DELETE",
            format!("/v2/{NAME}/manifests/{unknown_digest}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "manifest of another repository",
            "GET",
            format!("/v2/{OTHER}/manifests/{}", fixture.manifest_digest),
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "unknown blob",
            "GET",
            format!("/v2/{NAME}/blobs/{unknown_digest}"),
            404,
            "BLOB_UNKNOWN",
        ),
        case(
            "unknown blob, HEAD",
            "HEAD",
            format!("/v2/{NAME}/blobs/{unknown_digest}"),
            404,
            "BLOB_UNKNOWN",
        ),
        case(
            "DELETE of an unknown blob",
            "DELETE",
            format!("/v2/{NAME}/blobs/{unknown_digest}"),
            404,
            "BLOB_UNKNOWN",
        ),
        case(
            "blob only another repository holds",
            "GET",
            format!("/v2/{NAME}/blobs/{}", fixture.other_blob_digest),
            404,
            "BLOB_UNKNOWN",
        ),
        case(
            "manifest asked for as a blob",
            "GET",
            format!("/v2/{NAME}/blobs/{}", fixture.manifest_digest),
            404,
            "BLOB_UNKNOWN",
        ),
        case(
            "tags of an unknown repository",
            "GET",
            "/v2/no/such/repo/tags/list",
            404,
            "NAME_UNKNOWN",
        ),
        // Ranges the blob cannot satisfy.
        case(
            "Range starting at the blob's end",
            "GET",
            format!("/v2/{NAME}/blobs/{}", fixture.layer_digest),
            416,
            "RANGE_INVALID",
        )
        .header("Range", format!("bytes={}-", fixture.layer.len()))
        .expect_header("content-range", format!("bytes */{}", fixture.layer.len())),
        case(
            "Range past the blob's end",
            "GET",
            format!("/v2/{NAME}/blobs/{}", fixture.layer_digest),
            416,
            "RANGE_INVALID",
        )
        .header("Range", "bytes=1000-2000")
        .expect_header("content-range", format!("bytes */{}", fixture.layer.len())),
        case(
            "Range ending before it starts",
            "GET",
            format!("/v2/{NAME}/blobs/{}", fixture.layer_digest),
            416,
            "RANGE_INVALID",
        )
        .header("Range", "bytes=5-2")
        .expect_header("content-range", format!("bytes */{}", fixture.layer.len())),
        // Paths and methods the API does not have.
        case(
            "unknown path under /v2/",
            "GET",
            format!("/v2/{NAME}/unknown"),
            404,
            "UNSUPPORTED",
        ),
        case(
            "unknown endpoint after a name",
            "GET",
            format!("/v2/{NAME}/blobs"),
            404,
            "UNSUPPORTED",
        ),
        case("another API version", "GET", "/v3/", 404, "UNSUPPORTED"),
        case(
            "path outside the API",
            "GET",
            "/index.html",
            404,
            "UNSUPPORTED",
        ),
        case(
            "POST to a manifest",
            "POST",
            manifest_path.clone(),
            405,
            "UNSUPPORTED",
        ),
        case(
            "PUT to a blob",
            "PUT",
            format!("/v2/{NAME}/blobs/{}", fixture.layer_digest),
            405,
            "UNSUPPORTED",
        )
        .body(fixture.layer.clone()),
        case(
            "PATCH to the upload start",
            "PATCH",
            format!("/v2/{NAME}/blobs/uploads/"),
            405,
            "UNSUPPORTED",
        )
        .body(chunk.clone()),
        case(
            "POST to an upload session",
            "POST",
            open.clone(),
            405,
            "UNSUPPORTED",
        ),
        case(
            "DELETE of a tag list",
            "DELETE",
            format!("/v2/{NAME}/tags/list"),
            405,
            "UNSUPPORTED",
        ),
        case(
            "DELETE of the catalog",
            "DELETE",
            "/v2/_catalog",
            405,
            "UNSUPPORTED",
        ),
        case("PUT to the base", "PUT", "/v2/", 405, "UNSUPPORTED"),
        case(
            "DELETE of referrers",
            "DELETE",
            format!("/v2/{NAME}/referrers/{}", fixture.manifest_digest),
            405,
            "UNSUPPORTED",
        ),
        // Pagination.
        case(
            "n that is no number",
            "GET",
            format!("/v2/{NAME}/tags/list?n=abc"),
            400,
            "PAGINATION_NUMBER_INVALID",
        ),
        case(
            "n that is negative",
            "GET",
            format!("/v2/{NAME}/tags/list?n=-1"),
            400,
            "PAGINATION_NUMBER_INVALID",
        ),
        case(
            "n on the catalog that is no number",
            "GET",
            "/v2/_catalog?n=ten",
            400,
            "PAGINATION_NUMBER_INVALID",
        ),
    ]
}

/// The manifest with its first layer's size replaced.
fn with_layer_size(manifest: &[u8], size: i64) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(manifest).unwrap();
    value["layers"][0]["size"] = json!(size);
    serde_json::to_vec(&value).unwrap()
}

#[tokio::test]
async fn bad_requests_get_their_error_and_change_nothing() {
    let fixture = fixture().await;
    let registry = &fixture.registry;
    let before = snapshot(registry).await;
    let mut failures = Vec::new();
    for case in cases(&fixture) {
        let response = send_raw(registry, case.method, &case.path, &case.headers, &case.body).await;
        let label = format!(
            "{} ({} {})",
            case.what,
            case.method,
            case.path.chars().take(120).collect::<String>()
        );
        if response.status != case.status {
            failures.push(format!(
                "{label}: status {} instead of {}: {}",
                response.status,
                case.status,
                String::from_utf8_lossy(&response.body)
            ));
        }
        if let Some(code) = case.code {
            match error_body_code(response.header("content-type"), &response.body) {
                Ok(actual) if actual == code => {}
                Ok(actual) => failures.push(format!("{label}: code {actual} instead of {code}")),
                Err(problem) => failures.push(format!("{label}: {problem}")),
            }
        } else if !response.body.is_empty() {
            failures.push(format!("{label}: a HEAD response has a body"));
        }
        for (name, value) in &case.response_headers {
            if response.header(name) != Some(value.as_str()) {
                failures.push(format!(
                    "{label}: header {name} is {:?}, not {value:?}",
                    response.header(name)
                ));
            }
        }
        let after = settled_snapshot(registry, &before).await;
        if after != before {
            failures.push(format!(
                "{label}: stored content changed from {before:?} to {after:?}"
            ));
        }
        if let Err(problem) = fixture.check_content().await {
            failures.push(format!("{label}: {problem}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The session every chunk case was sent to still accepts the right chunk.
    let location = registry
        .patch_chunk(&fixture.open_upload, 10, &fixture.open_upload_bytes[10..])
        .await;
    let digest = sha256(&fixture.open_upload_bytes);
    let response = registry
        .request(
            Method::PUT,
            &with_query(&location, &format!("digest={digest}")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let blob = registry.get(&format!("/v2/{NAME}/blobs/{digest}")).await;
    assert_eq!(
        blob.bytes().await.unwrap().as_ref(),
        fixture.open_upload_bytes.as_slice()
    );
}

#[tokio::test]
async fn wrong_digest_finishing_a_chunked_upload_stores_nothing_and_ends_the_session() {
    let registry = TestRegistry::start().await;
    registry.push_image(NAME, "latest", b"some layer").await;
    let content = b"first chunk|second chunk|".to_vec();
    let location = registry.start_upload(NAME).await;
    let location = registry.patch_chunk(&location, 0, &content[..12]).await;
    let location = registry.patch_chunk(&location, 12, &content[12..]).await;
    let before = snapshot(&registry).await;

    let claimed = sha256(b"not what was uploaded");
    let response = registry
        .request(
            Method::PUT,
            &with_query(&location, &format!("digest={claimed}")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "DIGEST_INVALID");

    let after = snapshot(&registry).await;
    let expected = Snapshot {
        stored: Stored {
            uploads: before.stored.uploads - 1,
            ..before.stored.clone()
        },
        staged_files: before.staged_files - 1,
    };
    assert_eq!(
        after, expected,
        "only the session and its staged data are gone"
    );
    for digest in [&claimed, &sha256(&content)] {
        let response = registry.get(&format!("/v2/{NAME}/blobs/{digest}")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(response).await, "BLOB_UNKNOWN");
    }
    assert_eq!(
        upload_status(&registry, &location).await,
        Err("404 BLOB_UPLOAD_UNKNOWN".into())
    );
    let response = registry
        .request(Method::PATCH, &location)
        .header("content-range", "25-26")
        .body(b"xx".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");
    let response = registry
        .request(
            Method::PUT,
            &with_query(&location, &format!("digest={}", sha256(&content))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn wrong_digest_with_the_last_chunk_in_the_put_stores_nothing() {
    let registry = TestRegistry::start().await;
    let location = registry.start_upload(NAME).await;
    let location = registry.patch_chunk(&location, 0, b"abc").await;
    let before = snapshot(&registry).await;
    let response = registry
        .request(
            Method::PUT,
            &with_query(&location, &format!("digest={}", sha256(b"abcdeX"))),
        )
        .header("content-range", "3-5")
        .body(b"def".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "DIGEST_INVALID");
    let after = snapshot(&registry).await;
    assert_eq!(after.stored.stored_blobs, before.stored.stored_blobs);
    assert_eq!(after.stored.blob_links, before.stored.blob_links);
    assert_eq!(after.stored.uploads, before.stored.uploads - 1);
    assert_eq!(after.staged_files, before.staged_files - 1);
    assert_eq!(
        upload_status(&registry, &location).await,
        Err("404 BLOB_UPLOAD_UNKNOWN".into())
    );
}

/// A body that ends before its `Content-Length` is answered, while the client
/// still listens, with 400 BLOB_UPLOAD_INVALID.
fn assert_truncation_refused(response: Option<RawResponse>) {
    let response = response.expect("the registry answers a truncated body before closing");
    assert_eq!(response.status, 400, "{response:?}");
    let code = error_body_code(response.header("content-type"), &response.body).unwrap();
    assert_eq!(code, "BLOB_UPLOAD_INVALID");
}

/// Sends the start of a request and then resets the connection, as a client
/// that is killed does.
async fn send_and_reset(
    registry: &TestRegistry,
    method: &str,
    path: &str,
    declared: usize,
    sent: &[u8],
) {
    let host = address(registry);
    let mut stream = TcpStream::connect(&host)
        .await
        .expect("registry accepts connections");
    let headers = [("Content-Length", declared.to_string())];
    stream
        .write_all(&request_bytes(&host, method, path, &headers, sent))
        .await
        .expect("request written");
    // Give the server time to start reading the body, then reset: a zero
    // linger makes the close send RST at once, so the drop does not block.
    tokio::time::sleep(Duration::from_millis(200)).await;
    reset(stream);
}

#[expect(
    deprecated,
    reason = "SO_LINGER blocks on drop only with a non-zero timeout; zero resets at once"
)]
fn reset(stream: TcpStream) {
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

#[tokio::test]
async fn monolithic_upload_reset_by_the_client_leaves_nothing_behind() {
    let registry = TestRegistry::start().await;
    registry.push_image(NAME, "latest", b"some layer").await;
    let before = snapshot(&registry).await;
    let content = vec![9u8; 100_000];
    let path = format!("/v2/{NAME}/blobs/uploads/?digest={}", sha256(&content));
    send_and_reset(&registry, "POST", &path, content.len(), &content[..30_000]).await;
    let after = settled_snapshot(&registry, &before).await;
    assert_eq!(
        after, before,
        "a monolithic upload whose client vanished leaves no session or staged data"
    );
}

#[tokio::test]
async fn chunk_reset_by_the_client_keeps_the_acknowledged_size() {
    let registry = TestRegistry::start().await;
    let content: Vec<u8> = (0..200_000u32).map(|index| (index % 241) as u8).collect();
    let location = registry.start_upload(NAME).await;
    let location = registry.patch_chunk(&location, 0, &content[..50_000]).await;
    let before = snapshot(&registry).await;
    send_and_reset(
        &registry,
        "PATCH",
        &location,
        100_000,
        &content[50_000..90_000],
    )
    .await;
    let after = settled_snapshot(&registry, &before).await;
    assert_eq!(after, before);
    assert_eq!(
        upload_status(&registry, &location).await,
        Ok("0-49999".into())
    );
    let location = registry
        .patch_chunk(&location, 50_000, &content[50_000..])
        .await;
    let response = registry
        .request(
            Method::PUT,
            &with_query(&location, &format!("digest={}", sha256(&content))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let blob = registry
        .get(&format!("/v2/{NAME}/blobs/{}", sha256(&content)))
        .await;
    assert_eq!(blob.bytes().await.unwrap().as_ref(), content.as_slice());
}

#[tokio::test]
async fn truncated_monolithic_upload_stores_nothing() {
    let registry = TestRegistry::start().await;
    registry.push_image(NAME, "latest", b"some layer").await;
    let before = snapshot(&registry).await;
    let content = vec![7u8; 1000];
    let path = format!("/v2/{NAME}/blobs/uploads/?digest={}", sha256(&content));
    let response = send_truncated(&registry, "POST", &path, content.len(), &content[..400]).await;
    assert_truncation_refused(response);
    let after = settled_snapshot(&registry, &before).await;
    assert_eq!(
        after, before,
        "a truncated monolithic upload leaves nothing behind"
    );
    let response = registry
        .get(&format!("/v2/{NAME}/blobs/{}", sha256(&content)))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn truncated_chunk_keeps_the_acknowledged_size_and_the_upload_resumes() {
    let registry = TestRegistry::start().await;
    let content: Vec<u8> = (0..3000u32).map(|index| (index % 251) as u8).collect();
    let location = registry.start_upload(NAME).await;
    let location = registry.patch_chunk(&location, 0, &content[..1000]).await;
    let before = snapshot(&registry).await;

    // The second chunk announces 1000 bytes and delivers 400 of them, some of
    // which are not even the right bytes.
    let mut sent = content[1000..1400].to_vec();
    sent[399] ^= 0xff;
    let response = send_truncated(&registry, "PATCH", &location, 1000, &sent).await;
    assert_truncation_refused(response);
    let after = settled_snapshot(&registry, &before).await;
    assert_eq!(after.stored, before.stored);
    assert_eq!(
        upload_status(&registry, &location).await,
        Ok("0-999".into())
    );

    // A truncated last chunk on the PUT neither finishes nor advances it.
    let path = with_query(&location, &format!("digest={}", sha256(&content)));
    let response = send_truncated(&registry, "PUT", &path, 2000, &content[1000..1500]).await;
    assert_truncation_refused(response);
    let after = settled_snapshot(&registry, &before).await;
    assert_eq!(after.stored, before.stored);
    assert_eq!(
        upload_status(&registry, &location).await,
        Ok("0-999".into())
    );

    // The client resumes from what the registry acknowledged.
    let location = registry
        .patch_chunk(&location, 1000, &content[1000..2000])
        .await;
    let response = registry
        .request(
            Method::PUT,
            &with_query(&location, &format!("digest={}", sha256(&content))),
        )
        .header("content-range", "2000-2999")
        .body(content[2000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
    let blob = registry
        .get(&format!("/v2/{NAME}/blobs/{}", sha256(&content)))
        .await;
    assert_eq!(blob.bytes().await.unwrap().as_ref(), content.as_slice());
}

/// A manifest padded with trailing spaces to exactly `length` bytes, which is
/// still valid JSON.
fn padded(manifest: &[u8], length: usize) -> Vec<u8> {
    let mut padded = manifest.to_vec();
    padded.resize(length, b' ');
    padded
}

#[tokio::test]
async fn oversize_manifest_is_refused_with_413() {
    let limit = 1024;
    let registry =
        TestRegistry::start_with(|config| config.limits.manifest_max_bytes = limit).await;
    let (manifest, _) = registry.push_image(NAME, "latest", b"some layer").await;
    let before = snapshot(&registry).await;

    let too_large = padded(&manifest, limit as usize + 1);
    let response = registry
        .put_manifest(NAME, "big", OCI_MANIFEST, &too_large)
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(response).await, "MANIFEST_INVALID");

    // Without a Content-Length the limit applies to what arrives.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = too_large
        .chunks(100)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let response = registry
        .request(Method::PUT, &format!("/v2/{NAME}/manifests/big"))
        .header("content-type", OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(response).await, "MANIFEST_INVALID");
    assert_eq!(snapshot(&registry).await, before);
    let response = registry.get(&format!("/v2/{NAME}/manifests/big")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Exactly at the limit is accepted.
    let at_limit = padded(&manifest, limit as usize);
    let response = registry
        .put_manifest(NAME, "big", OCI_MANIFEST, &at_limit)
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
    let served = registry.get(&format!("/v2/{NAME}/manifests/big")).await;
    assert_eq!(served.bytes().await.unwrap().as_ref(), at_limit.as_slice());
}

#[tokio::test]
async fn wrong_method_names_the_allowed_methods() {
    // RFC 9110 section 15.5.6: a 405 response must carry an Allow header.
    let registry = TestRegistry::start().await;
    let digest = sha256(b"x");
    let cases = [
        (Method::POST, format!("/v2/{NAME}/manifests/latest")),
        (Method::PUT, format!("/v2/{NAME}/blobs/{digest}")),
        (Method::DELETE, format!("/v2/{NAME}/tags/list")),
    ];
    for (method, path) in cases {
        let response = registry
            .request(method.clone(), &path)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert!(
            !header(&response, "allow").is_empty(),
            "{method} {path}: 405 without an Allow header"
        );
    }
}
