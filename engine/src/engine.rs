//! The shard-per-core engine: one executor per shard (the runtime's), each owning its logs
//! outright. A cloneable, `Send` [`Handle`] routes each call to the shard owning the log
//! through the runtime's [`Shards`]; a caller already on that shard runs the call directly.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coremq_runtime::{Runtime, RuntimeConfig, Service, ShardFuture, Shards};

use crate::cache::ShardCache;
use crate::compaction::{self, CompactionReport};
use crate::config::{EngineConfig, LogConfig};
use crate::dir_lock::DirLock;
use crate::error::{Error, Result};
use crate::log::{Ack, AppendInfo, Isolation, Log, LogOffsets, ReadBatches, Services};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::storage;
use crate::types::{Offset, Timestamp, TopicPartition};

/// Calls one shard runs at once; past it the shard stops taking from its queue and callers
/// wait on the bounded channel (backpressure, not growth).
const SHARD_TASKS_MAX: u64 = 4096;
/// How long a stopping shard waits for its running calls before it closes its logs.
const SHUTDOWN_CALLS_GRACE: Duration = Duration::from_secs(10);
/// Suffix of a log directory being deleted.
const DELETE_SUFFIX: &str = "-delete";

/// The shard owning `topic_partition`: a fixed placement if configured, else a stable
/// hash (CRC-32C of `topic-partition`) modulo the shard count.
pub fn placement(
    topic_partition: &TopicPartition,
    shards: usize,
    fixed: &BTreeMap<String, usize>,
) -> usize {
    coremq_runtime::placement(&topic_partition.dir_name(), shards, fixed)
}

/// One shard's state, reachable only from its own executor thread.
pub struct Shard {
    id: usize,
    config: Arc<EngineConfig>,
    logs: RefCell<HashMap<TopicPartition, Rc<Log>>>,
    metrics: Rc<Metrics>,
    /// Memory for recent batches, shared by the shard's logs.
    cache: Rc<ShardCache>,
}

impl Shard {
    pub fn id(&self) -> usize {
        self.id
    }

    /// The shard running on this thread, if this is a shard thread of a running engine.
    pub fn current() -> Option<Rc<Shard>> {
        coremq_runtime::local::<Shard>()
    }

    /// What each of this shard's logs uses of it.
    fn services(&self) -> Services {
        Services {
            metrics: self.metrics.clone(),
            cache: self.cache.clone(),
            storage: self.config.storage.clone(),
        }
    }

    pub fn log(&self, topic_partition: &TopicPartition) -> Result<Rc<Log>> {
        self.logs
            .borrow()
            .get(topic_partition)
            .cloned()
            .ok_or_else(|| Error::UnknownLog {
                name: topic_partition.to_string(),
            })
    }

    pub fn logs(&self) -> Vec<Rc<Log>> {
        self.logs.borrow().values().cloned().collect()
    }

    fn log_dir(&self, topic_partition: &TopicPartition) -> PathBuf {
        self.config.data_dir.join(topic_partition.dir_name())
    }

    /// Creates the log; `false` if it already exists (left unchanged).
    pub async fn create_log(
        &self,
        topic_partition: TopicPartition,
        config: Option<LogConfig>,
    ) -> Result<bool> {
        if self.logs.borrow().contains_key(&topic_partition) {
            return Ok(false);
        }
        let config = config.unwrap_or_else(|| self.config.log_defaults.clone());
        let dir = self.log_dir(&topic_partition);
        let log = Log::create(&dir, topic_partition.clone(), config, self.services()).await?;
        let mut logs = self.logs.borrow_mut();
        if logs.contains_key(&topic_partition) {
            return Ok(false);
        }
        logs.insert(topic_partition, log);
        Ok(true)
    }

    /// Closes the log and removes its directory (renamed first, so a crash midway leaves
    /// nothing that reopens as a log).
    pub async fn delete_log(&self, topic_partition: &TopicPartition) -> Result<()> {
        let log = self.log(topic_partition)?;
        self.logs.borrow_mut().remove(topic_partition);
        let _ = log.close().await;
        self.metrics
            .segments
            .set(self.metrics.segments.get() - log.segment_count() as u64);
        let dir = self.log_dir(topic_partition);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let doomed = self.config.data_dir.join(format!(
            "{}.{nanos}{DELETE_SUFFIX}",
            topic_partition.dir_name()
        ));
        let (data_dir, storage) = (self.config.data_dir.clone(), self.config.storage.clone());
        storage::blocking(move || {
            storage.rename_blocking(&dir, &doomed, &data_dir)?;
            std::fs::remove_dir_all(&doomed).map_err(|source| Error::Io {
                path: doomed,
                op: "remove",
                source,
            })
        })
        .await
    }

