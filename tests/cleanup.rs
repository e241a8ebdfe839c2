//! Retention by size and age, DeleteRecords, and log compaction, each surviving a restart.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{block_on, small_segments, start, tp};
use coremq_engine::record::decode_records;
use coremq_engine::{
    BatchBuilder, BatchHeader, CleanupPolicy, Compression, Error, Handle, Isolation, LogConfig,
    Offset, Record, Timestamp, TopicPartition,
};

fn records(handle: &Handle, log: &TopicPartition) -> Vec<Record> {
    let mut out = Vec::new();
    let mut from = block_on(handle.offsets(log)).unwrap().log_start;
    loop {
        let read = block_on(handle.read(log, from, 1 << 20, Isolation::Written)).unwrap();
        if read.batches.is_empty() {
            return out;
        }
        for batch in read.batches {
            from = BatchHeader::parse(&batch).unwrap().next_offset();
            out.extend(
                decode_records(&batch, 1 << 20)
                    .unwrap()
                    .into_iter()
                    .filter(|r| r.offset >= read.log_start),
            );
        }
    }
}

fn keyed(entries: &[(&str, Option<&str>)], timestamp: i64, codec: Compression) -> Bytes {
    let mut builder = BatchBuilder::new(codec);
    for (key, value) in entries {
        builder.push(
            Timestamp(timestamp),
            Some(key.as_bytes()),
            value.map(str::as_bytes),
            &[],
        );
    }
    builder.build()
}

#[test]
fn retention_by_size_deletes_oldest_segments_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("sized", 0);
    let (engine, handle) = start(dir.path(), 1);
    let config = LogConfig {
        retention_ms: None,
        ..small_segments()
    };
    block_on(handle.create_log(&log, Some(config.clone()))).unwrap();
    for n in 0..500u64 {
        let now = Timestamp::now().0;
        block_on(handle.append(&log, common::batch(n, 4, 250, now, Compression::None))).unwrap();
    }
    assert_eq!(
        block_on(handle.enforce_retention(&log)).unwrap(),
        0,
        "no limit, no deletion"
    );
    let limit = 200 << 10;
    block_on(handle.set_config(
        &log,
        LogConfig {
            retention_bytes: Some(limit),
            ..config
        },
    ))
    .unwrap();
    let deleted = block_on(handle.enforce_retention(&log)).unwrap();
    assert!(deleted > 0);
    let offsets = block_on(handle.offsets(&log)).unwrap();
    assert!(offsets.log_start > Offset(0));
    let error = block_on(handle.read(&log, Offset(0), 100, Isolation::Written)).unwrap_err();
    assert!(matches!(error, Error::OffsetOutOfRange { .. }));
    let kept = records(&handle, &log);
    assert_eq!(kept.first().unwrap().offset, offsets.log_start);
    assert_eq!(kept.last().unwrap().offset, Offset(1999));
    let kept_bytes: u64 = std::fs::read_dir(dir.path().join(log.dir_name()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        kept_bytes >= limit && kept_bytes < limit + (64 << 10) + 4096,
        "{kept_bytes}"
    );
    engine.shutdown().unwrap();
    let (engine, handle) = start(dir.path(), 1);
    assert_eq!(
        block_on(handle.offsets(&log)).unwrap().log_start,
        offsets.log_start
    );
    assert_eq!(
        block_on(handle.config(&log)).unwrap().retention_bytes,
        Some(limit)
    );
    engine.shutdown().unwrap();
}

#[test]
fn retention_by_age_rolls_and_deletes_expired_data() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("aged", 0);
    let (engine, handle) = start(dir.path(), 1);
    let config = LogConfig {
        retention_ms: Some(60_000),
        ..small_segments()
    };
    block_on(handle.create_log(&log, Some(config))).unwrap();
    let old = Timestamp::now().0 - 3_600_000;
    for n in 0..200u64 {
        block_on(handle.append(&log, common::batch(n, 2, 300, old, Compression::None))).unwrap();
    }
    let deleted = block_on(handle.enforce_retention(&log)).unwrap();
    assert!(deleted >= 2, "{deleted}");
    let offsets = block_on(handle.offsets(&log)).unwrap();
    assert_eq!(offsets.log_start, offsets.log_end, "everything was expired");
    let fresh = common::batch(0, 1, 10, Timestamp::now().0, Compression::None);
    let info = block_on(handle.append(&log, fresh)).unwrap();
    assert_eq!(info.base_offset, Offset(400));
    assert_eq!(block_on(handle.enforce_retention(&log)).unwrap(), 0);
    assert_eq!(records(&handle, &log).len(), 1);
    engine.shutdown().unwrap();
}

