//! The write path: appends (checked, given offsets, queued), the writer task that hands
//! queued batches to the file in rounds, the syncer that fdatasyncs them for `always` (group
//! commit), the interval flush timer, failed-write rollback, and rolling the active segment.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batch::{self, BatchHeader, CheckedBatch, TimestampType};
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::file::{BLOCK_BYTES, SegmentFile};
use crate::metrics::add;
use crate::producers::{Check, ProducerBatch};
use crate::segment::{self, ActiveSegment};
use crate::types::{Offset, Timestamp};

use super::{Ack, AppendInfo, Log, PRODUCERS_FILE};

/// Where an appended batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A producer, through this log as leader: the log assigns offsets, stamps its latest
    /// leader epoch and checks idempotent sequences.
    Producer,
    /// The partition's leader, to this log as follower: the batch keeps its offsets and
    /// epoch, and its epoch's start is recorded.
    Replica,
}

/// Most bytes one write round hands to the file.
const WRITE_BYTES_MAX: usize = 4 << 20;
/// Write rounds in flight per log.
const WRITES_IN_FLIGHT: usize = 4;

impl Log {
    /// Appends one RecordBatch v2 from a producer. The engine assigns its offsets (and its
    /// timestamp under LogAppendTime) and returns once the durability policy is met.
    pub async fn append(self: &Rc<Self>, batch: Bytes) -> Result<AppendInfo> {
        self.append_acked(batch, Ack::Policy).await
    }

    /// [`Log::append`], returning when `ack` is met. `Ack::Written` answers once the batch
    /// is written to the file even under `Always`; the fdatasync still follows, in the
    /// background. This is Kafka's acks=1 on a leader.
    pub async fn append_acked(self: &Rc<Self>, batch: Bytes, ack: Ack) -> Result<AppendInfo> {
        let limits = self.inner.borrow().config.batch_limits();
        match CheckedBatch::new(batch, limits) {
            Ok(batch) => self.append_checked(batch, ack).await,
            Err(error) => {
                add(&self.metrics.append_errors, 1);
                Err(error)
            }
        }
    }

    /// [`Log::append_acked`] for a batch already checked, as a broker does with every
    /// batch of a request before it appends any.
    pub async fn append_checked(
        self: &Rc<Self>,
        batch: CheckedBatch,
        ack: Ack,
    ) -> Result<AppendInfo> {
        let result = self.append_inner(batch, ack, Origin::Producer).await;
        if result.is_err() {
            add(&self.metrics.append_errors, 1);
        }
        result
    }

