//! Fixed-time load from many connections, on raw hyper HTTP/1.1.
//!
//! Client and servers share the machine's two cores, so the load generator
//! must be cheap per request: each worker owns one keep-alive connection
//! (hyper's `conn::http1`, no pool, no URL handling per request) and sends
//! the next request as soon as the previous response is checked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use url::Url;

use crate::content::sha256_digest;
use crate::registry::{Manifest, MANIFEST_ACCEPT};
use crate::scenarios::Sizes;

/// GET or HEAD of `/v2/<name>/manifests/<reference>` from `sizes.connections`
/// connections: `warmup_seconds` unmeasured, then `load_seconds` measured.
/// Every response is checked; the first failure stops all workers and is
/// the result. Returns requests/s and the sorted latencies.
pub async fn manifest_load(
    base: &Url,
    name: &str,
    reference: &str,
    manifest: Arc<Manifest>,
    method: Method,
    sizes: &Sizes,
) -> Result<(f64, Vec<Duration>)> {
    let host = base.host_str().context("the registry URL has no host")?;
    let port = base
        .port_or_known_default()
        .context("the registry URL has no port")?;
    let target = Arc::new(Target {
        address: format!("{host}:{port}"),
        authority: format!("{host}:{port}"),
        path: format!("/v2/{name}/manifests/{reference}"),
        url: base
            .join(&format!("v2/{name}/manifests/{reference}"))?
            .to_string(),
        manifest,
        method,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let measure_from = Instant::now() + Duration::from_secs_f64(sizes.warmup_seconds);
    let deadline = measure_from + Duration::from_secs_f64(sizes.load_seconds);
    let mut workers = Vec::new();
    for _ in 0..sizes.connections {
        let (target, stop) = (target.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let outcome = worker(&target, &stop, measure_from, deadline).await;
            if outcome.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            outcome
        }));
    }
    let mut all = Vec::new();
    let mut first_error = None;
    for worker in workers {
        match worker.await? {
            Ok(latencies) => all.extend(latencies),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    if all.is_empty() {
        bail!(
            "no request completed in the measured {} s",
            sizes.load_seconds
        );
    }
    all.sort();
    Ok((all.len() as f64 / sizes.load_seconds, all))
}

struct Target {
    address: String,
    authority: String,
    path: String,
    /// For messages.
    url: String,
    manifest: Arc<Manifest>,
    method: Method,
}

async fn connect(target: &Target) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(&target.address)
        .await
        .with_context(|| format!("connecting to {}", target.address))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn worker(
    target: &Target,
    stop: &AtomicBool,
    measure_from: Instant,
    deadline: Instant,
) -> Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    let mut sender = connect(target).await?;
    loop {
        if sender.ready().await.is_err() {
            // The server closed this keep-alive connection between requests: open another.
            sender = connect(target).await?;
        }
        let started = Instant::now();
        if started >= deadline || stop.load(Ordering::Relaxed) {
            return Ok(latencies);
        }
        let request = Request::builder()
            .method(target.method.clone())
            .uri(target.path.as_str())
            .header(hyper::header::HOST, target.authority.as_str())
            .header(hyper::header::ACCEPT, MANIFEST_ACCEPT)
            .body(Empty::<Bytes>::new())?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{} {}: request failed", target.method, target.url))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .with_context(|| format!("{} {}: reading the body", target.method, target.url))?
            .to_bytes();
        check(target, parts.status, &parts.headers, &body)?;
        if started >= measure_from {
            latencies.push(started.elapsed());
        }
    }
}

fn check(
    target: &Target,
    status: StatusCode,
    headers: &hyper::HeaderMap,
    body: &Bytes,
) -> Result<()> {
    let (method, url, manifest) = (&target.method, &target.url, &target.manifest);
    if status != StatusCode::OK {
        bail!(
            "{method} {url}: expected status 200, got {status}; body: {:?}",
            String::from_utf8_lossy(&body[..body.len().min(400)])
        );
    }
    let header = |name: &str| {
        headers
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    if let Some(digest) = header("docker-content-digest") {
        if digest != manifest.digest {
            bail!(
                "{method} {url}: expected Docker-Content-Digest: {}, got {digest}",
                manifest.digest
            );
        }
    }
    let content_type = header("content-type");
    if content_type.as_deref() != Some(manifest.media_type) {
        bail!(
            "{method} {url}: expected Content-Type: {}, got {content_type:?}",
            manifest.media_type
        );
    }
    // A GET may be sent chunked; a HEAD must state the length.
    let length = header("content-length");
    if (length.is_some() || *method == Method::HEAD)
        && length.as_deref() != Some(&manifest.bytes.len().to_string())
    {
        bail!(
            "{method} {url}: expected Content-Length: {}, got {length:?}",
            manifest.bytes.len()
        );
    }
    if *method == Method::GET && *body != manifest.bytes {
        bail!(
            "{method} {url}: expected the {} pushed bytes (digest {}), got {} bytes (digest {})",
            manifest.bytes.len(),
            manifest.digest,
            body.len(),
            sha256_digest(body)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A canned registry that answers every request with the manifest, to
    /// check the worker's checks and see what the generator alone can do.
    async fn canned(manifest: Arc<Manifest>, digest_override: Option<&'static str>) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let manifest = manifest.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 8192];
                    let mut filled = 0;
                    loop {
                        let Ok(read) = stream.read(&mut buffer[filled..]).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        filled += read;
                        while let Some(end) =
                            buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n")
                        {
                            let head = buffer[..end].starts_with(b"HEAD");
                            let digest = digest_override.unwrap_or(&manifest.digest);
                            let mut response = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nDocker-Content-Digest: {digest}\r\n\r\n",
                                manifest.media_type,
                                manifest.bytes.len()
                            )
                            .into_bytes();
                            if !head {
                                response.extend_from_slice(&manifest.bytes);
                            }
                            if stream.write_all(&response).await.is_err() {
                                return;
                            }
                            buffer.copy_within(end + 4..filled, 0);
                            filled -= end + 4;
                        }
                    }
                });
            }
        });
        Url::parse(&format!("http://{address}/")).unwrap()
    }

    fn sizes(seconds: f64) -> Sizes {
        Sizes {
            load_seconds: seconds,
            warmup_seconds: 0.1,
            ..Sizes::smoke()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loads_and_checks_each_response() {
        let manifest = Arc::new(Manifest::new(
            serde_json::json!({"schemaVersion": 2, "mediaType": crate::registry::OCI_MANIFEST}),
        ));
        let base = canned(manifest.clone(), None).await;
        let before = crate::server::process_usage(std::process::id()).unwrap();
        for method in [Method::GET, Method::HEAD] {
            let (rate, latencies) = manifest_load(
                &base,
                "a/b",
                "latest",
                manifest.clone(),
                method.clone(),
                &sizes(1.0),
            )
            .await
            .unwrap();
            eprintln!(
                "{method} against a canned server in the same process: {rate:.0} req/s, {} samples",
                latencies.len()
            );
            assert!(rate > 100.0);
        }
        let after = crate::server::process_usage(std::process::id()).unwrap();
        eprintln!(
            "process CPU for both runs: {:.2} s",
            after.cpu_seconds - before.cpu_seconds
        );

        let wrong = canned(manifest.clone(), Some("sha256:0000")).await;
        let error = manifest_load(&wrong, "a/b", "latest", manifest, Method::GET, &sizes(0.2))
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("expected Docker-Content-Digest"),
            "{error:#}"
        );
    }
}
