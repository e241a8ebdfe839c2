//! A consumer in a group (Kafka's classic protocol): the member finds the group's
//! coordinator, joins, and, when elected leader, assigns the subscribed partitions with the
//! range assignor. Heartbeats run in the background; when one says the group is
//! rebalancing, the next `poll` commits (with auto-commit), rejoins and takes the new
//! assignment. Positions start at the group's committed offsets, or at the consumer's
//! `reset` where the group has none.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Cluster, Connection, Consumer, ConsumerConfig, Error, Fetched, StartOffset};
use super::{by_topic, unexpected, within};
use crate::protocol::api::{RequestBody, ResponseBody};
use crate::protocol::codec::{self, Encoder, Message};
use crate::protocol::error_code;
use crate::protocol::messages::consumer_protocol_assignment::TopicPartition as Assigned;
use crate::protocol::messages::join_group_request::JoinGroupRequestProtocol;
use crate::protocol::messages::leave_group_request::MemberIdentity;
use crate::protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use crate::protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use crate::protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use crate::protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest,
    HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, OffsetCommitRequest,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
};

const PROTOCOL_TYPE: &str = "consumer";
const RANGE: &str = "range";
/// Pause before retrying a join the coordinator cannot take yet.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group_id: String,
    /// Static membership (`group.instance.id`): a restart within the session timeout
    /// keeps the assignment without a rebalance.
    pub group_instance_id: Option<String>,
    pub session_timeout: Duration,
    /// How long the coordinator waits for every member to rejoin a rebalance.
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Commit the positions this often from `poll`, before a rebalance, and on `leave`;
    /// `None` leaves committing to the caller.
    pub auto_commit: Option<Duration>,
}

impl GroupConfig {
    /// Kafka's consumer defaults for `group_id`.
    pub fn new(group_id: &str) -> GroupConfig {
        GroupConfig {
            group_id: group_id.into(),
            group_instance_id: None,
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(3),
            auto_commit: Some(Duration::from_secs(5)),
        }
    }
}

/// Who this member is in the current generation.
#[derive(Default)]
struct Membership {
    member_id: String,
    generation: i32,
    coordinator: Option<Rc<Connection>>,
}

/// A group member fetching the partitions the group assigns it.
pub struct GroupConsumer {
    consumer: Consumer,
    cluster: Rc<Cluster>,
    config: GroupConfig,
    topics: Vec<String>,
    membership: Rc<RefCell<Membership>>,
    /// Set by the heartbeat when the member must rejoin.
    rejoin: Rc<Cell<bool>>,
    assignment: RefCell<Vec<(Rc<str>, i32)>>,
    last_commit: Cell<Instant>,
    /// Dropping the task stops the heartbeats.
    heartbeat: RefCell<Option<coremq_runtime::Task<()>>>,
}

impl GroupConsumer {
    /// Joins `config.group_id` subscribed to `topics` and takes the first assignment.
    pub async fn join(
        cluster: Rc<Cluster>,
        consumer_config: ConsumerConfig,
        config: GroupConfig,
        topics: &[&str],
    ) -> Result<GroupConsumer, Error> {
        let group = GroupConsumer {
            consumer: Consumer::new(cluster.clone(), consumer_config),
            cluster,
            config,
            topics: topics.iter().map(|topic| topic.to_string()).collect(),
            membership: Rc::default(),
            rejoin: Rc::default(),
            assignment: RefCell::default(),
            last_commit: Cell::new(Instant::now()),
            heartbeat: RefCell::default(),
        };
        group.rebalance().await?;
        *group.heartbeat.borrow_mut() = Some(group.start_heartbeat());
        Ok(group)
    }

    /// The settings of the member's fetches.
    pub fn config(&self) -> &ConsumerConfig {
        self.consumer.config()
    }

    /// The partitions this member holds now, sorted.
    pub fn assignment(&self) -> Vec<(Rc<str>, i32)> {
        self.assignment.borrow().clone()
    }

