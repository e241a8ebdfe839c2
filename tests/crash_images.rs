//! Crash images: what a power loss can leave on disk, which SIGKILL cannot show (the page
//! cache survives a SIGKILL). Every durable operation on a log's files (segment writes and
//! truncations, fdatasyncs, index, snapshot and config files, renames, directory syncs) is
//! recorded through the engine's storage hooks while a seeded random workload runs: `always`
//! appends of assorted sizes, some concurrent (group commit), some from an idempotent
//! producer, over many segment rolls, config changes, and truncations (as a follower cuts a
//! divergent suffix).
//!
//! Then, for every point of that history, the files a power loss there could leave are
//! built: each file as its last fdatasync made it durable plus a prefix of the writes since,
//! the last one of them torn at a random byte; the directory as its last fsync left it plus a
//! prefix of the entry changes since (creations, renames, removals). Each image is opened as
//! a log of its own, and every append acknowledged before its point must be there at its
//! offset, record for record; whatever else the log holds must be what was appended there.
//! A second kind of run fails one operation (a write or an fdatasync) partway, keeps the
//! workload going, and checks the same of every image after it.
//!
//! Seeded: `CRASH_SEED=n` replays one seed.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{block_on, tp};
use coremq_engine::record::decode_records;
use coremq_engine::storage::{Hooks, Op, Storage};
use coremq_engine::{
    BatchBuilder, Compression, Durability, Engine, Handle, Isolation, LogConfig, Offset, Timestamp,
    TopicPartition,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One recorded operation on a file of the watched log (names relative to its directory).
#[derive(Debug, Clone)]
enum Recorded {
    Create(String),
    Write(String, u64, Vec<u8>),
    Truncate(String, u64),
    Sync(String),
    SyncDir,
    Rename(String, String),
    Remove(String),
}

/// Records the operations on one log directory's files; fails the first write or
/// fdatasync at or after operation `fail_at`, if set.
struct Recorder {
    dir: PathBuf,
    ops: Mutex<Vec<Recorded>>,
    fail_at: Option<usize>,
    failed: AtomicBool,
}

impl Recorder {
    fn new(dir: PathBuf, fail_at: Option<usize>) -> Recorder {
        Recorder {
            dir,
            ops: Mutex::default(),
            fail_at,
            failed: AtomicBool::new(false),
        }
    }

    /// Operations recorded so far.
    fn len(&self) -> usize {
        self.ops.lock().unwrap().len()
    }

    fn name(&self, path: &Path) -> Option<String> {
        let relative = path.strip_prefix(&self.dir).ok()?;
        Some(relative.to_str()?.to_string()).filter(|name| !name.is_empty())
    }
}

impl Hooks for Recorder {
    fn before(&self, op: Op<'_>) -> std::io::Result<()> {
        let recorded = match op {
            Op::Create { path } => self.name(path).map(Recorded::Create),
            Op::Write {
                path,
                offset,
                bytes,
            } => self
                .name(path)
                .map(|name| Recorded::Write(name, offset, bytes.to_vec())),
            Op::Truncate { path, length } => {
                self.name(path).map(|name| Recorded::Truncate(name, length))
            }
            Op::Sync { path } => self.name(path).map(Recorded::Sync),
            Op::SyncDir { dir } => (dir == self.dir).then_some(Recorded::SyncDir),
            Op::Rename { from, to } => self
                .name(from)
                .zip(self.name(to))
                .map(|(from, to)| Recorded::Rename(from, to)),
            Op::Remove { path } => self.name(path).map(Recorded::Remove),
        };
        let Some(recorded) = recorded else {
            return Ok(());
        };
        let mut ops = self.ops.lock().unwrap();
        if self.fail_at.is_some_and(|at| ops.len() >= at)
            && matches!(recorded, Recorded::Write(..) | Recorded::Sync(_))
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            return Err(std::io::Error::other("injected failure"));
        }
        ops.push(recorded);
        Ok(())
    }
}

/// One file's bytes: what its last fdatasync made durable, and the changes since.
#[derive(Default, Clone)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Change>,
}

#[derive(Clone)]
enum Change {
    Write(u64, Vec<u8>),
    Truncate(u64),
}

fn apply(bytes: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write(offset, data) => {
            let end = *offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*offset as usize..end].copy_from_slice(data);
        }
        Change::Truncate(length) => bytes.resize(*length as usize, 0),
    }
}

#[derive(Clone)]
enum Entry {
    Link(String, usize),
    Rename(String, String),
    Unlink(String),
}

