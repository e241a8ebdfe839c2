//! Kafka RecordBatch v2: the header, its checks, and walking a buffer of batches.
//!
//! The layout is drawn byte by byte in `docs/format.md`. Everything here is pure: bytes in,
//! values out. The CRC-32C covers the bytes from `attributes` to the end of the batch, so the
//! base offset and partition leader epoch can be patched without recomputing it.

use bytes::{Bytes, BytesMut};

use crate::compression::Compression;
use crate::error::{Error, Result};
use crate::record::{self, RecordsSummary};
use crate::types::{Offset, Position, Timestamp};

/// `baseOffset` (8) + `batchLength` (4): the part of a batch before `batchLength` counts.
pub const LOG_OVERHEAD: usize = 12;
/// Fixed header bytes before the first record.
pub const BATCH_HEADER_BYTES: usize = 61;
/// The only batch format this engine stores.
pub const MAGIC: i8 = 2;

const BATCH_LENGTH_OFFSET: usize = 8;
const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
const RECORDS_COUNT_OFFSET: usize = 57;

const _: () = assert!(RECORDS_COUNT_OFFSET + 4 == BATCH_HEADER_BYTES);
const _: () = assert!(CRC_OFFSET + 4 == ATTRIBUTES_OFFSET);

const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
const ATTRIBUTE_TIMESTAMP_TYPE: i16 = 0x08;
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
const ATTRIBUTE_CONTROL: i16 = 0x20;

/// Whether record timestamps are the producer's or the broker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The fixed 61-byte header of a RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    /// Bytes after the `batchLength` field.
    pub batch_length: u32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: u32,
    pub base_timestamp: Timestamp,
    pub max_timestamp: Timestamp,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: u32,
}

fn be_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn be_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// Parses the header at the start of `bytes`, checking only what the header alone can
    /// tell: length fields, magic and counts. Use [`verify`] to check the CRC too.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(Error::invalid_batch(format!(
                "{} bytes is shorter than the {BATCH_HEADER_BYTES}-byte batch header",
                bytes.len()
            )));
        }
        let base_offset = be_i64(bytes, 0);
        let batch_length = be_i32(bytes, BATCH_LENGTH_OFFSET);
        let magic = bytes[MAGIC_OFFSET] as i8;
        let last_offset_delta = be_i32(bytes, LAST_OFFSET_DELTA_OFFSET);
        let records_count = be_i32(bytes, RECORDS_COUNT_OFFSET);
        if base_offset < 0 {
            return Err(Error::invalid_batch(format!(
                "negative base offset {base_offset}"
            )));
        }
        if magic != MAGIC {
            return Err(Error::invalid_batch(format!(
                "magic {magic} is not supported (only RecordBatch v2, magic 2)"
            )));
        }
        let header_length = (BATCH_HEADER_BYTES - LOG_OVERHEAD) as i32;
        if batch_length < header_length {
            return Err(Error::invalid_batch(format!(
                "batch length {batch_length} is shorter than the header"
            )));
        }
        if last_offset_delta < 0 || records_count < 0 {
            return Err(Error::invalid_batch(format!(
                "negative last offset delta {last_offset_delta} or record count {records_count}"
            )));
        }
        if (base_offset as u64)
            .checked_add(last_offset_delta as u64)
            .is_none_or(|l| l > i64::MAX as u64)
        {
            return Err(Error::invalid_batch("last offset overflows"));
        }
        Ok(BatchHeader {
            base_offset: Offset(base_offset as u64),
            batch_length: batch_length as u32,
            partition_leader_epoch: be_i32(bytes, PARTITION_LEADER_EPOCH_OFFSET),
            magic,
            crc: be_i32(bytes, CRC_OFFSET) as u32,
            attributes: be_i16(bytes, ATTRIBUTES_OFFSET),
            last_offset_delta: last_offset_delta as u32,
            base_timestamp: Timestamp(be_i64(bytes, BASE_TIMESTAMP_OFFSET)),
            max_timestamp: Timestamp(be_i64(bytes, MAX_TIMESTAMP_OFFSET)),
            producer_id: be_i64(bytes, PRODUCER_ID_OFFSET),
            producer_epoch: be_i16(bytes, PRODUCER_EPOCH_OFFSET),
            base_sequence: be_i32(bytes, BASE_SEQUENCE_OFFSET),
            records_count: records_count as u32,
        })
    }

    /// The whole batch's size in bytes, `batchLength` plus the 12 bytes before it.
    pub fn total_bytes(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset.0 + self.last_offset_delta as u64)
    }

    pub fn next_offset(&self) -> Offset {
        self.last_offset().next()
    }

    pub fn compression(&self) -> Result<Compression> {
        Compression::from_id((self.attributes & ATTRIBUTE_COMPRESSION_MASK) as u8)
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & ATTRIBUTE_TIMESTAMP_TYPE != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }
}

