//! The group coordinator: consumer groups (Kafka's classic protocol) and their committed
//! offsets.
//!
//! A group belongs to one partition of the internal compacted topic `__consumer_offsets`
//! (Kafka's hash of the group id), and so to the shard owning that partition: its state lives
//! only there, and every group request hops to that shard, like any partition request. Offset
//! commits are appended to that partition before they are answered or applied. Membership is
//! written there too whenever a generation settles (the leader's SyncGroup, or the group
//! emptying): a coordinator that starts, or takes the partition over when its leadership
//! moves, replays it and carries on with the same members, generation and assignments, so
//! consumers keep heartbeating without a rebalance.

mod group;
pub mod offsets;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use coremq_engine::batch::BatchHeader;
use coremq_engine::{
    BatchBuilder, CleanupPolicy, Compression, LogConfig, Timestamp, TopicPartition,
};
use coremq_replication::{Consistency, Isolation};

use super::Context;
use crate::protocol::error_code;
use crate::protocol::messages::delete_groups_response::DeletableGroupResult;
use crate::protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use crate::protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use crate::protocol::messages::leave_group_response::MemberResponse;
use crate::protocol::messages::list_groups_response::ListedGroup;
use crate::protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use crate::protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use crate::protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use crate::protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use group::{Group, Join, Reply, State};
pub use offsets::Committed;
use offsets::StoredGroup;

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Kafka's `offset.metadata.max.bytes`.
const METADATA_BYTES_MAX: usize = 4096;
/// Batches coremq builds are zstd-compressed (docs/format.md).
const OFFSETS_CODEC: Compression = Compression::Zstd;
/// How long a commit waits for the in-sync replicas of its `__consumer_offsets` partition
/// (Kafka's `offsets.commit.timeout.ms`).
const OFFSET_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often sessions and join phases are checked.
const TICK: Duration = Duration::from_millis(100);

/// The log settings of `__consumer_offsets`: compacted, small segments (Kafka's
/// `offsets.topic.segment.bytes`), room for a commit of many partitions in one batch.
pub fn offsets_log_config() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        segment_bytes: 100 << 20,
        batch_bytes_max: 16 << 20,
        ..LogConfig::default()
    }
}

struct Stored {
    committed: Committed,
    /// Where the commit sits in `__consumer_offsets`: a later one wins.
    log_offset: u64,
}

/// One shard's groups.
#[derive(Default)]
pub struct Coordinator {
    groups: HashMap<String, Group>,
    offsets: HashMap<String, BTreeMap<(String, i32), Stored>>,
    /// The leader epoch at which each `__consumer_offsets` partition of this shard was
    /// replayed: leading it at another epoch (leadership came back, or moved here) replays
    /// it again.
    loaded: HashMap<u32, i32>,
    /// Partitions being replayed now: their requests wait.
    loading: HashSet<u32>,
}

impl Coordinator {
    /// Forgets every group's members at shutdown: joins and syncs still waiting (for a
    /// rebalance whose members may be gone) are answered now instead of holding the shard
    /// until their rebalance timeout. Committed offsets stay.
    pub fn unload_members(&mut self) {
        self.groups.clear();
    }

    /// Groups this shard coordinates (with members or committed offsets).
    pub fn group_count(&self) -> usize {
        self.offsets.len()
            + self
                .groups
                .keys()
                .filter(|id| !self.offsets.contains_key(*id))
                .count()
    }

    /// Every committed offset this shard holds: group, topic, partition, offset.
    pub fn committed(&self) -> Vec<(String, String, i32, i64)> {
        self.offsets
            .iter()
            .flat_map(|(group, offsets)| {
                offsets.iter().map(|((topic, partition), stored)| {
                    (
                        group.clone(),
                        topic.clone(),
                        *partition,
                        stored.committed.offset,
                    )
                })
            })
            .collect()
    }

    fn apply(&mut self, group: &str, topic: &str, partition: i32, value: Option<Stored>) {
        let key = (topic.to_string(), partition);
        match value {
            Some(stored) => {
                let offsets = self.offsets.entry(group.to_string()).or_default();
                if offsets
                    .get(&key)
                    .is_none_or(|old| old.log_offset <= stored.log_offset)
                {
                    offsets.insert(key, stored);
                }
            }
            None => {
                if let Some(offsets) = self.offsets.get_mut(group) {
                    offsets.remove(&key);
                    if offsets.is_empty() {
                        self.offsets.remove(group);
                    }
                }
            }
        }
    }

    /// A group's membership record, replayed: the group as it was stored, or gone with a
    /// tombstone.
    fn apply_group(&mut self, id: &str, stored: Option<StoredGroup>, initial_delay: Duration) {
        match stored {
            Some(stored) => {
                let group = Group::restore(id.to_string(), stored, initial_delay, Instant::now());
                self.groups.insert(id.to_string(), group);
            }
            None => {
                self.groups.remove(id);
            }
        }
    }

    /// Forgets the groups `__consumer_offsets` partition `partition` of `partitions`
    /// coordinates, before it is replayed.
    fn forget_partition(&mut self, partition: u32, partitions: u32) {
        let elsewhere = |group: &String| offsets::partition_for(group, partitions) != partition;
        self.groups.retain(|group, _| elsewhere(group));
        self.offsets.retain(|group, _| elsewhere(group));
    }

    fn exists(&self, group: &str) -> bool {
        self.groups.contains_key(group) || self.offsets.contains_key(group)
    }

