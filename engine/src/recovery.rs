//! Recovery of a segment's bytes: walk batch by batch, check each length and CRC-32C, stop
//! at the first torn or corrupt batch, and rebuild the indexes on the way (they are derived
//! data). Pure: the caller reads the file (whole, or in chunks through [`Scan::feed`]) and
//! truncates it to `valid_bytes`.

use crate::batch::{self, BatchHeader};
use crate::epochs::LeaderEpochs;
use crate::error::Error;
use crate::offset_index::OffsetIndexWriter;
use crate::producers::ProducerBatch;
use crate::time_index::TimeIndexWriter;
use crate::types::{Offset, Position, Timestamp};

/// Why a scan stopped before the end of the bytes.
#[derive(Debug)]
pub enum Stop {
    /// The bytes end inside a batch (a torn write) or are padding zeros.
    Truncated { position: Position },
    /// A whole batch is there but fails its checks.
    Corrupt { position: Position, error: Error },
    /// The batch here reaches the offset the scan was asked to stop at (a truncation).
    Limit { position: Position },
}

/// What a scan found: the valid prefix and everything derived from it.
#[derive(Debug)]
pub struct Scan {
    pub base_offset: Offset,
    pub valid_bytes: u64,
    pub batch_count: u64,
    /// The offset after the last valid batch (`base_offset` for an empty segment).
    pub next_offset: Offset,
    pub max_timestamp: Option<Timestamp>,
    pub offset_index: OffsetIndexWriter,
    pub time_index: TimeIndexWriter,
    /// `None` when every byte was a valid batch.
    pub stop: Option<Stop>,
    /// The batches of idempotent producers, in order (they rebuild producer state).
    pub producer_batches: Vec<ProducerBatch>,
    /// The leader epochs the batches start, each at its first batch.
    pub epochs: LeaderEpochs,
    /// Batches holding this offset or later end the scan (see [`Scan::stopping_at`]).
    limit: Option<Offset>,
}

/// Scans a segment's bytes. Batches must not start before `base_offset` and their offsets
/// must increase; gaps are allowed (compaction leaves them).
pub fn scan(bytes: &[u8], base_offset: Offset, index_interval_bytes: u64) -> Scan {
    let mut scan = Scan::new(base_offset, index_interval_bytes);
    scan.feed(bytes, true);
    scan.finish()
}

/// What a chunk fed to [`Scan::feed`] left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The scan stopped (see [`Scan::stop`]).
    Stopped,
    /// Every byte was a whole valid batch.
    Consumed,
    /// The chunk ends inside a batch: feed at least this many bytes from `valid_bytes`.
    NeedBytes(usize),
}

impl Scan {
    /// An empty scan of a segment starting at `base_offset`, for [`Scan::feed`].
    pub fn new(base_offset: Offset, index_interval_bytes: u64) -> Scan {
        Scan {
            base_offset,
            valid_bytes: 0,
            batch_count: 0,
            next_offset: base_offset,
            max_timestamp: None,
            offset_index: OffsetIndexWriter::new(base_offset, index_interval_bytes),
            time_index: TimeIndexWriter::new(base_offset, index_interval_bytes),
            stop: None,
            producer_batches: Vec::new(),
            epochs: LeaderEpochs::default(),
            limit: None,
        }
    }

    /// Makes the scan end before the first batch whose last offset is `limit` or later, as a
    /// truncation to `limit` cuts the segment (Kafka's `LogSegment.truncateTo`: a batch that
    /// holds `limit` goes whole).
    pub fn stopping_at(mut self, limit: Offset) -> Scan {
        self.limit = Some(limit);
        self
    }

