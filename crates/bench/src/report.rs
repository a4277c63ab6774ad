//! Figures per round and server, their summaries, and the printed table.

use serde::Serialize;

use crate::scenarios::Sizes;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// What one metric measures, and the target for candidate/reference.
#[derive(Clone, Debug, Serialize)]
pub struct MetricSpec {
    pub key: &'static str,
    pub label: String,
    pub unit: &'static str,
    pub better: Better,
    /// The ratio candidate/reference to reach: at least (Higher) or at most (Lower).
    pub target: Option<f64>,
}

fn spec(
    key: &'static str,
    label: String,
    unit: &'static str,
    better: Better,
    target: Option<f64>,
) -> MetricSpec {
    MetricSpec {
        key,
        label,
        unit,
        better,
        target,
    }
}

/// Every metric, in the order the table shows them.
pub fn metric_specs(sizes: &Sizes) -> Vec<MetricSpec> {
    use Better::{Higher, Lower};
    let mib = |bytes: u64| format!("{} MiB", bytes >> 20);
    let c = sizes.connections;
    let sampled = if sizes.entries > sizes.full_catalog_walk_max {
        format!(
            " at start/middle/end, {} pages each",
            sizes.catalog_window_pages
        )
    } else {
        String::new()
    };
    vec![
        spec(
            "push_monolithic",
            format!("blob push, monolithic {}", mib(sizes.blob)),
            "MiB/s",
            Higher,
            Some(3.0),
        ),
        spec(
            "push_chunked",
            format!(
                "blob push, {} chunks of {}",
                sizes.blob / sizes.chunk,
                mib(sizes.chunk)
            ),
            "MiB/s",
            Higher,
            Some(3.0),
        ),
        spec(
            "pull_whole",
            format!(
                "blob pull, whole {}, median of {} passes",
                mib(sizes.blob),
                sizes.pull_passes
            ),
            "MiB/s",
            Higher,
            Some(1.2),
        ),
        spec(
            "pull_range",
            format!(
                "blob pull, {} ranges, median of {} passes",
                mib(sizes.range),
                sizes.pull_passes
            ),
            "MiB/s",
            Higher,
            Some(1.2),
        ),
        spec(
            "manifest_get_rate",
            format!("manifest GET by tag, {c} conns"),
            "req/s",
            Higher,
            Some(12.0),
        ),
        spec(
            "manifest_get_p99",
            format!("manifest GET by tag, {c} conns, p99"),
            "ms",
            Lower,
            None,
        ),
        spec(
            "manifest_head_rate",
            format!("manifest HEAD by tag, {c} conns"),
            "req/s",
            Higher,
            Some(12.0),
        ),
        spec(
            "manifest_head_p99",
            format!("manifest HEAD by tag, {c} conns, p99"),
            "ms",
            Lower,
            None,
        ),
        spec(
            "manifest_put_median",
            format!("manifest PUT x{}, serial, median", sizes.manifest_puts),
            "ms",
            Lower,
            Some(0.3),
        ),
        spec(
            "manifest_put_p99",
            format!("manifest PUT x{}, serial, p99", sizes.manifest_puts),
            "ms",
            Lower,
            Some(0.3),
        ),
        spec(
            "small_serial",
            format!(
                "{} KiB blob push x{}, serial",
                sizes.small_blob >> 10,
                sizes.small_blobs
            ),
            "push/s",
            Higher,
            Some(5.0),
        ),
        spec(
            "small_parallel",
            format!(
                "{} KiB blob push x{}, {} workers",
                sizes.small_blob >> 10,
                sizes.small_blobs,
                sizes.small_workers
            ),
            "push/s",
            Higher,
            Some(5.0),
        ),
        spec(
            "tags_page_median",
            format!("tag list page (n={}), median", sizes.page),
            "ms",
            Lower,
            Some(0.1),
        ),
        spec(
            "tags_page_p99",
            format!("tag list page (n={}), p99", sizes.page),
            "ms",
            Lower,
            None,
        ),
        spec(
            "tags_walk",
            format!("tag list, all {} tags, all pages", sizes.entries),
            "s",
            Lower,
            None,
        ),
        spec(
            "tags_pages",
            "tag list, pages".to_string(),
            "pages",
            Lower,
            None,
        ),
        spec(
            "catalog_page_median",
            format!("catalog page (n={}){sampled}, median", sizes.page),
            "ms",
            Lower,
            Some(0.1),
        ),
        spec(
            "catalog_page_p99",
            format!("catalog page (n={}){sampled}, p99", sizes.page),
            "ms",
            Lower,
            None,
        ),
        spec(
            "catalog_walk",
            format!("catalog, all {}+ repos, all pages", sizes.entries),
            "s",
            Lower,
            None,
        ),
        spec(
            "catalog_pages",
            "catalog, pages".to_string(),
            "pages",
            Lower,
            None,
        ),
        spec(
            "populate_tags",
            format!(
                "populate {} tags ({} parallel PUTs)",
                sizes.entries, sizes.populate_workers
            ),
            "s",
            Lower,
            None,
        ),
        spec(
            "populate_repositories",
            format!(
                "populate {} repos (mount + PUT, {} parallel)",
                sizes.entries, sizes.populate_workers
            ),
            "s",
            Lower,
            None,
        ),
        spec(
            "peak_rss",
            "server peak RSS over the round".to_string(),
            "MiB",
            Lower,
            Some(1.0 / 3.0),
        ),
        spec(
            "server_cpu",
            "server CPU over the round".to_string(),
            "s",
            Lower,
            None,
        ),
    ]
}

