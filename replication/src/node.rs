//! A broker's part in the cluster metadata, one task on the shard that owns the metadata log:
//! its controller quorum voter ([`QuorumNode`] over a [`QuorumStore`] in the
//! `__cluster_metadata-0` log), or, on a broker outside the voters, its [`Observer`] fetching
//! the committed records from them; the active controller while that voter leads, the image built
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
use crate::controller::{Controller, ControllerError, ControllerSettings, Reply, Request};
use crate::leader::BrokerId;
use crate::metadata::{Endpoint, MetadataImage, Record};
use crate::observer::Observer;
use crate::peers::{self, Frame, Refusal, Transport};
use crate::quorum::{self, Output, QuorumNode, QuorumSettings};
use crate::quorum_store::QuorumStore;
use crate::replica::Replicas;
use crate::roles::{self, Change, PartitionName};
use crate::topics::TopicStore;

/// The metadata log's topic (one partition).
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// The clock the quorum ticks with.
const TICK: Duration = Duration::from_millis(100);
/// A request forwarded to the controller that has no answer by then fails as
/// [`Error::NotController`] (the frames were lost); it fails sooner when its voter refuses
/// connections or another voter leads.
const FORWARD_TIMEOUT_MS: u64 = 5_000;
/// How many metadata log entries a voter applies between two snapshots.
const SNAPSHOT_RECORDS: u64 = 10_000;
/// How often the active controller moves leaderships back to their preferred replicas
/// (Kafka checks every 300 s; a rolling restart should not leave leaders piled up for long).
const LEADER_REBALANCE_MS: u64 = 30_000;
/// Frames other brokers sent, taken per turn at most (the rest wait for the next turn).
const FRAMES_PER_TURN: usize = 256;
/// About how many bytes of records a voter sends an observer in one answer.
const OBSERVER_FETCH_BYTES: u64 = 1 << 20;

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
    /// The controller quorum's voters; this broker alone makes a quorum of one. A broker
    /// not among them observes the quorum ([`Observer`]).
    pub voters: Vec<BrokerId>,
    /// Where the voters reach this broker's controller listener: an observer sends it with
    /// each fetch, since the voters do not know it otherwise.
    pub controller_address: Option<crate::peers::Address>,
    /// The listeners clients are told of.
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    /// Where a data directory written before the metadata log keeps its topic table.
    pub meta_dir: PathBuf,
    /// How often the broker heartbeats the controller (Kafka's
    /// `broker.heartbeat.interval.ms`).
    pub heartbeat_ms: u64,
    /// A broker the controller has not heard from for this long is fenced (Kafka's
    /// `broker.session.timeout.ms`).
    pub session_timeout_ms: u64,
    /// A follower not caught up for this long leaves the in-sync replicas (Kafka's
    /// `replica.lag.time.max.ms`).
    pub replica_lag_max_ms: u64,
}

pub(crate) type Answer = flume::Sender<Result<Reply, Error>>;

/// Who hears how a request to the controller went.
enum Asker {
    /// A front end or this node itself; `None` when nobody waits (periodic heartbeats).
    Local(Option<Answer>),
    /// Another broker, by the id it gave its request.
    Remote { broker: BrokerId, id: u64 },
}

/// A request this broker forwarded to the controller.
struct Forwarded {
    answer: Option<Answer>,
    /// The voter it went to.
    to: BrokerId,
    deadline_ms: u64,
    /// The answer came: given once this node has applied the metadata log up to the index.
    outcome: Option<(Result<Reply, Error>, u64)>,
}

pub(crate) enum Event {
    Request(Request, Answer),
    /// The broker is stopping: its heartbeats ask the controller to move its leaderships
    /// away (controlled shutdown) from now on.
    ShuttingDown,
    Stop(flume::Sender<()>),
}

/// What woke the node.
enum Woken {
    Event(Event),
    Frame(Vec<u8>),
    Refused(BrokerId),
}

/// A request whose records are proposed: answered once the entry at `index` is committed
/// and applied while the voter still leads in `term`.
struct Waiter {
    index: u64,
    term: u64,
    reply: Reply,
    asker: Asker,
}

