//! The engine's public API end to end: append, read back byte for byte, offsets, reads by
//! timestamp, reopen, errors with precise messages, several shards.

mod common;

use bytes::Bytes;
use common::{batch, block_on, start, tp};
use coremq_engine::record::decode_records;
use coremq_engine::{
    BatchHeader, Compression, Engine, Error, Isolation, Offset, Timestamp, TopicPartition,
};

#[test]
fn append_read_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let quotes = tp("quotes", 0);
    let appended: Vec<Bytes>;
    {
        let (engine, handle) = start(dir.path(), 2);
        assert!(block_on(handle.create_log(&quotes, Some(common::small_segments()))).unwrap());
        assert!(!block_on(handle.create_log(&quotes, None)).unwrap());
        for n in 0..200u64 {
            let codec = [Compression::None, Compression::Zstd, Compression::Lz4][n as usize % 3];
            let info = block_on(handle.append(&quotes, batch(n, 5, 100, 1_000 + n as i64, codec)))
                .unwrap();
            assert_eq!(info.base_offset, Offset(n * 5));
            assert_eq!(info.last_offset, Offset(n * 5 + 4));
        }
        let read =
            block_on(handle.read(&quotes, Offset(0), usize::MAX, Isolation::Written)).unwrap();
        appended = read.batches.clone();
        assert_eq!(appended.len(), 200);
        let offsets = block_on(handle.offsets(&quotes)).unwrap();
        assert_eq!(offsets.log_end, Offset(1000));
        assert_eq!(offsets.high_watermark, Offset(1000));
        engine.shutdown().unwrap();
    }
    let (engine, handle) = start(dir.path(), 2);
    assert_eq!(block_on(handle.list_logs()).unwrap(), vec![quotes.clone()]);
    let offsets = block_on(handle.offsets(&quotes)).unwrap();
    assert_eq!(offsets.log_end, Offset(1000));
    let mut from = Offset(0);
    let mut reread = Vec::new();
    while from < Offset(1000) {
        let read = block_on(handle.read(&quotes, from, 10_000, Isolation::Written)).unwrap();
        assert!(!read.batches.is_empty());
        for batch in &read.batches {
            let header = BatchHeader::parse(batch).unwrap();
            from = header.next_offset();
        }
        reread.extend(read.batches);
    }
    assert_eq!(
        reread, appended,
        "every batch comes back byte for byte after reopen"
    );
    let records = decode_records(&reread[7], 1 << 20).unwrap();
    assert_eq!(records[2].offset, Offset(37));
    assert_eq!(&records[2].value.as_ref().unwrap()[..6], b"7:2:xx");
    let middle = block_on(handle.read(&quotes, Offset(503), 1, Isolation::Written)).unwrap();
    assert_eq!(
        middle.batches.len(),
        1,
        "one batch at least, even over max_bytes"
    );
    assert_eq!(
        BatchHeader::parse(&middle.batches[0]).unwrap().base_offset,
        Offset(500)
    );
    engine.shutdown().unwrap();
}

/// One memory budget per shard, shared by its logs: a log that keeps taking appends pushes
/// the oldest batches of the others out, the shard holds no more than its budget, what left
/// memory is read back from the file, and what is recent is read from memory.
#[test]
fn the_shard_cache_budget_is_shared_by_its_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), 1);
    config.cache_bytes = 200_000;
    let engine = Engine::start(config).unwrap();
    let handle = engine.handle();
    let (quiet, busy) = (tp("quiet", 0), tp("busy", 0));
    for log in [&quiet, &busy] {
        block_on(handle.create_log(log, Some(common::small_segments()))).unwrap();
    }
    let metrics = || block_on(handle.metrics()).unwrap();
    let read = |log: &TopicPartition, from: u64| {
        block_on(handle.read(log, Offset(from), 1 << 20, Isolation::Written)).unwrap()
    };
    for tag in 0..8 {
        let bytes = batch(tag, 10, 1_000, 1, Compression::None);
        block_on(handle.append(&quiet, bytes)).unwrap();
    }
    let held = metrics().cache_bytes;
    assert!(
        held > 80_000,
        "the quiet log's batches are in memory: {held}"
    );
    assert_eq!(metrics().cache_budget_bytes, 200_000);
    let misses = metrics().cache_misses;
    assert_eq!(read(&quiet, 0).batches.len(), 8);
    assert_eq!(metrics().cache_misses, misses, "read from memory");
    for tag in 100..130 {
        let bytes = batch(tag, 10, 1_000, 1, Compression::None);
        block_on(handle.append(&busy, bytes)).unwrap();
        let held = metrics().cache_bytes;
        assert!(
            held <= 200_000,
            "the shard holds {held} bytes, over its budget"
        );
    }
    // The quiet log's batches were the oldest: they left memory first.
    let back = read(&quiet, 0);
    assert_eq!(metrics().cache_misses, misses + 1, "read from the file");
    let first = &back.batches[0];
    let records = decode_records(first, 1 << 20).unwrap();
    assert!(records[0].value.as_deref().unwrap().starts_with(b"0:0:"));
    let end = block_on(handle.offsets(&busy)).unwrap().log_end.0;
    let recent = read(&busy, end - 10);
    assert_eq!(recent.batches.len(), 1);
    assert_eq!(
        metrics().cache_misses,
        misses + 1,
        "recent batches from memory"
    );
    engine.shutdown().unwrap();
}

