//! One partition's log: a directory of segments, the append path with its durability
//! policy and group commit, reads by offset and by timestamp, rolling, and recovery on open.
//!
//! A `Log` lives on exactly one shard and is used through `Rc`; no state is borrowed across
//! an await. Watermarks, in order: `log_end` (appended) >= `written` (in the file, the
//! high watermark readers see) >= `flushed` (fdatasync'd); `committed` is set from outside.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::sync::Semaphore;

use crate::batch::{self, BatchHeader, CheckedBatch, TimestampType};
use crate::cache::TailCache;
use crate::checkpoint;
use crate::config::{Durability, LogConfig};
use crate::error::{Error, Result};
use crate::file::{BLOCK_BYTES, Faults, SegmentFile};
use crate::metrics::{Metrics, add};
use crate::notify::Notify;
use crate::producers::{Check, ProducerBatch, ProducerState};
use crate::readahead::ReadStream;
use crate::record;
use crate::retention::{self, SegmentSummary};
use crate::segment::{self, ActiveSegment, ReadView, SealedSegment};
use crate::storage;
use crate::types::{Offset, Position, Timestamp, TopicPartition};

/// The configuration file in each log directory.
pub const CONFIG_FILE: &str = "log.conf";
/// Idempotent producer state as of the active segment's start (see `producers`).
pub const PRODUCERS_FILE: &str = "producers.snapshot";
/// Most bytes one write round hands to the file.
const WRITE_BYTES_MAX: usize = 4 << 20;
/// Write rounds in flight per log.
const WRITES_IN_FLIGHT: usize = 4;
/// Smallest disk read, so short fetches still read a useful chunk.
const READ_BYTES_MIN: u64 = 64 << 10;
/// Readers a log keeps read streams (and their readahead) for.
const READ_STREAMS_MAX: usize = 4;

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
}

impl Inner {
    /// The order of the watermarks (module docs), asserted wherever one moves. Input never
    /// reaches these: a broken one is a bug in the log.
    fn assert_watermarks(&self) {
        let log_end = self.active.next_offset;
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
    pub(crate) compacting: Cell<bool>,
    /// End of the sealed segments the last compaction pass fully cleaned (no tombstone left
    /// waiting); the next pass runs only once more segments are sealed.
    pub(crate) compacted_through: Cell<Option<Offset>>,
    /// The log end at the last cleanup pass: unchanged at the next one, the log is idle.
    idle_mark: Cell<Option<Offset>>,
    pub(crate) metrics: Rc<Metrics>,
    pub(crate) faults: Option<Arc<Faults>>,
}

/// Rebuilds idempotent producer state at open: the snapshot taken at the last roll, then
/// the batches the active segment's recovery found after it. A missing or damaged snapshot
/// loses the older producers (their next batch is taken as a fresh start), never data.
fn restore_producers(
    dir: &Path,
    active_base: Offset,
    log_end: Offset,
    recovered: Vec<ProducerBatch>,
) -> ProducerState {
    let path = dir.join(PRODUCERS_FILE);
    let (mut state, up_to) = match std::fs::read(&path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            (ProducerState::default(), Offset(0))
        }
        Err(error) => {
            log::warn!("{}: {error}; producer state starts empty", path.display());
            (ProducerState::default(), Offset(0))
        }
        Ok(bytes) => match ProducerState::decode(&bytes) {
            Ok((state, up_to)) if up_to <= log_end => (state, up_to),
            Ok((_, up_to)) => {
                log::warn!(
                    "{}: covers offsets up to {up_to}, past the log end {log_end}; ignored",
                    path.display()
                );
                (ProducerState::default(), Offset(0))
            }
            Err(error) => {
                log::warn!("{}: {error}; producer state starts empty", path.display());
                (ProducerState::default(), Offset(0))
            }
        },
    };
    if up_to < active_base && !state.is_empty() {
        log::warn!(
            "{}: covers offsets up to {up_to} only; producers of offsets {up_to}..{active_base} are forgotten",
            path.display()
        );
    }
    for batch in recovered {
        if batch.base_offset >= up_to {
            state.record(batch);
        }
    }
    state
}

