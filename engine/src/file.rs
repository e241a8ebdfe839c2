//! Segment files through glommio's DMA (O_DIRECT, io_uring) API; every creation, write,
//! truncation and fdatasync is reported to the log's [`Storage`] first (its hooks, in tests,
//! fail it or record it). The only module besides the shard runtime that names glommio files.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::GlommioError;
use glommio::io::{DmaFile, OpenOptions, ReadResult};

use crate::error::{Error, Result};
use crate::storage::{Op, Storage};

/// Block size used for O_DIRECT writes; glommio's alignment never exceeds it.
pub const BLOCK_BYTES: u64 = 4096;

pub(crate) fn io_error(error: GlommioError<()>) -> io::Error {
    match error {
        GlommioError::IoError(source) | GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// One open segment file.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    file: Rc<DmaFile>,
    path: PathBuf,
    storage: Storage,
}

impl SegmentFile {
    /// Opens the file at `path`; with `create`, a new empty one (the caller truncates it).
    pub async fn open(path: &Path, create: bool, storage: Storage) -> Result<SegmentFile> {
        if create {
            storage
                .before(Op::Create { path })
                .map_err(|e| classify(path, "open", e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(path)
            .await
            .map_err(|e| classify(path, "open", io_error(e)))?;
        Ok(SegmentFile {
            file: Rc::new(file),
            path: path.to_path_buf(),
            storage,
        })
    }

    /// Whether both handles are the same open file (a compacted segment swapped in under
    /// the same name is a different one).
    pub fn same_file(&self, other: &SegmentFile) -> bool {
        Rc::ptr_eq(&self.file, &other.file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where this file's durable operations are reported.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Writes `parts`, concatenated and zero-padded to a whole block, at the block-aligned
    /// `position`. The bytes are copied into one aligned buffer before the first await.
    pub async fn write_parts(&self, position: u64, parts: &[&[u8]]) -> Result<()> {
        assert_eq!(
            position % BLOCK_BYTES,
            0,
            "unaligned O_DIRECT write position"
        );
        let length: usize = parts.iter().map(|part| part.len()).sum();
        let padded = length.next_multiple_of(BLOCK_BYTES as usize);
        if let Some(delay) = self.storage.write_delay() {
            glommio::timer::sleep(delay).await;
        }
        let mut buffer = self.file.alloc_dma_buffer(padded);
        let target = buffer.as_bytes_mut();
        let mut at = 0;
        for part in parts {
            target[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        target[at..].fill(0);
        self.storage
            .before(Op::Write {
                path: &self.path,
                offset: position,
                bytes: buffer.as_bytes(),
            })
            .map_err(|e| classify(&self.path, "write", e))?;
        let buffer = Rc::new(buffer);
        let mut done = 0;
        while done < padded {
            let pending = if done == 0 {
                buffer.clone()
            } else {
                // A short write (the device filling up): write the rest, which then either
                // lands or fails with ENOSPC.
                let mut rest = self.file.alloc_dma_buffer(padded - done);
                rest.as_bytes_mut()
                    .copy_from_slice(&buffer.as_bytes()[done..]);
                Rc::new(rest)
            };
            let written = self
                .file
                .write_rc_at(pending, position + done as u64)
                .await
                .map_err(|e| classify(&self.path, "write", io_error(e)))?;
            if written == 0 || written % BLOCK_BYTES as usize != 0 {
                let source = io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("short write: {written} of {} bytes", padded - done),
                );
                return Err(classify(&self.path, "write", source));
            }
            done += written;
        }
        Ok(())
    }

    pub async fn fdatasync(&self) -> Result<()> {
        self.storage
            .before(Op::Sync { path: &self.path })
            .map_err(|e| classify(&self.path, "fdatasync", e))?;
        self.file
            .fdatasync()
            .await
            .map_err(|e| classify(&self.path, "fdatasync", io_error(e)))
    }

    /// Reads up to `length` bytes at `position` (fewer at the end of the file) into a DMA
    /// buffer.
    pub async fn read_chunk(&self, position: u64, length: usize) -> Result<ReadResult> {
        self.file
            .read_at(position, length)
            .await
            .map_err(|e| classify(&self.path, "read", io_error(e)))
    }

    pub async fn truncate(&self, length: u64) -> Result<()> {
        self.storage
            .before(Op::Truncate {
                path: &self.path,
                length,
            })
            .map_err(|e| classify(&self.path, "truncate", e))?;
        self.file
            .truncate(length)
            .await
            .map_err(|e| classify(&self.path, "truncate", io_error(e)))
    }

    pub async fn size(&self) -> Result<u64> {
        self.file
            .file_size()
            .await
            .map_err(|e| classify(&self.path, "stat", io_error(e)))
    }
}

/// Turns an I/O error into the engine's error, singling out a full device.
pub fn classify(path: &Path, op: &'static str, source: io::Error) -> Error {
    if source.raw_os_error() == Some(libc::ENOSPC) || source.kind() == io::ErrorKind::StorageFull {
        return Error::DiskFull {
            path: path.to_path_buf(),
        };
    }
    Error::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}