    pub(super) async fn append_inner(
        self: &Rc<Self>,
        batch: CheckedBatch,
        ack: Ack,
        origin: Origin,
    ) -> Result<AppendInfo> {
        let (batch_bytes_max, pending_bytes_max) = {
            let inner = self.inner.borrow();
            (inner.config.batch_bytes_max, inner.config.pending_bytes_max)
        };
        let CheckedBatch {
            header,
            bytes: mut batch,
            ..
        } = batch;
        if batch.len() > batch_bytes_max {
            return Err(Error::BatchTooLarge {
                size: batch.len(),
                max: batch_bytes_max,
            });
        }
        let size = batch.len();

        let gate = self
            .append_gate
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        loop {
            self.check_writable()?;
            if self.inner.borrow().pending_bytes + size <= pending_bytes_max {
                break;
            }
            self.progress.notified().await;
        }
        let last_offset = match origin {
            Origin::Producer => {
                let next = self.inner.borrow().active.next_offset();
                Offset(next.0 + u64::from(header.last_offset_delta))
            }
            Origin::Replica => header.last_offset(),
        };
        if self.needs_roll(size as u64, last_offset) {
            self.roll().await?;
        }
        match origin {
            Origin::Producer => {
                if !self.producer_appends.get() {
                    return Err(Error::NotLeader);
                }
                let duplicate = {
                    let inner = self.inner.borrow();
                    match inner.producers.check(&header)? {
                        Check::Duplicate(stored) => {
                            Some((stored, inner.rollbacks, inner.config.durability))
                        }
                        Check::Append => None,
                    }
                };
                if let Some((stored, rollbacks, durability)) = duplicate {
                    // A retry of a stored batch: the first answer again, once that batch is
                    // stored.
                    drop(gate);
                    add(&self.metrics.duplicate_batches, 1);
                    self.wait_stored(stored.last_offset, rollbacks, ack.flushes(durability))
                        .await?;
                    return Ok(AppendInfo {
                        base_offset: stored.base_offset,
                        last_offset: stored.last_offset,
                        log_append_time: None,
                    });
                }
            }
            Origin::Replica => {
                let log_end = self.inner.borrow().active.next_offset();
                if header.base_offset < log_end {
                    return Err(Error::ReplicaOffsetBehind {
                        base_offset: header.base_offset,
                        log_end,
                    });
                }
                // A new epoch's start is stored before its first batch is written; a batch of
                // the latest epoch (nearly every one) copies nothing.
                let epoch = header.partition_leader_epoch;
                let starts_epoch = epoch >= 0
                    && (self.inner.borrow().epochs.latest())
                        .is_none_or(|latest| epoch > latest.epoch);
                if starts_epoch {
                    let mut epochs = self.inner.borrow().epochs.clone();
                    if epochs.assign(epoch, header.base_offset) {
                        epochs.store(&self.storage, &self.dir).await?;
                        self.inner.borrow_mut().epochs = epochs;
                    }
                }
            }
        }
        let (info, rollbacks, durability) = {
            let mut inner = self.inner.borrow_mut();
            let log_append_time = match origin {
                Origin::Producer => {
                    let base_offset = inner.active.next_offset();
                    batch::set_base_offset(&mut batch, base_offset);
                    if let Some(latest) = inner.epochs.latest() {
                        batch::set_partition_leader_epoch(&mut batch, latest.epoch);
                    }
                    (inner.config.timestamp_type == TimestampType::LogAppendTime).then(|| {
                        let now = Timestamp::now();
                        batch::set_log_append_time(&mut batch, now);
                        now
                    })
                }
                Origin::Replica => None,
            };
            let header = BatchHeader::parse(&batch).expect("validated before");
            let batch = batch.freeze();
            inner.active.on_append(&header);
            if let Some(producer_batch) = ProducerBatch::of(&header) {
                inner.producers.record(producer_batch);
            }
            inner
                .cache
                .push(header.base_offset, header.next_offset(), batch.clone());
            self.cache.appended(self, header.next_offset(), batch.len());
            inner.pending.push_back(batch);
            inner.pending_bytes += size;
            let info = AppendInfo {
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
                log_append_time,
            };
            inner.assert_watermarks();
            (info, inner.rollbacks, inner.config.durability)
        };
        drop(gate);
        match origin {
            Origin::Producer => {
                add(&self.metrics.bytes_appended, size as u64);
                self.bytes_appended
                    .set(self.bytes_appended.get() + size as u64);
                let records = u64::from(header.records_count);
                self.records_appended
                    .set(self.records_appended.get() + records);
                add(
                    &self.metrics.records_appended,
                    u64::from(header.records_count),
                );
                add(&self.metrics.batches_appended, 1);
            }
            Origin::Replica => add(&self.metrics.replica_bytes_appended, size as u64),
        }
        self.appended.notify_all();
        self.start_writer();
        self.wait_stored(info.last_offset, rollbacks, ack.flushes(durability))
            .await?;
        Ok(info)
    }

    /// Waits until `last_offset` is written, and flushed when `flushed` is set.
    async fn wait_stored(&self, last_offset: Offset, rollbacks: u64, flushed: bool) -> Result<()> {
        loop {
            {
                let inner = self.inner.borrow();
                let stored = if flushed {
                    inner.flushed
                } else {
                    inner.written
                };
                if stored > last_offset {
                    return Ok(());
                }
                if let Some(cause) = &inner.fenced {
                    return Err(Error::Fenced {
                        path: self.dir.clone(),
                        cause: cause.clone(),
                    });
                }
                if inner.rollbacks != rollbacks && inner.written <= last_offset {
                    let reason = inner.last_write_error.clone().unwrap_or_default();
                    return Err(if inner.last_write_disk_full {
                        Error::DiskFull {
                            path: inner.active.file().path().to_path_buf(),
                        }
                    } else {
                        Error::Io {
                            path: inner.active.file().path().to_path_buf(),
                            op: "write",
                            source: std::io::Error::other(reason),
                        }
                    });
                }
            }
            self.progress.notified().await;
        }
    }

