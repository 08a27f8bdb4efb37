//! One run at a time per materialization, across processes: a run holds an exclusive
//! lock on `<data_dir>/_tributary/locks/<name>.lock`. The operating system releases it when
//! the process ends, however it ends, so a killed run never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct JobLock {
    _file: File,
}

/// Why a lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another run holds it.
    Held(PathBuf),
    /// The lock file could not be used.
    Io(PathBuf, std::io::Error),
}

/// Takes the lock of materialization `name` under `dir`, without waiting.
pub fn acquire(dir: &Path, name: &str) -> Result<JobLock, LockError> {
    let path = dir.join(format!("{name}.lock"));
    let io = |e| LockError::Io(path.clone(), e);
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(LockError::Held(path)),
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    // Who holds it, for whoever finds the file; the lock itself is what counts.
    file.set_len(0).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(JobLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), "orders").unwrap();
        assert!(matches!(
            acquire(dir.path(), "orders"),
            Err(LockError::Held(_))
        ));
        // Other materializations are not blocked.
        let _other = acquire(dir.path(), "customers").unwrap();
        drop(first);
        acquire(dir.path(), "orders").unwrap();
    }
}
