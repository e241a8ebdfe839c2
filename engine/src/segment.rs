//! Segments: one `.log` file of batches plus its offset and time indexes.
//!
//! An [`ActiveSegment`] takes appends; its indexes live in memory and its file is written
//! through O_DIRECT in whole blocks, the partial last block kept in memory and rewritten by
//! the next write. Sealing makes it a [`SealedSegment`]: the log cuts the file to its exact
//! length and syncs it, [`write_indexes`] stores what [`ActiveSegment::index_files`] gives
//! (on the shard's blocking thread), and [`ActiveSegment::seal`] maps them read-only.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use memmap2::Mmap;

use crate::batch;
use crate::epochs::LeaderEpochs;
use crate::error::Result;
use crate::file::{BLOCK_BYTES, SegmentFile};
use crate::mmap::map_read_only;
use crate::offset_index::{OffsetIndex, OffsetIndexWriter};
use crate::producers::ProducerBatch;
use crate::recovery::{self, Feed, Stop};
use crate::storage;
use crate::storage::Storage;
use crate::time_index::{TimeIndex, TimeIndexWriter};
use crate::types::{Offset, Position, Timestamp};

/// How much of the active segment recovery reads at a time.
const RECOVERY_CHUNK_BYTES: usize = 4 << 20;

pub fn file_stem(base_offset: Offset) -> String {
    format!("{:020}", base_offset.0)
}

pub fn log_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{}.log", file_stem(base_offset)))
}

pub fn offset_index_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{}.index", file_stem(base_offset)))
}

pub fn time_index_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{}.timeindex", file_stem(base_offset)))
}

/// Parses `00000000000000001234.log` into its base offset.
pub fn parse_log_name(name: &str) -> Option<Offset> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok().map(Offset))
        .flatten()
}

/// What readers need to read one segment without borrowing the log across an await.
#[derive(Debug, Clone)]
pub struct ReadView {
    pub file: SegmentFile,
    pub base_offset: Offset,
    /// Readable bytes (written, for the active segment).
    pub end: u64,
    pub start_position: Position,
}

/// What recovering an active segment learnt from its batches.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The batches of idempotent producers, in order.
    pub producer_batches: Vec<ProducerBatch>,
    /// The leader epochs the batches start.
    pub epochs: LeaderEpochs,
}

#[derive(Debug)]
pub struct ActiveSegment {
    base_offset: Offset,
    file: SegmentFile,
    /// Logical size including batches not yet written.
    appended_bytes: u64,
    /// Bytes handed to writes, in flight or done.
    submitted_bytes: u64,
    /// Bytes whose writes completed, in order.
    written_bytes: u64,
    /// The bytes of the block containing `submitted_bytes`, from its start.
    submitted_tail: Vec<u8>,
    /// The bytes of the block containing `written_bytes`, from its start.
    written_tail: Vec<u8>,
    offset_index: OffsetIndexWriter,
    time_index: TimeIndexWriter,
    next_offset: Offset,
    created: Instant,
}

impl ActiveSegment {
    pub async fn create(
        dir: &Path,
        base_offset: Offset,
        index_interval_bytes: u64,
        storage: Storage,
    ) -> Result<ActiveSegment> {
        let file = SegmentFile::open(&log_path(dir, base_offset), true, storage.clone()).await?;
        file.truncate(0).await?;
        storage.sync_dir(dir).await?;
        Ok(ActiveSegment {
            base_offset,
            file,
            appended_bytes: 0,
            submitted_bytes: 0,
            written_bytes: 0,
            submitted_tail: Vec::new(),
            written_tail: Vec::new(),
            offset_index: OffsetIndexWriter::new(base_offset, index_interval_bytes),
            time_index: TimeIndexWriter::new(base_offset, index_interval_bytes),
            next_offset: base_offset,
            created: Instant::now(),
        })
    }

