//! The lock that makes one `kai serve` the only server of a SQLite database.
//!
//! Two servers on one embedded database would each trust what they keep in
//! memory (the manifest cache) while the other writes, so the second one
//! refuses to start. The lock is an exclusive `flock` (`File::try_lock`) on a file beside the
//! database (`kai.db.serve-lock`), apart from the locks SQLite takes on the
//! database itself; the kernel releases it when the process ends, however it
//! ends, so a killed server never leaves it behind. Other commands (`kai
//! accounts`, `kai migrate`) do not take it: they never change tags or
//! manifests.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ServeLockError {
    #[error(
        "another `kai serve` is using the database {}: stop it first (one server per embedded \
         database), or run several replicas on PostgreSQL (--database postgres://...)",
        .database.display()
    )]
    InUse { database: PathBuf },
    #[error("cannot lock {}: {error}; check that the directory is writable", .path.display())]
    Io { path: PathBuf, error: io::Error },
}

/// Held for as long as the server runs; dropping it releases the lock.
pub(crate) struct ServeLock {
    _file: File,
}

impl ServeLock {
    /// Locks the database at `database` to this process, or fails at once if
    /// another process holds it.
    pub(crate) fn acquire(database: &Path) -> Result<ServeLock, ServeLockError> {
        let mut name = database.as_os_str().to_owned();
        name.push(".serve-lock");
        let path = PathBuf::from(name);
        let io_error = |error| ServeLockError::Io {
            path: path.clone(),
            error,
        };
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => Ok(ServeLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(ServeLockError::InUse {
                database: database.to_owned(),
            }),
            Err(TryLockError::Error(error)) => Err(io_error(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_database_is_refused_until_the_first_is_dropped() {
        let directory = tempfile::tempdir().unwrap();
        let database = directory.path().join("kai.db");
        let first = ServeLock::acquire(&database).expect("first lock");
        let error = ServeLock::acquire(&database)
            .err()
            .expect("second lock refused");
        let message = error.to_string();
        assert!(message.contains("another `kai serve`"), "{message}");
        assert!(
            message.contains(&database.display().to_string()),
            "{message}"
        );
        // Another database beside it is not affected.
        let other = ServeLock::acquire(&directory.path().join("other.db")).expect("other lock");
        drop(first);
        ServeLock::acquire(&database).expect("lock after release");
        drop(other);
    }
}
