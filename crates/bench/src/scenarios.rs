//! The scenarios, each run the same way against every server.
//!
//! A scenario returns its figures as `(metric key, value)` pairs; the keys
//! are described once, in `report::metric_specs`. Set-up (fixtures, the
//! listing population) is never inside a timed section; checks that are
//! not part of the operation being measured (a HEAD after a push, an
//! unaligned range) run after the clock stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::json;

use crate::content::{fill_random, sha256_digest, Content};
use crate::registry::{Manifest, Registry};
use crate::server::{Kind, Server};

const MIB: f64 = 1024.0 * 1024.0;

/// Sizes and counts; `--smoke` shrinks them all.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sizes {
    pub blob: u64,
    pub chunk: u64,
    pub range: u64,
    pub load_seconds: f64,
    pub warmup_seconds: f64,
    pub connections: usize,
    pub manifest_puts: usize,
    pub small_blob: usize,
    pub small_blobs: usize,
    pub small_workers: usize,
    pub entries: usize,
    pub page: usize,
    pub populate_workers: usize,
    pub big_blob: Option<u64>,
    pub big_blob_rss_limit: u64,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            blob: 256 << 20,
            chunk: 8 << 20,
            range: 64 << 20,
            load_seconds: 10.0,
            warmup_seconds: 1.0,
            connections: 64,
            manifest_puts: 500,
            small_blob: 4096,
            small_blobs: 500,
            small_workers: 16,
            entries: 100_000,
            page: 100,
            populate_workers: 16,
            big_blob: Some(4 << 30),
            big_blob_rss_limit: 64 << 20,
        }
    }

    pub fn smoke() -> Sizes {
        Sizes {
            blob: 8 << 20,
            chunk: 1 << 20,
            range: 2 << 20,
            load_seconds: 2.0,
            warmup_seconds: 0.25,
            manifest_puts: 50,
            small_blobs: 100,
            entries: 1_000,
            big_blob: None,
            ..Sizes::full()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    PushMonolithic,
    PushChunked,
    PullWhole,
    PullRange,
    ManifestGet,
    ManifestHead,
    ManifestPut,
    SmallSerial,
    SmallParallel,
    Populate,
    TagList,
    Catalog,
}

impl Scenario {
    pub const ALL: [Scenario; 12] = [
        Scenario::PushMonolithic,
        Scenario::PushChunked,
        Scenario::PullWhole,
        Scenario::PullRange,
        Scenario::ManifestGet,
        Scenario::ManifestHead,
        Scenario::ManifestPut,
        Scenario::SmallSerial,
        Scenario::SmallParallel,
        Scenario::Populate,
        Scenario::TagList,
        Scenario::Catalog,
    ];

    /// Short name, used by `--only` and in the JSON.
    pub fn key(self) -> &'static str {
        match self {
            Scenario::PushMonolithic => "push",
            Scenario::PushChunked => "push-chunked",
            Scenario::PullWhole => "pull",
            Scenario::PullRange => "pull-range",
            Scenario::ManifestGet => "manifest-get",
            Scenario::ManifestHead => "manifest-head",
            Scenario::ManifestPut => "manifest-put",
            Scenario::SmallSerial => "small-serial",
            Scenario::SmallParallel => "small-parallel",
            Scenario::Populate => "populate",
            Scenario::TagList => "tag-list",
            Scenario::Catalog => "catalog",
        }
    }

    /// Populating the listings happens once per server, in the first round.
    pub fn once(self) -> bool {
        self == Scenario::Populate
    }
}

/// What one round shares between the servers: the same blob contents.
pub struct RoundInput {
    pub round: u32,
    pub monolithic: Arc<Content>,
    pub chunked: Arc<Content>,
}

/// A server under test and what has been set up on it.
pub struct Target {
    pub server: Server,
    pub registry: Registry,
    /// OCI listing rules (page size at most n, lexical order) are enforced
    /// for Kai; distribution 2.8 ignores `n` on tag lists, which becomes a note.
    pub strict_listing: bool,
    manifest_fixture: Option<Manifest>,
    listing_manifest: Option<Manifest>,
    populated: bool,
    pub alive: bool,
}

