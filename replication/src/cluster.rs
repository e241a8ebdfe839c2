//! The cluster as the front ends see it: the topic table every shard reads, topic changes
//! made one at a time on shard 0, and the partitions, reached on the shard that owns each.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coremq_engine::{
    AppendInfo, Handle, Isolation, LogConfig, LogOffsets, Offset, ReadBatches, Timestamp,
    TopicPartition,
};

use crate::Error;
use crate::controller::{ControllerError, Reply, Request};
use crate::leader::BrokerId;
use crate::metadata::MetadataImage;
use crate::node::{self, Event, Node, NodeConfig};
use crate::partition::{Consistency, Partition};
use crate::peers::Transport;
use crate::replica::{LeaderLinks, Replicas};
use crate::topics::{self, Topic, TopicTable};

/// Turns a topic's stored config overrides into its log's settings: the front end knows
/// what the names mean (Kafka's topic configs over the broker's defaults). Given the topic's
/// name and overrides; the reason, if they make no valid log config.
pub type LogConfigs =
    Arc<dyn Fn(&str, &BTreeMap<String, String>) -> Result<LogConfig, String> + Send + Sync>;

/// A shard's copy of the cluster metadata.
struct Metadata {
    topics: RefCell<Arc<TopicTable>>,
    image: RefCell<Arc<MetadataImage>>,
    /// The active controller, as this broker last heard.
    controller: Cell<Option<BrokerId>>,
}

impl Metadata {
    fn current() -> Rc<Metadata> {
        coremq_runtime::local::<Metadata>().expect("cluster metadata installed on every shard")
    }
}

/// What a front end holds to reach topics and partitions from any shard (`Send`, cheap to
/// clone).
#[derive(Clone)]
pub struct Cluster {
    handle: Handle,
    /// The broker's metadata node ([`crate::node`]).
    node: flume::Sender<Event>,
    log_configs: LogConfigs,
}

impl Cluster {
    /// Starts this broker's part of the cluster metadata on the shard that owns the metadata
    /// log and waits until it serves: the committed metadata applied, the broker registered,
    /// a pre-metadata-log topic table moved in, and the engine's logs made to match (see
    /// [`crate::node`]). The topic table is then installed on every shard. Called once, off
    /// the shards, before anything else uses them.
    pub fn start(
        handle: Handle,
        config: NodeConfig,
        log_configs: LogConfigs,
        transport: Option<Transport>,
        links: LeaderLinks,
    ) -> Result<Cluster, Error> {
        let (node, events) = flume::unbounded();
        let (me, lag_max_ms) = (config.broker_id, config.replica_lag_max_ms);
        for shard in 0..handle.shard_count() {
            let (node, links) = (node.clone(), links.clone());
            futures_lite::future::block_on(handle.on_shard(shard, move |_| async move {
                coremq_runtime::install(Rc::new(Metadata {
                    topics: RefCell::default(),
                    image: RefCell::default(),
                    controller: Cell::new(None),
                }));
                Replicas::install(me, node, links(), lag_max_ms);
                Ok(())
            }))?;
        }
        let (ready, started) = flume::bounded(1);
        let (log, _) = node::metadata_log();
        let (node_handle, node_configs) = (handle.clone(), log_configs.clone());
        let opened = handle.on_shard(handle.shard_of(&log), move |_| async move {
            match Node::open(config, node_handle, node_configs, transport).await {
                Ok(node) => {
                    coremq_runtime::spawn_local(node.run(events, ready)).detach();
                    Ok(Ok(()))
                }
                Err(error) => Ok(Err(error)),
            }
        });
        futures_lite::future::block_on(opened)??;
        started.recv().map_err(|_| Error::Stopped)??;
        Ok(Cluster {
            handle,
            node,
            log_configs,
        })
    }

