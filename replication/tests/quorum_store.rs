//! A controller voter's Raft state stored in the engine: entries in an engine log (a replaced
//! suffix truncated first), the hard state in its checkpoint; after an engine restart the
//! voter comes back with the same log, vote and term, and replays the same records.

use bytes::Bytes;
use coremq_engine::{Engine, EngineConfig, Handle, LogConfig, Offset, TopicPartition};
use coremq_replication::metadata::Record;
use coremq_replication::quorum::{QuorumNode, QuorumSettings};
use coremq_replication::quorum_store::QuorumStore;
use futures_lite::future::block_on;
use raft::eraftpb::{Entry, HardState};

fn start(dir: &std::path::Path) -> (Engine, Handle) {
    let mut config = EngineConfig::new(dir);
    config.shards = 1;
    config.pin_shards = false;
    config.io_memory_bytes = 256 << 10;
    let engine = Engine::start(config).expect("engine starts");
    let handle = engine.handle();
    (engine, handle)
}

fn metadata_log() -> TopicPartition {
    TopicPartition::new("__cluster_metadata", 0).unwrap()
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: Bytes::copy_from_slice(data),
        ..Entry::default()
    }
}

fn store(handle: &Handle, entries: Vec<Entry>, hard_state: Option<HardState>) {
    block_on(handle.with_log(&metadata_log(), move |log| async move {
        let store = QuorumStore::new(log);
        store.append(&entries).await?;
        if let Some(state) = hard_state {
            store.set_hard_state(&state).await?;
        }
        Ok(())
    }))
    .unwrap();
}

fn load(handle: &Handle) -> coremq_replication::quorum_storage::QuorumStorage {
    block_on(handle.with_log(&metadata_log(), |log| async move {
        Ok(QuorumStore::new(log).load(vec![1]).await)
    }))
    .unwrap()
    .expect("the stored state loads")
}

#[test]
fn entries_and_hard_state_survive_a_restart_and_a_replaced_suffix() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (engine, handle) = start(dir.path());
        block_on(handle.create_log(&metadata_log(), Some(LogConfig::default()))).unwrap();
        let first: Vec<Entry> = (1..=5).map(|i| entry(i, 1, &[i as u8])).collect();
        let state = HardState {
            term: 1,
            vote: 1,
            commit: 3,
            ..HardState::default()
        };
        store(&handle, first, Some(state));
        // A new leader replaces the uncommitted 4 and 5 with its own.
        let second: Vec<Entry> = (4..=6).map(|i| entry(i, 2, &[i as u8, 2])).collect();
        let state = HardState {
            term: 2,
            vote: 1,
            commit: 5,
            ..HardState::default()
        };
        store(&handle, second, Some(state));
        assert_eq!(
            block_on(handle.offsets(&metadata_log())).unwrap().log_end,
            Offset(6)
        );
        engine.shutdown().unwrap();
    }
    let (engine, handle) = start(dir.path());
    let storage = load(&handle);
    let terms: Vec<(u64, u64, Vec<u8>)> = (1..=6)
        .map(|index| {
            let entries = raft::Storage::entries(
                &storage,
                index,
                index + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )
            .unwrap();
            (entries[0].index, entries[0].term, entries[0].data.to_vec())
        })
        .collect();
    assert_eq!(
        terms,
        [
            (1, 1, vec![1]),
            (2, 1, vec![2]),
            (3, 1, vec![3]),
            (4, 2, vec![4, 2]),
            (5, 2, vec![5, 2]),
            (6, 2, vec![6, 2]),
        ]
    );
    let state = storage.rl().hard_state().clone();
    assert_eq!((state.term, state.vote, state.commit), (2, 1, 5));
    engine.shutdown().unwrap();
}