/// Resource use of one scenario run on one server.
#[derive(Clone, Debug, Serialize)]
pub struct ResourceSample {
    pub round: u32,
    pub scenario: &'static str,
    pub server: usize,
    pub elapsed_seconds: f64,
    pub server_cpu_seconds: f64,
    pub server_peak_rss_mib: f64,
    pub client_cpu_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// 0 for what runs after the rounds (the large push, stopping).
    pub round: u32,
    pub server: String,
    pub scenario: String,
    pub error: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BigBlob {
    pub server: String,
    pub size_mib: u64,
    pub rate_mib_per_second: f64,
    pub peak_rss_mib: f64,
    pub limit_mib: Option<f64>,
}

/// Everything measured; index 0 of each pair is the candidate (Kai), 1 the reference.
#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: String,
    pub command: String,
    pub smoke: bool,
    pub rounds: u32,
    pub servers: [String; 2],
    pub settings: Vec<String>,
    pub sizes: Sizes,
    pub metrics: Vec<MetricResult>,
    pub resources: Vec<ResourceSample>,
    pub big_blob: Vec<BigBlob>,
    /// This machine's single-core SHA-256 speed: the best of the passes made
    /// before the servers start and after each round.
    pub sha256_mib_per_second: Option<f64>,
    /// The rate at which the disk under the servers' storage takes durable
    /// writes: the best of the measurements before the servers start and
    /// after each round (none in a smoke round).
    pub disk_mib_per_second: Option<f64>,
    pub notes: Vec<String>,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
pub struct MetricResult {
    #[serde(flatten)]
    pub spec: MetricSpec,
    /// values[round - 1][server]
    pub values: Vec<[Option<f64>; 2]>,
}

impl MetricResult {
    fn ratios(&self) -> Vec<Option<f64>> {
        // A page count describes the walk; a ratio of it means nothing.
        if self.spec.unit == "pages" {
            return vec![None; self.values.len()];
        }
        self.values
            .iter()
            .map(|pair| match pair {
                [Some(candidate), Some(reference)] if *reference > 0.0 => {
                    Some(candidate / reference)
                }
                _ => None,
            })
            .collect()
    }
}

impl Results {
    pub fn record(&mut self, round: u32, server: usize, key: &str, value: f64) {
        let rounds = self.rounds as usize;
        let Some(metric) = self
            .metrics
            .iter_mut()
            .find(|metric| metric.spec.key == key)
        else {
            panic!("metric {key} is not in metric_specs");
        };
        if metric.values.len() < rounds {
            metric.values.resize(rounds, [None, None]);
        }
        metric.values[round as usize - 1][server] = Some(value);
    }

