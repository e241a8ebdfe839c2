//! Where a controller voter keeps its Raft state, in the engine rather than a second storage
//! engine: the metadata log's entries in an engine log (Raft index `i` at offset `i - 1`, one
//! batch per entry, its leader epoch the entry's term), and the hard state (term, vote,
//! commit) in a small checkpoint file in that log's directory. A voter persists a drain's
//! entries and hard state before it sends that drain's messages ([`crate::quorum::Output`]).
//!
//! Raft may replace an uncommitted suffix: entries starting at or below the last stored index
//! truncate the log there first (the engine's `truncate_to`), then append.

use std::rc::Rc;

use bytes::Bytes;
use coremq_engine::batch::{self, CheckedBatch};
use coremq_engine::log::Log;
use coremq_engine::record::decode_records;
use coremq_engine::{Ack, BatchBuilder, BatchHeader, Compression, Isolation, Offset, Timestamp};
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use raft::storage::MemStorage;
use serde::{Deserialize, Serialize};

/// The hard state checkpoint's file name, in the metadata log's directory.
pub const HARD_STATE_FILE: &str = "quorum-state";
const MAGIC: &[u8; 4] = b"CMQR";
const VERSION: u8 = 1;
const HARD_STATE_BYTES: usize = 33;

/// An entry as stored: the record's value.
#[derive(Debug, Serialize, Deserialize)]
struct StoredEntry {
    entry_type: i32,
    term: u64,
    data: Vec<u8>,
    context: Vec<u8>,
}

/// The hard state as stored: magic, version, term, vote, commit (u64 BE each), CRC-32C of
/// the preceding 29 bytes.
pub fn encode_hard_state(state: &HardState) -> [u8; HARD_STATE_BYTES] {
    let mut out = [0u8; HARD_STATE_BYTES];
    out[..4].copy_from_slice(MAGIC);
    out[4] = VERSION;
    out[5..13].copy_from_slice(&state.term.to_be_bytes());
    out[13..21].copy_from_slice(&state.vote.to_be_bytes());
    out[21..29].copy_from_slice(&state.commit.to_be_bytes());
    let crc = crc32c::crc32c(&out[..29]);
    out[29..].copy_from_slice(&crc.to_be_bytes());
    out
}

pub fn decode_hard_state(bytes: &[u8]) -> Result<HardState, String> {
    if bytes.len() != HARD_STATE_BYTES || &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err("not a version 1 quorum state".into());
    }
    let crc = u32::from_be_bytes(bytes[29..].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&bytes[..29]) {
        return Err("checksum mismatch".into());
    }
    let field = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Ok(HardState {
        term: field(5),
        vote: field(13),
        commit: field(21),
        ..HardState::default()
    })
}

/// A voter's persisted Raft state over one engine log.
pub struct QuorumStore {
    log: Rc<Log>,
}

impl QuorumStore {
    pub fn new(log: Rc<Log>) -> QuorumStore {
        QuorumStore { log }
    }

    /// Everything stored, as raft-rs's storage for a restarting voter of `voters` (raft ids).
    /// A damaged hard state file fails the open: a voter that forgot its vote could vote
    /// twice in a term.
    pub async fn load(&self, voters: Vec<u64>) -> Result<MemStorage, String> {
        let storage = MemStorage::new_with_conf_state(ConfState::from((voters, vec![])));
        let entries = self.read_entries().await?;
        let hard_state = match std::fs::read(self.log.dir().join(HARD_STATE_FILE)) {
            Ok(bytes) => Some(decode_hard_state(&bytes)?),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(format!("{HARD_STATE_FILE}: {error}")),
        };
        let mut core = storage.wl();
        core.append(&entries)
            .map_err(|error| format!("stored entries do not follow: {error}"))?;
        if let Some(mut hard_state) = hard_state {
            // A commit index past the entries that survived cannot be trusted as applied;
            // Raft learns it again from the leader.
            let last = entries.last().map_or(0, |entry| entry.index);
            hard_state.commit = hard_state.commit.min(last);
            core.set_hardstate(hard_state);
        }
        drop(core);
        Ok(storage)
    }