/// A single voter (the default single-node cluster) elects itself, commits records, and after
/// an engine restart replays exactly those records from what it stored.
#[test]
fn a_single_voter_replays_its_records_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Record> = (0..20)
        .map(|n| Record::ProducerIds {
            broker: 0,
            first: n * 1000,
            count: 1000,
        })
        .collect();
    let drive = |handle: &Handle, node: &mut QuorumNode, committed: &mut Vec<Record>| {
        node.tick();
        let output = node.drain();
        store(handle, output.entries, output.hard_state);
        committed.extend(output.committed.into_iter().map(|(_, record)| record));
    };
    {
        let (engine, handle) = start(dir.path());
        block_on(handle.create_log(&metadata_log(), Some(LogConfig::default()))).unwrap();
        let mut node = QuorumNode::new(0, &[0], QuorumSettings::default()).unwrap();
        let mut committed = Vec::new();
        for _ in 0..100 {
            drive(&handle, &mut node, &mut committed);
            if node.is_leader() {
                break;
            }
        }
        assert!(node.is_leader(), "a single voter elects itself");
        for record in &records {
            node.propose(record).unwrap();
            drive(&handle, &mut node, &mut committed);
        }
        assert_eq!(committed, records);
        engine.shutdown().unwrap();
    }
    let (engine, handle) = start(dir.path());
    let storage = load(&handle);
    let mut node = QuorumNode::restart(0, storage, QuorumSettings::default()).unwrap();
    let mut replayed = Vec::new();
    for _ in 0..100 {
        drive(&handle, &mut node, &mut replayed);
        if node.is_leader() && replayed.len() == records.len() {
            break;
        }
    }
    assert_eq!(replayed, records, "the same records, in order, once");
    node.propose(&Record::ProducerIds {
        broker: 0,
        first: 20_000,
        count: 1000,
    })
    .unwrap();
    drive(&handle, &mut node, &mut replayed);
    assert_eq!(replayed.len(), records.len() + 1);
    engine.shutdown().unwrap();
}

/// A voter that took a snapshot restarts from it: its image is the snapshot's, it replays
/// only the records after it, and the entries under it are gone from the log.
#[test]
fn a_voter_restarts_from_its_snapshot_and_replays_only_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let record = |n: i64| Record::ProducerIds {
        broker: 0,
        first: n * 1000,
        count: 1000,
    };
    let drive = |handle: &Handle, node: &mut QuorumNode, committed: &mut Vec<Record>| {
        node.tick();
        let output = node.drain();
        store(handle, output.entries, output.hard_state);
        committed.extend(output.committed.into_iter().map(|(_, record)| record));
    };
    let snapshot_index;
    {
        let (engine, handle) = start(dir.path());
        block_on(handle.create_log(&metadata_log(), Some(LogConfig::default()))).unwrap();
        let mut node = QuorumNode::new(0, &[0], QuorumSettings::default()).unwrap();
        let mut committed = Vec::new();
        while !node.is_leader() {
            drive(&handle, &mut node, &mut committed);
        }
        let mut image = coremq_replication::metadata::MetadataImage::default();
        for n in 0..10 {
            node.propose(&record(n)).unwrap();
            drive(&handle, &mut node, &mut committed);
        }
        for applied in &committed {
            image.apply(applied).unwrap();
        }
        let snapshot = node.take_snapshot(&image).unwrap();
        snapshot_index = snapshot.get_metadata().index;
        block_on(handle.with_log(&metadata_log(), move |log| async move {
            QuorumStore::new(log).store_snapshot(&snapshot, false).await
        }))
        .unwrap();
        for n in 10..13 {
            node.propose(&record(n)).unwrap();
            drive(&handle, &mut node, &mut committed);
        }
        assert_eq!(committed.len(), 13);
        engine.shutdown().unwrap();
    }
    let (engine, handle) = start(dir.path());
    let storage = load(&handle);
    let mut node = QuorumNode::restart(0, storage, QuorumSettings::default()).unwrap();
    let image = node.restored_image().unwrap().expect("a snapshot");
    assert_eq!(
        image.next_producer_id, 10_000,
        "the image as of the snapshot"
    );
    assert_eq!(node.applied(), snapshot_index);
    let mut replayed = Vec::new();
    for _ in 0..100 {
        drive(&handle, &mut node, &mut replayed);
        if node.is_leader() && replayed.len() == 3 {
            break;
        }
    }
    assert_eq!(
        replayed,
        (10..13).map(record).collect::<Vec<_>>(),
        "only what follows"
    );
    engine.shutdown().unwrap();
}
