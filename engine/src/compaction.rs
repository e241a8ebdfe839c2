//! Log compaction (`cleanup.policy=compact`): keep the latest record per key in the sealed
//! segments, drop tombstones older than `delete.retention.ms`. Runs as a background task on
//! the log's shard, yielding often; appends go to the active segment meanwhile.
//!
//! Each sealed segment is rewritten into `N.log.cleaned`, renamed to `N.log.swap`, its
//! indexes removed, then renamed over `N.log` and reopened (indexes rebuilt). After a crash,
//! [`recover_swaps`] deletes `.cleaned` files and completes `.swap` renames, so a segment is
//! always either the old or the new one, never a mix.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;

use crate::batch::{self, BatchHeader};
use crate::error::{Error, Result};
use crate::file::{BLOCK_BYTES, SegmentFile};
use crate::log::Log;
use crate::metrics::add;
use crate::mmap::map_read_only;
use crate::record::{self, BatchBuilder};
use crate::segment::{self, SealedSegment};
use crate::storage::{self, Storage};
use crate::types::{Offset, Timestamp};

/// What one compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments_rewritten: usize,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Tombstones kept because they are younger than `delete.retention.ms`.
    pub tombstones_kept: u64,
}

/// Cleans up after an interrupted compaction and lists the directory's segment bases.
pub fn recover_swaps(storage: &Storage, dir: &Path) -> Result<Vec<Offset>> {
    let io = |op, source| Error::Io {
        path: dir.to_path_buf(),
        op,
        source,
    };
    let mut bases = Vec::new();
    let mut swaps = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io("list", e))? {
        let entry = entry.map_err(|e| io("list", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".cleaned") || name.ends_with(".tmp") {
            storage.remove_if_exists(&entry.path())?;
        } else if let Some(log_name) = name.strip_suffix(".swap") {
            if let Some(base) = segment::parse_log_name(log_name) {
                swaps.push(base);
            }
        } else if let Some(base) = segment::parse_log_name(&name) {
            bases.push(base);
        }
    }
    for base in swaps {
        finish_swap(storage, dir, base)?;
        if !bases.contains(&base) {
            bases.push(base);
        }
    }
    bases.sort();
    Ok(bases)
}

fn swap_path(dir: &Path, base: Offset) -> std::path::PathBuf {
    dir.join(format!("{}.log.swap", segment::file_stem(base)))
}

/// Replaces segment `base` by its `.swap` file; its indexes are rebuilt on open.
fn finish_swap(storage: &Storage, dir: &Path, base: Offset) -> Result<()> {
    for path in [
        segment::offset_index_path(dir, base),
        segment::time_index_path(dir, base),
    ] {
        storage.remove_if_exists(&path)?;
    }
    storage.rename_blocking(&swap_path(dir, base), &segment::log_path(dir, base), dir)
}

/// Writes a new segment file sequentially through O_DIRECT in aligned chunks.
struct SegmentWriter {
    file: SegmentFile,
    buffer: Vec<u8>,
    written: u64,
}

const WRITER_CHUNK_BYTES: usize = 1 << 20;

impl SegmentWriter {
    async fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= WRITER_CHUNK_BYTES {
            let aligned = self.buffer.len() - self.buffer.len() % BLOCK_BYTES as usize;
            self.file
                .write_parts(self.written, &[&self.buffer[..aligned]])
                .await?;
            self.buffer.drain(..aligned);
            self.written += aligned as u64;
        }
        Ok(())
    }

    async fn finish(self) -> Result<u64> {
        let size = self.written + self.buffer.len() as u64;
        if !self.buffer.is_empty() {
            self.file.write_parts(self.written, &[&self.buffer]).await?;
        }
        self.file.truncate(size).await?;
        self.file.fdatasync().await?;
        Ok(size)
    }
}

/// One compaction pass over the log's sealed segments. A pass is skipped when no segment was
/// sealed since the last one and that pass left no tombstone waiting for its deletion time.
pub async fn compact(log: &Rc<Log>, now: Timestamp) -> Result<CompactionReport> {
    let config = log.config();
    let sealed_end = log.sealed_segments().last().map(|(_, end, _)| *end);
    if !config.cleanup_policy.compacts()
        || sealed_end.is_none()
        || sealed_end == log.compacted_through.get()
        || log.compacting.replace(true)
    {
        return Ok(CompactionReport::default());
    }
    let result = compact_segments(log, now, &config).await;
    if let Ok(report) = &result {
        log.compacted_through
            .set(sealed_end.filter(|_| report.tombstones_kept == 0));
    }
    log.compacting.set(false);
    result
}

