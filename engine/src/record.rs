//! Records inside a RecordBatch v2: zigzag varints, decoding a batch's records, and the
//! builder the embedded API uses to make batches.

use std::ops::Range;

use bytes::Bytes;

use crate::batch::{self, BATCH_HEADER_BYTES, BatchHeader, TimestampType};
use crate::compression::{self, Compression};
use crate::error::{Error, Result};
use crate::types::{Offset, Timestamp};

/// One record header: a key (UTF-8 by Kafka's convention, kept as bytes) and a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// A record with its absolute offset and timestamp, as decoded from a stored batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub timestamp: Timestamp,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = zigzag(value);
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn varint_len(value: i64) -> usize {
    (64 - zigzag(value).leading_zeros() as usize)
        .max(1)
        .div_ceil(7)
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(bytes) => {
            put_varint(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
    }
}

fn bytes_len(bytes: Option<&[u8]>) -> usize {
    bytes.map_or(varint_len(-1), |bytes| {
        varint_len(bytes.len() as i64) + bytes.len()
    })
}

/// A cursor over untrusted record bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<i64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(Error::invalid_batch("record varint runs past the batch"));
            };
            self.at += 1;
            if shift == 63 && byte > 1 {
                return Err(Error::invalid_batch("record varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(Error::invalid_batch(
            "record varint is longer than 10 bytes",
        ))
    }

    fn byte(&mut self) -> Result<u8> {
        let byte = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| Error::invalid_batch("record runs past the batch"))?;
        self.at += 1;
        Ok(byte)
    }

    /// A length-prefixed field: where its bytes are, or `None` for a null (-1 length).
    fn field(&mut self) -> Result<Option<Range<usize>>> {
        let length = self.varint()?;
        if length < 0 {
            return Ok(None);
        }
        let length = length as usize;
        if length > self.bytes.len() - self.at {
            return Err(Error::invalid_batch(
                "record field length runs past the batch",
            ));
        }
        let range = self.at..self.at + length;
        self.at += length;
        Ok(Some(range))
    }
}

/// One record as found in a batch's (decompressed) record bytes: its fields are ranges of
/// those bytes. `headers` is a scratch list the walk reuses from record to record.
struct RecordView<'a> {
    timestamp_delta: i64,
    offset_delta: u32,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    headers: &'a [(Range<usize>, Option<Range<usize>>)],
}

/// The record bytes of one batch (`batch` holds exactly the batch) inflated, or `None` when
/// they are not compressed; refuses more than `decompressed_bytes_max`.
fn inflate(
    batch: &[u8],
    header: &BatchHeader,
    decompressed_bytes_max: usize,
) -> Result<Option<Vec<u8>>> {
    if header.total_bytes() != batch.len() {
        return Err(Error::invalid_batch(
            "batch length does not match the bytes given",
        ));
    }
    match header.compression()? {
        Compression::None => Ok(None),
        codec => {
            compression::decompress(codec, &batch[BATCH_HEADER_BYTES..], decompressed_bytes_max)
                .map(Some)
        }
    }
}

