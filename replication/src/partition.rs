//! A partition as the front ends see it: append with a [`Consistency`], read with an
//! [`Isolation`]. Single node, a partition is its one local log; replication makes it the
//! leader's replica, whose `Durable` appends wait for the in-sync followers and whose
//! consumers read up to the high watermark.

use std::rc::Rc;
use std::time::Duration;

use coremq_engine::batch::CheckedBatch;
use coremq_engine::log::Log;
use coremq_engine::{
    Ack, AppendInfo, Isolation, LogConfig, LogOffsets, Offset, ReadBatches, Result, Timestamp,
};

/// How sure an append must be before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Written to the leader's log (Kafka's acks=1 and acks=0): the log's fsync follows in
    /// the background under the `always` policy.
    Leader,
    /// The topic's durability policy met (Kafka's acks=all): fsynced under `always`.
    Durable,
}

impl Consistency {
    fn ack(self) -> Ack {
        match self {
            Consistency::Leader => Ack::Written,
            Consistency::Durable => Ack::Policy,
        }
    }
}

/// One partition, on the shard that owns it.
#[derive(Clone)]
pub struct Partition {
    log: Rc<Log>,
}

impl Partition {
    pub(crate) fn new(log: Rc<Log>) -> Partition {
        Partition { log }
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
        self.log.append_checked(batch, consistency.ack()).await
    }

    /// Checks and appends one batch as it came (see [`Partition::append`]).
    pub(crate) async fn append_bytes(
        &self,
        batch: bytes::Bytes,
        consistency: Consistency,
    ) -> Result<AppendInfo> {
        self.log.append_acked(batch, consistency.ack()).await
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

    pub fn offsets(&self) -> LogOffsets {
        self.log.offsets()
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