    /// Rejoins first when the group is rebalancing, commits when auto-commit is due, then
    /// fetches (see [`Consumer::poll`]). A member left with no partitions waits out a
    /// fetch's `max_wait` and returns nothing.
    pub async fn poll(&self) -> Result<Vec<Fetched>, Error> {
        if self.rejoin.get() {
            self.auto_commit().await;
            self.rebalance().await?;
        } else if let Some(interval) = self.config.auto_commit
            && self.last_commit.get().elapsed() >= interval
        {
            self.auto_commit().await;
        }
        if self.assignment.borrow().is_empty() {
            coremq_runtime::sleep(self.consumer.config().max_wait).await;
            return Ok(Vec::new());
        }
        self.consumer.poll().await
    }

    /// Commits the position of every assigned partition. A refusal because the group moved
    /// on (rebalance, new generation, unknown member) makes the next `poll` rejoin.
    pub async fn commit(&self) -> Result<(), Error> {
        let positions = self.consumer.positions();
        if positions.is_empty() {
            return Ok(());
        }
        let entries = positions.into_iter().map(|(topic, partition, position)| {
            let entry = OffsetCommitRequestPartition {
                partition_index: partition,
                committed_offset: position,
                committed_leader_epoch: -1,
                commit_timestamp: -1,
                committed_metadata: Some(String::new()),
            };
            (topic, entry)
        });
        let topics = by_topic(entries)
            .into_iter()
            .map(|(name, partitions)| OffsetCommitRequestTopic {
                name: name.to_string(),
                partitions,
            })
            .collect();
        let (coordinator, request) = {
            let membership = self.membership.borrow();
            let request = OffsetCommitRequest {
                group_id: self.config.group_id.clone(),
                generation_id_or_member_epoch: membership.generation,
                member_id: membership.member_id.clone(),
                group_instance_id: self.config.group_instance_id.clone(),
                retention_time_ms: -1,
                topics,
            };
            (membership.coordinator.clone(), request)
        };
        let coordinator = coordinator.ok_or_else(|| no_coordinator(&self.config.group_id))?;
        let (_, response) = self
            .cluster
            .call(&coordinator, RequestBody::OffsetCommit(request))
            .await?;
        let ResponseBody::OffsetCommit(response) = response else {
            return Err(unexpected(&response));
        };
        self.last_commit.set(Instant::now());
        let refused = response
            .topics
            .iter()
            .flat_map(|topic| &topic.partitions)
            .map(|partition| partition.error_code)
            .find(|code| *code != error_code::NONE);
        self.check(refused.unwrap_or(error_code::NONE), "OffsetCommit")
    }

    /// Ok for no error; otherwise notes the group error for the next poll (a rejoin, a new
    /// coordinator) and returns it.
    fn check(&self, code: i16, request: &str) -> Result<(), Error> {
        if code == error_code::NONE {
            return Ok(());
        }
        note_group_error(&self.membership, &self.rejoin, code);
        Err(Error::broker(code, request))
    }

    /// Commits (with auto-commit) and leaves the group, so the others rebalance at once
    /// instead of after the session timeout.
    pub async fn leave(self) -> Result<(), Error> {
        self.heartbeat.borrow_mut().take();
        self.auto_commit().await;
        let (coordinator, member_id) = {
            let membership = self.membership.borrow();
            (membership.coordinator.clone(), membership.member_id.clone())
        };
        let Some(coordinator) = coordinator else {
            return Ok(());
        };
        let request = LeaveGroupRequest {
            group_id: self.config.group_id.clone(),
            member_id: member_id.clone(),
            members: vec![MemberIdentity {
                member_id,
                group_instance_id: self.config.group_instance_id.clone(),
                reason: None,
            }],
        };
        let (_, response) = self
            .cluster
            .call(&coordinator, RequestBody::LeaveGroup(request))
            .await?;
        let ResponseBody::LeaveGroup(response) = response else {
            return Err(unexpected(&response));
        };
        let code = response
            .members
            .iter()
            .map(|member| member.error_code)
            .find(|code| *code != error_code::NONE)
            .unwrap_or(response.error_code);
        match code {
            error_code::NONE | error_code::UNKNOWN_MEMBER_ID => Ok(()),
            code => Err(Error::broker(code, "LeaveGroup")),
        }
    }