impl Log {
    /// Creates a new, empty log directory with `config`.
    pub async fn create(
        dir: &Path,
        topic_partition: TopicPartition,
        config: LogConfig,
        metrics: Rc<Metrics>,
        faults: Option<Arc<Faults>>,
    ) -> Result<Rc<Log>> {
        config.validate()?;
        let (log_dir, contents) = (dir.to_path_buf(), config.encode());
        storage::blocking(move || {
            std::fs::create_dir_all(&log_dir)
                .map_err(|source| crate::file::classify(&log_dir, "create directory", source))?;
            storage::write_atomically_blocking(&log_dir, CONFIG_FILE, contents.as_bytes())?;
            match log_dir.parent() {
                Some(parent) => storage::sync_dir_blocking(parent),
                None => Ok(()),
            }
        })
        .await?;
        Log::open(dir, topic_partition, metrics, faults).await
    }

    /// Opens an existing log directory: finishes interrupted compaction swaps, opens sealed
    /// segments, recovers the last one, and restores the log start offset.
    pub async fn open(
        dir: &Path,
        topic_partition: TopicPartition,
        metrics: Rc<Metrics>,
        faults: Option<Arc<Faults>>,
    ) -> Result<Rc<Log>> {
        let config_path = dir.join(CONFIG_FILE);
        let config_text = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
            path: config_path.clone(),
            op: "read",
            source,
        })?;
        let config = LogConfig::decode(&config_text)?;
        let swaps_dir = dir.to_path_buf();
        let bases = storage::blocking(move || crate::compaction::recover_swaps(&swaps_dir)).await?;
        let interval = config.index_interval_bytes;
        let mut sealed = BTreeMap::new();
        let last = bases.last().copied();
        for &base in bases.iter().filter(|&&base| Some(base) != last) {
            let segment = SealedSegment::open(dir, base, interval, faults.clone()).await?;
            sealed.insert(base, segment);
        }
        let (active, recovered) = match last {
            Some(base) => ActiveSegment::recover(dir, base, interval, faults.clone()).await?,
            None => (
                ActiveSegment::create(dir, Offset(0), interval, faults.clone()).await?,
                Vec::new(),
            ),
        };
        let first_base = sealed.keys().next().copied().unwrap_or(active.base_offset);
        let log_end = active.next_offset;
        let log_start = checkpoint::load(dir)
            .unwrap_or(first_base)
            .clamp(first_base, log_end);
        let producers = restore_producers(dir, active.base_offset, log_end, recovered);
        add(&metrics.segments, sealed.len() as u64 + 1);
        let log = Rc::new(Log {
            topic_partition,
            dir: dir.to_path_buf(),
            inner: RefCell::new(Inner {
                config,
                sealed,
                active,
                log_start,
                written: log_end,
                flushed: log_end,
                committed: log_end,
                pending: VecDeque::new(),
                pending_bytes: 0,
                cache: TailCache::default(),
                fenced: None,
                rollbacks: 0,
                last_write_error: None,
                last_write_disk_full: false,
                producers,
            }),
            streams: RefCell::new(VecDeque::new()),
            progress: Notify::default(),
            appended: Notify::default(),
            append_gate: Semaphore::new(1),
            log_start_gate: Semaphore::new(1),
            writer_active: Cell::new(false),
            syncer_active: Cell::new(false),
            closed: Cell::new(false),
            compacting: Cell::new(false),
            compacted_through: Cell::new(None),
            idle_mark: Cell::new(None),
            metrics,
            faults,
        });
        Log::start_flush_timer(&log);
        Ok(log)
    }

    pub fn topic_partition(&self) -> &TopicPartition {
        &self.topic_partition
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> LogConfig {
        self.inner.borrow().config.clone()
    }

    /// Replaces the configuration, persisting it first.
    pub async fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        storage::write_atomically(&self.dir, CONFIG_FILE, config.encode().into_bytes()).await?;
        self.inner.borrow_mut().config = config;
        Ok(())
    }

    pub fn offsets(&self) -> LogOffsets {
        let inner = self.inner.borrow();
        LogOffsets {
            log_start: inner.log_start,
            log_end: inner.active.next_offset,
            high_watermark: inner.written,
            flushed: inner.flushed,
            committed: inner.committed,
            size_bytes: inner
                .sealed
                .values()
                .map(|segment| segment.size)
                .sum::<u64>()
                + inner.active.appended_bytes,
        }
    }

    /// Sets the committed watermark (replication drives it), bounded by the log end.
    pub fn set_committed(&self, offset: Offset) {
        {
            let mut inner = self.inner.borrow_mut();
            inner.committed = offset.min(inner.active.next_offset);
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
            futures_lite::future::or(woken, glommio::timer::sleep(left)).await;
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
        let result = self.append_inner(batch, ack).await;
        if result.is_err() {
            add(&self.metrics.append_errors, 1);
        }
        result
    }

    async fn append_inner(self: &Rc<Self>, batch: CheckedBatch, ack: Ack) -> Result<AppendInfo> {
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
        if self.needs_roll(size as u64, header.last_offset_delta) {
            self.roll().await?;
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
            // A retry of a stored batch: the first answer again, once that batch is stored.
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
        let (info, rollbacks, durability) = {
            let mut inner = self.inner.borrow_mut();
            let base_offset = inner.active.next_offset;
            batch::set_base_offset(&mut batch, base_offset);
            let log_append_time = (inner.config.timestamp_type == TimestampType::LogAppendTime)
                .then(|| {
                    let now = Timestamp::now();
                    batch::set_log_append_time(&mut batch, now);
                    now
                });
            let header = BatchHeader::parse(&batch).expect("validated before");
            let batch = batch.freeze();
            inner.active.on_append(&header);
            if let Some(producer_batch) = ProducerBatch::of(&header) {
                inner.producers.record(producer_batch);
            }
            inner
                .cache
                .push(base_offset, header.next_offset(), batch.clone());
            inner.pending.push_back(batch);
            inner.pending_bytes += size;
            let info = AppendInfo {
                base_offset,
                last_offset: header.last_offset(),
                log_append_time,
            };
            inner.assert_watermarks();
            (info, inner.rollbacks, inner.config.durability)
        };
        drop(gate);
        add(&self.metrics.bytes_appended, size as u64);
        add(
            &self.metrics.records_appended,
            u64::from(header.records_count),
        );
        add(&self.metrics.batches_appended, 1);
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
                            path: inner.active.file.path().to_path_buf(),
                        }
                    } else {
                        Error::Io {
                            path: inner.active.file.path().to_path_buf(),
                            op: "write",
                            source: std::io::Error::other(reason),
                        }
                    });
                }
            }
            self.progress.notified().await;
        }
    }

    fn needs_roll(&self, batch_bytes: u64, last_offset_delta: u32) -> bool {
        let inner = self.inner.borrow();
        let active = &inner.active;
        !active.is_empty()
            && (active.appended_bytes + batch_bytes > inner.config.segment_bytes
                || active.created.elapsed() >= Duration::from_millis(inner.config.segment_ms)
                || !active.fits_offsets(last_offset_delta))
    }

    fn start_writer(self: &Rc<Self>) {
        if self.writer_active.replace(true) {
            return;
        }
        let log = self.clone();
        glommio::spawn_local(async move {
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
        glommio::spawn_local(async move {
            loop {
                let (file, written) = {
                    let inner = log.inner.borrow();
                    if inner.written <= inner.flushed || inner.fenced.is_some() {
                        break;
                    }
                    (inner.active.file.clone(), inner.written)
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
        let budget = inner.config.tail_cache_bytes;
        inner.cache.evict(budget, end.offset);
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
        let end_bytes = inner.active.submitted_bytes + taken_bytes as u64;
        let tail = inner.active.on_submitted(end_bytes, &parts);
        let file = inner.active.file.clone();
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
        let task = glommio::spawn_local(async move {
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
            inner.active.written_bytes
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
            (inner.active.file.clone(), inner.written, inner.flushed)
        };
        if written > flushed {
            self.sync_file(&file, written).await;
        }
        self.progress.notify_all();
        self.check_writable()
    }

    fn start_flush_timer(log: &Rc<Log>) {
        let weak = Rc::downgrade(log);
        glommio::spawn_local(async move {
            loop {
                let interval = match weak.upgrade() {
                    Some(log) if !log.closed.get() => match log.inner.borrow().config.durability {
                        Durability::IntervalMs(ms) => Some(ms),
                        _ => None,
                    },
                    _ => return,
                };
                glommio::timer::sleep(Duration::from_millis(interval.unwrap_or(1000))).await;
                if interval.is_some()
                    && let Some(log) = weak.upgrade()
                {
                    let _ = log.flush().await;
                }
            }
        })
        .detach();
    }

    /// Seals the active segment and starts a new one at the log end. The caller holds the
    /// append gate, so no append is in between; the segment's writes are drained first.
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
        storage::write_atomically(&self.dir, PRODUCERS_FILE, bytes).await
    }

    async fn roll(&self) -> Result<()> {
        loop {
            self.check_writable()?;
            let idle = self.inner.borrow().pending.is_empty() && !self.writer_active.get();
            if idle {
                break;
            }
            self.progress.notified().await;
        }
        let (file, size, next_offset, interval) = {
            let inner = self.inner.borrow();
            let active = &inner.active;
            (
                active.file.clone(),
                active.written_bytes,
                active.next_offset,
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
            (inner.active.base_offset, offsets, times)
        };
        let fence = |error: Error| {
            self.inner.borrow_mut().fenced =
                Some(format!("sealing segment {base} failed: {error}"));
            error
        };
        segment::write_indexes(&self.dir, base, offsets, times)
            .await
            .map_err(fence)?;
        let new =
            ActiveSegment::create(&self.dir, next_offset, interval, self.faults.clone()).await?;
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

    /// Reads whole batches starting with the one that holds `from`, up to `max_bytes`
    /// (at least one batch), bounded by the watermark `isolation` names.
    pub async fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadBatches> {
        let (upper, log_start, log_end) = {
            let inner = self.inner.borrow();
            let upper = match isolation {
                Isolation::Written => inner.written,
                Isolation::Committed => inner.committed.min(inner.written),
            };
            (upper, inner.log_start, inner.active.next_offset)
        };
        if from < log_start || from > log_end {
            return Err(Error::OffsetOutOfRange {
                requested: from,
                log_start,
                log_end,
            });
        }
        let mut result = ReadBatches {
            batches: Vec::new(),
            high_watermark: upper,
            log_start,
        };
        if from >= upper {
            return Ok(result);
        }
        {
            let inner = self.inner.borrow();
            if inner.cache.covers(from) {
                result.batches = inner.cache.read(from, upper, max_bytes);
                add(&self.metrics.cache_hits, 1);
                self.count_read(&result.batches);
                return Ok(result);
            }
        }
        add(&self.metrics.cache_misses, 1);
        // Walk segments in order from the one holding `from`; a segment may hold nothing at
        // or after the target (compaction leaves gaps, even empty segments).
        let target = from;
        let mut after: Option<Offset> = None;
        loop {
            let (mut view, sealed_base, interval) = {
                let inner = self.inner.borrow();
                let sealed = match after {
                    None => inner
                        .sealed
                        .range(..=target)
                        .next_back()
                        .filter(|(_, segment)| segment.next_offset > target)
                        .or_else(|| inner.sealed.range(target..).next()),
                    Some(previous) => inner.sealed.range(previous.next()..).next(),
                };
                let view = match sealed {
                    Some((&base, segment)) => segment.read_view(target.max(base)),
                    None => inner.active.read_view(target),
                };
                (
                    view,
                    sealed.map(|(&base, _)| base),
                    inner.config.index_interval_bytes,
                )
            };
            let mut stream = self.take_stream(&mut view, target);
            let want = interval
                .saturating_add(max_bytes as u64)
                .max(READ_BYTES_MIN);
            let read = read_segment(&mut stream, &view, target, upper, max_bytes, want).await?;
            result.batches = read.batches;
            if let Some(last) = result.batches.last() {
                stream.set_next(BatchHeader::parse(last)?.next_offset(), read.end);
                self.put_stream(stream);
            }
            match sealed_base {
                Some(base) if result.batches.is_empty() => after = Some(base),
                _ => break,
            }
        }
        self.count_read(&result.batches);
        Ok(result)
    }

    /// The stream of the reader whose last read in `view`'s file ended at `from`, with the
    /// view moved to where that read ended; a new stream for any other read.
    fn take_stream(&self, view: &mut ReadView, from: Offset) -> ReadStream {
        let mut streams = self.streams.borrow_mut();
        let found = streams
            .iter()
            .enumerate()
            .find_map(|(index, stream)| Some((index, stream.continues_at(&view.file, from)?)));
        match found {
            Some((index, position)) => {
                add(&self.metrics.readahead_hits, 1);
                view.start_position = Position(position);
                streams.remove(index).expect("index was just found")
            }
            None => ReadStream::new(view.file.clone()),
        }
    }

    fn put_stream(&self, stream: ReadStream) {
        let mut streams = self.streams.borrow_mut();
        if streams.len() == READ_STREAMS_MAX {
            streams.pop_front();
        }
        streams.push_back(stream);
    }

    /// Drops the streams of readers that have not read for `max_age`, with the memory their
    /// readahead holds.
    pub(crate) fn expire_streams(&self, max_age: Duration) {
        self.streams
            .borrow_mut()
            .retain(|stream| stream.used.elapsed() < max_age);
    }

    fn count_read(&self, batches: &[Bytes]) {
        for batch in batches {
            add(&self.metrics.bytes_read, batch.len() as u64);
            if let Ok(header) = BatchHeader::parse(batch) {
                add(&self.metrics.records_read, u64::from(header.records_count));
            }
        }
    }

    /// The first record at or after `timestamp` (Kafka ListOffsets by time): its offset and
    /// timestamp, or `None` if every record is older.
    pub async fn offset_for_timestamp(
        &self,
        timestamp: Timestamp,
    ) -> Result<Option<(Offset, Timestamp)>> {
        let (mut from, decompressed_bytes_max) = {
            let inner = self.inner.borrow();
            let sealed = inner
                .sealed
                .values()
                .find(|segment| segment.max_timestamp.is_some_and(|max| max >= timestamp))
                .map(|segment| segment.time_index().lookup(timestamp));
            let active = &inner.active;
            let start = sealed.or_else(|| {
                active
                    .max_timestamp()
                    .is_some_and(|max| max >= timestamp)
                    .then(|| active.time_index().lookup(timestamp))
            });
            match start {
                Some(start) => (
                    start.max(inner.log_start),
                    inner.config.decompressed_bytes_max,
                ),
                None => return Ok(None),
            }
        };
        loop {
            let read = self.read(from, 1 << 20, Isolation::Written).await?;
            let Some(last) = read.batches.last() else {
                return Ok(None);
            };
            for batch in &read.batches {
                let header = BatchHeader::parse(batch)?;
                if header.max_timestamp < timestamp {
                    continue;
                }
                let records = record::decode_records(batch, decompressed_bytes_max)?;
                let found = records
                    .iter()
                    .find(|record| record.offset >= from && record.timestamp >= timestamp);
                if let Some(record) = found {
                    return Ok(Some((record.offset, record.timestamp)));
                }
            }
            from = BatchHeader::parse(last)?.next_offset();
        }
    }

    /// The first record holding the log's largest timestamp (Kafka ListOffsets MAX_TIMESTAMP,
    /// KIP-734): its offset and timestamp, or `None` if the log holds no record.
    pub async fn max_timestamp_record(&self) -> Result<Option<(Offset, Timestamp)>> {
        let max = {
            let inner = self.inner.borrow();
            let sealed = inner
                .sealed
                .values()
                .filter_map(|segment| segment.max_timestamp);
            sealed.chain(inner.active.max_timestamp()).max()
        };
        match max {
            Some(max) => self.offset_for_timestamp(max).await,
            None => Ok(None),
        }
    }

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
                    .find(|segment| segment.next_offset > start)
                    .map_or(inner.active.base_offset, |segment| segment.base_offset);
                if first_kept <= start {
                    break start;
                }
                start = first_kept;
            }
        };
        checkpoint::store(&self.dir, new_start).await?;
        {
            let mut inner = self.inner.borrow_mut();
            inner.log_start = new_start;
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
                    Some((&base, segment)) if segment.next_offset <= offset => {
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
                    next_offset: segment.next_offset,
                    size: segment.size,
                    max_timestamp: segment.max_timestamp,
                })
                .collect();
            let count = retention::segments_to_delete(
                &summaries,
                inner.active.appended_bytes,
                &config,
                now,
                inner.log_start,
            );
            let next_base = inner.sealed.keys().nth(count).copied();
            (count, next_base.unwrap_or(inner.active.base_offset))
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
                    segment.base_offset,
                    segment.next_offset,
                    segment::log_path(&self.dir, segment.base_offset),
                )
            })
            .collect()
    }

    /// Swaps in a compacted segment if the original is still there; false if retention
    /// deleted it meanwhile.
    pub(crate) fn replace_sealed(&self, segment: SealedSegment) -> bool {
        let mut inner = self.inner.borrow_mut();
        let end = segment.next_offset;
        match inner.sealed.get_mut(&segment.base_offset) {
            Some(slot) => {
                *slot = segment;
                inner.cache.drop_through(end);
                true
            }
            None => false,
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
            (inner.active.file.clone(), inner.active.written_bytes)
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

    /// Bytes held in the tail cache.
    pub(crate) fn cache_bytes(&self) -> usize {
        self.inner.borrow().cache.bytes()
    }

    /// Drops the tail cache's written batches if no batch was appended since the last call
    /// (the shard's cleanup pass calls it): readers of an idle log read the file, which the
    /// kernel caches and can reclaim, instead of memory the broker would hold for good.
    /// Returns the bytes released.
    pub(crate) fn release_idle_cache(&self) -> usize {
        let mut inner = self.inner.borrow_mut();
        let end = inner.active.next_offset;
        if self.idle_mark.replace(Some(end)) != Some(end) {
            return 0;
        }
        let before = inner.cache.bytes();
        let written = inner.written;
        inner.cache.evict(0, written);
        before - inner.cache.bytes()
    }

    /// Discards the cached batches (tests use it to force reads from disk).
    pub fn clear_cache(&self) {
        self.inner.borrow_mut().cache.clear();
        self.streams.borrow_mut().clear();
    }
}

/// A write in flight.
struct Round {
    task: glommio::Task<Result<()>>,
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

/// Batches read from one segment, and the file position just after the last.
struct SegmentRead {
    batches: Vec<Bytes>,
    end: u64,
}

/// Reads whole batches of one segment starting at the one holding `from`, verifying each
/// batch's CRC-32C: corrupt bytes are an error to the reader, never served.
async fn read_segment(
    stream: &mut ReadStream,
    view: &ReadView,
    from: Offset,
    upper: Offset,
    max_bytes: usize,
    mut want: u64,
) -> Result<SegmentRead> {
    let mut position = view.start_position.0;
    let none = SegmentRead {
        batches: Vec::new(),
        end: position,
    };
    loop {
        if position >= view.end {
            return Ok(none);
        }
        let chunk = stream.read(position, want, view.end).await?;
        let mut batches = Vec::new();
        let mut bytes = 0;
        let mut consumed = 0;
        let mut stopped = false;
        for frame in batch::frames(&chunk) {
            let size = frame.header.total_bytes();
            if frame.header.next_offset() <= from {
                consumed = frame.end();
                continue;
            }
            if frame.header.base_offset >= upper
                || (!batches.is_empty() && bytes + size > max_bytes)
            {
                stopped = true;
                break;
            }
            let batch = chunk.slice(frame.position..frame.end());
            batch::verify(&batch, Some(Position(position + frame.position as u64)))?;
            bytes += size;
            consumed = frame.end();
            batches.push(batch);
        }
        if stopped || !batches.is_empty() {
            return Ok(SegmentRead {
                batches,
                end: position + consumed as u64,
            });
        }
        let read_to_end = position + chunk.len() as u64 >= view.end;
        position += consumed as u64;
        if position >= view.end {
            return Ok(none);
        }
        let corrupt = |reason: String| Error::Corrupt {
            path: view.file.path().to_path_buf(),
            reason,
        };
        match BatchHeader::parse(&chunk[consumed..]) {
            Ok(header) if position + header.total_bytes() as u64 > view.end => {
                return Err(corrupt(format!(
                    "batch at position {position} claims {} bytes past the end of the segment",
                    header.total_bytes()
                )));
            }
            Ok(header) => want = want.max(header.total_bytes() as u64),
            Err(error) if read_to_end || chunk.len() - consumed >= batch::BATCH_HEADER_BYTES => {
                return Err(corrupt(format!(
                    "unreadable batch at position {position}: {error}"
                )));
            }
            Err(_) => {}
        }
    }
}