/// The files a power loss after `ops` could leave, with `rng` choosing how much of what was
/// not made durable survives.
fn crash_image(ops: &[Recorded], rng: &mut StdRng) -> BTreeMap<String, Vec<u8>> {
    let mut inodes: Vec<Inode> = Vec::new();
    let mut by_path: HashMap<String, usize> = HashMap::new();
    let mut current: BTreeMap<String, usize> = BTreeMap::new();
    let mut durable: BTreeMap<String, usize> = BTreeMap::new();
    let mut entries: Vec<Entry> = Vec::new();
    for op in ops {
        match op {
            Recorded::Create(name) => {
                inodes.push(Inode::default());
                let inode = inodes.len() - 1;
                by_path.insert(name.clone(), inode);
                current.insert(name.clone(), inode);
                entries.push(Entry::Link(name.clone(), inode));
            }
            Recorded::Write(name, offset, data) => {
                let inode = &mut inodes[by_path[name]];
                let change = Change::Write(*offset, data.clone());
                apply(&mut inode.current, &change);
                inode.pending.push(change);
            }
            Recorded::Truncate(name, length) => {
                let inode = &mut inodes[by_path[name]];
                let change = Change::Truncate(*length);
                apply(&mut inode.current, &change);
                inode.pending.push(change);
            }
            Recorded::Sync(name) => {
                let inode = &mut inodes[by_path[name]];
                inode.durable = inode.current.clone();
                inode.pending.clear();
            }
            Recorded::SyncDir => {
                durable = current.clone();
                entries.clear();
            }
            Recorded::Rename(from, to) => {
                if let Some(inode) = current.remove(from) {
                    current.insert(to.clone(), inode);
                    by_path.insert(to.clone(), inode);
                    entries.push(Entry::Rename(from.clone(), to.clone()));
                }
            }
            Recorded::Remove(name) => {
                if current.remove(name).is_some() {
                    entries.push(Entry::Unlink(name.clone()));
                }
            }
        }
    }
    let mut directory = durable;
    let survive = rng.random_range(0..=entries.len());
    for entry in &entries[..survive] {
        match entry {
            Entry::Link(name, inode) => {
                directory.insert(name.clone(), *inode);
            }
            Entry::Rename(from, to) => {
                if let Some(inode) = directory.remove(from) {
                    directory.insert(to.clone(), inode);
                }
            }
            Entry::Unlink(name) => {
                directory.remove(name);
            }
        }
    }
    let mut files = BTreeMap::new();
    for (name, inode) in directory {
        let inode = &inodes[inode];
        let mut bytes = inode.durable.clone();
        let survive = rng.random_range(0..=inode.pending.len());
        for (index, change) in inode.pending[..survive].iter().enumerate() {
            match change {
                Change::Write(offset, data) if index + 1 == survive && rng.random_bool(0.5) => {
                    let torn = rng.random_range(0..=data.len());
                    apply(&mut bytes, &Change::Write(*offset, data[..torn].to_vec()));
                }
                change => apply(&mut bytes, change),
            }
        }
        files.insert(name, bytes);
    }
    files
}

/// What the workload appended: every record's value by its name (`tag:n:`, how the value
/// starts), and for acknowledged appends each record's value by offset and the point of the
/// history at which it was acknowledged.
#[derive(Default)]
struct Appended {
    by_name: HashMap<String, Bytes>,
    values: BTreeMap<u64, Bytes>,
    acked_at: BTreeMap<u64, usize>,
    /// Offsets a truncation cut away, which later appends may take again: an image may hold
    /// either value there.
    reused_from: Option<u64>,
    truncations: usize,
}

/// A value's name: its text up to the second `:`.
fn name_of(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(&value[..value.len().min(32)]);
    text.splitn(3, ':').take(2).collect::<Vec<_>>().join(":")
}

fn batch(rng: &mut StdRng, tag: u64, producer: Option<(i64, i32)>) -> (Bytes, Vec<Bytes>) {
    let count = rng.random_range(1..=6u32);
    let mut builder = BatchBuilder::new(Compression::None);
    if let Some((id, sequence)) = producer {
        builder = builder.producer(id, 0, sequence);
    }
    let mut values = Vec::new();
    for n in 0..count {
        let size = match rng.random_range(0..10) {
            0 => rng.random_range(3000..9000),
            _ => rng.random_range(10..400),
        };
        let mut value = format!("{tag}:{n}:").into_bytes();
        value.resize(size, b'a' + (tag % 26) as u8);
        let value = Bytes::from(value);
        builder.push(Timestamp(1_000 + tag as i64), None, Some(&value), &[]);
        values.push(value);
    }
    (builder.build(), values)
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 24 << 10,
        index_interval_bytes: 1024,
        durability: Durability::Always,
        ..LogConfig::default()
    }
}