    /// Issue #7's absolute push target: the candidate's median push rate is
    /// at least half of this machine's single-core SHA-256 speed.
    fn render_absolute_pushes(&self, sha256: f64) -> String {
        let half = sha256 / 2.0;
        let mut out = format!(
            "\nabsolute push target: single-core SHA-256 here is {sha256:.0} MiB/s (the best pass over 64 MiB, five passes before the servers start and five after each round), half of it {half:.0} MiB/s\n"
        );
        if let Some(disk) = self.disk_mib_per_second {
            out.push_str(&format!(
                "the disk under the servers' storage takes {disk:.0} MiB/s of durable writes (256 MiB in 1 MiB writes, synced every 4 MiB and at the end; the best of three passes before the servers start and three after each round): a push acknowledged once its bytes are synced is no faster\n"
            ));
        }
        let mut header = vec![
            "metric".to_string(),
            format!("{} median MiB/s", self.servers[0]),
            "share of SHA-256".into(),
            "target".into(),
            "met".into(),
        ];
        if self.disk_mib_per_second.is_some() {
            header.push("share of disk".into());
        }
        let mut rows = vec![header];
        for key in ["push_monolithic", "push_chunked"] {
            let Some(metric) = self.metrics.iter().find(|metric| metric.spec.key == key) else {
                continue;
            };
            let rates: Vec<f64> = metric.values.iter().filter_map(|pair| pair[0]).collect();
            let Some(rate) = median(&rates) else {
                continue;
            };
            let met = if self.smoke {
                "-"
            } else if rate >= half {
                "yes"
            } else {
                "NO"
            };
            let mut row = vec![
                metric.spec.label.clone(),
                format!("{rate:.0}"),
                format!("{:.2}", rate / sha256),
                ">=0.5".into(),
                met.into(),
            ];
            if let Some(disk) = self.disk_mib_per_second {
                row.push(format!("{:.2}", rate / disk));
            }
            rows.push(row);
        }
        if rows.len() > 1 {
            out.push_str(&table(&rows));
        }
        out
    }

    pub fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// The readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let [candidate, reference] = &self.servers;
        out.push_str(&format!(
            "\n{candidate} vs {reference}, {} round(s), interleaved\n",
            self.rounds
        ));
        out.push_str(&format!("machine: {}\n", self.machine));
        for setting in &self.settings {
            out.push_str(&format!("setting: {setting}\n"));
        }
        if self.smoke {
            out.push_str("SMOKE RUN: small sizes, one round; it checks correctness, its figures mean nothing and no target is judged.\n");
        }
        out.push('\n');

        let header = [
            "metric".to_string(),
            "unit".to_string(),
            format!("{candidate} median (min-max)"),
            format!("{reference} median (min-max)"),
            "ratio per round".to_string(),
            "median".to_string(),
            "target".to_string(),
            "met".to_string(),
        ];
        let mut rows = vec![header.to_vec()];
        for metric in &self.metrics {
            if metric
                .values
                .iter()
                .all(|pair| pair.iter().all(Option::is_none))
            {
                continue;
            }
            let column = |server: usize| {
                summary(
                    &metric
                        .values
                        .iter()
                        .filter_map(|pair| pair[server])
                        .collect::<Vec<_>>(),
                )
            };
            let ratios = metric.ratios();
            let ratio_cells: Vec<String> = ratios
                .iter()
                .map(|ratio| ratio.map_or("-".into(), |r| format!("{r:.2}")))
                .collect();
            let present: Vec<f64> = ratios.iter().flatten().copied().collect();
            let median_ratio = median(&present);
            let (target, met) = match (metric.spec.target, median_ratio) {
                (Some(target), Some(ratio)) if !self.smoke => {
                    let met = match metric.spec.better {
                        Better::Higher => ratio >= target,
                        Better::Lower => ratio <= target,
                    };
                    (
                        target_text(metric.spec.better, target),
                        if met { "yes" } else { "NO" }.to_string(),
                    )
                }
                (Some(target), _) => (target_text(metric.spec.better, target), "-".to_string()),
                (None, _) => (String::new(), String::new()),
            };
            rows.push(vec![
                metric.spec.label.clone(),
                metric.spec.unit.to_string(),
                column(0),
                column(1),
                ratio_cells.join(" "),
                median_ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                target,
                met,
            ]);
        }
        if rows.len() > 1 {
            out.push_str(&table(&rows));
            out.push_str("ratio = candidate/reference: above 1 is faster for rates, below 1 is faster (or smaller) for times and memory.\n");
        }