pub struct Measured {
    pub metrics: Vec<(&'static str, f64)>,
    pub notes: Vec<String>,
}

impl Measured {
    fn of(metrics: Vec<(&'static str, f64)>) -> Measured {
        Measured { metrics, notes: Vec::new() }
    }
}

const BLOBS: &str = "bench/blobs";
const MANIFESTS: &str = "bench/manifests";
const SMALL: &str = "bench/small";
const TAGS: &str = "bench/tags";
const CATALOG_PREFIX: &str = "bench/catalog/r";
const BIG: &str = "bench/big";

impl Target {
    pub fn new(server: Server) -> Result<Target> {
        let registry = Registry::new(server.base.clone())?;
        let strict_listing = server.kind == Kind::Kai;
        Ok(Target {
            server,
            registry,
            strict_listing,
            manifest_fixture: None,
            listing_manifest: None,
            populated: false,
            alive: true,
        })
    }

    pub async fn run(&mut self, scenario: Scenario, input: &RoundInput, sizes: &Sizes) -> Result<Measured> {
        match scenario {
            Scenario::PushMonolithic => self.push_monolithic(&input.monolithic).await,
            Scenario::PushChunked => self.push_chunked(&input.chunked, sizes.chunk).await,
            Scenario::PullWhole => self.pull_whole(&input.monolithic).await,
            Scenario::PullRange => self.pull_range(&input.monolithic, sizes.range).await,
            Scenario::ManifestGet => self.manifest_load(false, sizes).await,
            Scenario::ManifestHead => self.manifest_load(true, sizes).await,
            Scenario::ManifestPut => self.manifest_put(input.round, sizes).await,
            Scenario::SmallSerial => self.small_blobs(input.round, 1, sizes).await,
            Scenario::SmallParallel => self.small_blobs(input.round, sizes.small_workers, sizes).await,
            Scenario::Populate => self.populate(sizes).await,
            Scenario::TagList => self.tag_list(sizes).await,
            Scenario::Catalog => self.catalog(sizes).await,
        }
    }

    async fn push_monolithic(&self, content: &Content) -> Result<Measured> {
        let started = Instant::now();
        self.registry.push_blob(BLOBS, content).await?;
        let rate = mib_per_second(content.size(), started.elapsed());
        self.registry.head_blob(BLOBS, content.digest(), content.size()).await.context("after the push")?;
        Ok(Measured::of(vec![("push_monolithic", rate)]))
    }

    async fn push_chunked(&self, content: &Content, chunk: u64) -> Result<Measured> {
        let started = Instant::now();
        self.registry.push_blob_chunked(BLOBS, content, chunk).await?;
        let rate = mib_per_second(content.size(), started.elapsed());
        self.registry.head_blob(BLOBS, content.digest(), content.size()).await.context("after the push")?;
        Ok(Measured::of(vec![("push_chunked", rate)]))
    }

    async fn pull_whole(&self, content: &Content) -> Result<Measured> {
        let started = Instant::now();
        let bytes = self.registry.pull_blob(BLOBS, content).await?;
        Ok(Measured::of(vec![("pull_whole", mib_per_second(bytes, started.elapsed()))]))
    }

    async fn pull_range(&self, content: &Content, range: u64) -> Result<Measured> {
        let started = Instant::now();
        let mut bytes = 0;
        let mut start = 0;
        while start < content.size() {
            let end = (start + range).min(content.size());
            bytes += self.registry.pull_range(BLOBS, content, start, end).await?;
            start = end;
        }
        let rate = mib_per_second(bytes, started.elapsed());
        // An unaligned range across a 1 MiB boundary, and the last byte.
        let odd = (12_345u64).min(content.size() - 1);
        let odd_end = (odd + (1 << 20) + 7).min(content.size());
        self.registry.pull_range(BLOBS, content, odd, odd_end).await?;
        self.registry.pull_range(BLOBS, content, content.size() - 1, content.size()).await?;
        Ok(Measured::of(vec![("pull_range", rate)]))
    }

    /// Pushes the manifest that GET and HEAD fetch (tag `latest`) and its blobs.
    async fn manifest_fixture(&mut self) -> Result<Manifest> {
        if let Some(manifest) = &self.manifest_fixture {
            return Ok(manifest.clone());
        }
        let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
        let config_digest = sha256_digest(&config);
        let mut layer = vec![0u8; 4096];
        fill_random(42, &mut layer);
        let layer = Bytes::from(layer);
        let layer_digest = sha256_digest(&layer);
        self.registry.push_small_blob(MANIFESTS, config.clone(), &config_digest).await.context("setting up the manifest fixture")?;
        self.registry.push_small_blob(MANIFESTS, layer.clone(), &layer_digest).await.context("setting up the manifest fixture")?;
        let manifest = Manifest::new(image_manifest(&config_digest, config.len(), &[(&layer_digest, layer.len())]));
        self.registry.put_manifest(MANIFESTS, "latest", &manifest).await.context("setting up the manifest fixture")?;
        self.manifest_fixture = Some(manifest.clone());
        Ok(manifest)
    }

