//! Idempotent producers: per producer id, its epoch and its last few batches' sequence
//! ranges, so a retried batch is recognised (and not stored twice) and a gap in sequences is
//! refused. Kafka's `ProducerStateManager`, without transactions.
//!
//! The state is derived from the log: a log rebuilds it at open from a snapshot taken when
//! its active segment was created plus the batches of that segment (which recovery scans
//! anyway). Pure: bytes and values, no I/O.

use std::collections::{HashMap, VecDeque};

use bytes::Buf;

use crate::batch::BatchHeader;
use crate::error::{Error, Result};
use crate::types::{Offset, Timestamp};

/// Batches remembered per producer: Kafka's limit on in-flight requests per idempotent
/// connection (`max.in.flight.requests.per.connection` <= 5).
pub const BATCHES_PER_PRODUCER: usize = 5;
/// Producers unheard of for this long are forgotten (Kafka's `producer.id.expiration.ms`).
pub const EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;

/// One stored batch of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub timestamp: Timestamp,
}

impl ProducerBatch {
    /// The producer fields of a stored batch; `None` for a batch of no idempotent producer.
    pub fn of(header: &BatchHeader) -> Option<ProducerBatch> {
        (header.producer_id >= 0 && header.base_sequence >= 0).then(|| ProducerBatch {
            producer_id: header.producer_id,
            epoch: header.producer_epoch,
            first_sequence: header.base_sequence,
            last_sequence: add_sequence(header.base_sequence, header.last_offset_delta),
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            timestamp: header.max_timestamp,
        })
    }
}

