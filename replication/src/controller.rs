//! The active controller's decisions, as a pure state machine over the metadata image: broker
//! sessions (heartbeats, fencing when one is missed, controlled shutdown), leader elections
//! from the in-sync replicas, in-sync replica changes the leaders ask for (AlterPartition),
//! topic creation with replica placement, and producer-id blocks. Each decision returns the
//! records to commit through the quorum; the controller applies them to its working image at
//! once (KRaft's controller does the same), so the next decision sees them. A controller that
//! loses leadership is dropped, and the next one starts from the committed image.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::leader::{Assignment, BrokerId};
use crate::metadata::{Endpoint, MetadataImage, PartitionRecord, Record, without};

/// No leader: none of the eligible replicas is alive.
pub const NO_LEADER: BrokerId = -1;
/// Producer ids a broker gets at a time.
pub const PRODUCER_ID_BLOCK: i64 = 1000;
/// The topic config that allows electing a leader outside the in-sync replicas.
pub const UNCLEAN_ELECTION: &str = "unclean.leader.election.enable";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerSettings {
    /// A broker not heard from for this long is fenced (`broker.session.timeout.ms`).
    pub session_timeout_ms: u64,
    /// How often leaderships move back to their preferred replicas (Kafka's
    /// `auto.leader.rebalance.enable` with `leader.imbalance.check.interval.seconds`);
    /// never when `None`.
    pub rebalance_interval_ms: Option<u64>,
    /// A broker whose controller port refuses connections ([`Request::Refused`]) is fenced
    /// at once unless it heartbeated within this long (two heartbeat intervals).
    pub refused_grace_ms: u64,
}

/// Why a request to the controller was refused (each maps to the Kafka error a broker or
/// client expects).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerError {
    /// The broker is not registered (heartbeat before registration).
    UnknownBroker(BrokerId),
    UnknownTopic,
    TopicExists(String),
    /// Fewer live brokers than the replication factor asked for.
    NotEnoughBrokers {
        live: usize,
        asked: usize,
    },
    InvalidPartitions(String),
    /// The sender does not lead the partition at this epoch (FENCED_LEADER_EPOCH).
    StaleLeaderEpoch,
    /// The request was based on an older partition state (INVALID_UPDATE_VERSION).
    StalePartitionEpoch,
    /// A proposed in-sync replica is not a live replica, or the leader is missing from it
    /// (INELIGIBLE_REPLICA).
    IneligibleReplica(BrokerId),
    /// The preferred replica is not live and in sync (PREFERRED_LEADER_NOT_AVAILABLE).
    PreferredLeaderNotAvailable,
    /// A replica assignment or reassignment names no replica, one twice, or a broker that
    /// is not registered and in session (INVALID_REPLICA_ASSIGNMENT).
    InvalidAssignment(String),
    /// A cancellation found no reassignment in progress (NO_REASSIGNMENT_IN_PROGRESS).
    NoReassignment,
}

/// Where the replicas of new partitions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// `replication_factor` replicas each, round-robin over the live brokers from `start`.
    RoundRobin {
        replication_factor: usize,
        start: usize,
    },
    /// One replica list per partition, as asked (CreateTopics' and CreatePartitions'
    /// assignments).
    Given(Vec<Vec<BrokerId>>),
}

impl Placement {
    /// Round-robin unless `assignments` names the replicas.
    pub fn new(replication_factor: usize, start: u32, assignments: Vec<Vec<BrokerId>>) -> Self {
        if assignments.is_empty() {
            Placement::RoundRobin {
                replication_factor,
                start: start as usize,
            }
        } else {
            Placement::Given(assignments)
        }
    }
}

/// What a broker asks of the active controller: its own broker's requests are handed over
/// in the process, the others' arrive over the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Register {
        id: BrokerId,
        incarnation: u64,
        endpoints: Vec<Endpoint>,
        rack: Option<String>,
    },
    Heartbeat {
        id: BrokerId,
        shutting_down: bool,
    },
    /// A topic with id `id` (chosen by the asking broker), its replicas placed from `start`,
    /// or as `assignments` says (one replica list per partition) when it is not empty.
    CreateTopic {
        name: String,
        id: [u8; 16],
        partitions: u32,
        replication_factor: u16,
        configs: Vec<(String, String)>,
        start: u32,
        assignments: Vec<Vec<BrokerId>>,
    },
    DeleteTopic {
        name: String,
    },
    /// Grows a topic to `count` partitions, the new ones placed as at creation.
    CreatePartitions {
        name: String,
        count: u32,
        start: u32,
        assignments: Vec<Vec<BrokerId>>,
    },
    TopicConfigs {
        name: String,
        configs: Vec<(String, String)>,
    },
    /// A block of producer ids for `broker`, none below `at_least` (ids a broker handed out
    /// before the metadata log).
    AllocateProducerIds {
        broker: BrokerId,
        at_least: i64,
    },
    /// The leader `broker` of a partition asks for in-sync replicas `isr` (Kafka's
    /// AlterPartition), from the state at `partition_epoch` it leads at `leader_epoch`.
    AlterPartition {
        broker: BrokerId,
        topic: [u8; 16],
        partition: u32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<BrokerId>,
    },
    /// Makes a partition's preferred replica its leader (Kafka's ElectLeaders, preferred).
    ElectPreferred {
        topic: [u8; 16],
        partition: u32,
    },
    /// Broker `id`'s controller port refused a connection: no process listens there.
    Refused {
        id: BrokerId,
    },
    /// Moves a partition to the replicas `target` (AlterPartitionReassignments), or cancels
    /// the reassignment in progress when `None`.
    Reassign {
        topic: [u8; 16],
        partition: u32,
        target: Option<Vec<BrokerId>>,
    },
}

/// The controller's answer to a [`Request`] it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Heartbeat(HeartbeatReply),
    /// Producer ids `first..first + count`, this broker's alone.
    ProducerIds {
        first: i64,
        count: i64,
    },
}

/// What a heartbeat tells the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub fenced: bool,
    /// A broker shutting down may stop once it leads nothing.
    pub shutdown_ready: bool,
}

/// The active controller.
#[derive(Debug, Clone)]
pub struct Controller {
    image: MetadataImage,
    /// When each broker's session ends unless it heartbeats.
    deadlines: BTreeMap<BrokerId, u64>,
    /// Brokers in a controlled shutdown: no partition is moved to them.
    shutting_down: BTreeSet<BrokerId>,
    /// When leaderships next move back to their preferred replicas.
    next_rebalance_ms: Option<u64>,
    settings: ControllerSettings,
}