    async fn auto_commit(&self) {
        if self.config.auto_commit.is_some() {
            // A refused commit leaves the records to be read again (at least once).
            let _ = self.commit().await;
        }
    }

    /// Joins (or rejoins) until a generation's assignment is taken, within the rebalance
    /// timeout.
    async fn rebalance(&self) -> Result<(), Error> {
        let deadline = Instant::now() + self.config.rebalance_timeout;
        loop {
            self.rejoin.set(false);
            let error = match self.join_and_sync().await {
                Ok(assigned) => return self.take_assignment(assigned).await,
                Err(error) => error,
            };
            let retry = match &error {
                Error::Broker { code, .. } => {
                    matches!(
                        *code,
                        error_code::MEMBER_ID_REQUIRED
                            | error_code::UNKNOWN_MEMBER_ID
                            | error_code::ILLEGAL_GENERATION
                            | error_code::REBALANCE_IN_PROGRESS
                    ) || error_code::is_retriable(*code)
                }
                other => other.is_retriable(),
            };
            if !retry || Instant::now() >= deadline {
                return Err(error);
            }
            if !matches!(
                error,
                Error::Broker {
                    code: error_code::MEMBER_ID_REQUIRED,
                    ..
                }
            ) {
                coremq_runtime::sleep(RETRY_BACKOFF).await;
            }
        }
    }

    /// One JoinGroup and SyncGroup round; the partitions this member is given.
    async fn join_and_sync(&self) -> Result<Vec<(String, i32)>, Error> {
        let coordinator = self.find_coordinator().await?;
        let subscription = ConsumerProtocolSubscription {
            topics: self.topics.clone(),
            ..ConsumerProtocolSubscription::default()
        };
        let request = JoinGroupRequest {
            group_id: self.config.group_id.clone(),
            session_timeout_ms: millis(self.config.session_timeout),
            rebalance_timeout_ms: millis(self.config.rebalance_timeout),
            member_id: self.membership.borrow().member_id.clone(),
            group_instance_id: self.config.group_instance_id.clone(),
            protocol_type: PROTOCOL_TYPE.into(),
            protocols: vec![JoinGroupRequestProtocol {
                name: RANGE.into(),
                metadata: encode_data(&subscription, 0),
            }],
            reason: None,
        };
        // The coordinator holds a JoinGroup until every member rejoins.
        let wait = self.config.rebalance_timeout + self.cluster.config().request_timeout;
        let (_, response) = within(
            wait,
            "waiting for JoinGroup",
            coordinator.call(RequestBody::JoinGroup(request)),
        )
        .await?;
        let ResponseBody::JoinGroup(joined) = response else {
            return Err(unexpected(&response));
        };
        if !joined.member_id.is_empty() {
            self.membership.borrow_mut().member_id = joined.member_id.clone();
        }
        self.check(joined.error_code, "JoinGroup")?;
        self.membership.borrow_mut().generation = joined.generation_id;
        let assignments = if joined.leader == joined.member_id && !joined.skip_assignment {
            self.assign(&joined).await?
        } else {
            Vec::new()
        };
        let request = SyncGroupRequest {
            group_id: self.config.group_id.clone(),
            generation_id: joined.generation_id,
            member_id: joined.member_id.clone(),
            group_instance_id: self.config.group_instance_id.clone(),
            protocol_type: Some(PROTOCOL_TYPE.into()),
            protocol_name: joined.protocol_name.clone(),
            assignments,
        };
        let (_, response) = within(
            wait,
            "waiting for SyncGroup",
            coordinator.call(RequestBody::SyncGroup(request)),
        )
        .await?;
        let ResponseBody::SyncGroup(synced) = response else {
            return Err(unexpected(&response));
        };
        self.check(synced.error_code, "SyncGroup")?;
        if synced.assignment.is_empty() {
            return Ok(Vec::new());
        }
        let assignment: ConsumerProtocolAssignment = decode_data(synced.assignment)?;
        Ok(assignment
            .assigned_partitions
            .into_iter()
            .flat_map(|assigned| {
                let topic = assigned.topic;
                assigned
                    .partitions
                    .into_iter()
                    .map(move |partition| (topic.clone(), partition))
            })
            .collect())
    }

