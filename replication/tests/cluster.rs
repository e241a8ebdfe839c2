//! A whole replicated partition in a seeded simulation: three nodes, each a controller voter
//! (raft-rs), a broker applying the metadata log, and a replica of one partition with
//! replication factor 3 and `min.insync.replicas` 2, driven by the same state machines the
//! broker uses (`Controller`, `QuorumNode`, `LeaderState`, `FollowerState`). A client writes
//! with acks=all to whoever the metadata says leads. The network drops, delays, reorders and
//! duplicates messages and cuts nodes off; nodes crash and restart. A crash loses what a
//! replica's log held but had not fsynced yet: appends reach the page cache first and an
//! fsync some steps later makes them durable, as the engine's writer does; the leader counts
//! its own log as far as it is fsynced, and a follower fetches again (reporting its progress)
//! only once its last append is fsynced, as the broker's fetcher does under the default
//! `flush.messages=1`. Raft's entries and votes survive whole: raft-rs has them persisted
//! before any message that depends on them leaves, and the broker fsyncs them first, so a
//! crash between two steps loses nothing another node saw.
//!
//! Checked throughout: one leader per leader epoch, and a leader never acknowledges a record
//! its epoch did not write. At the end the faults stop and the cluster settles: every
//! acknowledged record is in the leader's log at the offset it was acknowledged with, and the
//! in-sync replicas' logs are identical up to the high watermark.
//!
//! `CLUSTER_SEED=n` replays one seed; `CLUSTER_SEEDS=n` runs seeds 0..n (default 2000).

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use coremq_engine::Offset;
use coremq_engine::epochs::LeaderEpochs;
use coremq_replication::controller::{Controller, ControllerSettings, NO_LEADER, Placement};
use coremq_replication::follower::{FollowerState, LocalLog, Request, Truncate};
use coremq_replication::leader::{AckState, BrokerId, LeaderState, ReplicaSettings};
use coremq_replication::metadata::MetadataImage;
use coremq_replication::quorum::{QuorumNode, decode_message, encode_message};
use coremq_replication::roles::{self, Change};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NODES: [BrokerId; 3] = [0, 1, 2];
const TOPIC: [u8; 16] = [3; 16];
const STEP_MS: u64 = 10;
const SETTINGS: ReplicaSettings = ReplicaSettings {
    lag_max_ms: 300,
    min_insync: 2,
};

/// A replica's log: each offset's (leader epoch, value), and the epochs' starts.
#[derive(Debug, Clone, Default)]
struct Log {
    records: Vec<(i32, u64)>,
    /// How many of `records` are fsynced; a crash loses the rest.
    durable: usize,
    epochs: LeaderEpochs,
    /// The high watermark last learnt (kept across a crash as a lower bound).
    committed: u64,
}

impl Log {
    fn end(&self) -> Offset {
        Offset(self.records.len() as u64)
    }

    fn append(&mut self, epoch: i32, value: u64) {
        self.epochs.assign(epoch, self.end());
        self.records.push((epoch, value));
    }

    /// Where the log ends on disk.
    fn durable_end(&self) -> Offset {
        Offset(self.durable as u64)
    }

    fn is_synced(&self) -> bool {
        self.durable == self.records.len()
    }

    fn sync(&mut self) {
        self.durable = self.records.len();
    }

    /// A crash: what was not fsynced is gone, and with it the epochs that began there (the
    /// engine truncates its epoch cache to the log end it recovers).
    fn crash(&mut self) {
        self.records.truncate(self.durable);
        self.epochs.truncate_from_end(self.end());
        self.committed = self.committed.min(self.durable as u64);
    }

    fn truncate(&mut self, truncate: Truncate) {
        match truncate {
            Truncate::Nothing => {}
            Truncate::To(offset) => {
                // The engine's truncation is durable before it returns.
                self.records.truncate(offset.0 as usize);
                self.durable = self.durable.min(self.records.len());
                self.epochs.truncate_from_end(self.end());
                self.committed = self.committed.min(offset.0);
            }
            Truncate::Restart(_) => unreachable!("logs start at 0 here"),
        }
    }
}

