//! What the engine gives replication, through its public API: leader epochs stamped on a
//! leader's batches and answered as OffsetForLeaderEpoch does, a follower's log built from the
//! leader's batches byte for byte, and truncation of a divergent suffix (within the active
//! segment, into sealed ones, mid-batch, below the log start), each surviving a reopen.

mod common;

use bytes::Bytes;
use common::{batch, block_on, start, tp};
use coremq_engine::batch::CheckedBatch;
use coremq_engine::epochs::EpochEntry;
use coremq_engine::{
    Ack, BatchHeader, Compression, Error, Handle, Isolation, Offset, Timestamp, TopicPartition,
};

/// Every batch of the log, read a segment at a time from the file or memory.
fn all_batches(handle: &Handle, log: &TopicPartition) -> Vec<Bytes> {
    let offsets = block_on(handle.offsets(log)).unwrap();
    let (mut from, mut batches) = (offsets.log_start, Vec::new());
    while from < offsets.log_end {
        let read = block_on(handle.read(log, from, usize::MAX, Isolation::Written)).unwrap();
        let last = read.batches.last().expect("a batch below the log end");
        from = BatchHeader::parse(last).unwrap().next_offset();
        batches.extend(read.batches);
    }
    batches
}

/// Asserts two runs of batches are the same, naming the first difference (not the bytes).
#[track_caller]
fn assert_same(got: &[Bytes], want: &[Bytes]) {
    let differs = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        differs.is_none() && got.len() == want.len(),
        "{} batches, {} expected; first difference at batch {differs:?} (offsets {:?} vs {:?})",
        got.len(),
        want.len(),
        differs.map(|at| epochs_of(&got[at..=at])),
        differs.map(|at| epochs_of(&want[at..=at])),
    );
}

fn epochs_of(batches: &[Bytes]) -> Vec<(u64, i32)> {
    batches
        .iter()
        .map(|batch| {
            let header = BatchHeader::parse(batch).unwrap();
            (header.base_offset.0, header.partition_leader_epoch)
        })
        .collect()
}

fn assign_epoch(handle: &Handle, log: &TopicPartition, epoch: i32) -> Result<(), Error> {
    block_on(handle.with_log(log, move |log| async move {
        log.assign_leader_epoch(epoch).await
    }))
}

fn epoch_starts(handle: &Handle, log: &TopicPartition) -> Vec<(i32, u64)> {
    block_on(handle.with_log(log, |log| async move {
        Ok(log
            .leader_epochs()
            .entries()
            .iter()
            .map(
                |&EpochEntry {
                     epoch,
                     start_offset,
                 }| (epoch, start_offset.0),
            )
            .collect())
    }))
    .unwrap()
}

fn end_for(handle: &Handle, log: &TopicPartition, epoch: i32) -> Option<(i32, u64)> {
    block_on(handle.with_log(log, move |log| async move {
        Ok(log
            .end_offset_for_epoch(epoch)
            .map(|(epoch, offset)| (epoch, offset.0)))
    }))
    .unwrap()
}

fn append_replica(handle: &Handle, log: &TopicPartition, batch: Bytes) -> Result<Offset, Error> {
    block_on(handle.with_log(log, move |log| async move {
        let checked = CheckedBatch::new(batch, log.config().batch_limits())?;
        let info = log.append_replica(checked, Ack::Written).await?;
        Ok(info.base_offset)
    }))
}

fn truncate(handle: &Handle, log: &TopicPartition, offset: u64) -> Offset {
    block_on(handle.with_log(log, move |log| async move {
        log.truncate_to(Offset(offset)).await
    }))
    .unwrap()
}

fn append_n(handle: &Handle, log: &TopicPartition, tags: std::ops::Range<u64>) {
    for tag in tags {
        block_on(handle.append(log, batch(tag, 4, 200, 1_000, Compression::None))).unwrap();
    }
}

#[test]
fn a_leader_stamps_its_epochs_and_answers_where_each_ends() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("epochs", 0);
    {
        let (engine, handle) = start(dir.path(), 1);
        block_on(handle.create_log(&log, Some(common::small_segments()))).unwrap();
        // Before any epoch, batches keep the producer's "no epoch" (-1).
        append_n(&handle, &log, 0..2);
        assign_epoch(&handle, &log, 0).unwrap();
        append_n(&handle, &log, 2..5);
        assign_epoch(&handle, &log, 3).unwrap();
        assign_epoch(&handle, &log, 3).unwrap();
        append_n(&handle, &log, 5..7);
        assert!(matches!(
            assign_epoch(&handle, &log, 2),
            Err(Error::StaleLeaderEpoch {
                epoch: 2,
                latest: 3
            })
        ));
        let stored = epochs_of(&all_batches(&handle, &log));
        assert_eq!(
            stored,
            [(0, -1), (4, -1), (8, 0), (12, 0), (16, 0), (20, 3), (24, 3)]
        );
        assert_eq!(epoch_starts(&handle, &log), [(0, 8), (3, 20)]);
        engine.shutdown().unwrap();
    }
    let (engine, handle) = start(dir.path(), 1);
    assert_eq!(epoch_starts(&handle, &log), [(0, 8), (3, 20)]);
    assert_eq!(end_for(&handle, &log, 3), Some((3, 28)));
    assert_eq!(end_for(&handle, &log, 2), Some((0, 20)));
    assert_eq!(end_for(&handle, &log, 0), Some((0, 20)));
    assert_eq!(end_for(&handle, &log, 4), None);
    engine.shutdown().unwrap();
}

