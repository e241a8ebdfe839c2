//! The read path: whole stored batches from the tail cache or from disk (through the log's
//! read streams and their readahead), CRC-checked before they are served, and lookups by
//! timestamp.

use std::time::Duration;

use bytes::Bytes;

use crate::batch::{self, BatchHeader};
use crate::error::{Error, Result};
use crate::metrics::add;
use crate::readahead::ReadStream;
use crate::record;
use crate::segment::ReadView;
use crate::types::{Offset, Position, Timestamp};

use super::{Isolation, Log, ReadBatches};

/// Smallest disk read, so short fetches still read a useful chunk.
const READ_BYTES_MIN: u64 = 64 << 10;
/// Readers a log keeps read streams (and their readahead) for.
const READ_STREAMS_MAX: usize = 4;

impl Log {
    /// Reads whole batches starting with the one that holds `from`, up to `max_bytes`
    /// (at least one batch), bounded by the watermark `isolation` names.
    pub async fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadBatches> {
        let (upper, log_start, log_end) = {
            let inner = self.inner.borrow();
            let upper = match isolation {
                Isolation::Written => inner.written,
                Isolation::Committed => inner.committed.min(inner.written),
            };
            (upper, inner.log_start, inner.active.next_offset())
        };
        if from < log_start || from > log_end {
            return Err(Error::OffsetOutOfRange {
                requested: from,
                log_start,
                log_end,
            });
        }
        let mut result = ReadBatches {
            batches: Vec::new(),
            high_watermark: upper,
            log_start,
        };
        if from >= upper {
            return Ok(result);
        }
        {
            let inner = self.inner.borrow();
            if inner.cache.covers(from) {
                result.batches = inner.cache.read(from, upper, max_bytes);
                add(&self.metrics.cache_hits, 1);
                self.count_read(&result.batches);
                return Ok(result);
            }
        }
        add(&self.metrics.cache_misses, 1);
        // Walk segments in order from the one holding `from`; a segment may hold nothing at
        // or after the target (compaction leaves gaps, even empty segments).
        let target = from;
        let mut after: Option<Offset> = None;
        loop {
            let (mut view, sealed_base, interval) = {
                let inner = self.inner.borrow();
                let sealed = match after {
                    None => inner
                        .sealed
                        .range(..=target)
                        .next_back()
                        .filter(|(_, segment)| segment.next_offset() > target)
                        .or_else(|| inner.sealed.range(target..).next()),
                    Some(previous) => inner.sealed.range(previous.next()..).next(),
                };
                let view = match sealed {
                    Some((&base, segment)) => segment.read_view(target.max(base)),
                    None => inner.active.read_view(target),
                };
                (
                    view,
                    sealed.map(|(&base, _)| base),
                    inner.config.index_interval_bytes,
                )
            };
            let mut stream = self.take_stream(&mut view, target);
            let want = interval
                .saturating_add(max_bytes as u64)
                .max(READ_BYTES_MIN);
            let read = read_segment(&mut stream, &view, target, upper, max_bytes, want).await?;
            result.batches = read.batches;
            if let Some(last) = result.batches.last() {
                stream.set_next(BatchHeader::parse(last)?.next_offset(), read.end);
                self.put_stream(stream);
            }
            match sealed_base {
                Some(base) if result.batches.is_empty() => after = Some(base),
                _ => break,
            }
        }
        self.count_read(&result.batches);
        Ok(result)
    }

    /// The stream of the reader whose last read in `view`'s file ended at `from`, with the
    /// view moved to where that read ended; a new stream for any other read.
    fn take_stream(&self, view: &mut ReadView, from: Offset) -> ReadStream {
        let mut streams = self.streams.borrow_mut();
        let found = streams
            .iter()
            .enumerate()
            .find_map(|(index, stream)| Some((index, stream.continues_at(&view.file, from)?)));
        match found {
            Some((index, position)) => {
                add(&self.metrics.readahead_hits, 1);
                view.start_position = Position(position);
                streams.remove(index).expect("index was just found")
            }
            None => ReadStream::new(view.file.clone()),
        }
    }

    fn put_stream(&self, stream: ReadStream) {
        let mut streams = self.streams.borrow_mut();
        if streams.len() == READ_STREAMS_MAX {
            streams.pop_front();
        }
        streams.push_back(stream);
    }

    /// Drops the streams of readers that have not read for `max_age`, with the memory their
    /// readahead holds.
    pub(crate) fn expire_streams(&self, max_age: Duration) {
        self.streams
            .borrow_mut()
            .retain(|stream| stream.used.elapsed() < max_age);
    }

    fn count_read(&self, batches: &[Bytes]) {
        for batch in batches {
            add(&self.metrics.bytes_read, batch.len() as u64);
            if let Ok(header) = BatchHeader::parse(batch) {
                add(&self.metrics.records_read, u64::from(header.records_count));
            }
        }
    }