/// Walks the records of `body`, which must hold exactly `header.records_count` well-formed
/// records and nothing after them: a count the bytes do not hold is an error, however large
/// (a batch claiming 2^31-1 records while holding one is refused here, as Kafka's
/// `LogValidator` refuses it).
fn walk_records(
    body: &[u8],
    header: &BatchHeader,
    mut visit: impl FnMut(&RecordView<'_>) -> Result<()>,
) -> Result<()> {
    let mut reader = Reader { bytes: body, at: 0 };
    let mut headers = Vec::new();
    for index in 0..header.records_count {
        if reader.at == body.len() {
            return Err(Error::invalid_batch(format!(
                "the batch says it holds {} records but holds {index}",
                header.records_count
            )));
        }
        let length = reader.varint()?;
        let start = reader.at;
        if length < 0 || length as usize > body.len() - start {
            return Err(Error::invalid_batch(format!(
                "record length {length} is out of range"
            )));
        }
        let _attributes = reader.byte()?;
        let timestamp_delta = reader.varint()?;
        let offset_delta = reader.varint()?;
        if offset_delta < 0 || offset_delta > i64::from(header.last_offset_delta) {
            return Err(Error::invalid_batch(format!(
                "record offset delta {offset_delta} is out of range"
            )));
        }
        let key = reader.field()?;
        let value = reader.field()?;
        let header_count = reader.varint()?;
        if header_count < 0 || header_count as usize > body.len() - reader.at {
            return Err(Error::invalid_batch(format!(
                "record header count {header_count} is out of range"
            )));
        }
        headers.clear();
        for _ in 0..header_count {
            let key = reader
                .field()?
                .ok_or_else(|| Error::invalid_batch("null header key"))?;
            headers.push((key, reader.field()?));
        }
        if reader.at - start != length as usize {
            return Err(Error::invalid_batch(
                "record length does not match its fields",
            ));
        }
        visit(&RecordView {
            timestamp_delta,
            offset_delta: offset_delta as u32,
            key,
            value,
            headers: &headers,
        })?;
    }
    if reader.at != body.len() {
        return Err(Error::invalid_batch(format!(
            "bytes left over after the {} records the batch says it holds",
            header.records_count
        )));
    }
    Ok(())
}

/// Decodes every record of one verified batch (`batch` holds exactly the batch), inflating
/// it if compressed, refusing more than `decompressed_bytes_max` of record bytes.
pub fn decode_records(batch: &Bytes, decompressed_bytes_max: usize) -> Result<Vec<Record>> {
    let header = BatchHeader::parse(batch)?;
    let body = match inflate(batch, &header, decompressed_bytes_max)? {
        None => batch.slice(BATCH_HEADER_BYTES..),
        Some(inflated) => Bytes::from(inflated),
    };
    // Each record is at least 7 bytes, which bounds the allocation by the bytes present.
    let capacity = (header.records_count as usize).min(body.len() / 7);
    let mut records = Vec::with_capacity(capacity);
    let field = |range: &Option<Range<usize>>| range.clone().map(|range| body.slice(range));
    walk_records(&body, &header, |view| {
        let timestamp = match header.timestamp_type() {
            TimestampType::LogAppendTime => header.max_timestamp,
            TimestampType::CreateTime => {
                Timestamp(header.base_timestamp.0.wrapping_add(view.timestamp_delta))
            }
        };
        records.push(Record {
            offset: Offset(header.base_offset.0 + u64::from(view.offset_delta)),
            timestamp,
            key: field(&view.key),
            value: field(&view.value),
            headers: view
                .headers
                .iter()
                .map(|(key, value)| Header {
                    key: body.slice(key.clone()),
                    value: field(value),
                })
                .collect(),
        });
        Ok(())
    })?;
    Ok(records)
}

/// What [`check_records`] learned of a producer's batch while walking it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordsSummary {
    /// Where in the batch the records with a null key are (a compacted topic refuses them).
    pub null_keys: Vec<u32>,
}

/// Checks the records of a producer's batch as Kafka's `LogValidator` does: exactly
/// `records_count` well-formed records are present (after bounded decompression), with
/// offset deltas 0, 1, 2, ... `batch` holds exactly one batch whose header was verified.
pub fn check_records(
    batch: &[u8],
    header: &BatchHeader,
    decompressed_bytes_max: usize,
) -> Result<RecordsSummary> {
    let inflated = inflate(batch, header, decompressed_bytes_max)?;
    let body = inflated.as_deref().unwrap_or(&batch[BATCH_HEADER_BYTES..]);
    let mut expected = 0u32;
    let mut summary = RecordsSummary::default();
    walk_records(body, header, |view| {
        if view.offset_delta != expected {
            return Err(Error::invalid_batch(format!(
                "record {expected} has offset delta {}; a producer's records are numbered \
                 0, 1, 2, ...",
                view.offset_delta
            )));
        }
        if view.key.is_none() {
            summary.null_keys.push(expected);
        }
        expected += 1;
        Ok(())
    })?;
    Ok(summary)
}

