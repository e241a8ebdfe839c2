//! What a log's cleanup does to its segments: retention by size and age and DeleteRecords
//! move the log start (checkpointed first) and delete the segments wholly below it; the
//! compactor lists sealed segments and swaps in their rewritten copies.

use std::path::PathBuf;
use std::rc::Rc;

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::metrics::add;
use crate::retention::{self, SegmentSummary};
use crate::segment::{self, SealedSegment};
use crate::types::{Offset, Timestamp};

use super::Log;

impl Log {
    /// Moves the log start to `offset` (Kafka DeleteRecords) and deletes the segments wholly
    /// below it. Returns the new log start.
    pub async fn delete_records(&self, offset: Offset) -> Result<Offset> {
        let (log_start, high_watermark) = {
            let inner = self.inner.borrow();
            (inner.log_start, inner.written)
        };
        if offset > high_watermark {
            return Err(Error::OffsetOutOfRange {
                requested: offset,
                log_start,
                log_end: high_watermark,
            });
        }
        self.advance_log_start(offset).await
    }

    /// Moves the log start forward to `offset` (checkpointed before any file goes), deletes
    /// the sealed segments wholly below it, and follows the first remaining segment when that
    /// starts later (compaction can leave segments empty), as a restart would. Returns the
    /// new log start.
    async fn advance_log_start(&self, offset: Offset) -> Result<Offset> {
        // One move at a time, so the checkpoint never goes back to an older move's start.
        let _moving = self
            .log_start_gate
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let new_start = {
            let inner = self.inner.borrow();
            if offset <= inner.log_start {
                return Ok(inner.log_start);
            }
            // Segments ending at or before the start go; the start then moves up to the first
            // kept segment, which may in turn let an emptied segment go.
            let mut start = offset;
            loop {
                let first_kept = inner
                    .sealed
                    .values()
                    .find(|segment| segment.next_offset() > start)
                    .map_or(inner.active.base_offset(), |segment| segment.base_offset());
                if first_kept <= start {
                    break start;
                }
                start = first_kept;
            }
        };
        checkpoint::store(&self.storage, &self.dir, new_start).await?;
        {
            let mut inner = self.inner.borrow_mut();
            inner.log_start = new_start;
            // In memory only: the next store of the epochs, or the next open, keeps it.
            inner.epochs.truncate_from_start(new_start);
            inner.assert_watermarks();
        }
        self.delete_segments_below(new_start).await?;
        Ok(new_start)
    }

    async fn delete_segments_below(&self, offset: Offset) -> Result<()> {
        loop {
            let segment = {
                let mut inner = self.inner.borrow_mut();
                match inner.sealed.first_key_value() {
                    Some((&base, segment)) if segment.next_offset() <= offset => {
                        inner.sealed.remove(&base).expect("first key exists")
                    }
                    _ => return Ok(()),
                }
            };
            self.metrics.segments.set(self.metrics.segments.get() - 1);
            add(&self.metrics.segments_deleted, 1);
            segment.delete(&self.dir).await?;
        }
    }

    /// Applies retention by size and age (cleanup.policy delete): rolls an expired active
    /// segment, deletes the oldest sealed segments past the limits, moves the log start.
    pub async fn enforce_retention(self: &Rc<Self>, now: Timestamp) -> Result<usize> {
        let (config, active_expired) = {
            let inner = self.inner.borrow();
            let expired = inner.config.retention_ms.is_some_and(|ms| {
                !inner.active.is_empty()
                    && inner
                        .active
                        .max_timestamp()
                        .is_some_and(|max| max.0 < now.0 - ms as i64)
            });
            (inner.config.clone(), expired)
        };
        if !config.cleanup_policy.deletes() {
            return Ok(0);
        }
        if active_expired {
            let gate = self
                .append_gate
                .acquire_permit(1)
                .await
                .map_err(|_| Error::ShuttingDown)?;
            if !self.inner.borrow().active.is_empty() {
                self.roll().await?;
            }
            drop(gate);
        }
        let (count, next_base) = {
            let inner = self.inner.borrow();
            let summaries: Vec<SegmentSummary> = inner
                .sealed
                .values()
                .map(|segment| SegmentSummary {
                    next_offset: segment.next_offset(),
                    size: segment.size(),
                    max_timestamp: segment.max_timestamp(),
                })
                .collect();
            let count = retention::segments_to_delete(
                &summaries,
                inner.active.appended_bytes(),
                &config,
                now,
                inner.log_start,
            );
            let next_base = inner.sealed.keys().nth(count).copied();
            (count, next_base.unwrap_or(inner.active.base_offset()))
        };
        if count > 0 {
            self.advance_log_start(next_base).await?;
        }
        Ok(count)
    }

    /// Sealed segments for the compactor: base offset, end and file.
    pub(crate) fn sealed_segments(&self) -> Vec<(Offset, Offset, PathBuf)> {
        let inner = self.inner.borrow();
        inner
            .sealed
            .values()
            .map(|segment| {
                (
                    segment.base_offset(),
                    segment.next_offset(),
                    segment::log_path(&self.dir, segment.base_offset()),
                )
            })
            .collect()
    }

    /// Swaps in a compacted segment if the original is still there; false if retention
    /// deleted it meanwhile.
    pub(crate) fn replace_sealed(&self, segment: SealedSegment) -> bool {
        let mut inner = self.inner.borrow_mut();
        let end = segment.next_offset();
        match inner.sealed.get_mut(&segment.base_offset()) {
            Some(slot) => {
                *slot = segment;
                inner.cache.drop_through(end);
                true
            }
            None => false,
        }
    }
}