async fn compact_segments(
    log: &Rc<Log>,
    now: Timestamp,
    config: &crate::config::LogConfig,
) -> Result<CompactionReport> {
    let segments = log.sealed_segments();
    let mut report = CompactionReport::default();
    let decompressed_max = config.decompressed_bytes_max;
    let mut latest: HashMap<Bytes, Offset> = HashMap::new();
    for (_, _, path) in &segments {
        let Some(map) = map_sealed(path)? else {
            continue;
        };
        for frame in batch::frames(&map) {
            let batch = Bytes::copy_from_slice(&map[frame.position..frame.end()]);
            if frame.header.is_control() {
                continue;
            }
            for record in record::decode_records(&batch, decompressed_max)? {
                if let Some(key) = record.key {
                    latest.insert(Bytes::copy_from_slice(&key), record.offset);
                }
            }
            coremq_runtime::yield_if_needed().await;
        }
    }
    let tombstone_horizon = Timestamp(now.0.saturating_sub(config.delete_retention_ms as i64));
    let dir = log.dir().to_path_buf();
    for (base, _, path) in &segments {
        let Some(map) = map_sealed(path)? else {
            continue;
        };
        report.bytes_before += map.len() as u64;
        let cleaned = dir.join(format!("{}.log.cleaned", segment::file_stem(*base)));
        let file = SegmentFile::open(&cleaned, true, log.storage.clone()).await?;
        file.truncate(0).await?;
        let mut writer = SegmentWriter {
            file,
            buffer: Vec::new(),
            written: 0,
        };
        let mut removed = 0u64;
        for frame in batch::frames(&map) {
            let original = &map[frame.position..frame.end()];
            let header = frame.header;
            if header.is_control() {
                writer.push(original).await?;
                continue;
            }
            let batch = Bytes::copy_from_slice(original);
            let records = record::decode_records(&batch, decompressed_max)?;
            let total = records.len();
            let kept: Vec<_> = records
                .into_iter()
                .filter(|record| match &record.key {
                    None => true,
                    Some(key) => {
                        latest.get(key) == Some(&record.offset)
                            && !(record.value.is_none() && header.max_timestamp < tombstone_horizon)
                    }
                })
                .collect();
            removed += (total - kept.len()) as u64;
            report.tombstones_kept += kept
                .iter()
                .filter(|record| record.key.is_some() && record.value.is_none())
                .count() as u64;
            if kept.len() == total {
                writer.push(original).await?;
            } else if !kept.is_empty() {
                writer.push(&rebuild(&header, &kept)?).await?;
            }
            coremq_runtime::yield_if_needed().await;
        }
        if removed == 0 {
            drop(writer);
            log.storage.remove_files(vec![cleaned.clone()]).await?;
            report.bytes_after += map.len() as u64;
            continue;
        }
        drop(map);
        let size = writer.finish().await?;
        let swap = swap_path(&dir, *base);
        let (swap_dir, base_offset, storage) = (dir.clone(), *base, log.storage.clone());
        storage::blocking(move || {
            storage.rename_blocking(&cleaned, &swap, &swap_dir)?;
            finish_swap(&storage, &swap_dir, base_offset)
        })
        .await?;
        let interval = config.index_interval_bytes;
        let segment = SealedSegment::open(&dir, *base, interval, log.storage.clone()).await?;
        if !log.replace_sealed(segment) {
            // Retention deleted the original meanwhile: the rewritten copy goes too.
            let gone = SealedSegment::open(&dir, *base, interval, log.storage.clone()).await?;
            gone.delete(&dir).await?;
        }
        report.segments_rewritten += 1;
        report.records_removed += removed;
        report.bytes_after += size;
    }
    if report.segments_rewritten > 0 {
        add(&log.metrics.compactions, 1);
    }
    Ok(report)
}

#[allow(unsafe_code)]
fn map_sealed(path: &Path) -> Result<Option<memmap2::Mmap>> {
    // SAFETY: sealed segment files are never modified; compaction replaces them by rename
    // and retention unlinks them, neither of which disturbs an existing map.
    unsafe { map_read_only(path) }
}

/// A batch holding only `kept` of the original's records, with the original base offset,
/// last offset delta, codec, producer fields and leader epoch (as Kafka's cleaner keeps them).
fn rebuild(header: &BatchHeader, kept: &[record::Record]) -> Result<Vec<u8>> {
    let mut builder = BatchBuilder::new(header.compression()?).producer(
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
    );
    for record in kept {
        let delta = (record.offset.0 - header.base_offset.0) as u32;
        builder.push_at(
            delta,
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
    }
    let mut bytes = builder
        .build_with(
            header.base_offset,
            header.last_offset_delta,
            header.max_timestamp,
        )
        .to_vec();
    batch::set_partition_leader_epoch(&mut bytes, header.partition_leader_epoch);
    Ok(bytes)
}
