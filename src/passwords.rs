//! Where password hashing runs: on the blocking pool, at most one hash per
//! core at a time.
//!
//! An argon2id hash with Kai's parameters fills 19 MiB and keeps one core busy
//! for tens of milliseconds. Run without a limit, a burst of logins (a CI
//! fleet starting at once, or someone guessing passwords) would hash them all
//! at once: a hundred logins would take 1.9 GiB. With one hash per core the
//! cores stay as busy, memory stays at a few hashes, and the other logins wait
//! their turn in order.

use std::sync::OnceLock;

use tokio::sync::Semaphore;
use tokio::task::JoinError;

/// Runs `work` (a password hash or check) on the blocking pool once fewer
/// hashes than cores are running, and returns its result.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JoinError> {
    let _permit = permits()
        .acquire()
        .await
        .expect("the password semaphore is never closed");
    tokio::task::spawn_blocking(work).await
}

/// One permit per core.
fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(concurrent_hashes()))
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
        assert!(most >= 1);
    }
}