    fn state(&self, group: &str) -> State {
        self.groups.get(group).map_or(State::Empty, Group::state)
    }
}

/// The `__consumer_offsets` partition that coordinates `group`.
fn coordinator_log(context: &Context, group: &str) -> TopicPartition {
    let partitions = context
        .topics()
        .get(OFFSETS_TOPIC)
        .map_or(1, |topic| topic.partitions);
    TopicPartition {
        topic: OFFSETS_TOPIC.into(),
        partition: offsets::partition_for(group, partitions),
    }
}

/// Runs `work` on the shard coordinating `group`. NOT_COORDINATOR when another broker
/// leads the group's `__consumer_offsets` partition, COORDINATOR_NOT_AVAILABLE when none
/// does or the shard is stopping.
async fn on_coordinator<T, F, Fut>(context: &Context, group: &str, work: F) -> Result<T, i16>
where
    T: Send + 'static,
    F: FnOnce(Rc<Context>, TopicPartition) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let log = coordinator_log(context, group);
    match context.cluster.leader_of(&log) {
        Some(leader) if leader == context.config.node_id => {}
        Some(_) => return Err(error_code::NOT_COORDINATOR),
        None => return Err(error_code::COORDINATOR_NOT_AVAILABLE),
    }
    let shard = context.handle.shard_of(&log);
    context
        .handle
        .on_shard(shard, move |_| async move {
            let context = Context::current();
            match ensure_loaded(&context, &log).await {
                Ok(()) => Ok(Ok(work(context, log).await)),
                Err(error) => {
                    log::warn!("replaying {log}: {error}");
                    Ok(Err(error_code::COORDINATOR_LOAD_IN_PROGRESS))
                }
            }
        })
        .await
        .map_err(|_| error_code::COORDINATOR_NOT_AVAILABLE)?
}

/// The leader epoch of `log` in this shard's metadata.
fn leader_epoch(context: &Context, log: &TopicPartition) -> Option<i32> {
    let image = context.cluster.image();
    let id = image.topic_id(&log.topic)?;
    image
        .partition(&id, log.partition)
        .map(|state| state.assignment.leader_epoch)
}

/// Replays `log` (a `__consumer_offsets` partition this broker leads, on this shard) into
/// the coordinator unless it was replayed at its current leader epoch; waits while another
/// request replays it.
async fn ensure_loaded(
    context: &Context,
    log: &TopicPartition,
) -> Result<(), coremq_engine::Error> {
    let epoch = leader_epoch(context, log).unwrap_or(-1);
    loop {
        let (loaded, loading) = {
            let coordinator = context.groups.borrow();
            (
                coordinator.loaded.get(&log.partition).copied(),
                coordinator.loading.contains(&log.partition),
            )
        };
        if loaded == Some(epoch) {
            return Ok(());
        }
        if !loading {
            break;
        }
        coremq_runtime::sleep(Duration::from_millis(10)).await;
    }
    let partitions = context
        .topics()
        .get(OFFSETS_TOPIC)
        .map_or(1, |topic| topic.partitions);
    {
        let mut coordinator = context.groups.borrow_mut();
        coordinator.loading.insert(log.partition);
        coordinator.forget_partition(log.partition, partitions);
    }
    let replayed = replay(context, log).await;
    let mut coordinator = context.groups.borrow_mut();
    coordinator.loading.remove(&log.partition);
    if replayed.is_ok() {
        coordinator.loaded.insert(log.partition, epoch);
    }
    replayed.map(|_| ())
}

/// Replays the `__consumer_offsets` partitions this shard owns and this broker leads into
/// the shard's coordinator; the number of commits read.
pub async fn load(context: &Context) -> Result<usize, coremq_engine::Error> {
    let Some(topic) = context.topics().get(OFFSETS_TOPIC).cloned() else {
        return Ok(0);
    };
    let shard = coremq_runtime::current_shard().unwrap_or(0);
    let mut loaded = 0;
    for partition in 0..topic.partitions {
        let log = TopicPartition::new(OFFSETS_TOPIC, partition)?;
        let led = context.cluster.leader_of(&log) == Some(context.config.node_id);
        if !led || context.handle.shard_of(&log) != shard {
            continue;
        }
        let epoch = leader_epoch(context, &log).unwrap_or(-1);
        loaded += replay(context, &log).await?;
        context.groups.borrow_mut().loaded.insert(partition, epoch);
    }
    Ok(loaded)
}

/// Applies every commit stored in `log` to the coordinator; the number read.
async fn replay(context: &Context, log: &TopicPartition) -> Result<usize, coremq_engine::Error> {
    let mut loaded = 0;
    let mut next = context.cluster.offsets(log).await?.log_start;
    loop {
        let read = context
            .cluster
            .read(log, next, 1 << 20, Isolation::Written)
            .await?;
        if read.batches.is_empty() {
            return Ok(loaded);
        }
        for batch in &read.batches {
            let header = BatchHeader::parse(batch)?;
            let records = coremq_engine::record::decode_records(batch, 64 << 20)?;
            for (delta, record) in records.into_iter().enumerate() {
                let key = record.key.as_deref().unwrap_or_default();
                if let Some(group) = offsets::decode_group_key(key) {
                    let stored = match &record.value {
                        None => None,
                        Some(value) => match offsets::decode_group_value(value) {
                            Some(stored) => Some(stored),
                            None => {
                                log::warn!("{log}: group {group}'s membership record unreadable");
                                continue;
                            }
                        },
                    };
                    let delay =
                        Duration::from_millis(context.config.group_initial_rebalance_delay_ms);
                    context
                        .groups
                        .borrow_mut()
                        .apply_group(&group, stored, delay);
                    loaded += 1;
                    continue;
                }
                let Some((group, topic, partition)) = offsets::decode_key(key) else {
                    continue;
                };
                let value = record.value.as_ref().and_then(offsets::decode_value);
                let stored = value.map(|committed| Stored {
                    committed,
                    log_offset: header.base_offset.0 + delta as u64,
                });
                context
                    .groups
                    .borrow_mut()
                    .apply(&group, &topic, partition, stored);
                loaded += 1;
            }
            next = header.next_offset();
        }
    }
}