    /// The leader's part: every member's assignment under the range assignor.
    async fn assign(
        &self,
        joined: &JoinGroupResponse,
    ) -> Result<Vec<SyncGroupRequestAssignment>, Error> {
        let mut members = Vec::new();
        for member in &joined.members {
            let subscription: ConsumerProtocolSubscription = decode_data(member.metadata.clone())?;
            members.push((member.member_id.clone(), subscription.topics));
        }
        let mut partition_counts = BTreeMap::new();
        for topic in members.iter().flat_map(|(_, topics)| topics) {
            if !partition_counts.contains_key(topic) {
                // A topic the cluster does not have yet gets no partitions this generation.
                let count = match self.cluster.topic(topic).await {
                    Ok(metadata) => metadata.partitions.len() as i32,
                    Err(_) => 0,
                };
                partition_counts.insert(topic.clone(), count);
            }
        }
        let assigned = range_assign(&members, &partition_counts);
        Ok(members
            .iter()
            .map(|(member_id, _)| {
                let assignment = ConsumerProtocolAssignment {
                    assigned_partitions: assigned
                        .get(member_id)
                        .into_iter()
                        .flatten()
                        .map(|(topic, partitions)| Assigned {
                            topic: topic.clone(),
                            partitions: partitions.clone(),
                        })
                        .collect(),
                    user_data: None,
                };
                SyncGroupRequestAssignment {
                    member_id: member_id.clone(),
                    assignment: encode_data(&assignment, 0),
                }
            })
            .collect())
    }

    /// Replaces the consumer's partitions with `assigned`, each at the group's committed
    /// offset or, without one, at the consumer's `reset`.
    async fn take_assignment(&self, mut assigned: Vec<(String, i32)>) -> Result<(), Error> {
        assigned.sort();
        let committed = self.committed(&assigned).await?;
        self.consumer.unassign();
        for (topic, partition) in &assigned {
            let start = match committed.get(&(topic.clone(), *partition)) {
                Some(offset) if *offset >= 0 => StartOffset::Offset(*offset),
                _ => self.consumer.config().reset,
            };
            self.consumer.seek(topic, *partition, start).await?;
        }
        *self.assignment.borrow_mut() = assigned
            .into_iter()
            .map(|(topic, partition)| (Rc::from(topic.as_str()), partition))
            .collect();
        self.last_commit.set(Instant::now());
        Ok(())
    }