/// The CRC-32C a batch should carry: over everything from `attributes` on.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..])
}

/// Parses the header of the batch that fills `batch` exactly and checks its CRC-32C.
/// `position` is where the batch sits in its file, for the error message.
pub fn verify(batch: &[u8], position: Option<Position>) -> Result<BatchHeader> {
    let header = BatchHeader::parse(batch)?;
    if header.total_bytes() != batch.len() {
        return Err(Error::invalid_batch(format!(
            "batch length field says {} bytes but {} bytes were given",
            header.total_bytes(),
            batch.len()
        )));
    }
    let actual = compute_crc(batch);
    if actual != header.crc {
        return Err(Error::ChecksumMismatch {
            expected: header.crc,
            actual,
            position,
        });
    }
    if header.records_count > header.last_offset_delta + 1 {
        return Err(Error::invalid_batch(format!(
            "{} records cannot fit in {} offsets",
            header.records_count,
            header.last_offset_delta + 1
        )));
    }
    Ok(header)
}

/// The bounds a producer's batch is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// The batch as sent (Kafka's `max.message.bytes`).
    pub batch_bytes_max: usize,
    /// Its records once inflated, when compressed.
    pub decompressed_bytes_max: usize,
}

/// The checks an append makes on one batch from a producer: a well-formed, CRC-valid v2
/// batch within `limits`, holding at least one record, with one offset per record, and
/// exactly the records its header counts (walked, after bounded decompression).
pub fn validate_for_append(
    batch: &[u8],
    limits: BatchLimits,
) -> Result<(BatchHeader, RecordsSummary)> {
    if batch.len() > limits.batch_bytes_max {
        return Err(Error::BatchTooLarge {
            size: batch.len(),
            max: limits.batch_bytes_max,
        });
    }
    let header = verify(batch, None)?;
    if header.records_count == 0 {
        return Err(Error::invalid_batch(
            "a batch must hold at least one record",
        ));
    }
    if header.records_count != header.last_offset_delta + 1 {
        return Err(Error::invalid_batch(format!(
            "record count {} does not match last offset delta {}",
            header.records_count, header.last_offset_delta
        )));
    }
    let summary = record::check_records(batch, &header, limits.decompressed_bytes_max)?;
    Ok((header, summary))
}

/// A batch that passed [`validate_for_append`], with its header: appending it does not
/// check it (and compute its CRC-32C) again. It holds its bytes writable, so the append
/// stamps the base offset in place.
#[derive(Debug)]
pub struct CheckedBatch {
    pub(crate) header: BatchHeader,
    pub(crate) summary: RecordsSummary,
    pub(crate) bytes: BytesMut,
}

impl CheckedBatch {
    /// Checks `bytes`; they are copied unless nothing else shares them.
    pub fn new(bytes: Bytes, limits: BatchLimits) -> Result<CheckedBatch> {
        let (header, summary) = validate_for_append(&bytes, limits)?;
        let bytes = bytes
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        Ok(CheckedBatch {
            header,
            summary,
            bytes,
        })
    }

    /// Checks `bytes`, which are never copied (a broker splits a request's batches out of
    /// the frame they arrived in).
    pub fn from_mut(bytes: BytesMut, limits: BatchLimits) -> Result<CheckedBatch> {
        let (header, summary) = validate_for_append(&bytes, limits)?;
        Ok(CheckedBatch {
            header,
            summary,
            bytes,
        })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// What the record walk found (null keys).
    pub fn summary(&self) -> &RecordsSummary {
        &self.summary
    }

    /// The batch as read-only bytes, without copying.
    pub fn into_bytes(self) -> Bytes {
        self.bytes.freeze()
    }
}

/// Writes the base offset (not covered by the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: Offset) {
    batch[..8].copy_from_slice(&(base_offset.0 as i64).to_be_bytes());
}

/// Writes the partition leader epoch (not covered by the CRC).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET + 4]
        .copy_from_slice(&epoch.to_be_bytes());
}

