//! Where password hashing runs: on the blocking pool, at most one hash per
//! core at a time.
//!
//! An argon2id hash with Kai's parameters fills 19 MiB and keeps one core busy
//! for tens of milliseconds. Run without a limit, a burst of logins (a CI
//! fleet starting at once, or someone guessing passwords) would hash them all
//! at once: a hundred logins would take 1.9 GiB. With one hash per core the
//! cores stay as busy, memory stays at a few hashes, and the other logins wait
//! their turn in order.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;
use tokio::task::JoinError;

/// Runs `work` (a password hash or check) on the blocking pool once fewer
/// hashes than cores are running, and returns its result.
///
/// The permit goes with the work, not with the caller: a client that hangs up
/// stops waiting, but the hash it started still runs to its end, and until
/// then it still counts.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JoinError> {
    let permit = Arc::clone(permits())
        .acquire_owned()
        .await
        .expect("the password semaphore is never closed");
    tokio::task::spawn_blocking(move || {
        let result = work();
        drop(permit);
        result
    })
    .await
}

/// One permit per core.
fn permits() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| Arc::new(Semaphore::new(concurrent_hashes())))
}

/// How many hashes may run at once: the number of cores this process may use.
pub fn concurrent_hashes() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_hashes_run_at_once_than_there_are_cores() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8 * concurrent_hashes() + 4)
            .map(|index| {
                let running = Arc::clone(&running);
                let most = Arc::clone(&most);
                tokio::spawn(run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    index
                }))
            })
            .collect();
        for (index, task) in tasks.into_iter().enumerate() {
            assert_eq!(
                task.await.unwrap().unwrap(),
                index,
                "every hash runs and returns its own result"
            );
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            most <= concurrent_hashes(),
            "{most} hashes ran at once on {} cores",
            concurrent_hashes()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_hash_whose_caller_hung_up_still_counts_until_it_ends() {
        let cores = concurrent_hashes();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let work = |pause: Duration| {
            let running = Arc::clone(&running);
            let most = Arc::clone(&most);
            move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(pause);
                running.fetch_sub(1, Ordering::SeqCst);
            }
        };
        // One long hash per core; their callers give up once they all run.
        let abandoned: Vec<_> = (0..cores)
            .map(|_| tokio::spawn(run(work(Duration::from_millis(300)))))
            .collect();
        while running.load(Ordering::SeqCst) < cores {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for task in &abandoned {
            task.abort();
        }
        // New hashes wait for the abandoned ones to end.
        let waiting: Vec<_> = (0..cores)
            .map(|_| tokio::spawn(run(work(Duration::from_millis(10)))))
            .collect();
        for task in waiting {
            task.await.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= cores, "{most} hashes ran at once on {cores} cores");
    }
}