/// The sequence `count` after `sequence`; sequences wrap from `i32::MAX` to 0.
fn add_sequence(sequence: i32, count: u32) -> i32 {
    ((i64::from(sequence) + i64::from(count)) % (i64::from(i32::MAX) + 1)) as i32
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Producer {
    epoch: i16,
    batches: VecDeque<ProducerBatch>,
    last_seen: Timestamp,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Store it.
    Append,
    /// Already stored at these offsets: answer as before, store nothing.
    Duplicate(ProducerBatch),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerState {
    producers: HashMap<i64, Producer>,
}

impl ProducerState {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Checks `header` (of a batch not yet stored) against what the producer stored before.
    pub fn check(&self, header: &BatchHeader) -> Result<Check> {
        let Some(incoming) = ProducerBatch::of(header) else {
            return Ok(Check::Append);
        };
        let Some(producer) = self.producers.get(&incoming.producer_id) else {
            // Unknown (new, or forgotten after expiry): any first sequence starts it.
            return Ok(Check::Append);
        };
        if incoming.epoch < producer.epoch {
            return Err(Error::ProducerFenced {
                producer_id: incoming.producer_id,
                epoch: incoming.epoch,
                current: producer.epoch,
            });
        }
        if incoming.epoch > producer.epoch {
            return if incoming.first_sequence == 0 {
                Ok(Check::Append)
            } else {
                Err(Error::OutOfOrderSequence {
                    producer_id: incoming.producer_id,
                    expected: 0,
                    got: incoming.first_sequence,
                })
            };
        }
        if let Some(stored) = producer.batches.iter().find(|stored| {
            stored.first_sequence == incoming.first_sequence
                && stored.last_sequence == incoming.last_sequence
        }) {
            return Ok(Check::Duplicate(*stored));
        }
        let last = producer
            .batches
            .back()
            .map_or(-1, |last| last.last_sequence);
        let expected = add_sequence(last, 1);
        if incoming.first_sequence != expected {
            return Err(Error::OutOfOrderSequence {
                producer_id: incoming.producer_id,
                expected,
                got: incoming.first_sequence,
            });
        }
        Ok(Check::Append)
    }

    /// Records a stored batch (appended now, or found by recovery).
    pub fn record(&mut self, batch: ProducerBatch) {
        let producer = self.producers.entry(batch.producer_id).or_default();
        if batch.epoch != producer.epoch {
            producer.epoch = batch.epoch;
            producer.batches.clear();
        }
        if producer.batches.len() == BATCHES_PER_PRODUCER {
            producer.batches.pop_front();
        }
        producer.batches.push_back(batch);
        producer.last_seen = producer.last_seen.max(batch.timestamp);
    }

    /// Forgets batches at or after `offset` (appends that were dropped before being
    /// written), so their retries are stored rather than taken for duplicates.
    pub fn truncate_from(&mut self, offset: Offset) {
        self.producers.retain(|_, producer| {
            producer.batches.retain(|batch| batch.base_offset < offset);
            !producer.batches.is_empty()
        });
    }

    /// Forgets producers unheard of since `now - EXPIRATION_MS`.
    pub fn expire(&mut self, now: Timestamp) {
        self.producers
            .retain(|_, producer| producer.last_seen.0 >= now.0.saturating_sub(EXPIRATION_MS));
    }

    /// The snapshot file's bytes: magic, version, the offset the state covers up to, the
    /// producers, and a CRC-32C of everything before it (see docs/format.md).
    pub fn encode(&self, up_to: Offset) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&up_to.0.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort();
        for id in ids {
            let producer = &self.producers[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&producer.epoch.to_be_bytes());
            out.extend_from_slice(&producer.last_seen.0.to_be_bytes());
            out.push(producer.batches.len() as u8);
            for batch in &producer.batches {
                out.extend_from_slice(&batch.first_sequence.to_be_bytes());
                out.extend_from_slice(&batch.last_sequence.to_be_bytes());
                out.extend_from_slice(&batch.base_offset.0.to_be_bytes());
                out.extend_from_slice(&batch.last_offset.0.to_be_bytes());
                out.extend_from_slice(&batch.timestamp.0.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses a snapshot: the state and the offset it covers up to.
    pub fn decode(bytes: &[u8]) -> Result<(ProducerState, Offset)> {
        let corrupt = |reason: &str| Error::invalid_batch(format!("producer snapshot: {reason}"));
        if bytes.len() < SNAPSHOT_MAGIC.len() + 1 + 8 + 4 + 4 {
            return Err(corrupt("too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return Err(corrupt("checksum mismatch"));
        }
        let mut reader: &[u8] = body;
        if !reader.starts_with(SNAPSHOT_MAGIC) {
            return Err(corrupt("bad magic"));
        }
        reader.advance(SNAPSHOT_MAGIC.len());
        let truncated = |_| corrupt("truncated");
        if reader.try_get_u8().map_err(truncated)? != SNAPSHOT_VERSION {
            return Err(corrupt("unknown version"));
        }
        let up_to = Offset(reader.try_get_u64().map_err(truncated)?);
        let count = reader.try_get_u32().map_err(truncated)?;
        let mut state = ProducerState::default();
        for _ in 0..count {
            let producer_id = reader.try_get_i64().map_err(truncated)?;
            let epoch = reader.try_get_i16().map_err(truncated)?;
            let last_seen = Timestamp(reader.try_get_i64().map_err(truncated)?);
            let batches = usize::from(reader.try_get_u8().map_err(truncated)?);
            if batches > BATCHES_PER_PRODUCER {
                return Err(corrupt("too many batches"));
            }
            let mut producer = Producer {
                epoch,
                batches: VecDeque::with_capacity(batches),
                last_seen,
            };
            for _ in 0..batches {
                producer.batches.push_back(ProducerBatch {
                    producer_id,
                    epoch,
                    first_sequence: reader.try_get_i32().map_err(truncated)?,
                    last_sequence: reader.try_get_i32().map_err(truncated)?,
                    base_offset: Offset(reader.try_get_u64().map_err(truncated)?),
                    last_offset: Offset(reader.try_get_u64().map_err(truncated)?),
                    timestamp: Timestamp(reader.try_get_i64().map_err(truncated)?),
                });
            }
            state.producers.insert(producer_id, producer);
        }
        if !reader.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok((state, up_to))
    }
}

const SNAPSHOT_MAGIC: &[u8] = b"CMQPRODS";
const SNAPSHOT_VERSION: u8 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn header(producer_id: i64, epoch: i16, sequence: i32, records: u32, base: u64) -> BatchHeader {
        BatchHeader {
            base_offset: Offset(base),
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: Timestamp(1_000),
            max_timestamp: Timestamp(1_000),
            producer_id,
            producer_epoch: epoch,
            base_sequence: sequence,
            records_count: records,
        }
    }

    fn append(state: &mut ProducerState, header: &BatchHeader) -> Result<Check> {
        let check = state.check(header)?;
        if check == Check::Append
            && let Some(batch) = ProducerBatch::of(header)
        {
            state.record(batch);
        }
        Ok(check)
    }

    #[test]
    fn retries_are_duplicates_and_gaps_are_refused() {
        let mut state = ProducerState::default();
        assert_eq!(
            append(&mut state, &header(7, 0, 0, 10, 0)).unwrap(),
            Check::Append
        );
        assert_eq!(
            append(&mut state, &header(7, 0, 10, 5, 10)).unwrap(),
            Check::Append
        );
        match append(&mut state, &header(7, 0, 0, 10, 99)).unwrap() {
            Check::Duplicate(stored) => assert_eq!(stored.base_offset, Offset(0)),
            other => panic!("expected a duplicate, got {other:?}"),
        }
        assert!(matches!(
            append(&mut state, &header(7, 0, 16, 1, 15)),
            Err(Error::OutOfOrderSequence {
                expected: 15,
                got: 16,
                ..
            })
        ));
        assert_eq!(
            append(&mut state, &header(7, 0, 15, 1, 15)).unwrap(),
            Check::Append
        );
        // A new epoch starts at sequence 0; the old epoch is fenced after it.
        assert!(append(&mut state, &header(7, 1, 3, 1, 16)).is_err());
        assert_eq!(
            append(&mut state, &header(7, 1, 0, 1, 16)).unwrap(),
            Check::Append
        );
        assert!(matches!(
            append(&mut state, &header(7, 0, 16, 1, 17)),
            Err(Error::ProducerFenced { .. })
        ));
        // Batches without a producer id are not checked.
        assert_eq!(
            append(&mut state, &header(-1, -1, -1, 3, 17)).unwrap(),
            Check::Append
        );
    }

    #[test]
    fn sequences_wrap_and_only_recent_batches_are_remembered() {
        let mut state = ProducerState::default();
        append(&mut state, &header(1, 0, i32::MAX - 1, 2, 0)).unwrap();
        assert_eq!(
            append(&mut state, &header(1, 0, 0, 1, 2)).unwrap(),
            Check::Append
        );
        for (index, sequence) in (1..=6).enumerate() {
            append(&mut state, &header(1, 0, sequence, 1, 3 + index as u64)).unwrap();
        }
        // The oldest batches are forgotten: an old retry is out of order, not a duplicate.
        assert!(append(&mut state, &header(1, 0, 0, 1, 20)).is_err());
        match append(&mut state, &header(1, 0, 6, 1, 20)).unwrap() {
            Check::Duplicate(stored) => assert_eq!(stored.base_offset, Offset(8)),
            other => panic!("expected a duplicate, got {other:?}"),
        }
    }

    #[test]
    fn snapshots_round_trip_and_reject_damage() {
        let mut state = ProducerState::default();
        for id in 0..3 {
            for sequence in 0..7 {
                append(&mut state, &header(id, 2, sequence, 1, sequence as u64)).unwrap();
            }
        }
        let bytes = state.encode(Offset(42));
        let (decoded, up_to) = ProducerState::decode(&bytes).unwrap();
        assert_eq!((decoded, up_to), (state.clone(), Offset(42)));
        for cut in [0, 5, bytes.len() - 1] {
            assert!(ProducerState::decode(&bytes[..cut]).is_err());
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(ProducerState::decode(&flipped).is_err());
        state.truncate_from(Offset(5));
        assert!(matches!(
            state.check(&header(0, 2, 5, 1, 5)),
            Ok(Check::Append)
        ));
        state.expire(Timestamp(1_000 + EXPIRATION_MS + 1));
        assert!(state.is_empty());
    }
}
