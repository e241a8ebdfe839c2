//! Recovery of a segment's bytes: walk batch by batch, check each length and CRC-32C, stop
//! at the first torn or corrupt batch, and rebuild the indexes on the way (they are derived
//! data). Pure: the caller reads the file and truncates it to `valid_bytes`.

use crate::batch::{self, BatchHeader};
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
}

/// What a scan found: the valid prefix and everything derived from it.
#[derive(Debug)]
pub struct Scan {
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
}

/// Scans a segment's bytes. Batches must not start before `base_offset` and their offsets
/// must increase; gaps are allowed (compaction leaves them).
pub fn scan(bytes: &[u8], base_offset: Offset, index_interval_bytes: u64) -> Scan {
    let mut result = Scan {
        valid_bytes: 0,
        batch_count: 0,
        next_offset: base_offset,
        max_timestamp: None,
        offset_index: OffsetIndexWriter::new(base_offset, index_interval_bytes),
        time_index: TimeIndexWriter::new(base_offset, index_interval_bytes),
        stop: None,
        producer_batches: Vec::new(),
    };
    let mut position = 0usize;
    while position < bytes.len() {
        let rest = &bytes[position..];
        let at = Position(position as u64);
        let header = match BatchHeader::parse(rest) {
            Ok(header) if header.total_bytes() <= rest.len() => header,
            Ok(_) => {
                result.stop = Some(Stop::Truncated { position: at });
                break;
            }
            Err(_) if rest.len() < batch::BATCH_HEADER_BYTES || is_zero(rest) => {
                result.stop = Some(Stop::Truncated { position: at });
                break;
            }
            Err(error) => {
                result.stop = Some(Stop::Corrupt {
                    position: at,
                    error,
                });
                break;
            }
        };
        let batch = &rest[..header.total_bytes()];
        if let Err(error) = batch::verify(batch, Some(at)) {
            result.stop = Some(Stop::Corrupt {
                position: at,
                error,
            });
            break;
        }
        if header.base_offset < result.next_offset {
            let error = Error::invalid_batch(format!(
                "batch base offset {} goes back before {}",
                header.base_offset, result.next_offset
            ));
            result.stop = Some(Stop::Corrupt {
                position: at,
                error,
            });
            break;
        }
        if header.last_offset().0 - base_offset.0 > u64::from(u32::MAX) {
            let error = Error::invalid_batch("batch offset is too far from the segment base");
            result.stop = Some(Stop::Corrupt {
                position: at,
                error,
            });
            break;
        }
        let batch_bytes = header.total_bytes() as u64;
        result
            .offset_index
            .on_batch(header.base_offset, at, batch_bytes);
        result
            .time_index
            .on_batch(header.base_offset, header.max_timestamp, batch_bytes);
        result.next_offset = header.next_offset();
        result.batch_count += 1;
        result.producer_batches.extend(ProducerBatch::of(&header));
        position += header.total_bytes();
        result.valid_bytes = position as u64;
    }
    result.max_timestamp = result.time_index.max_timestamp();
    result
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
}