    /// The group's committed offsets for `partitions` (-1 where none).
    async fn committed(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), i64>, Error> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let by_topic = by_topic(
            partitions
                .iter()
                .map(|(topic, partition)| (topic.as_str(), *partition)),
        );
        let request = OffsetFetchRequest {
            group_id: self.config.group_id.clone(),
            topics: Some(
                by_topic
                    .iter()
                    .map(|(name, partitions)| OffsetFetchRequestTopic {
                        name: name.to_string(),
                        partition_indexes: partitions.clone(),
                    })
                    .collect(),
            ),
            groups: vec![OffsetFetchRequestGroup {
                group_id: self.config.group_id.clone(),
                member_id: None,
                member_epoch: -1,
                topics: Some(
                    by_topic
                        .iter()
                        .map(|(name, partitions)| OffsetFetchRequestTopics {
                            name: name.to_string(),
                            partition_indexes: partitions.clone(),
                        })
                        .collect(),
                ),
            }],
            require_stable: false,
        };
        let coordinator = self.find_coordinator().await?;
        let (_, response) = self
            .cluster
            .call(&coordinator, RequestBody::OffsetFetch(request))
            .await?;
        let ResponseBody::OffsetFetch(response) = response else {
            return Err(unexpected(&response));
        };
        committed_offsets(response)
    }

    /// The coordinator's connection, asked for once per membership.
    async fn find_coordinator(&self) -> Result<Rc<Connection>, Error> {
        let known = self.membership.borrow().coordinator.clone();
        if let Some(connection) = known.filter(|connection| !connection.is_broken()) {
            return Ok(connection);
        }
        let group_id = &self.config.group_id;
        let request = FindCoordinatorRequest {
            key: group_id.clone(),
            key_type: 0,
            coordinator_keys: vec![group_id.clone()],
        };
        let (_, response) = self
            .cluster
            .call_any(RequestBody::FindCoordinator(request))
            .await?;
        let ResponseBody::FindCoordinator(response) = response else {
            return Err(unexpected(&response));
        };
        let (code, node) = match response.coordinators.first() {
            Some(coordinator) => (coordinator.error_code, coordinator.node_id),
            None => (response.error_code, response.node_id),
        };
        if code != error_code::NONE {
            return Err(Error::broker(
                code,
                format!("FindCoordinator for {group_id}"),
            ));
        }
        let connection = match self.cluster.broker(node).await {
            Ok(connection) => connection,
            Err(_) => {
                self.cluster.refresh(&[]).await?;
                self.cluster.broker(node).await?
            }
        };
        self.membership.borrow_mut().coordinator = Some(connection.clone());
        Ok(connection)
    }

    /// Heartbeats every `heartbeat_interval`; an answer other than NONE marks a rejoin.
    fn start_heartbeat(&self) -> coremq_runtime::Task<()> {
        let cluster = self.cluster.clone();
        let membership = self.membership.clone();
        let rejoin = self.rejoin.clone();
        let group_id = self.config.group_id.clone();
        let group_instance_id = self.config.group_instance_id.clone();
        let interval = self.config.heartbeat_interval;
        coremq_runtime::spawn_local(async move {
            loop {
                coremq_runtime::sleep(interval).await;
                if rejoin.get() {
                    continue;
                }
                let (coordinator, request) = {
                    let membership = membership.borrow();
                    let request = HeartbeatRequest {
                        group_id: group_id.clone(),
                        generation_id: membership.generation,
                        member_id: membership.member_id.clone(),
                        group_instance_id: group_instance_id.clone(),
                    };
                    (membership.coordinator.clone(), request)
                };
                let Some(coordinator) = coordinator else {
                    rejoin.set(true);
                    continue;
                };
                let code = match cluster
                    .call(&coordinator, RequestBody::Heartbeat(request))
                    .await
                {
                    Ok((_, ResponseBody::Heartbeat(response))) => response.error_code,
                    Ok(_) | Err(_) => error_code::COORDINATOR_NOT_AVAILABLE,
                };
                note_group_error(&membership, &rejoin, code);
            }
        })
    }
}

/// Marks the member for a rejoin after a group error; forgets the member id when the
/// coordinator no longer knows it, and the coordinator when it moved.
fn note_group_error(membership: &RefCell<Membership>, rejoin: &Cell<bool>, code: i16) {
    match code {
        error_code::NONE => {}
        error_code::UNKNOWN_MEMBER_ID | error_code::FENCED_INSTANCE_ID => {
            membership.borrow_mut().member_id.clear();
            rejoin.set(true);
        }
        error_code::NOT_COORDINATOR | error_code::COORDINATOR_NOT_AVAILABLE => {
            membership.borrow_mut().coordinator = None;
            rejoin.set(true);
        }
        _ => rejoin.set(true),
    }
}

fn no_coordinator(group_id: &str) -> Error {
    Error::broker(
        error_code::COORDINATOR_NOT_AVAILABLE,
        format!("group {group_id} has no coordinator yet"),
    )
}

fn millis(duration: Duration) -> i32 {
    duration.as_millis().min(i32::MAX as u128) as i32
}

/// The committed offsets of an OffsetFetch answer, from the per-group list (v8+) or the
/// top-level one.
fn committed_offsets(response: OffsetFetchResponse) -> Result<HashMap<(String, i32), i64>, Error> {
    let mut codes = vec![response.error_code];
    codes.extend(response.groups.iter().map(|group| group.error_code));
    let mut offsets = HashMap::new();
    let mut take = |topic: &str, partition: i32, offset: i64, code: i16| {
        codes.push(code);
        offsets.insert((topic.to_string(), partition), offset);
    };
    for topic in &response.topics {
        for partition in &topic.partitions {
            let offset = partition.committed_offset;
            take(
                &topic.name,
                partition.partition_index,
                offset,
                partition.error_code,
            );
        }
    }
    for topic in response.groups.iter().flat_map(|group| &group.topics) {
        for partition in &topic.partitions {
            let offset = partition.committed_offset;
            take(
                &topic.name,
                partition.partition_index,
                offset,
                partition.error_code,
            );
        }
    }
    match codes.into_iter().find(|code| *code != error_code::NONE) {
        Some(code) => Err(Error::broker(code, "OffsetFetch")),
        None => Ok(offsets),
    }
}

