//! PostgreSQL or the S3 service stopped for a few seconds while pushes go on.
//! Every refused request must be a clean 503 `UNAVAILABLE` with `Retry-After`,
//! nothing half-pushed may become visible, every acknowledged image must pull
//! back intact, and the registry must recover by itself once the service is
//! back. Needs the scale-out backends (see `common::scale_out_backends`).
//!
//! The registry reaches the backend through `OutageProxy`, a TCP forwarder the
//! test can stop and start: stopped, it drops every open connection and
//! closes new ones at once, which is what the registry sees of a server that
//! went away (the port stays bound, so no other process can take it).
//! The real servers stay up for the other tests running beside this one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::common::*;

/// A TCP forwarder to `target` on a loopback port, which can be stopped
/// (every connection reset, new ones closed at once) and started again. The
/// port stays bound throughout, so nothing else can take it meanwhile.
struct OutageProxy {
    address: SocketAddr,
    running: watch::Sender<bool>,
    /// Connections being forwarded now.
    open: Arc<AtomicUsize>,
}

impl OutageProxy {
    async fn start(target: SocketAddr) -> OutageProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (running, control) = watch::channel(true);
        let open = Arc::new(AtomicUsize::new(0));
        tokio::spawn(forward_while_running(
            listener,
            target,
            control,
            open.clone(),
        ));
        OutageProxy {
            address,
            running,
            open,
        }
    }

    /// Resets every connection and refuses new ones until `resume`.
    async fn stop(&self) {
        self.running.send_replace(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.open.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "the outage proxy did not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn resume(&self) {
        self.running.send_replace(true);
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        // Closing the channel ends the forwarding task.
        let (replacement, _) = watch::channel(false);
        drop(std::mem::replace(&mut self.running, replacement));
    }
}

async fn forward_while_running(
    listener: TcpListener,
    target: SocketAddr,
    mut control: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // While stopped, a new connection is closed at once.
                if let (Ok((client, _)), true) = (accepted, *control.borrow()) {
                    connections.spawn(forward(client, target, OpenConnection::new(&open)));
                }
            }
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
                if !*control.borrow() {
                    connections.abort_all();
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Counts a forwarded connection while it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, _open: OpenConnection) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// The `host:port` of a `scheme://[user@]host:port[/...]` URL.
fn url_address(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap();
    authority
        .parse()
        .unwrap_or_else(|_| panic!("{url} names no numeric host:port"))
}

/// What became of one attempt to push an image.
#[derive(Debug)]
enum Push {
    /// The manifest PUT answered 201: the image must pull back intact.
    Acknowledged { tag: String, layer: Vec<u8> },
    /// A step answered 503; the image may or may not be visible, but if its
    /// tag is, the image must be whole.
    Refused,
}

/// Pushes a config, a layer in two chunks and a manifest tagged `tag`.
/// Stops at the first refused step, after checking that the refusal is a
/// clean, retryable 503.
async fn push_image(registry: &TestRegistry, tag: &str, seed: u32) -> Push {
    let name = "outage/app";
    let layer: Vec<u8> = (0..300_000u32)
        .map(|index| (index.wrapping_mul(seed + 7) % 251) as u8)
        .collect();
    let config =
        serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "seed": seed})).unwrap();
    let config_digest = sha256(&config);
    let layer_digest = sha256(&layer);

    let response = registry
        .request(
            Method::POST,
            &format!("/v2/{name}/blobs/uploads/?digest={config_digest}"),
        )
        .body(config.clone())
        .send()
        .await
        .unwrap();
    if !succeeded(response, StatusCode::CREATED).await {
        return Push::Refused;
    }

    let response = registry
        .request(Method::POST, &format!("/v2/{name}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let mut location = header(&response, "location");
    if !succeeded(response, StatusCode::ACCEPTED).await {
        return Push::Refused;
    }
    let middle = layer.len() / 2;
    for (start, chunk) in [(0, &layer[..middle]), (middle, &layer[middle..])] {
        let end = start + chunk.len() - 1;
        let response = registry
            .request(Method::PATCH, &location)
            .header("content-range", format!("{start}-{end}"))
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        location = header(&response, "location");
        if !succeeded(response, StatusCode::ACCEPTED).await {
            return Push::Refused;
        }
    }
    let separator = if location.contains('?') { '&' } else { '?' };
    let response = registry
        .request(
            Method::PUT,
            &format!("{location}{separator}digest={layer_digest}"),
        )
        .send()
        .await
        .unwrap();
    if !succeeded(response, StatusCode::CREATED).await {
        return Push::Refused;
    }

    let manifest = image_manifest(
        (&config_digest, config.len()),
        &[(&layer_digest, layer.len())],
    );
    let response = registry
        .put_manifest(name, tag, OCI_MANIFEST, &manifest)
        .await;
    if !succeeded(response, StatusCode::CREATED).await {
        return Push::Refused;
    }
    Push::Acknowledged {
        tag: tag.to_owned(),
        layer,
    }
}

/// Whether the response has the expected status; any other answer must be a
/// retryable 503 with the `UNAVAILABLE` code and a `Retry-After` header.
async fn succeeded(response: reqwest::Response, expected: StatusCode) -> bool {
    if response.status() == expected {
        return true;
    }
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "during an outage only 503 may answer: {}",
        response.text().await.unwrap_or_default()
    );
    assert_eq!(header(&response, "retry-after"), "5");
    assert_eq!(error_code(response).await, "UNAVAILABLE");
    false
}