/// Runs group timers on this shard until the broker stops.
pub async fn tick_loop(context: Rc<Context>) {
    loop {
        if context.sleep_unless_stopping(TICK).await {
            return;
        }
        let now = Instant::now();
        {
            let mut coordinator = context.groups.borrow_mut();
            let Coordinator {
                groups, offsets, ..
            } = &mut *coordinator;
            groups.retain(|id, group| {
                group.tick(now);
                !group.is_idle() || group.is_unstored() || offsets.contains_key(id)
            });
        }
        store_groups(&context, None).await;
    }
}

/// Writes the membership of this shard's groups that changed since it was last written
/// (only `only`'s when named), each to its `__consumer_offsets` partition where this broker
/// still leads it. A failed write is tried again at the next tick; a record that cannot be
/// stored (an id or a batch too large) is not, and its members join again after a move.
async fn store_groups(context: &Context, only: Option<&str>) {
    let now_ms = Timestamp::now().0;
    let mut due = Vec::new();
    {
        let mut coordinator = context.groups.borrow_mut();
        for (id, group) in coordinator.groups.iter_mut() {
            if only.is_some_and(|only| only != id) {
                continue;
            }
            let Some(stored) = group.take_unstored(now_ms) else {
                continue;
            };
            let log = coordinator_log(context, id);
            // Led elsewhere now: the coordinator there holds the group.
            if context.cluster.leader_of(&log) != Some(context.config.node_id) {
                continue;
            }
            let value = offsets::encode_group_value(&stored)
                .filter(|_| id.len() <= offsets::STRING_BYTES_MAX);
            match value {
                Some(value) => due.push((log, id.clone(), value)),
                None => log::warn!(
                    "group {id}: membership too large to store; its members join again after a \
                     coordinator move"
                ),
            }
        }
    }
    for (log, id, value) in due {
        let mut batch = BatchBuilder::new(OFFSETS_CODEC);
        batch.push(
            Timestamp(now_ms),
            Some(&offsets::encode_group_key(&id)),
            Some(&value),
            &[],
        );
        let written = append_durably(context, &log, batch).await;
        match written {
            Ok(_) => {}
            Err(error @ coremq_engine::Error::BatchTooLarge { .. }) => {
                log::warn!("group {id}: membership not stored: {error}");
            }
            Err(error) => {
                log::warn!("storing the membership of group {id}: {error}");
                if let Some(group) = context.groups.borrow_mut().groups.get_mut(&id) {
                    group.store_failed();
                }
            }
        }
    }
}

pub fn find_coordinator(
    context: &Context,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    // A transaction coordinator is refused with an error Kafka clients treat as fatal at
    // once (librdkafka and the Java client fail `init_transactions` with it), rather than
    // one they retry until their timeout.
    let refusal = match request.key_type {
        0 => None,
        1 => Some((
            error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            "transactions are not supported by coremq".to_string(),
        )),
        other => Some((
            error_code::INVALID_REQUEST,
            format!("coordinator key type {other}: only group coordinators are served"),
        )),
    };
    let entry = |key: String| match &refusal {
        Some((code, message)) => CoordinatorEntry {
            key,
            node_id: -1,
            host: String::new(),
            port: -1,
            error_code: *code,
            error_message: Some(message.clone()),
        },
        None => {
            let log = coordinator_log(context, &key);
            let image = context.cluster.image();
            match context
                .cluster
                .leader_of(&log)
                .and_then(|leader| super::metadata::broker(&image, leader))
            {
                Some(broker) => CoordinatorEntry {
                    key,
                    node_id: broker.id,
                    host: broker.host,
                    port: i32::from(broker.port),
                    error_code: error_code::NONE,
                    error_message: None,
                },
                None => CoordinatorEntry {
                    key,
                    node_id: -1,
                    host: String::new(),
                    port: -1,
                    error_code: error_code::COORDINATOR_NOT_AVAILABLE,
                    error_message: Some(format!("{log} has no leader")),
                },
            }
        }
    };
    if version >= 4 {
        return FindCoordinatorResponse {
            coordinators: request.coordinator_keys.into_iter().map(entry).collect(),
            ..FindCoordinatorResponse::default()
        };
    }
    let single = entry(request.key);
    FindCoordinatorResponse {
        error_code: single.error_code,
        error_message: single.error_message,
        node_id: single.node_id,
        host: single.host,
        port: single.port,
        ..FindCoordinatorResponse::default()
    }
}

async fn wait<T>(reply: Reply<T>, gone: impl FnOnce() -> T) -> T {
    match reply {
        Reply::Now(answer) => answer,
        Reply::Later(waiting) => waiting.recv_async().await.unwrap_or_else(|_| gone()),
    }
}

