//! The engine's durable writes: segment data goes through io_uring (`file.rs`), the rest
//! through here: small files written atomically (indexes, snapshots, checkpoints, configs),
//! directory syncs, renames and removals. Both report every durable operation ([`Op`]) to
//! the [`Storage`]'s [`Hooks`] first, if it has any: a test implementation fails the Nth one,
//! or records them all to build the images a power loss could leave ([`Faults`] is the
//! simple one).
//!
//! Each call here runs on the shard's blocking thread (glommio's blocking pool: one thread per
//! executor, placed with it), never on the shard thread itself: an fsync, or the unlink of
//! a 1 GiB segment, then holds up only the task that asked for it, while the shard goes on
//! serving its other partitions and connections. The `_blocking` methods are for code that
//! already runs there.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

/// A durable operation on one of the engine's files, reported before it is made.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// A file created empty at `path` (or an existing one opened to be emptied).
    Create {
        path: &'a Path,
    },
    /// `bytes` written at `offset` (segment writes are whole padded blocks).
    Write {
        path: &'a Path,
        offset: u64,
        bytes: &'a [u8],
    },
    /// The file cut (or extended with zeros) to `length`.
    Truncate {
        path: &'a Path,
        length: u64,
    },
    /// fdatasync: the file's bytes written so far become durable.
    Sync {
        path: &'a Path,
    },
    /// fsync of a directory: its entries (created, renamed, removed files) become durable.
    SyncDir {
        dir: &'a Path,
    },
    Rename {
        from: &'a Path,
        to: &'a Path,
    },
    Remove {
        path: &'a Path,
    },
}

/// Watches the engine's durable operations (tests).
pub trait Hooks: Send + Sync + 'static {
    /// Called before each operation; an error fails it as the system call would have.
    fn before(&self, op: Op<'_>) -> io::Result<()>;

    /// How long to hold a segment write before issuing it, so writes complete out of the
    /// order they were issued in, as a device may complete them.
    fn write_delay(&self) -> Option<Duration> {
        None
    }
}

/// Where the engine's durable operations go: the file system, through [`Hooks`] if any.
/// Cheap to clone; `Send`, so it goes along to the blocking thread.
#[derive(Clone, Default)]
pub struct Storage {
    hooks: Option<Arc<dyn Hooks>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hooks = if self.hooks.is_some() {
            "hooks"
        } else {
            "plain"
        };
        f.write_str(hooks)
    }
}

/// Failures a test can switch on and off (one relaxed atomic load per operation).
#[derive(Debug, Default)]
pub struct Faults {
    /// Fail every fdatasync while set.
    pub fail_fsync: AtomicBool,
    /// Fail every segment write with ENOSPC while set.
    pub fail_write_no_space: AtomicBool,
    /// Delay each segment write by a pseudo-random 0..N microseconds.
    pub write_delay_max_us: AtomicU64,
    delay_state: AtomicU64,
}

impl Hooks for Faults {
    fn before(&self, op: Op<'_>) -> io::Result<()> {
        match op {
            Op::Sync { .. } if self.fail_fsync.load(Ordering::Relaxed) => {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            Op::Write { .. } if self.fail_write_no_space.load(Ordering::Relaxed) => {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            _ => Ok(()),
        }
    }

    fn write_delay(&self) -> Option<Duration> {
        let max = self.write_delay_max_us.load(Ordering::Relaxed);
        if max == 0 {
            return None;
        }
        let mut x = self
            .delay_state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Some(Duration::from_micros(x % max))
    }
}

impl Storage {
    /// The file system with `hooks` watching.
    pub fn with_hooks(hooks: Arc<dyn Hooks>) -> Storage {
        Storage { hooks: Some(hooks) }
    }

    /// Reports `op` to the hooks; their error fails it.
    pub(crate) fn before(&self, op: Op<'_>) -> io::Result<()> {
        match &self.hooks {
            Some(hooks) => hooks.before(op),
            None => Ok(()),
        }
    }

    pub(crate) fn write_delay(&self) -> Option<Duration> {
        self.hooks.as_ref().and_then(|hooks| hooks.write_delay())
    }

    /// Writes `contents` to `dir/name` atomically and durably: a temporary file, fdatasync,
    /// rename over the old one, fsync of the directory.
    pub async fn write_atomically(&self, dir: &Path, name: &str, contents: Vec<u8>) -> Result<()> {
        let (storage, dir, name) = (self.clone(), dir.to_path_buf(), name.to_string());
        blocking(move || storage.write_atomically_blocking(&dir, &name, &contents)).await
    }

    /// Makes the directory's entries (created, renamed, removed files) durable.
    pub async fn sync_dir(&self, dir: &Path) -> Result<()> {
        let (storage, dir) = (self.clone(), dir.to_path_buf());
        blocking(move || storage.sync_dir_blocking(&dir)).await
    }

    /// Removes files; files already gone are fine.
    pub async fn remove_files(&self, paths: Vec<PathBuf>) -> Result<()> {
        let storage = self.clone();
        blocking(move || {
            paths
                .iter()
                .try_for_each(|path| storage.remove_if_exists(path))
        })
        .await
    }

    /// Renames `from` to `to` and makes it durable with an fsync of `dir`, the directory
    /// that holds both, on the calling thread.
    pub fn rename_blocking(&self, from: &Path, to: &Path, dir: &Path) -> Result<()> {
        self.before(Op::Rename { from, to })
            .and_then(|()| fs::rename(from, to))
            .map_err(|source| Error::Io {
                path: from.to_path_buf(),
                op: "rename",
                source,
            })?;
        self.sync_dir_blocking(dir)
    }

    /// [`Storage::write_atomically`] on the calling thread.
    pub fn write_atomically_blocking(&self, dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
        let path = dir.join(name);
        let temporary = dir.join(format!("{name}.tmp"));
        let io = |op, source| crate::file::classify(&path, op, source);
        self.before(Op::Create { path: &temporary })
            .map_err(|e| io("create", e))?;
        let mut file = fs::File::create(&temporary).map_err(|e| io("create", e))?;
        self.before(Op::Write {
            path: &temporary,
            offset: 0,
            bytes: contents,
        })
        .and_then(|()| file.write_all(contents))
        .map_err(|e| io("write", e))?;
        self.before(Op::Sync { path: &temporary })
            .and_then(|()| file.sync_data())
            .map_err(|e| io("fsync", e))?;
        self.before(Op::Rename {
            from: &temporary,
            to: &path,
        })
        .and_then(|()| fs::rename(&temporary, &path))
        .map_err(|e| io("rename", e))?;
        self.sync_dir_blocking(dir)
    }

    /// [`Storage::sync_dir`] on the calling thread.
    pub fn sync_dir_blocking(&self, dir: &Path) -> Result<()> {
        let io = |op, source| Error::Io {
            path: dir.to_path_buf(),
            op,
            source,
        };
        self.before(Op::SyncDir { dir })
            .map_err(|e| io("fsync", e))?;
        fs::File::open(dir)
            .map_err(|e| io("open", e))?
            .sync_all()
            .map_err(|e| io("fsync", e))
    }

    /// Removes a file on the calling thread; a file that is already gone is fine.
    pub fn remove_if_exists(&self, path: &Path) -> Result<()> {
        let removed = self
            .before(Op::Remove { path })
            .and_then(|()| fs::remove_file(path));
        match removed {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                path: path.to_path_buf(),
                op: "remove",
                source,
            }),
        }
    }
}

/// Runs `work` on the current shard's blocking thread and returns its result.
pub async fn blocking<T, F>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    glommio::executor().spawn_blocking(work).await
}