#[test]
fn max_timestamp_record_is_the_first_holding_the_largest_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, handle) = start(dir.path(), 1);
    let log = tp("ticks", 0);
    block_on(handle.create_log(&log, Some(common::small_segments()))).unwrap();
    let max = || block_on(handle.max_timestamp_record(&log)).unwrap();
    assert_eq!(max(), None, "an empty log has no record");
    for n in 0..300u64 {
        let timestamp = 10_000 + 10 * n as i64;
        block_on(handle.append(&log, batch(n, 2, 200, timestamp, Compression::None))).unwrap();
    }
    assert_eq!(max(), Some((Offset(598), Timestamp(12_990))));
    block_on(handle.append(&log, batch(300, 2, 200, 12_000, Compression::None))).unwrap();
    block_on(handle.append(&log, batch(301, 3, 200, 12_990, Compression::Zstd))).unwrap();
    assert_eq!(
        max(),
        Some((Offset(598), Timestamp(12_990))),
        "the first record holding the largest timestamp, not a later tie"
    );
    block_on(handle.append(&log, batch(302, 1, 200, 20_000, Compression::Zstd))).unwrap();
    assert_eq!(max(), Some((Offset(605), Timestamp(20_000))));
    block_on(handle.clear_cache(&log)).unwrap();
    assert_eq!(max(), Some((Offset(605), Timestamp(20_000))));
    engine.shutdown().unwrap();
}

