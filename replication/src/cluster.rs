//! The cluster as the front ends see it: the topic table every shard reads, topic changes
//! made one at a time on shard 0, and the partitions, reached on the shard that owns each.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coremq_engine::{
    AppendInfo, Handle, Isolation, LogConfig, LogOffsets, Offset, ReadBatches, Timestamp,
    TopicPartition,
};
use coremq_runtime::sync::Semaphore;

use crate::Error;
use crate::partition::{Consistency, Partition};
use crate::topics::{self, Topic, TopicStore, TopicTable};

/// Turns a topic's stored config overrides into its log's settings: the front end knows
/// what the names mean (Kafka's topic configs over the broker's defaults). Given the topic's
/// name and overrides; the reason, if they make no valid log config.
pub type LogConfigs =
    Arc<dyn Fn(&str, &BTreeMap<String, String>) -> Result<LogConfig, String> + Send + Sync>;

/// A shard's copy of the cluster metadata.
struct Metadata {
    topics: RefCell<Arc<TopicTable>>,
    store: TopicStore,
    /// Serializes topic changes (used on shard 0 only).
    changes: Semaphore,
    log_configs: LogConfigs,
}

impl Metadata {
    fn current() -> Rc<Metadata> {
        coremq_runtime::local::<Metadata>().expect("cluster metadata installed on every shard")
    }

    fn log_config(
        &self,
        name: &str,
        overrides: &BTreeMap<String, String>,
    ) -> Result<LogConfig, Error> {
        (self.log_configs)(name, overrides).map_err(|reason| Error::TopicConfig {
            topic: name.to_string(),
            reason,
        })
    }
}

/// What a front end holds to reach topics and partitions from any shard (`Send`, cheap to
/// clone).
#[derive(Clone)]
pub struct Cluster {
    handle: Handle,
}

impl Cluster {
    /// Loads the topic table from `meta_dir`, makes the engine's logs match it (logs of
    /// topics it does not list are deleted, missing ones created, configs applied), and
    /// installs it on every shard. Called once, off the shards, before anything else uses
    /// them.
    pub fn start(
        handle: Handle,
        meta_dir: &Path,
        log_configs: LogConfigs,
    ) -> Result<Cluster, Error> {
        let store = TopicStore::new(meta_dir);
        let table = store.load()?;
        futures_lite::future::block_on(reconcile(&handle, &log_configs, &table))?;
        let table = Arc::new(table);
        for shard in 0..handle.shard_count() {
            let (table, store, log_configs) = (table.clone(), store.clone(), log_configs.clone());
            futures_lite::future::block_on(handle.on_shard(shard, move |_| async move {
                coremq_runtime::install(Rc::new(Metadata {
                    topics: RefCell::new(table),
                    store,
                    changes: Semaphore::new(1),
                    log_configs,
                }));
                Ok(())
            }))?;
        }
        Ok(Cluster { handle })
    }

    /// This shard's copy of the topic table (call on a shard).
    pub fn topics(&self) -> Arc<TopicTable> {
        Metadata::current().topics.borrow().clone()
    }

    /// The shard that owns `partition`.
    pub fn shard_of(&self, partition: &TopicPartition) -> usize {
        self.handle.shard_of(partition)
    }

    /// Runs `work` with `partition` on the shard that owns it.
    pub async fn on_partition<T, F, Fut>(
        &self,
        partition: &TopicPartition,
        work: F,
    ) -> Result<T, coremq_engine::Error>
    where
        T: Send + 'static,
        F: FnOnce(Partition) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, coremq_engine::Error>> + 'static,
    {
        self.handle
            .with_log(partition, move |log| work(Partition::new(log)))
            .await
    }

    /// Checks and appends one batch to `partition` (see [`Partition::append`]).
    pub async fn append(
        &self,
        partition: &TopicPartition,
        batch: Bytes,
        consistency: Consistency,
    ) -> Result<AppendInfo, coremq_engine::Error> {
        self.on_partition(partition, move |partition| async move {
            partition.append_bytes(batch, consistency).await
        })
        .await
    }

