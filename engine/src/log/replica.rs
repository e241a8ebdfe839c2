//! What replication needs of a log: leader epochs (assigned when this log's partition gets a
//! leader, stamped on every batch it then appends, answered for OffsetForLeaderEpoch),
//! appending the leader's batches as they are, and truncating what diverged from the leader
//! (Kafka's `truncateTo` and `truncateFullyAndStartAt`).
//!
//! A truncation stops appends and log-start moves, waits until everything appended is
//! written and flushed, then changes the files in an order a crash can interrupt anywhere:
//! the producer snapshot and the epoch checkpoint first (both only forget), then the
//! segments past the cut, highest first, made durable by a directory sync, then the cut
//! segment's tail. The cut segment is
//! recovered again as the active one, which rebuilds its indexes and what its batches say of
//! producers and epochs.

use std::rc::Rc;

use coremq_runtime::sync::Permit;

use crate::batch::CheckedBatch;
use crate::checkpoint;
use crate::epochs::LeaderEpochs;
use crate::error::{Error, Result};
use crate::metrics::add;
use crate::segment::{self, ActiveSegment};
use crate::types::Offset;

use super::appender::Origin;
use super::{Ack, AppendInfo, Log, PRODUCERS_FILE};

impl Log {
    /// The log's leader epochs, oldest first.
    pub fn leader_epochs(&self) -> LeaderEpochs {
        self.inner.borrow().epochs.clone()
    }

    /// Makes `epoch` the log's latest leader epoch, starting at the log end (Kafka's
    /// `makeLeader`): every batch appended from now on carries it. Stored before it returns.
    /// Assigning the latest epoch again changes nothing; an older one is refused.
    pub async fn assign_leader_epoch(&self, epoch: i32) -> Result<()> {
        let _gate = self
            .append_gate
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        self.check_writable()?;
        let mut epochs = {
            let inner = self.inner.borrow();
            match inner.epochs.latest() {
                Some(latest) if latest.epoch == epoch => return Ok(()),
                Some(latest) if latest.epoch > epoch => {
                    return Err(Error::StaleLeaderEpoch {
                        epoch,
                        latest: latest.epoch,
                    });
                }
                _ => inner.epochs.clone(),
            }
        };
        let log_end = self.inner.borrow().active.next_offset();
        if !epochs.assign(epoch, log_end) {
            return Err(Error::StaleLeaderEpoch {
                epoch,
                latest: epochs.latest().map_or(-1, |latest| latest.epoch),
            });
        }
        epochs.store(&self.storage, &self.dir).await?;
        self.inner.borrow_mut().epochs = epochs;
        Ok(())
    }

    /// Opens or closes the log to producers' appends (open by default). A follower's log is
    /// closed: from then on a producer's append that has not yet got its offsets fails with
    /// [`Error::NotLeader`], whenever it was admitted (Kafka appends to a leader under the
    /// partition's leader lock for the same reason). Replica appends are not affected.
    pub fn set_producer_appends(&self, open: bool) {
        self.producer_appends.set(open);
    }

