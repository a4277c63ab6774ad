//! Group commit for SQLite. SQLite has one writer at a time and syncs its
//! write-ahead log on every commit, so concurrent requests that each commit
//! their own small transaction queue behind one fsync after another. Here a
//! task takes every write waiting in the queue, runs each in a savepoint of one
//! transaction, and commits once: one fsync answers all of them. A write that
//! fails rolls back its savepoint only; the others still commit. No write is
//! answered before the commit that holds it is durable, except a write that
//! asks for none (`Durability::Relaxed`), and only when every write in its
//! group asks for none: that group commits with `synchronous = NORMAL`,
//! which survives a killed process but may roll back on power loss.
//!
//! A write that is one SQL text with its arguments (`write_statement`) and
//! finds itself alone in its group runs as a single trip to SQLite's
//! connection thread: the text is wrapped in `BEGIN IMMEDIATE ... COMMIT` (and
//! the relaxed setting, if any) and executed at once. Every trip is a hand-off
//! to that thread and back; for a serial client a write is nearly always
//! alone, and its `BEGIN`, `COMMIT` and setting changes were most of the trips.
//!
//! Checkpoints (copying the write-ahead log into the database file, with two
//! syncs) run on a reader connection, half a second after commits, beside
//! the writer. SQLite's own automatic checkpoint runs inside the commit that
//! crosses its threshold (every 1,000 pages by default), which then waits
//! for it: those commits were the slowest 1 % of manifest PUTs (p99 2.2-2.9
//! ms against 1.25-1.29 ms with checkpoints beside the writer). It stays on,
//! at 10,000 pages, for the case that the background checkpoints fall behind.
//!
//! PostgreSQL needs none of this: concurrent transactions on separate
//! connections already share WAL flushes there.

use std::borrow::Cow;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::any::AnyArguments;
use sqlx::{AnyConnection, AnyPool, Connection, Executor};
use tokio::sync::{mpsc, oneshot};

use crate::{Durability, MetaError, Result};

/// The most writes one transaction takes, so one group cannot grow unbounded
/// while others wait.
const MOST_WRITES_PER_GROUP: usize = 128;
/// Writes waiting for the committing task.
const QUEUE: usize = 1024;
/// How long after a commit the write-ahead log is checkpointed. Commits in
/// between share the checkpoint, so under steady writes there are at most
/// two a second, and none while nothing is written. (The writer's own
/// automatic checkpoint, `wal_autocheckpoint` in `MetaStore::open_sqlite`,
/// is the safety net for when these fall behind, for example while a reader
/// holds an old snapshot.)
const CHECKPOINT_DELAY: Duration = Duration::from_millis(500);

/// One write: runs its statements on the connection it is given (inside a
/// savepoint) and says whether they succeeded; the answer goes to the caller
/// once the outcome of the commit is known.
type Run = Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Ran> + Send>;

struct Job {
    durability: Durability,
    work: Work,
}

/// What a queued write runs.
enum Work {
    /// Statements of its own choosing.
    Run(Run),
    /// One SQL text (it may hold several statements) with its arguments;
    /// answered with the value its last returned row holds, if any.
    Statement {
        sql: Cow<'static, str>,
        arguments: AnyArguments<'static>,
        reply: oneshot::Sender<Result<Option<i64>>>,
    },
}

impl Work {
    /// The write as statements run inside a group's transaction.
    fn into_run(self) -> Run {
        match self {
            Work::Run(run) => run,
            Work::Statement {
                sql,
                arguments,
                reply,
            } => replying_run(
                move |connection| {
                    Box::pin(async move {
                        let rows = sqlx::query_with(&sql, arguments)
                            .fetch_all(connection)
                            .await?;
                        Ok(last_value(&rows))
                    })
                },
                reply,
            ),
        }
    }
}

struct Ran {
    succeeded: bool,
    answer: Box<dyn FnOnce(std::result::Result<(), String>) + Send>,
}

/// A handle that queues writes for the committing task.
#[derive(Clone)]
pub struct GroupCommitter {
    queue: mpsc::Sender<Job>,
}