/// Runs the workload of `seed` on a recorded log, failing operation `fail_at` if given.
fn record(seed: u64, fail_at: Option<usize>) -> (Vec<Recorded>, Appended) {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("recorded", 0);
    let recorder = Arc::new(Recorder::new(dir.path().join(log.dir_name()), fail_at));
    let mut config = common::config(dir.path(), 1);
    config.storage = Storage::with_hooks(recorder.clone());
    let engine = Engine::start(config).unwrap();
    let handle = engine.handle();
    block_on(handle.create_log(&log, Some(log_config()))).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut appended = Appended::default();
    let mut tag = 0u64;
    let mut sequence = 0i32;
    let mut producer = 7i64;
    for _ in 0..90 {
        match rng.random_range(0..20) {
            19 => {
                // A follower's truncation of a divergent suffix: what it removes may survive
                // a crash during it (then as appended), what it keeps must.
                let end = block_on(handle.offsets(&log)).unwrap().log_end.0;
                let to = Offset(rng.random_range(end.saturating_sub(40)..=end));
                let truncated = block_on(
                    handle.with_log(&log, move |log| async move { log.truncate_to(to).await }),
                );
                // A log fenced by a failed write refuses it, as it refuses appends.
                let Ok(new_end) = truncated else {
                    continue;
                };
                appended.values.split_off(&new_end.0);
                appended.acked_at.split_off(&new_end.0);
                appended.reused_from = Some(
                    appended
                        .reused_from
                        .map_or(new_end.0, |from| from.min(new_end.0)),
                );
                appended.truncations += 1;
                // The producer's batches past the cut are forgotten with them: a new one.
                producer += 1;
                sequence = 0;
            }
            0 => {
                let mut config = log_config();
                config.retention_ms = Some(rng.random_range(1..1_000_000) * 1000);
                let _ = block_on(handle.set_config(&log, config));
            }
            1..=4 => {
                // Concurrent appends share an fdatasync (group commit).
                let batches: Vec<(Bytes, Vec<Bytes>)> = (0..3)
                    .map(|_| {
                        tag += 1;
                        batch(&mut rng, tag, None)
                    })
                    .collect();
                let append = |bytes: Bytes| {
                    let (handle, log, recorder) = (&handle, &log, &recorder);
                    async move {
                        let result = handle.append(log, bytes).await;
                        (result, recorder.len())
                    }
                };
                let ((first, second), third) = block_on(futures_lite::future::zip(
                    futures_lite::future::zip(
                        append(batches[0].0.clone()),
                        append(batches[1].0.clone()),
                    ),
                    append(batches[2].0.clone()),
                ));
                for ((result, at), (_, values)) in [first, second, third].into_iter().zip(&batches)
                {
                    note(&mut appended, result, at, values);
                }
            }
            5..=6 => {
                tag += 1;
                let (bytes, values) = batch(&mut rng, tag, Some((producer, sequence)));
                let result = block_on(handle.append(&log, bytes));
                if result.is_ok() {
                    sequence += values.len() as i32;
                }
                note(&mut appended, result, recorder.len(), &values);
            }
            _ => {
                tag += 1;
                let (bytes, values) = batch(&mut rng, tag, None);
                let result = block_on(handle.append(&log, bytes));
                note(&mut appended, result, recorder.len(), &values);
            }
        }
    }
    drop(handle);
    let _ = engine.shutdown();
    let ops = recorder.ops.lock().unwrap().clone();
    (ops, appended)
}

fn note(
    appended: &mut Appended,
    result: coremq_engine::Result<coremq_engine::AppendInfo>,
    at: usize,
    values: &[Bytes],
) {
    for value in values {
        appended.by_name.insert(name_of(value), value.clone());
    }
    if let Ok(info) = result {
        for (n, value) in values.iter().enumerate() {
            let offset = info.base_offset.0 + n as u64;
            appended.values.insert(offset, value.clone());
            appended.acked_at.insert(offset, at);
        }
    }
}

/// Every record of `log`, by offset, as the engine reads it back; `None` if the engine did
/// not open it (an image from before its creation was durable).
fn read_all(handle: &Handle, log: &TopicPartition) -> Option<BTreeMap<u64, Bytes>> {
    let mut records = BTreeMap::new();
    let mut next = Offset(0);
    loop {
        let read = match block_on(handle.read(log, next, 1 << 20, Isolation::Written)) {
            Ok(read) => read,
            Err(coremq_engine::Error::UnknownLog { .. }) => return None,
            Err(error) => panic!("reading {log}: {error}"),
        };
        if read.batches.is_empty() {
            return Some(records);
        }
        for batch in &read.batches {
            let header = coremq_engine::BatchHeader::parse(batch).unwrap();
            for (n, record) in decode_records(batch, 1 << 24)
                .unwrap()
                .into_iter()
                .enumerate()
            {
                let offset = header.base_offset.0 + n as u64;
                records.insert(offset, record.value.unwrap_or_default());
            }
            next = Offset(header.base_offset.0 + u64::from(header.records_count));
        }
    }
}