impl Controller {
    /// The controller taking over at `now_ms` with the committed `image`: every broker in
    /// session gets a whole timeout to heartbeat the new controller.
    pub fn new(image: MetadataImage, now_ms: u64, settings: ControllerSettings) -> Controller {
        let deadlines = image
            .brokers
            .iter()
            .filter(|(_, info)| !info.fenced)
            .map(|(&id, _)| (id, now_ms + settings.session_timeout_ms))
            .collect();
        Controller {
            image,
            deadlines,
            shutting_down: BTreeSet::new(),
            next_rebalance_ms: settings
                .rebalance_interval_ms
                .map(|interval| now_ms + interval),
            settings,
        }
    }

    /// Moves each partition `wanted` picks whose leader is not its preferred replica (the
    /// first of its assignment) to that replica, where it is live, in sync and not shutting
    /// down (Kafka's preferred-leader election).
    pub fn elect_preferred(&mut self, wanted: impl Fn(&[u8; 16], u32) -> bool) -> Vec<Record> {
        let mut changes = Vec::new();
        for (topic, image) in &self.image.topics {
            for (index, state) in image.partitions.iter().enumerate() {
                let assignment = &state.assignment;
                let Some(&preferred) = assignment.replicas.first() else {
                    continue;
                };
                let eligible = assignment.leader != preferred
                    && assignment.isr.contains(&preferred)
                    && self.image.is_live(preferred)
                    && !self.shutting_down.contains(&preferred);
                if eligible && wanted(topic, index as u32) {
                    let mut next = state.to_record(index as u32);
                    next.leader = preferred;
                    next.leader_epoch += 1;
                    next.partition_epoch += 1;
                    changes.push(Record::PartitionChange {
                        topic: *topic,
                        state: next,
                    });
                }
            }
        }
        self.apply(changes)
    }

    /// The image with every decision so far applied (committed or not).
    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    fn apply(&mut self, records: Vec<Record>) -> Vec<Record> {
        records
            .into_iter()
            .filter(|record| match self.image.apply(record) {
                Ok(()) => true,
                Err(reason) => {
                    panic!("the controller decided a record that does not fit: {reason}")
                }
            })
            .collect()
    }

    /// Decides `request` at `now_ms`: the records to commit, and the answer to give once
    /// they are committed.
    pub fn handle(
        &mut self,
        request: Request,
        now_ms: u64,
    ) -> Result<(Vec<Record>, Reply), ControllerError> {
        let topic = |controller: &Controller, name: &str| {
            controller
                .image
                .topic_id(name)
                .ok_or(ControllerError::UnknownTopic)
        };
        let records = match request {
            Request::Register {
                id,
                incarnation,
                endpoints,
                rack,
            } => self.register(id, incarnation, endpoints, rack),
            Request::Heartbeat { id, shutting_down } => {
                let (records, reply) = self.heartbeat(id, now_ms, shutting_down)?;
                return Ok((records, Reply::Heartbeat(reply)));
            }
            Request::Refused { id } => self.refused(id, now_ms),
            Request::CreateTopic {
                name,
                id,
                partitions,
                replication_factor,
                configs,
                start,
                assignments,
            } => {
                let placement = Placement::new(replication_factor.into(), start, assignments);
                self.create_topic(&name, id, partitions, configs, placement)?
            }
            Request::DeleteTopic { name } => self.delete_topic(topic(self, &name)?)?,
            Request::CreatePartitions {
                name,
                count,
                start,
                assignments,
            } => self.add_partitions(topic(self, &name)?, count, start, assignments)?,
            Request::TopicConfigs { name, configs } => {
                self.set_topic_configs(topic(self, &name)?, configs)?
            }
            Request::AllocateProducerIds { broker, at_least } => {
                let records = self.allocate_producer_ids(broker, at_least);
                let reply = match records.as_slice() {
                    [Record::ProducerIds { first, count, .. }] => Reply::ProducerIds {
                        first: *first,
                        count: *count,
                    },
                    _ => unreachable!("one block per allocation"),
                };
                return Ok((records, reply));
            }
            Request::AlterPartition {
                broker,
                topic,
                partition,
                leader_epoch,
                partition_epoch,
                isr,
            } => self.alter_partition(
                broker,
                topic,
                partition,
                leader_epoch,
                partition_epoch,
                &isr.into_iter().collect(),
            )?,
            Request::ElectPreferred { topic, partition } => {
                if self.image.partition(&topic, partition).is_none() {
                    return Err(ControllerError::UnknownTopic);
                }
                let records = self.elect_preferred(|id, index| *id == topic && index == partition);
                if records.is_empty() {
                    return Err(ControllerError::PreferredLeaderNotAvailable);
                }
                records
            }
            Request::Reassign {
                topic,
                partition,
                target,
            } => self.reassign(topic, partition, target)?,
        };
        Ok((records, Reply::Done))
    }

    /// A broker (re)starting: registers its endpoints. It stays fenced until it heartbeats.
    pub fn register(
        &mut self,
        id: BrokerId,
        incarnation: u64,
        endpoints: Vec<Endpoint>,
        rack: Option<String>,
    ) -> Vec<Record> {
        let mut records = Vec::new();
        // A new run of a broker in session: its old run is gone, and its partitions move
        // before the new one is registered.
        let restarted = self
            .image
            .brokers
            .get(&id)
            .is_some_and(|info| info.incarnation != incarnation && !info.fenced);
        if restarted {
            records.extend(self.fence(id));
        }
        records.extend(self.apply(vec![Record::RegisterBroker {
            id,
            incarnation,
            endpoints,
            rack,
        }]));
        records
    }

    /// A broker's heartbeat at `now_ms`: renews its session, unfences it (electing it where
    /// it is the only in-sync replica left), or, with `shutting_down`, moves its leaderships
    /// away and fences it once it leads nothing (controlled shutdown).
    pub fn heartbeat(
        &mut self,
        id: BrokerId,
        now_ms: u64,
        shutting_down: bool,
    ) -> Result<(Vec<Record>, HeartbeatReply), ControllerError> {
        let fenced = match self.image.brokers.get(&id) {
            Some(info) => info.fenced,
            None => return Err(ControllerError::UnknownBroker(id)),
        };
        let mut records = Vec::new();
        if shutting_down {
            self.shutting_down.insert(id);
            if !fenced {
                records.extend(self.move_away(id, false));
                if !self.leads_anything(id) {
                    records.extend(self.fence(id));
                }
            }
            let reply = HeartbeatReply {
                fenced: self.image.brokers[&id].fenced,
                shutdown_ready: !self.leads_anything(id),
            };
            return Ok((records, reply));
        }
        self.shutting_down.remove(&id);
        self.deadlines
            .insert(id, now_ms + self.settings.session_timeout_ms);
        if fenced {
            records.extend(self.apply(vec![Record::BrokerFence { id, fenced: false }]));
            records.extend(self.elect_offline());
        }
        Ok((
            records,
            HeartbeatReply {
                fenced: false,
                shutdown_ready: false,
            },
        ))
    }

