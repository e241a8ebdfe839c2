//! One partition's log: a directory of segments behind one `Log`, split the way Kafka's log
//! layer is: [`loader`] opens a directory and recovers it, [`appender`] takes appends and
//! runs the write pipeline with its durability policy and group commit (and rolls
//! segments), [`reader`] serves reads by offset and by timestamp, and [`cleanup`] moves the
//! log start (retention, DeleteRecords) and swaps in compacted segments.
//!
//! A `Log` lives on exactly one shard and is used through `Rc`; no state is borrowed across
//! an await. Watermarks, in order: `log_end` (appended) >= `written` (in the file, the
//! high watermark readers see) >= `flushed` (fdatasync'd); `committed` is set from outside.

mod appender;
mod cleanup;
mod loader;
mod reader;
mod replica;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coremq_runtime::sync::Semaphore;

use crate::cache::{ShardCache, TailCache};
use crate::config::{Durability, LogConfig};
use crate::epochs::LeaderEpochs;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::notify::Notify;
use crate::producers::ProducerState;
use crate::readahead::ReadStream;
use crate::segment::{ActiveSegment, SealedSegment};
use crate::storage::Storage;
use crate::types::{Offset, Timestamp, TopicPartition};

/// The configuration file in each log directory.
pub const CONFIG_FILE: &str = "log.conf";
/// Idempotent producer state as of the active segment's start (see `producers`).
pub const PRODUCERS_FILE: &str = "producers.snapshot";

/// Which watermark bounds a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Everything written to the file (the single-node high watermark).
    #[default]
    Written,
    /// Only up to the committed watermark that replication sets.
    Committed,
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// The broker's timestamp when the log uses LogAppendTime.
    pub log_append_time: Option<Timestamp>,
}

/// When an append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// When the log's durability policy is met (flushed under `Always`).
    Policy,
    /// When the batch is written to the file, whatever the policy.
    Written,
}

impl Ack {
    fn flushes(self, durability: Durability) -> bool {
        self == Ack::Policy && durability == Durability::Always
    }
}

/// Whole stored batches, as Kafka fetch responses carry them.
#[derive(Debug, Clone, Default)]
pub struct ReadBatches {
    pub batches: Vec<Bytes>,
    pub high_watermark: Offset,
    pub log_start: Offset,
}

impl ReadBatches {
    pub fn bytes(&self) -> usize {
        self.batches.iter().map(Bytes::len).sum()
    }
}

/// A log's watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start: Offset,
    /// The next offset to be assigned.
    pub log_end: Offset,
    /// Everything below is in the file and readable.
    pub high_watermark: Offset,
    /// Everything below has been fdatasync'd.
    pub flushed: Offset,
    pub committed: Offset,
    /// Bytes its segment files hold (what Kafka's DescribeLogDirs reports as its size).
    pub size_bytes: u64,
}

#[derive(Debug)]
struct Inner {
    config: LogConfig,
    sealed: BTreeMap<Offset, SealedSegment>,
    active: ActiveSegment,
    log_start: Offset,
    written: Offset,
    flushed: Offset,
    committed: Offset,
    /// Appended batches not yet handed to the file, oldest first.
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    cache: TailCache,
    /// Set by a failed fsync or write: writes are refused until reopened.
    fenced: Option<String>,
    /// Bumped each time unwritten appends are dropped after a failed write.
    rollbacks: u64,
    last_write_error: Option<String>,
    last_write_disk_full: bool,
    /// Idempotent producers' recent batches.
    producers: ProducerState,
    /// Where each leader epoch starts (stored before a batch of a new epoch is written).
    epochs: LeaderEpochs,
}

impl Inner {
    /// The order of the watermarks (module docs), asserted wherever one moves. Input never
    /// reaches these: a broken one is a bug in the log.
    fn assert_watermarks(&self) {
        let log_end = self.active.next_offset();
        assert!(
            self.log_start <= self.written,
            "log start {} past the written watermark {}",
            self.log_start,
            self.written
        );
        assert!(
            self.flushed <= self.written && self.written <= log_end,
            "watermarks out of order: flushed {} written {} log end {}",
            self.flushed,
            self.written,
            log_end
        );
        assert!(
            self.committed <= log_end,
            "committed {} past the log end {log_end}",
            self.committed
        );
        self.active.assert_positions();
    }
}

#[derive(Debug)]
pub struct Log {
    topic_partition: TopicPartition,
    dir: PathBuf,
    inner: RefCell<Inner>,
    /// The last readers' places in their segments, each with its readahead; a read takes
    /// out the one it continues (or starts a new one) and puts it back when done.
    streams: RefCell<VecDeque<ReadStream>>,
    /// Woken whenever `written`, `flushed` or `fenced` change.
    progress: Notify,
    /// Woken when a batch joins the pending queue.
    appended: Notify,
    /// Serializes the synchronous part of appends with rolls.
    append_gate: Semaphore,
    /// Serializes moves of the log start (checkpoint, then segment deletion).
    log_start_gate: Semaphore,
    writer_active: Cell<bool>,
    /// Whether a task is running fdatasyncs for the `Always` policy.
    syncer_active: Cell<bool>,
    closed: Cell<bool>,
    /// Whether producers may append (the default). Replication closes it while the log
    /// follows another broker's: checked where an append gets its offsets, after every wait,
    /// so an append admitted while this broker led cannot land in a follower's log.
    producer_appends: Cell<bool>,
    pub(crate) compacting: Cell<bool>,
    /// End of the sealed segments the last compaction pass fully cleaned (no tombstone left
    /// waiting); the next pass runs only once more segments are sealed.
    pub(crate) compacted_through: Cell<Option<Offset>>,
    /// Bytes and records producers appended to this log since it was opened.
    pub(crate) bytes_appended: Cell<u64>,
    pub(crate) records_appended: Cell<u64>,
    pub(crate) metrics: Rc<Metrics>,
    /// The shard's memory budget for recent batches, which this log's cache counts against.
    pub(crate) cache: Rc<ShardCache>,
    pub(crate) storage: Storage,
}

