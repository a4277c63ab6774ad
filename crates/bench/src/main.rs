//! `kai-bench`: Kai side by side with the reference registry (CNCF distribution).
//!
//! Both registries start on fresh filesystem storage in temporary
//! directories and get the same scenarios through the OCI distribution HTTP
//! API, interleaved scenario by scenario over several rounds (the order of
//! the two servers alternates between rounds). Every response is checked; a
//! failed check is reported as a failure and makes the exit status 1, and
//! never becomes a figure. See BENCHMARKS.md at the repository root.

mod content;
mod load;
mod machine;
mod registry;
mod report;
mod scenarios;
mod server;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;

use crate::content::Content;
use crate::report::{BigBlob, Failure, MetricResult, ResourceSample, Results};
use crate::scenarios::{Scenario, Sizes, Target};
use crate::server::{process_usage, Server};

const DEFAULT_REFERENCE: &str = "/usr/bin/docker-registry";

#[derive(Parser, Debug)]
#[command(
    about = "Benchmarks Kai against the reference registry (CNCF distribution) on this machine"
)]
struct Args {
    /// Rounds; each runs every scenario on both servers, in alternating order.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// One round at small sizes (8 MiB blobs, 1,000 listing entries, 2 s load runs): a correctness check for CI.
    #[arg(long)]
    smoke: bool,
    /// The Kai binary [default: target/release/kai of this workspace].
    #[arg(long)]
    kai: Option<PathBuf>,
    /// The reference registry binary (Debian package docker-registry; installed with apt-get when the default is absent).
    #[arg(long, default_value = DEFAULT_REFERENCE)]
    reference: PathBuf,
    /// Benchmark the reference against a second reference instance instead of Kai (proves the harness without Kai).
    #[arg(long)]
    against_self: bool,
    /// Only these scenarios (comma separated): push, push-chunked, pull, pull-range, manifest-get,
    /// manifest-head, manifest-put, small-serial, small-parallel, populate, tag-list, catalog, big.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Listing entries (tags, and repositories) [default: 100000, or 1000 with --smoke].
    #[arg(long)]
    entries: Option<usize>,
    /// Walk the whole catalog up to this many entries, sample windows of pages above [default: 10000].
    #[arg(long, hide = true)]
    full_catalog_walk_max: Option<usize>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the servers' temporary storage directories go [default: the system temp dir].
    #[arg(long)]
    workdir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("kai-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether every check passed.
async fn run(args: Args) -> Result<bool> {
    let mut sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    if let Some(entries) = args.entries {
        if entries == 0 {
            bail!("--entries must be at least 1");
        }
        sizes.entries = entries;
    }
    if let Some(max) = args.full_catalog_walk_max {
        sizes.full_catalog_walk_max = max;
    }
    let rounds = if args.smoke { 1 } else { args.rounds.max(1) };
    let known: Vec<&str> = Scenario::ALL
        .iter()
        .map(|scenario| scenario.key())
        .chain(["big"])
        .collect();
    if let Some(unknown) = args.only.iter().find(|key| !known.contains(&key.as_str())) {
        bail!(
            "--only: unknown scenario {unknown:?}; known: {}",
            known.join(", ")
        );
    }
    let selected = |key: &str| args.only.is_empty() || args.only.iter().any(|only| only == key);
    let mut scenarios: Vec<Scenario> = Scenario::ALL
        .iter()
        .copied()
        .filter(|scenario| selected(scenario.key()))
        .collect();
    // The listings need their population; the pulls need the pushed blob.
    if (scenarios.contains(&Scenario::TagList) || scenarios.contains(&Scenario::Catalog))
        && !scenarios.contains(&Scenario::Populate)
    {
        scenarios.insert(
            scenarios
                .iter()
                .position(|s| matches!(s, Scenario::TagList | Scenario::Catalog))
                .unwrap_or(0),
            Scenario::Populate,
        );
    }
    if (scenarios.contains(&Scenario::PullWhole) || scenarios.contains(&Scenario::PullRange))
        && !scenarios.contains(&Scenario::PushMonolithic)
    {
        scenarios.insert(0, Scenario::PushMonolithic);
    }

    let reference_binary = ensure_reference(&args.reference)?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let kai_binary = args
        .kai
        .clone()
        .unwrap_or_else(|| workspace.join("target/release/kai"));
    if !args.against_self && !kai_binary.is_file() {
        bail!(
            "no Kai binary at {}: build it with `cargo build --release --bin kai`, pass --kai PATH, \
             or pass --against-self to benchmark the reference against itself",
            kai_binary.display()
        );
    }
    let workdir = args.workdir.clone().unwrap_or_else(std::env::temp_dir);
    let reference_version = command_output(&reference_binary, &["--version"])
        .unwrap_or_else(|_| "version unknown".into());

    // The machine's SHA-256 speed, which pushes are judged against, and its
    // disk's rate of durable writes, which bounds them, are measured before
    // the servers start and again after each round, while they are idle: the
    // best figure is the one least lowered by other load. The smoke round
    // spares the disk.
    let judges_pushes =
        scenarios.contains(&Scenario::PushMonolithic) || scenarios.contains(&Scenario::PushChunked);
    let sha256 = if judges_pushes {
        Some(measure_sha256("before the servers start").await?)
    } else {
        None
    };
    let disk = if judges_pushes && !args.smoke {
        Some(measure_disk(&workdir, "before the servers start").await?)
    } else {
        None
    };
    eprintln!("kai-bench: starting the servers");
    let candidate = if args.against_self {
        Server::start_reference("reference-b", &reference_binary, &workdir).await?
    } else {
        Server::start_kai("kai", &kai_binary, &workdir).await?
    };
    let reference = Server::start_reference("reference", &reference_binary, &workdir).await?;
    let mut targets = [Target::new(candidate)?, Target::new(reference)?];
    let labels = [
        targets[0].server.label.clone(),
        targets[1].server.label.clone(),
    ];

    let mut results = Results {
        machine: machine(),
        command: command_line(),
        smoke: args.smoke,
        rounds,
        servers: labels.clone(),
        settings: settings(
            &args,
            &kai_binary,
            &reference_binary,
            &reference_version,
            &workdir,
        ),
        sizes: sizes.clone(),
        metrics: report::metric_specs(&sizes)
            .into_iter()
            .map(|spec| MetricResult {
                spec,
                values: Vec::new(),
            })
            .collect(),
        resources: Vec::new(),
        big_blob: Vec::new(),
        sha256_mib_per_second: sha256,
        disk_mib_per_second: disk,
        notes: Vec::new(),
        failures: Vec::new(),
    };
    for setting in &results.settings {
        eprintln!("kai-bench: {setting}");
    }
    if targets.iter().any(|target| !target.server.reset_peak_rss()) {
        results.note("the kernel refused to reset VmHWM (clear_refs), so peak RSS figures are since the server started".into());
    }
    let scenario_timeout = if args.smoke {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(40 * 60)
    };

    for round in 1..=rounds {
        let (monolithic, chunked) = tokio::task::spawn_blocking({
            let size = sizes.blob;
            move || {
                (
                    Content::new(1_000 + u64::from(round), size),
                    Content::new(2_000 + u64::from(round), size),
                )
            }
        })
        .await?;
        let input = scenarios::RoundInput {
            round,
            monolithic: Arc::new(monolithic),
            chunked: Arc::new(chunked),
        };
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        let mut round_peak = [0f64; 2];
        let mut round_cpu = [0f64; 2];
        for &scenario in &scenarios {
            if scenario.once() && round != 1 {
                continue;
            }
            for index in order {
                let target = &mut targets[index];
                if !target.alive {
                    continue;
                }
                target.server.reset_peak_rss();
                let before = target.server.usage()?;
                let client_before = process_usage(std::process::id())?;
                let started = Instant::now();
                let outcome =
                    tokio::time::timeout(scenario_timeout, target.run(scenario, &input, &sizes))
                        .await;
                let elapsed = started.elapsed();
                let client_after = process_usage(std::process::id())?;
                let running = target.server.check_running();
                let after = target.server.usage().ok();
                let mut progress = format!(
                    "[round {round}/{rounds}] {:<15} {:<12} {:>7.2} s",
                    scenario.key(),
                    target.server.label,
                    elapsed.as_secs_f64()
                );
                match outcome {
                    Ok(Ok(measured)) => {
                        for (key, value) in &measured.metrics {
                            results.record(round, index, key, *value);
                            progress.push_str(&format!("  {key}={value:.2}"));
                        }
                        for note in measured.notes {
                            results.note(note);
                        }
                    }
                    Ok(Err(error)) => {
                        progress.push_str("  FAILED");
                        results.failures.push(failure(
                            round,
                            &labels[index],
                            scenario.key(),
                            format!("{error:#}"),
                        ));
                    }
                    Err(_) => {
                        progress.push_str("  TIMED OUT");
                        results.failures.push(failure(
                            round,
                            &labels[index],
                            scenario.key(),
                            format!(
                                "did not finish within {scenario_timeout:?}\n{}",
                                target.server.log_tail(20)
                            ),
                        ));
                    }
                }
                if let Err(error) = running {
                    results.failures.push(failure(
                        round,
                        &labels[index],
                        scenario.key(),
                        format!("the server stopped: {error:#}"),
                    ));
                    target.alive = false;
                }
                if let Some(after) = after {
                    let sample = ResourceSample {
                        round,
                        scenario: scenario.key(),
                        server: index,
                        elapsed_seconds: elapsed.as_secs_f64(),
                        server_cpu_seconds: after.cpu_seconds - before.cpu_seconds,
                        server_peak_rss_mib: after.peak_rss_bytes as f64 / 1048576.0,
                        client_cpu_seconds: client_after.cpu_seconds - client_before.cpu_seconds,
                    };
                    progress.push_str(&format!(
                        "  [server cpu {:.2} s, peak rss {:.1} MiB; client cpu {:.2} s]",
                        sample.server_cpu_seconds,
                        sample.server_peak_rss_mib,
                        sample.client_cpu_seconds
                    ));
                    if !scenario.once() {
                        round_peak[index] = round_peak[index].max(sample.server_peak_rss_mib);
                        round_cpu[index] += sample.server_cpu_seconds;
                    }
                    results.resources.push(sample);
                }
                eprintln!("{progress}");
            }
        }
        for index in 0..2 {
            if targets[index].alive && round_peak[index] > 0.0 {
                results.record(round, index, "peak_rss", round_peak[index]);
                results.record(round, index, "server_cpu", round_cpu[index]);
            }
        }
        if let Some(best) = results.sha256_mib_per_second {
            let sha256 = measure_sha256(&format!("after round {round}")).await?;
            results.sha256_mib_per_second = Some(best.max(sha256));
        }
        if let Some(best) = results.disk_mib_per_second {
            let disk = measure_disk(&workdir, &format!("after round {round}")).await?;
            results.disk_mib_per_second = Some(best.max(disk));
        }
    }

    eprintln!("kai-bench: stopping the servers");
    let [mut first, mut second] = targets;
    let stopped = futures::future::join(first.server.stop(), second.server.stop()).await;
    for (label, outcome) in labels.iter().zip([stopped.0, stopped.1]) {
        if let Err(error) = outcome {
            results
                .failures
                .push(failure(0, label, "stop", format!("SIGTERM: {error:#}")));
        }
    }

    // The large push runs on a fresh server of each kind, one at a time, so
    // its peak RSS is the push's own and not what the rounds left behind.
    if let Some(size) = sizes.big_blob.filter(|_| selected("big")) {
        eprintln!(
            "kai-bench: hashing the {} MiB blob for the large push check",
            size >> 20
        );
        let content = tokio::task::spawn_blocking(move || Content::new(4_242, size)).await?;
        for index in [1, 0] {
            let label = &labels[index];
            let fresh = if index == 0 && !args.against_self {
                Server::start_kai(label, &kai_binary, &workdir).await
            } else {
                Server::start_reference(label, &reference_binary, &workdir).await
            };
            let limit = (index == 0 && !args.against_self)
                .then_some(sizes.big_blob_rss_limit as f64 / 1048576.0);
            match large_blob_check(fresh, &content, limit, scenario_timeout).await {
                Ok(big) => {
                    eprintln!(
                        "[large blob]    {label:<12} {:.1} MiB/s, peak rss {:.1} MiB",
                        big.rate_mib_per_second, big.peak_rss_mib
                    );
                    if let Some(limit) = limit.filter(|limit| big.peak_rss_mib >= *limit) {
                        results.failures.push(failure(
                            0,
                            label,
                            "big",
                            format!(
                                "pushing a {} MiB blob to a fresh server: expected peak RSS under {limit:.0} MiB, got {:.1} MiB",
                                size >> 20,
                                big.peak_rss_mib
                            ),
                        ));
                    }
                    results.big_blob.push(BigBlob {
                        server: label.clone(),
                        ..big
                    });
                }
                Err(error) => results
                    .failures
                    .push(failure(0, label, "big", format!("{error:#}"))),
            }
        }
    }

    println!("{}", results.render());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("kai-bench: wrote {}", path.display());
    }
    // Removing a populated reference's storage (millions of small files at
    // 100,000 entries) takes a while, so it comes after the report.
    eprintln!("kai-bench: removing the servers' storage");
    let removals = [first, second]
        .map(|target| tokio::task::spawn_blocking(move || target.server.remove_storage()));
    for removal in removals {
        removal.await??;
    }
    Ok(results.failures.is_empty())
}

/// Pushes `content` to a freshly started server, then stops it and removes its storage.
async fn large_blob_check(
    fresh: Result<Server>,
    content: &Content,
    limit_mib: Option<f64>,
    timeout: Duration,
) -> Result<BigBlob> {
    let mut target = Target::new(fresh.context("starting a fresh server")?)?;
    target.server.reset_peak_rss();
    let outcome = tokio::time::timeout(timeout, target.push_big(content)).await;
    let usage = target.server.usage();
    target
        .server
        .check_running()
        .context("after the large push")?;
    target.server.stop().await?;
    tokio::task::spawn_blocking(move || target.server.remove_storage()).await??;
    let rate = outcome.map_err(|_| anyhow::anyhow!("did not finish within {timeout:?}"))??;
    Ok(BigBlob {
        server: String::new(),
        size_mib: content.size() >> 20,
        rate_mib_per_second: rate,
        peak_rss_mib: usage?.peak_rss_bytes as f64 / 1048576.0,
        limit_mib,
    })
}

fn failure(round: u32, server: &str, scenario: &str, error: String) -> Failure {
    Failure {
        round,
        server: server.to_string(),
        scenario: scenario.to_string(),
        error,
    }
}

/// The reference binary; the default one is installed from Debian when absent.
fn ensure_reference(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path != Path::new(DEFAULT_REFERENCE) {
        bail!("no reference registry binary at {}", path.display());
    }
    eprintln!(
        "kai-bench: {DEFAULT_REFERENCE} is absent; installing the Debian package docker-registry"
    );
    for arguments in [
        &["update"][..],
        &[
            "install",
            "-y",
            "--no-install-recommends",
            "docker-registry",
        ][..],
    ] {
        let status = std::process::Command::new("apt-get")
            .args(arguments)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status}); install docker-registry as root, or pass --reference PATH", arguments.join(" "));
        }
    }
    if !path.is_file() {
        bail!("the docker-registry package did not provide {DEFAULT_REFERENCE}; pass --reference PATH");
    }
    Ok(path.to_path_buf())
}