    /// Scans `bytes`, which start at `valid_bytes` in the segment; `at_end` says they run to
    /// the end of the file, so a batch they cut short is a torn tail, not a chunk boundary.
    pub fn feed(&mut self, bytes: &[u8], at_end: bool) -> Feed {
        let base_offset = self.base_offset;
        let mut position = 0usize;
        while position < bytes.len() {
            let rest = &bytes[position..];
            let at = Position(self.valid_bytes);
            let header = match BatchHeader::parse(rest) {
                Ok(header) if header.total_bytes() <= rest.len() => header,
                Ok(header) if !at_end => return Feed::NeedBytes(header.total_bytes()),
                Err(_) if !at_end && rest.len() < batch::BATCH_HEADER_BYTES => {
                    return Feed::NeedBytes(batch::BATCH_HEADER_BYTES);
                }
                Ok(_) => return self.stopped(Stop::Truncated { position: at }),
                Err(_) if rest.len() < batch::BATCH_HEADER_BYTES || is_zero(rest) => {
                    return self.stopped(Stop::Truncated { position: at });
                }
                Err(error) => {
                    return self.stopped(Stop::Corrupt {
                        position: at,
                        error,
                    });
                }
            };
            if self
                .limit
                .is_some_and(|limit| header.last_offset() >= limit)
            {
                return self.stopped(Stop::Limit { position: at });
            }
            let batch = &rest[..header.total_bytes()];
            if let Err(error) = batch::verify(batch, Some(at)) {
                return self.stopped(Stop::Corrupt {
                    position: at,
                    error,
                });
            }
            if header.base_offset < self.next_offset {
                let error = Error::invalid_batch(format!(
                    "batch base offset {} goes back before {}",
                    header.base_offset, self.next_offset
                ));
                return self.stopped(Stop::Corrupt {
                    position: at,
                    error,
                });
            }
            if header.last_offset().0 - base_offset.0 > u64::from(u32::MAX) {
                let error = Error::invalid_batch("batch offset is too far from the segment base");
                return self.stopped(Stop::Corrupt {
                    position: at,
                    error,
                });
            }
            let batch_bytes = header.total_bytes() as u64;
            self.offset_index
                .on_batch(header.base_offset, at, batch_bytes);
            self.time_index
                .on_batch(header.base_offset, header.max_timestamp, batch_bytes);
            self.next_offset = header.next_offset();
            self.batch_count += 1;
            self.producer_batches.extend(ProducerBatch::of(&header));
            self.epochs
                .assign(header.partition_leader_epoch, header.base_offset);
            position += header.total_bytes();
            self.valid_bytes += batch_bytes;
        }
        Feed::Consumed
    }

    fn stopped(&mut self, stop: Stop) -> Feed {
        self.stop = Some(stop);
        Feed::Stopped
    }

    /// Completes the scan (its max timestamp).
    pub fn finish(mut self) -> Scan {
        self.max_timestamp = self.time_index.max_timestamp();
        self
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .take(batch::BATCH_HEADER_BYTES)
        .all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::Compression;
    use crate::record::BatchBuilder;

    fn segment(batches: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        for n in 0..batches {
            let mut builder = BatchBuilder::new(Compression::None);
            builder.push(Timestamp(n as i64), None, Some(&[n as u8; 100]), &[]);
            builder.push(Timestamp(n as i64), None, Some(&[n as u8; 100]), &[]);
            let mut batch = builder.build().to_vec();
            batch::set_base_offset(&mut batch, Offset(10 + 2 * n));
            bytes.extend(batch);
        }
        bytes
    }

    #[test]
    fn clean_segment_scans_to_the_end() {
        let bytes = segment(50);
        let scan = scan(&bytes, Offset(10), 1024);
        assert!(scan.stop.is_none());
        assert_eq!(scan.valid_bytes, bytes.len() as u64);
        assert_eq!(scan.next_offset, Offset(110));
        assert_eq!(scan.batch_count, 50);
        assert_eq!(scan.max_timestamp, Some(Timestamp(49)));
        assert!(scan.offset_index.view().len() > 1);
    }

    #[test]
    fn torn_tail_and_zero_padding_truncate() {
        let bytes = segment(5);
        let batch_bytes = bytes.len() / 5;
        let torn = &bytes[..bytes.len() - 7];
        let result = scan(torn, Offset(10), 1024);
        assert_eq!(result.valid_bytes, 4 * batch_bytes as u64);
        assert!(matches!(result.stop, Some(Stop::Truncated { .. })));
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + 4096, 0);
        let result = scan(&padded, Offset(10), 1024);
        assert_eq!(result.valid_bytes, bytes.len() as u64);
        assert_eq!(result.next_offset, Offset(20));
    }