    fn needs_roll(&self, batch_bytes: u64, last_offset: Offset) -> bool {
        let inner = self.inner.borrow();
        let active = &inner.active;
        !active.is_empty()
            && (active.appended_bytes() + batch_bytes > inner.config.segment_bytes
                || active.created().elapsed() >= Duration::from_millis(inner.config.segment_ms)
                || !active.fits_offsets(last_offset))
    }

    fn start_writer(self: &Rc<Self>) {
        if self.writer_active.replace(true) {
            return;
        }
        let log = self.clone();
        coremq_runtime::spawn_local(async move {
            log.write_rounds().await;
            log.writer_active.set(false);
            log.progress.notify_all();
        })
        .detach();
    }

    /// Syncs the active segment until everything written is flushed. Each fdatasync covers
    /// what was written before it started; writes go on meanwhile, and what they complete
    /// shares the next one (group commit).
    fn start_syncer(self: &Rc<Self>) {
        if self.syncer_active.replace(true) {
            return;
        }
        let log = self.clone();
        coremq_runtime::spawn_local(async move {
            loop {
                let (file, written) = {
                    let inner = log.inner.borrow();
                    if inner.written <= inner.flushed || inner.fenced.is_some() {
                        break;
                    }
                    (inner.active.file().clone(), inner.written)
                };
                log.sync_file(&file, written).await;
                log.progress.notify_all();
            }
            log.syncer_active.set(false);
            log.progress.notify_all();
        })
        .detach();
    }

    /// Hands pending batches to the file in rounds, up to `WRITES_IN_FLIGHT` at once, and
    /// acknowledges them in order. Under `Always`, completed rounds start the syncer, which
    /// does not hold up the next round.
    async fn write_rounds(self: &Rc<Self>) {
        let mut in_flight: VecDeque<Round> = VecDeque::new();
        loop {
            while in_flight.len() < WRITES_IN_FLIGHT {
                let previous = in_flight.back().map(|round| round.done.clone());
                let Some(round) = self.submit_round(previous) else {
                    break;
                };
                in_flight.push_back(round);
            }
            let slot_free = in_flight.len() < WRITES_IN_FLIGHT;
            let Some(front) = in_flight.front_mut() else {
                return;
            };
            // Wait for the oldest round, or for new appends while a write slot is free.
            let completed = if slot_free {
                let appended = self.appended.notified();
                futures_lite::future::or(async { Some((&mut front.task).await) }, async {
                    appended.await;
                    None
                })
                .await
            } else {
                Some((&mut front.task).await)
            };
            let Some(mut result) = completed else {
                continue;
            };
            let mut last = in_flight.pop_front().expect("front exists").end;
            // Complete every round that is already done, so one fdatasync covers them all.
            loop {
                if let Err(error) = result {
                    for round in in_flight.drain(..) {
                        let _ = round.task.await;
                    }
                    self.fail_write(&last.file, error).await;
                    break;
                }
                self.complete_round(last);
                match in_flight.front() {
                    Some(next) if next.done.get() => {
                        let next = in_flight.pop_front().expect("front exists");
                        result = next.task.await;
                        last = next.end;
                    }
                    _ => {
                        if self.inner.borrow().config.durability == Durability::Always {
                            self.start_syncer();
                        }
                        break;
                    }
                }
            }
            self.progress.notify_all();
        }
    }

    fn complete_round(&self, end: RoundEnd) {
        let mut inner = self.inner.borrow_mut();
        inner.active.on_written(end.bytes, end.tail);
        assert!(
            end.offset >= inner.written,
            "rounds complete in order: {} after {}",
            end.offset,
            inner.written
        );
        inner.written = end.offset;
        inner.assert_watermarks();
        inner.pending_bytes -= end.taken_bytes;
        drop(inner);
        // Written batches may now leave memory, this log's or older ones of its neighbours.
        self.cache.enforce();
    }