pub async fn join_group(
    context: &Context,
    request: JoinGroupRequest,
    version: i16,
    client_id: String,
    client_host: String,
) -> JoinGroupResponse {
    if request.group_id.is_empty() {
        return group::error_join(request.member_id, error_code::INVALID_GROUP_ID);
    }
    let member_id = request.member_id.clone();
    let join = Join {
        member_id: request.member_id,
        instance_id: request.group_instance_id,
        client_id,
        client_host,
        session_timeout: Duration::from_millis(request.session_timeout_ms.max(0) as u64),
        session_timeout_allowed: Duration::from_millis(context.config.group_min_session_timeout_ms)
            ..=Duration::from_millis(context.config.group_max_session_timeout_ms),
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout: Duration::from_millis(
            if version == 0 {
                request.session_timeout_ms
            } else {
                request.rebalance_timeout_ms
            }
            .max(0) as u64,
        ),
        protocol_type: request.protocol_type,
        protocols: request
            .protocols
            .into_iter()
            .map(|protocol| (protocol.name, protocol.metadata))
            .collect(),
        requires_known_member_id: version >= 4,
    };
    let group_id = request.group_id;
    let answer = on_coordinator(context, &group_id.clone(), move |context, _| async move {
        if context.is_stopping() {
            // Its members were unloaded; the member finds the coordinator again later.
            return group::error_join(member_id, error_code::COORDINATOR_NOT_AVAILABLE);
        }
        let now = Instant::now();
        let delay = Duration::from_millis(context.config.group_initial_rebalance_delay_ms);
        let reply = context
            .groups
            .borrow_mut()
            .groups
            .entry(group_id.clone())
            .or_insert_with(|| Group::new(group_id, delay, now))
            .join(join, now);
        let member_id = member_id.clone();
        wait(reply, || {
            group::error_join(member_id, error_code::UNKNOWN_MEMBER_ID)
        })
        .await
    })
    .await;
    answer.unwrap_or_else(|code| group::error_join(String::new(), code))
}

pub async fn sync_group(context: &Context, request: SyncGroupRequest) -> SyncGroupResponse {
    if request.group_id.is_empty() {
        return group::error_sync(error_code::INVALID_GROUP_ID);
    }
    let group_id = request.group_id.clone();
    let answer = on_coordinator(context, &group_id, move |context, _| async move {
        let reply = match context
            .groups
            .borrow_mut()
            .groups
            .get_mut(&request.group_id)
        {
            None => Reply::Now(group::error_sync(error_code::UNKNOWN_MEMBER_ID)),
            Some(group) => group.sync(
                &request.member_id,
                request.group_instance_id.as_deref(),
                request.generation_id,
                (
                    request.protocol_type.as_deref(),
                    request.protocol_name.as_deref(),
                ),
                request
                    .assignments
                    .into_iter()
                    .map(|assignment| (assignment.member_id, assignment.assignment))
                    .collect(),
                Instant::now(),
            ),
        };
        // The leader's assignments settled a generation: it is stored before the leader
        // hears back (the other members have their answers already).
        store_groups(&context, Some(&request.group_id)).await;
        wait(reply, || group::error_sync(error_code::UNKNOWN_MEMBER_ID)).await
    })
    .await;
    answer.unwrap_or_else(group::error_sync)
}

pub async fn heartbeat(context: &Context, request: HeartbeatRequest) -> HeartbeatResponse {
    let code = if request.group_id.is_empty() {
        error_code::INVALID_GROUP_ID
    } else {
        let group_id = request.group_id.clone();
        on_coordinator(context, &group_id, move |context, _| async move {
            match context
                .groups
                .borrow_mut()
                .groups
                .get_mut(&request.group_id)
            {
                None => error_code::UNKNOWN_MEMBER_ID,
                Some(group) => group.heartbeat(
                    &request.member_id,
                    request.group_instance_id.as_deref(),
                    request.generation_id,
                    Instant::now(),
                ),
            }
        })
        .await
        .unwrap_or_else(|code| code)
    };
    HeartbeatResponse {
        error_code: code,
        ..HeartbeatResponse::default()
    }
}

pub async fn leave_group(
    context: &Context,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .into_iter()
            .map(|member| (member.member_id, member.group_instance_id))
            .collect()
    } else {
        vec![(request.member_id, None)]
    };
    let group_id = request.group_id;
    let codes = if group_id.is_empty() {
        vec![error_code::INVALID_GROUP_ID; leaving.len()]
    } else {
        let members = leaving.clone();
        on_coordinator(context, &group_id.clone(), move |context, _| async move {
            let now = Instant::now();
            let mut coordinator = context.groups.borrow_mut();
            members
                .iter()
                .map(
                    |(member_id, instance_id)| match coordinator.groups.get_mut(&group_id) {
                        None => error_code::UNKNOWN_MEMBER_ID,
                        Some(group) => group.leave(member_id, instance_id.as_deref(), now),
                    },
                )
                .collect()
        })
        .await
        .unwrap_or_else(|code| vec![code; leaving.len()])
    };
    if version < 3 {
        return LeaveGroupResponse {
            error_code: codes[0],
            ..LeaveGroupResponse::default()
        };
    }
    LeaveGroupResponse {
        error_code: error_code::NONE,
        members: leaving
            .into_iter()
            .zip(codes)
            .map(|((member_id, group_instance_id), code)| MemberResponse {
                member_id,
                group_instance_id,
                error_code: code,
            })
            .collect(),
        ..LeaveGroupResponse::default()
    }
}