    /// Opens the last segment of a log after a restart or crash: scans every batch, cuts the
    /// file at the first torn or corrupt one, and rebuilds the indexes. With `until`, the file
    /// is also cut before the first batch holding that offset (a truncation). Also returns
    /// what the batches tell of idempotent producers and leader epochs. The file is read in
    /// chunks, not mapped: it is the one segment that is written again.
    pub async fn recover(
        dir: &Path,
        base_offset: Offset,
        index_interval_bytes: u64,
        until: Option<Offset>,
        storage: Storage,
    ) -> Result<(ActiveSegment, Recovered)> {
        let path = log_path(dir, base_offset);
        let file = SegmentFile::open(&path, false, storage).await?;
        let file_bytes = file.size().await?;
        let mut scan = recovery::Scan::new(base_offset, index_interval_bytes);
        if let Some(limit) = until {
            scan = scan.stopping_at(limit);
        }
        let mut want = RECOVERY_CHUNK_BYTES;
        while scan.valid_bytes < file_bytes {
            let chunk = file.read_chunk(scan.valid_bytes, want).await?;
            let at_end = scan.valid_bytes + chunk.len() as u64 >= file_bytes;
            match scan.feed(&chunk, at_end) {
                Feed::Stopped => break,
                Feed::Consumed => want = RECOVERY_CHUNK_BYTES,
                // A batch larger than the chunk: read it whole. Its length is unchecked
                // disk bytes, so never more than the file holds; one claiming more is then
                // read to the end and found torn.
                Feed::NeedBytes(need) => {
                    let left = (file_bytes - scan.valid_bytes) as usize;
                    want = need.max(RECOVERY_CHUNK_BYTES).min(left);
                }
            }
            if chunk.is_empty() {
                break;
            }
        }
        let scan = scan.finish();
        let tail_start = scan.valid_bytes - scan.valid_bytes % BLOCK_BYTES;
        let tail_block = if tail_start < scan.valid_bytes {
            let read = (scan.valid_bytes - tail_start) as usize;
            file.read_chunk(tail_start, read).await?.to_vec()
        } else {
            Vec::new()
        };
        match &scan.stop {
            Some(Stop::Corrupt { position, error }) => log::warn!(
                "{}: corrupt batch at position {} ({error}); truncating {} bytes",
                path.display(),
                position.0,
                file_bytes - scan.valid_bytes
            ),
            Some(Stop::Truncated { position }) if file_bytes - position.0 >= BLOCK_BYTES => {
                log::info!(
                    "{}: torn tail at position {}; truncating {} bytes",
                    path.display(),
                    position.0,
                    file_bytes - scan.valid_bytes
                )
            }
            _ => {}
        }
        if file_bytes != scan.valid_bytes {
            file.truncate(scan.valid_bytes).await?;
            file.fdatasync().await?;
        }
        let segment = ActiveSegment {
            base_offset,
            file,
            appended_bytes: scan.valid_bytes,
            submitted_bytes: scan.valid_bytes,
            written_bytes: scan.valid_bytes,
            submitted_tail: tail_block.clone(),
            written_tail: tail_block,
            offset_index: scan.offset_index,
            time_index: scan.time_index,
            next_offset: scan.next_offset,
            created: Instant::now(),
        };
        let recovered = Recovered {
            producer_batches: scan.producer_batches,
            epochs: scan.epochs,
        };
        Ok((segment, recovered))
    }

    pub fn is_empty(&self) -> bool {
        self.appended_bytes == 0
    }

    pub fn base_offset(&self) -> Offset {
        self.base_offset
    }

    pub fn file(&self) -> &SegmentFile {
        &self.file
    }