/// How this broker takes part in the controller quorum.
enum Membership {
    /// A voter, with its Raft state stored in the metadata log.
    Voter {
        quorum: Box<QuorumNode>,
        store: QuorumStore,
    },
    /// A broker outside the quorum, following the committed records.
    Observer(Observer),
}

impl Membership {
    /// The quorum leader, as this broker knows.
    fn leader(&self) -> Option<BrokerId> {
        match self {
            Membership::Voter { quorum, .. } => quorum.leader(),
            Membership::Observer(observer) => observer.leader(),
        }
    }

    /// The index of the last record applied.
    fn applied(&self) -> u64 {
        match self {
            Membership::Voter { quorum, .. } => quorum.applied(),
            Membership::Observer(observer) => observer.applied(),
        }
    }

    fn term(&self) -> u64 {
        match self {
            Membership::Voter { quorum, .. } => quorum.term(),
            Membership::Observer(_) => 0,
        }
    }

    fn is_leader(&self) -> bool {
        matches!(self, Membership::Voter { quorum, .. } if quorum.is_leader())
    }

    fn leads_caught_up(&self) -> bool {
        matches!(self, Membership::Voter { quorum, .. } if quorum.leads_caught_up())
    }
}

pub(crate) struct Node {
    config: NodeConfig,
    handle: Handle,
    log_configs: LogConfigs,
    membership: Membership,
    /// Where the observers this voter answered listen (told to the transport once each).
    observers: BTreeMap<BrokerId, peers::Address>,
    image: MetadataImage,
    /// The active controller, while this voter leads in the term it was made in.
    controller: Option<(u64, Controller)>,
    waiters: Vec<Waiter>,
    transport: Option<Transport>,
    /// Requests forwarded to the controller, by id.
    forwarded: BTreeMap<u64, Forwarded>,
    next_forward_id: u64,
    /// This run of the broker (a restart registers a new one).
    incarnation: u64,
    /// The logs match the image, and every change is carried out as it is applied.
    serving: bool,
    /// In a controlled shutdown: heartbeats ask for the leaderships to move away.
    shutting_down: bool,
    /// Who to tell once stopped, when a stop was asked for.
    stopping: Option<flume::Sender<()>>,
    next_heartbeat_ms: u64,
    /// When the next tick is due: ticks keep time however often frames and events come.
    next_tick_ms: u64,
    /// The controller the shards were last told of.
    published_controller: Option<BrokerId>,
    started: Instant,
}