/// Checks a commit against the group's membership (Kafka's `doCommitOffsets` order): a
/// negative generation from no member is a commit of a group not managed here (allowed while
/// the group has no members).
fn check_commit(
    coordinator: &mut Coordinator,
    request: &OffsetCommitRequest,
    now: Instant,
) -> Result<(), i16> {
    let generation = request.generation_id_or_member_epoch;
    let Some(group) = coordinator.groups.get_mut(&request.group_id) else {
        return if generation < 0 {
            Ok(())
        } else {
            Err(error_code::ILLEGAL_GENERATION)
        };
    };
    if generation < 0 && group.is_empty() {
        return Ok(());
    }
    if group.state() == State::CompletingRebalance {
        return Err(error_code::REBALANCE_IN_PROGRESS);
    }
    group.check_generation(
        &request.member_id,
        request.group_instance_id.as_deref(),
        generation,
    )?;
    group.touch(&request.member_id, now);
    Ok(())
}

/// A partition's commit to write, or the error it gets.
type CheckedCommit = (i32, Result<Committed, i16>);

pub async fn offset_commit(
    context: &Context,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let table = context.topics();
    let mut checked: Vec<(String, Vec<CheckedCommit>)> = Vec::new();
    let now = Timestamp::now().0;
    for topic in &request.topics {
        let known = table
            .get(&topic.name)
            .filter(|_| topic.name != OFFSETS_TOPIC);
        let partitions = topic
            .partitions
            .iter()
            .map(|partition| {
                let metadata = partition.committed_metadata.clone().unwrap_or_default();
                let result = if request.group_id.is_empty() {
                    Err(error_code::INVALID_GROUP_ID)
                } else if let Err(code) = super::errors::partition_log(
                    known.map(|topic| &**topic),
                    partition.partition_index,
                ) {
                    Err(code)
                } else if metadata.len() > METADATA_BYTES_MAX
                    || topic.name.len() > offsets::STRING_BYTES_MAX
                    || request.group_id.len() > offsets::STRING_BYTES_MAX
                {
                    Err(error_code::OFFSET_METADATA_TOO_LARGE)
                } else {
                    Ok(Committed {
                        offset: partition.committed_offset,
                        leader_epoch: partition.committed_leader_epoch,
                        metadata,
                        commit_timestamp: if version == 1 && partition.commit_timestamp >= 0 {
                            partition.commit_timestamp
                        } else {
                            now
                        },
                    })
                };
                (partition.partition_index, result)
            })
            .collect();
        checked.push((topic.name.clone(), partitions));
    }
    let writes: Vec<(String, i32, Committed)> = checked
        .iter()
        .flat_map(|(topic, partitions)| {
            partitions.iter().filter_map(|(index, result)| {
                result
                    .as_ref()
                    .ok()
                    .map(|committed| (topic.clone(), *index, committed.clone()))
            })
        })
        .collect();
    let outcome = if writes.is_empty() {
        Ok(())
    } else {
        let group_id = request.group_id.clone();
        on_coordinator(context, &group_id, move |context, log| async move {
            check_commit(&mut context.groups.borrow_mut(), &request, Instant::now())?;
            let mut batch = BatchBuilder::new(OFFSETS_CODEC);
            for (topic, partition, committed) in &writes {
                batch.push(
                    Timestamp(committed.commit_timestamp),
                    Some(&offsets::encode_key(&request.group_id, topic, *partition)),
                    Some(&offsets::encode_value(committed)),
                    &[],
                );
            }
            let appended = append_durably(&context, &log, batch).await;
            let info = appended.map_err(|error| match error {
                coremq_engine::Error::BatchTooLarge { .. } => {
                    error_code::INVALID_COMMIT_OFFSET_SIZE
                }
                other => {
                    log::warn!("writing offsets of group {}: {other}", request.group_id);
                    error_code::COORDINATOR_NOT_AVAILABLE
                }
            })?;
            let mut coordinator = context.groups.borrow_mut();
            for (delta, (topic, partition, committed)) in writes.into_iter().enumerate() {
                let stored = Stored {
                    committed,
                    log_offset: info.base_offset.0 + delta as u64,
                };
                coordinator.apply(&request.group_id, &topic, partition, Some(stored));
            }
            Ok(())
        })
        .await
        .unwrap_or_else(Err)
    };
    OffsetCommitResponse {
        topics: checked
            .into_iter()
            .map(|(name, partitions)| OffsetCommitResponseTopic {
                name,
                partitions: partitions
                    .into_iter()
                    .map(|(partition_index, result)| OffsetCommitResponsePartition {
                        partition_index,
                        error_code: match (result, outcome) {
                            (Err(code), _) | (Ok(_), Err(code)) => code,
                            (Ok(_), Ok(())) => error_code::NONE,
                        },
                    })
                    .collect(),
            })
            .collect(),
        ..OffsetCommitResponse::default()
    }
}

/// One topic's answer to OffsetFetch: each partition's commit, if any.
type FetchedTopic = (String, Vec<(i32, Option<Committed>)>);

