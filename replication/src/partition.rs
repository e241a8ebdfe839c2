//! A partition as the front ends see it: append with a [`Consistency`], read with an
//! [`Isolation`]. Where this broker leads it, `Durable` appends wait for the in-sync
//! replicas (the high watermark) and reads with [`Isolation::Committed`] stop at the high
//! watermark; followers fetch with [`Partition::replica_read`]. Appends are refused
//! ([`Error::NotLeader`]) where this broker does not lead the partition.

use std::rc::Rc;
use std::time::Duration;

use coremq_engine::batch::CheckedBatch;
use coremq_engine::log::Log;
use coremq_engine::{
    Ack, AppendInfo, Error, Isolation, LogConfig, LogOffsets, Offset, ReadBatches, Result,
    Timestamp,
};

use crate::leader::BrokerId;
use crate::replica::{Leading, Replicas};

/// How sure an append must be before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Written to the leader's log (Kafka's acks=1 and acks=0): the log's fsync follows in
    /// the background under the `always` policy.
    Leader,
    /// The topic's durability policy met (Kafka's acks=all): fsynced under `always`, and
    /// on a replicated partition the in-sync replicas hold it (the high watermark passed
    /// it) within `timeout`, else [`Error::TimedOut`] (Kafka's produce `timeout_ms`).
    Durable { timeout: Duration },
}

impl Consistency {
    fn ack(self) -> Ack {
        match self {
            Consistency::Leader => Ack::Written,
            Consistency::Durable { .. } => Ack::Policy,
        }
    }
}

/// One partition, on the shard that owns it.
#[derive(Clone)]
pub struct Partition {
    log: Rc<Log>,
    /// Its leader role, where this broker leads it.
    leading: Option<Rc<Leading>>,
}

impl Partition {
    pub(crate) fn new(log: Rc<Log>) -> Partition {
        let leading =
            Replicas::current().and_then(|replicas| replicas.leader(log.topic_partition()));
        Partition { log, leading }
    }

    /// Whether this broker leads the partition (it has a leader epoch here and a leader
    /// role).
    pub fn is_leader(&self) -> bool {
        self.leading.is_some()
    }

    /// The partition's log settings (batch limits, cleanup policy, durability).
    pub fn config(&self) -> LogConfig {
        self.log.config()
    }

    /// Appends one checked batch; answers once `consistency` holds.
    pub async fn append(
        &self,
        batch: CheckedBatch,
        consistency: Consistency,
    ) -> Result<AppendInfo> {
        self.before_append(consistency)?;
        let info = self.log.append_checked(batch, consistency.ack()).await?;
        self.after_append(info, consistency).await
    }

    /// Checks and appends one batch as it came (see [`Partition::append`]).
    pub(crate) async fn append_bytes(
        &self,
        batch: bytes::Bytes,
        consistency: Consistency,
    ) -> Result<AppendInfo> {
        self.before_append(consistency)?;
        let info = self.log.append_acked(batch, consistency.ack()).await?;
        self.after_append(info, consistency).await
    }

    /// Refuses an append unless this broker leads the partition: the caller's check of the
    /// metadata may be older or newer than the role on this shard. (The log itself refuses
    /// appends that were admitted here but get their offsets after the role has gone.)
    fn before_append(&self, consistency: Consistency) -> Result<()> {
        match &self.leading {
            None => Err(Error::NotLeader),
            Some(leading) if matches!(consistency, Consistency::Durable { .. }) => {
                leading.check_min_insync()
            }
            Some(_) => Ok(()),
        }
    }

    async fn after_append(&self, info: AppendInfo, consistency: Consistency) -> Result<AppendInfo> {
        if let Some(leading) = &self.leading {
            // Written up to the batch's end: the append was answered.
            leading.appended(Offset(info.last_offset.0 + 1));
            if let Consistency::Durable { timeout } = consistency {
                leading.await_commit(info.last_offset, timeout).await?;
            }
        }
        Ok(info)
    }

    /// A follower's fetch (Kafka's Fetch with a replica id): records `replica`'s progress
    /// (its log ends at `from`) and reads everything written from `from`, with the high
    /// watermark as the followers learn it. Refused unless this broker leads at
    /// `leader_epoch`: [`Error::NotLeader`], or [`Error::StaleLeaderEpoch`] for a follower
    /// ahead or behind.
    pub async fn replica_read(
        &self,
        replica: BrokerId,
        leader_epoch: i32,
        from: Offset,
        max_bytes: usize,
    ) -> Result<ReadBatches> {
        let Some(leading) = &self.leading else {
            return Err(Error::NotLeader);
        };
        if leader_epoch >= 0 && leader_epoch != leading.epoch() {
            return Err(Error::StaleLeaderEpoch {
                epoch: leader_epoch,
                latest: leading.epoch(),
            });
        }
        let replicas = Replicas::current().ok_or(Error::NotLeader)?;
        if !leading.fetched(&replicas, replica, from) {
            return Err(Error::NotLeader);
        }
        let mut read = self.log.read(from, max_bytes, Isolation::Written).await?;
        read.high_watermark = leading.high_watermark();
        Ok(read)
    }

    /// Whole batches from the one holding `from`, up to `max_bytes` (at least one batch),
    /// bounded by the watermark `isolation` names.
    pub async fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadBatches> {
        self.log.read(from, max_bytes, isolation).await
    }

    /// Waits until a read from `from` would return a batch, at most `timeout`; whether it
    /// would.
    pub async fn wait_readable(
        &self,
        from: Offset,
        isolation: Isolation,
        timeout: Duration,
    ) -> bool {
        self.log.wait_readable(from, isolation, timeout).await
    }

    /// The log's offsets; where this broker leads, the high watermark is the replicas'
    /// (what consumers may read), not the leader's written end.
    pub fn offsets(&self) -> LogOffsets {
        let mut offsets = self.log.offsets();
        if let Some(leading) = &self.leading {
            offsets.high_watermark = leading.high_watermark().min(offsets.high_watermark);
        }
        offsets
    }

    /// The first record at or after `timestamp`: offset and timestamp.
    pub async fn offset_for_timestamp(
        &self,
        timestamp: Timestamp,
    ) -> Result<Option<(Offset, Timestamp)>> {
        self.log.offset_for_timestamp(timestamp).await
    }

    /// The first record holding the largest timestamp: offset and timestamp.
    pub async fn max_timestamp_record(&self) -> Result<Option<(Offset, Timestamp)>> {
        self.log.max_timestamp_record().await
    }

    /// The leader epoch this partition's batches are written under, if it has one.
    pub fn leader_epoch(&self) -> Option<i32> {
        self.log.leader_epochs().latest().map(|entry| entry.epoch)
    }

    /// The leader epoch of the batch at `offset` (ListOffsets answers with it, so a
    /// consumer can later check its position against the leader's history).
    pub fn leader_epoch_at(&self, offset: Offset) -> Option<i32> {
        self.log.leader_epochs().epoch_at(offset)
    }

    /// Where leader epoch `epoch` ends in this partition (OffsetForLeaderEpoch): the largest
    /// epoch at or below it and the next one's start, or the log end for the latest; `None`
    /// for an epoch it knows nothing at or above.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, Offset)> {
        self.log.end_offset_for_epoch(epoch)
    }

    /// Moves the partition's start to `offset` (Kafka's DeleteRecords); the new start.
    pub async fn delete_records(&self, offset: Offset) -> Result<Offset> {
        self.log.delete_records(offset).await
    }
}