    /// GET or HEAD of one manifest by tag from `connections` workers for a fixed time.
    async fn manifest_load(&mut self, head: bool, sizes: &Sizes) -> Result<Measured> {
        let manifest = Arc::new(self.manifest_fixture().await?);
        let registry = self.registry.clone();
        let (rate, latencies) = load(sizes, move || {
            let registry = registry.clone();
            let manifest = manifest.clone();
            async move {
                if head {
                    registry.head_manifest(MANIFESTS, "latest", &manifest).await
                } else {
                    registry.get_manifest(MANIFESTS, "latest", &manifest).await
                }
            }
        })
        .await?;
        let p99 = percentile(&latencies, 0.99).as_secs_f64() * 1e3;
        Ok(Measured::of(if head {
            vec![("manifest_head_rate", rate), ("manifest_head_p99", p99)]
        } else {
            vec![("manifest_get_rate", rate), ("manifest_get_p99", p99)]
        }))
    }

    /// Serial PUTs of distinct manifests, each under its own tag.
    async fn manifest_put(&mut self, round: u32, sizes: &Sizes) -> Result<Measured> {
        self.manifest_fixture().await?;
        let base: serde_json::Value = serde_json::from_slice(&self.manifest_fixture.as_ref().expect("set above").bytes)?;
        let manifests: Vec<(String, Manifest)> = (0..sizes.manifest_puts)
            .map(|i| {
                let mut json = base.clone();
                json["annotations"] = json!({ "org.kai.bench.put": format!("round {round} number {i}") });
                (format!("put-{round}-{i}"), Manifest::new(json))
            })
            .collect();
        let mut latencies = Vec::with_capacity(manifests.len());
        for (tag, manifest) in &manifests {
            let started = Instant::now();
            self.registry.put_manifest(MANIFESTS, tag, manifest).await?;
            latencies.push(started.elapsed());
        }
        latencies.sort();
        // Read back the first and the last by tag and by digest.
        for (tag, manifest) in [&manifests[0], &manifests[manifests.len() - 1]] {
            self.registry.get_manifest(MANIFESTS, tag, manifest).await.context("after the PUTs")?;
            self.registry.get_manifest(MANIFESTS, &manifest.digest, manifest).await.context("after the PUTs")?;
        }
        Ok(Measured::of(vec![
            ("manifest_put_median", percentile(&latencies, 0.5).as_secs_f64() * 1e3),
            ("manifest_put_p99", percentile(&latencies, 0.99).as_secs_f64() * 1e3),
        ]))
    }

    /// Pushes of distinct small blobs (POST + PUT ?digest=), by `workers` at once.
    async fn small_blobs(&self, round: u32, workers: usize, sizes: &Sizes) -> Result<Measured> {
        let blobs: Vec<(Bytes, String)> = (0..sizes.small_blobs)
            .map(|i| {
                let mut data = vec![0u8; sizes.small_blob];
                fill_random((u64::from(round) << 40) ^ ((workers as u64) << 32) ^ i as u64, &mut data);
                let digest = sha256_digest(&data);
                (Bytes::from(data), digest)
            })
            .collect();
        let registry = &self.registry;
        let started = Instant::now();
        futures::stream::iter(blobs.iter())
            .map(|(data, digest)| registry.push_small_blob(SMALL, data.clone(), digest))
            .buffer_unordered(workers)
            .try_collect::<Vec<()>>()
            .await?;
        let rate = blobs.len() as f64 / started.elapsed().as_secs_f64();
        futures::stream::iter(blobs.iter())
            .map(|(data, digest)| registry.head_blob(SMALL, digest, data.len() as u64))
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await
            .context("after the pushes")?;
        Ok(Measured::of(vec![(if workers == 1 { "small_serial" } else { "small_parallel" }, rate)]))
    }