    async fn read_entries(&self) -> Result<Vec<Entry>, String> {
        let offsets = self.log.offsets();
        let mut entries = Vec::new();
        let mut next = offsets.log_start;
        while next < offsets.log_end {
            let read = self
                .log
                .read(next, 1 << 20, Isolation::Written)
                .await
                .map_err(|error| error.to_string())?;
            if read.batches.is_empty() {
                break;
            }
            for batch in &read.batches {
                let header = BatchHeader::parse(batch).map_err(|error| error.to_string())?;
                let records = decode_records(batch, 64 << 20).map_err(|e| e.to_string())?;
                for (n, record) in records.iter().enumerate() {
                    let value = record.value.as_deref().unwrap_or_default();
                    let (stored, rest) = postcard::take_from_bytes::<StoredEntry>(value)
                        .map_err(|error| format!("entry at {}: {error}", header.base_offset))?;
                    if !rest.is_empty() {
                        return Err(format!("entry at {}: trailing bytes", header.base_offset));
                    }
                    let entry_type =
                        <EntryType as protobuf::ProtobufEnum>::from_i32(stored.entry_type)
                            .ok_or_else(|| format!("entry type {}", stored.entry_type))?;
                    let mut entry = Entry::default();
                    entry.set_entry_type(entry_type);
                    entry.term = stored.term;
                    entry.index = header.base_offset.0 + n as u64 + 1;
                    entry.data = stored.data.into();
                    entry.context = stored.context.into();
                    entries.push(entry);
                }
                next = header.next_offset();
            }
        }
        Ok(entries)
    }

    /// Stores `entries` (consecutive), replacing any stored at or after the first one's
    /// index, durably.
    pub async fn append(&self, entries: &[Entry]) -> Result<(), coremq_engine::Error> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let offset = Offset(first.index - 1);
        if offset < self.log.offsets().log_end {
            self.log.truncate_to(offset).await?;
        }
        let limits = self.log.config().batch_limits();
        for entry in entries {
            let stored = StoredEntry {
                entry_type: entry.get_entry_type() as i32,
                term: entry.term,
                data: entry.data.to_vec(),
                context: entry.context.to_vec(),
            };
            let value = postcard::to_stdvec(&stored).expect("entries serialize");
            let mut builder = BatchBuilder::new(Compression::None);
            builder.push(Timestamp::now(), None, Some(&value), &[]);
            let mut bytes = builder.build().to_vec();
            batch::set_base_offset(&mut bytes, Offset(entry.index - 1));
            batch::set_partition_leader_epoch(&mut bytes, entry.term.min(i32::MAX as u64) as i32);
            let checked = CheckedBatch::new(Bytes::from(bytes), limits)?;
            self.log.append_replica(checked, Ack::Policy).await?;
        }
        Ok(())
    }

    /// Replaces the stored hard state, durably.
    pub async fn set_hard_state(&self, state: &HardState) -> Result<(), coremq_engine::Error> {
        self.log
            .storage()
            .write_atomically(
                self.log.dir(),
                HARD_STATE_FILE,
                encode_hard_state(state).to_vec(),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_state_round_trip_and_damage() {
        let state = HardState {
            term: 7,
            vote: 3,
            commit: 1 << 40,
            ..HardState::default()
        };
        let bytes = encode_hard_state(&state);
        assert_eq!(decode_hard_state(&bytes), Ok(state));
        for at in 0..bytes.len() {
            let mut flipped = bytes;
            flipped[at] ^= 4;
            assert!(decode_hard_state(&flipped).is_err(), "flip at {at}");
        }
        assert!(decode_hard_state(&bytes[..32]).is_err());
    }
}