/// Builds an image for each of `points` (with `variants` random choices each), opens them all
/// as logs in one engine, and checks each against what was appended. The images checked.
fn check_images(
    seed: u64,
    ops: &[Recorded],
    appended: &Appended,
    points: impl Iterator<Item = usize>,
    variants: usize,
) -> usize {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc0ffee);
    let images: Vec<(usize, BTreeMap<String, Vec<u8>>)> = points
        .flat_map(|point| (0..variants).map(move |_| point))
        .map(|point| (point, crash_image(&ops[..point], &mut rng)))
        .collect();
    let mut checked = 0;
    for group in images.chunks(100) {
        let dir = tempfile::tempdir().unwrap();
        for (index, (_, files)) in group.iter().enumerate() {
            let log_dir = dir.path().join(tp(&format!("image{index}"), 0).dir_name());
            std::fs::create_dir_all(&log_dir).unwrap();
            for (name, bytes) in files {
                std::fs::write(log_dir.join(name), bytes).unwrap();
            }
        }
        let engine = Engine::start(common::config(dir.path(), 1)).unwrap();
        let handle = engine.handle();
        for (index, (point, _)) in group.iter().enumerate() {
            let log = tp(&format!("image{index}"), 0);
            let context = format!(
                "seed {seed}, crash after {point} of {} operations",
                ops.len()
            );
            let Some(records) = read_all(&handle, &log) else {
                assert!(
                    appended.acked_at.values().all(|at| at > point),
                    "{context}: the log is gone"
                );
                continue;
            };
            for (offset, at) in &appended.acked_at {
                if at <= point {
                    assert_eq!(
                        records.get(offset),
                        Some(&appended.values[offset]),
                        "{context}: acknowledged record {offset} lost"
                    );
                }
            }
            for (offset, value) in &records {
                let reused = appended.reused_from.is_some_and(|from| *offset >= from);
                let expected = match appended.values.get(offset) {
                    Some(stored) if stored == value || !reused => Some(stored),
                    _ => appended.by_name.get(&name_of(value)),
                };
                assert_eq!(
                    expected,
                    Some(value),
                    "{context}: record {offset} is not what was appended"
                );
            }
            let offsets: Vec<u64> = records.keys().copied().collect();
            let expected: Vec<u64> = (0..offsets.len() as u64).collect();
            let gap = offsets.iter().zip(&expected).position(|(a, b)| a != b);
            assert!(
                gap.is_none(),
                "{context}: offsets are not contiguous: {:?} after {:?}, {} records",
                gap.map(|at| offsets[at]),
                gap.and_then(|at| at.checked_sub(1)).map(|at| offsets[at]),
                offsets.len()
            );
            checked += 1;
        }
        drop(handle);
        engine.shutdown().unwrap();
    }
    checked
}

fn seeds() -> Vec<u64> {
    match std::env::var("CRASH_SEED") {
        Ok(seed) => vec![seed.parse().expect("CRASH_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    }
}

#[test]
fn every_acknowledged_append_survives_a_power_loss_at_any_point() {
    let mut images = 0;
    for seed in seeds() {
        let (ops, appended) = record(seed, None);
        assert!(appended.acked_at.len() > 300, "the workload appends enough");
        let syncs = ops
            .iter()
            .filter(|op| matches!(op, Recorded::Sync(_)))
            .count();
        let rolls = ops
            .iter()
            .filter(|op| matches!(op, Recorded::Create(name) if name.ends_with(".log")))
            .count();
        assert!(rolls >= 5, "seed {seed}: {rolls} segments");
        assert!(
            appended.truncations >= 2,
            "seed {seed}: {} truncations",
            appended.truncations
        );
        assert!(syncs >= 50, "seed {seed}: {syncs} fdatasyncs");
        images += check_images(seed, &ops, &appended, 0..=ops.len(), 2);
    }
    assert!(images >= 1000, "{images} crash images");
}

#[test]
fn a_failed_write_or_fdatasync_loses_nothing_acknowledged() {
    for seed in seeds() {
        let (clean, _) = record(seed, None);
        let mut rng = StdRng::seed_from_u64(seed);
        let fail_at = rng.random_range(clean.len() / 4..clean.len() / 2);
        let (ops, appended) = record(seed, Some(fail_at));
        let failed_from = fail_at.min(ops.len());
        let points = failed_from.saturating_sub(3)..=ops.len();
        check_images(seed, &ops, &appended, points, 2);
    }
}