    async fn open_existing(&self, shards: usize) -> Result<()> {
        let data_dir = &self.config.data_dir;
        let entries = std::fs::read_dir(data_dir).map_err(|source| Error::Io {
            path: data_dir.clone(),
            op: "list",
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                path: data_dir.clone(),
                op: "list",
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(topic_partition) = TopicPartition::from_dir_name(&name) else {
                continue;
            };
            if !entry.path().join(crate::log::CONFIG_FILE).exists()
                || placement(&topic_partition, shards, &self.config.placement) != self.id
            {
                continue;
            }
            let log = Log::open(&entry.path(), topic_partition.clone(), self.services()).await?;
            self.logs.borrow_mut().insert(topic_partition, log);
        }
        Ok(())
    }

    /// Retention and compaction for every log of this shard, in a low-priority task queue,
    /// and a prune of the shard cache's order.
    async fn cleanup_loop(self: Rc<Self>) {
        let interval = Duration::from_millis(self.config.cleanup_interval_ms.max(1));
        while !coremq_runtime::stopping() {
            coremq_runtime::sleep(interval).await;
            for log in self.logs() {
                if coremq_runtime::stopping() {
                    return;
                }
                log.expire_streams(interval);
                run_cleanup(&log).await;
            }
            self.cache.prune();
        }
    }
}

async fn run_cleanup(log: &Rc<Log>) {
    let now = Timestamp::now();
    if let Err(error) = log.enforce_retention(now).await {
        log::warn!("{}: retention failed: {error}", log.topic_partition());
    }
    if let Err(error) = compaction::compact(log, now).await {
        log::warn!("{}: compaction failed: {error}", log.topic_partition());
    }
}

/// What each shard of the engine does when it starts (open its logs, start its cleanup)
/// and stops (close them).
struct EngineService {
    config: Arc<EngineConfig>,
}

impl Service for EngineService {
    type Error = Error;

    fn start(&self, shard: usize) -> ShardFuture<'_, Result<()>> {
        Box::pin(async move {
            let state = Rc::new(Shard {
                id: shard,
                config: self.config.clone(),
                logs: RefCell::new(HashMap::new()),
                metrics: Rc::new(Metrics::default()),
                cache: ShardCache::new(self.config.cache_bytes),
            });
            coremq_runtime::install(state.clone());
            state.open_existing(self.config.shards).await?;
            coremq_runtime::spawn_background("cleanup", 100, state.cleanup_loop()).detach();
            Ok(())
        })
    }

    fn stop(&self, _shard: usize) -> ShardFuture<'_, Result<()>> {
        Box::pin(async move {
            let Some(state) = coremq_runtime::remove::<Shard>() else {
                return Ok(());
            };
            let mut result = Ok(());
            for log in state.logs() {
                if let Err(error) = log.close().await {
                    result = Err(error);
                }
            }
            // The cleanup task keeps the shard state until the executor ends: the logs go
            // now, so their files close while the executor still runs (runtime, `stop`).
            state.logs.borrow_mut().clear();
            result
        })
    }
}

/// A cloneable, `Send` handle to a running engine.
#[derive(Clone)]
pub struct Handle {
    shards: Shards,
    placement: Arc<BTreeMap<String, usize>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("shards", &self.shards.count())
            .finish()
    }
}

impl Handle {
    pub fn shard_count(&self) -> usize {
        self.shards.count()
    }

    pub fn shard_of(&self, topic_partition: &TopicPartition) -> usize {
        placement(topic_partition, self.shards.count(), &self.placement)
    }

