//! Model test: random appends, reads, rolls (small segments), retention, DeleteRecords,
//! compaction, cache drops and reopens, checked after every step against an in-memory model
//! of the records. Seeded, so a failure replays; `MODEL_TRACE=1` prints each step.

mod common;

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use common::{block_on, tp};
use coremq_engine::record::decode_records;
use coremq_engine::{
    BatchBuilder, BatchHeader, CleanupPolicy, Compression, Durability, Engine, Handle, Isolation,
    LogConfig, Offset, Timestamp, TopicPartition,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    key: Option<Bytes>,
    value: Option<Bytes>,
    timestamp: Timestamp,
}

struct Model {
    records: BTreeMap<u64, Entry>,
    log_start: u64,
    log_end: u64,
    compacted: bool,
}

impl Model {
    /// Whether the engine must still hold `offset`: compaction may drop a record only when
    /// a later record has the same key.
    fn required(&self, offset: u64, entry: &Entry) -> bool {
        let Some(key) = &entry.key else { return true };
        !self.compacted
            || !self
                .records
                .range(offset + 1..)
                .any(|(_, later)| later.key.as_ref() == Some(key))
    }
}

const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

fn random_batch(rng: &mut StdRng) -> (Bytes, Vec<Entry>) {
    let mut builder = BatchBuilder::new(CODECS[rng.random_range(0..CODECS.len())]);
    let mut entries = Vec::new();
    let now = Timestamp::now().0;
    for _ in 0..rng.random_range(1..6) {
        let key = (rng.random_range(0..10) > 0)
            .then(|| Bytes::from(format!("key-{}", rng.random_range(0..12))));
        let value = (rng.random_range(0..8) > 0).then(|| {
            let length = rng.random_range(0..600);
            Bytes::from((0..length).map(|_| rng.random::<u8>()).collect::<Vec<_>>())
        });
        let timestamp = Timestamp(now + rng.random_range(-1000..1000));
        builder.push(timestamp, key.as_deref(), value.as_deref(), &[]);
        entries.push(Entry {
            key,
            value,
            timestamp,
        });
    }
    (builder.build(), entries)
}

fn read_all(handle: &Handle, log: &TopicPartition, max_bytes: usize) -> BTreeMap<u64, Entry> {
    let offsets = block_on(handle.offsets(log)).unwrap();
    let mut out = BTreeMap::new();
    let mut from = offsets.log_start;
    loop {
        let read = block_on(handle.read(log, from, max_bytes, Isolation::Written)).unwrap();
        if read.batches.is_empty() {
            assert_eq!(
                from.0.max(offsets.log_start.0),
                offsets.high_watermark.0.max(from.0)
            );
            return out;
        }
        for batch in read.batches {
            let header = BatchHeader::parse(&batch).unwrap();
            assert!(header.next_offset() > from, "reads make progress");
            from = header.next_offset();
            for record in decode_records(&batch, 1 << 24).unwrap() {
                if record.offset >= offsets.log_start {
                    let entry = Entry {
                        key: record.key,
                        value: record.value,
                        timestamp: record.timestamp,
                    };
                    assert!(
                        out.insert(record.offset.0, entry).is_none(),
                        "offset read twice"
                    );
                }
            }
        }
    }
}

fn check(handle: &Handle, log: &TopicPartition, model: &Model, rng: &mut StdRng) {
    let offsets = block_on(handle.offsets(log)).unwrap();
    assert_eq!(offsets.log_end.0, model.log_end);
    assert_eq!(offsets.log_start.0, model.log_start);
    let stored = read_all(handle, log, rng.random_range(1..100_000));
    for (offset, entry) in &stored {
        assert_eq!(
            model.records.get(offset),
            Some(entry),
            "offset {offset} differs from the model"
        );
    }
    for (offset, entry) in model.records.range(model.log_start..) {
        if model.required(*offset, entry) {
            assert!(stored.contains_key(offset), "offset {offset} is missing");
        }
    }
}

fn start(dir: &std::path::Path, shards: usize, cache_bytes: usize) -> (Engine, Handle) {
    let mut config = common::config(dir, shards);
    config.cache_bytes = cache_bytes;
    let engine = Engine::start(config).expect("engine starts");
    let handle = engine.handle();
    (engine, handle)
}

fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let log = tp("model", seed as u32);
    let segment_bytes = rng.random_range(4096..16384);
    let index_interval_bytes = rng.random_range(64..2048);
    // The shard's memory for recent batches: from none (every read from the files) up.
    let cache_bytes = rng.random_range(0..32768);
    let config = LogConfig {
        segment_bytes,
        index_interval_bytes,
        retention_ms: None,
        cleanup_policy: CleanupPolicy::CompactDelete,
        delete_retention_ms: 1 << 40,
        durability: [
            Durability::Always,
            Durability::Never,
            Durability::IntervalMs(5),
        ][rng.random_range(0..3)],
        ..LogConfig::default()
    };
    let (mut engine, mut handle) = start(dir.path(), 1 + (seed % 2) as usize, cache_bytes);
    block_on(handle.create_log(&log, Some(config.clone()))).unwrap();
    let mut model = Model {
        records: BTreeMap::new(),
        log_start: 0,
        log_end: 0,
        compacted: false,
    };
    for _ in 0..250 {
        let op = rng.random_range(0..100);
        if std::env::var("MODEL_TRACE").is_ok() {
            eprintln!(
                "seed {seed} op {op} start {} end {}",
                model.log_start, model.log_end
            );
        }
        match op {
            0..70 => {
                let (batch, entries) = random_batch(&mut rng);
                let info = block_on(handle.append(&log, batch)).unwrap();
                assert_eq!(info.base_offset.0, model.log_end);
                for entry in entries {
                    model.records.insert(model.log_end, entry);
                    model.log_end += 1;
                }
            }
            70..78 => {
                let from = rng.random_range(model.log_start..=model.log_end);
                let read =
                    block_on(handle.read(&log, Offset(from), 5000, Isolation::Written)).unwrap();
                if let Some(first) = read.batches.first() {
                    let header = BatchHeader::parse(first).unwrap();
                    assert!(header.next_offset().0 > from);
                }
            }
            78..83 => {
                let limit = rng.random_range(10_000..60_000);
                let retention = LogConfig {
                    retention_bytes: Some(limit),
                    ..config.clone()
                };
                block_on(handle.set_config(&log, retention)).unwrap();
                block_on(handle.enforce_retention(&log)).unwrap();
                let start = block_on(handle.offsets(&log)).unwrap().log_start.0;
                assert!(start >= model.log_start && start <= model.log_end);
                model.log_start = start;
                block_on(handle.set_config(&log, config.clone())).unwrap();
            }
            83..87 => {
                let to = rng.random_range(model.log_start..=model.log_end);
                let start = block_on(handle.delete_records(&log, Offset(to))).unwrap().0;
                assert!(start >= to.max(model.log_start));
                // Past the requested offset only over records compaction was free to drop.
                for (offset, entry) in model.records.range(to.max(model.log_start)..start) {
                    assert!(
                        !model.required(*offset, entry),
                        "{offset} skipped by log start"
                    );
                }
                model.log_start = start;
            }
            87..92 => {
                block_on(handle.compact(&log)).unwrap();
                model.compacted = true;
            }
            92..95 => block_on(handle.clear_cache(&log)).unwrap(),
            _ => {
                engine.shutdown().unwrap();
                (engine, handle) = start(dir.path(), 1 + (seed % 2) as usize, cache_bytes);
            }
        }
        check(&handle, &log, &model, &mut rng);
    }
    let keys: HashMap<_, _> = model
        .records
        .values()
        .map(|e| (e.key.clone(), ()))
        .collect();
    assert!(keys.len() > 1);
    Engine::shutdown(engine).unwrap();
}

#[test]
fn model_seed_1() {
    run(1);
}

#[test]
fn model_seed_2() {
    run(2);
}

#[test]
fn model_seed_3() {
    run(3);
}

#[test]
fn model_seed_4() {
    run(4);
}

#[test]
fn model_seeds_5_to_16() {
    for seed in 5..=16 {
        run(seed);
    }
}
