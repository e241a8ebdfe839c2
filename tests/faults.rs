//! Fault tests: torn writes and bit flips at the tail and inside sealed segments, damaged
//! indexes, a full disk (a small tmpfs this test mounts), and a failing fsync injected
//! through the file layer's fault hook.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{batch, block_on, small_segments, start, tp};
use coremq_engine::storage::{Faults, Storage};
use coremq_engine::{
    Ack, BatchHeader, Compression, Durability, Engine, Error, Handle, Isolation, LogConfig, Offset,
    TopicPartition,
};

fn segment_files(dir: &Path, log: &TopicPartition) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(log.dir_name()))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    files.sort();
    files
}

fn fill(handle: &Handle, log: &TopicPartition, batches: u64) {
    for n in 0..batches {
        block_on(handle.append(log, batch(n, 4, 300, n as i64, Compression::None))).unwrap();
    }
}

fn read_all(handle: &Handle, log: &TopicPartition) -> Result<Vec<BatchHeader>, Error> {
    let mut headers = Vec::new();
    let mut from = block_on(handle.offsets(log)).unwrap().log_start;
    loop {
        let read = block_on(handle.read(log, from, 1 << 20, Isolation::Written))?;
        if read.batches.is_empty() {
            return Ok(headers);
        }
        for batch in read.batches {
            let header = BatchHeader::parse(&batch).unwrap();
            from = header.next_offset();
            headers.push(header);
        }
    }
}

fn flip_byte(path: &Path, position: u64) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(position)).unwrap();
    file.read_exact(&mut byte).unwrap();
    byte[0] ^= 0x40;
    file.seek(SeekFrom::Start(position)).unwrap();
    file.write_all(&byte).unwrap();
}

#[test]
fn torn_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("torn", 0);
    let (engine, handle) = start(dir.path(), 1);
    block_on(handle.create_log(&log, Some(small_segments()))).unwrap();
    fill(&handle, &log, 100);
    engine.shutdown().unwrap();

    let last = segment_files(dir.path(), &log).pop().unwrap();
    let length = std::fs::metadata(&last).unwrap().len();
    // Tear the last batch and leave garbage after it, as a crash mid-write can.
    let file = OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(length - 100).unwrap();
    let mut file = OpenOptions::new().append(true).open(&last).unwrap();
    file.write_all(&[0xAB; 37]).unwrap();
    drop(file);

    let (engine, handle) = start(dir.path(), 1);
    let offsets = block_on(handle.offsets(&log)).unwrap();
    assert_eq!(
        offsets.log_end,
        Offset(99 * 4),
        "the torn last batch is dropped"
    );
    assert_eq!(read_all(&handle, &log).unwrap().len(), 99);
    let info = block_on(handle.append(&log, batch(7, 1, 10, 0, Compression::Zstd))).unwrap();
    assert_eq!(info.base_offset, Offset(396));
    engine.shutdown().unwrap();
    let (engine, handle) = start(dir.path(), 1);
    assert_eq!(read_all(&handle, &log).unwrap().len(), 100);
    engine.shutdown().unwrap();
}

#[test]
fn bit_flip_in_the_tail_truncates_there() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("flip-tail", 0);
    let (engine, handle) = start(dir.path(), 1);
    block_on(handle.create_log(&log, Some(small_segments()))).unwrap();
    fill(&handle, &log, 30);
    engine.shutdown().unwrap();
    let last = segment_files(dir.path(), &log).pop().unwrap();
    let length = std::fs::metadata(&last).unwrap().len();
    flip_byte(&last, length - 200);
    let (engine, handle) = start(dir.path(), 1);
    let headers = read_all(&handle, &log).unwrap();
    assert!(headers.len() < 30);
    let end = block_on(handle.offsets(&log)).unwrap().log_end;
    assert_eq!(headers.last().unwrap().next_offset(), end);
    engine.shutdown().unwrap();
}

#[test]
fn bit_flip_in_a_sealed_segment_is_a_read_error_not_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("flip-sealed", 0);
    let (engine, handle) = start(dir.path(), 1);
    block_on(handle.create_log(&log, Some(small_segments()))).unwrap();
    fill(&handle, &log, 400);
    engine.shutdown().unwrap();
    let files = segment_files(dir.path(), &log);
    assert!(files.len() >= 3, "several segments: {}", files.len());
    flip_byte(&files[1], 5000);

    let (engine, handle) = start(dir.path(), 1);
    let error = read_all(&handle, &log).unwrap_err();
    assert!(matches!(error, Error::ChecksumMismatch { .. }), "{error}");
    assert!(error.to_string().contains("CRC-32C mismatch"), "{error}");
    // The first segment and the active one still read.
    let first = block_on(handle.read(&log, Offset(0), 1 << 20, Isolation::Written)).unwrap();
    assert!(!first.batches.is_empty());
    let end = block_on(handle.offsets(&log)).unwrap().log_end;
    let tail = block_on(handle.read(&log, Offset(end.0 - 4), 1 << 20, Isolation::Written));
    assert_eq!(tail.unwrap().batches.len(), 1);
    engine.shutdown().unwrap();
}

