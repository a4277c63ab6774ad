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
    run_with(permits(), work).await
}

/// `run` with the given permits (each test has its own).
async fn run_with<T: Send + 'static>(
    permits: &Arc<Semaphore>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JoinError> {
    let permit = Arc::clone(permits)
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
fn concurrent_hashes() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Permits of their own, one per core: tests running side by side in this
    /// process would otherwise take each other's turns.
    fn own_permits() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(concurrent_hashes()))
    }

    /// Counts the hashes running at once, and the most there ever were.
    #[derive(Default)]
    struct Gauge {
        running: AtomicUsize,
        most: AtomicUsize,
    }

    impl Gauge {
        /// Stand-in for a hash: counted while it runs, which takes `pause`.
        fn hash(self: &Arc<Self>, pause: Duration) -> impl FnOnce() + Send + 'static {
            let gauge = Arc::clone(self);
            move || {
                let now = gauge.running.fetch_add(1, Ordering::SeqCst) + 1;
                gauge.most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(pause);
                gauge.running.fetch_sub(1, Ordering::SeqCst);
            }
        }

        fn running(&self) -> usize {
            self.running.load(Ordering::SeqCst)
        }

        fn most(&self) -> usize {
            self.most.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn the_shared_permits_are_one_per_core() {
        // Nothing else in this test binary hashes a password.
        assert_eq!(permits().available_permits(), concurrent_hashes());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_hashes_run_at_once_than_there_are_cores() {
        let permits = own_permits();
        let gauge = Arc::new(Gauge::default());
        let tasks: Vec<_> = (0..8 * concurrent_hashes() + 4)
            .map(|index| {
                let hash = gauge.hash(Duration::from_millis(20));
                let permits = Arc::clone(&permits);
                tokio::spawn(async move {
                    run_with(&permits, move || {
                        hash();
                        index
                    })
                    .await
                })
            })
            .collect();
        for (index, task) in tasks.into_iter().enumerate() {
            assert_eq!(
                task.await.unwrap().unwrap(),
                index,
                "every hash runs and returns its own result"
            );
        }
        let most = gauge.most();
        assert!(
            most <= concurrent_hashes(),
            "{most} hashes ran at once on {} cores",
            concurrent_hashes()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_hash_whose_caller_hung_up_still_counts_until_it_ends() {
        let cores = concurrent_hashes();
        let permits = own_permits();
        let gauge = Arc::new(Gauge::default());
        let spawn = |pause: Duration| {
            let permits = Arc::clone(&permits);
            let hash = gauge.hash(pause);
            tokio::spawn(async move { run_with(&permits, hash).await })
        };
        // One long hash per core; their callers give up once they all run.
        let abandoned: Vec<_> = (0..cores)
            .map(|_| spawn(Duration::from_millis(300)))
            .collect();
        while gauge.running() < cores {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for task in &abandoned {
            task.abort();
        }
        // New hashes wait for the abandoned ones to end.
        let waiting: Vec<_> = (0..cores)
            .map(|_| spawn(Duration::from_millis(10)))
            .collect();
        for task in waiting {
            task.await.unwrap().unwrap();
        }
        let most = gauge.most();
        assert!(most <= cores, "{most} hashes ran at once on {cores} cores");
    }
}