    /// The first record at or after `timestamp` (Kafka ListOffsets by time): its offset and
    /// timestamp, or `None` if every record is older.
    pub async fn offset_for_timestamp(
        &self,
        timestamp: Timestamp,
    ) -> Result<Option<(Offset, Timestamp)>> {
        let (mut from, decompressed_bytes_max) = {
            let inner = self.inner.borrow();
            let sealed = inner
                .sealed
                .values()
                .find(|segment| segment.max_timestamp().is_some_and(|max| max >= timestamp))
                .map(|segment| segment.time_index().lookup(timestamp));
            let active = &inner.active;
            let start = sealed.or_else(|| {
                active
                    .max_timestamp()
                    .is_some_and(|max| max >= timestamp)
                    .then(|| active.time_index().lookup(timestamp))
            });
            match start {
                Some(start) => (
                    start.max(inner.log_start),
                    inner.config.decompressed_bytes_max,
                ),
                None => return Ok(None),
            }
        };
        loop {
            let read = self.read(from, 1 << 20, Isolation::Written).await?;
            let Some(last) = read.batches.last() else {
                return Ok(None);
            };
            for batch in &read.batches {
                let header = BatchHeader::parse(batch)?;
                if header.max_timestamp < timestamp {
                    continue;
                }
                let records = record::decode_records(batch, decompressed_bytes_max)?;
                let found = records
                    .iter()
                    .find(|record| record.offset >= from && record.timestamp >= timestamp);
                if let Some(record) = found {
                    return Ok(Some((record.offset, record.timestamp)));
                }
            }
            from = BatchHeader::parse(last)?.next_offset();
        }
    }

    /// The first record holding the log's largest timestamp (Kafka ListOffsets MAX_TIMESTAMP,
    /// KIP-734): its offset and timestamp, or `None` if the log holds no record.
    pub async fn max_timestamp_record(&self) -> Result<Option<(Offset, Timestamp)>> {
        let max = {
            let inner = self.inner.borrow();
            let sealed = inner
                .sealed
                .values()
                .filter_map(|segment| segment.max_timestamp());
            sealed.chain(inner.active.max_timestamp()).max()
        };
        match max {
            Some(max) => self.offset_for_timestamp(max).await,
            None => Ok(None),
        }
    }
}

/// Batches read from one segment, and the file position just after the last.
struct SegmentRead {
    batches: Vec<Bytes>,
    end: u64,
}

/// Reads whole batches of one segment starting at the one holding `from`, verifying each
/// batch's CRC-32C: corrupt bytes are an error to the reader, never served.
async fn read_segment(
    stream: &mut ReadStream,
    view: &ReadView,
    from: Offset,
    upper: Offset,
    max_bytes: usize,
    mut want: u64,
) -> Result<SegmentRead> {
    let mut position = view.start_position.0;
    let none = SegmentRead {
        batches: Vec::new(),
        end: position,
    };
    loop {
        if position >= view.end {
            return Ok(none);
        }
        let chunk = stream.read(position, want, view.end).await?;
        let mut batches = Vec::new();
        let mut bytes = 0;
        let mut consumed = 0;
        let mut stopped = false;
        for frame in batch::frames(&chunk) {
            let size = frame.header.total_bytes();
            if frame.header.next_offset() <= from {
                consumed = frame.end();
                continue;
            }
            if frame.header.base_offset >= upper
                || (!batches.is_empty() && bytes + size > max_bytes)
            {
                stopped = true;
                break;
            }
            let batch = chunk.slice(frame.position..frame.end());
            batch::verify(&batch, Some(Position(position + frame.position as u64)))?;
            bytes += size;
            consumed = frame.end();
            batches.push(batch);
        }
        if stopped || !batches.is_empty() {
            return Ok(SegmentRead {
                batches,
                end: position + consumed as u64,
            });
        }
        let read_to_end = position + chunk.len() as u64 >= view.end;
        position += consumed as u64;
        if position >= view.end {
            return Ok(none);
        }
        let corrupt = |reason: String| Error::Corrupt {
            path: view.file.path().to_path_buf(),
            reason,
        };
        match BatchHeader::parse(&chunk[consumed..]) {
            Ok(header) if position + header.total_bytes() as u64 > view.end => {
                return Err(corrupt(format!(
                    "batch at position {position} claims {} bytes past the end of the segment",
                    header.total_bytes()
                )));
            }
            Ok(header) => want = want.max(header.total_bytes() as u64),
            Err(error) if read_to_end || chunk.len() - consumed >= batch::BATCH_HEADER_BYTES => {
                return Err(corrupt(format!(
                    "unreadable batch at position {position}: {error}"
                )));
            }
            Err(_) => {}
        }
    }
}