impl GroupCommitter {
    /// Starts the committing task on `writer`, a pool of one connection, and
    /// the task that checkpoints on a connection of `checkpointer`.
    pub fn start(writer: AnyPool, checkpointer: AnyPool) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let (committed, commits) = mpsc::channel(1);
        tokio::spawn(commit_groups(writer, jobs, committed));
        tokio::spawn(checkpoint_after_commits(checkpointer, commits));
        GroupCommitter { queue }
    }

    /// Runs `write` in a transaction shared with other queued writes, and
    /// returns its result once that transaction is committed. If `write`
    /// fails, its own statements are rolled back.
    pub async fn write<T, F>(&self, durability: Durability, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let work = Work::Run(replying_run(write, reply));
        self.queue_and_wait(Job { durability, work }, answer).await
    }

    /// Runs `sql` (one or more statements) with `arguments` as [`Self::write`]
    /// runs a write; alone in its group, in one trip to the connection's
    /// thread. Returns the first column of the last row the statements
    /// return (as an integer), or `None` when they return none: a text that
    /// must know whether a statement changed anything ends with `SELECT
    /// changes()` right after it.
    pub async fn write_statement(
        &self,
        durability: Durability,
        sql: impl Into<Cow<'static, str>>,
        arguments: AnyArguments<'static>,
    ) -> Result<Option<i64>> {
        let (reply, answer) = oneshot::channel::<Result<Option<i64>>>();
        let work = Work::Statement {
            sql: sql.into(),
            arguments,
            reply,
        };
        self.queue_and_wait(Job { durability, work }, answer).await
    }

    async fn queue_and_wait<T>(&self, job: Job, answer: oneshot::Receiver<Result<T>>) -> Result<T> {
        self.queue
            .send(job)
            .await
            .map_err(|_| MetaError::NotCommitted("the database is closed".into()))?;
        answer.await.map_err(|_| {
            MetaError::NotCommitted(
                "the transaction could not start; the server log has the cause".into(),
            )
        })?
    }
}

/// `write` as a group member: run, then answered through `reply` once the
/// outcome of the group's commit is known.
fn replying_run<T, F>(write: F, reply: oneshot::Sender<Result<T>>) -> Run
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
{
    Box::new(move |connection| {
        Box::pin(async move {
            let result = write(connection).await;
            Ran {
                succeeded: result.is_ok(),
                answer: Box::new(move |committed| {
                    let outcome = match committed {
                        Ok(()) => result,
                        // A failed write's error says more than the commit's.
                        Err(_) if result.is_err() => result,
                        Err(reason) => Err(MetaError::NotCommitted(reason)),
                    };
                    let _ = reply.send(outcome);
                }),
            }
        })
    })
}

async fn commit_groups(
    writer: AnyPool,
    mut jobs: mpsc::Receiver<Job>,
    committed: mpsc::Sender<()>,
) {
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        while group.len() < MOST_WRITES_PER_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if let Err(error) = commit_group(&writer, group).await {
            // The jobs not yet run were dropped: their callers get an error.
            tracing::error!(error = %error, "a group of metadata writes could not run");
        }
        // A full channel already holds a wake-up for the checkpointer.
        let _ = committed.try_send(());
    }
}

/// Checkpoints the write-ahead log `CHECKPOINT_DELAY` after a commit, on an
/// idle connection of `pool` (the readers, not the writer), until the
/// committing task ends. A passive checkpoint waits for no lock: the writer
/// goes on committing, and pages that a reader still needs stay in the log
/// for the next checkpoint. When no reader is idle the checkpoint waits for
/// the next commit rather than open a connection: one more reader thread
/// with its cache measured 1.3 MiB more peak memory in the benchmark.
async fn checkpoint_after_commits(pool: AnyPool, mut commits: mpsc::Receiver<()>) {
    while commits.recv().await.is_some() {
        tokio::time::sleep(CHECKPOINT_DELAY).await;
        let Some(mut connection) = pool.try_acquire() else {
            continue;
        };
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut *connection)
            .await
        {
            Ok(_) => {}
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => tracing::warn!(
                error = %error,
                "checkpointing the metadata database's write-ahead log failed (is its disk full?); commits checkpoint it themselves once it holds 10,000 pages"
            ),
        }
    }
}

