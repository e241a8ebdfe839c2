//! A broker's part in the cluster metadata, one task on the shard that owns the metadata log:
//! its controller quorum voter ([`QuorumNode`] over a [`QuorumStore`] in the
//! `__cluster_metadata-0` log), the active controller while that voter leads, the image built
//! by applying the committed records, and the broker's own replicas made to match the image
//! ([`roles::changes`]), with the topic table published to every shard.
//!
//! Requests to the controller (topic changes from the front ends, the broker's own
//! registration and heartbeats) come in over a channel and are answered once their records
//! are committed and carried out here, so a front end that created a topic finds its logs.
//!
//! Starting: the committed records are applied to the image, and nothing is done to the logs
//! until the voter leads with all of them applied (replaying the history would delete and
//! create logs that are long settled). Then the broker registers and heartbeats, topics from
//! a data directory written before the metadata log (`meta/topics.json`) are created as
//! records with their ids, and the logs are made to match the image once: missing ones
//! created, configs applied, leaderships taken, logs no topic assigns here deleted. Only then
//! does the broker serve.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use coremq_engine::{Handle, LogConfig, TopicPartition};

use crate::Error;
use crate::cluster::{LogConfigs, publish};
use crate::controller::{Controller, ControllerSettings, Reply, Request};
use crate::leader::BrokerId;
use crate::metadata::{Endpoint, MetadataImage};
use crate::quorum::{self, QuorumNode, QuorumSettings};
use crate::quorum_store::QuorumStore;
use crate::roles::{self, Change, PartitionName};
use crate::topics::TopicStore;

/// The metadata log's topic (one partition).
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// The clock the quorum ticks with.
const TICK: Duration = Duration::from_millis(100);
/// How often the broker heartbeats the controller (Kafka's `broker.heartbeat.interval.ms`).
const HEARTBEAT_MS: u64 = 2_000;
/// A broker not heard from for this long is fenced (Kafka's `broker.session.timeout.ms`).
const SESSION_TIMEOUT_MS: u64 = 9_000;

/// The metadata log: its partition, and settings that keep every entry (there are no
/// snapshots yet) and fsync each append (a vote or an entry must survive a crash).
pub fn metadata_log() -> (TopicPartition, LogConfig) {
    let log = TopicPartition::new(METADATA_TOPIC, 0).expect("a valid name");
    let config = LogConfig {
        segment_bytes: 64 << 20,
        retention_ms: None,
        retention_bytes: None,
        durability: coremq_engine::Durability::Always,
        ..LogConfig::default()
    };
    (log, config)
}

/// Who this broker is.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub broker_id: BrokerId,
    /// The listeners clients are told of.
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    /// Where a data directory written before the metadata log keeps its topic table.
    pub meta_dir: PathBuf,
}

pub(crate) type Answer = flume::Sender<Result<Reply, Error>>;

pub(crate) enum Event {
    Request(Request, Answer),
    Stop(flume::Sender<()>),
}

/// A request whose records are proposed: answered once the entry at `index` is committed
/// and applied while the voter still leads in `term`.
struct Waiter {
    index: u64,
    term: u64,
    reply: Reply,
    answer: Option<Answer>,
}

pub(crate) struct Node {
    config: NodeConfig,
    handle: Handle,
    log_configs: LogConfigs,
    quorum: QuorumNode,
    store: QuorumStore,
    image: MetadataImage,
    /// The active controller, while this voter leads in the term it was made in.
    controller: Option<(u64, Controller)>,
    waiters: Vec<Waiter>,
    /// This run of the broker (a restart registers a new one).
    incarnation: u64,
    /// The logs match the image, and every change is carried out as it is applied.
    serving: bool,
    /// Who to tell once stopped, when a stop was asked for.
    stopping: Option<flume::Sender<()>>,
    next_heartbeat_ms: u64,
    /// The controller the shards were last told of.
    published_controller: Option<BrokerId>,
    started: Instant,
}

