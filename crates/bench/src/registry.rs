//! A small OCI distribution client whose every call checks the response.
//!
//! A check that fails is an error naming the request, what was expected and
//! what came back, so a failure reads as a bug report, never as a figure.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use url::Url;

use crate::content::{sha256_digest, Content};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
const DIGEST_HEADER: &str = "docker-content-digest";

/// A manifest as pushed: its exact bytes, their digest and media type.
#[derive(Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub digest: String,
    pub media_type: &'static str,
}

impl Manifest {
    pub fn new(json: serde_json::Value) -> Manifest {
        let bytes = Bytes::from(serde_json::to_vec(&json).expect("a JSON value serialises"));
        Manifest {
            digest: sha256_digest(&bytes),
            bytes,
            media_type: OCI_MANIFEST,
        }
    }
}

#[derive(Clone)]
pub struct Registry {
    client: reqwest::Client,
    base: Url,
}

/// One page of a paginated listing.
pub struct Page {
    pub entries: Vec<String>,
    pub next: Option<Url>,
    pub elapsed: Duration,
}

impl Registry {
    pub fn new(base: Url) -> Result<Registry> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .connect_timeout(Duration::from_secs(5))
            // Registries redirect nothing on filesystem storage; a redirect is a finding.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Registry { client, base })
    }

    pub fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("paths are relative and valid")
    }

    /// POST /v2/<name>/blobs/uploads/ -> 202 and the upload's location.
    pub async fn start_upload(&self, name: &str) -> Result<Url> {
        let url = self.url(&format!("v2/{name}/blobs/uploads/"));
        let response = send(
            self.client.post(url.clone()).header(CONTENT_LENGTH, 0),
            Method::POST,
            &url,
            &[StatusCode::ACCEPTED],
        )
        .await?;
        self.location(&response, Method::POST, &url)
    }

    /// A monolithic push, POST then PUT ?digest= with the whole (streamed) body.
    pub async fn push_blob(&self, name: &str, content: &Content) -> Result<()> {
        let upload = self.start_upload(name).await?;
        let url = with_digest(upload, content.digest());
        let body = reqwest::Body::wrap_stream(content.stream(0, content.size()));
        let request = self
            .client
            .put(url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, content.size())
            .body(body);
        let response = send(request, Method::PUT, &url, &[StatusCode::CREATED]).await?;
        check_digest_header(&response, content.digest(), Method::PUT, &url)
    }

    /// A chunked push: POST, one PATCH per chunk with Content-Range, then PUT ?digest=.
    pub async fn push_blob_chunked(&self, name: &str, content: &Content, chunk: u64) -> Result<()> {
        let mut upload = self.start_upload(name).await?;
        let mut offset = 0;
        while offset < content.size() {
            let end = (offset + chunk).min(content.size());
            let body = reqwest::Body::wrap_stream(content.stream(offset, end));
            let request = self
                .client
                .patch(upload.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_RANGE, format!("{offset}-{}", end - 1))
                .header(CONTENT_LENGTH, end - offset)
                .body(body);
            let response = send(request, Method::PATCH, &upload, &[StatusCode::ACCEPTED]).await?;
            let expected_range = format!("0-{}", end - 1);
            match header(response.headers(), "range") {
                Some(range) if range == expected_range => {}
                got => bail!("PATCH {upload} (Content-Range {offset}-{}): expected header Range: {expected_range}, got {got:?}", end - 1),
            }
            upload = self.location(&response, Method::PATCH, &upload)?;
            offset = end;
        }
        let url = with_digest(upload, content.digest());
        let response = send(
            self.client.put(url.clone()).header(CONTENT_LENGTH, 0),
            Method::PUT,
            &url,
            &[StatusCode::CREATED],
        )
        .await?;
        check_digest_header(&response, content.digest(), Method::PUT, &url)
    }

    /// A small blob pushed from memory, POST then PUT ?digest=.
    pub async fn push_small_blob(&self, name: &str, data: Bytes, digest: &str) -> Result<()> {
        let upload = self.start_upload(name).await?;
        let url = with_digest(upload, digest);
        let request = self
            .client
            .put(url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data);
        let response = send(request, Method::PUT, &url, &[StatusCode::CREATED]).await?;
        check_digest_header(&response, digest, Method::PUT, &url)
    }

    /// Cross-repository mount; a registry that answers 202 (no mount) gets the bytes instead.
    pub async fn mount_blob(
        &self,
        name: &str,
        from: &str,
        data: Bytes,
        digest: &str,
    ) -> Result<()> {
        let mut url = self.url(&format!("v2/{name}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let response = send(
            self.client.post(url.clone()).header(CONTENT_LENGTH, 0),
            Method::POST,
            &url,
            &[StatusCode::CREATED, StatusCode::ACCEPTED],
        )
        .await?;
        if response.status() == StatusCode::CREATED {
            return Ok(());
        }
        let upload = with_digest(self.location(&response, Method::POST, &url)?, digest);
        let request = self
            .client
            .put(upload.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data);
        send(request, Method::PUT, &upload, &[StatusCode::CREATED]).await?;
        Ok(())
    }

    /// HEAD /v2/<name>/blobs/<digest> -> 200 with the blob's length.
    pub async fn head_blob(&self, name: &str, digest: &str, size: u64) -> Result<()> {
        let url = self.url(&format!("v2/{name}/blobs/{digest}"));
        let response = send(
            self.client.head(url.clone()),
            Method::HEAD,
            &url,
            &[StatusCode::OK],
        )
        .await?;
        let length = header(response.headers(), "content-length");
        if length.as_deref() != Some(&size.to_string()) {
            bail!("HEAD {url}: expected Content-Length: {size}, got {length:?}");
        }
        check_digest_header(&response, digest, Method::HEAD, &url)
    }

    /// GET the whole blob, comparing every byte with `content`; returns the byte count.
    pub async fn pull_blob(&self, name: &str, content: &Content) -> Result<u64> {
        let url = self.url(&format!("v2/{name}/blobs/{}", content.digest()));
        let response = send(
            self.client.get(url.clone()),
            Method::GET,
            &url,
            &[StatusCode::OK],
        )
        .await?;
        check_digest_header(&response, content.digest(), Method::GET, &url)?;
        let received = verify_body(response, content, 0, Method::GET, &url).await?;
        if received != content.size() {
            bail!(
                "GET {url}: expected {} bytes, got {received}",
                content.size()
            );
        }
        Ok(received)
    }

    /// GET with `Range: bytes=start-(end-1)` -> 206 with exactly those bytes.
    pub async fn pull_range(
        &self,
        name: &str,
        content: &Content,
        start: u64,
        end: u64,
    ) -> Result<u64> {
        let url = self.url(&format!("v2/{name}/blobs/{}", content.digest()));
        let range = format!("bytes={start}-{}", end - 1);
        let response = send(
            self.client.get(url.clone()).header(RANGE, &range),
            Method::GET,
            &url,
            &[StatusCode::PARTIAL_CONTENT],
        )
        .await
        .with_context(|| format!("with Range: {range}"))?;
        let expected = format!("bytes {start}-{}/{}", end - 1, content.size());
        let got = header(response.headers(), "content-range");
        if got.as_deref() != Some(expected.as_str()) {
            bail!("GET {url} with Range: {range}: expected Content-Range: {expected}, got {got:?}");
        }
        let received = verify_body(response, content, start, Method::GET, &url).await?;
        if received != end - start {
            bail!(
                "GET {url} with Range: {range}: expected {} bytes, got {received}",
                end - start
            );
        }
        Ok(received)
    }

    /// PUT /v2/<name>/manifests/<reference> -> 201 (and the digest, if the registry states it).
    pub async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<()> {
        let url = self.url(&format!("v2/{name}/manifests/{reference}"));
        let request = self
            .client
            .put(url.clone())
            .header(CONTENT_TYPE, manifest.media_type)
            .body(manifest.bytes.clone());
        let response = send(request, Method::PUT, &url, &[StatusCode::CREATED]).await?;
        check_digest_header(&response, &manifest.digest, Method::PUT, &url)
    }

    /// GET a manifest: 200, its media type, and byte-for-byte the pushed bytes.
    pub async fn get_manifest(
        &self,
        name: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<()> {
        let url = self.url(&format!("v2/{name}/manifests/{reference}"));
        let response = send(
            self.client.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT),
            Method::GET,
            &url,
            &[StatusCode::OK],
        )
        .await?;
        check_manifest_headers(&response, manifest, Method::GET, &url)?;
        let body = response
            .bytes()
            .await
            .with_context(|| format!("GET {url}: reading the body"))?;
        if body != manifest.bytes {
            bail!(
                "GET {url}: expected the {} pushed bytes (digest {}), got {} bytes (digest {})",
                manifest.bytes.len(),
                manifest.digest,
                body.len(),
                sha256_digest(&body)
            );
        }
        Ok(())
    }

    /// HEAD a manifest: 200 with its media type, length and digest.
    pub async fn head_manifest(
        &self,
        name: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<()> {
        let url = self.url(&format!("v2/{name}/manifests/{reference}"));
        let response = send(
            self.client
                .head(url.clone())
                .header(ACCEPT, MANIFEST_ACCEPT),
            Method::HEAD,
            &url,
            &[StatusCode::OK],
        )
        .await?;
        check_manifest_headers(&response, manifest, Method::HEAD, &url)?;
        let length = header(response.headers(), "content-length");
        if length.as_deref() != Some(&manifest.bytes.len().to_string()) {
            bail!(
                "HEAD {url}: expected Content-Length: {}, got {length:?}",
                manifest.bytes.len()
            );
        }
        Ok(())
    }

    /// GET one page of `/v2/<name>/tags/list` or `/v2/_catalog`; `key` is "tags" or "repositories".
    pub async fn list_page(&self, url: &Url, key: &str) -> Result<Page> {
        let started = Instant::now();
        let response = send(
            self.client.get(url.clone()),
            Method::GET,
            url,
            &[StatusCode::OK],
        )
        .await?;
        let link = header(response.headers(), "link");
        let body = response
            .bytes()
            .await
            .with_context(|| format!("GET {url}: reading the body"))?;
        let elapsed = started.elapsed();
        let json: serde_json::Value = serde_json::from_slice(&body).with_context(|| {
            format!("GET {url}: expected a JSON body, got {:?}", preview(&body))
        })?;
        let entries = match json.get(key) {
            Some(serde_json::Value::Array(values)) => values
                .iter()
                .map(|value| value.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .with_context(|| {
                    format!(
                        "GET {url}: expected \"{key}\" to hold strings, got {:?}",
                        preview(&body)
                    )
                })?,
            // The spec allows null for an empty list.
            Some(serde_json::Value::Null) => Vec::new(),
            _ => bail!(
                "GET {url}: expected a JSON object with \"{key}\", got {:?}",
                preview(&body)
            ),
        };
        let next = match link {
            None => None,
            Some(link) => Some(
                self.next_link(&link)
                    .with_context(|| format!("GET {url}: unusable Link header {link:?}"))?,
            ),
        };
        Ok(Page {
            entries,
            next,
            elapsed,
        })
    }

    /// `<url>; rel="next"` -> the URL, relative ones resolved against the registry.
    fn next_link(&self, link: &str) -> Result<Url> {
        let (target, params) = link.split_once(';').context("no `;` in the Link header")?;
        if !params.replace(' ', "").contains("rel=\"next\"") {
            bail!("the Link header is not rel=\"next\"");
        }
        let target = target
            .trim()
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .context("no <...> in the Link header")?;
        Ok(self.base.join(target)?)
    }

    fn location(&self, response: &Response, method: Method, url: &Url) -> Result<Url> {
        let location = header(response.headers(), "location")
            .with_context(|| format!("{method} {url}: expected a Location header, got none"))?;
        self.base
            .join(&location)
            .with_context(|| format!("{method} {url}: unusable Location {location:?}"))
    }
}

async fn send(
    request: RequestBuilder,
    method: Method,
    url: &Url,
    expected: &[StatusCode],
) -> Result<Response> {
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}: request failed"))?;
    if expected.contains(&response.status()) {
        return Ok(response);
    }
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    let expected: Vec<String> = expected
        .iter()
        .map(|status| status.as_u16().to_string())
        .collect();
    bail!(
        "{method} {url}: expected status {}, got {status}; body: {:?}",
        expected.join(" or "),
        preview(&body)
    )
}

/// Reads the body as it streams and compares it with `content` from `offset`.
async fn verify_body(
    response: Response,
    content: &Content,
    offset: u64,
    method: Method,
    url: &Url,
) -> Result<u64> {
    let mut at = offset;
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.with_context(|| {
            format!(
                "{method} {url}: reading the body after {} bytes",
                at - offset
            )
        })?;
        if !content.matches(at, &piece) {
            bail!(
                "{method} {url}: the {} bytes at blob offset {at} differ from what was pushed (or run past its end at {})",
                piece.len(),
                content.size()
            );
        }
        at += piece.len() as u64;
    }
    Ok(at - offset)
}

fn check_digest_header(response: &Response, digest: &str, method: Method, url: &Url) -> Result<()> {
    // The spec makes the header optional on most responses; when present it must be right.
    match header(response.headers(), DIGEST_HEADER) {
        Some(got) if got != digest => {
            bail!("{method} {url}: expected Docker-Content-Digest: {digest}, got {got}")
        }
        _ => Ok(()),
    }
}

fn check_manifest_headers(
    response: &Response,
    manifest: &Manifest,
    method: Method,
    url: &Url,
) -> Result<()> {
    check_digest_header(response, &manifest.digest, method.clone(), url)?;
    let content_type = header(response.headers(), "content-type");
    if content_type.as_deref() != Some(manifest.media_type) {
        bail!(
            "{method} {url}: expected Content-Type: {}, got {content_type:?}",
            manifest.media_type
        );
    }
    Ok(())
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

fn with_digest(mut url: Url, digest: &str) -> Url {
    url.query_pairs_mut().append_pair("digest", digest);
    url
}

fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned();
    if body.len() > 400 {
        format!("{text}... ({} bytes)", body.len())
    } else {
        text
    }
}
