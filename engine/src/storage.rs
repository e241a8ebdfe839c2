//! The file-system calls other than segment data (which goes through io_uring, `file.rs`):
//! small files written atomically (indexes, snapshots, checkpoints, configs), directory
//! syncs, renames and removals.
//!
//! Each call runs on the shard's blocking thread (glommio's blocking pool: one thread per
//! executor, placed with it), never on the shard thread itself: an fsync, or the unlink of
//! a 1 GiB segment, then holds up only the task that asked for it, while the shard goes on
//! serving its other partitions and connections. The `_blocking` functions are for code that
//! already runs there.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Runs `work` on the current shard's blocking thread and returns its result.
pub async fn blocking<T, F>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    glommio::executor().spawn_blocking(work).await
}

/// Writes `contents` to `dir/name` atomically and durably: a temporary file, fdatasync,
/// rename over the old one, fsync of the directory.
pub async fn write_atomically(dir: &Path, name: &str, contents: Vec<u8>) -> Result<()> {
    let (dir, name) = (dir.to_path_buf(), name.to_string());
    blocking(move || write_atomically_blocking(&dir, &name, &contents)).await
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub async fn sync_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    blocking(move || sync_dir_blocking(&dir)).await
}

/// Removes files; files already gone are fine.
pub async fn remove_files(paths: Vec<PathBuf>) -> Result<()> {
    blocking(move || paths.iter().try_for_each(|path| remove_if_exists(path))).await
}

/// Renames `from` to `to` and makes it durable with an fsync of `dir`, the directory that
/// holds both, on the calling thread.
pub fn rename_blocking(from: &Path, to: &Path, dir: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|source| Error::Io {
        path: from.to_path_buf(),
        op: "rename",
        source,
    })?;
    sync_dir_blocking(dir)
}

/// [`write_atomically`] on the calling thread.
pub fn write_atomically_blocking(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let io = |op, source| crate::file::classify(&path, op, source);
    let mut file = fs::File::create(&temporary).map_err(|e| io("create", e))?;
    file.write_all(contents).map_err(|e| io("write", e))?;
    file.sync_data().map_err(|e| io("fsync", e))?;
    fs::rename(&temporary, &path).map_err(|e| io("rename", e))?;
    sync_dir_blocking(dir)
}

/// [`sync_dir`] on the calling thread.
pub fn sync_dir_blocking(dir: &Path) -> Result<()> {
    let io = |op, source| Error::Io {
        path: dir.to_path_buf(),
        op,
        source,
    };
    fs::File::open(dir)
        .map_err(|e| io("open", e))?
        .sync_all()
        .map_err(|e| io("fsync", e))
}

/// Removes a file on the calling thread; a file that is already gone is fine.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            op: "remove",
            source,
        }),
    }
}