/// A follower built from the leader's batches holds the same bytes at the same offsets, with
/// the leader's epochs; a batch starting before its log end is refused, a gap is kept.
#[test]
fn a_follower_appends_the_leaders_batches_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, follower) = (tp("leader", 0), tp("follower", 0));
    let (engine, handle) = start(dir.path(), 2);
    for log in [&leader, &follower] {
        block_on(handle.create_log(log, Some(common::small_segments()))).unwrap();
    }
    assign_epoch(&handle, &leader, 1).unwrap();
    append_n(&handle, &leader, 0..60);
    assign_epoch(&handle, &leader, 4).unwrap();
    append_n(&handle, &leader, 60..100);
    let batches = all_batches(&handle, &leader);
    for batch in &batches {
        append_replica(&handle, &follower, batch.clone()).unwrap();
    }
    assert_same(&all_batches(&handle, &follower), &batches);
    assert!(
        block_on(handle.with_log(&follower, |log| async move { Ok(log.segment_count()) })).unwrap()
            > 1
    );
    assert_eq!(epoch_starts(&handle, &follower), [(1, 0), (4, 240)]);
    assert!(matches!(
        append_replica(&handle, &follower, batches[3].clone()),
        Err(Error::ReplicaOffsetBehind { .. })
    ));
    let mut later = batch(1_000, 2, 10, 5, Compression::None).to_vec();
    coremq_engine::batch::set_base_offset(&mut later, Offset(500));
    coremq_engine::batch::set_partition_leader_epoch(&mut later, 6);
    assert_eq!(
        append_replica(&handle, &follower, Bytes::from(later)).unwrap(),
        Offset(500)
    );
    let offsets = block_on(handle.offsets(&follower)).unwrap();
    assert_eq!(offsets.log_end, Offset(502));
    assert_eq!(
        epoch_starts(&handle, &follower),
        [(1, 0), (4, 240), (6, 500)]
    );
    engine.shutdown().unwrap();
}

/// Truncations within the active segment, into a sealed one, and mid-batch; each leaves a
/// log that reads back its prefix byte for byte, takes appends at its new end, forgets the
/// epochs and producer batches past the cut, and reopens the same.
#[test]
fn truncation_removes_the_suffix_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("diverged", 0);
    let kept;
    {
        let (engine, handle) = start(dir.path(), 1);
        block_on(handle.create_log(&log, Some(common::small_segments()))).unwrap();
        assign_epoch(&handle, &log, 1).unwrap();
        append_n(&handle, &log, 0..150);
        assign_epoch(&handle, &log, 2).unwrap();
        append_n(&handle, &log, 150..300);
        let before = all_batches(&handle, &log);
        let segments = |handle: &Handle| {
            block_on(handle.with_log(&log, |log| async move { Ok(log.segment_count()) })).unwrap()
        };
        let segments_before = segments(&handle);
        assert!(segments_before >= 4, "{segments_before} segments");

        // Within the active segment, at a batch boundary.
        assert_eq!(truncate(&handle, &log, 1192), Offset(1192));
        assert_same(&all_batches(&handle, &log), &before[..298]);
        // Mid-batch: the batch holding the offset goes whole.
        assert_eq!(truncate(&handle, &log, 1190), Offset(1188));
        assert_same(&all_batches(&handle, &log), &before[..297]);
        // Into a sealed segment, past an epoch's start: the epoch goes too.
        assert_eq!(truncate(&handle, &log, 401), Offset(400));
        block_on(handle.with_log(&log, |log| async move {
            log.clear_cache();
            Ok(())
        }))
        .unwrap();
        assert_same(&all_batches(&handle, &log), &before[..100]);
        assert!(segments(&handle) < segments_before);
        assert_eq!(epoch_starts(&handle, &log), [(1, 0)]);
        assert_eq!(end_for(&handle, &log, 1), Some((1, 400)));
        let offsets = block_on(handle.offsets(&log)).unwrap();
        assert_eq!(
            (offsets.log_end, offsets.high_watermark, offsets.flushed),
            (Offset(400), Offset(400), Offset(400))
        );
        // The log goes on from the cut under a new epoch.
        assign_epoch(&handle, &log, 5).unwrap();
        append_n(&handle, &log, 900..920);
        let after = all_batches(&handle, &log);
        assert_same(&after[..100], &before[..100]);
        assert_eq!(
            epochs_of(&after[100..101]),
            [(400, 5)],
            "the first new batch"
        );
        kept = after;
        engine.shutdown().unwrap();
    }
    let (engine, handle) = start(dir.path(), 1);
    assert_same(&all_batches(&handle, &log), &kept);
    assert_eq!(epoch_starts(&handle, &log), [(1, 0), (5, 400)]);
    engine.shutdown().unwrap();
}

