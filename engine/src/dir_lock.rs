//! The data directory's lock: one process at a time owns a data directory.
//!
//! Two processes on one directory would each assign the same offsets and overwrite each
//! other's segments, so the engine takes an exclusive `flock` on `<data dir>/.lock` when it
//! starts and holds it for its whole life (the kernel drops it when the process exits, also
//! on SIGKILL, so a stale lock cannot outlive its holder). The holder's process id is written
//! into the file, so a second process can say who holds the directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive lock on a data directory, released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Locks `dir` (which must exist), or fails at once with [`Error::DataDirLocked`] when
    /// another process (or another engine in this one) holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let io = |op, source| Error::Io {
            path: path.clone(),
            op,
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("open lock file", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(Error::DataDirLocked {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io("lock", e)),
        }
        file.set_len(0).map_err(|e| io("truncate lock file", e))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(|e| io("write lock file", e))?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let error = DirLock::acquire(dir.path()).unwrap_err();
        match &error {
            Error::DataDirLocked {
                dir: locked,
                holder,
            } => {
                assert_eq!(locked, dir.path());
                assert_eq!(*holder, Some(std::process::id()));
            }
            other => panic!("expected DataDirLocked, got {other:?}"),
        }
        assert!(error.to_string().contains(&std::process::id().to_string()));
        drop(first);
        DirLock::acquire(dir.path()).expect("the lock is free once dropped");
    }
}
