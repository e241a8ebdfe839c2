//! The leader epoch cache (Kafka's `LeaderEpochFileCache`, KIP-101): for each partition
//! leader epoch that wrote to this log, the offset of its first batch. A follower that
//! rejoins asks the leader where its own latest epoch ends (OffsetForLeaderEpoch) and
//! truncates there, so no suffix that diverged under an old leader survives.
//!
//! Entries are strictly increasing in both epoch and start offset. Stored as
//! `leader-epoch-checkpoint`: magic `CMQE`, version 1, entry count u32 BE, then per entry the
//! epoch i32 BE and start offset u64 BE, then CRC-32C of everything before it. Replaced
//! atomically whenever an entry is added or removed, before the batch that needs it is
//! written: on open, entries at or past the log end are dropped, and the active segment's
//! batches add the epochs they start.

#[cfg(feature = "runtime")]
use std::path::Path;

#[cfg(feature = "runtime")]
use crate::error::Result;
#[cfg(feature = "runtime")]
use crate::storage;
use crate::types::Offset;

pub const FILE_NAME: &str = "leader-epoch-checkpoint";
const MAGIC: &[u8; 4] = b"CMQE";
const VERSION: u8 = 1;
const HEADER_BYTES: usize = 9;
const ENTRY_BYTES: usize = 12;

/// One epoch's first offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: Offset,
}