impl LocalLog for Log {
    fn log_end(&self) -> Offset {
        self.end()
    }
    fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest().map(|entry| entry.epoch)
    }
    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, Offset)> {
        self.epochs.end_offset_for(epoch, self.end())
    }
    fn committed(&self) -> Offset {
        Offset(self.committed)
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Raft(Vec<u8>),
    /// A broker's heartbeat; it (re)registers when the controller does not know this run.
    Heartbeat {
        from: BrokerId,
        incarnation: u64,
    },
    AlterPartition {
        from: BrokerId,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: BTreeSet<BrokerId>,
    },
    EpochEnd {
        from: BrokerId,
        leader_epoch: i32,
        epoch: i32,
    },
    EpochEndReply {
        leader_epoch: i32,
        answer: Option<(i32, Offset)>,
    },
    Fetch {
        from: BrokerId,
        leader_epoch: i32,
        offset: Offset,
    },
    FetchReply {
        leader_epoch: i32,
        from_offset: Offset,
        records: Vec<(i32, u64)>,
        high_watermark: Offset,
    },
    /// An operator moves the partition to `target` (AlterPartitionReassignments), or
    /// cancels the move in progress.
    Reassign {
        target: Option<Vec<BrokerId>>,
    },
}

enum Role {
    None,
    Leader(LeaderState),
    Follower {
        state: FollowerState,
        /// The step its outstanding request was sent at.
        waiting_since: Option<u64>,
    },
}

struct Node {
    id: BrokerId,
    up: bool,
    quorum: QuorumNode,
    image: MetadataImage,
    controller: Option<(u64, Controller)>,
    log: Log,
    role: Role,
    /// Appends waiting for acks=all: (offset, value).
    pending: VecDeque<(Offset, u64)>,
    /// Which run of the broker this is (a restart is a new one).
    incarnation: u64,
    /// Whether this run took its replicas' roles: only once the metadata has it registered
    /// and unfenced, as the broker starts serving (a restarted leader must not lead its old
    /// epoch again with a log that lost its unsynced tail; registering fences the old run
    /// and moves its leaderships first).
    serving: bool,
}

impl Node {
    /// The follower state and log, if this replica follows at `leader_epoch`: an answer from
    /// that leader, which ends the wait for it.
    fn follower_at(&mut self, leader_epoch: i32) -> Option<(&mut FollowerState, &mut Log)> {
        match &mut self.role {
            Role::Follower {
                state,
                waiting_since,
            } if state.leader_epoch() == leader_epoch => {
                *waiting_since = None;
                Some((state, &mut self.log))
            }
            _ => None,
        }
    }

    /// Carries out what the metadata change asks of this broker's replica.
    fn apply(
        &mut self,
        change: Change,
        now: u64,
        epoch_leaders: &mut BTreeMap<i32, BrokerId>,
        context: &str,
    ) {
        match change {
            Change::Lead { assignment, .. } => {
                let epoch = assignment.leader_epoch;
                let previous = epoch_leaders.insert(epoch, self.id);
                assert!(
                    previous.is_none_or(|previous| previous == self.id),
                    "{context}: epoch {epoch} led by {previous:?} and {}",
                    self.id
                );
                self.pending.clear();
                self.log.epochs.assign(epoch, self.log.end());
                let leader = LeaderState::new(
                    &assignment,
                    self.log.end(),
                    Offset(self.log.committed),
                    now,
                    SETTINGS,
                );
                self.role = Role::Leader(leader);
            }
            Change::AssignmentChanged { assignment, .. } => {
                if let Role::Leader(leader) = &mut self.role {
                    leader.on_assignment_committed(&assignment, now);
                }
            }
            Change::Follow {
                leader,
                leader_epoch,
                ..
            } => {
                self.pending.clear();
                self.role = Role::Follower {
                    state: FollowerState::new(leader, leader_epoch),
                    waiting_since: None,
                };
            }
            Change::Offline { .. } => {
                self.pending.clear();
                self.role = Role::None;
            }
            // A replica moved away: its log goes (a log assigned here again starts empty).
            Change::DeleteLog { .. } => {
                self.pending.clear();
                self.role = Role::None;
                self.log = Log::default();
            }
            // A log assigned here is kept if it exists (as the engine does), and the one
            // partition has no configs.
            Change::CreateLog { .. } | Change::Configs { .. } => {}
        }
    }