/// What a log uses of its shard.
#[derive(Clone)]
pub struct Services {
    pub metrics: Rc<Metrics>,
    pub cache: Rc<ShardCache>,
    pub storage: Storage,
}

impl Log {
    pub fn topic_partition(&self) -> &TopicPartition {
        &self.topic_partition
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> LogConfig {
        self.inner.borrow().config.clone()
    }

    /// Where the log's durable writes go (a caller keeping a small file beside the log, as
    /// the controller quorum does, writes through it too).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Replaces the configuration, persisting it first.
    pub async fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.storage
            .write_atomically(&self.dir, CONFIG_FILE, config.encode().into_bytes())
            .await?;
        self.inner.borrow_mut().config = config;
        Ok(())
    }

    /// Bytes and records producers appended to this log (as leader) since it was opened.
    pub fn appended(&self) -> (u64, u64) {
        (self.bytes_appended.get(), self.records_appended.get())
    }

    /// The next offset to be assigned, without the rest of [`Log::offsets`] (which sums the
    /// segments' sizes).
    pub fn log_end(&self) -> Offset {
        self.inner.borrow().active.next_offset()
    }

    pub fn offsets(&self) -> LogOffsets {
        let inner = self.inner.borrow();
        LogOffsets {
            log_start: inner.log_start,
            log_end: inner.active.next_offset(),
            high_watermark: inner.written,
            flushed: inner.flushed,
            committed: inner.committed,
            size_bytes: inner
                .sealed
                .values()
                .map(|segment| segment.size())
                .sum::<u64>()
                + inner.active.appended_bytes(),
        }
    }

    /// Sets the committed watermark (replication drives it), bounded by the log end.
    pub fn set_committed(&self, offset: Offset) {
        {
            let mut inner = self.inner.borrow_mut();
            inner.committed = offset.min(inner.active.next_offset());
            inner.assert_watermarks();
        }
        self.progress.notify_all();
    }

    /// Waits until a read from `from` under `isolation` would return a batch (the watermark
    /// passed `from`), at most `timeout`; true if it did. A long-polling fetch waits here.
    pub async fn wait_readable(
        &self,
        from: Offset,
        isolation: Isolation,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let upper = {
                let inner = self.inner.borrow();
                match isolation {
                    Isolation::Written => inner.written,
                    Isolation::Committed => inner.committed.min(inner.written),
                }
            };
            if upper > from {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closed.get() {
                return false;
            }
            let woken = self.progress.notified();
            futures_lite::future::or(woken, coremq_runtime::sleep(left)).await;
        }
    }

    pub fn segment_count(&self) -> usize {
        self.inner.borrow().sealed.len() + 1
    }

    fn check_writable(&self) -> Result<()> {
        if self.closed.get() {
            return Err(Error::ShuttingDown);
        }
        match &self.inner.borrow().fenced {
            Some(cause) => Err(Error::Fenced {
                path: self.dir.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Finishes in-flight writes, flushes, and refuses further appends.
    pub async fn close(&self) -> Result<()> {
        while self.writer_active.get() || self.syncer_active.get() {
            self.progress.notified().await;
        }
        // Cut the block padding of the last O_DIRECT write so the file ends at its last batch.
        let (file, written_bytes) = {
            let inner = self.inner.borrow();
            (inner.active.file().clone(), inner.active.written_bytes())
        };
        if self.inner.borrow().fenced.is_none() {
            file.truncate(written_bytes).await?;
        }
        let flushed = self.flush().await;
        self.closed.set(true);
        self.append_gate.close();
        self.log_start_gate.close();
        self.progress.notify_all();
        flushed
    }

    /// Evicts the cached batches ending at or before `offset`, if they are written (the
    /// shard's budget asks); false if they are not written yet.
    pub(crate) fn evict_cached_through(&self, offset: Offset) -> bool {
        let mut inner = self.inner.borrow_mut();
        if offset > inner.written {
            return false;
        }
        inner.cache.drop_through(offset);
        true
    }

    /// Whether the batch ending before `next_offset` may still be cached.
    pub(crate) fn caches(&self, next_offset: Offset) -> bool {
        self.inner.borrow().cache.holds(next_offset)
    }

    /// Discards the cached batches (tests use it to force reads from disk).
    pub fn clear_cache(&self) {
        self.inner.borrow_mut().cache.clear();
        self.streams.borrow_mut().clear();
    }
}