    /// Time passed: brokers whose session ended are fenced, their partitions moved, and
    /// partitions without a leader get one where a replica allows it.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Record> {
        let expired: Vec<BrokerId> = self
            .deadlines
            .iter()
            .filter(|&(_, &deadline)| deadline <= now_ms)
            .map(|(&id, _)| id)
            .collect();
        let mut records = Vec::new();
        for id in expired {
            if self.image.is_live(id) {
                records.extend(self.fence(id));
            }
        }
        // A controller that took over, or one whose election was lost with its leadership,
        // finds offline partitions it can elect for, and reassignments it can end, here.
        records.extend(self.elect_offline());
        records.extend(self.complete_reassignments());
        if let (Some(at), Some(interval)) =
            (self.next_rebalance_ms, self.settings.rebalance_interval_ms)
            && now_ms >= at
        {
            self.next_rebalance_ms = Some(now_ms + interval);
            records.extend(self.elect_preferred(|_, _| true));
        }
        records
    }

    /// Broker `id`'s controller port refused a connection at `now_ms`: no process listens
    /// there, so the run that heartbeated is gone (killed, crashed) and waiting out its
    /// session would only delay its partitions' new leaders. It is fenced at once, unless
    /// it heartbeated within the grace (a refusal seen before a new run started, or a
    /// broker whose address moved). A stopped or cut-off broker refuses nothing: its
    /// session runs out as before.
    pub fn refused(&mut self, id: BrokerId, now_ms: u64) -> Vec<Record> {
        let Some(&deadline) = self.deadlines.get(&id) else {
            return Vec::new();
        };
        let heard = deadline.saturating_sub(self.settings.session_timeout_ms);
        if self.image.is_live(id) && now_ms >= heard + self.settings.refused_grace_ms {
            self.fence(id)
        } else {
            Vec::new()
        }
    }

    /// Fences `id`: its leaderships move to live in-sync replicas (or the partition goes
    /// offline), it leaves every in-sync set it is not the last of, and it is marked fenced.
    fn fence(&mut self, id: BrokerId) -> Vec<Record> {
        self.deadlines.remove(&id);
        let mut records = self.move_away(id, true);
        records.extend(self.apply(vec![Record::BrokerFence { id, fenced: true }]));
        records
    }

    /// Moves leadership off `id` for every partition it leads; with `leave_isr`, also takes
    /// it out of every in-sync set (never emptying one).
    fn move_away(&mut self, id: BrokerId, leave_isr: bool) -> Vec<Record> {
        self.change_partitions(|controller, mut next, assignment, unclean| {
            let leads = assignment.leader == id;
            let in_isr = assignment.isr.contains(&id);
            if !(leads || (leave_isr && in_isr)) {
                return None;
            }
            next.partition_epoch += 1;
            if leave_isr && in_isr && assignment.isr.len() > 1 {
                next.isr.retain(|&member| member != id);
            }
            if leads {
                let candidates: Vec<BrokerId> =
                    next.isr.iter().copied().filter(|&m| m != id).collect();
                if !controller.elect(&mut next, &candidates, unclean, id) {
                    // A controlled shutdown with nobody to take over keeps its leader.
                    if !leave_isr {
                        return None;
                    }
                    next.leader = NO_LEADER;
                    next.leader_epoch += 1;
                }
            }
            Some(next)
        })
    }

    /// Elects a leader wherever a partition has none and one of its in-sync replicas (or,
    /// where the topic allows it, any replica) is alive again.
    fn elect_offline(&mut self) -> Vec<Record> {
        self.change_partitions(|controller, mut next, assignment, unclean| {
            if assignment.leader != NO_LEADER {
                return None;
            }
            let candidates = next.isr.clone();
            if !controller.elect(&mut next, &candidates, unclean, NO_LEADER) {
                return None;
            }
            next.partition_epoch += 1;
            Some(next)
        })
    }

    /// Applies and returns a change for every partition `decide` changes; it is given the
    /// partition's state as a record to edit, its assignment, and whether its topic allows
    /// unclean election.
    fn change_partitions(
        &mut self,
        decide: impl Fn(&Controller, PartitionRecord, &Assignment, bool) -> Option<PartitionRecord>,
    ) -> Vec<Record> {
        let mut changes = Vec::new();
        for (topic, image) in &self.image.topics {
            let unclean = image
                .configs
                .get(UNCLEAN_ELECTION)
                .is_some_and(|value| value == "true");
            for (index, state) in image.partitions.iter().enumerate() {
                let next = state.to_record(index as u32);
                if let Some(state) = decide(self, next, &state.assignment, unclean) {
                    changes.push(Record::PartitionChange {
                        topic: *topic,
                        state,
                    });
                }
            }
        }
        self.apply(changes)
    }

    /// Makes the preferred eligible replica among `candidates` (not `leaving`) the leader of
    /// `next` at the next leader epoch; false if there is none.
    fn elect(
        &self,
        next: &mut PartitionRecord,
        candidates: &[BrokerId],
        unclean: bool,
        leaving: BrokerId,
    ) -> bool {
        let Some((leader, isr)) = self.pick_leader(&next.replicas, candidates, unclean, leaving)
        else {
            return false;
        };
        next.leader = leader;
        if let Some(isr) = isr {
            next.isr = isr;
        }
        next.leader_epoch += 1;
        true
    }

    /// The preferred live replica among `candidates` (in-sync), in assignment order; if
    /// none and `unclean`, the first live replica at all, as the only in-sync one.
    fn pick_leader(
        &self,
        replicas: &[BrokerId],
        candidates: &[BrokerId],
        unclean: bool,
        leaving: BrokerId,
    ) -> Option<(BrokerId, Option<Vec<BrokerId>>)> {
        let eligible = |replica: &BrokerId| {
            *replica != leaving
                && self.image.is_live(*replica)
                && !self.shutting_down.contains(replica)
        };
        if let Some(&leader) = replicas
            .iter()
            .find(|replica| candidates.contains(replica) && eligible(replica))
        {
            return Some((leader, None));
        }
        if unclean && let Some(&leader) = replicas.iter().find(|replica| eligible(replica)) {
            return Some((leader, Some(vec![leader])));
        }
        None
    }

    fn leads_anything(&self, id: BrokerId) -> bool {
        self.image.topics.values().any(|topic| {
            topic
                .partitions
                .iter()
                .any(|state| state.assignment.leader == id)
        })
    }

    /// A new topic of `partitions` partitions, its replicas placed as `placement` says, the
    /// first replica of each leading.
    pub fn create_topic(
        &mut self,
        name: &str,
        id: [u8; 16],
        partitions: u32,
        configs: Vec<(String, String)>,
        placement: Placement,
    ) -> Result<Vec<Record>, ControllerError> {
        if self.image.topic_id(name).is_some() {
            return Err(ControllerError::TopicExists(name.to_string()));
        }
        if partitions == 0 {
            return Err(ControllerError::InvalidPartitions(
                "a topic needs at least one partition".into(),
            ));
        }
        let states = self.place(0..partitions, placement)?;
        Ok(self.apply(vec![Record::CreateTopic {
            id,
            name: name.to_string(),
            configs,
            partitions: states,
        }]))
    }

    /// Grows topic `id` to `count` partitions (CreatePartitions), the new ones with as many
    /// replicas as the topic's first partition, placed from `start` as at creation, or as
    /// `assignments` says.
    pub fn add_partitions(
        &mut self,
        id: [u8; 16],
        count: u32,
        start: u32,
        assignments: Vec<Vec<BrokerId>>,
    ) -> Result<Vec<Record>, ControllerError> {
        let topic = self
            .image
            .topics
            .get(&id)
            .ok_or(ControllerError::UnknownTopic)?;
        let have = topic.partitions.len() as u32;
        if count <= have {
            return Err(ControllerError::InvalidPartitions(format!(
                "the topic has {have} partitions; it can only grow"
            )));
        }
        let replication_factor = topic
            .partitions
            .first()
            .map_or(1, |state| state.assignment.replicas.len());
        let placement = Placement::new(replication_factor, start, assignments);
        let states = self.place(have..count, placement)?;
        if let Some(state) = states
            .iter()
            .find(|state| state.replicas.len() != replication_factor)
        {
            return Err(ControllerError::InvalidAssignment(format!(
                "partition {} would have {} replicas, the topic's others have {}",
                state.partition,
                state.replicas.len(),
                replication_factor
            )));
        }
        let records = states
            .into_iter()
            .map(|state| Record::PartitionChange { topic: id, state })
            .collect();
        Ok(self.apply(records))
    }

    /// Deletes topic `id`.
    pub fn delete_topic(&mut self, id: [u8; 16]) -> Result<Vec<Record>, ControllerError> {
        if !self.image.topics.contains_key(&id) {
            return Err(ControllerError::UnknownTopic);
        }
        Ok(self.apply(vec![Record::DeleteTopic { id }]))
    }

    /// Replaces topic `id`'s config overrides.
    pub fn set_topic_configs(
        &mut self,
        id: [u8; 16],
        configs: Vec<(String, String)>,
    ) -> Result<Vec<Record>, ControllerError> {
        if !self.image.topics.contains_key(&id) {
            return Err(ControllerError::UnknownTopic);
        }
        Ok(self.apply(vec![Record::TopicConfigs { id, configs }]))
    }

    /// Replicas for `partitions` as `placement` says, the first leading (every replica in
    /// sync, epochs 0).
    fn place(
        &self,
        partitions: std::ops::Range<u32>,
        placement: Placement,
    ) -> Result<Vec<PartitionRecord>, ControllerError> {
        let assignments = match placement {
            Placement::RoundRobin {
                replication_factor,
                start,
            } => self.round_robin(partitions.clone(), replication_factor, start)?,
            Placement::Given(assignments) => {
                if assignments.len() != partitions.len() {
                    return Err(ControllerError::InvalidAssignment(format!(
                        "{} replica lists for {} partitions",
                        assignments.len(),
                        partitions.len()
                    )));
                }
                self.image
                    .check_assignments(&assignments)
                    .map_err(ControllerError::InvalidAssignment)?;
                assignments
            }
        };
        Ok(partitions
            .zip(assignments)
            .map(|(partition, replicas)| PartitionRecord {
                partition,
                isr: replicas.clone(),
                leader: replicas[0],
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
            })
            .collect())
    }

    /// Replicas for `partitions`, `replication_factor` each, round-robin over the live
    /// brokers from `start` (Kafka's rack-unaware placement).
    fn round_robin(
        &self,
        partitions: std::ops::Range<u32>,
        replication_factor: usize,
        start: usize,
    ) -> Result<Vec<Vec<BrokerId>>, ControllerError> {
        if replication_factor == 0 {
            return Err(ControllerError::InvalidPartitions(
                "the replication factor must be at least 1".into(),
            ));
        }
        let live: Vec<BrokerId> = self
            .image
            .brokers
            .iter()
            .filter(|(id, info)| !info.fenced && !self.shutting_down.contains(id))
            .map(|(&id, _)| id)
            .collect();
        if live.len() < replication_factor {
            return Err(ControllerError::NotEnoughBrokers {
                live: live.len(),
                asked: replication_factor,
            });
        }
        Ok(partitions
            .map(|partition| {
                let first = (start + partition as usize) % live.len();
                // Followers shift with the partition too, so their load spreads (Kafka's
                // replica shift).
                let shift = 1 + (partition as usize / live.len()) % (live.len() - 1).max(1);
                let replicas: Vec<BrokerId> = (0..replication_factor)
                    .map(|n| {
                        let offset = if n == 0 {
                            0
                        } else {
                            (shift + n - 1) % live.len()
                        };
                        live[(first + offset) % live.len()]
                    })
                    .collect();
                dedup_keep_order(replicas, &live, first)
            })
            .collect())
    }

    /// Starts moving a partition to the replicas `target` (KIP-455): they join the
    /// partition's replicas now, and once every one of them is in sync the others leave
    /// ([`Controller::complete_reassignment`]). A new target during a reassignment starts
    /// from the partition's replicas as they are (those the old target added stay until the
    /// new one is in sync, so no in-sync replica is dropped); `None` cancels it, back to the
    /// replicas before it, unless none of those is in sync. The leader changes only where it
    /// is no longer a replica.
    pub fn reassign(
        &mut self,
        topic: [u8; 16],
        partition: u32,
        target: Option<Vec<BrokerId>>,
    ) -> Result<Vec<Record>, ControllerError> {
        let state = self
            .image
            .partition(&topic, partition)
            .ok_or(ControllerError::UnknownTopic)?;
        let current = &state.assignment.replicas;
        let (replicas, adding, removing) = match target {
            Some(target) => {
                let lists = std::slice::from_ref(&target);
                self.image
                    .check_assignments(lists)
                    .map_err(ControllerError::InvalidAssignment)?;
                // Asked again for where it is, or is going: nothing changes (and the
                // leader's in-sync proposals stay current).
                if target == state.target() {
                    return Ok(Vec::new());
                }
                let adding = without(&target, current);
                let removing = without(current, &target);
                let replicas = target.iter().chain(&removing).copied().collect();
                (replicas, adding, removing)
            }
            None if state.reassigning.is_none() => return Err(ControllerError::NoReassignment),
            None => (state.original(), Vec::new(), Vec::new()),
        };
        let mut next = state.to_record(partition);
        next.isr.retain(|member| replicas.contains(member));
        if next.isr.is_empty() {
            return Err(ControllerError::InvalidAssignment(format!(
                "no replica of {replicas:?} is in sync (the in-sync replicas are {:?}): \
                 moving back would lose the partition",
                state.assignment.isr
            )));
        }
        next.replicas = replicas;
        next.partition_epoch += 1;
        if !next.replicas.contains(&next.leader) {
            // It led as a replica being added, and that reassignment is cancelled.
            let candidates = next.isr.clone();
            if !self.elect(&mut next, &candidates, false, NO_LEADER) {
                next.leader = NO_LEADER;
                next.leader_epoch += 1;
            }
        }
        let mut records = self.apply(vec![Record::Reassignment {
            topic,
            state: next,
            adding,
            removing,
        }]);
        records.extend(self.complete_reassignment(topic, partition));
        Ok(records)
    }

    /// Ends the reassignment of a partition once every replica of its target is in sync:
    /// the replicas leaving go, and if the leader is one of them, the preferred live
    /// in-sync replica of the target takes over at the next leader epoch.
    fn complete_reassignment(&mut self, topic: [u8; 16], partition: u32) -> Vec<Record> {
        let Some(state) = self.image.partition(&topic, partition) else {
            return Vec::new();
        };
        let target = state.target();
        let isr = &state.assignment.isr;
        if state.reassigning.is_none() || !target.iter().all(|replica| isr.contains(replica)) {
            return Vec::new();
        }
        let mut next = state.to_record(partition);
        next.replicas = target.clone();
        next.isr.retain(|member| target.contains(member));
        next.partition_epoch += 1;
        if !target.contains(&next.leader) {
            let candidates = next.isr.clone();
            if !self.elect(&mut next, &candidates, false, NO_LEADER) {
                // No replica of the target can lead yet: the leader stays until one can.
                return Vec::new();
            }
        }
        self.apply(vec![Record::Reassignment {
            topic,
            state: next,
            adding: Vec::new(),
            removing: Vec::new(),
        }])
    }

    /// Completes every reassignment that can be (its target in sync since the last look).
    fn complete_reassignments(&mut self) -> Vec<Record> {
        let reassigning: Vec<([u8; 16], u32)> = self
            .image
            .topics
            .iter()
            .flat_map(|(id, topic)| {
                topic
                    .partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, state)| state.reassigning.is_some())
                    .map(|(index, _)| (*id, index as u32))
            })
            .collect();
        reassigning
            .into_iter()
            .flat_map(|(topic, partition)| self.complete_reassignment(topic, partition))
            .collect()
    }

    /// A partition leader asks to change the in-sync replicas to `isr` (AlterPartition),
    /// from the state at `partition_epoch` it leads at `leader_epoch`.
    pub fn alter_partition(
        &mut self,
        broker: BrokerId,
        topic: [u8; 16],
        partition: u32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: &BTreeSet<BrokerId>,
    ) -> Result<Vec<Record>, ControllerError> {
        let state = self
            .image
            .partition(&topic, partition)
            .ok_or(ControllerError::UnknownTopic)?;
        if state.assignment.leader != broker || state.assignment.leader_epoch != leader_epoch {
            return Err(ControllerError::StaleLeaderEpoch);
        }
        if state.partition_epoch != partition_epoch {
            return Err(ControllerError::StalePartitionEpoch);
        }
        if !isr.contains(&broker) {
            return Err(ControllerError::IneligibleReplica(broker));
        }
        for &member in isr {
            let joining = !state.assignment.isr.contains(&member);
            let replica = state.assignment.replicas.contains(&member);
            if !replica
                || (joining
                    && (!self.image.is_live(member) || self.shutting_down.contains(&member)))
            {
                return Err(ControllerError::IneligibleReplica(member));
            }
        }
        let mut next = state.to_record(partition);
        next.isr = isr.iter().copied().collect();
        next.partition_epoch += 1;
        let mut records = self.apply(vec![Record::PartitionChange { topic, state: next }]);
        records.extend(self.complete_reassignment(topic, partition));
        Ok(records)
    }

    /// The next block of producer ids, none below `at_least`, for `broker`.
    pub fn allocate_producer_ids(&mut self, broker: BrokerId, at_least: i64) -> Vec<Record> {
        let first = self.image.next_producer_id.max(at_least);
        self.apply(vec![Record::ProducerIds {
            broker,
            first,
            count: PRODUCER_ID_BLOCK,
        }])
    }
}

