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
use crate::metadata::{Endpoint, MetadataImage, PartitionRecord, Record};

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
    /// A topic with id `id` (chosen by the asking broker), its replicas placed from `start`.
    CreateTopic {
        name: String,
        id: [u8; 16],
        partitions: u32,
        replication_factor: u16,
        configs: Vec<(String, String)>,
        start: u32,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        count: u32,
        start: u32,
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
            } => self.create_topic(
                &name,
                id,
                partitions,
                replication_factor.into(),
                configs,
                start as usize,
            )?,
            Request::DeleteTopic { name } => self.delete_topic(topic(self, &name)?)?,
            Request::CreatePartitions { name, count, start } => {
                self.add_partitions(topic(self, &name)?, count, start as usize)?
            }
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
        // finds offline partitions it can elect for here.
        records.extend(self.elect_offline());
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

    /// A new topic of `partitions` partitions with `replication_factor` replicas each, placed
    /// round-robin over the live brokers from `start` (Kafka's rack-unaware placement), the
    /// first replica leading.
    pub fn create_topic(
        &mut self,
        name: &str,
        id: [u8; 16],
        partitions: u32,
        replication_factor: usize,
        configs: Vec<(String, String)>,
        start: usize,
    ) -> Result<Vec<Record>, ControllerError> {
        if self.image.topic_id(name).is_some() {
            return Err(ControllerError::TopicExists(name.to_string()));
        }
        if partitions == 0 {
            return Err(ControllerError::InvalidPartitions(
                "a topic needs at least one partition".into(),
            ));
        }
        let states = self.place(0..partitions, replication_factor, start)?;
        Ok(self.apply(vec![Record::CreateTopic {
            id,
            name: name.to_string(),
            configs,
            partitions: states,
        }]))
    }

    /// Grows topic `id` to `count` partitions (CreatePartitions), the new ones with as many
    /// replicas as its first, placed as at creation.
    pub fn add_partitions(
        &mut self,
        id: [u8; 16],
        count: u32,
        start: usize,
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
        let states = self.place(have..count, replication_factor, start)?;
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

    /// Replicas for `partitions`, `replication_factor` each, round-robin over the live
    /// brokers from `start`, the first leading (every replica in sync, epochs 0).
    fn place(
        &self,
        partitions: std::ops::Range<u32>,
        replication_factor: usize,
        start: usize,
    ) -> Result<Vec<PartitionRecord>, ControllerError> {
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
        let states = partitions
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
                let replicas = dedup_keep_order(replicas, &live, first);
                PartitionRecord {
                    partition,
                    isr: replicas.clone(),
                    leader: replicas[0],
                    replicas,
                    leader_epoch: 0,
                    partition_epoch: 0,
                }
            })
            .collect();
        Ok(states)
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
        Ok(self.apply(vec![Record::PartitionChange { topic, state: next }]))
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
            .create_topic("quotes", TOPIC, 6, 3, vec![], 0)
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
        five.create_topic("spread", TOPIC, 10, 3, vec![], 2)
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
            controller.create_topic("wide", [8; 16], 1, 4, vec![], 0),
            Err(ControllerError::NotEnoughBrokers { live: 3, asked: 4 })
        );
    }

    #[test]
    fn a_broker_refusing_connections_is_fenced_without_waiting_for_its_session() {
        let mut controller = controller_with(&[0, 1, 2]);
        controller
            .create_topic("quotes", TOPIC, 1, 3, vec![], 0)
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
            .create_topic("quotes", TOPIC, 1, 3, vec![], 0)
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
            .create_topic("quotes", TOPIC, 1, 3, vec![], 0)
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
            .create_topic("lossy", TOPIC, 1, 2, configs, 0)
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
            .create_topic("quotes", TOPIC, 1, 3, vec![], 0)
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
            .create_topic("quotes", TOPIC, 3, 3, vec![], 0)
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
            .create_topic("quotes", TOPIC, 1, 3, vec![], 0)
            .unwrap();
        controller.register(0, 2, vec![], None);
        let s = state(&controller, 0);
        assert_eq!((s.leader, s.isr.clone()), (1, vec![1, 2]));
        assert!(!controller.image().is_live(0));
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
