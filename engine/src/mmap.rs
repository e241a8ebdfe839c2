//! Read-only memory maps of sealed files: the one place the engine needs `unsafe`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::Mmap;

/// Maps the whole file read-only; `None` for an empty file (which cannot be mapped).
///
/// # Safety
/// The file must not be written or truncated while the map lives. The engine maps only
/// sealed segment files and their indexes, which it never modifies after sealing (compaction
/// writes a new file and renames it over the old path, leaving the mapped inode intact), and
/// a log directory belongs to one engine (shard) at a time.
pub unsafe fn map_read_only(path: &Path) -> io::Result<Option<Mmap>> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: the caller guarantees the file is not modified while mapped (see above).
    let map = unsafe { Mmap::map(&file)? };
    Ok(Some(map))
}