    /// Controlled shutdown (Kafka's): asks the controller to move every leadership of this
    /// broker to another in-sync replica, and waits until it leads nothing or `patience`
    /// ends (a partition with no other in-sync replica keeps its leader). Whether it was
    /// done. Returns at once when this broker is the cluster's only one. Called off the
    /// shards.
    pub fn hand_over(&self, me: BrokerId, patience: Duration) -> bool {
        let started = std::time::Instant::now();
        if self.node.send(Event::ShuttingDown).is_err() {
            return false;
        }
        loop {
            let asked = futures_lite::future::block_on(self.ask(Request::Heartbeat {
                id: me,
                shutting_down: true,
            }));
            if let Ok(Reply::Heartbeat(reply)) = asked
                && reply.shutdown_ready
            {
                return true;
            }
            if started.elapsed() >= patience {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the metadata node (before the engine closes its logs).
    pub fn stop(&self) {
        let (stopped, done) = flume::bounded(1);
        if self.node.send(Event::Stop(stopped)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Asks `request` of the controller; the answer comes once its records are committed
    /// and carried out on this broker.
    async fn ask(&self, request: Request) -> Result<Reply, Error> {
        let (answer, answered) = flume::bounded(1);
        self.node
            .send(Event::Request(request, answer))
            .map_err(|_| Error::Stopped)?;
        answered.recv_async().await.map_err(|_| Error::Stopped)?
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

    /// This shard's copy of the topic table (call on a shard).
    pub fn topics(&self) -> Arc<TopicTable> {
        Metadata::current().topics.borrow().clone()
    }

    /// This shard's copy of the cluster metadata: brokers, and each partition's replicas,
    /// leader and epochs (call on a shard).
    pub fn image(&self) -> Arc<MetadataImage> {
        Metadata::current().image.borrow().clone()
    }

    /// The broker leading `partition`, as this broker's metadata has it; `None` when the
    /// partition has no leader or is unknown (call on a shard).
    pub fn leader_of(&self, partition: &TopicPartition) -> Option<BrokerId> {
        let image = Metadata::current().image.borrow().clone();
        let id = image.topic_id(&partition.topic)?;
        let state = image.partition(&id, partition.partition)?;
        Some(state.assignment.leader).filter(|&leader| leader >= 0)
    }

    /// The active controller, as this broker last heard (call on a shard).
    pub fn controller(&self) -> Option<BrokerId> {
        Metadata::current().controller.get()
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
    /// the front end), `replication_factor` replicas each placed by the controller, or those
    /// `assignments` names (one list per partition) where it is not empty. `Ok(None)` if it
    /// already exists.
    pub async fn create_topic(
        &self,
        name: String,
        partitions: u32,
        replication_factor: u16,
        overrides: BTreeMap<String, String>,
        assignments: Vec<Vec<BrokerId>>,
    ) -> Result<Option<Arc<Topic>>, Error> {
        self.log_config(&name, &overrides)?;
        let topic = Topic {
            name,
            id: topics::new_topic_id(),
            partitions,
            configs: overrides,
        };
        let request = Request::CreateTopic {
            name: topic.name.clone(),
            id: topic.id.0,
            partitions,
            replication_factor,
            configs: topic.configs.clone().into_iter().collect(),
            start: rand::random_range(0..u32::MAX),
            assignments,
        };
        match self.ask(request).await {
            Ok(_) => Ok(Some(Arc::new(topic))),
            Err(Error::Controller(ControllerError::TopicExists(_))) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Makes partition `partition` of topic `id`'s preferred replica its leader (Kafka's
    /// preferred-leader election).
    pub async fn elect_preferred(&self, id: [u8; 16], partition: u32) -> Result<(), Error> {
        self.ask(Request::ElectPreferred {
            topic: id,
            partition,
        })
        .await
        .map(|_| ())
    }

    /// Moves partition `partition` of topic `id` to the replicas `target`, or cancels the
    /// reassignment in progress when `None` (see [`crate::controller::Controller::reassign`]).
    /// The answer comes once the move has started, not ended.
    pub async fn reassign(
        &self,
        id: [u8; 16],
        partition: u32,
        target: Option<Vec<BrokerId>>,
    ) -> Result<(), Error> {
        self.ask(Request::Reassign {
            topic: id,
            partition,
            target,
        })
        .await
        .map(|_| ())
    }

    /// Deletes topic `name` and, on this broker, its logs. `Ok(false)` if there is no such
    /// topic.
    pub async fn delete_topic(&self, name: String) -> Result<bool, Error> {
        match self.ask(Request::DeleteTopic { name }).await {
            Ok(_) => Ok(true),
            Err(Error::Controller(ControllerError::UnknownTopic)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Grows topic `name` to `count` partitions (checked by the front end to be more),
    /// placed by the controller, or as `assignments` says (one list per new partition)
    /// where it is not empty.
    pub async fn add_partitions(
        &self,
        name: String,
        count: u32,
        assignments: Vec<Vec<BrokerId>>,
    ) -> Result<(), Error> {
        let request = Request::CreatePartitions {
            name: name.clone(),
            count,
            start: rand::random_range(0..u32::MAX),
            assignments,
        };
        match self.ask(request).await {
            Ok(_) => Ok(()),
            Err(Error::Controller(ControllerError::UnknownTopic)) => {
                Err(Error::UnknownTopic { name })
            }
            Err(error) => Err(error),
        }
    }

    /// Replaces topic `name`'s config overrides with `overrides` (checked by the front end);
    /// every replica's log takes them.
    pub async fn set_topic_configs(
        &self,
        name: String,
        overrides: BTreeMap<String, String>,
    ) -> Result<(), Error> {
        self.log_config(&name, &overrides)?;
        let request = Request::TopicConfigs {
            name,
            configs: overrides.into_iter().collect(),
        };
        match self.ask(request).await {
            Ok(_) | Err(Error::Controller(ControllerError::UnknownTopic)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// A block of producer ids for `broker`, cluster-wide unique, none below `at_least`:
    /// the first and how many.
    pub async fn allocate_producer_ids(
        &self,
        broker: BrokerId,
        at_least: i64,
    ) -> Result<(i64, i64), Error> {
        match self
            .ask(Request::AllocateProducerIds { broker, at_least })
            .await?
        {
            Reply::ProducerIds { first, count } => Ok((first, count)),
            other => unreachable!("the controller answers an allocation with ids: {other:?}"),
        }
    }
}

/// The partition epoch of partition `index` of topic `topic`, as this shard's metadata has
/// it (call on a shard).
pub(crate) fn partition_epoch(topic: &[u8; 16], index: u32) -> Option<i32> {
    let image = Metadata::current().image.borrow().clone();
    image
        .partition(topic, index)
        .map(|state| state.partition_epoch)
}

/// The address of broker `id`'s first listener, as this shard's metadata has it (call on a
/// shard).
pub(crate) fn broker_address(id: BrokerId) -> Option<(String, u16)> {
    let image = Metadata::current().image.borrow().clone();
    let endpoint = image.brokers.get(&id)?.endpoints.first()?.clone();
    Some((endpoint.host, endpoint.port))
}

/// Installs `image`, its topic table and `controller` on every shard.
pub(crate) async fn publish(handle: &Handle, image: &MetadataImage, controller: Option<BrokerId>) {
    let table = Arc::new(TopicTable::from_image(image));
    let image = Arc::new(image.clone());
    for shard in 0..handle.shard_count() {
        let (table, image) = (table.clone(), image.clone());
        let _ = handle
            .on_shard(shard, move |_| async move {
                let metadata = Metadata::current();
                *metadata.topics.borrow_mut() = table;
                *metadata.image.borrow_mut() = image;
                metadata.controller.set(controller);
                Ok(())
            })
            .await;
    }
}
