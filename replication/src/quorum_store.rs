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
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use serde::{Deserialize, Serialize};

use crate::quorum_storage::QuorumStorage;

/// The hard state checkpoint's file name, in the metadata log's directory.
pub const HARD_STATE_FILE: &str = "quorum-state";
/// The last snapshot's file name, in the metadata log's directory.
pub const SNAPSHOT_FILE: &str = "quorum-snapshot";
const SNAPSHOT_MAGIC: &[u8; 4] = b"CMQS";
/// The most voters a snapshot may name.
const VOTERS_MAX: usize = 1 << 10;
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

/// A snapshot as stored: magic, version, index, term (u64 BE), the voters' count (u32 BE)
/// and raft ids (u64 BE each), the image's length (u32 BE) and bytes, CRC-32C of all that.
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let metadata = snapshot.get_metadata();
    let voters = &metadata.get_conf_state().voters;
    let data = snapshot.get_data();
    let mut out = Vec::with_capacity(33 + 8 * voters.len() + data.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&metadata.index.to_be_bytes());
    out.extend_from_slice(&metadata.term.to_be_bytes());
    out.extend_from_slice(&(voters.len() as u32).to_be_bytes());
    for voter in voters {
        out.extend_from_slice(&voter.to_be_bytes());
    }
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Reads a snapshot [`encode_snapshot`] wrote; every count is checked against the bytes
/// present before anything is taken.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return Err("shorter than a checksum".into());
    };
    if u32::from_be_bytes(*crc) != crc32c::crc32c(body) {
        return Err("checksum mismatch".into());
    }
    let mut rest = body;
    let mut take = |count: usize| -> Result<&[u8], String> {
        if rest.len() < count {
            return Err("truncated".into());
        }
        let (taken, left) = rest.split_at(count);
        rest = left;
        Ok(taken)
    };
    if take(4)? != SNAPSHOT_MAGIC || take(1)? != [VERSION] {
        return Err("not a version 1 quorum snapshot".into());
    }
    let u64_at = |bytes: &[u8]| u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
    let u32_at = |bytes: &[u8]| u32::from_be_bytes(bytes.try_into().expect("4 bytes")) as usize;
    let index = u64_at(take(8)?);
    let term = u64_at(take(8)?);
    let count = u32_at(take(4)?);
    if count > VOTERS_MAX {
        return Err(format!("{count} voters"));
    }
    let mut voters = Vec::new();
    for _ in 0..count {
        voters.push(u64_at(take(8)?));
    }
    let length = u32_at(take(4)?);
    let data = take(length)?.to_vec();
    if !rest.is_empty() {
        return Err(format!("{} bytes after the image", rest.len()));
    }
    let mut snapshot = Snapshot::default();
    let metadata = snapshot.mut_metadata();
    metadata.index = index;
    metadata.term = term;
    metadata.set_conf_state(ConfState::from((voters, vec![])));
    snapshot.data = data.into();
    Ok(snapshot)
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
    pub async fn load(&self, voters: Vec<u64>) -> Result<QuorumStorage, String> {
        let storage = QuorumStorage::new_with_conf_state(ConfState::from((voters, vec![])));
        let snapshot = match std::fs::read(self.log.dir().join(SNAPSHOT_FILE)) {
            Ok(bytes) => {
                Some(decode_snapshot(&bytes).map_err(|e| format!("{SNAPSHOT_FILE}: {e}"))?)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(format!("{SNAPSHOT_FILE}: {error}")),
        };
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.get_metadata().index);
        if let Some(snapshot) = snapshot {
            storage
                .restore(snapshot)
                .map_err(|error| format!("{SNAPSHOT_FILE}: {error}"))?;
        }
        // Entries the snapshot covers may still be on disk (their removal follows it).
        let mut entries = self.read_entries().await?;
        entries.retain(|entry| entry.index > snapshot_index);
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
            let last = entries.last().map_or(snapshot_index, |entry| entry.index);
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

    /// Stores `snapshot` durably, then removes the entries it covers from the log: all of
    /// them when it came from the leader (`whole`: this log may not even reach it), those
    /// up to its index otherwise.
    pub async fn store_snapshot(
        &self,
        snapshot: &Snapshot,
        whole: bool,
    ) -> Result<(), coremq_engine::Error> {
        self.log
            .storage()
            .write_atomically(self.log.dir(), SNAPSHOT_FILE, encode_snapshot(snapshot))
            .await?;
        let index = Offset(snapshot.get_metadata().index);
        if whole {
            self.log.truncate_fully_and_start_at(index).await
        } else {
            self.log.delete_records(index).await.map(drop)
        }
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
    fn snapshot_round_trip_and_damage() {
        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        metadata.index = 1 << 33;
        metadata.term = 9;
        metadata.set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        snapshot.data = b"an image".to_vec().into();
        let bytes = encode_snapshot(&snapshot);
        assert_eq!(decode_snapshot(&bytes), Ok(snapshot));
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 4;
            assert!(decode_snapshot(&flipped).is_err(), "flip at {at}");
        }
        for cut in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A voter count past what is present, with a valid checksum: refused, not allocated.
        let mut claims = bytes[..bytes.len() - 4].to_vec();
        claims[21..25].copy_from_slice(&u32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&claims);
        claims.extend_from_slice(&crc.to_be_bytes());
        assert!(decode_snapshot(&claims).is_err());
    }

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