    /// Starts a crashed node again: a new run of the broker, its metadata replayed from its
    /// Raft log, serving once registered and unfenced.
    fn restart(&mut self, settings: coremq_replication::quorum::QuorumSettings) {
        if !self.up {
            self.up = true;
            self.incarnation += 1;
            self.serving = false;
            self.quorum = QuorumNode::restart(self.id, self.quorum.storage(), settings).unwrap();
            self.image = MetadataImage::default();
        }
    }

    /// Proposes `records` to the quorum (lost if leadership is: the controller decides again).
    fn propose(&mut self, records: Vec<coremq_replication::metadata::Record>) {
        for record in records {
            let _ = self.quorum.propose(&record);
        }
    }
}

struct Sim {
    rng: StdRng,
    seed: u64,
    nodes: Vec<Node>,
    network: Vec<(u64, BrokerId, Msg)>,
    isolated: BTreeMap<BrokerId, u64>,
    step: u64,
    faults: bool,
    producing: bool,
    /// Leader of each leader epoch, as any node acted on it.
    epoch_leaders: BTreeMap<i32, BrokerId>,
    /// Acknowledged (offset, value).
    acked: BTreeMap<u64, u64>,
    next_value: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = NODES
            .iter()
            .map(|&id| Node {
                id,
                up: true,
                quorum: QuorumNode::new(id, &NODES, common::quorum_settings(id, &mut rng)).unwrap(),
                image: MetadataImage::default(),
                controller: None,
                log: Log::default(),
                role: Role::None,
                pending: VecDeque::new(),
                incarnation: 1,
                serving: false,
            })
            .collect();
        Sim {
            rng,
            seed,
            nodes,
            network: Vec::new(),
            isolated: BTreeMap::new(),
            step: 0,
            faults: false,
            producing: true,
            epoch_leaders: BTreeMap::new(),
            acked: BTreeMap::new(),
            next_value: 1,
        }
    }

    fn now(&self) -> u64 {
        self.step * STEP_MS
    }

    fn context(&self) -> String {
        format!(
            "seed {} step {}; replay: CLUSTER_SEED={} cargo test -p coremq-replication --test cluster",
            self.seed, self.step, self.seed
        )
    }

    fn send(&mut self, from: BrokerId, to: BrokerId, message: Msg) {
        let now = self.step;
        let cut = |id: BrokerId| self.isolated.get(&id).is_some_and(|&until| until > now);
        if from != to && (cut(from) || cut(to)) {
            return;
        }
        let (drop, duplicate, delay) = if self.faults {
            (
                self.rng.random_range(0..100) < 3,
                self.rng.random_range(0..100) < 2,
                self.rng.random_range(0..3),
            )
        } else {
            (false, false, 0)
        };
        if drop {
            return;
        }
        if duplicate {
            self.network.push((now + 1 + delay, to, message.clone()));
        }
        self.network.push((now + 1 + delay, to, message));
    }

    fn run_step(&mut self) {
        self.step += 1;
        if self.faults {
            self.inject_faults();
        }
        let due = common::take_due(&mut self.network, self.step, &mut self.rng);
        for (_, to, message) in due {
            if self.nodes[to as usize].up {
                self.deliver(to, message);
            }
        }
        for id in NODES {
            if self.nodes[id as usize].up {
                self.node_step(id);
            }
        }
        if self.producing && self.step.is_multiple_of(3) {
            self.produce();
        }
        self.check();
    }

    /// What holds after every step: the leader of the newest epoch, while it runs, holds
    /// every acknowledged record at its offset, and each live replica it counts in sync
    /// agrees with it up to its high watermark. (An older leader cut off may lack what its
    /// successors acknowledged: it can acknowledge nothing more.)
    fn check(&self) {
        let Some((&epoch, &id)) = self.epoch_leaders.last_key_value() else {
            return;
        };
        let leader = &self.nodes[id as usize];
        let state = match &leader.role {
            Role::Leader(state) if leader.up && state.epoch() == epoch => state,
            _ => return,
        };
        let records = &leader.log.records;
        for (&offset, &value) in &self.acked {
            assert_eq!(
                records.get(offset as usize).map(|&(_, v)| v),
                Some(value),
                "{}: acknowledged record at {offset} missing from leader {} of epoch {}\n{}",
                self.context(),
                leader.id,
                state.epoch(),
                self.dump()
            );
        }
        let high_watermark = state.high_watermark().0 as usize;
        for &member in state.isr() {
            let replica = &self.nodes[member as usize];
            if member == leader.id || !replica.up {
                continue;
            }
            let agreed = high_watermark.min(replica.log.records.len());
            assert!(
                replica.log.records[..agreed] == records[..agreed],
                "{}: in-sync replica {member} differs from leader {} below the high \
                 watermark {high_watermark}\n{}",
                self.context(),
                leader.id,
                self.dump()
            );
        }
    }

    fn inject_faults(&mut self) {
        let roll = self.rng.random_range(0..1000);
        let id = NODES[self.rng.random_range(0..NODES.len())];
        match roll {
            0..=2 => {
                let node = &mut self.nodes[id as usize];
                if node.up {
                    // Crash: what the log fsynced and Raft's storage survive, nothing else.
                    node.up = false;
                    node.log.crash();
                    node.controller = None;
                    node.role = Role::None;
                    node.pending.clear();
                }
            }
            3..=12 => {
                let settings = common::quorum_settings(id, &mut self.rng);
                self.nodes[id as usize].restart(settings);
            }
            13..=15 => {
                let until = self.step + self.rng.random_range(20..150);
                self.isolated.insert(id, until);
            }
            16..=18 => {
                // A move to two or three of the brokers in any order, or a cancellation.
                let mut target = NODES.to_vec();
                for at in (1..target.len()).rev() {
                    target.swap(at, self.rng.random_range(0..=at));
                }
                target.truncate(self.rng.random_range(2..=NODES.len()));
                let target = (self.rng.random_range(0..4) != 0).then_some(target);
                self.reassign(id, target);
            }
            _ => {}
        }
    }

    fn deliver(&mut self, to: BrokerId, message: Msg) {
        let now = self.now();
        match message {
            Msg::Raft(bytes) => {
                let message = decode_message(&bytes).expect("voters' messages decode");
                self.nodes[to as usize].quorum.step(message);
            }
            Msg::Heartbeat { from, incarnation } => {
                let node = &mut self.nodes[to as usize];
                if let Some((_, controller)) = node.controller.as_mut() {
                    let known = controller
                        .image()
                        .brokers
                        .get(&from)
                        .is_some_and(|broker| broker.incarnation == incarnation);
                    let mut records = Vec::new();
                    if !known {
                        records.extend(controller.register(from, incarnation, vec![], None));
                    }
                    if let Ok((more, _)) = controller.heartbeat(from, now, false) {
                        records.extend(more);
                    }
                    node.propose(records);
                }
            }
            Msg::AlterPartition {
                from,
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                let node = &mut self.nodes[to as usize];
                if let Some((_, controller)) = node.controller.as_mut() {
                    let r = controller.alter_partition(
                        from,
                        TOPIC,
                        0,
                        leader_epoch,
                        partition_epoch,
                        &isr,
                    );
                    if let Ok(records) = r {
                        node.propose(records);
                    }
                }
            }
            Msg::Reassign { target } => {
                let node = &mut self.nodes[to as usize];
                if let Some((_, controller)) = node.controller.as_mut()
                    && let Ok(records) = controller.reassign(TOPIC, 0, target)
                {
                    node.propose(records);
                }
            }
            Msg::EpochEnd {
                from,
                leader_epoch,
                epoch,
            } => {
                let node = &self.nodes[to as usize];
                if let Role::Leader(leader) = &node.role
                    && leader.epoch() == leader_epoch
                {
                    let answer = node.log.end_offset_for_epoch(epoch);
                    self.send(
                        to,
                        from,
                        Msg::EpochEndReply {
                            leader_epoch,
                            answer,
                        },
                    );
                }
            }
            Msg::EpochEndReply {
                leader_epoch,
                answer,
            } => {
                let node = &mut self.nodes[to as usize];
                if let Some((state, log)) = node.follower_at(leader_epoch) {
                    let truncate = state.on_epoch_end(answer, log);
                    log.truncate(truncate);
                }
            }
            Msg::Fetch {
                from,
                leader_epoch,
                offset,
            } => {
                let node = &mut self.nodes[to as usize];
                let Role::Leader(leader) = &mut node.role else {
                    return;
                };
                if leader.epoch() != leader_epoch || offset > node.log.end() {
                    return;
                }
                let Some((_, proposal)) = leader.on_fetch(from, offset, now) else {
                    return;
                };
                let high_watermark = leader.high_watermark();
                node.log.committed = high_watermark.0;
                let proposal = proposal.map(|proposal| {
                    let partition_epoch = node.image.partition(&TOPIC, 0).unwrap().partition_epoch;
                    (proposal, partition_epoch)
                });
                let records = node.log.records[offset.0 as usize..]
                    .iter()
                    .take(20)
                    .copied()
                    .collect();
                self.send(
                    to,
                    from,
                    Msg::FetchReply {
                        leader_epoch,
                        from_offset: offset,
                        records,
                        high_watermark,
                    },
                );
                if let Some((proposal, partition_epoch)) = proposal {
                    self.alter(to, proposal.leader_epoch, partition_epoch, proposal.isr);
                }
            }
            Msg::FetchReply {
                leader_epoch,
                from_offset,
                records,
                high_watermark,
            } => {
                let node = &mut self.nodes[to as usize];
                if let Some((state, log)) = node.follower_at(leader_epoch)
                    && state.is_fetching()
                    && from_offset == log.end()
                {
                    for (epoch, value) in records {
                        log.append(epoch, value);
                    }
                    log.committed = high_watermark.0.min(log.end().0);
                }
            }
        }
    }

    /// Asks the controller `asked`'s metadata names to move the partition to `target`.
    fn reassign(&mut self, asked: BrokerId, target: Option<Vec<BrokerId>>) {
        if self.nodes[asked as usize].up
            && let Some(controller) = self.nodes[asked as usize].quorum.leader()
        {
            self.send(asked, controller, Msg::Reassign { target });
        }
    }

    fn alter(
        &mut self,
        from: BrokerId,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: BTreeSet<BrokerId>,
    ) {
        if let Some(controller) = self.nodes[from as usize].quorum.leader() {
            self.send(
                from,
                controller,
                Msg::AlterPartition {
                    from,
                    leader_epoch,
                    partition_epoch,
                    isr,
                },
            );
        }
    }

    fn node_step(&mut self, id: BrokerId) {
        let now = self.now();
        let context = self.context();
        let node = &mut self.nodes[id as usize];
        node.quorum.tick();
        let output = node.quorum.drain();
        let before = node.image.clone();
        for record in &output.committed {
            // Every voter applies the same records: a refusal is the same everywhere.
            let _ = node.image.apply(&record.1);
        }
        // The replica's role follows the metadata, as the broker's does, once this run is
        // registered and unfenced (then from an empty image: the broker's reconcile).
        let unfenced = node
            .image
            .brokers
            .get(&id)
            .is_some_and(|broker| broker.incarnation == node.incarnation && !broker.fenced);
        let changes = if node.serving {
            roles::changes(&before, &node.image, id)
        } else if unfenced {
            node.serving = true;
            roles::changes(&MetadataImage::default(), &node.image, id)
        } else {
            Vec::new()
        };
        for change in changes {
            node.apply(change, now, &mut self.epoch_leaders, &context);
        }
        // The active controller: on the quorum leader, from its committed image.
        let term = node.quorum.term();
        if node.quorum.leads_caught_up() {
            if node.controller.as_ref().is_none_or(|(at, _)| *at != term) {
                let settings = ControllerSettings {
                    session_timeout_ms: 600,
                    rebalance_interval_ms: None,
                    refused_grace_ms: 200,
                };
                node.controller = Some((term, Controller::new(node.image.clone(), now, settings)));
            }
        } else if !node.quorum.is_leader() {
            node.controller = None;
        }
        if let Some((_, controller)) = node.controller.as_mut() {
            let mut records = controller.tick(now);
            let registered = controller.image().brokers.len() == NODES.len();
            if registered
                && controller.image().topic_id("t").is_none()
                && let Ok(created) =
                    controller.create_topic("t", TOPIC, 1, vec![], Placement::new(3, 0, vec![]))
            {
                records.extend(created);
            }
            node.propose(records);
        }
        let messages = node
            .quorum
            .drain()
            .messages
            .into_iter()
            .chain(output.messages);
        let messages: Vec<_> = messages.collect();
        for (to, message) in messages {
            self.send(id, to, Msg::Raft(encode_message(&message)));
        }
        // The broker heartbeats the controller (registering each run of it).
        let node = &self.nodes[id as usize];
        if self.step % 10 == (id as u64)
            && let Some(controller) = node.quorum.leader()
        {
            let incarnation = node.incarnation;
            self.send(
                id,
                controller,
                Msg::Heartbeat {
                    from: id,
                    incarnation,
                },
            );
        }
        self.partition_step(id, now, &context);
    }

    /// The replica does what its role asks.
    fn partition_step(&mut self, id: BrokerId, now: u64, context: &str) {
        // The log's writer fsyncs what was appended a few steps ago (a group commit).
        let sync = self.rng.random_range(0..3) == 0;
        let node = &mut self.nodes[id as usize];
        if sync {
            node.log.sync();
        }
        let Some(state) = node.image.partition(&TOPIC, 0).cloned() else {
            return;
        };
        let partition_epoch = state.partition_epoch;
        let mut alter = None;
        let mut request = None;
        match &mut node.role {
            Role::Leader(leader) => {
                leader.on_appended(node.log.durable_end());
                if let Some(proposal) = leader.tick(now) {
                    alter = Some((proposal.leader_epoch, partition_epoch, proposal.isr));
                }
                node.log.committed = leader.high_watermark().0;
                while let Some(&(offset, value)) = node.pending.front() {
                    match leader.ack_state(offset) {
                        AckState::Waiting => break,
                        AckState::Done => {
                            assert_eq!(
                                node.log.records.get(offset.0 as usize),
                                Some(&(leader.epoch(), value)),
                                "{context}: acknowledging what this epoch did not write"
                            );
                            self.acked.insert(offset.0, value);
                        }
                        AckState::NotEnoughReplicasAfterAppend => {}
                    }
                    node.pending.pop_front();
                }
            }
            Role::Follower {
                state,
                waiting_since,
            } => {
                // The next request reports the log end: only once the append is fsynced.
                let stale = waiting_since.is_some_and(|since| self.step - since > 20);
                if (waiting_since.is_none() || stale) && node.log.is_synced() {
                    let (truncate, next) = state.next(&node.log);
                    node.log.truncate(truncate);
                    *waiting_since = Some(self.step);
                    request = Some((state.leader(), state.leader_epoch(), next));
                }
            }
            Role::None => {}
        }
        if let Some((leader_epoch, partition_epoch, isr)) = alter {
            self.alter(id, leader_epoch, partition_epoch, isr);
        }
        if let Some((leader, leader_epoch, next)) = request {
            let message = match next {
                Request::EpochEnd { epoch } => Msg::EpochEnd {
                    from: id,
                    leader_epoch,
                    epoch,
                },
                Request::Fetch { offset } => Msg::Fetch {
                    from: id,
                    leader_epoch,
                    offset,
                },
            };
            self.send(id, leader, message);
        }
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let role = match &node.role {
                Role::None => "none".to_string(),
                Role::Leader(state) => format!(
                    "leader epoch {} isr {:?} proposed {:?} hw {}",
                    state.epoch(),
                    state.isr(),
                    state.proposed(),
                    state.high_watermark()
                ),
                Role::Follower {
                    state,
                    waiting_since,
                } => format!(
                    "follower of {} epoch {} fetching {} waiting {waiting_since:?}",
                    state.leader(),
                    state.leader_epoch(),
                    state.is_fetching()
                ),
            };
            out += &format!(
                "node {} up {} quorum leader {:?} controller {} brokers {:?} partition {:?} log end {} committed {} role {role}\n",
                node.id,
                node.up,
                node.quorum.leader(),
                node.controller.is_some(),
                node.image
                    .brokers
                    .iter()
                    .map(|(id, b)| (*id, b.fenced))
                    .collect::<Vec<_>>(),
                node.image.partition(&TOPIC, 0),
                node.log.end(),
                node.log.committed,
            );
            if let Some((_, controller)) = &node.controller {
                out += &format!(
                    "  controller's partition {:?}\n",
                    controller.image().partition(&TOPIC, 0)
                );
            }
        }
        out
    }

    /// The client writes one value with acks=all to the leader a live node's metadata names.
    fn produce(&mut self) {
        let asked = NODES[self.rng.random_range(0..NODES.len())];
        if !self.nodes[asked as usize].up {
            return;
        }
        let Some(state) = self.nodes[asked as usize].image.partition(&TOPIC, 0) else {
            return;
        };
        let leader = state.assignment.leader;
        if leader == NO_LEADER || !self.nodes[leader as usize].up {
            return;
        }
        let value = self.next_value;
        self.next_value += 1;
        let node = &mut self.nodes[leader as usize];
        if let Role::Leader(state) = &mut node.role
            && state.has_min_insync()
        {
            let offset = node.log.end();
            node.log.append(state.epoch(), value);
            node.pending.push_back((offset, value));
        }
    }
}

