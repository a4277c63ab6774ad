//! The scenarios, each run the same way against every server.
//!
//! A scenario returns its figures as `(metric key, value)` pairs; the keys
//! are described once, in `report::metric_specs`. Set-up (fixtures, the
//! listing population) is never inside a timed section; checks that are
//! not part of the operation being measured (a HEAD after a push, an
//! unaligned range) run after the clock stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::json;

use crate::content::{fill_random, sha256_digest, Content};
use crate::registry::{Manifest, Registry};
use crate::report::median;
use crate::server::{Kind, Server};

const MIB: f64 = 1024.0 * 1024.0;

/// Sizes and counts; `--smoke` shrinks them all.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sizes {
    pub blob: u64,
    pub chunk: u64,
    pub range: u64,
    /// How many times each pull scenario fetches the blob in a round; the
    /// round's figure is the median pass. One pass of 256 MiB takes about a
    /// tenth of a second, so a single pass caught whatever else the machine
    /// did in that moment.
    pub pull_passes: usize,
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
    /// Walk the whole catalog up to this many entries; sample windows above.
    pub full_catalog_walk_max: usize,
    pub catalog_window_pages: usize,
    pub big_blob: Option<u64>,
    pub big_blob_rss_limit: u64,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            blob: 256 << 20,
            chunk: 8 << 20,
            range: 64 << 20,
            pull_passes: 5,
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
            full_catalog_walk_max: 10_000,
            catalog_window_pages: 10,
            big_blob: Some(4 << 30),
            big_blob_rss_limit: 64 << 20,
        }
    }

    pub fn smoke() -> Sizes {
        Sizes {
            blob: 8 << 20,
            chunk: 1 << 20,
            range: 2 << 20,
            pull_passes: 2,
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

struct Walk {
    pages: Vec<(usize, Duration)>,
    entries: Vec<String>,
    elapsed: Duration,
    /// The last page had no Link to a next one.
    reached_end: bool,
}

pub struct Measured {
    pub metrics: Vec<(&'static str, f64)>,
    pub notes: Vec<String>,
}

impl Measured {
    fn of(metrics: Vec<(&'static str, f64)>) -> Measured {
        Measured {
            metrics,
            notes: Vec::new(),
        }
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

    pub async fn run(
        &mut self,
        scenario: Scenario,
        input: &RoundInput,
        sizes: &Sizes,
    ) -> Result<Measured> {
        match scenario {
            Scenario::PushMonolithic => self.push_monolithic(&input.monolithic).await,
            Scenario::PushChunked => self.push_chunked(&input.chunked, sizes.chunk).await,
            Scenario::PullWhole => self.pull_whole(&input.monolithic, sizes.pull_passes).await,
            Scenario::PullRange => {
                self.pull_range(&input.monolithic, sizes.range, sizes.pull_passes)
                    .await
            }
            Scenario::ManifestGet => self.manifest_load(false, sizes).await,
            Scenario::ManifestHead => self.manifest_load(true, sizes).await,
            Scenario::ManifestPut => self.manifest_put(input.round, sizes).await,
            Scenario::SmallSerial => self.small_blobs(input.round, 1, sizes).await,
            Scenario::SmallParallel => {
                self.small_blobs(input.round, sizes.small_workers, sizes)
                    .await
            }
            Scenario::Populate => self.populate(sizes).await,
            Scenario::TagList => self.tag_list(sizes).await,
            Scenario::Catalog => self.catalog(sizes).await,
        }
    }

    async fn push_monolithic(&self, content: &Content) -> Result<Measured> {
        let started = Instant::now();
        self.registry.push_blob(BLOBS, content).await?;
        let rate = mib_per_second(content.size(), started.elapsed());
        self.registry
            .head_blob(BLOBS, content.digest(), content.size())
            .await
            .context("after the push")?;
        Ok(Measured::of(vec![("push_monolithic", rate)]))
    }

    async fn push_chunked(&self, content: &Content, chunk: u64) -> Result<Measured> {
        let started = Instant::now();
        self.registry
            .push_blob_chunked(BLOBS, content, chunk)
            .await?;
        let rate = mib_per_second(content.size(), started.elapsed());
        self.registry
            .head_blob(BLOBS, content.digest(), content.size())
            .await
            .context("after the push")?;
        Ok(Measured::of(vec![("push_chunked", rate)]))
    }

    async fn pull_whole(&self, content: &Arc<Content>, passes: usize) -> Result<Measured> {
        pull_on_own_thread(&self.server, content, move |registry, content| async move {
            let rate = median_pass_rate(passes, || registry.pull_blob(BLOBS, &content)).await?;
            Ok(Measured::of(vec![("pull_whole", rate)]))
        })
        .await
    }

    async fn pull_range(
        &self,
        content: &Arc<Content>,
        range: u64,
        passes: usize,
    ) -> Result<Measured> {
        pull_on_own_thread(&self.server, content, move |registry, content| async move {
            let rate = median_pass_rate(passes, || async {
                let mut bytes = 0;
                let mut start = 0;
                while start < content.size() {
                    let end = (start + range).min(content.size());
                    bytes += registry.pull_range(BLOBS, &content, start, end).await?;
                    start = end;
                }
                Ok(bytes)
            })
            .await?;
            // An unaligned range across a 1 MiB boundary, and the last byte.
            let odd = (12_345u64).min(content.size() - 1);
            let odd_end = (odd + (1 << 20) + 7).min(content.size());
            registry.pull_range(BLOBS, &content, odd, odd_end).await?;
            registry
                .pull_range(BLOBS, &content, content.size() - 1, content.size())
                .await?;
            Ok(Measured::of(vec![("pull_range", rate)]))
        })
        .await
    }

    /// Pushes the manifest that GET and HEAD fetch (tag `latest`) and its blobs.
    async fn manifest_fixture(&mut self) -> Result<Manifest> {
        if let Some(manifest) = &self.manifest_fixture {
            return Ok(manifest.clone());
        }
        let config = Bytes::from_static(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let config_digest = sha256_digest(&config);
        let mut layer = vec![0u8; 4096];
        fill_random(42, &mut layer);
        let layer = Bytes::from(layer);
        let layer_digest = sha256_digest(&layer);
        self.registry
            .push_small_blob(MANIFESTS, config.clone(), &config_digest)
            .await
            .context("setting up the manifest fixture")?;
        self.registry
            .push_small_blob(MANIFESTS, layer.clone(), &layer_digest)
            .await
            .context("setting up the manifest fixture")?;
        let manifest = Manifest::new(image_manifest(
            &config_digest,
            config.len(),
            &[(&layer_digest, layer.len())],
        ));
        self.registry
            .put_manifest(MANIFESTS, "latest", &manifest)
            .await
            .context("setting up the manifest fixture")?;
        self.manifest_fixture = Some(manifest.clone());
        Ok(manifest)
    }

    /// GET or HEAD of one manifest by tag from `connections` workers for a fixed time.
    async fn manifest_load(&mut self, head: bool, sizes: &Sizes) -> Result<Measured> {
        let manifest = Arc::new(self.manifest_fixture().await?);
        let method = if head {
            reqwest::Method::HEAD
        } else {
            reqwest::Method::GET
        };
        let (rate, latencies) = crate::load::manifest_load(
            &self.server.base,
            MANIFESTS,
            "latest",
            manifest,
            method,
            sizes,
        )
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
        let base: serde_json::Value =
            serde_json::from_slice(&self.manifest_fixture.as_ref().expect("set above").bytes)?;
        let manifests: Vec<(String, Manifest)> = (0..sizes.manifest_puts)
            .map(|i| {
                let mut json = base.clone();
                json["annotations"] =
                    json!({ "org.kai.bench.put": format!("round {round} number {i}") });
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
            self.registry
                .get_manifest(MANIFESTS, tag, manifest)
                .await
                .context("after the PUTs")?;
            self.registry
                .get_manifest(MANIFESTS, &manifest.digest, manifest)
                .await
                .context("after the PUTs")?;
            self.registry
                .head_manifest(MANIFESTS, tag, manifest)
                .await
                .context("after the PUTs")?;
        }
        Ok(Measured::of(vec![
            (
                "manifest_put_median",
                percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            ),
            (
                "manifest_put_p99",
                percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            ),
        ]))
    }

    /// Pushes of distinct small blobs (POST + PUT ?digest=), by `workers` at once.
    async fn small_blobs(&self, round: u32, workers: usize, sizes: &Sizes) -> Result<Measured> {
        let blobs: Vec<(Bytes, String)> = (0..sizes.small_blobs)
            .map(|i| {
                let mut data = vec![0u8; sizes.small_blob];
                fill_random(
                    (u64::from(round) << 40) ^ ((workers as u64) << 32) ^ i as u64,
                    &mut data,
                );
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
        Ok(Measured::of(vec![(
            if workers == 1 {
                "small_serial"
            } else {
                "small_parallel"
            },
            rate,
        )]))
    }

    /// `entries` tags of one manifest in one repository, and `entries`
    /// repositories each holding that manifest, by parallel PUTs.
    async fn populate(&mut self, sizes: &Sizes) -> Result<Measured> {
        let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"bench":"listing"}"#);
        let config_digest = sha256_digest(&config);
        let manifest = Manifest::new(image_manifest(&config_digest, config.len(), &[]));
        self.registry
            .push_small_blob(TAGS, config.clone(), &config_digest)
            .await?;
        let registry = &self.registry;
        let label = &self.server.label;
        let entries = sizes.entries;
        let done = std::sync::atomic::AtomicUsize::new(0);
        let progress = |what: &str| {
            let count = done.fetch_add(1, Ordering::Relaxed) + 1;
            if entries >= 10_000 && count * 10 / entries != (count - 1) * 10 / entries {
                eprintln!("    {label}: {count} of {entries} {what}");
            }
        };
        let started = Instant::now();
        futures::stream::iter(0..sizes.entries)
            .map(|i| {
                let (manifest, progress) = (&manifest, &progress);
                async move {
                    registry.put_manifest(TAGS, &tag_name(i), manifest).await?;
                    progress("tags");
                    Ok::<(), anyhow::Error>(())
                }
            })
            .buffer_unordered(sizes.populate_workers)
            .try_collect::<Vec<()>>()
            .await?;
        let tags_seconds = started.elapsed().as_secs_f64();
        done.store(0, Ordering::Relaxed);
        let started = Instant::now();
        futures::stream::iter(0..sizes.entries)
            .map(|i| {
                let (manifest, config, config_digest, progress) =
                    (&manifest, &config, &config_digest, &progress);
                async move {
                    let name = repository_name(i);
                    registry
                        .mount_blob(&name, TAGS, config.clone(), config_digest)
                        .await?;
                    registry.put_manifest(&name, "latest", manifest).await?;
                    progress("repositories");
                    Ok::<(), anyhow::Error>(())
                }
            })
            .buffer_unordered(sizes.populate_workers)
            .try_collect::<Vec<()>>()
            .await?;
        let repositories_seconds = started.elapsed().as_secs_f64();
        self.listing_manifest = Some(manifest);
        self.populated = true;
        Ok(Measured::of(vec![
            ("populate_tags", tags_seconds),
            ("populate_repositories", repositories_seconds),
        ]))
    }

    /// Walks `/v2/bench/tags/tags/list?n=<page>` to the end, following Link.
    async fn tag_list(&mut self, sizes: &Sizes) -> Result<Measured> {
        if !self.populated {
            bail!(
                "the listing was not populated (the populate scenario failed or was not selected)"
            );
        }
        let first = self
            .registry
            .url(&format!("v2/{TAGS}/tags/list?n={}", sizes.page));
        let walk = self.walk(first, "tags", usize::MAX).await?;
        let entries = &walk.entries;
        let mut notes = Vec::new();
        let expected: Vec<String> = (0..sizes.entries).map(tag_name).collect();
        let request = format!(
            "GET /v2/{TAGS}/tags/list?n={} and its Link pages",
            sizes.page
        );
        check_pages(
            &walk.pages,
            sizes.page,
            self.strict_listing,
            &format!("GET /v2/{TAGS}/tags/list"),
            &mut notes,
            &self.server.label,
        )?;
        check_sorted(
            entries,
            self.strict_listing,
            &request,
            &mut notes,
            &self.server.label,
        )?;
        let mut sorted = entries.clone();
        sorted.sort();
        if sorted != expected {
            let missing = expected
                .iter()
                .filter(|tag| sorted.binary_search(tag).is_err())
                .count();
            bail!(
                "{request}: expected the {} tags {}..{} once each, got {} tags ({} of the expected missing)",
                expected.len(),
                expected[0],
                expected[expected.len() - 1],
                entries.len(),
                missing
            );
        }
        // And the manifest behind a tag is the one pushed.
        let manifest = self.listing_manifest.clone().expect("populated");
        self.registry
            .get_manifest(TAGS, &tag_name(sizes.entries / 2), &manifest)
            .await?;
        let mut metrics = page_metrics("tags", &walk.pages);
        metrics.push(("tags_walk", walk.elapsed.as_secs_f64()));
        Ok(Measured { metrics, notes })
    }

    /// `/v2/_catalog?n=<page>`: the whole walk when the listing is small
    /// enough, else windows of consecutive pages at its start, middle and
    /// end (entered with `last=`), since the reference takes time in
    /// proportion to the repositories before `last` for every page.
    async fn catalog(&mut self, sizes: &Sizes) -> Result<Measured> {
        if !self.populated {
            bail!(
                "the listing was not populated (the populate scenario failed or was not selected)"
            );
        }
        let n = sizes.page;
        let mut notes = Vec::new();
        if sizes.entries <= sizes.full_catalog_walk_max {
            let first = self.registry.url(&format!("v2/_catalog?n={n}"));
            let walk = self.walk(first, "repositories", usize::MAX).await?;
            check_pages(
                &walk.pages,
                n,
                self.strict_listing,
                "GET /v2/_catalog",
                &mut notes,
                &self.server.label,
            )?;
            check_sorted(
                &walk.entries,
                self.strict_listing,
                &format!("GET /v2/_catalog?n={n} and its Link pages"),
                &mut notes,
                &self.server.label,
            )?;
            let mut sorted = walk.entries.clone();
            sorted.sort();
            let duplicates = sorted.windows(2).filter(|pair| pair[0] == pair[1]).count();
            if duplicates > 0 {
                bail!("GET /v2/_catalog?n={n} and its Link pages: expected each repository once, got {duplicates} repeated");
            }
            check_catalog_run(
                &walk.entries,
                0,
                true,
                sizes.entries,
                &format!("GET /v2/_catalog?n={n} and its Link pages"),
            )?;
            if sorted.binary_search(&TAGS.to_string()).is_err() {
                bail!("GET /v2/_catalog?n={n} and its Link pages: expected {TAGS} among the repositories, got none");
            }
            let mut metrics = page_metrics("catalog", &walk.pages);
            metrics.push(("catalog_walk", walk.elapsed.as_secs_f64()));
            return Ok(Measured { metrics, notes });
        }
        let window = sizes.catalog_window_pages;
        let span = window * n;
        let starts = [0, sizes.entries / 2, sizes.entries.saturating_sub(span)];
        let mut pages = Vec::new();
        for start in starts {
            let mut first = self.registry.url("v2/_catalog");
            first.query_pairs_mut().append_pair("n", &n.to_string());
            if start > 0 {
                first
                    .query_pairs_mut()
                    .append_pair("last", &repository_name(start - 1));
            }
            let request = format!("GET {first} and {} pages on", window - 1);
            let walk = self.walk(first, "repositories", window).await?;
            check_pages(
                &walk.pages,
                n,
                self.strict_listing,
                "GET /v2/_catalog",
                &mut notes,
                &self.server.label,
            )?;
            check_sorted(
                &walk.entries,
                self.strict_listing,
                &request,
                &mut notes,
                &self.server.label,
            )?;
            check_catalog_run(
                &walk.entries,
                start,
                walk.reached_end,
                sizes.entries,
                &request,
            )?;
            pages.extend(walk.pages);
        }
        Ok(Measured {
            metrics: page_metrics("catalog", &pages),
            notes,
        })
    }

    /// Follows Link rel="next" from `first` for at most `max_pages` pages.
    async fn walk(&self, first: url::Url, key: &str, max_pages: usize) -> Result<Walk> {
        let started = Instant::now();
        let mut walk = Walk {
            pages: Vec::new(),
            entries: Vec::new(),
            elapsed: Duration::ZERO,
            reached_end: false,
        };
        let mut next = Some(first);
        while let Some(url) = next {
            if walk.pages.len() == max_pages {
                walk.elapsed = started.elapsed();
                return Ok(walk);
            }
            let page = self.registry.list_page(&url, key).await?;
            if page.next.as_ref() == Some(&url) {
                bail!("GET {url}: expected a Link to the next page, got a Link to the same page");
            }
            if walk.pages.len() > 10_000_000 {
                bail!(
                    "GET {url}: the Link chain did not end after {} pages",
                    walk.pages.len()
                );
            }
            walk.pages.push((page.entries.len(), page.elapsed));
            walk.entries.extend(page.entries);
            next = page.next;
        }
        walk.reached_end = true;
        walk.elapsed = started.elapsed();
        Ok(walk)
    }

    /// Pushes one large blob (monolithic, streamed) and returns MiB/s.
    pub async fn push_big(&self, content: &Content) -> Result<f64> {
        let started = Instant::now();
        self.registry.push_blob(BIG, content).await?;
        let rate = mib_per_second(content.size(), started.elapsed());
        self.registry
            .head_blob(BIG, content.digest(), content.size())
            .await
            .context("after the push")?;
        Ok(rate)
    }
}

/// Page-size and order rules. Kai must follow the spec; for the reference a
/// deviation is noted instead, since it is the baseline, not the subject.
fn check_pages(
    pages: &[(usize, Duration)],
    n: usize,
    strict: bool,
    request: &str,
    notes: &mut Vec<String>,
    label: &str,
) -> Result<()> {
    if let Some((index, (size, _))) = pages.iter().enumerate().find(|(_, (size, _))| *size > n) {
        let message = format!(
            "{request}?n={n}: expected at most {n} entries a page, got {size} on page {}",
            index + 1
        );
        if strict {
            bail!(message);
        }
        notes.push(format!(
            "{label}: {message} (it ignores n, so its \"page\" is the whole list)"
        ));
    }
    Ok(())
}

fn page_metrics(prefix: &str, pages: &[(usize, Duration)]) -> Vec<(&'static str, f64)> {
    let mut latencies: Vec<Duration> = pages.iter().map(|(_, latency)| *latency).collect();
    latencies.sort();
    let median = percentile(&latencies, 0.5).as_secs_f64() * 1e3;
    let p99 = percentile(&latencies, 0.99).as_secs_f64() * 1e3;
    let count = pages.len() as f64;
    if prefix == "tags" {
        vec![
            ("tags_page_median", median),
            ("tags_page_p99", p99),
            ("tags_pages", count),
        ]
    } else {
        vec![
            ("catalog_page_median", median),
            ("catalog_page_p99", p99),
            ("catalog_pages", count),
        ]
    }
}

/// Entries must come in lexical order (strictly: no repeats).
fn check_sorted(
    entries: &[String],
    strict: bool,
    request: &str,
    notes: &mut Vec<String>,
    label: &str,
) -> Result<()> {
    if let Some(position) = entries.windows(2).position(|pair| pair[0] >= pair[1]) {
        let message = format!(
            "{request}: expected entries in lexical order, got {:?} before {:?} (entries {} and {})",
            entries[position],
            entries[position + 1],
            position + 1,
            position + 2
        );
        if strict {
            bail!(message);
        }
        notes.push(format!("{label}: {message}"));
    }
    Ok(())
}

/// The populated repositories in `entries` must be consecutive from number
/// `start`, and run to the last one when the walk reached the end.
fn check_catalog_run(
    entries: &[String],
    start: usize,
    reached_end: bool,
    total: usize,
    request: &str,
) -> Result<()> {
    let listed: Vec<&String> = entries
        .iter()
        .filter(|name| name.starts_with(CATALOG_PREFIX))
        .collect();
    if listed.is_empty() {
        bail!(
            "{request}: expected repositories from {} on, got none under {CATALOG_PREFIX}",
            repository_name(start)
        );
    }
    for (offset, name) in listed.iter().enumerate() {
        let expected = repository_name(start + offset);
        if **name != expected {
            bail!("{request}: expected the repositories under {CATALOG_PREFIX} to run on from {} without a gap, got {name} where {expected} belongs", repository_name(start));
        }
    }
    if reached_end && start + listed.len() != total {
        bail!(
            "{request}: expected the pages to run to {}, got the last Link page ending with {} under {CATALOG_PREFIX}",
            repository_name(total - 1),
            listed.last().expect("not empty")
        );
    }
    Ok(())
}

/// Runs the pull `work` of `content` from `server` on a thread of its own,
/// with a client of its own on a current-thread runtime, after a HEAD of the
/// blob that opens the connection before `work` starts its clock. hyper's
/// connection task and the task that checks the received bytes then take
/// turns on one thread, as curl and Go's client read on one. On the shared
/// two-thread runtime each received chunk passed from the connection's task
/// to the checking task, often on the other thread, with a wake-up each way.
/// Those hand-offs set the pull rate for both servers (about 2.0-2.3 GB/s
/// each, while curl pulled 2.1-2.5 GB/s from the reference and 3.0-3.6 GB/s
/// from Kai), so the benchmark measured itself rather than the servers.
async fn pull_on_own_thread<F, Work>(
    server: &Server,
    content: &Arc<Content>,
    work: F,
) -> Result<Measured>
where
    F: FnOnce(Registry, Arc<Content>) -> Work + Send + 'static,
    Work: std::future::Future<Output = Result<Measured>>,
{
    let base = server.base.clone();
    let content = Arc::clone(content);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kai-bench-pull".to_string())
        .spawn(move || {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the pull thread's runtime")
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        let registry = Registry::new(base)?;
                        registry
                            .head_blob(BLOBS, content.digest(), content.size())
                            .await?;
                        work(registry, content).await
                    })
                });
            // The scenario may have timed out and stopped listening.
            let _ = sender.send(outcome);
        })
        .context("starting the pull thread")?;
    receiver.await.context("the pull thread panicked")?
}

/// Runs `pass` (which returns the bytes it moved) `passes` times, one after
/// another, and returns the median rate in MiB/s.
async fn median_pass_rate<Pass, Moved>(passes: usize, mut pass: Pass) -> Result<f64>
where
    Pass: FnMut() -> Moved,
    Moved: std::future::Future<Output = Result<u64>>,
{
    let mut rates = Vec::with_capacity(passes);
    for _ in 0..passes {
        let started = Instant::now();
        let bytes = pass().await?;
        rates.push(mib_per_second(bytes, started.elapsed()));
    }
    Ok(median(&rates).unwrap_or(0.0))
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