/// The commits of `group` for `topics` (every topic it committed when `None`).
async fn fetch_offsets(
    context: &Context,
    group: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<FetchedTopic>, i16> {
    if group.is_empty() {
        return Err(error_code::INVALID_GROUP_ID);
    }
    on_coordinator(context, &group.clone(), move |context, _| async move {
        let coordinator = context.groups.borrow();
        let committed = coordinator.offsets.get(&group);
        let lookup = |topic: &str, partition: i32| {
            committed
                .and_then(|offsets| offsets.get(&(topic.to_string(), partition)))
                .map(|stored| stored.committed.clone())
        };
        match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let found = partitions
                        .into_iter()
                        .map(|partition| (partition, lookup(&topic, partition)))
                        .collect();
                    (topic, found)
                })
                .collect(),
            None => {
                let mut all: Vec<FetchedTopic> = Vec::new();
                for ((topic, partition), stored) in committed.into_iter().flatten() {
                    let entry = (*partition, Some(stored.committed.clone()));
                    match all.last_mut() {
                        Some((last, partitions)) if last == topic => partitions.push(entry),
                        _ => all.push((topic.clone(), vec![entry])),
                    }
                }
                all
            }
        }
    })
    .await
}

/// A partition's committed offset, leader epoch and metadata (Kafka's "no offset" if none).
fn fetched(committed: Option<Committed>) -> (i64, i32, String) {
    committed.map_or((-1, -1, String::new()), |committed| {
        (committed.offset, committed.leader_epoch, committed.metadata)
    })
}

/// OffsetFetch: version 8 and later ask for several groups; before, for one, answered with
/// the same fields at the top level. Both are built as groups, then the older shape is
/// taken from the one group.
pub async fn offset_fetch(
    context: &Context,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    type Wanted = (String, Option<Vec<(String, Vec<i32>)>>);
    let wanted: Vec<Wanted> = if version < 8 {
        let topics = request.topics.map(|topics| {
            topics
                .into_iter()
                .map(|topic| (topic.name, topic.partition_indexes))
                .collect()
        });
        vec![(request.group_id, topics)]
    } else {
        request
            .groups
            .into_iter()
            .map(|group| {
                let topics = group.topics.map(|topics| {
                    topics
                        .into_iter()
                        .map(|topic| (topic.name, topic.partition_indexes))
                        .collect()
                });
                (group.group_id, topics)
            })
            .collect()
    };
    let mut groups = Vec::with_capacity(wanted.len());
    for (group_id, topics) in wanted {
        let (code, topics) = match fetch_offsets(context, group_id.clone(), topics).await {
            Ok(topics) => (error_code::NONE, topics),
            Err(code) => (code, Vec::new()),
        };
        groups.push(OffsetFetchResponseGroup {
            group_id,
            error_code: code,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| OffsetFetchResponseTopics {
                    name,
                    partitions: partitions
                        .into_iter()
                        .map(|(partition_index, committed)| {
                            let (offset, epoch, metadata) = fetched(committed);
                            OffsetFetchResponsePartitions {
                                partition_index,
                                committed_offset: offset,
                                committed_leader_epoch: epoch,
                                metadata: Some(metadata),
                                error_code: error_code::NONE,
                            }
                        })
                        .collect(),
                })
                .collect(),
        });
    }
    if version >= 8 {
        return OffsetFetchResponse {
            groups,
            ..OffsetFetchResponse::default()
        };
    }
    let group = groups.pop().expect("one group before version 8");
    OffsetFetchResponse {
        error_code: group.error_code,
        topics: group
            .topics
            .into_iter()
            .map(|topic| OffsetFetchResponseTopic {
                name: topic.name,
                partitions: topic
                    .partitions
                    .into_iter()
                    .map(|partition| OffsetFetchResponsePartition {
                        partition_index: partition.partition_index,
                        committed_offset: partition.committed_offset,
                        committed_leader_epoch: partition.committed_leader_epoch,
                        metadata: partition.metadata,
                        error_code: partition.error_code,
                    })
                    .collect(),
            })
            .collect(),
        ..OffsetFetchResponse::default()
    }
}

pub async fn list_groups(context: &Context, request: ListGroupsRequest) -> ListGroupsResponse {
    let mut groups = Vec::new();
    let classic_wanted = request.types_filter.is_empty()
        || request
            .types_filter
            .iter()
            .any(|kind| kind.eq_ignore_ascii_case("classic"));
    // Every group here is a classic one.
    let shards = if classic_wanted {
        context.handle.shard_count()
    } else {
        0
    };
    for shard in 0..shards {
        let listed = context
            .handle
            .on_shard(shard, |_| async move {
                let context = Context::current();
                let coordinator = context.groups.borrow();
                let mut ids: Vec<&String> = coordinator
                    .groups
                    .keys()
                    .chain(coordinator.offsets.keys())
                    .collect();
                ids.sort();
                ids.dedup();
                Ok(ids
                    .into_iter()
                    .map(|id| {
                        let protocol_type =
                            coordinator.groups.get(id).map_or("", Group::protocol_type);
                        (
                            id.clone(),
                            protocol_type.to_string(),
                            coordinator.state(id).name(),
                        )
                    })
                    .collect::<Vec<_>>())
            })
            .await;
        groups.extend(listed.unwrap_or_default());
    }
    ListGroupsResponse {
        error_code: error_code::NONE,
        groups: groups
            .into_iter()
            .filter(|(_, _, state)| {
                request.states_filter.is_empty()
                    || request
                        .states_filter
                        .iter()
                        .any(|wanted| wanted.eq_ignore_ascii_case(state))
            })
            .map(|(group_id, protocol_type, state)| ListedGroup {
                group_id,
                protocol_type,
                group_state: state.to_string(),
                group_type: "classic".to_string(),
            })
            .collect(),
        ..ListGroupsResponse::default()
    }
}