    /// Starts writing the pending batches, if any. The first block of the write is shared
    /// with the previous round when that round ended mid-block: it is written only after the
    /// previous round completes, so the newer contents of that block land last.
    fn submit_round(self: &Rc<Self>, previous_done: Option<Rc<Cell<bool>>>) -> Option<Round> {
        let mut inner = self.inner.borrow_mut();
        if inner.pending.is_empty() || inner.fenced.is_some() {
            return None;
        }
        let (position, tail) = inner.active.write_start();
        let shares_block =
            !tail.is_empty() && previous_done.as_ref().is_some_and(|done| !done.get());
        let mut parts = vec![Bytes::copy_from_slice(tail)];
        let mut taken_bytes = 0;
        while let Some(next) = inner.pending.front() {
            if taken_bytes > 0 && taken_bytes + next.len() > WRITE_BYTES_MAX {
                break;
            }
            taken_bytes += next.len();
            parts.push(inner.pending.pop_front().expect("front exists"));
        }
        let last = BatchHeader::parse(parts.last().expect("one batch")).expect("validated");
        let end_bytes = inner.active.submitted_bytes() + taken_bytes as u64;
        let tail = inner.active.on_submitted(end_bytes, &parts);
        let file = inner.active.file().clone();
        let end = RoundEnd {
            file: file.clone(),
            bytes: end_bytes,
            offset: last.next_offset(),
            taken_bytes,
            tail,
        };
        drop(inner);
        let done = Rc::new(Cell::new(false));
        let log = self.clone();
        let round_done = done.clone();
        let task = coremq_runtime::spawn_local(async move {
            let result = if shares_block {
                let block = BLOCK_BYTES as usize;
                let (first, rest) = (
                    slice_parts(&parts, 0, block),
                    slice_parts(&parts, block, usize::MAX),
                );
                let rest_write = async {
                    if rest.is_empty() {
                        Ok(())
                    } else {
                        write_slices(&file, position + BLOCK_BYTES, &rest).await
                    }
                };
                let first_write = async {
                    let previous = previous_done.expect("shares_block implies a previous round");
                    while !previous.get() {
                        log.progress.notified().await;
                    }
                    write_slices(&file, position, &first).await
                };
                let (first, rest) = futures_lite::future::zip(first_write, rest_write).await;
                first.and(rest)
            } else {
                write_slices(&file, position, &parts).await
            };
            round_done.set(true);
            log.progress.notify_all();
            result
        });
        Some(Round { task, end, done })
    }

    /// A failed write drops every unwritten append (each gets the error) and leaves the log
    /// exactly as it was before them. A full disk is not sticky; anything else fences.
    async fn fail_write(&self, file: &SegmentFile, error: Error) {
        let written_bytes = {
            let mut inner = self.inner.borrow_mut();
            let written = inner.written;
            inner.pending.clear();
            inner.pending_bytes = 0;
            inner.active.roll_back_to_written(written);
            inner.assert_watermarks();
            inner.cache.truncate_from(written);
            inner.producers.truncate_from(written);
            inner.rollbacks += 1;
            inner.last_write_disk_full = matches!(error, Error::DiskFull { .. });
            inner.last_write_error = Some(error.to_string());
            if !inner.last_write_disk_full {
                inner.fenced = Some(error.to_string());
            }
            inner.active.written_bytes()
        };
        log::warn!("{}: append failed: {error}", self.topic_partition);
        // Cut anything the failed write left past the last good byte so a crash cannot
        // resurrect it; if this fails too, recovery still stops at the torn bytes.
        let _ = file.truncate(written_bytes).await;
        self.progress.notify_all();
    }