impl Node {
    /// Opens the metadata log and the voter's stored state (on the log's shard); an
    /// observer keeps nothing, it fetches the records again at each start.
    pub(crate) async fn open(
        config: NodeConfig,
        handle: Handle,
        log_configs: LogConfigs,
        transport: Option<Transport>,
    ) -> Result<Node, Error> {
        let voters = &config.voters;
        let mut restored = MetadataImage::default();
        let membership = if voters.contains(&config.broker_id) {
            let (log, log_config) = metadata_log();
            let shard = coremq_engine::engine::Shard::current().expect("opened on a shard");
            shard.create_log(log.clone(), Some(log_config)).await?;
            let metadata_log = shard.log(&log)?;
            let path = metadata_log.dir().to_path_buf();
            let store = QuorumStore::new(metadata_log);
            let raft_voters = voters.iter().map(|&id| quorum::raft_id(id)).collect();
            let storage = store
                .load(raft_voters)
                .await
                .map_err(|reason| Error::Metadata { path, reason })?;
            let settings = QuorumSettings::default();
            let mut quorum =
                QuorumNode::restart(config.broker_id, storage, settings).map_err(|error| {
                    Error::Metadata {
                        path: config.meta_dir.clone(),
                        reason: format!("the controller quorum: {error}"),
                    }
                })?;
            if voters.len() == 1 {
                quorum.campaign();
            }
            let image = quorum.restored_image().map_err(|reason| Error::Metadata {
                path: config.meta_dir.clone(),
                reason: format!("the controller quorum's snapshot: {reason}"),
            })?;
            restored = image.unwrap_or_default();
            Membership::Voter {
                quorum: Box::new(quorum),
                store,
            }
        } else {
            log::info!(
                "cluster metadata: broker {} observing the controller quorum of {voters:?}",
                config.broker_id
            );
            Membership::Observer(Observer::new(voters.clone()))
        };
        Ok(Node {
            config,
            handle,
            log_configs,
            membership,
            observers: BTreeMap::new(),
            image: restored,
            controller: None,
            waiters: Vec::new(),
            transport,
            forwarded: BTreeMap::new(),
            next_forward_id: 0,
            incarnation: rand::random(),
            serving: false,
            shutting_down: false,
            stopping: None,
            next_heartbeat_ms: 0,
            next_tick_ms: TICK.as_millis() as u64,
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
        let register = Request::Register {
            id: self.config.broker_id,
            incarnation: self.incarnation,
            endpoints: self.config.endpoints.clone(),
            rack: self.config.rack.clone(),
        };
        self.ask_until_answered(register, events).await?;
        loop {
            let heartbeat = Request::Heartbeat {
                id: self.config.broker_id,
                shutting_down: false,
            };
            if let Reply::Heartbeat(reply) = self.ask_until_answered(heartbeat, events).await?
                && !reply.fenced
            {
                break;
            }
        }
        self.next_heartbeat_ms = self.now_ms() + self.config.heartbeat_ms;
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
        self.request(request, Asker::Local(Some(answer)));
        loop {
            if let Ok(reply) = answered.try_recv() {
                return reply;
            }
            self.turn(events).await?;
        }
    }

    /// [`Node::ask`], again after a tick while no controller answers (none is elected yet,
    /// or it moved): for requests that may be repeated.
    async fn ask_until_answered(
        &mut self,
        request: Request,
        events: &flume::Receiver<Event>,
    ) -> Result<Reply, Error> {
        loop {
            match self.ask(request.clone(), events).await {
                Err(Error::NotController) => {
                    let started = self.now_ms();
                    while self.now_ms() < started + TICK.as_millis() as u64 {
                        self.turn(events).await?;
                    }
                }
                answered => return answered,
            }
        }
    }

    /// Waits for one event or the next tick, handles it, then stores and applies what the
    /// quorum produced. Fails once a stop is asked for.
    async fn turn(&mut self, events: &flume::Receiver<Event>) -> Result<(), Error> {
        if self.stopping.is_some() {
            return Err(Error::Stopped);
        }
        let until_tick = Duration::from_millis(self.next_tick_ms.saturating_sub(self.now_ms()));
        let tick = async {
            coremq_runtime::sleep(until_tick).await;
            None
        };
        let frames = async {
            match &self.transport {
                Some(transport) => transport.incoming.recv_async().await.ok().map(Woken::Frame),
                None => std::future::pending().await,
            }
        };
        let refused = async {
            match &self.transport {
                Some(transport) => transport
                    .refused
                    .recv_async()
                    .await
                    .ok()
                    .map(Woken::Refused),
                None => std::future::pending().await,
            }
        };
        let frames = futures_lite::future::or(frames, refused);
        let event = async { events.recv_async().await.ok().map(Woken::Event) };
        let woken = futures_lite::future::or(futures_lite::future::or(event, frames), tick);
        match woken.await {
            Some(Woken::Event(Event::Request(request, answer))) => {
                self.request(request, Asker::Local(Some(answer)))
            }
            Some(Woken::Event(Event::ShuttingDown)) => self.shutting_down = true,
            Some(Woken::Event(Event::Stop(stopped))) => {
                self.stopping = Some(stopped);
                return Ok(());
            }
            Some(Woken::Frame(frame)) => {
                self.frame(&frame);
                let more: Vec<Vec<u8>> = match &self.transport {
                    Some(transport) => transport
                        .incoming
                        .try_iter()
                        .take(FRAMES_PER_TURN)
                        .collect(),
                    None => Vec::new(),
                };
                for frame in more {
                    self.frame(&frame);
                }
            }
            // Only the active controller acts on what its own links see: it is the voter
            // that keeps talking to every other.
            Some(Woken::Refused(id)) => {
                // Nothing listens there: what was forwarded to it is lost.
                self.give_up_forwarded(|to| to == id);
                if self.controller.is_some() {
                    self.request(Request::Refused { id }, Asker::Local(None));
                }
            }
            None => {}
        }
        // Due whether the sleep ended or something else woke the node first: a node woken
        // more often than every tick (frames, refusals) still ticks, so it still heartbeats.
        let now = self.now_ms();
        if now >= self.next_tick_ms {
            self.next_tick_ms = now + TICK.as_millis() as u64;
            self.tick();
        }
        self.drain().await
    }

    /// Takes one frame another broker sent.
    fn frame(&mut self, bytes: &[u8]) {
        let (from, frame) = match peers::decode(bytes) {
            Ok(decoded) => decoded,
            Err(reason) => {
                log::warn!("cluster metadata: a frame dropped: {reason}");
                return;
            }
        };
        match frame {
            Frame::Quorum(message) => {
                if let Membership::Voter { quorum, .. } = &mut self.membership {
                    quorum.step(message);
                }
            }
            Frame::Fetch {
                from: index,
                reply_to,
            } => self.answer_fetch(from, index, reply_to),
            Frame::Records {
                records,
                through,
                committed,
                leader,
            } => {
                if let Membership::Observer(observer) = &mut self.membership
                    && observer.on_records(from, records, through, committed, leader)
                {
                    self.observe();
                }
            }
            Frame::Snapshot {
                index,
                image,
                committed,
                leader,
            } => {
                if let Membership::Observer(observer) = &mut self.membership
                    && observer.on_snapshot(from, index, image, committed, leader)
                {
                    self.observe();
                }
            }
            Frame::Ask { id, request } => self.request(request, Asker::Remote { broker: from, id }),
            Frame::Answer { id, outcome } => {
                let Some(forwarded) = self.forwarded.get_mut(&id) else {
                    return;
                };
                forwarded.outcome = Some(match outcome {
                    Ok((reply, index)) => (Ok(reply), index),
                    Err(Refusal::NotController) => (Err(Error::NotController), 0),
                    Err(Refusal::Controller(error)) => (Err(Error::Controller(error)), 0),
                });
            }
        }
    }

    /// Answers an observer's fetch from `index` with the committed records from there,
    /// telling the transport where `observer` listens first.
    fn answer_fetch(&mut self, observer: BrokerId, index: u64, reply_to: peers::Address) {
        let Membership::Voter { quorum, .. } = &self.membership else {
            return;
        };
        let answer = match quorum.snapshot_for(index) {
            // What was asked is in a snapshot now: the image there, then records after it.
            Some((at, image)) => Frame::Snapshot {
                index: at,
                image,
                committed: quorum.committed(),
                leader: quorum.leader(),
            },
            None => {
                let (records, through) = quorum.committed_records(index, OBSERVER_FETCH_BYTES);
                Frame::Records {
                    records,
                    through,
                    committed: quorum.committed(),
                    leader: quorum.leader(),
                }
            }
        };
        if self.observers.get(&observer) != Some(&reply_to) {
            log::info!(
                "cluster metadata: broker {observer} observes from {}:{}",
                reply_to.0,
                reply_to.1
            );
            if let Some(transport) = &self.transport {
                let _ = transport.routes.send((observer, reply_to.clone()));
            }
            self.observers.insert(observer, reply_to);
        }
        self.send(observer, &answer);
    }

    /// An observer asks a voter for the records it has not applied, unless it waits for an
    /// answer.
    fn observe(&mut self) {
        let now = self.now_ms();
        let Membership::Observer(observer) = &mut self.membership else {
            return;
        };
        let (Some((voter, index)), Some(reply_to)) =
            (observer.fetch(now), self.config.controller_address.clone())
        else {
            return;
        };
        self.send(
            voter,
            &Frame::Fetch {
                from: index,
                reply_to,
            },
        );
    }

    fn send(&self, to: BrokerId, frame: &Frame) {
        if let Some(transport) = &self.transport {
            let _ = transport
                .outgoing
                .send((to, peers::encode(self.config.broker_id, frame)));
        }
    }

    /// Tells `asker` how its request went; `index` is the log index it must have applied
    /// first (a remote asker waits for it).
    fn answer(&self, asker: Asker, outcome: Result<Reply, Error>, index: u64) {
        match asker {
            Asker::Local(answer) => {
                if let Some(answer) = answer {
                    let _ = answer.send(outcome);
                }
            }
            Asker::Remote { broker, id } => {
                let outcome = match outcome {
                    Ok(reply) => Ok((reply, index)),
                    Err(Error::Controller(error)) => Err(Refusal::Controller(error)),
                    Err(_) => Err(Refusal::NotController),
                };
                self.send(broker, &Frame::Answer { id, outcome });
            }
        }
    }

    /// Fails at once the forwarded requests still without an answer whose voter `lost`
    /// says is gone, rather than at their deadline: their askers try again (the next
    /// controller, once one is known).
    fn give_up_forwarded(&mut self, lost: impl Fn(BrokerId) -> bool) {
        self.forwarded.retain(|_, forwarded| {
            if forwarded.outcome.is_some() || !lost(forwarded.to) {
                return true;
            }
            if let Some(answer) = forwarded.answer.take() {
                let _ = answer.send(Err(Error::NotController));
            }
            false
        });
    }

    /// Gives the answers that came for forwarded requests once their index is applied, and
    /// fails those that had none in time, or whose voter no longer leads.
    fn answer_forwarded(&mut self) {
        if let Some(leader) = self.membership.leader() {
            self.give_up_forwarded(|to| to != leader);
        }
        let (now, applied) = (self.now_ms(), self.membership.applied());
        self.forwarded.retain(|_, forwarded| {
            let outcome = match forwarded.outcome.take() {
                Some((outcome, index)) if index <= applied => outcome,
                held if now < forwarded.deadline_ms => {
                    forwarded.outcome = held;
                    return true;
                }
                _ => Err(Error::NotController),
            };
            if let Some(answer) = forwarded.answer.take() {
                let _ = answer.send(outcome);
            }
            false
        });
    }

    fn tick(&mut self) {
        match &mut self.membership {
            Membership::Voter { quorum, .. } => quorum.tick(),
            Membership::Observer(_) => self.observe(),
        }
        let now = self.now_ms();
        if let Some((_, controller)) = self.controller.as_mut() {
            let records = controller.tick(now);
            self.propose(records, Reply::Done, Asker::Local(None));
        }
        if self.serving && now >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now + self.config.heartbeat_ms;
            let heartbeat = Request::Heartbeat {
                id: self.config.broker_id,
                shutting_down: self.shutting_down,
            };
            self.request(heartbeat, Asker::Local(None));
        }
    }

    /// Hands `request` to the active controller (here, or forwarded to the voter that
    /// leads) and proposes its records; `asker` hears the outcome.
    fn request(&mut self, request: Request, asker: Asker) {
        let now = self.now_ms();
        let Some((_, controller)) = self.controller.as_mut() else {
            let leader = self
                .membership
                .leader()
                .filter(|&leader| leader != self.config.broker_id);
            match (leader, asker) {
                (Some(leader), Asker::Local(answer)) if self.transport.is_some() => {
                    let id = self.next_forward_id;
                    self.next_forward_id += 1;
                    self.forwarded.insert(
                        id,
                        Forwarded {
                            answer,
                            to: leader,
                            deadline_ms: now + FORWARD_TIMEOUT_MS,
                            outcome: None,
                        },
                    );
                    self.send(leader, &Frame::Ask { id, request });
                }
                (_, asker) => self.answer(asker, Err(Error::NotController), 0),
            }
            return;
        };
        match controller.handle(request, now) {
            Ok((records, reply)) => self.propose(records, reply, asker),
            Err(error) => self.answer(asker, Err(Error::Controller(error)), 0),
        }
    }

    /// Proposes `records`; `asker` hears `reply` once the last is committed and applied.
    fn propose(&mut self, records: Vec<crate::metadata::Record>, reply: Reply, asker: Asker) {
        if records.is_empty() {
            self.answer(asker, Ok(reply), self.membership.applied());
            return;
        }
        let Membership::Voter { quorum, .. } = &mut self.membership else {
            self.answer(asker, Err(Error::NotController), 0);
            return;
        };
        let mut last = quorum.applied();
        for record in &records {
            match quorum.propose(record) {
                Ok(index) => last = index,
                Err(error) => {
                    // The controller decided on an image this voter no longer leads for.
                    self.controller = None;
                    self.answer(asker, Err(Error::NotController), 0);
                    log::warn!("cluster metadata: a proposal failed: {error:?}");
                    return;
                }
            }
        }
        self.waiters.push(Waiter {
            index: last,
            term: self.membership.term(),
            reply,
            asker,
        });
    }

    /// Takes a snapshot of the image once `SNAPSHOT_RECORDS` entries were applied since
    /// the last (Kafka's `metadata.log.max.record.bytes.between.snapshots`, counted in
    /// entries): stored, then the entries it covers leave the log.
    async fn maybe_snapshot(&mut self) -> Result<(), Error> {
        let Membership::Voter { quorum, store } = &mut self.membership else {
            return Ok(());
        };
        if quorum.applied() < quorum.snapshot_index() + SNAPSHOT_RECORDS {
            return Ok(());
        }
        match quorum.take_snapshot(&self.image) {
            Ok(snapshot) => store.store_snapshot(&snapshot, false).await?,
            Err(error) => log::warn!("cluster metadata: no snapshot taken: {error}"),
        }
        Ok(())
    }

    /// Stores what the quorum asks to keep, applies what it committed (carrying out this
    /// broker's part once serving), answers the requests whose records are in, and makes
    /// or drops the active controller as leadership comes and goes.
    async fn drain(&mut self) -> Result<(), Error> {
        loop {
            let output = match &mut self.membership {
                Membership::Voter { quorum, .. } => quorum.drain(),
                Membership::Observer(observer) => {
                    let (image, committed) = observer.drain();
                    let snapshot = image.map(|(index, image)| {
                        let mut snapshot = raft::eraftpb::Snapshot::default();
                        snapshot.mut_metadata().index = index;
                        snapshot.data = image.into();
                        snapshot
                    });
                    Output {
                        committed,
                        snapshot,
                        ..Output::default()
                    }
                }
            };
            if output.entries.is_empty()
                && output.hard_state.is_none()
                && output.committed.is_empty()
                && output.messages.is_empty()
                && output.snapshot.is_none()
            {
                break;
            }
            let before = self.image.clone();
            if let Some(snapshot) = &output.snapshot {
                // A voter's image replaces this node's, which lagged behind what that voter
                // still had of the log.
                if let Membership::Voter { store, .. } = &self.membership {
                    store.store_snapshot(snapshot, true).await?;
                }
                match MetadataImage::decode(snapshot.get_data()) {
                    Ok(image) => self.image = image,
                    Err(reason) => log::error!("cluster metadata: a snapshot refused: {reason}"),
                }
            }
            if let Membership::Voter { store, .. } = &self.membership {
                store.append(&output.entries).await?;
                if let Some(hard_state) = &output.hard_state {
                    store.set_hard_state(hard_state).await?;
                }
            }
            for (to, message) in output.messages {
                self.send(to, &Frame::Quorum(message));
            }
            if !output.committed.is_empty() || output.snapshot.is_some() {
                for (index, record) in &output.committed {
                    if let Err(reason) = self.image.apply(record) {
                        // Every voter refuses the same record alike.
                        log::error!("metadata record {index} refused: {reason}");
                    } else if let Record::BrokerFence { id, fenced } = record
                        && self.serving
                    {
                        let state = if *fenced { "fenced" } else { "back in session" };
                        log::info!("cluster metadata: broker {id} {state}");
                    }
                }
                if self.serving {
                    for change in roles::changes(&before, &self.image, self.config.broker_id) {
                        self.carry_out(change).await?;
                    }
                }
            }
            self.maybe_snapshot().await?;
            let controller = self.membership.leader();
            let changed = !output.committed.is_empty() || output.snapshot.is_some();
            if changed || controller != self.published_controller {
                if controller != self.published_controller {
                    log::info!(
                        "cluster metadata: the active controller is {}",
                        controller.map_or("unknown".to_string(), |id| format!("broker {id}"))
                    );
                }
                self.published_controller = controller;
                publish(&self.handle, &self.image, controller).await;
            }
        }
        self.answer_waiters();
        self.answer_forwarded();
        let term = self.membership.term();
        if self.membership.leads_caught_up() {
            if self.controller.as_ref().is_none_or(|(at, _)| *at != term) {
                let settings = ControllerSettings {
                    session_timeout_ms: self.config.session_timeout_ms,
                    rebalance_interval_ms: Some(LEADER_REBALANCE_MS),
                    refused_grace_ms: 2 * self.config.heartbeat_ms,
                };
                let controller = Controller::new(self.image.clone(), self.now_ms(), settings);
                self.controller = Some((term, controller));
            }
        } else if !self.membership.is_leader() {
            self.controller = None;
        }
        Ok(())
    }

    fn answer_waiters(&mut self) {
        let (term, leads, applied) = (
            self.membership.term(),
            self.membership.is_leader(),
            self.membership.applied(),
        );
        let mut done = Vec::new();
        self.waiters.retain_mut(|waiter| {
            let outcome = if waiter.term != term || !leads {
                // Leadership moved on: the entry may or may not be committed.
                Err(Error::NotController)
            } else if waiter.index <= applied {
                Ok(waiter.reply)
            } else {
                return true;
            };
            let asker = std::mem::replace(&mut waiter.asker, Asker::Local(None));
            done.push((asker, outcome, waiter.index));
            false
        });
        for (asker, outcome, index) in done {
            self.answer(asker, outcome, index);
        }
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
                assignments: Vec::new(),
            };
            match self.ask_until_answered(create, events).await {
                // Created by an earlier try whose answer was lost.
                Ok(_) | Err(Error::Controller(ControllerError::TopicExists(_))) => {}
                Err(error) => return Err(error),
            }
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
                let resigned = log.clone();
                self.on_replicas(&log, move |replicas| replicas.resign(&resigned))
                    .await?;
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
                let (topic, configs) = self.topic_of(&partition);
                self.handle
                    .with_log(&log_of(&partition)?, move |log| async move {
                        let led = log
                            .leader_epochs()
                            .latest()
                            .is_some_and(|entry| entry.epoch >= epoch);
                        if !led {
                            log.assign_leader_epoch(epoch).await?;
                        }
                        if let Some(replicas) = Replicas::current() {
                            let index = partition.partition;
                            replicas.lead(log, topic, index, &assignment, &configs);
                        }
                        Ok(())
                    })
                    .await?;
            }
            Change::Follow {
                partition,
                leader,
                leader_epoch,
            } => {
                let (topic, _) = self.topic_of(&partition);
                self.handle
                    .with_log(&log_of(&partition)?, move |log| async move {
                        if let Some(replicas) = Replicas::current() {
                            replicas.follow(log, topic, leader, leader_epoch);
                        }
                        Ok(())
                    })
                    .await?;
            }
            Change::AssignmentChanged {
                partition,
                assignment,
            } => {
                let log = log_of(&partition)?;
                let changed = log.clone();
                self.on_replicas(&log, move |replicas| {
                    replicas.assignment_changed(&changed, &assignment)
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
                        let log = log_of(&partition)?;
                        self.handle.set_config(&log, config.clone()).await?;
                        let (changed, configs) = (log.clone(), configs.clone());
                        self.on_replicas(&log, move |replicas| {
                            replicas.configs_changed(&changed, &configs)
                        })
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
                let log = log_of(&partition)?;
                let resigned = log.clone();
                self.on_replicas(&log, move |replicas| replicas.resign(&resigned))
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs `work` with the replica registry of the shard owning `log`.
    async fn on_replicas(
        &self,
        log: &TopicPartition,
        work: impl FnOnce(&Replicas) + Send + 'static,
    ) -> Result<(), Error> {
        self.handle
            .on_shard(self.handle.shard_of(log), move |_| async move {
                if let Some(replicas) = Replicas::current() {
                    work(&replicas);
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// The id and configs of `partition`'s topic in the image.
    fn topic_of(&self, partition: &PartitionName) -> ([u8; 16], BTreeMap<String, String>) {
        let id = self.image.topic_id(&partition.topic).unwrap_or_default();
        let configs = self
            .image
            .topics
            .get(&id)
            .map(|topic| topic.configs.clone())
            .unwrap_or_default();
        (id, configs)
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
