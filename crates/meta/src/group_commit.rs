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
//! PostgreSQL needs none of this: concurrent transactions on separate
//! connections already share WAL flushes there.

use futures::future::BoxFuture;
use sqlx::{AnyConnection, AnyPool, Connection, Executor};
use tokio::sync::{mpsc, oneshot};

use crate::{Durability, MetaError, Result};

/// The most writes one transaction takes, so one group cannot grow unbounded
/// while others wait.
const MOST_WRITES_PER_GROUP: usize = 128;
/// Writes waiting for the committing task.
const QUEUE: usize = 1024;

/// One write: runs its statements on the connection it is given (inside a
/// savepoint) and says whether they succeeded; the answer goes to the caller
/// once the outcome of the commit is known.
type Run = Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Ran> + Send>;

struct Job {
    durability: Durability,
    run: Run,
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
    /// Starts the committing task on `writer`, a pool of one connection.
    pub fn start(writer: AnyPool) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(commit_groups(writer, jobs));
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
        let run: Run = Box::new(move |connection| {
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
        });
        self.queue
            .send(Job { durability, run })
            .await
            .map_err(|_| MetaError::NotCommitted("the database is closed".into()))?;
        answer.await.map_err(|_| {
            MetaError::NotCommitted(
                "the transaction could not start; the server log has the cause".into(),
            )
        })?
    }
}

async fn commit_groups(writer: AnyPool, mut jobs: mpsc::Receiver<Job>) {
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
    }
}

async fn commit_group(writer: &AnyPool, group: Vec<Job>) -> std::result::Result<(), sqlx::Error> {
    let mut connection = writer.acquire().await?;
    let relaxed = group
        .iter()
        .all(|job| job.durability == Durability::Relaxed);
    if relaxed {
        connection.execute("PRAGMA synchronous = NORMAL").await?;
    }
    let committed = run_group(&mut connection, group).await;
    if relaxed {
        // Restored before the connection serves another group. If this fails
        // the connection must not stay relaxed: close it, and the pool opens
        // a new one with the durable settings.
        if let Err(error) = connection.execute("PRAGMA synchronous = FULL").await {
            connection.close_on_drop();
            return Err(error);
        }
    }
    committed
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
        let ran = (job.run)(&mut transaction).await;
        if !ran.succeeded {
            transaction.rollback().await?;
            (ran.answer)(Ok(()));
            return Ok(());
        }
        answers.push(ran.answer);
    } else {
        for job in group {
            let mut savepoint = transaction.begin().await?;
            let ran = (job.run)(&mut savepoint).await;
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