    /// The offset after the last appended batch (the log end).
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// Logical size including batches not yet written.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes
    }

    /// Bytes handed to writes, in flight or done.
    pub fn submitted_bytes(&self) -> u64 {
        self.submitted_bytes
    }

    /// Bytes whose writes completed, in order.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    /// When the segment was created or recovered (`segment.ms` counts from here).
    pub fn created(&self) -> Instant {
        self.created
    }

    /// appended >= submitted >= written, and the kept partial blocks match the positions.
    pub fn assert_positions(&self) {
        assert!(
            self.written_bytes <= self.submitted_bytes
                && self.submitted_bytes <= self.appended_bytes,
            "segment {}: written {} submitted {} appended {} out of order",
            self.base_offset,
            self.written_bytes,
            self.submitted_bytes,
            self.appended_bytes
        );
        assert_eq!(
            self.written_tail.len() as u64,
            self.written_bytes % BLOCK_BYTES
        );
        assert_eq!(
            self.submitted_tail.len() as u64,
            self.submitted_bytes % BLOCK_BYTES
        );
    }

    pub fn max_timestamp(&self) -> Option<Timestamp> {
        self.time_index.max_timestamp()
    }

    /// Whether a batch ending at `last_offset` appended next keeps every offset of this
    /// segment within the indexes' 32-bit relative offsets (Kafka's
    /// `canConvertToRelativeOffset`); a log rolls before one that does not.
    pub fn fits_offsets(&self, last_offset: Offset) -> bool {
        last_offset.0.saturating_sub(self.base_offset.0) <= u64::from(u32::MAX)
    }

    /// Accounts for a batch appended at the end (not yet written); returns its position.
    pub fn on_append(&mut self, header: &batch::BatchHeader) -> Position {
        let position = Position(self.appended_bytes);
        let size = header.total_bytes() as u64;
        self.offset_index
            .on_batch(header.base_offset, position, size);
        self.time_index
            .on_batch(header.base_offset, header.max_timestamp, size);
        self.appended_bytes += size;
        self.next_offset = header.next_offset();
        position
    }

    /// Where the next write starts (block-aligned) and the partial block it must rewrite.
    pub fn write_start(&self) -> (u64, &[u8]) {
        (
            self.submitted_bytes - self.submitted_tail.len() as u64,
            &self.submitted_tail,
        )
    }

    /// Records that a write of `parts` (starting with the old partial block) ending at
    /// `submitted_bytes` was issued; returns the new partial block, which the write's
    /// completion hands to [`ActiveSegment::on_written`].
    pub fn on_submitted(&mut self, submitted_bytes: u64, parts: &[Bytes]) -> Vec<u8> {
        let keep = (submitted_bytes % BLOCK_BYTES) as usize;
        let mut tail = Vec::with_capacity(keep);
        let mut need = keep;
        for part in parts.iter().rev() {
            if need == 0 {
                break;
            }
            let take = need.min(part.len());
            tail.splice(0..0, part[part.len() - take..].iter().copied());
            need -= take;
        }
        assert_eq!(need, 0, "a write's parts start with its partial block");
        self.submitted_bytes = submitted_bytes;
        self.submitted_tail = tail.clone();
        tail
    }

    /// Records that the writes up to `written_bytes` completed, in order.
    pub fn on_written(&mut self, written_bytes: u64, tail: Vec<u8>) {
        assert!(
            written_bytes <= self.submitted_bytes,
            "completion past submission"
        );
        self.written_bytes = written_bytes;
        self.written_tail = tail;
    }

    /// Forgets appended but unwritten batches (their write failed).
    pub fn roll_back_to_written(&mut self, next_offset: Offset) {
        self.appended_bytes = self.written_bytes;
        self.submitted_bytes = self.written_bytes;
        self.submitted_tail = self.written_tail.clone();
        self.offset_index.truncate_to(Position(self.written_bytes));
        self.time_index.truncate_to(next_offset);
        self.next_offset = next_offset;
    }

    pub fn offset_index(&self) -> OffsetIndex<'_> {
        self.offset_index.view()
    }

    pub fn time_index(&self) -> TimeIndex<'_> {
        self.time_index.view()
    }

    pub fn read_view(&self, target: Offset) -> ReadView {
        ReadView {
            file: self.file.clone(),
            base_offset: self.base_offset,
            end: self.written_bytes,
            start_position: self.offset_index.view().lookup(target).1,
        }
    }

    /// The contents of the segment's offset and time index files, for sealing: the segment
    /// must be fully written, its file cut to `written_bytes` and synced, and no append may
    /// come before [`ActiveSegment::seal`]. Completes the time index with the segment's max
    /// timestamp.
    pub fn index_files(&mut self) -> (Vec<u8>, Vec<u8>) {
        assert_eq!(
            self.appended_bytes, self.written_bytes,
            "sealing a segment with unwritten data"
        );
        self.time_index.seal();
        (
            self.offset_index.bytes().to_vec(),
            self.time_index.bytes().to_vec(),
        )
    }

    /// Makes the segment immutable, once [`write_indexes`] stored what
    /// [`ActiveSegment::index_files`] gave: maps both indexes.
    pub fn seal(self, dir: &Path) -> Result<SealedSegment> {
        assert_eq!(
            self.appended_bytes, self.written_bytes,
            "sealing a segment with unwritten data"
        );
        SealedSegment::from_parts(
            dir,
            self.file,
            self.base_offset,
            self.next_offset,
            self.written_bytes,
            self.time_index.max_timestamp(),
        )
    }
}

/// Writes a segment's two index files (each atomically and durably), on the shard's blocking
/// thread.
pub async fn write_indexes(
    storage: &Storage,
    dir: &Path,
    base_offset: Offset,
    offsets: Vec<u8>,
    times: Vec<u8>,
) -> Result<()> {
    let paths = [
        offset_index_path(dir, base_offset),
        time_index_path(dir, base_offset),
    ];
    let (dir, storage) = (dir.to_path_buf(), storage.clone());
    storage::blocking(move || {
        for (path, contents) in paths.iter().zip([offsets, times]) {
            let name = path.file_name().expect("index path has a name");
            storage.write_atomically_blocking(&dir, &name.to_string_lossy(), &contents)?;
        }
        Ok(())
    })
    .await
}

#[derive(Debug)]
pub struct SealedSegment {
    base_offset: Offset,
    next_offset: Offset,
    size: u64,
    max_timestamp: Option<Timestamp>,
    file: SegmentFile,
    offset_index: Option<Mmap>,
    time_index: Option<Mmap>,
}

impl SealedSegment {
    pub fn base_offset(&self) -> Offset {
        self.base_offset
    }