    /// Runs `work` on shard `shard` and returns its result: directly if the caller is on
    /// that shard, else over the shard's bounded channel.
    pub async fn on_shard<T, F, Fut>(&self, shard: usize, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + 'static,
    {
        self.shards
            .run_on(shard, move || async move {
                let local = Shard::current().ok_or(Error::ShuttingDown)?;
                work(local).await
            })
            .await?
    }

    /// Runs `work` with the log of `topic_partition` on the shard that owns it.
    pub async fn with_log<T, F, Fut>(&self, topic_partition: &TopicPartition, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Log>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + 'static,
    {
        let shard = self.shard_of(topic_partition);
        let topic_partition = topic_partition.clone();
        self.on_shard(shard, move |shard| async move {
            work(shard.log(&topic_partition)?).await
        })
        .await
    }

    /// Creates a log with `config` (or the engine's defaults); `false` if it existed.
    pub async fn create_log(
        &self,
        topic_partition: &TopicPartition,
        config: Option<LogConfig>,
    ) -> Result<bool> {
        let shard = self.shard_of(topic_partition);
        let topic_partition = topic_partition.clone();
        self.on_shard(shard, move |shard| async move {
            shard.create_log(topic_partition, config).await
        })
        .await
    }

    pub async fn delete_log(&self, topic_partition: &TopicPartition) -> Result<()> {
        let shard = self.shard_of(topic_partition);
        let topic_partition = topic_partition.clone();
        self.on_shard(shard, move |shard| async move {
            shard.delete_log(&topic_partition).await
        })
        .await
    }

    /// Every log of every shard.
    pub async fn list_logs(&self) -> Result<Vec<TopicPartition>> {
        let mut all = Vec::new();
        for shard in 0..self.shard_count() {
            let logs = self
                .on_shard(shard, |shard| async move {
                    Ok(shard
                        .logs()
                        .iter()
                        .map(|log| log.topic_partition().clone())
                        .collect())
                })
                .await?;
            all.extend::<Vec<_>>(logs);
        }
        all.sort();
        Ok(all)
    }

    /// Appends one RecordBatch v2 (see [`Log::append`]).
    pub async fn append(
        &self,
        topic_partition: &TopicPartition,
        batch: Bytes,
    ) -> Result<AppendInfo> {
        self.append_acked(topic_partition, batch, Ack::Policy).await
    }

    /// Appends one RecordBatch v2, returning when `ack` is met (see [`Log::append_acked`]).
    pub async fn append_acked(
        &self,
        topic_partition: &TopicPartition,
        batch: Bytes,
        ack: Ack,
    ) -> Result<AppendInfo> {
        self.with_log(topic_partition, move |log| async move {
            log.append_acked(batch, ack).await
        })
        .await
    }

    /// Reads whole batches from `from` (see [`Log::read`]).
    pub async fn read(
        &self,
        topic_partition: &TopicPartition,
        from: Offset,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadBatches> {
        self.with_log(topic_partition, move |log| async move {
            log.read(from, max_bytes, isolation).await
        })
        .await
    }

    /// Waits until a read from `from` would return a batch, at most `timeout` (see
    /// [`Log::wait_readable`]).
    pub async fn wait_readable(
        &self,
        topic_partition: &TopicPartition,
        from: Offset,
        isolation: Isolation,
        timeout: Duration,
    ) -> Result<bool> {
        self.with_log(topic_partition, move |log| async move {
            Ok(log.wait_readable(from, isolation, timeout).await)
        })
        .await
    }

    pub async fn offsets(&self, topic_partition: &TopicPartition) -> Result<LogOffsets> {
        self.with_log(topic_partition, |log| async move { Ok(log.offsets()) })
            .await
    }

    /// The first record at or after `timestamp`: offset and timestamp.
    pub async fn offset_for_timestamp(
        &self,
        topic_partition: &TopicPartition,
        timestamp: Timestamp,
    ) -> Result<Option<(Offset, Timestamp)>> {
        self.with_log(topic_partition, move |log| async move {
            log.offset_for_timestamp(timestamp).await
        })
        .await
    }

    /// The first record holding the largest timestamp: offset and timestamp.
    pub async fn max_timestamp_record(
        &self,
        topic_partition: &TopicPartition,
    ) -> Result<Option<(Offset, Timestamp)>> {
        self.with_log(topic_partition, |log| async move {
            log.max_timestamp_record().await
        })
        .await
    }

    pub async fn set_committed(
        &self,
        topic_partition: &TopicPartition,
        offset: Offset,
    ) -> Result<()> {
        self.with_log(topic_partition, move |log| async move {
            log.set_committed(offset);
            Ok(())
        })
        .await
    }

    /// Moves the log start (Kafka DeleteRecords); returns the new log start.
    pub async fn delete_records(
        &self,
        topic_partition: &TopicPartition,
        offset: Offset,
    ) -> Result<Offset> {
        self.with_log(topic_partition, move |log| async move {
            log.delete_records(offset).await
        })
        .await
    }

    pub async fn config(&self, topic_partition: &TopicPartition) -> Result<LogConfig> {
        self.with_log(topic_partition, |log| async move { Ok(log.config()) })
            .await
    }

    pub async fn set_config(
        &self,
        topic_partition: &TopicPartition,
        config: LogConfig,
    ) -> Result<()> {
        self.with_log(topic_partition, move |log| async move {
            log.set_config(config).await
        })
        .await
    }

    pub async fn flush(&self, topic_partition: &TopicPartition) -> Result<()> {
        self.with_log(topic_partition, |log| async move { log.flush().await })
            .await
    }

    /// Runs retention on one log now; returns the number of segments deleted.
    pub async fn enforce_retention(&self, topic_partition: &TopicPartition) -> Result<usize> {
        self.with_log(topic_partition, |log| async move {
            log.enforce_retention(Timestamp::now()).await
        })
        .await
    }

    /// Runs one compaction pass on one log now.
    pub async fn compact(&self, topic_partition: &TopicPartition) -> Result<CompactionReport> {
        self.with_log(topic_partition, |log| async move {
            compaction::compact(&log, Timestamp::now()).await
        })
        .await
    }

    /// Drops a log's tail cache so the next reads come from disk.
    pub async fn clear_cache(&self, topic_partition: &TopicPartition) -> Result<()> {
        self.with_log(topic_partition, |log| async move {
            log.clear_cache();
            Ok(())
        })
        .await
    }

    /// Metrics of all shards, merged.
    pub async fn metrics(&self) -> Result<MetricsSnapshot> {
        let mut total = MetricsSnapshot::default();
        for shard in 0..self.shard_count() {
            let snapshot = self
                .on_shard(shard, |shard| async move {
                    let mut snapshot = shard.metrics.snapshot();
                    snapshot.cache_bytes = shard.cache.used() as u64;
                    snapshot.cache_budget_bytes = shard.cache.budget() as u64;
                    Ok(snapshot)
                })
                .await?;
            total.merge(&snapshot);
        }
        Ok(total)
    }
}

/// A running engine. Dropping it without [`Engine::shutdown`] leaves the shards running
/// until every [`Handle`] is gone.
pub struct Engine {
    handle: Handle,
    runtime: Runtime<EngineService>,
    /// Held until the shards are joined (fields drop in order, after `shutdown`'s joins).
    _lock: DirLock,
}

impl Engine {
    /// Starts one executor per shard, each opening (and recovering) the logs it owns.
    pub fn start(config: EngineConfig) -> Result<Engine> {
        if config.shards == 0 {
            return Err(Error::InvalidConfig {
                key: "shards",
                reason: "must be at least 1".into(),
            });
        }
        config.log_defaults.validate()?;
        let lock = prepare_data_dir(&config.data_dir)?;
        let runtime_config = RuntimeConfig {
            shards: config.shards,
            pin: config.pin_shards,
            io_memory_bytes: config.io_memory_bytes,
            queue_depth: config.shard_queue_depth,
            tasks_max: SHARD_TASKS_MAX,
            shutdown_grace: SHUTDOWN_CALLS_GRACE,
            name: "coremq-shard".into(),
        };
        let placement = Arc::new(config.placement.clone());
        let service = Arc::new(EngineService {
            config: Arc::new(config),
        });
        let runtime = Runtime::start(runtime_config, service)?;
        Ok(Engine {
            handle: Handle {
                shards: runtime.shards(),
                placement,
            },
            runtime,
            _lock: lock,
        })
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops every shard after its in-flight calls finish; flushes and closes every log.
    pub fn shutdown(self) -> Result<()> {
        self.runtime.shutdown()
    }
}

/// Makes any panic abort the process (see [`coremq_runtime::abort_on_panic`]).
pub use coremq_runtime::abort_on_panic;

/// Creates and locks the data directory, then removes what an interrupted deletion left.
fn prepare_data_dir(data_dir: &Path) -> Result<DirLock> {
    let io = |op, source| Error::Io {
        path: data_dir.to_path_buf(),
        op,
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(|e| io("create directory", e))?;
    let lock = DirLock::acquire(data_dir)?;
    for entry in std::fs::read_dir(data_dir).map_err(|e| io("list", e))? {
        let entry = entry.map_err(|e| io("list", e))?;
        if entry.file_name().to_string_lossy().ends_with(DELETE_SUFFIX) {
            std::fs::remove_dir_all(entry.path()).map_err(|e| io("remove", e))?;
        }
    }
    Ok(lock)
}