    /// `entries` tags of one manifest in one repository, and `entries`
    /// repositories each holding that manifest, by parallel PUTs.
    async fn populate(&mut self, sizes: &Sizes) -> Result<Measured> {
        let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"bench":"listing"}"#);
        let config_digest = sha256_digest(&config);
        let manifest = Manifest::new(image_manifest(&config_digest, config.len(), &[]));
        self.registry.push_small_blob(TAGS, config.clone(), &config_digest).await?;
        let registry = &self.registry;
        let started = Instant::now();
        futures::stream::iter(0..sizes.entries)
            .map(|i| {
                let manifest = &manifest;
                async move { registry.put_manifest(TAGS, &tag_name(i), manifest).await }
            })
            .buffer_unordered(sizes.populate_workers)
            .try_collect::<Vec<()>>()
            .await?;
        let tags_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        futures::stream::iter(0..sizes.entries)
            .map(|i| {
                let (manifest, config, config_digest) = (&manifest, &config, &config_digest);
                async move {
                    let name = repository_name(i);
                    registry.mount_blob(&name, TAGS, config.clone(), config_digest).await?;
                    registry.put_manifest(&name, "latest", manifest).await
                }
            })
            .buffer_unordered(sizes.populate_workers)
            .try_collect::<Vec<()>>()
            .await?;
        let repositories_seconds = started.elapsed().as_secs_f64();
        self.listing_manifest = Some(manifest);
        self.populated = true;
        Ok(Measured::of(vec![("populate_tags", tags_seconds), ("populate_repositories", repositories_seconds)]))
    }

    /// Walks `/v2/bench/tags/tags/list?n=<page>` to the end, following Link.
    async fn tag_list(&mut self, sizes: &Sizes) -> Result<Measured> {
        if !self.populated {
            bail!("the listing was not populated (the populate scenario failed or was not selected)");
        }
        let first = self.registry.url(&format!("v2/{TAGS}/tags/list?n={}", sizes.page));
        let (pages, entries, walk) = self.walk(first, "tags").await?;
        let mut notes = Vec::new();
        let expected: Vec<String> = (0..sizes.entries).map(tag_name).collect();
        check_pages(&pages, sizes.page, self.strict_listing, &format!("GET /v2/{TAGS}/tags/list"), &mut notes, &self.server.label)?;
        let mut sorted = entries.clone();
        sorted.sort();
        if sorted != expected {
            let missing = expected.iter().filter(|tag| sorted.binary_search(tag).is_err()).count();
            bail!(
                "GET /v2/{TAGS}/tags/list?n={} and its Link pages: expected the {} tags {}..{} once each, got {} tags ({} of the expected missing)",
                sizes.page,
                expected.len(),
                expected[0],
                expected[expected.len() - 1],
                entries.len(),
                missing
            );
        }
        // And the manifest behind a tag is the one pushed.
        let manifest = self.listing_manifest.clone().expect("populated");
        self.registry.get_manifest(TAGS, &tag_name(sizes.entries / 2), &manifest).await?;
        Ok(Measured { metrics: page_metrics("tags", &pages, walk), notes })
    }

    /// Walks `/v2/_catalog?n=<page>` to the end, following Link.
    async fn catalog(&mut self, sizes: &Sizes) -> Result<Measured> {
        if !self.populated {
            bail!("the listing was not populated (the populate scenario failed or was not selected)");
        }
        let first = self.registry.url(&format!("v2/_catalog?n={}", sizes.page));
        let (pages, entries, walk) = self.walk(first, "repositories").await?;
        let mut notes = Vec::new();
        check_pages(&pages, sizes.page, self.strict_listing, "GET /v2/_catalog", &mut notes, &self.server.label)?;
        let mut sorted = entries.clone();
        sorted.sort();
        let duplicates = sorted.windows(2).filter(|pair| pair[0] == pair[1]).count();
        if duplicates > 0 {
            bail!("GET /v2/_catalog?n={} and its Link pages: expected each repository once, got {duplicates} repeated", sizes.page);
        }
        let listed: Vec<&String> = sorted.iter().filter(|name| name.starts_with(CATALOG_PREFIX)).collect();
        let expected: Vec<String> = (0..sizes.entries).map(repository_name).collect();
        if listed.len() != expected.len() || listed.iter().zip(&expected).any(|(a, b)| *a != b) || sorted.binary_search(&TAGS.to_string()).is_err() {
            bail!(
                "GET /v2/_catalog?n={} and its Link pages: expected {TAGS} and the {} repositories {}..{}, got {} repositories, {} of them under {CATALOG_PREFIX}",
                sizes.page,
                expected.len(),
                expected[0],
                expected[expected.len() - 1],
                entries.len(),
                listed.len()
            );
        }
        Ok(Measured { metrics: page_metrics("catalog", &pages, walk), notes })
    }