fn producer_batch(id: i64, sequence: i32) -> Bytes {
    let mut builder = coremq_engine::BatchBuilder::new(Compression::None).producer(id, 0, sequence);
    builder.push(Timestamp::now(), None, Some(b"value"), &[]);
    builder.build()
}

/// An idempotent producer's batches past the cut are forgotten, so their retries are stored
/// again (they are no longer in the log); the ones before it are still duplicates.
#[test]
fn truncation_forgets_the_producer_batches_it_removes() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("idempotent", 0);
    let (engine, handle) = start(dir.path(), 1);
    block_on(handle.create_log(&log, Some(common::small_segments()))).unwrap();
    for sequence in 0..4 {
        block_on(handle.append(&log, producer_batch(7, sequence))).unwrap();
    }
    assert_eq!(truncate(&handle, &log, 2), Offset(2));
    let kept = block_on(handle.append(&log, producer_batch(7, 1))).unwrap();
    assert_eq!(kept.base_offset, Offset(1), "still a duplicate");
    let again = block_on(handle.append(&log, producer_batch(7, 2))).unwrap();
    assert_eq!(again.base_offset, Offset(2), "stored again");
    engine.shutdown().unwrap();
}

/// A follower's log is closed to producers: an append admitted before the log was closed,
/// but not yet given its offsets, fails, as does a retry of a stored batch; the leader's
/// batches still go in; opened again (this broker leads again), producers append.
#[test]
fn a_log_closed_to_producers_refuses_even_appends_admitted_before() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("fenced", 0);
    let (engine, handle) = start(dir.path(), 1);
    block_on(handle.create_log(&log, Some(common::small_segments()))).unwrap();
    block_on(handle.append(&log, producer_batch(7, 0))).unwrap();
    let admitted = block_on(handle.with_log(&log, |log| async move {
        let limits = log.config().batch_limits();
        let batch = CheckedBatch::new(producer_batch(7, 1), limits)?;
        // Admitted (the future made, as a request's task is), not yet run.
        let admitted = log.append_checked(batch, Ack::Written);
        log.set_producer_appends(false);
        Ok(admitted.await)
    }))
    .unwrap();
    assert!(matches!(admitted, Err(Error::NotLeader)), "{admitted:?}");
    let retried = block_on(handle.append(&log, producer_batch(7, 0)));
    assert!(matches!(retried, Err(Error::NotLeader)), "{retried:?}");
    let mut leaders = producer_batch(8, 0).to_vec();
    coremq_engine::batch::set_base_offset(&mut leaders, Offset(1));
    assert_eq!(
        append_replica(&handle, &log, leaders.into()).unwrap(),
        Offset(1)
    );
    assert_eq!(block_on(handle.offsets(&log)).unwrap().log_end, Offset(2));
    block_on(handle.with_log(&log, |log| async move {
        log.set_producer_appends(true);
        Ok(())
    }))
    .unwrap();
    let appended = block_on(handle.append(&log, producer_batch(7, 1))).unwrap();
    assert_eq!(appended.base_offset, Offset(2));
    engine.shutdown().unwrap();
}

/// Below the log start (or its first segment), the log empties and starts again there, as a
/// follower does when the leader's log starts past its end.
#[test]
fn a_log_can_start_again_at_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = tp("restart", 0);
    {
        let (engine, handle) = start(dir.path(), 1);
        block_on(handle.create_log(&log, Some(common::small_segments()))).unwrap();
        assign_epoch(&handle, &log, 1).unwrap();
        append_n(&handle, &log, 0..100);
        block_on(handle.with_log(&log, |log| async move {
            log.truncate_fully_and_start_at(Offset(10_000)).await
        }))
        .unwrap();
        let offsets = block_on(handle.offsets(&log)).unwrap();
        assert_eq!(
            (offsets.log_start, offsets.log_end, offsets.committed),
            (Offset(10_000), Offset(10_000), Offset(10_000))
        );
        assert!(epoch_starts(&handle, &log).is_empty());
        let mut next = batch(5, 3, 10, 1, Compression::None).to_vec();
        coremq_engine::batch::set_base_offset(&mut next, Offset(10_000));
        coremq_engine::batch::set_partition_leader_epoch(&mut next, 3);
        append_replica(&handle, &log, Bytes::from(next)).unwrap();
        assert_eq!(truncate(&handle, &log, 0), Offset(0));
        assert_eq!(block_on(handle.offsets(&log)).unwrap().log_end, Offset(0));
        append_n(&handle, &log, 0..3);
        engine.shutdown().unwrap();
    }
    let (engine, handle) = start(dir.path(), 1);
    let offsets = block_on(handle.offsets(&log)).unwrap();
    assert_eq!(
        (offsets.log_start, offsets.log_end),
        (Offset(0), Offset(12))
    );
    assert_eq!(all_batches(&handle, &log).len(), 3);
    engine.shutdown().unwrap();
}