    /// See [`Partition::read`].
    pub async fn read(
        &self,
        partition: &TopicPartition,
        from: Offset,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadBatches, coremq_engine::Error> {
        self.on_partition(partition, move |partition| async move {
            partition.read(from, max_bytes, isolation).await
        })
        .await
    }

    /// See [`Partition::wait_readable`].
    pub async fn wait_readable(
        &self,
        partition: &TopicPartition,
        from: Offset,
        isolation: Isolation,
        timeout: Duration,
    ) -> Result<bool, coremq_engine::Error> {
        self.on_partition(partition, move |partition| async move {
            Ok(partition.wait_readable(from, isolation, timeout).await)
        })
        .await
    }

    pub async fn offsets(
        &self,
        partition: &TopicPartition,
    ) -> Result<LogOffsets, coremq_engine::Error> {
        self.on_partition(
            partition,
            |partition| async move { Ok(partition.offsets()) },
        )
        .await
    }

    /// See [`Partition::offset_for_timestamp`].
    pub async fn offset_for_timestamp(
        &self,
        partition: &TopicPartition,
        timestamp: Timestamp,
    ) -> Result<Option<(Offset, Timestamp)>, coremq_engine::Error> {
        self.on_partition(partition, move |partition| async move {
            partition.offset_for_timestamp(timestamp).await
        })
        .await
    }

    /// See [`Partition::max_timestamp_record`].
    pub async fn max_timestamp_record(
        &self,
        partition: &TopicPartition,
    ) -> Result<Option<(Offset, Timestamp)>, coremq_engine::Error> {
        self.on_partition(partition, |partition| async move {
            partition.max_timestamp_record().await
        })
        .await
    }

    /// See [`Partition::delete_records`].
    pub async fn delete_records(
        &self,
        partition: &TopicPartition,
        offset: Offset,
    ) -> Result<Offset, coremq_engine::Error> {
        self.on_partition(partition, move |partition| async move {
            partition.delete_records(offset).await
        })
        .await
    }

    /// Creates topic `name` with `partitions` partitions and config `overrides` (checked by
    /// the front end). `Ok(None)` if it already exists.
    pub async fn create_topic(
        &self,
        name: String,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<Option<Arc<Topic>>, Error> {
        self.change_topics(move |handle, metadata| async move {
            if metadata.topics.borrow().get(&name).is_some() {
                return Ok((None, None));
            }
            let config = metadata.log_config(&name, &overrides)?;
            for partition in 0..partitions {
                let log = TopicPartition::new(name.clone(), partition)?;
                create_partition(&handle, &log, &config).await?;
            }
            let topic = Arc::new(Topic {
                name,
                id: topics::new_topic_id(),
                partitions,
                configs: overrides,
            });
            let table = metadata.topics.borrow().with(Topic::clone(&topic));
            Ok((Some(table), Some(topic)))
        })
        .await
    }

    /// Deletes topic `name`: out of the table first (so an interrupted deletion finishes at
    /// the next start), then its logs. `Ok(false)` if there is no such topic.
    pub async fn delete_topic(&self, name: String) -> Result<bool, Error> {
        let deleted = self
            .change_topics(move |_, metadata| async move {
                let table = metadata.topics.borrow().clone();
                let Some(topic) = table.get(&name).cloned() else {
                    return Ok((None, None));
                };
                Ok((Some(table.without(&name)), Some(topic)))
            })
            .await?;
        let Some(topic) = deleted else {
            return Ok(false);
        };
        for partition in 0..topic.partitions {
            let log = TopicPartition::new(topic.name.clone(), partition)?;
            self.handle.delete_log(&log).await?;
        }
        Ok(true)
    }

    /// Grows topic `name` to `count` partitions (checked by the front end to be more).
    pub async fn add_partitions(&self, name: String, count: u32) -> Result<(), Error> {
        self.change_topics(move |handle, metadata| async move {
            let table = metadata.topics.borrow().clone();
            let topic = table
                .get(&name)
                .cloned()
                .ok_or_else(|| Error::UnknownTopic { name: name.clone() })?;
            let config = metadata.log_config(&name, &topic.configs)?;
            for partition in topic.partitions..count {
                let log = TopicPartition::new(name.clone(), partition)?;
                create_partition(&handle, &log, &config).await?;
            }
            let grown = Topic {
                partitions: count.max(topic.partitions),
                ..Topic::clone(&topic)
            };
            Ok((Some(table.with(grown)), ()))
        })
        .await
    }

    /// Replaces topic `name`'s config overrides with `overrides` (checked by the front end)
    /// and applies them to every partition's log.
    pub async fn set_topic_configs(
        &self,
        name: String,
        overrides: BTreeMap<String, String>,
    ) -> Result<(), Error> {
        self.change_topics(move |handle, metadata| async move {
            let table = metadata.topics.borrow().clone();
            let Some(topic) = table.get(&name).cloned() else {
                return Ok((None, ()));
            };
            let config = metadata.log_config(&name, &overrides)?;
            let changed = Topic {
                configs: overrides,
                ..Topic::clone(&topic)
            };
            let table = table.with(changed);
            // The table first: a restart applies its configs to the logs (reconcile).
            metadata.store.save(&table).await?;
            for partition in 0..topic.partitions {
                let log = TopicPartition::new(name.clone(), partition)?;
                handle.set_config(&log, config.clone()).await?;
            }
            Ok((Some(table), ()))
        })
        .await
    }

    /// Runs `change` on shard 0, one topic change at a time; it returns the new table (if
    /// any), which is saved and installed on every shard before the answer.
    async fn change_topics<T, F, Fut>(&self, change: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Handle, Rc<Metadata>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(Option<TopicTable>, T), Error>> + 'static,
    {
        let handle = self.handle.clone();
        let changed = self.handle.on_shard(0, move |_| async move {
            let metadata = Metadata::current();
            let _change = metadata
                .changes
                .acquire_permit(1)
                .await
                .map_err(|_| coremq_engine::Error::ShuttingDown)?;
            let changed = async {
                let (table, answer) = change(handle.clone(), metadata.clone()).await?;
                if let Some(table) = table {
                    metadata.store.save(&table).await?;
                    publish(&handle, table).await;
                }
                Ok::<T, Error>(answer)
            };
            Ok(changed.await)
        });
        changed.await?
    }
}

/// Installs `table` on every shard.
async fn publish(handle: &Handle, table: TopicTable) {
    let table = Arc::new(table);
    for shard in 0..handle.shard_count() {
        let table = table.clone();
        let _ = handle
            .on_shard(shard, move |_| async move {
                *Metadata::current().topics.borrow_mut() = table;
                Ok(())
            })
            .await;
    }
}

/// Makes the logs match the topic table: deletes logs of topics (or partitions) it does not
/// list, left by an interrupted change, and creates missing ones.
/// The leader epoch of every partition of a single-node cluster: its one broker leads each
/// from the start and never hands over.
pub const SINGLE_NODE_LEADER_EPOCH: i32 = 0;

/// Creates `log` with `config`, led by this broker.
async fn create_partition(
    handle: &Handle,
    log: &TopicPartition,
    config: &LogConfig,
) -> Result<(), Error> {
    handle.create_log(log, Some(config.clone())).await?;
    lead(handle, log).await
}

/// Makes this broker the leader of `log` at the single-node epoch, which every batch it
/// appends from then on carries (logs written before epochs get it at their log end).
async fn lead(handle: &Handle, log: &TopicPartition) -> Result<(), Error> {
    handle
        .with_log(log, |log| async move {
            let led = log
                .leader_epochs()
                .latest()
                .is_some_and(|entry| entry.epoch >= SINGLE_NODE_LEADER_EPOCH);
            if led {
                return Ok(());
            }
            log.assign_leader_epoch(SINGLE_NODE_LEADER_EPOCH).await
        })
        .await?;
    Ok(())
}

async fn reconcile(
    handle: &Handle,
    log_configs: &LogConfigs,
    table: &TopicTable,
) -> Result<(), Error> {
    let logs = handle.list_logs().await?;
    for log in &logs {
        let known = table
            .get(&log.topic)
            .is_some_and(|topic| log.partition < topic.partitions);
        if !known {
            log::warn!("deleting log {log}: no topic lists it (an interrupted change)");
            handle.delete_log(log).await?;
        }
    }
    for topic in table.iter() {
        let config =
            log_configs(&topic.name, &topic.configs).map_err(|reason| Error::TopicConfig {
                topic: topic.name.clone(),
                reason,
            })?;
        for partition in 0..topic.partitions {
            let log = TopicPartition::new(topic.name.clone(), partition)?;
            if !logs.contains(&log) {
                create_partition(handle, &log, &config).await?;
                continue;
            }
            if handle.config(&log).await? != config {
                handle.set_config(&log, config.clone()).await?;
            }
            lead(handle, &log).await?;
        }
    }
    Ok(())
}