fn command_output(program: &Path, args: &[&str]) -> Result<String> {
    let output = std::process::Command::new(program).args(args).output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1048576.0);
    format!(
        "{cores} cores ({model}), {memory_gib:.0} GiB RAM; client and servers share these cores"
    )
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut command = "cargo run --release -p kai-bench --".to_string();
    for arg in args {
        command.push(' ');
        command.push_str(&arg);
    }
    command
}

/// This machine's single-core SHA-256 speed now, printed with `when`.
async fn measure_sha256(when: &str) -> Result<f64> {
    let sha256 = tokio::task::spawn_blocking(machine::single_core_sha256_mib_per_second).await?;
    eprintln!("kai-bench: single-core SHA-256 {when}: {sha256:.0} MiB/s");
    Ok(sha256)
}

/// The rate of durable writes of the disk under `workdir` now, printed with
/// `when`.
async fn measure_disk(workdir: &Path, when: &str) -> Result<f64> {
    let directory = workdir.to_owned();
    let disk =
        tokio::task::spawn_blocking(move || machine::durable_write_mib_per_second(&directory))
            .await?
            .with_context(|| format!("measuring durable writes in {}", workdir.display()))?;
    eprintln!(
        "kai-bench: durable writes to the disk under {} {when}: {disk:.0} MiB/s",
        workdir.display()
    );
    Ok(disk)
}