fn run(seed: u64) {
    let mut sim = Sim::new(seed);
    // Start-up without faults: a controller, three registered brokers, the topic.
    for _ in 0..300 {
        sim.run_step();
    }
    sim.faults = true;
    for _ in 0..4_000 {
        sim.run_step();
    }
    // Settle: everyone up, no faults, until the partition has a leader with all three in
    // sync and everything committed.
    sim.faults = false;
    sim.producing = false;
    sim.isolated.clear();
    for id in NODES {
        let settings = common::quorum_settings(id, &mut sim.rng);
        sim.nodes[id as usize].restart(settings);
    }
    let mut settled = None;
    for step in 0..4_000 {
        sim.run_step();
        // Every broker a replica again, whatever the last move left.
        if step % 100 == 0 {
            sim.reassign(NODES[step / 100 % NODES.len()], Some(NODES.to_vec()));
        }
        let leader = NODES.iter().copied().find(|&id| {
            matches!(&sim.nodes[id as usize].role, Role::Leader(state)
                if state.isr().len() == 3
                    && state.high_watermark() == sim.nodes[id as usize].log.end())
        });
        if let Some(leader) = leader
            && sim
                .nodes
                .iter()
                .all(|node| node.log.end() == sim.nodes[leader as usize].log.end())
        {
            settled = Some(leader);
            break;
        }
    }
    let context = sim.context();
    let leader =
        settled.unwrap_or_else(|| panic!("{context}: the cluster never settled:\n{}", sim.dump()));
    let log = &sim.nodes[leader as usize].log.records;
    for (&offset, &value) in &sim.acked {
        assert_eq!(
            log.get(offset as usize).map(|&(_, v)| v),
            Some(value),
            "{context}: acknowledged record at {offset} lost"
        );
    }
    for node in &sim.nodes {
        assert_eq!(
            node.log.records, *log,
            "{context}: replica {} differs",
            node.id
        );
    }
    assert!(
        sim.acked.len() > 50,
        "{context}: only {} acknowledged",
        sim.acked.len()
    );
    if std::env::var("CLUSTER_STATS").is_ok() {
        eprintln!(
            "seed {seed}: {} acknowledged, {} leader epochs, log of {}",
            sim.acked.len(),
            sim.epoch_leaders.len(),
            log.len()
        );
    }
}

#[test]
fn no_acknowledged_record_is_lost_under_faults() {
    common::run_seeds("CLUSTER", 2000, run);
}