    /// Follows Link rel="next" from `first`; returns each page's size and latency, all entries, and the walk's time.
    async fn walk(&self, first: url::Url, key: &str) -> Result<(Vec<(usize, Duration)>, Vec<String>, Duration)> {
        let started = Instant::now();
        let mut pages = Vec::new();
        let mut entries = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next {
            let page = self.registry.list_page(&url, key).await?;
            if pages.len() > 10_000_000 {
                bail!("GET {url}: the Link chain did not end after {} pages", pages.len());
            }
            if page.next.as_ref() == Some(&url) {
                bail!("GET {url}: expected a Link to the next page, got a Link to the same page");
            }
            pages.push((page.entries.len(), page.elapsed));
            entries.extend(page.entries);
            next = page.next;
        }
        Ok((pages, entries, started.elapsed()))
    }

    /// Pushes one large blob (monolithic, streamed) and returns MiB/s.
    pub async fn push_big(&self, content: &Content) -> Result<f64> {
        let started = Instant::now();
        self.registry.push_blob(BIG, content).await?;
        let rate = mib_per_second(content.size(), started.elapsed());
        self.registry.head_blob(BIG, content.digest(), content.size()).await.context("after the push")?;
        Ok(rate)
    }
}

/// Page-size and order rules. Kai must follow the spec; for the reference a
/// deviation is noted instead, since it is the baseline, not the subject.
fn check_pages(pages: &[(usize, Duration)], n: usize, strict: bool, request: &str, notes: &mut Vec<String>, label: &str) -> Result<()> {
    if let Some((index, (size, _))) = pages.iter().enumerate().find(|(_, (size, _))| *size > n) {
        let message = format!("{request}?n={n}: expected at most {n} entries a page, got {size} on page {}", index + 1);
        if strict {
            bail!(message);
        }
        notes.push(format!("{label}: {message} (it ignores n, so its \"page\" is the whole list)"));
    }
    Ok(())
}

fn page_metrics(prefix: &str, pages: &[(usize, Duration)], walk: Duration) -> Vec<(&'static str, f64)> {
    let mut latencies: Vec<Duration> = pages.iter().map(|(_, latency)| *latency).collect();
    latencies.sort();
    let median = percentile(&latencies, 0.5).as_secs_f64() * 1e3;
    let p99 = percentile(&latencies, 0.99).as_secs_f64() * 1e3;
    let seconds = walk.as_secs_f64();
    if prefix == "tags" {
        vec![("tags_page_median", median), ("tags_page_p99", p99), ("tags_walk", seconds), ("tags_pages", pages.len() as f64)]
    } else {
        vec![("catalog_page_median", median), ("catalog_page_p99", p99), ("catalog_walk", seconds), ("catalog_pages", pages.len() as f64)]
    }
}

/// Runs `operation` from `connections` workers: `warmup` seconds unmeasured,
/// then `load` seconds measured. Returns requests/s and sorted latencies.
/// The first failure stops every worker and is the result.
async fn load<F, Fut>(sizes: &Sizes, operation: F) -> Result<(f64, Vec<Duration>)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let measure_from = Instant::now() + Duration::from_secs_f64(sizes.warmup_seconds);
    let deadline = measure_from + Duration::from_secs_f64(sizes.load_seconds);
    let mut workers = Vec::new();
    for _ in 0..sizes.connections {
        let operation = operation.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let started = Instant::now();
                if started >= deadline || stop.load(Ordering::Relaxed) {
                    return Ok(latencies);
                }
                if let Err(error) = operation().await {
                    stop.store(true, Ordering::Relaxed);
                    return Err(error);
                }
                if started >= measure_from {
                    latencies.push(started.elapsed());
                }
            }
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
        bail!("no request completed in the measured {} s", sizes.load_seconds);
    }
    all.sort();
    Ok((all.len() as f64 / sizes.load_seconds, all))
}

/// The value at quantile `q` of sorted `values` (nearest rank).
pub fn percentile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn image_manifest(config: &str, config_size: usize, layers: &[(&str, usize)]) -> serde_json::Value {
    json!({
        "schemaVersion": 2,
        "mediaType": crate::registry::OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size },
        "layers": layers.iter().map(|(digest, size)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size
        })).collect::<Vec<_>>(),
    })
}

fn tag_name(i: usize) -> String {
    format!("t{i:06}")
}

fn repository_name(i: usize) -> String {
    format!("{CATALOG_PREFIX}{i:06}")
}

fn mib_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB / elapsed.as_secs_f64()
}