#[test]
fn delete_records_moves_the_log_start_durably() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("trimmed", 1);
    let (engine, handle) = start(dir.path(), 1);
    block_on(handle.create_log(&log, Some(small_segments()))).unwrap();
    for n in 0..300u64 {
        block_on(handle.append(&log, common::batch(n, 2, 300, 0, Compression::None))).unwrap();
    }
    assert_eq!(
        block_on(handle.delete_records(&log, Offset(333))).unwrap(),
        Offset(333)
    );
    let error = block_on(handle.delete_records(&log, Offset(601))).unwrap_err();
    assert!(matches!(error, Error::OffsetOutOfRange { .. }));
    assert_eq!(records(&handle, &log).first().unwrap().offset, Offset(333));
    engine.shutdown().unwrap();
    let (engine, handle) = start(dir.path(), 1);
    assert_eq!(
        block_on(handle.offsets(&log)).unwrap().log_start,
        Offset(333)
    );
    assert_eq!(records(&handle, &log).len(), 600 - 333);
    engine.shutdown().unwrap();
}

#[test]
fn compaction_keeps_the_latest_value_per_key_and_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("table", 0);
    let (engine, handle) = start(dir.path(), 2);
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        delete_retention_ms: 0,
        segment_bytes: 8192,
        ..small_segments()
    };
    block_on(handle.create_log(&log, Some(config))).unwrap();
    let mut latest: HashMap<String, (Offset, Option<String>)> = HashMap::new();
    let mut next = 0u64;
    let now = Timestamp::now().0;
    for round in 0..60u64 {
        let mut entries = Vec::new();
        for k in 0..20u64 {
            let key = format!("k{}", (k * 7 + round) % 30);
            let value = if (round + k) % 13 == 0 {
                None
            } else {
                Some(format!("{round}-{k}-{}", "v".repeat(100)))
            };
            entries.push((key, value));
        }
        let borrowed: Vec<(&str, Option<&str>)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let codec = [Compression::Zstd, Compression::None, Compression::Gzip][round as usize % 3];
        let info = block_on(handle.append(&log, keyed(&borrowed, now - 10, codec))).unwrap();
        for (i, (key, value)) in entries.into_iter().enumerate() {
            latest.insert(key, (Offset(info.base_offset.0 + i as u64), value));
        }
        next += 20;
    }
    let before = records(&handle, &log);
    let report = block_on(handle.compact(&log)).unwrap();
    assert!(
        report.segments_rewritten > 0 && report.records_removed > 0,
        "{report:?}"
    );
    assert!(report.bytes_after < report.bytes_before);
    let again = block_on(handle.compact(&log)).unwrap();
    assert_eq!(
        again.bytes_before, 0,
        "nothing sealed since the last pass: skipped"
    );
    let after = records(&handle, &log);
    assert!(after.len() < before.len());
    let check = |after: &[Record]| {
        let by_offset: HashMap<Offset, &Record> = after.iter().map(|r| (r.offset, r)).collect();
        for (key, (offset, value)) in &latest {
            if let Some(value) = value {
                let record = by_offset
                    .get(offset)
                    .unwrap_or_else(|| panic!("latest {key} lost"));
                assert_eq!(record.value.as_deref(), Some(value.as_bytes()));
            }
        }
        let originals: HashMap<Offset, &Record> = before.iter().map(|r| (r.offset, r)).collect();
        for record in after {
            assert_eq!(
                originals.get(&record.offset),
                Some(&record),
                "kept records are unchanged"
            );
        }
        assert!(after.windows(2).all(|pair| pair[0].offset < pair[1].offset));
    };
    check(&after);
    let info = block_on(handle.append(&log, keyed(&[("k1", Some("new"))], now, Compression::Lz4)))
        .unwrap();
    assert_eq!(
        info.base_offset,
        Offset(next),
        "offsets continue after compaction"
    );
    engine.shutdown().unwrap();
    let (engine, handle) = start(dir.path(), 2);
    let reopened = records(&handle, &log);
    check(&reopened[..reopened.len() - 1]);
    engine.shutdown().unwrap();
}