/// Stamps the batch with the broker's clock (LogAppendTime) and recomputes the CRC.
pub fn set_log_append_time(batch: &mut [u8], now: Timestamp) {
    let attributes = be_i16(batch, ATTRIBUTES_OFFSET) | ATTRIBUTE_TIMESTAMP_TYPE;
    batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&now.0.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Fills the first [`BATCH_HEADER_BYTES`] of `batch`, whose records follow them, with
/// `header` (its length taken from `batch`) and the CRC, so a builder that left room for the
/// header never copies its records.
pub fn write_header(header: &BatchHeader, batch: &mut [u8]) {
    let batch_length = (batch.len() - LOG_OVERHEAD) as i32;
    let mut at = 0;
    let mut put = |field: &[u8]| {
        batch[at..at + field.len()].copy_from_slice(field);
        at += field.len();
    };
    put(&(header.base_offset.0 as i64).to_be_bytes());
    put(&batch_length.to_be_bytes());
    put(&header.partition_leader_epoch.to_be_bytes());
    put(&[MAGIC as u8]);
    put(&0u32.to_be_bytes());
    put(&header.attributes.to_be_bytes());
    put(&(header.last_offset_delta as i32).to_be_bytes());
    put(&header.base_timestamp.0.to_be_bytes());
    put(&header.max_timestamp.0.to_be_bytes());
    put(&header.producer_id.to_be_bytes());
    put(&header.producer_epoch.to_be_bytes());
    put(&header.base_sequence.to_be_bytes());
    put(&(header.records_count as i32).to_be_bytes());
    debug_assert_eq!(at, BATCH_HEADER_BYTES);
    let crc = compute_crc(batch);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Attribute bits for a batch built with `compression` and `timestamp_type`.
pub fn attributes(compression: Compression, timestamp_type: TimestampType) -> i16 {
    let mut attributes = compression.id() as i16;
    if timestamp_type == TimestampType::LogAppendTime {
        attributes |= ATTRIBUTE_TIMESTAMP_TYPE;
    }
    attributes
}

/// Where one batch sits in a buffer of consecutive batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchFrame {
    pub position: usize,
    pub header: BatchHeader,
}

impl BatchFrame {
    pub fn end(&self) -> usize {
        self.position + self.header.total_bytes()
    }
}

/// Walks the complete batch headers in `bytes` without checking CRCs; stops before the
/// first batch that is truncated or whose header does not parse.
pub fn frames(bytes: &[u8]) -> impl Iterator<Item = BatchFrame> + '_ {
    let mut position = 0usize;
    std::iter::from_fn(move || {
        let header = BatchHeader::parse(&bytes[position..]).ok()?;
        if bytes.len() - position < header.total_bytes() {
            return None;
        }
        let frame = BatchFrame { position, header };
        position += header.total_bytes();
        Some(frame)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a complete header in front of `records` (already compressed if the attributes say
    /// so) and fills in the CRC. `records` must hold `header.records_count` records.
    fn encode(header: &BatchHeader, records: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + records.len());
        out.resize(BATCH_HEADER_BYTES, 0);
        out.extend_from_slice(records);
        write_header(header, &mut out);
        out
    }

    fn header(records_count: u32) -> BatchHeader {
        BatchHeader {
            base_offset: Offset(0),
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: MAGIC,
            crc: 0,
            attributes: attributes(Compression::None, TimestampType::CreateTime),
            last_offset_delta: records_count - 1,
            base_timestamp: Timestamp(1_000),
            max_timestamp: Timestamp(2_000),
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count,
        }
    }

    #[test]
    fn header_round_trips() {
        let bytes = encode(&header(3), b"abc");
        let parsed = verify(&bytes, None).unwrap();
        assert_eq!(parsed.total_bytes(), bytes.len());
        assert_eq!(parsed.records_count, 3);
        assert_eq!(parsed.max_timestamp, Timestamp(2_000));
        assert_eq!(parsed.crc, compute_crc(&bytes));
        assert_eq!(parsed.compression().unwrap(), Compression::None);
    }

    #[test]
    fn base_offset_and_epoch_patch_keeps_crc_valid() {
        let mut bytes = encode(&header(1), b"x");
        set_base_offset(&mut bytes, Offset(77));
        set_partition_leader_epoch(&mut bytes, 5);
        let parsed = verify(&bytes, None).unwrap();
        assert_eq!(parsed.base_offset, Offset(77));
        assert_eq!(parsed.partition_leader_epoch, 5);
    }

    #[test]
    fn log_append_time_rewrites_crc() {
        let mut bytes = encode(&header(1), b"x");
        set_log_append_time(&mut bytes, Timestamp(9_999));
        let parsed = verify(&bytes, None).unwrap();
        assert_eq!(parsed.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(parsed.max_timestamp, Timestamp(9_999));
    }

    #[test]
    fn bit_flip_is_a_checksum_mismatch() {
        let mut bytes = encode(&header(1), b"payload");
        bytes[BATCH_HEADER_BYTES + 2] ^= 0x10;
        let error = verify(&bytes, Some(Position(4096))).unwrap_err();
        assert!(matches!(
            error,
            Error::ChecksumMismatch {
                position: Some(Position(4096)),
                ..
            }
        ));
    }

    const LIMITS: BatchLimits = BatchLimits {
        batch_bytes_max: 1 << 20,
        decompressed_bytes_max: 1 << 20,
    };

    /// Encoded records with the given offset deltas, each with key `k` and a null value.
    fn records(offset_deltas: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &delta in offset_deltas {
            assert!(delta < 64, "one-byte zigzag varints only");
            // length 7: attributes, timestamp delta 0, offset delta, key `k`, null value,
            // no headers.
            out.extend_from_slice(&[14, 0, 0, delta << 1, 2, b'k', 1, 0]);
        }
        out
    }

    /// Rewrites a built batch's count fields (and its CRC), as a hostile producer would.
    fn recount(batch: &[u8], records_count: u32) -> Vec<u8> {
        let mut header = BatchHeader::parse(batch).unwrap();
        header.records_count = records_count;
        header.last_offset_delta = records_count - 1;
        let mut out = batch.to_vec();
        write_header(&header, &mut out);
        out
    }

    #[test]
    fn append_checks_reject_bad_batches() {
        let good = encode(&header(2), &records(&[0, 1]));
        let (checked, summary) = validate_for_append(&good, LIMITS).unwrap();
        assert_eq!(checked.records_count, 2);
        assert!(summary.null_keys.is_empty());
        let too_large = validate_for_append(
            &good,
            BatchLimits {
                batch_bytes_max: 10,
                ..LIMITS
            },
        )
        .unwrap_err();
        assert!(matches!(too_large, Error::BatchTooLarge { max: 10, .. }));
        let mut wrong_magic = good.clone();
        wrong_magic[MAGIC_OFFSET] = 1;
        assert!(validate_for_append(&wrong_magic, LIMITS).is_err());
        let mut gap = header(2);
        gap.last_offset_delta = 5;
        assert!(validate_for_append(&encode(&gap, &records(&[0, 1])), LIMITS).is_err());
        assert!(validate_for_append(&good[..good.len() - 1], LIMITS).is_err());
        let mut bad_codec = header(1);
        bad_codec.attributes = 7;
        assert!(validate_for_append(&encode(&bad_codec, &records(&[0])), LIMITS).is_err());
    }

    #[test]
    fn record_count_must_match_the_records_present() {
        // The batch that once crashed a shard: 2^31-1 records claimed, one present.
        let claimed = i32::MAX as u32;
        let huge_claim = encode(&header(claimed), &records(&[0]));
        let error = validate_for_append(&huge_claim, LIMITS).unwrap_err();
        assert!(error.to_string().contains("holds 1"), "{error}");
        let fewer_claimed = encode(&header(1), &records(&[0, 1]));
        let error = validate_for_append(&fewer_claimed, LIMITS).unwrap_err();
        assert!(error.to_string().contains("left over"), "{error}");
        let out_of_order = encode(&header(2), &records(&[1, 0]));
        let error = validate_for_append(&out_of_order, LIMITS).unwrap_err();
        assert!(error.to_string().contains("offset delta"), "{error}");
        // Compressed batches are inflated (bounded) and counted too.
        for codec in [
            Compression::Zstd,
            Compression::Gzip,
            Compression::Lz4,
            Compression::Snappy,
        ] {
            let mut builder = crate::record::BatchBuilder::new(codec);
            builder.push(Timestamp(5), None, Some(&[7; 5000]), &[]);
            let one = builder.build();
            let (_, summary) = validate_for_append(&one, LIMITS).unwrap();
            assert_eq!(summary.null_keys, [0]);
            let error = validate_for_append(&recount(&one, claimed), LIMITS).unwrap_err();
            assert!(error.to_string().contains("holds 1"), "{codec:?}: {error}");
            let tight = BatchLimits {
                decompressed_bytes_max: 1000,
                ..LIMITS
            };
            assert!(matches!(
                validate_for_append(&one, tight),
                Err(Error::DecompressedTooLarge { max: 1000 })
            ));
        }
    }

    #[test]
    fn frames_stop_at_a_torn_tail() {
        let mut buffer = encode(&header(1), b"one");
        let first = buffer.len();
        buffer.extend(encode(&header(1), b"two"));
        buffer.extend_from_slice(&encode(&header(1), b"three")[..20]);
        let found: Vec<_> = frames(&buffer).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].position, first);
        assert_eq!(found[1].end(), 2 * first);
    }
}