pub async fn describe_groups(
    context: &Context,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let include_operations = request.include_authorized_operations;
    let mut groups = Vec::with_capacity(request.groups.len());
    for group_id in request.groups {
        let dead = |code| DescribedGroup {
            error_code: code,
            group_id: group_id.clone(),
            group_state: "Dead".into(),
            ..DescribedGroup::default()
        };
        if group_id.is_empty() {
            groups.push(dead(error_code::INVALID_GROUP_ID));
            continue;
        }
        let id = group_id.clone();
        let described = on_coordinator(context, &group_id, move |context, _| async move {
            let coordinator = context.groups.borrow();
            if !coordinator.exists(&id) {
                return None;
            }
            let state = coordinator.state(&id).name().to_string();
            Some(match coordinator.groups.get(&id) {
                None => (state, String::new(), String::new(), Vec::new()),
                Some(group) => (
                    state,
                    group.protocol_type().to_string(),
                    group.protocol().to_string(),
                    group
                        .members()
                        .into_iter()
                        .map(|member| DescribedGroupMember {
                            member_id: member.member_id,
                            group_instance_id: member.instance_id,
                            client_id: member.client_id,
                            client_host: member.client_host,
                            member_metadata: member.metadata,
                            member_assignment: member.assignment,
                        })
                        .collect(),
                ),
            })
        })
        .await;
        groups.push(match described {
            Err(code) => dead(code),
            Ok(None) => dead(error_code::NONE),
            Ok(Some((group_state, protocol_type, protocol_data, members))) => DescribedGroup {
                error_code: error_code::NONE,
                group_id,
                group_state,
                protocol_type,
                protocol_data,
                members,
                authorized_operations: if include_operations {
                    super::metadata::GROUP_OPERATIONS
                } else {
                    i32::MIN
                },
            },
        });
    }
    DescribeGroupsResponse {
        groups,
        ..DescribeGroupsResponse::default()
    }
}

pub async fn delete_groups(
    context: &Context,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let code = if group_id.is_empty() {
            error_code::INVALID_GROUP_ID
        } else {
            let id = group_id.clone();
            on_coordinator(context, &group_id, move |context, log| async move {
                delete_group(&context, &log, id).await
            })
            .await
            .unwrap_or_else(|code| code)
        };
        results.push(DeletableGroupResult {
            group_id,
            error_code: code,
        });
    }
    DeleteGroupsResponse {
        results,
        ..DeleteGroupsResponse::default()
    }
}

/// Deletes an empty group: tombstones for its commits, then its state.
async fn delete_group(context: &Context, log: &TopicPartition, group_id: String) -> i16 {
    let keys: Vec<(String, i32)> = {
        let coordinator = context.groups.borrow();
        if !coordinator.exists(&group_id) {
            return error_code::GROUP_ID_NOT_FOUND;
        }
        if coordinator
            .groups
            .get(&group_id)
            .is_some_and(|group| !group.is_idle())
        {
            return error_code::NON_EMPTY_GROUP;
        }
        coordinator
            .offsets
            .get(&group_id)
            .map(|offsets| offsets.keys().cloned().collect())
            .unwrap_or_default()
    };
    // The membership record goes too, else a coordinator taking the group over would
    // find it again.
    let tombstones = keys
        .iter()
        .map(|(topic, partition)| offsets::encode_key(&group_id, topic, *partition))
        .chain(std::iter::once(offsets::encode_group_key(&group_id)));
    if let Err(error) = write_tombstones(context, log, tombstones).await {
        log::warn!("deleting group {group_id}: {error}");
        return error_code::COORDINATOR_NOT_AVAILABLE;
    }
    let mut coordinator = context.groups.borrow_mut();
    if coordinator
        .groups
        .get(&group_id)
        .is_some_and(|group| !group.is_idle())
    {
        // Someone joined while the tombstones were written: the commits are gone, the group
        // stays.
        coordinator.offsets.remove(&group_id);
        return error_code::NON_EMPTY_GROUP;
    }
    coordinator.groups.remove(&group_id);
    coordinator.offsets.remove(&group_id);
    error_code::NONE
}

/// OffsetDelete (KIP-496): deletes a group's commits of the partitions named, as Kafka
/// does: any of an empty group; of a consumer group with members, those of topics no member
/// subscribes to (GROUP_SUBSCRIBED_TO_TOPIC for the rest); none of another group with
/// members (NON_EMPTY_GROUP). Partitions that do not exist get UNKNOWN_TOPIC_OR_PARTITION.
pub async fn offset_delete(
    context: &Context,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let refused = |code| OffsetDeleteResponse {
        error_code: code,
        ..OffsetDeleteResponse::default()
    };
    if request.group_id.is_empty() {
        return refused(error_code::INVALID_GROUP_ID);
    }
    let table = context.topics();
    let wanted: Vec<(String, Vec<(i32, bool)>)> = request
        .topics
        .into_iter()
        .map(|topic| {
            let known = table.get(&topic.name);
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let index = partition.partition_index;
                    (index, known.is_some_and(|known| known.log(index).is_some()))
                })
                .collect();
            (topic.name, partitions)
        })
        .collect();
    let group_id = request.group_id;
    let outcome = on_coordinator(context, &group_id.clone(), move |context, log| async move {
        delete_offsets(&context, &log, group_id, wanted).await
    })
    .await
    .unwrap_or_else(Err);
    match outcome {
        Ok(topics) => OffsetDeleteResponse {
            error_code: error_code::NONE,
            topics,
            ..OffsetDeleteResponse::default()
        },
        Err(code) => refused(code),
    }
}