    /// Where `epoch` ends in this log (OffsetForLeaderEpoch): the largest epoch at or below
    /// it and the first offset of the next one, or the log end for the latest; `None` when
    /// the log knows no such epoch.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, Offset)> {
        let inner = self.inner.borrow();
        inner
            .epochs
            .end_offset_for(epoch, inner.active.next_offset())
    }

    /// Appends a batch of the partition's leader as it is, keeping its offsets and leader
    /// epoch (Kafka's `appendAsFollower`); it must not start before the log end (gaps, which
    /// compaction leaves, are kept). Idempotent producers' state follows the batch without
    /// checking it: the leader did. Returns when `ack` is met.
    pub async fn append_replica(
        self: &Rc<Self>,
        batch: CheckedBatch,
        ack: Ack,
    ) -> Result<AppendInfo> {
        let result = self.append_inner(batch, ack, Origin::Replica).await;
        if result.is_err() {
            add(&self.metrics.append_errors, 1);
        }
        result
    }

    /// Removes every batch that holds `offset` or a later one, and returns the new log end
    /// (at or below `offset`; below it when a batch straddles it). At or past the log end it
    /// removes only the epochs that start there (begun, never written in). Below the log
    /// start, or at or below the first segment's start, the log empties and starts at
    /// `offset` (as Kafka's). The committed watermark follows the log end down.
    pub async fn truncate_to(&self, offset: Offset) -> Result<Offset> {
        let _quiet = self.quiesce().await?;
        let (log_start, log_end, first_base, active_base) = {
            let inner = self.inner.borrow();
            let active_base = inner.active.base_offset();
            let first_base = inner.sealed.keys().next().copied().unwrap_or(active_base);
            (
                inner.log_start,
                inner.active.next_offset(),
                first_base,
                active_base,
            )
        };
        if offset >= log_end {
            // Nothing to cut but an epoch this log started as leader without writing in it:
            // it must go before a newer leader's batches of an older epoch come (Kafka's).
            let mut epochs = self.inner.borrow().epochs.clone();
            if epochs.truncate_from_end(log_end) {
                epochs.store(&self.storage, &self.dir).await?;
                self.inner.borrow_mut().epochs = epochs;
            }
            return Ok(log_end);
        }
        if offset < log_start || offset <= first_base {
            self.restart_at(offset).await?;
            return Ok(offset);
        }
        // The segment that keeps the part below `offset`: the last one starting before it.
        let cut_base = if active_base < offset {
            active_base
        } else {
            let inner = self.inner.borrow();
            let (&base, _) = inner
                .sealed
                .range(..offset)
                .next_back()
                .expect("a segment starts below an offset above the first segment's start");
            base
        };
        let segments_before = self.inner.borrow().sealed.len();
        self.forget_producers_from(cut_base).await?;
        let mut epochs = self.inner.borrow().epochs.clone();
        if epochs.truncate_from_end(offset) {
            epochs.store(&self.storage, &self.dir).await?;
            self.inner.borrow_mut().epochs = epochs;
        }
        if active_base > cut_base {
            self.remove_segment_files(active_base).await?;
            add(&self.metrics.segments_deleted, 1);
        }
        self.delete_sealed_from(Offset(cut_base.0 + 1)).await?;
        // The cut segment is the active one again, its tail cut before `offset`.
        if self.inner.borrow_mut().sealed.remove(&cut_base).is_some() {
            self.storage
                .remove_files(vec![
                    segment::offset_index_path(&self.dir, cut_base),
                    segment::time_index_path(&self.dir, cut_base),
                ])
                .await?;
        }
        // The removals are durable before the cut is: a crash must not leave the later
        // segments after a shortened one (a hole in the offsets).
        self.storage.sync_dir(&self.dir).await?;
        let interval = self.inner.borrow().config.index_interval_bytes;
        let (active, recovered) = ActiveSegment::recover(
            &self.dir,
            cut_base,
            interval,
            Some(offset),
            self.storage.clone(),
        )
        .await?;
        let new_end = active.next_offset();
        {
            let mut inner = self.inner.borrow_mut();
            inner.active = active;
            for batch in recovered.producer_batches {
                inner.producers.record(batch);
            }
            let removed = (segments_before - inner.sealed.len()) as u64;
            self.metrics
                .segments
                .set(self.metrics.segments.get() - removed);
            self.reset_watermarks(&mut inner, new_end);
        }
        self.progress.notify_all();
        log::info!("{}: truncated to {new_end}", self.topic_partition);
        Ok(new_end)
    }

    /// Empties the log and starts it again at `offset` (Kafka's `truncateFullyAndStartAt`):
    /// a follower whose log ends below the leader's log start, or diverges below it.
    pub async fn truncate_fully_and_start_at(&self, offset: Offset) -> Result<()> {
        let _quiet = self.quiesce().await?;
        self.restart_at(offset).await
    }

    /// Stops appends and log-start moves and waits until everything appended is written and
    /// flushed, as a truncation needs; the log stays so while the returned permits live.
    async fn quiesce(&self) -> Result<(Permit<'_>, Permit<'_>)> {
        let appends = self
            .append_gate
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let moves = self
            .log_start_gate
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        self.wait_written().await?;
        while self.syncer_active.get() {
            self.progress.notified().await;
        }
        self.flush().await?;
        Ok((appends, moves))
    }

    /// Removes every segment (highest first), then starts an empty one at `offset` with the
    /// log start there. The caller holds both gates and the log is quiet.
    async fn restart_at(&self, offset: Offset) -> Result<()> {
        self.storage
            .remove_files(vec![self.dir.join(PRODUCERS_FILE)])
            .await?;
        LeaderEpochs::default()
            .store(&self.storage, &self.dir)
            .await?;
        let (active_base, segments_before) = {
            let inner = self.inner.borrow();
            (inner.active.base_offset(), inner.sealed.len())
        };
        self.remove_segment_files(active_base).await?;
        self.delete_sealed_from(Offset(0)).await?;
        self.storage.sync_dir(&self.dir).await?;
        checkpoint::store(&self.storage, &self.dir, offset).await?;
        let interval = self.inner.borrow().config.index_interval_bytes;
        let active =
            ActiveSegment::create(&self.dir, offset, interval, self.storage.clone()).await?;
        {
            let mut inner = self.inner.borrow_mut();
            inner.active = active;
            inner.epochs = LeaderEpochs::default();
            inner.producers = Default::default();
            inner.log_start = offset;
            inner.committed = offset;
            self.metrics
                .segments
                .set(self.metrics.segments.get() - segments_before as u64);
            add(&self.metrics.segments_deleted, segments_before as u64 + 1);
            self.reset_watermarks(&mut inner, offset);
        }
        self.progress.notify_all();
        log::info!(
            "{}: emptied, starting again at {offset}",
            self.topic_partition
        );
        Ok(())
    }

    /// Forgets idempotent producers' batches at or after `offset`, in memory and in the
    /// snapshot (which then covers up to `offset`; a reopen replays the active segment from
    /// there).
    async fn forget_producers_from(&self, offset: Offset) -> Result<()> {
        let bytes = {
            let mut inner = self.inner.borrow_mut();
            inner.producers.truncate_from(offset);
            inner.producers.encode(offset)
        };
        self.storage
            .write_atomically(&self.dir, PRODUCERS_FILE, bytes)
            .await
    }

    /// Deletes the sealed segments starting at `first` or later, highest first, so a crash
    /// leaves a log without holes.
    async fn delete_sealed_from(&self, first: Offset) -> Result<()> {
        loop {
            let segment = {
                let mut inner = self.inner.borrow_mut();
                match inner.sealed.last_key_value() {
                    Some((&base, _)) if base >= first => {
                        inner.sealed.remove(&base).expect("last key exists")
                    }
                    _ => return Ok(()),
                }
            };
            add(&self.metrics.segments_deleted, 1);
            segment.delete(&self.dir).await?;
        }
    }

    /// Removes the files of the segment starting at `base` (its log, and indexes a sealed
    /// segment had).
    async fn remove_segment_files(&self, base: Offset) -> Result<()> {
        self.storage
            .remove_files(vec![
                segment::log_path(&self.dir, base),
                segment::offset_index_path(&self.dir, base),
                segment::time_index_path(&self.dir, base),
            ])
            .await
    }

    /// After a truncation to `end`: every watermark at `end` at most, nothing pending, no
    /// cached batch or read stream past it.
    fn reset_watermarks(&self, inner: &mut super::Inner, end: Offset) {
        inner.written = end;
        inner.flushed = end;
        inner.committed = inner.committed.min(end);
        inner.pending_bytes = 0;
        inner.log_start = inner.log_start.min(end);
        inner.cache.truncate_from(end);
        self.streams.borrow_mut().clear();
        inner.assert_watermarks();
    }
}