#[test]
fn timestamps_offsets_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, handle) = start(dir.path(), 1);
    let log = tp("ticks", 3);
    block_on(handle.create_log(&log, Some(common::small_segments()))).unwrap();
    for n in 0..300u64 {
        block_on(handle.append(
            &log,
            batch(n, 2, 200, 10_000 + 10 * n as i64, Compression::None),
        ))
        .unwrap();
    }
    let lookup = |t: i64| block_on(handle.offset_for_timestamp(&log, Timestamp(t))).unwrap();
    assert_eq!(lookup(0), Some((Offset(0), Timestamp(10_000))));
    assert_eq!(lookup(10_005), Some((Offset(2), Timestamp(10_010))));
    assert_eq!(lookup(12_990), Some((Offset(598), Timestamp(12_990))));
    assert_eq!(lookup(13_000), None);
    block_on(handle.clear_cache(&log)).unwrap();
    assert_eq!(lookup(11_500), Some((Offset(300), Timestamp(11_500))));

    let error = block_on(handle.read(&log, Offset(601), 100, Isolation::Written)).unwrap_err();
    assert!(
        matches!(
            error,
            Error::OffsetOutOfRange {
                requested: Offset(601),
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("[0, 600)"), "{error}");
    let end = block_on(handle.read(&log, Offset(600), 100, Isolation::Written)).unwrap();
    assert!(end.batches.is_empty());
    let missing = block_on(handle.append(&tp("nope", 0), batch(0, 1, 1, 0, Compression::None)));
    assert!(matches!(missing, Err(Error::UnknownLog { .. })));
    let oversized = batch(0, 1, 2 << 20, 0, Compression::None);
    let error = block_on(handle.append(&log, oversized)).unwrap_err();
    assert!(matches!(error, Error::BatchTooLarge { .. }), "{error}");
    let mut corrupt = batch(0, 1, 10, 0, Compression::None).to_vec();
    corrupt[70] ^= 1;
    let error = block_on(handle.append(&log, Bytes::from(corrupt))).unwrap_err();
    assert!(matches!(error, Error::ChecksumMismatch { .. }), "{error}");

    block_on(handle.set_committed(&log, Offset(100))).unwrap();
    let committed =
        block_on(handle.read(&log, Offset(0), usize::MAX, Isolation::Committed)).unwrap();
    let last = BatchHeader::parse(committed.batches.last().unwrap()).unwrap();
    assert!(last.base_offset < Offset(100));
    assert_eq!(committed.high_watermark, Offset(100));
    engine.shutdown().unwrap();
}

/// Many appends in flight at once: write rounds overlap (the block shared by two rounds is
/// written in order), and every acknowledged batch reads back byte for byte after reopen.
#[test]
fn concurrent_appends_pipeline_writes_and_lose_nothing() {
    use coremq_engine::{Durability, LogConfig};
    let dir = tempfile::tempdir().unwrap();
    let log = tp("pipelined", 0);
    let faults = std::sync::Arc::new(coremq_engine::storage::Faults::default());
    faults
        .write_delay_max_us
        .store(3000, std::sync::atomic::Ordering::Relaxed);
    let mut config = common::config(dir.path(), 2);
    config.storage = coremq_engine::storage::Storage::with_hooks(faults);
    let engine = coremq_engine::Engine::start(config).unwrap();
    let handle = engine.handle();
    let config = LogConfig {
        durability: Durability::Never,
        segment_bytes: 1 << 20,
        ..LogConfig::default()
    };
    block_on(handle.create_log(&log, Some(config))).unwrap();
    let acked: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8u64)
            .map(|worker| {
                let handle = handle.clone();
                let log = log.clone();
                scope.spawn(move || {
                    (0..300u64)
                        .map(|n| {
                            let tag = worker * 1000 + n;
                            let size = 10 + (tag * 37 % 3000) as usize;
                            let batch =
                                batch(tag, 1 + (tag % 3) as u32, size, 0, Compression::None);
                            (
                                block_on(handle.append(&log, batch)).unwrap().base_offset.0,
                                tag,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    engine.shutdown().unwrap();
    let (engine, handle) = start(dir.path(), 2);
    for (base, tag) in acked {
        let read = block_on(handle.read(&log, Offset(base), 1, Isolation::Written)).unwrap();
        let size = 10 + (tag * 37 % 3000) as usize;
        let mut expected = batch(tag, 1 + (tag % 3) as u32, size, 0, Compression::None).to_vec();
        coremq_engine::batch::set_base_offset(&mut expected, Offset(base));
        assert_eq!(&read.batches[0][..], &expected[..], "batch at {base}");
    }
    engine.shutdown().unwrap();
}

/// A batch of `records` 100-byte records from idempotent producer `id`, starting at
/// `sequence`.
fn producer_batch(id: i64, epoch: i16, sequence: i32, records: u32) -> Bytes {
    let mut builder =
        coremq_engine::BatchBuilder::new(Compression::None).producer(id, epoch, sequence);
    for index in 0..records {
        builder.push(Timestamp::now(), None, Some(&[index as u8; 100]), &[]);
    }
    builder.build()
}

#[test]
fn idempotent_producer_state_survives_rolls_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("idempotent", 0);
    let mut sequence = 0;
    {
        let (engine, handle) = start(dir.path(), 1);
        block_on(handle.create_log(&log, Some(common::small_segments()))).unwrap();
        // Producer 9's batches end up in sealed segments: only the snapshot remembers them.
        block_on(handle.append(&log, producer_batch(9, 0, 0, 1))).unwrap();
        block_on(handle.append(&log, producer_batch(9, 0, 1, 1))).unwrap();
        // Enough batches that segments roll (and producer snapshots are written) on the way.
        for _ in 0..250 {
            block_on(handle.append(&log, producer_batch(7, 0, sequence, 4))).unwrap();
            sequence += 4;
        }
        block_on(handle.append(&log, producer_batch(8, 3, 0, 1))).unwrap();
        engine.shutdown().unwrap();
    }
    assert!(dir.path().join("idempotent-0/producers.snapshot").exists());
    let (engine, handle) = start(dir.path(), 1);
    let end = block_on(handle.offsets(&log)).unwrap().log_end;
    // The last batch retried after the restart: answered with its offsets, not stored again.
    let retry = block_on(handle.append(&log, producer_batch(7, 0, sequence - 4, 4))).unwrap();
    assert_eq!(retry.base_offset, Offset(end.0 - 5));
    let early = block_on(handle.append(&log, producer_batch(9, 0, 1, 1))).unwrap();
    assert_eq!(early.base_offset, Offset(1), "known from the snapshot");
    assert_eq!(block_on(handle.offsets(&log)).unwrap().log_end, end);
    // A gap is refused; an older epoch is fenced; the next sequence is stored.
    assert!(matches!(
        block_on(handle.append(&log, producer_batch(7, 0, sequence + 1, 1))),
        Err(Error::OutOfOrderSequence { .. })
    ));
    assert!(matches!(
        block_on(handle.append(&log, producer_batch(8, 2, 1, 1))),
        Err(Error::ProducerFenced { .. })
    ));
    let next = block_on(handle.append(&log, producer_batch(7, 0, sequence, 2))).unwrap();
    assert_eq!(next.base_offset, end);
    // Batches without a producer id are never checked.
    block_on(handle.append(&log, batch(0, 3, 10, 1, Compression::None))).unwrap();
    engine.shutdown().unwrap();
}

/// Recovery reads the active segment in chunks (it is never mapped): batches that straddle
/// chunk boundaries, one larger than a chunk, and a torn batch at the end after them. Every
/// whole batch comes back byte for byte; the torn one is cut.
#[test]
fn recovery_reads_an_active_segment_larger_than_its_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("big", 0);
    let appended: Vec<Bytes>;
    {
        let (engine, handle) = start(dir.path(), 1);
        let config = coremq_engine::LogConfig {
            batch_bytes_max: 8 << 20,
            durability: coremq_engine::Durability::Never,
            ..coremq_engine::LogConfig::default()
        };
        block_on(handle.create_log(&log, Some(config))).unwrap();
        for n in 0..40u64 {
            let records = if n == 20 { 6_000 } else { 333 };
            let batch = batch(n, records, 1_000, 1_000, Compression::None);
            block_on(handle.append(&log, batch)).unwrap();
        }
        let read = block_on(handle.read(&log, Offset(0), usize::MAX, Isolation::Written)).unwrap();
        appended = read.batches;
        engine.shutdown().unwrap();
    }
    let total: usize = appended.iter().map(Bytes::len).sum();
    assert!(total > 3 * (4 << 20), "the segment spans several chunks");
    assert!(
        appended[20].len() > 4 << 20,
        "one batch is larger than a chunk"
    );
    let segment = dir
        .path()
        .join(log.dir_name())
        .join(format!("{:020}.log", 0));
    let mut torn = batch(40, 333, 1_000, 1_000, Compression::None).to_vec();
    let end = BatchHeader::parse(appended.last().unwrap())
        .unwrap()
        .next_offset();
    coremq_engine::batch::set_base_offset(&mut torn, end);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    std::io::Write::write_all(&mut file, &torn[..torn.len() / 2]).unwrap();
    drop(file);

    let (engine, handle) = start(dir.path(), 1);
    let offsets = block_on(handle.offsets(&log)).unwrap();
    assert_eq!(offsets.log_end, end, "the torn batch is cut");
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), total as u64);
    let mut reread = Vec::new();
    let mut from = Offset(0);
    while from < end {
        let read = block_on(handle.read(&log, from, 1 << 20, Isolation::Written)).unwrap();
        from = BatchHeader::parse(read.batches.last().unwrap())
            .unwrap()
            .next_offset();
        reread.extend(read.batches);
    }
    assert_eq!(reread, appended, "every whole batch is back byte for byte");
    let info = block_on(handle.append(&log, batch(41, 3, 10, 1_000, Compression::None))).unwrap();
    assert_eq!(info.base_offset, end, "appends go on after the cut");
    engine.shutdown().unwrap();
}

/// Descriptors this process holds open on files under `dir`.
fn open_files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .collect()
}

#[test]
fn a_stopped_engine_keeps_no_file_open() {
    let dir = tempfile::tempdir().unwrap();
    let dir_path = std::fs::canonicalize(dir.path()).unwrap();
    for round in 0..3 {
        let (engine, handle) = start(&dir_path, 2);
        for partition in 0..4 {
            let log = tp("closed", partition);
            if round == 0 {
                block_on(handle.create_log(&log, Some(common::small_segments()))).unwrap();
            }
            for tag in 0..20 {
                let bytes = batch(tag, 10, 500, 1, Compression::None);
                block_on(handle.append(&log, bytes)).unwrap();
            }
        }
        assert!(!open_files_under(&dir_path).is_empty());
        drop(handle);
        engine.shutdown().unwrap();
        assert_eq!(
            open_files_under(&dir_path),
            Vec::<std::path::PathBuf>::new(),
            "round {round}: files left open after shutdown"
        );
    }
}