fn settings(
    args: &Args,
    kai: &Path,
    reference: &Path,
    reference_version: &str,
    workdir: &Path,
) -> Vec<String> {
    let candidate = if args.against_self {
        format!(
            "candidate: a second reference instance ({}), not Kai",
            reference.display()
        )
    } else {
        format!(
            "candidate: {} serve --listen 127.0.0.1:0 --data <temp dir>",
            kai.display()
        )
    };
    vec![
        candidate,
        format!(
            "reference: {} ({reference_version}), filesystem storage, delete enabled, no blob descriptor cache",
            reference.display()
        ),
        format!("storage: fresh filesystem directories under {} for each server", workdir.display()),
        "durability: fsync before a write is acknowledged (Kai's default: blob bytes, directory entries and metadata commits; blobs of at most 64 KiB are stored in the metadata database by the synced commit that links them; only a new upload session's row is written unsynced; Kai writes the whole blocks of an upload with O_DIRECT, around the page cache, and distribution through it; distribution's filesystem driver fsyncs each file it writes, in every PATCH the upload's data and hash state, as strace shows)".into(),
        "digests: verified by the server on every blob push and manifest PUT; pulls compared byte for byte by the client".into(),
        "logging: each server's default level, written to a log file in its temp dir (the reference logs every request at info)".into(),
        "client: in process, Rust reqwest/hyper over HTTP/1.1 keep-alive on loopback, bodies streamed from generated data".into(),
    ]
}