async fn commit_group(
    writer: &AnyPool,
    mut group: Vec<Job>,
) -> std::result::Result<(), sqlx::Error> {
    let mut connection = writer.acquire().await?;
    let relaxed = group
        .iter()
        .all(|job| job.durability == Durability::Relaxed);
    if group.len() == 1 && matches!(group[0].work, Work::Statement { .. }) {
        let Some(Job {
            work:
                Work::Statement {
                    sql,
                    arguments,
                    reply,
                },
            ..
        }) = group.pop()
        else {
            unreachable!("checked above");
        };
        return commit_alone(&mut connection, relaxed, sql, arguments, reply).await;
    }
    if relaxed {
        connection.execute("PRAGMA synchronous = NORMAL").await?;
    }
    let committed = run_group(&mut connection, group).await;
    if relaxed {
        restore_durability(&mut connection).await?;
    }
    committed
}

/// Runs a lone statement write and its transaction in one trip. A relaxed
/// write sets `synchronous = NORMAL` before its `BEGIN` and back to `FULL`
/// after its `COMMIT`, in the same trip. If anything fails, the transaction
/// may still be open and the setting relaxed: the connection is closed, which
/// rolls back, and the pool opens a new one with the durable settings. Only
/// the final setting can fail after the commit; setting a flag fails only
/// when SQLite runs out of memory, and then a relaxed write (a new upload
/// session) is reported failed though its row exists. The client starts
/// another session, and the stale-session sweep removes the row.
async fn commit_alone(
    connection: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    relaxed: bool,
    sql: Cow<'static, str>,
    arguments: AnyArguments<'static>,
    reply: oneshot::Sender<Result<Option<i64>>>,
) -> std::result::Result<(), sqlx::Error> {
    let text = if relaxed {
        format!(
            "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE; {sql}; COMMIT; PRAGMA synchronous = FULL"
        )
    } else {
        format!("BEGIN IMMEDIATE; {sql}; COMMIT")
    };
    // All rows, never just the first: the statements after the row (the
    // COMMIT) run only as the results are read to the end.
    let outcome = sqlx::query_with(&text, arguments)
        .fetch_all(&mut **connection)
        .await;
    if outcome.is_err() {
        connection.close_on_drop();
    }
    let _ = reply.send(
        outcome
            .map(|rows| last_value(&rows))
            .map_err(MetaError::from),
    );
    Ok(())
}

/// The first column of the last of `rows`, as an integer.
fn last_value(rows: &[sqlx::any::AnyRow]) -> Option<i64> {
    use sqlx::Row as _;
    rows.last().and_then(|row| row.try_get::<i64, _>(0).ok())
}

/// Sets a connection back to durable commits after a relaxed group. If that
/// fails the connection must not stay relaxed: it is closed, and the pool
/// opens a new one with the durable settings.
async fn restore_durability(
    connection: &mut sqlx::pool::PoolConnection<sqlx::Any>,
) -> std::result::Result<(), sqlx::Error> {
    if let Err(error) = connection.execute("PRAGMA synchronous = FULL").await {
        connection.close_on_drop();
        return Err(error);
    }
    Ok(())
}

async fn run_group(
    connection: &mut AnyConnection,
    group: Vec<Job>,
) -> std::result::Result<(), sqlx::Error> {
    let mut transaction = connection.begin().await?;
    let mut answers = Vec::with_capacity(group.len());
    if group.len() == 1 {
        // Alone, the write needs no savepoint: the transaction is its own.
        let job = group.into_iter().next().expect("one job");
        let ran = (job.work.into_run())(&mut transaction).await;
        if !ran.succeeded {
            transaction.rollback().await?;
            (ran.answer)(Ok(()));
            return Ok(());
        }
        answers.push(ran.answer);
    } else {
        for job in group {
            let mut savepoint = transaction.begin().await?;
            let ran = (job.work.into_run())(&mut savepoint).await;
            if ran.succeeded {
                savepoint.commit().await?;
            } else {
                savepoint.rollback().await?;
            }
            answers.push(ran.answer);
        }
    }
    let committed = transaction
        .commit()
        .await
        .map_err(|error| error.to_string());
    for answer in answers {
        answer(committed.clone());
    }
    Ok(())
}
