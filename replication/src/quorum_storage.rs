//! raft-rs's storage for a controller voter: its in-memory `MemStorage` for the log entries
//! and hard state, plus the last snapshot of the metadata image, which `MemStorage` cannot
//! hold (its snapshots carry the index and term only). A snapshot at index `i` stands for
//! the entries up to `i`: they are dropped, and a voter that needs them gets the snapshot
//! instead (raft-rs's MsgSnapshot).

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::eraftpb::{ConfState, Entry, Snapshot};
use raft::storage::{MemStorage, MemStorageCore};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// A voter's Raft storage; clones share it (a restart in the simulations keeps it).
#[derive(Clone, Default)]
pub struct QuorumStorage {
    log: MemStorage,
    /// The last snapshot taken or received: empty before the first.
    snapshot: Arc<RwLock<Snapshot>>,
}

impl QuorumStorage {
    /// Storage for a voter of `conf_state`'s voters, with nothing in it.
    pub fn new_with_conf_state(conf_state: ConfState) -> QuorumStorage {
        QuorumStorage {
            log: MemStorage::new_with_conf_state(conf_state),
            snapshot: Arc::default(),
        }
    }

    pub fn rl(&self) -> RwLockReadGuard<'_, MemStorageCore> {
        self.log.rl()
    }

    pub fn wl(&self) -> RwLockWriteGuard<'_, MemStorageCore> {
        self.log.wl()
    }

    /// The last snapshot, if there is one.
    pub fn snapshot_taken(&self) -> Option<Snapshot> {
        let snapshot = self.snapshot.read().expect("not poisoned");
        (snapshot.get_metadata().index > 0).then(|| snapshot.clone())
    }

    /// Takes `snapshot`, which this voter made at an index it applied (its metadata says
    /// the index, term and voters; its data the image there), in place of the entries up to
    /// its index; the later entries and the commit index stay.
    pub fn compact(&self, snapshot: Snapshot) -> raft::Result<()> {
        let index = snapshot.get_metadata().index;
        let last = self.log.last_index()?;
        let later = if index < last {
            self.log
                .entries(index + 1, last + 1, None, GetEntriesContext::empty(false))?
        } else {
            Vec::new()
        };
        let mut core = self.log.wl();
        let commit = core.hard_state().commit;
        core.apply_snapshot(metadata_only(&snapshot))?;
        core.mut_hard_state().commit = commit.max(index);
        core.append(&later)?;
        drop(core);
        *self.snapshot.write().expect("not poisoned") = snapshot;
        Ok(())
    }

    /// Takes `snapshot`, which the leader sent or this voter stored, in place of its whole
    /// log (raft-rs sends one only to a voter missing entries it no longer has).
    pub fn restore(&self, snapshot: Snapshot) -> raft::Result<()> {
        self.log.wl().apply_snapshot(metadata_only(&snapshot))?;
        *self.snapshot.write().expect("not poisoned") = snapshot;
        Ok(())
    }
}

/// `snapshot` without its data, as `MemStorage` keeps it.
fn metadata_only(snapshot: &Snapshot) -> Snapshot {
    let mut metadata = Snapshot::default();
    metadata.set_metadata(snapshot.get_metadata().clone());
    metadata
}

impl Storage for QuorumStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.log.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log.entries(low, high, max_size, context)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.log.term(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.log.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.log.last_index()
    }

    /// The last snapshot, for a voter behind the entries kept; unavailable until one is
    /// taken at `request_index` or later.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snapshot = self.snapshot.read().expect("not poisoned");
        let index = snapshot.get_metadata().index;
        if index == 0 || index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snapshot.clone())
    }
}