/// Kafka's RangeAssignor: per topic, the members subscribed to it in member id order each
/// take a contiguous range; the first `partitions % members` take one more.
fn range_assign(
    members: &[(String, Vec<String>)],
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<(String, Vec<i32>)>> {
    let mut assigned: BTreeMap<String, Vec<(String, Vec<i32>)>> = BTreeMap::new();
    for (topic, count) in partition_counts {
        let mut subscribed: Vec<&String> = members
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(member, _)| member)
            .collect();
        subscribed.sort();
        if subscribed.is_empty() {
            continue;
        }
        let per_member = count / subscribed.len() as i32;
        let extra = count % subscribed.len() as i32;
        for (index, member) in subscribed.into_iter().enumerate() {
            let index = index as i32;
            let start = index * per_member + index.min(extra);
            let length = per_member + i32::from(index < extra);
            if length > 0 {
                assigned
                    .entry(member.clone())
                    .or_default()
                    .push((topic.clone(), (start..start + length).collect()));
            }
        }
    }
    assigned
}

/// A consumer-protocol structure as JoinGroup and SyncGroup carry it: its version, then
/// the fields of that version.
fn encode_data<M: Message>(message: &M, version: i16) -> Bytes {
    let mut encoder = Encoder::new();
    encoder.i16(version);
    message.encode(&mut encoder, version);
    encoder.finish_bytes()
}

/// Reads what [`encode_data`] wrote. A version newer than this client knows is read as
/// the newest it knows: the protocol only ever appends fields.
pub fn decode_data<M: Message>(bytes: Bytes) -> Result<M, Error> {
    codec::decode_versioned(bytes).map_err(|error| Error::Protocol(format!("{}: {error}", M::NAME)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(member, topics)| {
                (
                    member.to_string(),
                    topics.iter().map(|topic| topic.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn range_gives_the_first_members_the_extra_partitions() {
        let members = members(&[("c", &["t", "u"]), ("a", &["t"]), ("b", &["t", "u"])]);
        let counts = BTreeMap::from([("t".to_string(), 7), ("u".to_string(), 1)]);
        let assigned = range_assign(&members, &counts);
        assert_eq!(assigned["a"], vec![("t".to_string(), vec![0, 1, 2])]);
        assert_eq!(
            assigned["b"],
            vec![("t".to_string(), vec![3, 4]), ("u".to_string(), vec![0])]
        );
        assert_eq!(assigned["c"], vec![("t".to_string(), vec![5, 6])]);
    }

    #[test]
    fn members_beyond_the_partition_count_get_nothing() {
        let members = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let counts = BTreeMap::from([("t".to_string(), 2)]);
        let assigned = range_assign(&members, &counts);
        assert_eq!(assigned.len(), 2);
        assert!(!assigned.contains_key("c"));
    }

    #[test]
    fn consumer_protocol_data_round_trips_and_reads_newer_versions() {
        let subscription = ConsumerProtocolSubscription {
            topics: vec!["quotes".into()],
            ..ConsumerProtocolSubscription::default()
        };
        let decoded: ConsumerProtocolSubscription =
            decode_data(encode_data(&subscription, 0)).unwrap();
        assert_eq!(decoded, subscription);
        // Version 9 does not exist yet: read as version 3, the fields after are ignored.
        let mut newer = encode_data(&subscription, 3).to_vec();
        newer[..2].copy_from_slice(&9i16.to_be_bytes());
        newer.extend_from_slice(b"future fields");
        let decoded: ConsumerProtocolSubscription = decode_data(Bytes::from(newer)).unwrap();
        assert_eq!(decoded.topics, subscription.topics);
        assert!(decode_data::<ConsumerProtocolAssignment>(Bytes::from_static(&[0])).is_err());
    }
}