    /// fdatasync `file`; on success everything below `written` is flushed, on failure the
    /// log is fenced: the page cache state after a failed fsync cannot be trusted.
    async fn sync_file(&self, file: &SegmentFile, written: Offset) -> bool {
        let started = Instant::now();
        let result = file.fdatasync().await;
        self.metrics.record_fsync(started.elapsed());
        let mut inner = self.inner.borrow_mut();
        match result {
            Ok(()) => {
                inner.flushed = inner.flushed.max(written);
                inner.assert_watermarks();
                true
            }
            Err(error) => {
                log::error!(
                    "{}: fdatasync failed, fencing the log: {error}",
                    self.topic_partition
                );
                inner.fenced = Some(error.to_string());
                false
            }
        }
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<()> {
        let (file, written, flushed) = {
            let inner = self.inner.borrow();
            (inner.active.file().clone(), inner.written, inner.flushed)
        };
        if written > flushed {
            self.sync_file(&file, written).await;
        }
        self.progress.notify_all();
        self.check_writable()
    }

    pub(super) fn start_flush_timer(log: &Rc<Log>) {
        let weak = Rc::downgrade(log);
        coremq_runtime::spawn_local(async move {
            loop {
                let interval = match weak.upgrade() {
                    Some(log) if !log.closed.get() => match log.inner.borrow().config.durability {
                        Durability::IntervalMs(ms) => Some(ms),
                        _ => None,
                    },
                    _ => return,
                };
                coremq_runtime::sleep(Duration::from_millis(interval.unwrap_or(1000))).await;
                if interval.is_some()
                    && let Some(log) = weak.upgrade()
                {
                    let _ = log.flush().await;
                }
            }
        })
        .detach();
    }

    /// Writes the idempotent producer state, which covers every batch before `up_to`, so a
    /// restart need not read the segments sealed by now. Skipped while there is none.
    async fn snapshot_producers(&self, up_to: Offset) -> Result<()> {
        let bytes = {
            let mut inner = self.inner.borrow_mut();
            inner.producers.expire(Timestamp::now());
            if inner.producers.is_empty() && !self.dir.join(PRODUCERS_FILE).exists() {
                return Ok(());
            }
            inner.producers.encode(up_to)
        };
        self.storage
            .write_atomically(&self.dir, PRODUCERS_FILE, bytes)
            .await
    }

    /// Waits until every appended batch is written (an error if the log refuses writes).
    pub(super) async fn wait_written(&self) -> Result<()> {
        loop {
            self.check_writable()?;
            let idle = self.inner.borrow().pending.is_empty() && !self.writer_active.get();
            if idle {
                return Ok(());
            }
            self.progress.notified().await;
        }
    }

    /// Seals the active segment and starts a new one at the log end. The caller holds the
    /// append gate, so no append is in between; the segment's writes are drained first.
    pub(super) async fn roll(&self) -> Result<()> {
        self.wait_written().await?;
        let (file, size, next_offset, interval) = {
            let inner = self.inner.borrow();
            let active = &inner.active;
            (
                active.file().clone(),
                active.written_bytes(),
                active.next_offset(),
                inner.config.index_interval_bytes,
            )
        };
        file.truncate(size).await?;
        if !self.sync_file(&file, next_offset).await {
            self.check_writable()?;
        }
        self.snapshot_producers(next_offset).await?;
        let (base, offsets, times) = {
            let mut inner = self.inner.borrow_mut();
            let (offsets, times) = inner.active.index_files();
            (inner.active.base_offset(), offsets, times)
        };
        let fence = |error: Error| {
            self.inner.borrow_mut().fenced =
                Some(format!("sealing segment {base} failed: {error}"));
            error
        };
        segment::write_indexes(&self.storage, &self.dir, base, offsets, times)
            .await
            .map_err(fence)?;
        let new =
            ActiveSegment::create(&self.dir, next_offset, interval, self.storage.clone()).await?;
        let old = {
            let mut inner = self.inner.borrow_mut();
            let old = std::mem::replace(&mut inner.active, new);
            inner.assert_watermarks();
            old
        };
        let sealed = old.seal(&self.dir).map_err(fence)?;
        self.inner.borrow_mut().sealed.insert(base, sealed);
        add(&self.metrics.segments, 1);
        Ok(())
    }
}

/// A write in flight.
struct Round {
    task: coremq_runtime::Task<Result<()>>,
    end: RoundEnd,
    /// Set when the round's writes have completed (successfully or not).
    done: Rc<Cell<bool>>,
}

/// Where a write round leaves the segment once it completes.
struct RoundEnd {
    file: SegmentFile,
    bytes: u64,
    offset: Offset,
    taken_bytes: usize,
    tail: Vec<u8>,
}

/// The bytes `from..to` of the concatenation of `parts`, as cheap `Bytes` slices.
fn slice_parts(parts: &[Bytes], from: usize, to: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    for part in parts {
        let (start, end) = (at, at + part.len());
        at = end;
        let (low, high) = (from.max(start), to.min(end));
        if low < high {
            out.push(part.slice(low - start..high - start));
        }
    }
    out
}

async fn write_slices(file: &SegmentFile, position: u64, parts: &[Bytes]) -> Result<()> {
    let slices: Vec<&[u8]> = parts.iter().map(|part| &part[..]).collect();
    file.write_parts(position, &slices).await
}