/// The epochs of one log, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochs {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochs {
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset`; true if that changed anything. An epoch
    /// not above the latest, or an offset below the latest's start, is not recorded: batches
    /// of an older leader replayed after a newer one's entry add nothing (Kafka's `assign`).
    /// Negative epochs (batches written before epochs) are never recorded.
    pub fn assign(&mut self, epoch: i32, start_offset: Offset) -> bool {
        if epoch < 0 {
            return false;
        }
        match self.entries.last() {
            Some(last) if epoch <= last.epoch || start_offset < last.start_offset => false,
            Some(last) if start_offset == last.start_offset => {
                // The newer epoch wrote nothing before the next one started at the same place.
                *self.entries.last_mut().expect("a last entry") = EpochEntry {
                    epoch,
                    start_offset,
                };
                true
            }
            _ => {
                self.entries.push(EpochEntry {
                    epoch,
                    start_offset,
                });
                true
            }
        }
    }

    /// Removes the epochs starting at or after `end` (the log was truncated to `end`); true
    /// if that changed anything.
    pub fn truncate_from_end(&mut self, end: Offset) -> bool {
        let before = self.entries.len();
        self.entries.retain(|entry| entry.start_offset < end);
        self.entries.len() != before
    }

    /// Removes the epochs that end at or before `start` (the log start moved to `start`) and
    /// moves the first kept one's start up to it; true if that changed anything.
    pub fn truncate_from_start(&mut self, start: Offset) -> bool {
        let first_kept = self
            .entries
            .iter()
            .rposition(|entry| entry.start_offset <= start);
        let Some(first_kept) = first_kept else {
            return false;
        };
        let changed = first_kept > 0 || self.entries[0].start_offset != start;
        self.entries.drain(..first_kept);
        self.entries[0].start_offset = start;
        changed
    }

    /// The epoch of the batch at `offset` (the latest epoch at the log end): the last epoch
    /// starting at or before it; `None` before the first epoch.
    pub fn epoch_at(&self, offset: Offset) -> Option<i32> {
        self.entries
            .iter()
            .rev()
            .find(|entry| entry.start_offset <= offset)
            .map(|entry| entry.epoch)
    }

    /// Where `requested` ends in this log, as OffsetForLeaderEpoch answers: the largest epoch
    /// at or below it and the start of the next epoch above it (`log_end` when `requested` is
    /// the latest). `None` when the log knows no epoch at or above `requested` (Kafka's
    /// UNDEFINED_EPOCH and UNDEFINED_EPOCH_OFFSET).
    pub fn end_offset_for(&self, requested: i32, log_end: Offset) -> Option<(i32, Offset)> {
        if requested < 0 {
            return None;
        }
        let latest = self.entries.last()?;
        if latest.epoch == requested {
            return Some((requested, log_end));
        }
        let higher = self.entries.iter().find(|entry| entry.epoch > requested)?;
        let floor = self
            .entries
            .iter()
            .rev()
            .find(|entry| entry.epoch <= requested);
        Some(match floor {
            Some(floor) => (floor.epoch, higher.start_offset),
            None => (requested, higher.start_offset),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.entries.len() * ENTRY_BYTES + 4);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for entry in &self.entries {
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.extend_from_slice(&entry.start_offset.0.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a checkpoint; the count is checked against the bytes present before anything
    /// is allocated, and the entries must increase in epoch and offset.
    pub fn decode(bytes: &[u8]) -> std::result::Result<LeaderEpochs, String> {
        if bytes.len() < HEADER_BYTES + 4 || &bytes[..4] != MAGIC || bytes[4] != VERSION {
            return Err("not a version 1 leader epoch checkpoint".into());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if u32::from_be_bytes(crc.try_into().expect("4 bytes")) != crc32c::crc32c(body) {
            return Err("checksum mismatch".into());
        }
        let count = u32::from_be_bytes(body[5..9].try_into().expect("4 bytes")) as usize;
        let entries_bytes = &body[HEADER_BYTES..];
        if entries_bytes.len() != count.saturating_mul(ENTRY_BYTES) {
            return Err(format!(
                "{count} entries claimed, {} bytes present",
                entries_bytes.len()
            ));
        }
        let mut epochs = LeaderEpochs::default();
        for chunk in entries_bytes.chunks_exact(ENTRY_BYTES) {
            let epoch = i32::from_be_bytes(chunk[..4].try_into().expect("4 bytes"));
            let start_offset = Offset(u64::from_be_bytes(chunk[4..].try_into().expect("8 bytes")));
            let increasing = epochs
                .entries
                .last()
                .is_none_or(|last| epoch > last.epoch && start_offset > last.start_offset);
            if epoch < 0 || !increasing {
                return Err(format!(
                    "entry epoch {epoch} at {start_offset} does not follow the one before"
                ));
            }
            epochs.entries.push(EpochEntry {
                epoch,
                start_offset,
            });
        }
        Ok(epochs)
    }

    #[cfg(feature = "runtime")]
    pub async fn store(&self, storage: &storage::Storage, dir: &Path) -> Result<()> {
        storage
            .write_atomically(dir, FILE_NAME, self.encode())
            .await
    }

    /// The stored epochs; none if there is no file. A damaged file is reported and ignored:
    /// the epochs then come back from the active segment only, and a follower with too few
    /// epochs truncates more than it needs to, never less.
    #[cfg(feature = "runtime")]
    pub fn load(dir: &Path) -> LeaderEpochs {
        let path = dir.join(FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return LeaderEpochs::default();
            }
            Err(error) => {
                log::warn!("{}: {error}; epochs start empty", path.display());
                return LeaderEpochs::default();
            }
        };
        LeaderEpochs::decode(&bytes).unwrap_or_else(|reason| {
            log::warn!("ignoring damaged {}: {reason}", path.display());
            LeaderEpochs::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(entries: &[(i32, u64)]) -> LeaderEpochs {
        let mut epochs = LeaderEpochs::default();
        for &(epoch, offset) in entries {
            assert!(epochs.assign(epoch, Offset(offset)));
        }
        epochs
    }

    #[test]
    fn assign_keeps_epochs_and_offsets_increasing() {
        let mut cache = epochs(&[(0, 0), (2, 10)]);
        assert!(!cache.assign(1, Offset(20)), "older epoch");
        assert!(!cache.assign(2, Offset(30)), "same epoch");
        assert!(!cache.assign(3, Offset(5)), "offset going back");
        assert!(!cache.assign(-1, Offset(40)), "no epoch");
        assert!(cache.assign(3, Offset(10)), "same start replaces");
        assert_eq!(cache, epochs(&[(0, 0), (3, 10)]));
    }

    #[test]
    fn the_epoch_at_an_offset_is_the_last_one_started_by_it() {
        let cache = epochs(&[(1, 5), (3, 20)]);
        assert_eq!(cache.epoch_at(Offset(4)), None);
        assert_eq!(cache.epoch_at(Offset(5)), Some(1));
        assert_eq!(cache.epoch_at(Offset(19)), Some(1));
        assert_eq!(cache.epoch_at(Offset(20)), Some(3));
        assert_eq!(cache.epoch_at(Offset(1000)), Some(3));
    }

    #[test]
    fn end_offsets_as_kafka_answers_them() {
        let cache = epochs(&[(1, 5), (3, 20), (6, 40)]);
        let end = Offset(55);
        assert_eq!(cache.end_offset_for(6, end), Some((6, end)));
        assert_eq!(cache.end_offset_for(3, end), Some((3, Offset(40))));
        assert_eq!(cache.end_offset_for(4, end), Some((3, Offset(40))));
        assert_eq!(cache.end_offset_for(2, end), Some((1, Offset(20))));
        assert_eq!(cache.end_offset_for(0, end), Some((0, Offset(5))));
        assert_eq!(cache.end_offset_for(7, end), None);
        assert_eq!(cache.end_offset_for(-1, end), None);
        assert_eq!(LeaderEpochs::default().end_offset_for(0, end), None);
    }

    #[test]
    fn truncation_from_either_end() {
        let mut cache = epochs(&[(1, 5), (3, 20), (6, 40)]);
        assert!(cache.truncate_from_end(Offset(40)));
        assert_eq!(cache, epochs(&[(1, 5), (3, 20)]));
        assert!(!cache.truncate_from_end(Offset(41)));
        assert!(cache.truncate_from_start(Offset(25)));
        assert_eq!(cache, epochs(&[(3, 25)]));
        assert!(!cache.truncate_from_start(Offset(25)));
        assert!(!cache.truncate_from_start(Offset(1)));
    }

    #[test]
    fn round_trip_and_damage() {
        let cache = epochs(&[(0, 0), (4, 1 << 40), (9, (1 << 40) + 7)]);
        let bytes = cache.encode();
        assert_eq!(LeaderEpochs::decode(&bytes), Ok(cache.clone()));
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(LeaderEpochs::decode(&flipped).is_err(), "flip at {at}");
        }
        assert!(LeaderEpochs::decode(&bytes[..bytes.len() - 1]).is_err());
        let empty = LeaderEpochs::default().encode();
        assert_eq!(LeaderEpochs::decode(&empty), Ok(LeaderEpochs::default()));
    }

    #[test]
    fn counts_beyond_the_bytes_and_disorder_are_refused() {
        let mut bytes = epochs(&[(0, 0)]).encode();
        bytes[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        let body = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_be_bytes());
        assert!(LeaderEpochs::decode(&bytes).is_err());

        let unordered = LeaderEpochs {
            entries: vec![
                EpochEntry {
                    epoch: 2,
                    start_offset: Offset(10),
                },
                EpochEntry {
                    epoch: 1,
                    start_offset: Offset(20),
                },
            ],
        };
        assert!(LeaderEpochs::decode(&unordered.encode()).is_err());
    }
}