/// `replicas` without repeats (more replicas than a shift can spread), filled up from the
/// live brokers after `first`.
fn dedup_keep_order(replicas: Vec<BrokerId>, live: &[BrokerId], first: usize) -> Vec<BrokerId> {
    let wanted = replicas.len();
    let mut out: Vec<BrokerId> = Vec::with_capacity(wanted);
    for replica in replicas {
        if !out.contains(&replica) {
            out.push(replica);
        }
    }
    let mut next = first;
    while out.len() < wanted {
        let candidate = live[next % live.len()];
        if !out.contains(&candidate) {
            out.push(candidate);
        }
        next += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: u64 = 6_000;
    const GRACE: u64 = 500;
    const TOPIC: [u8; 16] = [7; 16];

    fn controller_with(brokers: &[BrokerId]) -> Controller {
        let mut controller = Controller::new(
            MetadataImage::default(),
            0,
            ControllerSettings {
                session_timeout_ms: TIMEOUT,
                rebalance_interval_ms: None,
                refused_grace_ms: GRACE,
            },
        );
        for &id in brokers {
            controller.register(id, 1, vec![], None);
            controller.heartbeat(id, 0, false).unwrap();
        }
        controller
    }

    fn state(controller: &Controller, partition: u32) -> PartitionRecord {
        controller
            .image()
            .partition(&TOPIC, partition)
            .unwrap()
            .to_record(partition)
    }

    #[test]
    fn topics_spread_leaders_and_replicas_over_the_live_brokers() {
        let mut controller = controller_with(&[0, 1, 2]);
        controller
            .create_topic("quotes", TOPIC, 6, vec![], Placement::new(3, 0, vec![]))
            .unwrap();
        let mut leaders = BTreeMap::new();
        for partition in 0..6 {
            let state = state(&controller, partition);
            assert_eq!(state.replicas.len(), 3);
            let distinct: BTreeSet<_> = state.replicas.iter().collect();
            assert_eq!(distinct.len(), 3, "{state:?}");
            let isr: BTreeSet<_> = state.isr.iter().collect();
            assert_eq!(isr, distinct, "every replica starts in sync");
            *leaders.entry(state.leader).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
        let mut five = controller_with(&[0, 1, 2, 3, 4]);
        five.create_topic("spread", TOPIC, 10, vec![], Placement::new(3, 2, vec![]))
            .unwrap();
        let mut held = BTreeMap::new();
        for partition in 0..10 {
            let state = state(&five, partition);
            let distinct: BTreeSet<_> = state.replicas.iter().collect();
            assert_eq!(distinct.len(), 3, "{state:?}");
            for replica in state.replicas {
                *held.entry(replica).or_insert(0) += 1;
            }
        }
        assert_eq!(held.values().copied().collect::<Vec<_>>(), [6; 5]);
        assert_eq!(
            controller.create_topic("wide", [8; 16], 1, vec![], Placement::new(4, 0, vec![])),
            Err(ControllerError::NotEnoughBrokers { live: 3, asked: 4 })
        );
    }

    #[test]
    fn a_broker_refusing_connections_is_fenced_without_waiting_for_its_session() {
        let mut controller = controller_with(&[0, 1, 2]);
        controller
            .create_topic("quotes", TOPIC, 1, vec![], Placement::new(3, 0, vec![]))
            .unwrap();
        assert_eq!(state(&controller, 0).leader, 0);
        // Within the grace after its last heartbeat: a refusal from before a restart.
        assert!(controller.refused(0, GRACE - 1).is_empty());
        assert_eq!(state(&controller, 0).leader, 0);
        let (records, _) = controller
            .handle(Request::Refused { id: 0 }, GRACE)
            .unwrap();
        assert!(!records.is_empty());
        let after = state(&controller, 0);
        assert_eq!((after.leader, after.leader_epoch), (1, 1));
        assert!(!after.isr.contains(&0));
        assert!(!controller.image().is_live(0));
        // Fenced already, or unknown: nothing more.
        assert!(controller.refused(0, 2 * GRACE).is_empty());
        assert!(controller.refused(9, 2 * GRACE).is_empty());
        // Back with a heartbeat, as after any fencing.
        controller.heartbeat(0, 3 * GRACE, false).unwrap();
        assert!(controller.image().is_live(0));
    }

    #[test]
    fn a_missed_session_moves_leadership_within_the_isr_and_back_when_offline() {
        let mut controller = controller_with(&[0, 1, 2]);
        controller
            .create_topic("quotes", TOPIC, 1, vec![], Placement::new(3, 0, vec![]))
            .unwrap();
        let before = state(&controller, 0);
        assert_eq!(before.leader, 0);
        // Brokers 1 and 2 keep heartbeating; 0 stops.
        for now in (1_000..=TIMEOUT).step_by(1_000) {
            controller.heartbeat(1, now, false).unwrap();
            controller.heartbeat(2, now, false).unwrap();
        }
        let records = controller.tick(TIMEOUT);
        assert!(!records.is_empty());
        let after = state(&controller, 0);
        assert_eq!((after.leader, after.leader_epoch), (1, 1));
        assert_eq!(after.isr, [1, 2]);
        assert!(!controller.image().is_live(0));
        // 1 and 2 go too: the partition is offline, 2 stays its last in-sync replica.
        for id in [1, 2] {
            controller.deadlines.insert(id, 0);
        }
        controller.tick(TIMEOUT + 1);
        let offline = state(&controller, 0);
        assert_eq!(offline.leader, NO_LEADER);
        assert_eq!(offline.isr, [2]);
        // 0 comes back: not in sync, so the partition stays offline; 2 comes back and leads.
        controller.heartbeat(0, TIMEOUT + 2, false).unwrap();
        assert_eq!(state(&controller, 0).leader, NO_LEADER);
        controller.heartbeat(2, TIMEOUT + 3, false).unwrap();
        let back = state(&controller, 0);
        assert_eq!(
            (back.leader, back.leader_epoch),
            (2, offline.leader_epoch + 1)
        );
    }

    #[test]
    fn leadership_moves_back_to_the_preferred_replica_once_it_is_in_sync() {
        let mut controller = controller_with(&[0, 1, 2]);
        controller.settings.rebalance_interval_ms = Some(10_000);
        controller.next_rebalance_ms = Some(10_000);
        controller
            .create_topic("quotes", TOPIC, 1, vec![], Placement::new(3, 0, vec![]))
            .unwrap();
        controller.heartbeat(0, 0, true).unwrap();
        let moved = state(&controller, 0);
        assert_eq!(moved.leader, 1, "a controlled shutdown moved it");
        // Back, but not in sync yet: neither a request nor the rebalance moves it.
        controller.heartbeat(0, 1, false).unwrap();
        let request = Request::ElectPreferred {
            topic: TOPIC,
            partition: 0,
        };
        assert_eq!(
            controller.handle(request.clone(), 2),
            Err(ControllerError::PreferredLeaderNotAvailable)
        );
        for id in [0, 1, 2] {
            controller.heartbeat(id, 9_000, false).unwrap();
        }
        assert!(controller.tick(10_000).is_empty());
        assert_eq!(state(&controller, 0).leader, 1);
        // In sync again: the next rebalance (not an earlier tick) moves it back.
        let isr: BTreeSet<BrokerId> = [0, 1, 2].into();
        let s = state(&controller, 0);
        controller
            .alter_partition(1, TOPIC, 0, s.leader_epoch, s.partition_epoch, &isr)
            .unwrap();
        for now in [15_000, 20_000] {
            for id in [0, 1, 2] {
                controller.heartbeat(id, now - 1, false).unwrap();
            }
            let moved = !controller.tick(now).is_empty();
            assert_eq!(moved, now == 20_000, "at {now}");
        }
        let back = state(&controller, 0);
        assert_eq!((back.leader, back.leader_epoch), (0, s.leader_epoch + 1));
        assert_eq!(
            controller.handle(request, 20_001),
            Err(ControllerError::PreferredLeaderNotAvailable),
            "nothing to elect"
        );
    }

    #[test]
    fn unclean_election_only_when_the_topic_allows_it() {
        let mut controller = controller_with(&[0, 1]);
        let configs = vec![(UNCLEAN_ELECTION.to_string(), "true".to_string())];
        controller
            .create_topic("lossy", TOPIC, 1, configs, Placement::new(2, 0, vec![]))
            .unwrap();
        // The leader shrank the ISR to itself, then died.
        let s = state(&controller, 0);
        controller
            .alter_partition(s.leader, TOPIC, 0, 0, s.partition_epoch, &[s.leader].into())
            .unwrap();
        controller.deadlines.insert(s.leader, 0);
        controller.tick(1);
        let elected = state(&controller, 0);
        assert_ne!(elected.leader, s.leader);
        assert_ne!(elected.leader, NO_LEADER);
        assert_eq!(elected.isr, [elected.leader]);
    }

    #[test]
    fn alter_partition_checks_epochs_and_eligibility() {
        let mut controller = controller_with(&[0, 1, 2]);
        controller
            .create_topic("quotes", TOPIC, 1, vec![], Placement::new(3, 0, vec![]))
            .unwrap();
        let s = state(&controller, 0);
        let shrink: BTreeSet<BrokerId> = [0, 1].into();
        assert_eq!(
            controller.alter_partition(1, TOPIC, 0, 0, 0, &shrink),
            Err(ControllerError::StaleLeaderEpoch),
            "only the leader"
        );
        controller
            .alter_partition(0, TOPIC, 0, s.leader_epoch, s.partition_epoch, &shrink)
            .unwrap();
        assert_eq!(
            controller.alter_partition(0, TOPIC, 0, 0, 0, &[0, 1, 2].into()),
            Err(ControllerError::StalePartitionEpoch)
        );
        // A fenced broker cannot join.
        controller.deadlines.insert(2, 0);
        controller.tick(1);
        assert_eq!(
            controller.alter_partition(0, TOPIC, 0, 0, 1, &[0, 1, 2].into()),
            Err(ControllerError::IneligibleReplica(2))
        );
        let grown = controller.alter_partition(0, TOPIC, 0, 0, 1, &[0, 1].into());
        assert!(grown.is_ok());
    }

    #[test]
    fn controlled_shutdown_moves_leaders_first_then_fences() {
        let mut controller = controller_with(&[0, 1, 2]);
        controller
            .create_topic("quotes", TOPIC, 3, vec![], Placement::new(3, 0, vec![]))
            .unwrap();
        let (_, reply) = controller.heartbeat(0, 100, true).unwrap();
        assert!(reply.shutdown_ready && reply.fenced);
        for partition in 0..3 {
            let s = state(&controller, partition);
            assert_ne!(s.leader, 0);
            assert!(!s.isr.contains(&0), "{s:?}");
        }
        // New leaders are never the broker shutting down.
        controller.deadlines.insert(1, 0);
        controller.tick(200);
        for partition in 0..3 {
            assert_eq!(state(&controller, partition).leader, 2);
        }
    }

    #[test]
    fn a_restarted_broker_loses_its_leaderships_until_it_is_back_in_sync() {
        let mut controller = controller_with(&[0, 1, 2]);
        controller
            .create_topic("quotes", TOPIC, 1, vec![], Placement::new(3, 0, vec![]))
            .unwrap();
        controller.register(0, 2, vec![], None);
        let s = state(&controller, 0);
        assert_eq!((s.leader, s.isr.clone()), (1, vec![1, 2]));
        assert!(!controller.image().is_live(0));
    }

    /// The leader of `partition` asks for in-sync replicas `isr` (as it does once they caught
    /// up); panics if refused.
    fn grow_isr(controller: &mut Controller, partition: u32, isr: &[BrokerId]) -> Vec<Record> {
        let now = state(controller, partition);
        controller
            .alter_partition(
                now.leader,
                TOPIC,
                partition,
                now.leader_epoch,
                now.partition_epoch,
                &isr.iter().copied().collect(),
            )
            .unwrap()
    }

    fn reassigning(controller: &Controller, partition: u32) -> Option<(Vec<i32>, Vec<i32>)> {
        let state = controller.image().partition(&TOPIC, partition).unwrap();
        let moving = state.reassigning.as_ref()?;
        Some((moving.adding.clone(), moving.removing.clone()))
    }

    #[test]
    fn explicit_assignments_are_checked_and_kept() {
        let mut controller = controller_with(&[1, 2, 3, 4]);
        controller.heartbeat(4, 0, false).unwrap();
        let given = Placement::Given(vec![vec![3, 1], vec![2, 4]]);
        controller
            .create_topic("quotes", TOPIC, 2, vec![], given)
            .unwrap();
        assert_eq!(state(&controller, 0).replicas, [3, 1]);
        assert_eq!(
            (state(&controller, 1).leader, state(&controller, 1).isr),
            (2, vec![2, 4])
        );
        controller
            .add_partitions(TOPIC, 3, 0, vec![vec![4, 3]])
            .unwrap();
        assert_eq!(state(&controller, 2).replicas, [4, 3]);
        let refused = |controller: &mut Controller, lists: Vec<Vec<BrokerId>>| {
            controller
                .create_topic(
                    "other",
                    [8; 16],
                    lists.len() as u32,
                    vec![],
                    Placement::Given(lists),
                )
                .unwrap_err()
        };
        for lists in [
            vec![vec![1, 1]],
            vec![vec![9]],
            vec![vec![]],
            vec![vec![1, 2], vec![3]],
        ] {
            let error = refused(&mut controller, lists.clone());
            assert!(
                matches!(error, ControllerError::InvalidAssignment(_)),
                "{lists:?}: {error:?}"
            );
        }
        assert!(matches!(
            controller.add_partitions(TOPIC, 4, 0, vec![vec![1, 2, 3]]),
            Err(ControllerError::InvalidAssignment(_))
        ));
        controller.tick(TIMEOUT + 1);
        assert!(
            matches!(
                refused(&mut controller, vec![vec![2]]),
                ControllerError::InvalidAssignment(reason) if reason.contains("fenced")
            ),
            "a broker out of session takes no new replica"
        );
    }

    #[test]
    fn a_reassignment_adds_replicas_then_removes_the_old_once_the_new_are_in_sync() {
        let mut controller = controller_with(&[1, 2, 3, 4]);
        let given = Placement::Given(vec![vec![1, 2]]);
        controller
            .create_topic("quotes", TOPIC, 1, vec![], given)
            .unwrap();
        controller.reassign(TOPIC, 0, Some(vec![3, 2])).unwrap();
        let moving = state(&controller, 0);
        assert_eq!(
            moving.replicas,
            [3, 2, 1],
            "the target first, then those leaving"
        );
        assert_eq!(
            (moving.leader, moving.leader_epoch),
            (1, 0),
            "the leader stays"
        );
        assert_eq!(moving.isr, [1, 2]);
        assert_eq!(reassigning(&controller, 0), Some((vec![3], vec![1])));
        assert!(
            controller.tick(10).is_empty(),
            "nothing ends before the new replica is in sync"
        );
        // Broker 3 caught up: the leader adds it, and the reassignment ends at once.
        let records = grow_isr(&mut controller, 0, &[1, 2, 3]);
        assert_eq!(records.len(), 2, "{records:?}");
        let moved = state(&controller, 0);
        assert_eq!(moved.replicas, [3, 2]);
        assert_eq!(moved.isr, [2, 3]);
        assert_eq!(
            (moved.leader, moved.leader_epoch),
            (3, 1),
            "broker 1 led and left"
        );
        assert_eq!(reassigning(&controller, 0), None);
        // The same replicas again: nothing to do.
        assert!(
            controller
                .reassign(TOPIC, 0, Some(vec![3, 2]))
                .unwrap()
                .is_empty()
        );
        // A reorder ends at once (every replica is in sync); the leader stays.
        controller.reassign(TOPIC, 0, Some(vec![2, 3])).unwrap();
        assert_eq!(state(&controller, 0).replicas, [2, 3]);
        assert_eq!(state(&controller, 0).leader, 3);
        assert_eq!(reassigning(&controller, 0), None);
        // Shrinking ends at once too.
        controller.reassign(TOPIC, 0, Some(vec![3])).unwrap();
        assert_eq!(state(&controller, 0).replicas, [3]);
        assert_eq!(state(&controller, 0).isr, [3]);
    }

    #[test]
    fn a_reassignment_is_replaced_keeping_what_is_in_sync_or_cancelled() {
        let mut controller = controller_with(&[1, 2, 3, 4]);
        let given = Placement::Given(vec![vec![1, 2]]);
        controller
            .create_topic("quotes", TOPIC, 1, vec![], given)
            .unwrap();
        assert_eq!(
            controller.reassign(TOPIC, 0, None),
            Err(ControllerError::NoReassignment)
        );
        controller.reassign(TOPIC, 0, Some(vec![3, 4])).unwrap();
        grow_isr(&mut controller, 0, &[1, 2, 3]);
        assert_eq!(reassigning(&controller, 0), Some((vec![3, 4], vec![1, 2])));
        // A new target: broker 4 (not in sync) goes at once with the others leaving, and
        // with all of 3, 1 in sync the move ends at once.
        controller.reassign(TOPIC, 0, Some(vec![3, 1])).unwrap();
        let replaced = state(&controller, 0);
        assert_eq!((replaced.replicas, replaced.isr), (vec![3, 1], vec![1, 3]));
        assert_eq!(reassigning(&controller, 0), None);
        controller.reassign(TOPIC, 0, Some(vec![4, 1])).unwrap();
        assert_eq!(state(&controller, 0).replicas, [4, 1, 3]);
        assert_eq!(reassigning(&controller, 0), Some((vec![4], vec![3])));
        // Cancelled: back to the replicas before it, with their in-sync set.
        controller.reassign(TOPIC, 0, None).unwrap();
        let back = state(&controller, 0);
        assert_eq!(
            (back.replicas, back.isr, back.leader),
            (vec![1, 3], vec![1, 3], 1)
        );
        assert_eq!(reassigning(&controller, 0), None);

        // Moving to 2, 4 while the replicas before (1, 3) fall out of sync: only 2 is in
        // sync, so a cancellation is refused, and a new target keeps 2 until it is in sync.
        controller.reassign(TOPIC, 0, Some(vec![2, 4])).unwrap();
        grow_isr(&mut controller, 0, &[1, 2, 3]);
        for id in [2, 4] {
            controller.heartbeat(id, TIMEOUT, false).unwrap();
        }
        controller.tick(TIMEOUT + 1);
        let moving = state(&controller, 0);
        assert_eq!(
            (moving.leader, moving.isr.clone()),
            (2, vec![2]),
            "{moving:?}"
        );
        assert!(matches!(
            controller.reassign(TOPIC, 0, None),
            Err(ControllerError::InvalidAssignment(_))
        ));
        controller.reassign(TOPIC, 0, Some(vec![4])).unwrap();
        assert_eq!(state(&controller, 0).replicas, [4, 2, 1, 3]);
        assert_eq!(
            state(&controller, 0).isr,
            [2],
            "the one in-sync replica stays"
        );
        assert_eq!(
            controller.reassign(TOPIC, 0, Some(vec![2, 9])),
            Err(ControllerError::InvalidAssignment(
                "broker 9 is not registered".into()
            ))
        );
        assert_eq!(
            controller.reassign([9; 16], 0, Some(vec![2])),
            Err(ControllerError::UnknownTopic)
        );
    }

    #[test]
    fn a_reassignment_waits_for_a_live_leader_of_its_target() {
        let mut controller = controller_with(&[1, 2, 3]);
        let given = Placement::Given(vec![vec![1]]);
        controller
            .create_topic("quotes", TOPIC, 1, vec![], given)
            .unwrap();
        controller.reassign(TOPIC, 0, Some(vec![2])).unwrap();
        grow_isr(&mut controller, 0, &[1, 2]);
        assert_eq!(state(&controller, 0).replicas, [2]);
        assert_eq!(state(&controller, 0).leader, 2);
        // Broker 3 misses its session while being added: the move waits, the leader stays.
        controller.reassign(TOPIC, 0, Some(vec![3, 2])).unwrap();
        for id in [1, 2] {
            controller.heartbeat(id, TIMEOUT, false).unwrap();
        }
        controller.tick(TIMEOUT + 1);
        assert_eq!(state(&controller, 0).leader, 2);
        assert_eq!(reassigning(&controller, 0), Some((vec![3], vec![])));
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut controller = controller_with(&[0, 1]);
        controller.allocate_producer_ids(0, 0);
        let records = controller.allocate_producer_ids(1, 0);
        assert_eq!(
            records,
            [Record::ProducerIds {
                broker: 1,
                first: PRODUCER_ID_BLOCK,
                count: PRODUCER_ID_BLOCK
            }]
        );
        // Ids handed out before the metadata log are skipped, and the next block follows.
        let skipped = controller.allocate_producer_ids(0, 10 * PRODUCER_ID_BLOCK + 7);
        let next = controller.allocate_producer_ids(1, 0);
        let firsts: Vec<i64> = [skipped, next]
            .iter()
            .flatten()
            .map(|record| match record {
                Record::ProducerIds { first, .. } => *first,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            firsts,
            [10 * PRODUCER_ID_BLOCK + 7, 11 * PRODUCER_ID_BLOCK + 7]
        );
    }
}