#[test]
fn damaged_or_missing_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("indexes", 0);
    let (engine, handle) = start(dir.path(), 1);
    block_on(handle.create_log(&log, Some(small_segments()))).unwrap();
    fill(&handle, &log, 300);
    let before = read_all(&handle, &log).unwrap();
    engine.shutdown().unwrap();
    let files = segment_files(dir.path(), &log);
    std::fs::remove_file(files[0].with_extension("index")).unwrap();
    std::fs::write(files[1].with_extension("timeindex"), b"garbage").unwrap();
    let index = files[2].with_extension("index");
    let mut entries = std::fs::read(&index).unwrap();
    entries.swap(3, 11);
    std::fs::write(&index, entries).unwrap();

    let (engine, handle) = start(dir.path(), 1);
    assert_eq!(read_all(&handle, &log).unwrap(), before);
    assert!(
        files[0].with_extension("index").exists(),
        "the missing index is rebuilt"
    );
    for target in [0u64, 77, 403, 801, 1199] {
        let read = block_on(handle.read(&log, Offset(target), 1, Isolation::Written)).unwrap();
        let header = BatchHeader::parse(&read.batches[0]).unwrap();
        assert!(header.base_offset.0 <= target && target < header.next_offset().0);
    }
    engine.shutdown().unwrap();
}

/// Mounts a tmpfs of `megabytes` at a new directory; unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(megabytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "the disk-full test mounts a tmpfs and needs root"
        );
        Tmpfs(dir)
    }

    fn resize(&self, megabytes: u64) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={megabytes}m")])
            .arg(self.0.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn disk_full_fails_the_append_cleanly_and_recovers_when_space_returns() {
    let disk = Tmpfs::mount(2);
    let log = tp("full", 0);
    let config = LogConfig {
        durability: Durability::Always,
        ..small_segments()
    };
    let (engine, handle) = start(disk.0.path(), 1);
    block_on(handle.create_log(&log, Some(config))).unwrap();
    let mut acknowledged = 0u64;
    let error = loop {
        match block_on(handle.append(&log, batch(acknowledged, 4, 1000, 0, Compression::None))) {
            Ok(info) => {
                assert_eq!(info.base_offset, Offset(acknowledged * 4));
                acknowledged += 1;
            }
            Err(error) => break error,
        }
        assert!(acknowledged < 10_000, "a 2 MiB disk fills up");
    };
    assert!(matches!(error, Error::DiskFull { .. }), "{error}");
    assert!(
        error.to_string().contains("no space left on device"),
        "{error}"
    );
    // Keep appending until the freed tail is used up too: every failure is DiskFull.
    loop {
        match block_on(handle.append(&log, batch(0, 4, 1000, 0, Compression::None))) {
            Ok(_) => acknowledged += 1,
            Err(Error::DiskFull { .. }) => break,
            Err(other) => panic!("expected DiskFull, got {other}"),
        }
        assert!(acknowledged < 10_000);
    }
    // The log stays consistent and readable: exactly the acknowledged batches.
    assert_eq!(read_all(&handle, &log).unwrap().len() as u64, acknowledged);
    assert_eq!(
        block_on(handle.offsets(&log)).unwrap().log_end,
        Offset(acknowledged * 4)
    );

    disk.resize(8);
    let info = block_on(handle.append(&log, batch(1, 4, 1000, 0, Compression::None))).unwrap();
    assert_eq!(
        info.base_offset,
        Offset(acknowledged * 4),
        "appends resume with no gap"
    );
    engine.shutdown().unwrap();
    let (engine, handle) = start(disk.0.path(), 1);
    assert_eq!(
        read_all(&handle, &log).unwrap().len() as u64,
        acknowledged + 1
    );
    engine.shutdown().unwrap();
}

/// An engine whose file layer takes injected faults, with one `always` log `name`-0.
fn always_log_with_faults(dir: &Path, name: &str) -> (Engine, Handle, TopicPartition, Arc<Faults>) {
    let log = tp(name, 0);
    let faults = Arc::new(Faults::default());
    let mut config = common::config(dir, 1);
    config.storage = Storage::with_hooks(faults.clone());
    let engine = Engine::start(config).unwrap();
    let handle = engine.handle();
    let always = LogConfig {
        durability: Durability::Always,
        ..LogConfig::default()
    };
    block_on(handle.create_log(&log, Some(always))).unwrap();
    (engine, handle, log, faults)
}

#[test]
fn failed_fsync_fences_the_log_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, handle, log, faults) = always_log_with_faults(dir.path(), "fenced");
    fill(&handle, &log, 10);
    faults.fail_fsync.store(true, Ordering::Relaxed);
    let error = block_on(handle.append(&log, batch(10, 1, 10, 0, Compression::None))).unwrap_err();
    assert!(matches!(error, Error::Fenced { .. }), "{error}");
    faults.fail_fsync.store(false, Ordering::Relaxed);
    let error = block_on(handle.append(&log, batch(11, 1, 10, 0, Compression::None))).unwrap_err();
    assert!(
        error.to_string().contains("fenced after a failed fsync"),
        "{error}"
    );
    assert!(
        read_all(&handle, &log).unwrap().len() >= 10,
        "reads still work"
    );
    engine.shutdown().unwrap_err();

    let (engine, handle) = start(dir.path(), 1);
    let info = block_on(handle.append(&log, batch(12, 1, 10, 0, Compression::None))).unwrap();
    assert!(info.base_offset >= Offset(40));
    engine.shutdown().unwrap();
}

#[test]
fn written_ack_does_not_wait_for_the_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, handle, log, faults) = always_log_with_faults(dir.path(), "written");
    fill(&handle, &log, 3);
    // The fdatasync after this write fails: an append acknowledged on write has its offset
    // (the batch is in the file), while one waiting for the policy gets the failure.
    faults.fail_fsync.store(true, Ordering::Relaxed);
    let batch_written = batch(3, 4, 300, 3, Compression::None);
    let info = block_on(handle.append_acked(&log, batch_written, Ack::Written)).unwrap();
    assert_eq!(info.base_offset, Offset(12));
    let error =
        block_on(handle.append_acked(&log, batch(4, 1, 10, 0, Compression::None), Ack::Policy))
            .unwrap_err();
    assert!(error.to_string().contains("fenced"), "{error}");
    engine.shutdown().unwrap_err();
}