        if let Some(sha256) = self.sha256_mib_per_second {
            out.push_str(&self.render_absolute_pushes(sha256));
        }

        if !self.big_blob.is_empty() {
            out.push_str("\nlarge blob check (one monolithic streamed push):\n");
            let mut rows = vec![vec![
                "server".to_string(),
                "size".into(),
                "MiB/s".into(),
                "peak RSS MiB".into(),
                "limit".into(),
                "met".into(),
            ]];
            for big in &self.big_blob {
                let (limit, met) = match big.limit_mib {
                    Some(limit) => (
                        format!("< {limit:.0} MiB"),
                        if big.peak_rss_mib < limit {
                            "yes"
                        } else {
                            "NO"
                        }
                        .to_string(),
                    ),
                    None => (String::new(), String::new()),
                };
                rows.push(vec![
                    big.server.clone(),
                    format!("{} MiB", big.size_mib),
                    format!("{:.1}", big.rate_mib_per_second),
                    format!("{:.1}", big.peak_rss_mib),
                    limit,
                    met,
                ]);
            }
            out.push_str(&table(&rows));
        }

        let mut rows = vec![vec![
            "scenario".to_string(),
            "server".into(),
            "wall s".into(),
            "server CPU s".into(),
            "server peak RSS MiB".into(),
            "client CPU s".into(),
        ]];
        let mut scenarios: Vec<&'static str> = Vec::new();
        for sample in &self.resources {
            if !scenarios.contains(&sample.scenario) {
                scenarios.push(sample.scenario);
            }
        }
        for scenario in scenarios {
            for (index, name) in self.servers.iter().enumerate() {
                let samples: Vec<&ResourceSample> = self
                    .resources
                    .iter()
                    .filter(|sample| sample.scenario == scenario && sample.server == index)
                    .collect();
                if samples.is_empty() {
                    continue;
                }
                let med = |f: fn(&ResourceSample) -> f64| {
                    median(&samples.iter().map(|s| f(s)).collect::<Vec<_>>()).unwrap_or(0.0)
                };
                rows.push(vec![
                    scenario.to_string(),
                    name.clone(),
                    format!("{:.2}", med(|s| s.elapsed_seconds)),
                    format!("{:.2}", med(|s| s.server_cpu_seconds)),
                    format!("{:.1}", med(|s| s.server_peak_rss_mib)),
                    format!("{:.2}", med(|s| s.client_cpu_seconds)),
                ]);
            }
        }
        if rows.len() > 1 {
            out.push_str("\nper scenario, median over rounds: wall time, server CPU, server peak RSS, benchmark client CPU\n");
            out.push_str(&table(&rows));
        }

        if !self.notes.is_empty() {
            out.push_str("\nnotes:\n");
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        if self.failures.is_empty() {
            out.push_str("\nall checks passed\n");
        } else {
            out.push_str(&format!("\n{} FAILURE(S):\n", self.failures.len()));
            for failure in &self.failures {
                let when = match failure.round {
                    0 => "after the rounds".to_string(),
                    round => format!("round {round}"),
                };
                out.push_str(&format!(
                    "- {when}, {}, {}: {}\n",
                    failure.server, failure.scenario, failure.error
                ));
            }
        }
        out
    }
}

fn target_text(better: Better, target: f64) -> String {
    match better {
        Better::Higher => format!(">={target}x"),
        Better::Lower if (target - 1.0 / 3.0).abs() < 1e-9 => "<=1/3".to_string(),
        Better::Lower => format!("<={target}x"),
    }
}

fn summary(values: &[f64]) -> String {
    let Some(mid) = median(values) else {
        return "-".into();
    };
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.len() == 1 {
        number(mid)
    } else {
        format!("{} ({}-{})", number(mid), number(min), number(max))
    }
}

fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (index, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if index == 0 {
            let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}