/// Builds one RecordBatch v2. The engine assigns the real base offset at append time.
///
/// Records are encoded straight after room left for the batch header, so an uncompressed
/// batch is finished in place, without copying its records.
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    /// The header's room, then the records.
    batch: Vec<u8>,
    count: u32,
    base_timestamp: Option<Timestamp>,
    max_timestamp: Timestamp,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> BatchBuilder {
        BatchBuilder::with_capacity(compression, 0)
    }

    /// A builder with room for `records_bytes` of encoded records before it reallocates.
    pub fn with_capacity(compression: Compression, records_bytes: usize) -> BatchBuilder {
        let mut batch = Vec::with_capacity(BATCH_HEADER_BYTES + records_bytes);
        batch.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilder {
            compression,
            batch,
            count: 0,
            base_timestamp: None,
            max_timestamp: Timestamp(-1),
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// Marks the batch as from an idempotent producer.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Uncompressed bytes of the records pushed so far.
    pub fn records_bytes(&self) -> usize {
        self.batch.len() - BATCH_HEADER_BYTES
    }

    pub fn push(
        &mut self,
        timestamp: Timestamp,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) -> &mut Self {
        self.push_at(self.count, timestamp, key, value, headers)
    }

    /// Pushes a record with an explicit offset delta (compaction keeps the original deltas).
    pub(crate) fn push_at(
        &mut self,
        offset_delta: u32,
        timestamp: Timestamp,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) -> &mut Self {
        let base_timestamp = *self.base_timestamp.get_or_insert(timestamp);
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let timestamp_delta = timestamp.0.wrapping_sub(base_timestamp.0);
        let body_len = 1
            + varint_len(timestamp_delta)
            + varint_len(i64::from(offset_delta))
            + bytes_len(key)
            + bytes_len(value)
            + varint_len(headers.len() as i64)
            + headers
                .iter()
                .map(|header| bytes_len(Some(&header.key)) + bytes_len(header.value.as_deref()))
                .sum::<usize>();
        let out = &mut self.batch;
        out.reserve(varint_len(body_len as i64) + body_len);
        put_varint(out, body_len as i64);
        out.push(0);
        put_varint(out, timestamp_delta);
        put_varint(out, i64::from(offset_delta));
        put_bytes(out, key);
        put_bytes(out, value);
        put_varint(out, headers.len() as i64);
        for header in headers {
            put_bytes(out, Some(&header.key));
            put_bytes(out, header.value.as_deref());
        }
        self.count += 1;
        self
    }

    /// Finishes the batch with base offset 0 and one offset per record.
    pub fn build(self) -> Bytes {
        let last_offset_delta = self.count.saturating_sub(1);
        self.build_with(Offset(0), last_offset_delta, Timestamp(-1))
    }

    /// Finishes the batch with an explicit base offset and last offset delta.
    /// `max_timestamp_floor` keeps a compacted batch's max timestamp when records go.
    pub(crate) fn build_with(
        self,
        base_offset: Offset,
        last_offset_delta: u32,
        max_timestamp_floor: Timestamp,
    ) -> Bytes {
        assert!(self.count > 0, "a batch must hold at least one record");
        let header = BatchHeader {
            base_offset,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: batch::MAGIC,
            crc: 0,
            attributes: batch::attributes(self.compression, TimestampType::CreateTime),
            last_offset_delta,
            base_timestamp: self.base_timestamp.unwrap_or(Timestamp(-1)),
            max_timestamp: self.max_timestamp.max(max_timestamp_floor),
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            records_count: self.count,
        };
        let mut batch = match self.compression {
            Compression::None => self.batch,
            codec => {
                let mut compressed = vec![0; BATCH_HEADER_BYTES];
                compression::compress_into(
                    codec,
                    &self.batch[BATCH_HEADER_BYTES..],
                    &mut compressed,
                );
                compressed
            }
        };
        batch::write_header(&header, &mut batch);
        Bytes::from(batch)
    }
}

/// Re-encodes one verified producer batch with `codec`: same records, offset deltas,
/// timestamps and producer fields (Kafka's topic `compression.type`). A batch already in
/// `codec` comes back as it is.
pub fn recompress(
    batch: &Bytes,
    codec: Compression,
    decompressed_bytes_max: usize,
) -> Result<Bytes> {
    let header = BatchHeader::parse(batch)?;
    if header.compression()? == codec {
        return Ok(batch.clone());
    }
    let records = decode_records(batch, decompressed_bytes_max)?;
    let mut builder = BatchBuilder::new(codec).producer(
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
    );
    for record in &records {
        let delta = record.offset.0 - header.base_offset.0;
        builder.push_at(
            u32::try_from(delta).map_err(|_| Error::invalid_batch("offset delta out of range"))?,
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
    }
    Ok(builder.build_with(
        header.base_offset,
        header.last_offset_delta,
        header.max_timestamp,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recompression_keeps_every_record() {
        let mut builder = BatchBuilder::new(Compression::None).producer(9, 1, 40);
        for index in 0..50u8 {
            builder.push(
                Timestamp(1_000 + i64::from(index)),
                Some(&[index]),
                (index % 7 != 0).then_some(&[index; 30][..]),
                &[Header {
                    key: Bytes::from_static(b"h"),
                    value: Some(Bytes::from(vec![index])),
                }],
            );
        }
        let plain = builder.build();
        for codec in [
            Compression::Zstd,
            Compression::Gzip,
            Compression::Lz4,
            Compression::Snappy,
        ] {
            let packed = recompress(&plain, codec, 1 << 20).unwrap();
            let header = batch::verify(&packed, None).unwrap();
            assert_eq!(header.compression().unwrap(), codec);
            assert_eq!(
                (
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence
                ),
                (9, 1, 40)
            );
            assert_eq!(header.records_count, 50);
            assert_eq!(
                decode_records(&packed, 1 << 20).unwrap(),
                decode_records(&plain, 1 << 20).unwrap()
            );
            let back = recompress(&packed, Compression::None, 1 << 20).unwrap();
            assert_eq!(
                decode_records(&back, 1 << 20).unwrap(),
                decode_records(&plain, 1 << 20).unwrap()
            );
        }
        assert_eq!(
            recompress(&plain, Compression::None, 1 << 20).unwrap(),
            plain
        );
    }

    #[test]
    fn varint_matches_kafka_zigzag() {
        let cases: [(i64, &[u8]); 5] = [
            (0, &[0]),
            (-1, &[1]),
            (1, &[2]),
            (63, &[0x7e]),
            (-65, &[0x81, 0x01]),
        ];
        for (value, encoded) in cases {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, encoded, "{value}");
            assert_eq!(varint_len(value), encoded.len(), "{value}");
            let mut reader = Reader { bytes: &out, at: 0 };
            assert_eq!(reader.varint().unwrap(), value);
        }
        for value in [i64::MIN, i64::MAX, 300, -300, 8191, 8192, -8193, 1 << 40] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(varint_len(value), out.len(), "{value}");
            assert_eq!(Reader { bytes: &out, at: 0 }.varint().unwrap(), value);
        }
    }

    #[test]
    fn builder_round_trips_with_every_codec() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut builder = BatchBuilder::new(codec);
            let headers = [Header {
                key: Bytes::from_static(b"h"),
                value: None,
            }];
            builder.push(Timestamp(1_000), Some(b"k1"), Some(b"v1"), &[]);
            builder.push(Timestamp(900), None, None, &headers);
            builder.push(Timestamp(1_500), Some(b""), Some(&[7u8; 3000]), &[]);
            let batch = builder.build();
            let limits = batch::BatchLimits {
                batch_bytes_max: 1 << 20,
                decompressed_bytes_max: 1 << 20,
            };
            let (header, summary) = batch::validate_for_append(&batch, limits).unwrap();
            assert_eq!(summary.null_keys, [1]);
            assert_eq!(header.records_count, 3);
            assert_eq!(header.max_timestamp, Timestamp(1_500));
            let records = decode_records(&batch, 1 << 20).unwrap();
            assert_eq!(records.len(), 3);
            assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(records[1].timestamp, Timestamp(900));
            assert_eq!(records[1].value, None);
            assert_eq!(records[1].headers, headers);
            assert_eq!(records[2].offset, Offset(2));
            assert_eq!(records[2].value.as_ref().unwrap().len(), 3000);
        }
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(Timestamp(1), Some(b"key"), Some(b"value"), &[]);
        let batch = builder.build();
        let mut short = batch.to_vec();
        short.truncate(short.len() - 2);
        let batch_length = (short.len() - batch::LOG_OVERHEAD) as i32;
        short[8..12].copy_from_slice(&batch_length.to_be_bytes());
        assert!(decode_records(&Bytes::from(short), 1 << 20).is_err());
    }
}