    /// The offset after the segment's last batch.
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// The file's length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn max_timestamp(&self) -> Option<Timestamp> {
        self.max_timestamp
    }

    pub fn file(&self) -> &SegmentFile {
        &self.file
    }

    #[allow(unsafe_code)]
    fn from_parts(
        dir: &Path,
        file: SegmentFile,
        base_offset: Offset,
        next_offset: Offset,
        size: u64,
        max_timestamp: Option<Timestamp>,
    ) -> Result<SealedSegment> {
        let map = |path: PathBuf| {
            // SAFETY: index files are written once, before sealing completes, and never
            // modified; compaction replaces them by rename.
            unsafe { map_read_only(&path) }
        };
        Ok(SealedSegment {
            base_offset,
            next_offset,
            size,
            max_timestamp,
            file,
            offset_index: map(offset_index_path(dir, base_offset))?,
            time_index: map(time_index_path(dir, base_offset))?,
        })
    }

    /// Opens a sealed segment after a restart. Indexes that are missing or fail their checks
    /// are rebuilt from the log; the log's tail is checked from the last index entry.
    #[allow(unsafe_code)]
    pub async fn open(
        dir: &Path,
        base_offset: Offset,
        index_interval_bytes: u64,
        storage: Storage,
    ) -> Result<SealedSegment> {
        let path = log_path(dir, base_offset);
        // SAFETY: a sealed segment's log file is never modified; recovery below writes it
        // only after the map is dropped.
        let map = unsafe { map_read_only(&path) }?;
        let bytes: &[u8] = map.as_deref().unwrap_or_default();
        let offsets = std::fs::read(offset_index_path(dir, base_offset)).ok();
        let times = std::fs::read(time_index_path(dir, base_offset)).ok();
        let valid_indexes = match (&offsets, &times) {
            (Some(offsets), Some(times)) => {
                OffsetIndex::check(offsets, base_offset, bytes.len() as u64).is_ok()
                    && TimeIndex::check(times, base_offset, Offset(u64::MAX)).is_ok()
            }
            _ => false,
        };
        let tail = valid_indexes.then(|| {
            let offsets = offsets.as_deref().expect("checked");
            let view = OffsetIndex::new(offsets, base_offset);
            let (last_offset, last_position) = if view.is_empty() {
                (base_offset, Position(0))
            } else {
                view.entry(view.len() - 1)
            };
            recovery::scan(&bytes[last_position.0 as usize..], last_offset, u64::MAX)
        });
        let (next_offset, size, max_timestamp) = match tail {
            Some(tail) if tail.stop.is_none() => {
                let times = times.as_deref().expect("checked");
                let time_view = TimeIndex::new(times, base_offset);
                let indexed_max =
                    (!time_view.is_empty()).then(|| time_view.entry(time_view.len() - 1).0);
                (
                    tail.next_offset,
                    bytes.len() as u64,
                    indexed_max.max(tail.max_timestamp),
                )
            }
            _ => {
                // Rebuild from the log. A sealed segment that does not scan cleanly is cut
                // at the first bad batch (reported, never served).
                let mut scan = recovery::scan(bytes, base_offset, index_interval_bytes);
                if let Some(stop) = &scan.stop {
                    log::error!(
                        "{}: sealed segment damaged, cut at {stop:?}",
                        path.display()
                    );
                }
                scan.time_index.seal();
                write_indexes(
                    &storage,
                    dir,
                    base_offset,
                    scan.offset_index.bytes().to_vec(),
                    scan.time_index.bytes().to_vec(),
                )
                .await?;
                (scan.next_offset, scan.valid_bytes, scan.max_timestamp)
            }
        };
        let file_bytes = bytes.len() as u64;
        drop(map);
        let file = SegmentFile::open(&path, false, storage).await?;
        if size != file_bytes {
            file.truncate(size).await?;
            file.fdatasync().await?;
        }
        SealedSegment::from_parts(dir, file, base_offset, next_offset, size, max_timestamp)
    }

    pub fn offset_index(&self) -> OffsetIndex<'_> {
        OffsetIndex::new(
            self.offset_index.as_deref().unwrap_or_default(),
            self.base_offset,
        )
    }

    pub fn time_index(&self) -> TimeIndex<'_> {
        TimeIndex::new(
            self.time_index.as_deref().unwrap_or_default(),
            self.base_offset,
        )
    }

    pub fn read_view(&self, target: Offset) -> ReadView {
        ReadView {
            file: self.file.clone(),
            base_offset: self.base_offset,
            end: self.size,
            start_position: self.offset_index().lookup(target).1,
        }
    }

    /// Removes the segment's files. Open readers keep their file handle.
    pub async fn delete(self, dir: &Path) -> Result<()> {
        self.file
            .storage()
            .remove_files(vec![
                log_path(dir, self.base_offset),
                offset_index_path(dir, self.base_offset),
                time_index_path(dir, self.base_offset),
            ])
            .await
    }
}
