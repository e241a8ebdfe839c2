//! Read-only memory maps of sealed files: the one place the engine needs `unsafe`.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Maps the whole file read-only; `None` for an empty file (which cannot be mapped).
///
/// # Safety
/// The file must not be written or truncated while the map lives. The engine maps only
/// sealed segment files and their indexes, which it never modifies after sealing (compaction
/// writes a new file and renames it over the old path, leaving the mapped inode intact), and
/// a log directory belongs to one shard of one engine: placement gives each log one shard,
/// and the data directory's lock (`dir_lock.rs`) keeps out every other coremq process or
/// embedding program. What no lock can stop is another program truncating a sealed file by
/// hand: reading the map past the new end then raises SIGBUS, which ends the process (a
/// supervisor restarts it and recovery checks the files again), as a panic would.
pub unsafe fn map_read_only(path: &Path) -> Result<Option<Mmap>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        op: "mmap",
        source,
    };
    let file = File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: the caller guarantees the file is not modified while mapped (see above).
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    Ok(Some(map))
}