/// Checks every tag of the test repository: its manifest and every blob it
/// names pull back with the right digests. A half-pushed image would fail here.
async fn every_tag_is_whole(registry: &TestRegistry) -> Vec<String> {
    let list = registry.get("/v2/outage/app/tags/list").await;
    assert_eq!(list.status(), StatusCode::OK);
    let list: serde_json::Value = list.json().await.unwrap();
    let tags: Vec<String> = list["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .map(|tag| tag.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    for tag in &tags {
        let response = registry
            .request(Method::GET, &format!("/v2/outage/app/manifests/{tag}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "manifest of tag {tag}");
        let digest = header(&response, "docker-content-digest");
        let body = response.bytes().await.unwrap();
        assert_eq!(sha256(&body), digest, "manifest bytes of tag {tag}");
        let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut blobs = vec![manifest["config"].clone()];
        blobs.extend(manifest["layers"].as_array().unwrap().iter().cloned());
        for blob in blobs {
            let digest = blob["digest"].as_str().unwrap();
            let response = registry
                .get(&format!("/v2/outage/app/blobs/{digest}"))
                .await;
            assert_eq!(response.status(), StatusCode::OK, "blob {digest} of {tag}");
            let bytes = response.bytes().await.unwrap();
            assert_eq!(sha256(&bytes), digest, "bytes of blob {digest} of {tag}");
        }
    }
    tags
}

/// Pushes before, during and after an outage of the service behind `proxy`.
async fn pushes_through_an_outage(registry: &TestRegistry, proxy: &OutageProxy) {
    let mut outcomes = vec![push_image(registry, "before", 0).await];
    assert!(matches!(outcomes[0], Push::Acknowledged { .. }));
    assert_eq!(registry.get("/readyz").await.status(), StatusCode::OK);

    // The service stays down for at least four seconds and until a push was
    // refused: the registry's own retries may ride out the first seconds.
    proxy.stop().await;
    let outage_started = Instant::now();
    let mut seed = 1;
    let mut refused = 0;
    while refused == 0 || outage_started.elapsed() < Duration::from_secs(4) {
        assert!(
            outage_started.elapsed() < Duration::from_secs(90),
            "no push was refused in 90 seconds of outage"
        );
        // Three pushes at once, as a multi-layer push would run.
        let attempts: Vec<_> = (0..3)
            .map(|offset| {
                let tag = format!("during-{}", seed + offset);
                async move { push_image(registry, &tag, seed + offset).await }
            })
            .collect();
        for outcome in futures::future::join_all(attempts).await {
            if matches!(outcome, Push::Refused) {
                refused += 1;
            }
            outcomes.push(outcome);
        }
        seed += 3;
    }
    let readiness = registry.get("/readyz").await;
    assert_eq!(readiness.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(readiness).await, "UNAVAILABLE");
    assert_eq!(registry.get("/healthz").await.status(), StatusCode::OK);

    proxy.resume();
    // The registry recovers by itself: a retrying client gets through.
    let recovery_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let outcome = push_image(registry, "after", 1000).await;
        let acknowledged = matches!(outcome, Push::Acknowledged { .. });
        outcomes.push(outcome);
        if acknowledged {
            break;
        }
        assert!(
            Instant::now() < recovery_deadline,
            "the registry did not recover within a minute of the service coming back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(registry.get("/readyz").await.status(), StatusCode::OK);

    let tags = every_tag_is_whole(registry).await;
    for outcome in &outcomes {
        if let Push::Acknowledged { tag, layer } = outcome {
            assert!(tags.contains(tag), "acknowledged tag {tag} was lost");
            let manifest: serde_json::Value = registry
                .request(Method::GET, &format!("/v2/outage/app/manifests/{tag}"))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let digest = manifest["layers"][0]["digest"].as_str().unwrap();
            assert_eq!(digest, sha256(layer), "tag {tag} names the pushed layer");
        }
    }
}

#[tokio::test]
async fn database_outage_during_pushes() {
    if !scale_out_backends() {
        return;
    }
    let server = std::env::var("KAI_TEST_POSTGRES").unwrap();
    let proxy = OutageProxy::start(url_address(&server)).await;
    let registry = TestRegistry::start_with(|config| {
        let real = url_address(&server).to_string();
        config.database = config.database.replace(&real, &proxy.address.to_string());
    })
    .await;
    assert!(registry
        .state()
        .config
        .database_url()
        .contains(&proxy.address.to_string()));
    pushes_through_an_outage(&registry, &proxy).await;
    registry.stop().await;
}

#[tokio::test]
async fn storage_outage_during_pushes() {
    if !scale_out_backends() {
        return;
    }
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL names the S3 service");
    let proxy = OutageProxy::start(url_address(&endpoint)).await;
    let registry = TestRegistry::start_with(|config| {
        config.s3.endpoint = format!("http://{}", proxy.address);
    })
    .await;
    pushes_through_an_outage(&registry, &proxy).await;
    registry.stop().await;
}
