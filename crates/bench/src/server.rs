//! Starting, measuring and stopping the registries under test.
//!
//! Each server runs as a child process on fresh filesystem storage in its
//! own temporary directory, with its output in a log file there. Resource
//! figures come from `/proc/<pid>`: CPU seconds from `stat`, peak RSS from
//! `VmHWM` in `status`, which `clear_refs` resets between scenarios.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use url::Url;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kai,
    Reference,
}

pub struct Server {
    pub label: String,
    pub kind: Kind,
    pub base: Url,
    child: Child,
    pid: u32,
    log: PathBuf,
    /// Holds the storage and the log; removed when the server is dropped.
    _dir: tempfile::TempDir,
}

/// CPU and memory of a server process at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Server {
    /// Starts `kai serve` and waits for its `listening on http://ADDR` line.
    pub async fn start_kai(label: &str, binary: &Path, workdir: &Path) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("kai-bench-kai-")
            .tempdir_in(workdir)?;
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            // The benchmark compares protocol work, not logins: authorization off.
            .env("KAI_AUTH__ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve", binary.display()))?;
        let pid = child.id().context("kai exited at once")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(READY_TIMEOUT, async {
            let mut seen = Vec::new();
            while let Some(line) = lines.next_line().await? {
                if let Some(address) = line.trim().strip_prefix("listening on ") {
                    return Ok(address.to_string());
                }
                seen.push(line);
            }
            bail!("kai closed stdout without printing `listening on http://ADDR`; it printed: {seen:?}")
        })
        .await;
        let address = match first {
            Ok(Ok(address)) => address,
            Ok(Err(error)) => bail!("{error:#}\n{}", tail(&log, 20)),
            Err(_) => bail!(
                "kai printed no `listening on` line within {READY_TIMEOUT:?}\n{}",
                tail(&log, 20)
            ),
        };
        // Keep draining stdout into the log so a chatty server never blocks on a full pipe.
        let mut sink = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .await?;
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = sink.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        let base = Url::parse(&address)
            .with_context(|| format!("kai's listening address {address:?} is not a URL"))?;
        Ok(Server {
            label: label.to_string(),
            kind: Kind::Kai,
            base,
            child,
            pid,
            log,
            _dir: dir,
        })
    }

    /// Starts the reference registry (CNCF distribution) and waits until `GET /v2/` answers 200.
    pub async fn start_reference(label: &str, binary: &Path, workdir: &Path) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("kai-bench-reference-")
            .tempdir_in(workdir)?;
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        // distribution cannot listen on port 0 and report the port, so take a
        // free one from the kernel and hand it over; another process could
        // grab it in between, which the readiness check below would expose.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // Filesystem storage, deletes enabled, and everything else at its
        // default: the log level (info, with access logs) and no blob
        // descriptor cache (the packaged config.yml turns on the in-memory
        // one; BENCHMARKS.md says what that changes).
        let config = format!(
            "version: 0.1\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            data = data.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve", binary.display()))?;
        let pid = child
            .id()
            .context("the reference registry exited at once")?;
        let base = Url::parse(&format!("http://127.0.0.1:{port}/"))?;
        let mut server = Server {
            label: label.to_string(),
            kind: Kind::Reference,
            base,
            child,
            pid,
            log,
            _dir: dir,
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let started = Instant::now();
        loop {
            server.check_running()?;
            if let Ok(response) = client.get(server.base.join("v2/")?).send().await {
                if response.status() == reqwest::StatusCode::OK {
                    return Ok(server);
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("the reference registry did not answer GET /v2/ with 200 within {READY_TIMEOUT:?}\n{}", tail(&server.log, 20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails if the process has exited, with the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})\n{}", self.label, tail(&self.log, 20));
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Resets the peak RSS (VmHWM) to the current RSS; false if the kernel refused.
    pub fn reset_peak_rss(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    pub fn usage(&self) -> Result<Usage> {
        process_usage(self.pid)
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 seconds. The
    /// storage stays until the server is dropped.
    pub async fn stop(&mut self) -> Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM)?;
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("{} ignored SIGTERM for 10 s and was killed", self.label)
            }
        }
    }
}

impl Server {
    /// Removes the storage with several threads: the reference keeps each
    /// tag and repository as a handful of directories and link files, and one
    /// thread unlinking a million of them one by one is slow where each unlink
    /// waits on the filesystem (here, a few hundred a second).
    pub fn remove_storage(self) -> Result<()> {
        let path = self._dir.path().to_path_buf();
        drop(self.child);
        remove_tree(&path, 32)?;
        // The TempDir's own removal then finds nothing left.
        Ok(())
    }
}

/// Removes `root` and all under it: files and directories are found and
/// files unlinked by `threads` workers, then directories go deepest first.
pub fn remove_tree(root: &Path, threads: usize) -> Result<()> {
    use std::sync::{Condvar, Mutex};
    struct Work {
        queue: Vec<(usize, PathBuf)>,
        busy: usize,
        directories: Vec<(usize, PathBuf)>,
        error: Option<std::io::Error>,
    }
    let work = Mutex::new(Work {
        queue: vec![(0, root.to_path_buf())],
        busy: 0,
        directories: Vec::new(),
        error: None,
    });
    let wake = Condvar::new();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let (depth, directory) = {
                    let mut state = work.lock().expect("no worker panics");
                    loop {
                        if let Some(next) = state.queue.pop() {
                            state.busy += 1;
                            break next;
                        }
                        if state.busy == 0 || state.error.is_some() {
                            wake.notify_all();
                            return;
                        }
                        state = wake.wait(state).expect("no worker panics");
                    }
                };
                let mut found = Vec::new();
                let outcome = (|| -> std::io::Result<()> {
                    for entry in std::fs::read_dir(&directory)? {
                        let entry = entry?;
                        if entry.file_type()?.is_dir() {
                            found.push((depth + 1, entry.path()));
                        } else {
                            std::fs::remove_file(entry.path())?;
                        }
                    }
                    Ok(())
                })();
                let mut state = work.lock().expect("no worker panics");
                state.busy -= 1;
                state.directories.push((depth, directory));
                state.queue.extend(found);
                if let Err(error) = outcome {
                    state.error.get_or_insert(error);
                }
                wake.notify_all();
            });
        }
    });
    let mut work = work.into_inner().expect("no worker panics");
    if let Some(error) = work.error {
        return Err(error).with_context(|| format!("removing {}", root.display()));
    }
    // Children before parents: one depth at a time, from the deepest.
    work.directories
        .sort_by_key(|(depth, _)| std::cmp::Reverse(*depth));
    for level in work.directories.chunk_by(|a, b| a.0 == b.0) {
        let chunk = level.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = level
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .try_for_each(|(_, directory)| std::fs::remove_dir(directory))
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|handle| handle.join().expect("no remover panics"))
        })
        .with_context(|| format!("removing {}", root.display()))?;
    }
    Ok(())
}

/// CPU seconds (user + system) and peak RSS of process `pid`.
pub fn process_usage(pid: u32) -> Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the whole line; field 3 (state) is index 0 here.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .context("no VmHWM in /proc/PID/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(Usage {
        cpu_seconds: ticks as f64 / clock_ticks_per_second(),
        peak_rss_bytes: peak_kib * 1024,
    })
}

/// USER_HZ, which is 100 on every Linux architecture this runs on.
fn clock_ticks_per_second() -> f64 {
    100.0
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- last {} lines of {} ---\n{}",
        all.len() - start,
        path.display(),
        all[start..].join("\n")
    )
}