/// [`offset_delete`] on the coordinator: `wanted` names each topic's partitions and whether
/// each exists.
async fn delete_offsets(
    context: &Context,
    log: &TopicPartition,
    group_id: String,
    wanted: Vec<(String, Vec<(i32, bool)>)>,
) -> Result<Vec<OffsetDeleteResponseTopic>, i16> {
    let subscribed = {
        let coordinator = context.groups.borrow();
        if !coordinator.exists(&group_id) {
            return Err(error_code::GROUP_ID_NOT_FOUND);
        }
        match coordinator.groups.get(&group_id) {
            Some(group) if !group.is_empty() => {
                if group.protocol_type() != "consumer" {
                    return Err(error_code::NON_EMPTY_GROUP);
                }
                // Subscriptions that cannot be read protect every topic, as Kafka's do.
                Some(group.subscribed_topics())
            }
            _ => None,
        }
    };
    let protected = |topic: &str| {
        subscribed
            .as_ref()
            .is_some_and(|topics| topics.as_ref().is_none_or(|topics| topics.contains(topic)))
    };
    let mut deletions = Vec::new();
    let topics: Vec<OffsetDeleteResponseTopic> = wanted
        .into_iter()
        .map(|(name, partitions)| OffsetDeleteResponseTopic {
            partitions: partitions
                .into_iter()
                .map(|(partition_index, exists)| {
                    let code = if !exists {
                        error_code::UNKNOWN_TOPIC_OR_PARTITION
                    } else if protected(&name) {
                        error_code::GROUP_SUBSCRIBED_TO_TOPIC
                    } else {
                        deletions.push((name.clone(), partition_index));
                        error_code::NONE
                    };
                    OffsetDeleteResponsePartition {
                        partition_index,
                        error_code: code,
                    }
                })
                .collect(),
            name,
        })
        .collect();
    let committed: Vec<(String, i32)> = {
        let coordinator = context.groups.borrow();
        let offsets = coordinator.offsets.get(&group_id);
        deletions
            .into_iter()
            .filter(|key| offsets.is_some_and(|offsets| offsets.contains_key(key)))
            .collect()
    };
    let tombstones = committed
        .iter()
        .map(|(topic, partition)| offsets::encode_key(&group_id, topic, *partition));
    if let Err(error) = write_tombstones(context, log, tombstones).await {
        log::warn!("deleting offsets of group {group_id}: {error}");
        return Err(error_code::COORDINATOR_NOT_AVAILABLE);
    }
    let mut coordinator = context.groups.borrow_mut();
    for (topic, partition) in committed {
        coordinator.apply(&group_id, &topic, partition, None);
    }
    Ok(topics)
}

/// Appends `batch` to `__consumer_offsets` partition `log`, answered once the in-sync
/// replicas hold it (Kafka's `offsets.commit.timeout.ms`).
async fn append_durably(
    context: &Context,
    log: &TopicPartition,
    batch: BatchBuilder,
) -> Result<coremq_engine::AppendInfo, coremq_engine::Error> {
    let durable = Consistency::Durable {
        timeout: OFFSET_COMMIT_TIMEOUT,
    };
    context.cluster.append(log, batch.build(), durable).await
}

/// Appends one batch of tombstones to `log` for the records `keys` name; nothing when
/// there are none.
async fn write_tombstones(
    context: &Context,
    log: &TopicPartition,
    keys: impl Iterator<Item = Vec<u8>>,
) -> Result<(), coremq_engine::Error> {
    let mut batch = BatchBuilder::new(OFFSETS_CODEC);
    for key in keys {
        batch.push(Timestamp::now(), Some(&key), None, &[]);
    }
    if batch.is_empty() {
        return Ok(());
    }
    append_durably(context, log, batch).await.map(drop)
}

/// Deletes every group's commits of `topic`, on every shard, as Kafka does when a topic is
/// deleted: a topic created later under the same name starts without them.
pub async fn forget_topic(context: &Context, topic: &str) {
    for shard in 0..context.handle.shard_count() {
        let name = topic.to_string();
        let forgotten = context
            .handle
            .on_shard(shard, move |_| async move {
                forget_topic_here(&Context::current(), &name).await;
                Ok(())
            })
            .await;
        if let Err(error) = forgotten {
            log::warn!("forgetting the commits of deleted topic {topic} on shard {shard}: {error}");
        }
    }
}

/// This shard's part of [`forget_topic`]: tombstones in each group's coordinator log, then
/// the commits leave memory. A failed append keeps them, as the log does.
async fn forget_topic_here(context: &Context, topic: &str) {
    let mut by_log: BTreeMap<TopicPartition, Vec<(String, i32)>> = BTreeMap::new();
    for (group, offsets) in &context.groups.borrow().offsets {
        for (_, partition) in offsets.keys().filter(|(name, _)| name == topic) {
            by_log
                .entry(coordinator_log(context, group))
                .or_default()
                .push((group.clone(), *partition));
        }
    }
    for (log, keys) in by_log {
        let tombstones = keys
            .iter()
            .map(|(group, partition)| offsets::encode_key(group, topic, *partition));
        match write_tombstones(context, &log, tombstones).await {
            Ok(()) => {
                let mut coordinator = context.groups.borrow_mut();
                for (group, partition) in keys {
                    coordinator.apply(&group, topic, partition, None);
                }
            }
            Err(error) => log::warn!("forgetting the commits of deleted topic {topic}: {error}"),
        }
    }
}