impl Node {
    /// Opens the metadata log and the voter's stored state (on the log's shard).
    pub(crate) async fn open(
        config: NodeConfig,
        handle: Handle,
        log_configs: LogConfigs,
    ) -> Result<Node, Error> {
        let (log, log_config) = metadata_log();
        let shard = coremq_engine::engine::Shard::current().expect("opened on a shard");
        shard.create_log(log.clone(), Some(log_config)).await?;
        let metadata_log = shard.log(&log)?;
        let path = metadata_log.dir().to_path_buf();
        let store = QuorumStore::new(metadata_log);
        let voters = [config.broker_id];
        let raft_voters = voters.iter().map(|&id| quorum::raft_id(id)).collect();
        let storage = store
            .load(raft_voters)
            .await
            .map_err(|reason| Error::Metadata { path, reason })?;
        let mut quorum = QuorumNode::restart(config.broker_id, storage, QuorumSettings::default())
            .map_err(|error| Error::Metadata {
                path: config.meta_dir.clone(),
                reason: format!("the controller quorum: {error}"),
            })?;
        if voters.len() == 1 {
            quorum.campaign();
        }
        Ok(Node {
            config,
            handle,
            log_configs,
            quorum,
            store,
            image: MetadataImage::default(),
            controller: None,
            waiters: Vec::new(),
            incarnation: rand::random(),
            serving: false,
            stopping: None,
            next_heartbeat_ms: 0,
            published_controller: None,
            started: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs the node: catches up, registers, migrates and reconciles (then says so on
    /// `ready`), and serves until stopped.
    pub(crate) async fn run(
        mut self,
        events: flume::Receiver<Event>,
        ready: flume::Sender<Result<(), Error>>,
    ) {
        let started = self.start(&events).await;
        let failed = started.is_err();
        let _ = ready.send(started);
        if !failed {
            while self.stopping.is_none() {
                if let Err(error) = self.turn(&events).await {
                    log::error!("cluster metadata stopped: {error}");
                    break;
                }
            }
        }
        if let Some(stopped) = self.stopping.take() {
            let _ = stopped.send(());
        }
    }

    /// Everything before serving.
    async fn start(&mut self, events: &flume::Receiver<Event>) -> Result<(), Error> {
        while !self.quorum.leads_caught_up() {
            self.turn(events).await?;
        }
        let register = Request::Register {
            id: self.config.broker_id,
            incarnation: self.incarnation,
            endpoints: self.config.endpoints.clone(),
            rack: self.config.rack.clone(),
        };
        self.ask(register, events).await?;
        loop {
            let heartbeat = Request::Heartbeat {
                id: self.config.broker_id,
                shutting_down: false,
            };
            if let Reply::Heartbeat(reply) = self.ask(heartbeat, events).await?
                && !reply.fenced
            {
                break;
            }
        }
        self.next_heartbeat_ms = self.now_ms() + HEARTBEAT_MS;
        self.migrate(events).await?;
        self.reconcile().await?;
        self.serving = true;
        Ok(())
    }

    /// Asks this broker's own request of the controller and waits for its answer.
    async fn ask(
        &mut self,
        request: Request,
        events: &flume::Receiver<Event>,
    ) -> Result<Reply, Error> {
        let (answer, answered) = flume::bounded(1);
        self.request(request, Some(answer));
        loop {
            if let Ok(reply) = answered.try_recv() {
                return reply;
            }
            self.turn(events).await?;
        }
    }

    /// Waits for one event or the next tick, handles it, then stores and applies what the
    /// quorum produced. Fails once a stop is asked for.
    async fn turn(&mut self, events: &flume::Receiver<Event>) -> Result<(), Error> {
        if self.stopping.is_some() {
            return Err(Error::Stopped);
        }
        let tick = async {
            coremq_runtime::sleep(TICK).await;
            None
        };
        let event = futures_lite::future::or(async { events.recv_async().await.ok() }, tick);
        match event.await {
            Some(Event::Request(request, answer)) => self.request(request, Some(answer)),
            Some(Event::Stop(stopped)) => {
                self.stopping = Some(stopped);
                return Ok(());
            }
            None => self.tick(),
        }
        self.drain().await
    }

    fn tick(&mut self) {
        self.quorum.tick();
        let now = self.now_ms();
        if let Some((_, controller)) = self.controller.as_mut() {
            let records = controller.tick(now);
            self.propose(records, Reply::Done, None);
        }
        if self.serving && now >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now + HEARTBEAT_MS;
            let heartbeat = Request::Heartbeat {
                id: self.config.broker_id,
                shutting_down: false,
            };
            self.request(heartbeat, None);
        }
    }

    /// Hands `request` to the active controller and proposes its records; `answer` hears
    /// the outcome.
    fn request(&mut self, request: Request, answer: Option<Answer>) {
        let now = self.now_ms();
        let Some((_, controller)) = self.controller.as_mut() else {
            if let Some(answer) = answer {
                let _ = answer.send(Err(Error::NotController));
            }
            return;
        };
        match controller.handle(request, now) {
            Ok((records, reply)) => self.propose(records, reply, answer),
            Err(error) => {
                if let Some(answer) = answer {
                    let _ = answer.send(Err(Error::Controller(error)));
                }
            }
        }
    }

    /// Proposes `records`; `answer` hears `reply` once the last is committed and applied.
    fn propose(
        &mut self,
        records: Vec<crate::metadata::Record>,
        reply: Reply,
        answer: Option<Answer>,
    ) {
        if records.is_empty() {
            if let Some(answer) = answer {
                let _ = answer.send(Ok(reply));
            }
            return;
        }
        let mut last = self.quorum.applied();
        for record in &records {
            match self.quorum.propose(record) {
                Ok(index) => last = index,
                Err(error) => {
                    // The controller decided on an image this voter no longer leads for.
                    self.controller = None;
                    if let Some(answer) = answer {
                        let _ = answer.send(Err(Error::NotController));
                    }
                    log::warn!("cluster metadata: a proposal failed: {error:?}");
                    return;
                }
            }
        }
        self.waiters.push(Waiter {
            index: last,
            term: self.quorum.term(),
            reply,
            answer,
        });
    }

    /// Stores what the quorum asks to keep, applies what it committed (carrying out this
    /// broker's part once serving), answers the requests whose records are in, and makes
    /// or drops the active controller as leadership comes and goes.
    async fn drain(&mut self) -> Result<(), Error> {
        loop {
            let output = self.quorum.drain();
            if output.entries.is_empty()
                && output.hard_state.is_none()
                && output.committed.is_empty()
            {
                break;
            }
            self.store.append(&output.entries).await?;
            if let Some(hard_state) = &output.hard_state {
                self.store.set_hard_state(hard_state).await?;
            }
            // One voter has nobody to send to; the voters' transport comes with more.
            if !output.committed.is_empty() {
                let before = self.image.clone();
                for (index, record) in &output.committed {
                    if let Err(reason) = self.image.apply(record) {
                        // Every voter refuses the same record alike.
                        log::error!("metadata record {index} refused: {reason}");
                    }
                }
                if self.serving {
                    for change in roles::changes(&before, &self.image, self.config.broker_id) {
                        self.carry_out(change).await?;
                    }
                }
            }
            let controller = self.quorum.leader();
            if !output.committed.is_empty() || controller != self.published_controller {
                self.published_controller = controller;
                publish(&self.handle, &self.image, controller).await;
            }
        }
        self.answer_waiters();
        let term = self.quorum.term();
        if self.quorum.leads_caught_up() {
            if self.controller.as_ref().is_none_or(|(at, _)| *at != term) {
                let settings = ControllerSettings {
                    session_timeout_ms: SESSION_TIMEOUT_MS,
                };
                let controller = Controller::new(self.image.clone(), self.now_ms(), settings);
                self.controller = Some((term, controller));
            }
        } else if !self.quorum.is_leader() {
            self.controller = None;
        }
        Ok(())
    }

    fn answer_waiters(&mut self) {
        let (term, leads, applied) = (
            self.quorum.term(),
            self.quorum.is_leader(),
            self.quorum.applied(),
        );
        self.waiters.retain_mut(|waiter| {
            let outcome = if waiter.term != term || !leads {
                // Leadership moved on: the entry may or may not be committed.
                Err(Error::NotController)
            } else if waiter.index <= applied {
                Ok(waiter.reply)
            } else {
                return true;
            };
            if let Some(answer) = waiter.answer.take() {
                let _ = answer.send(outcome);
            }
            false
        });
    }

    /// Creates, as records with their ids, the topics a data directory written before the
    /// metadata log lists in `meta/topics.json` (each led here), then removes the file.
    async fn migrate(&mut self, events: &flume::Receiver<Event>) -> Result<(), Error> {
        let store = TopicStore::new(&self.config.meta_dir);
        let Some(table) = store.load()? else {
            return Ok(());
        };
        for topic in table.iter() {
            if self.image.topic_id(&topic.name).is_some() {
                continue;
            }
            log::info!(
                "moving topic {} ({} partitions) into the cluster metadata",
                topic.name,
                topic.partitions
            );
            let create = Request::CreateTopic {
                name: topic.name.clone(),
                id: topic.id.0,
                partitions: topic.partitions,
                replication_factor: 1,
                configs: topic.configs.clone().into_iter().collect(),
                start: 0,
            };
            self.ask(create, events).await?;
        }
        store.remove().await
    }

    /// Makes the logs match the image: every replica assigned here exists with its topic's
    /// configs and takes its role; logs of partitions not assigned here are deleted (left by
    /// a deletion this broker did not finish, or moved away while it was down).
    async fn reconcile(&mut self) -> Result<(), Error> {
        let (metadata_log, _) = metadata_log();
        let me = self.config.broker_id;
        let changes = roles::changes(&MetadataImage::default(), &self.image, me);
        let mut hosted = std::collections::BTreeSet::new();
        for change in &changes {
            if let Change::CreateLog { partition, .. } = change {
                hosted.insert(log_of(partition)?);
            }
        }
        for log in self.handle.list_logs().await? {
            if log != metadata_log && !hosted.contains(&log) {
                log::warn!("deleting log {log}: no topic assigns it to this broker");
                self.handle.delete_log(&log).await?;
            }
        }
        for change in changes {
            self.carry_out(change).await?;
        }
        Ok(())
    }

    /// Does one thing the metadata asks of this broker's replicas.
    async fn carry_out(&mut self, change: Change) -> Result<(), Error> {
        match change {
            Change::CreateLog { partition, configs } => {
                let config = self.log_config(&partition.topic, &configs)?;
                let log = log_of(&partition)?;
                let created = self.handle.create_log(&log, Some(config.clone())).await?;
                if !created && self.handle.config(&log).await? != config {
                    self.handle.set_config(&log, config).await?;
                }
            }
            Change::DeleteLog { partition } => {
                let log = log_of(&partition)?;
                match self.handle.delete_log(&log).await {
                    Ok(()) | Err(coremq_engine::Error::UnknownLog { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            Change::Lead {
                partition,
                assignment,
            } => {
                let epoch = assignment.leader_epoch;
                self.handle
                    .with_log(&log_of(&partition)?, move |log| async move {
                        let led = log
                            .leader_epochs()
                            .latest()
                            .is_some_and(|entry| entry.epoch >= epoch);
                        if led {
                            return Ok(());
                        }
                        log.assign_leader_epoch(epoch).await
                    })
                    .await?;
            }
            Change::Configs { topic, configs } => {
                let config = self.log_config(&topic, &configs)?;
                let id = self.image.topic_id(&topic);
                let count = id
                    .and_then(|id| self.image.topics.get(&id))
                    .map_or(0, |t| t.partitions.len() as u32);
                for index in 0..count {
                    let partition = PartitionName {
                        topic: topic.clone(),
                        partition: index,
                    };
                    let assigned = id
                        .and_then(|id| self.image.partition(&id, index))
                        .is_some_and(|state| {
                            state.assignment.replicas.contains(&self.config.broker_id)
                        });
                    if assigned {
                        self.handle
                            .set_config(&log_of(&partition)?, config.clone())
                            .await?;
                    }
                }
            }
            Change::Offline { partition } => {
                log::warn!(
                    "{}-{}: offline, no in-sync replica is alive",
                    partition.topic,
                    partition.partition
                );
            }
            // A single broker leads every partition it has; following and in-sync changes
            // come with replication between brokers.
            Change::IsrChanged { .. } | Change::Follow { .. } => {
                log::warn!("cluster metadata: {change:?} needs replication between brokers");
            }
        }
        Ok(())
    }

    fn log_config(
        &self,
        topic: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<LogConfig, Error> {
        (self.log_configs)(topic, configs).map_err(|reason| Error::TopicConfig {
            topic: topic.to_string(),
            reason,
        })
    }
}

fn log_of(partition: &PartitionName) -> Result<TopicPartition, Error> {
    Ok(TopicPartition::new(
        partition.topic.clone(),
        partition.partition,
    )?)
}