    #[test]
    fn bit_flip_stops_at_the_corrupt_batch() {
        let mut bytes = segment(5);
        let batch_bytes = bytes.len() / 5;
        bytes[2 * batch_bytes + 100] ^= 1;
        let result = scan(&bytes, Offset(10), 1024);
        assert_eq!(result.valid_bytes, 2 * batch_bytes as u64);
        assert!(matches!(
            result.stop,
            Some(Stop::Corrupt {
                error: Error::ChecksumMismatch { .. },
                ..
            })
        ));
    }

    #[test]
    fn offsets_going_backwards_are_corrupt() {
        let mut bytes = segment(2);
        let batch_bytes = bytes.len() / 2;
        batch::set_base_offset(&mut bytes[batch_bytes..], Offset(10));
        let result = scan(&bytes, Offset(10), 1024);
        assert_eq!(result.valid_bytes, batch_bytes as u64);
    }

    #[test]
    fn a_limit_ends_the_scan_before_the_batch_holding_it() {
        let bytes = segment(5);
        let batch_bytes = (bytes.len() / 5) as u64;
        for (limit, kept) in [
            (10, 0),
            (13, 1),
            (14, 2),
            (15, 2),
            (19, 4),
            (20, 5),
            (99, 5),
        ] {
            let mut scan = Scan::new(Offset(10), 1024).stopping_at(Offset(limit));
            scan.feed(&bytes, true);
            assert_eq!(scan.valid_bytes, kept * batch_bytes, "limit {limit}");
            assert_eq!(scan.next_offset, Offset(10 + 2 * kept));
            assert_eq!(scan.stop.is_some(), kept < 5);
        }
    }

    #[test]
    fn epochs_start_at_the_first_batch_of_each() {
        let mut bytes = segment(6);
        let batch_bytes = bytes.len() / 6;
        for (n, epoch) in [0, 0, 3, 3, 3, 7].into_iter().enumerate() {
            let batch = &mut bytes[n * batch_bytes..(n + 1) * batch_bytes];
            batch::set_partition_leader_epoch(batch, epoch);
        }
        let scan = scan(&bytes, Offset(10), 1024);
        let starts: Vec<_> = scan
            .epochs
            .entries()
            .iter()
            .map(|entry| (entry.epoch, entry.start_offset.0))
            .collect();
        assert_eq!(starts, [(0, 10), (3, 14), (7, 20)]);
    }

    #[test]
    fn chunks_of_any_size_scan_as_one() {
        let mut bytes = segment(20);
        bytes.truncate(bytes.len() - 50);
        let whole = scan(&bytes, Offset(10), 1024);
        for chunk in [1, 7, 61, 230, 1000, 5000] {
            let mut chunked = Scan::new(Offset(10), 1024);
            let mut want = chunk;
            loop {
                let start = chunked.valid_bytes as usize;
                let end = (start + want).min(bytes.len());
                match chunked.feed(&bytes[start..end], end == bytes.len()) {
                    Feed::Stopped => break,
                    Feed::Consumed if end == bytes.len() => break,
                    Feed::Consumed => want = chunk,
                    Feed::NeedBytes(need) => want = need.max(chunk),
                }
            }
            let chunked = chunked.finish();
            assert_eq!(chunked.valid_bytes, whole.valid_bytes, "chunk {chunk}");
            assert_eq!(chunked.next_offset, whole.next_offset);
            assert_eq!(chunked.batch_count, whole.batch_count);
            assert_eq!(chunked.offset_index.bytes(), whole.offset_index.bytes());
            assert_eq!(chunked.time_index.bytes(), whole.time_index.bytes());
            assert!(matches!(chunked.stop, Some(Stop::Truncated { .. })));
        }
    }
}
