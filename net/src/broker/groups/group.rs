//! One consumer group's membership state machine (Kafka's classic group protocol), without
//! I/O: calls take the current time, answers to waiting JoinGroup and SyncGroup requests go
//! out through one-shot channels, and [`Group::tick`] runs the timers.
//!
//! States follow Kafka's `GroupMetadata`: `Empty` (no members, maybe committed offsets),
//! `PreparingRebalance` (collecting JoinGroups), `CompletingRebalance` (joined, waiting for
//! the leader's SyncGroup), `Stable`. Assignors run in the clients (eager or cooperative
//! alike): the broker picks the protocol every member supports, hands the leader every
//! member's metadata, and passes the leader's assignments on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::offsets::{StoredGroup, StoredMember};
use crate::protocol::codec;
use crate::protocol::error_code;
use crate::protocol::messages::join_group_response::JoinGroupResponseMember;
use crate::protocol::messages::{
    ConsumerProtocolSubscription, JoinGroupResponse, SyncGroupResponse,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    /// The name DescribeGroups and ListGroups use.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// An answer now, or a channel it will come through.
pub enum Reply<T> {
    Now(T),
    Later(flume::Receiver<T>),
}

/// What a JoinGroup carries.
pub struct Join {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    /// The broker's `group.min.session.timeout.ms` to `group.max.session.timeout.ms`.
    pub session_timeout_allowed: std::ops::RangeInclusive<Duration>,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+ clients take a member id from MEMBER_ID_REQUIRED and join again.
    pub requires_known_member_id: bool,
}

/// One member, as DescribeGroups shows it.
pub struct MemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// The session expires here unless a heartbeat (or any request of the member) comes.
    deadline: Instant,
    /// Order of joining; the first one leads when no leader is left.
    joined: u64,
    awaiting_join: Option<flume::Sender<JoinGroupResponse>>,
    awaiting_sync: Option<flume::Sender<SyncGroupResponse>>,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }
}

pub struct Group {
    pub id: String,
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they join or expire.
    pending: HashMap<String, Instant>,
    /// `group.instance.id` to the member id it holds now.
    instances: HashMap<String, String>,
    rebalance_deadline: Instant,
    /// A new group waits this long for more members before its first assignment
    /// (`group.initial.rebalance.delay.ms`).
    initial_delay_until: Option<Instant>,
    joins: u64,
    initial_delay: Duration,
    /// The membership changed in a way the log must hold (a generation settled, or a static
    /// member replaced) and has not been written since.
    unstored: bool,
}

/// A JoinGroup answer that refuses `member_id` with `code`.
pub fn error_join(member_id: String, code: i16) -> JoinGroupResponse {
    JoinGroupResponse {
        error_code: code,
        generation_id: -1,
        member_id,
        ..JoinGroupResponse::default()
    }
}

pub fn error_sync(code: i16) -> SyncGroupResponse {
    SyncGroupResponse {
        error_code: code,
        ..SyncGroupResponse::default()
    }
}

impl Group {
    pub fn new(id: String, initial_delay: Duration, now: Instant) -> Group {
        Group {
            id,
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            instances: HashMap::new(),
            rebalance_deadline: now,
            initial_delay_until: None,
            joins: 0,
            initial_delay,
            unstored: false,
        }
    }

    /// The group as `__consumer_offsets` held it: a coordinator that takes the group over
    /// (after a restart or a leadership move) carries on with the same generation, leader
    /// and assignments, and each member's session starts again from `now` (Kafka's
    /// `loadGroup`), so members that are still there keep heartbeating without a rebalance.
    pub fn restore(
        id: String,
        stored: StoredGroup,
        initial_delay: Duration,
        now: Instant,
    ) -> Group {
        let mut group = Group::new(id, initial_delay, now);
        group.generation = stored.generation;
        group.protocol_type = Some(stored.protocol_type);
        let Some(protocol) = stored.protocol.filter(|_| !stored.members.is_empty()) else {
            return group;
        };
        for member in stored.members {
            if let Some(instance_id) = &member.instance_id {
                group
                    .instances
                    .insert(instance_id.clone(), member.member_id.clone());
            }
            group.joins += 1;
            let session_timeout = Duration::from_millis(member.session_timeout_ms.max(0) as u64);
            group.members.insert(
                member.member_id,
                Member {
                    instance_id: member.instance_id,
                    client_id: member.client_id,
                    client_host: member.client_host,
                    session_timeout,
                    rebalance_timeout: Duration::from_millis(
                        member.rebalance_timeout_ms.max(0) as u64
                    ),
                    protocols: vec![(protocol.clone(), member.subscription)],
                    assignment: member.assignment,
                    deadline: now + session_timeout,
                    joined: group.joins,
                    awaiting_join: None,
                    awaiting_sync: None,
                },
            );
        }
        group.leader = stored
            .leader
            .filter(|leader| group.members.contains_key(leader));
        group.protocol = Some(protocol);
        group.state = State::Stable;
        group
    }

    /// What the log must hold of the group now, if it changed since it was last taken: a
    /// settled generation (Stable, or Empty once every member left). Taking it marks it
    /// stored; [`Group::store_failed`] undoes that.
    pub fn take_unstored(&mut self, now_ms: i64) -> Option<StoredGroup> {
        if !self.unstored || !matches!(self.state, State::Stable | State::Empty) {
            return None;
        }
        self.unstored = false;
        let protocol = self.protocol.clone();
        let members = self
            .members
            .iter()
            .map(|(id, member)| StoredMember {
                member_id: id.clone(),
                instance_id: member.instance_id.clone(),
                client_id: member.client_id.clone(),
                client_host: member.client_host.clone(),
                rebalance_timeout_ms: i32::try_from(member.rebalance_timeout.as_millis())
                    .unwrap_or(i32::MAX),
                session_timeout_ms: i32::try_from(member.session_timeout.as_millis())
                    .unwrap_or(i32::MAX),
                subscription: protocol
                    .as_deref()
                    .map(|protocol| member.metadata(protocol))
                    .unwrap_or_default(),
                assignment: member.assignment.clone(),
            })
            .collect();
        Some(StoredGroup {
            protocol_type: self.protocol_type().to_string(),
            generation: self.generation,
            protocol,
            leader: self.leader.clone(),
            state_timestamp: now_ms,
            members,
        })
    }

    /// The record [`Group::take_unstored`] gave was not written: it is due again.
    pub fn store_failed(&mut self) {
        self.unstored = true;
    }

    /// Whether the group has a change the log does not hold yet.
    pub fn is_unstored(&self) -> bool {
        self.unstored
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn protocol_type(&self) -> &str {
        self.protocol_type.as_deref().unwrap_or("")
    }

    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("")
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// No members and none about to join.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    /// The topics the members of a consumer group subscribe to (Kafka's
    /// `subscribedTopics`): `None` unless the group speaks the consumer protocol, has chosen
    /// one, and every member's subscription in it can be read.
    pub fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type() != "consumer" || self.protocol.is_none() {
            return None;
        }
        let mut topics = BTreeSet::new();
        for member in self.members.values() {
            let metadata = member.metadata(self.protocol());
            let subscription: ConsumerProtocolSubscription =
                codec::decode_versioned(metadata).ok()?;
            topics.extend(subscription.topics);
        }
        Some(topics)
    }

    pub fn members(&self) -> Vec<MemberSummary> {
        let with_metadata = matches!(self.state, State::Stable | State::CompletingRebalance);
        self.members
            .iter()
            .map(|(id, member)| MemberSummary {
                member_id: id.clone(),
                instance_id: member.instance_id.clone(),
                client_id: member.client_id.clone(),
                client_host: member.client_host.clone(),
                metadata: if with_metadata {
                    member.metadata(self.protocol())
                } else {
                    Bytes::new()
                },
                assignment: if self.state == State::Stable {
                    member.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect()
    }

    fn new_member_id(&self, client_id: &str, instance_id: Option<&str>) -> String {
        let prefix = instance_id.unwrap_or(client_id);
        let mut bytes = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
        let suffix: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("{prefix}-{suffix}")
    }

    /// Checks a request's member id against `group.instance.id`: a static member whose
    /// instance id another member id holds now was replaced (FENCED_INSTANCE_ID).
    fn check_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), i16> {
        if let Some(instance_id) = instance_id
            && let Some(holder) = self.instances.get(instance_id)
            && holder != member_id
        {
            return Err(error_code::FENCED_INSTANCE_ID);
        }
        if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err(error_code::UNKNOWN_MEMBER_ID)
        }
    }

    fn supports_all(&self, protocols: &[(String, Bytes)]) -> bool {
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|member| member.protocols.iter().any(|(other, _)| other == name))
        })
    }

    pub fn join(&mut self, join: Join, now: Instant) -> Reply<JoinGroupResponse> {
        let refuse = |code| Reply::Now(error_join(join.member_id.clone(), code));
        if !join.session_timeout_allowed.contains(&join.session_timeout) {
            return refuse(error_code::INVALID_SESSION_TIMEOUT);
        }
        if join.protocol_type.is_empty() || join.protocols.is_empty() {
            return refuse(error_code::INCONSISTENT_GROUP_PROTOCOL);
        }
        if self.state != State::Empty
            && (self.protocol_type.as_deref() != Some(join.protocol_type.as_str())
                || !self.supports_all(&join.protocols))
        {
            return refuse(error_code::INCONSISTENT_GROUP_PROTOCOL);
        }
        if join.member_id.is_empty() {
            return self.join_new(join, now);
        }
        if self.pending.remove(&join.member_id).is_some() {
            let member_id = join.member_id.clone();
            return self.add_and_rebalance(member_id, join, now);
        }
        if let Err(code) = self.check_member(&join.member_id, join.instance_id.as_deref()) {
            return refuse(code);
        }
        let member_id = join.member_id.clone();
        let changed = self.members[&member_id].protocols != join.protocols;
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        let member = self.members.get_mut(&member_id).expect("checked above");
        member.protocols = join.protocols;
        member.session_timeout = join.session_timeout;
        member.rebalance_timeout = join.rebalance_timeout;
        member.deadline = now + join.session_timeout;
        // An unchanged member joining again gets the current generation; the leader of a
        // stable group joining again starts a rebalance, as in Kafka.
        let current = match self.state {
            State::CompletingRebalance => !changed,
            State::Stable => !changed && !is_leader,
            State::Empty | State::PreparingRebalance => false,
        };
        if current {
            Reply::Now(self.join_answer(&member_id))
        } else {
            self.await_join(member_id, now)
        }
    }

    fn join_new(&mut self, join: Join, now: Instant) -> Reply<JoinGroupResponse> {
        let member_id = self.new_member_id(&join.client_id, join.instance_id.as_deref());
        if let Some(instance_id) = join.instance_id.clone()
            && let Some(old_id) = self.instances.get(&instance_id).cloned()
        {
            // A static member restarted: it takes over its old place under a new member id;
            // the old id is fenced. A stable group keeps its assignment (no rebalance).
            let mut old = self.members.remove(&old_id).expect("instances map members");
            if let Some(waiting) = old.awaiting_join.take() {
                let _ = waiting.send(error_join(old_id.clone(), error_code::FENCED_INSTANCE_ID));
            }
            if let Some(waiting) = old.awaiting_sync.take() {
                let _ = waiting.send(error_sync(error_code::FENCED_INSTANCE_ID));
            }
            let unchanged = old.protocols == join.protocols;
            old.protocols = join.protocols;
            old.client_id = join.client_id;
            old.client_host = join.client_host;
            old.session_timeout = join.session_timeout;
            old.rebalance_timeout = join.rebalance_timeout;
            old.deadline = now + join.session_timeout;
            self.members.insert(member_id.clone(), old);
            self.instances.insert(instance_id, member_id.clone());
            if self.leader.as_deref() == Some(old_id.as_str()) {
                self.leader = Some(member_id.clone());
            }
            return match self.state {
                State::Stable if unchanged => {
                    self.unstored = true;
                    let mut answer = self.join_answer(&member_id);
                    // Its assignment stands; it need not assign again even if it leads.
                    answer.members.clear();
                    Reply::Now(answer)
                }
                _ => self.await_join(member_id, now),
            };
        }
        if join.instance_id.is_none() && join.requires_known_member_id {
            self.pending
                .insert(member_id.clone(), now + join.session_timeout);
            return Reply::Now(error_join(member_id, error_code::MEMBER_ID_REQUIRED));
        }
        self.add_and_rebalance(member_id, join, now)
    }

    fn add_and_rebalance(
        &mut self,
        member_id: String,
        join: Join,
        now: Instant,
    ) -> Reply<JoinGroupResponse> {
        if self.state == State::Empty {
            self.protocol_type = Some(join.protocol_type.clone());
            self.initial_delay_until = Some(now + self.initial_delay);
        } else if let Some(until) = self.initial_delay_until.as_mut() {
            *until = (now + self.initial_delay).min(self.rebalance_deadline);
        }
        if let Some(instance_id) = &join.instance_id {
            self.instances
                .insert(instance_id.clone(), member_id.clone());
        }
        self.joins += 1;
        self.members.insert(
            member_id.clone(),
            Member {
                instance_id: join.instance_id,
                client_id: join.client_id,
                client_host: join.client_host,
                session_timeout: join.session_timeout,
                rebalance_timeout: join.rebalance_timeout,
                protocols: join.protocols,
                assignment: Bytes::new(),
                deadline: now + join.session_timeout,
                joined: self.joins,
                awaiting_join: None,
                awaiting_sync: None,
            },
        );
        self.await_join(member_id, now)
    }

    fn await_join(&mut self, member_id: String, now: Instant) -> Reply<JoinGroupResponse> {
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        let (send, receive) = flume::bounded(1);
        let member = self.members.get_mut(&member_id).expect("member present");
        if let Some(previous) = member.awaiting_join.replace(send) {
            let _ = previous.send(error_join(member_id, error_code::REBALANCE_IN_PROGRESS));
        }
        self.maybe_complete_join(now);
        Reply::Later(receive)
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        for member in self.members.values_mut() {
            if let Some(waiting) = member.awaiting_sync.take() {
                let _ = waiting.send(error_sync(error_code::REBALANCE_IN_PROGRESS));
            }
        }
        let timeout = self
            .members
            .values()
            .map(|member| member.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.rebalance_deadline = now + timeout;
        if let Some(until) = self.initial_delay_until.as_mut() {
            *until = (*until).min(self.rebalance_deadline);
        }
        self.state = State::PreparingRebalance;
    }

    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.pending.is_empty()
            && self
                .members
                .values()
                .all(|member| member.awaiting_join.is_some());
        let delayed = self.initial_delay_until.is_some_and(|until| now < until);
        if (all_joined && !delayed) || now >= self.rebalance_deadline {
            self.complete_join(now);
        }
    }

    /// Ends the join phase: members that did not rejoin are dropped, the next generation
    /// starts, and every joined member gets its answer (the leader with all metadata).
    fn complete_join(&mut self, now: Instant) {
        self.initial_delay_until = None;
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, member)| member.awaiting_join.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
        self.generation += 1;
        if self.members.is_empty() {
            // Kafka's `initNextGeneration`: an empty group keeps its protocol type, so
            // ListGroups still says `consumer`, not an empty ("simple") type.
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            self.unstored = true;
            return;
        }
        self.protocol = Some(self.select_protocol());
        if !self
            .leader
            .as_ref()
            .is_some_and(|leader| self.members.contains_key(leader))
        {
            self.leader = self
                .members
                .iter()
                .min_by_key(|(_, member)| member.joined)
                .map(|(id, _)| id.clone());
        }
        self.state = State::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let answer = self.join_answer(&id);
            let member = self.members.get_mut(&id).expect("listed above");
            member.assignment = Bytes::new();
            member.deadline = now + member.session_timeout;
            if let Some(waiting) = member.awaiting_join.take() {
                let _ = waiting.send(answer);
            }
        }
    }

    /// The protocol every member supports that most members prefer (Kafka's vote).
    fn select_protocol(&self) -> String {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            let choice = member
                .protocols
                .iter()
                .map(|(name, _)| name.as_str())
                .find(|name| {
                    self.members
                        .values()
                        .all(|other| other.protocols.iter().any(|(theirs, _)| theirs == name))
                });
            if let Some(choice) = choice {
                *votes.entry(choice).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, count)| *count)
            .map(|(name, _)| name.to_string())
            .unwrap_or_default()
    }

    fn join_answer(&self, member_id: &str) -> JoinGroupResponse {
        let protocol = self.protocol().to_string();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, member)| JoinGroupResponseMember {
                    member_id: id.clone(),
                    group_instance_id: member.instance_id.clone(),
                    metadata: member.metadata(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinGroupResponse {
            error_code: error_code::NONE,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: Some(protocol),
            leader,
            member_id: member_id.to_string(),
            members,
            ..JoinGroupResponse::default()
        }
    }

    fn sync_answer(&self, assignment: Bytes) -> SyncGroupResponse {
        SyncGroupResponse {
            error_code: error_code::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment,
            ..SyncGroupResponse::default()
        }
    }

    /// Checks member, instance and generation of a SyncGroup, Heartbeat or member commit.
    pub fn check_generation(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        self.check_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(error_code::ILLEGAL_GENERATION);
        }
        Ok(())
    }

    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol: (Option<&str>, Option<&str>),
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Reply<SyncGroupResponse> {
        if let Err(code) = self.check_generation(member_id, instance_id, generation) {
            return Reply::Now(error_sync(code));
        }
        let (protocol_type, protocol_name) = protocol;
        if protocol_type.is_some_and(|given| given != self.protocol_type())
            || protocol_name.is_some_and(|given| given != self.protocol())
        {
            return Reply::Now(error_sync(error_code::INCONSISTENT_GROUP_PROTOCOL));
        }
        self.touch(member_id, now);
        match self.state {
            State::Empty => Reply::Now(error_sync(error_code::UNKNOWN_MEMBER_ID)),
            State::PreparingRebalance => Reply::Now(error_sync(error_code::REBALANCE_IN_PROGRESS)),
            State::Stable => {
                Reply::Now(self.sync_answer(self.members[member_id].assignment.clone()))
            }
            State::CompletingRebalance => {
                let (send, receive) = flume::bounded(1);
                self.members
                    .get_mut(member_id)
                    .expect("checked")
                    .awaiting_sync = Some(send);
                if self.leader.as_deref() == Some(member_id) {
                    let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
                    self.state = State::Stable;
                    self.unstored = true;
                    let mut waiting = Vec::new();
                    for (id, member) in self.members.iter_mut() {
                        member.assignment = assignments.remove(id).unwrap_or_default();
                        if let Some(sender) = member.awaiting_sync.take() {
                            waiting.push((sender, member.assignment.clone()));
                        }
                    }
                    for (sender, assignment) in waiting {
                        let _ = sender.send(self.sync_answer(assignment));
                    }
                }
                Reply::Later(receive)
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        if let Err(code) = self.check_generation(member_id, instance_id, generation) {
            return code;
        }
        self.touch(member_id, now);
        match self.state {
            State::PreparingRebalance => error_code::REBALANCE_IN_PROGRESS,
            State::Empty => error_code::UNKNOWN_MEMBER_ID,
            State::CompletingRebalance | State::Stable => error_code::NONE,
        }
    }

    /// Keeps a member's session alive.
    pub fn touch(&mut self, member_id: &str, now: Instant) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.deadline = now + member.session_timeout;
        }
    }

    /// LeaveGroup for one member (by member id, or by instance id for a static member).
    pub fn leave(&mut self, member_id: &str, instance_id: Option<&str>, now: Instant) -> i16 {
        let member_id = match instance_id {
            Some(instance_id) => match self.instances.get(instance_id) {
                None => return error_code::UNKNOWN_MEMBER_ID,
                Some(holder) if !member_id.is_empty() && holder != member_id => {
                    return error_code::FENCED_INSTANCE_ID;
                }
                Some(holder) => holder.clone(),
            },
            None => member_id.to_string(),
        };
        if self.pending.remove(&member_id).is_some() {
            return error_code::NONE;
        }
        if !self.members.contains_key(&member_id) {
            return error_code::UNKNOWN_MEMBER_ID;
        }
        self.remove(&member_id);
        self.member_gone(now);
        error_code::NONE
    }

    fn remove(&mut self, member_id: &str) {
        if let Some(mut member) = self.members.remove(member_id) {
            if let Some(instance_id) = &member.instance_id {
                self.instances.remove(instance_id);
            }
            if let Some(waiting) = member.awaiting_join.take() {
                let _ = waiting.send(error_join(member_id.into(), error_code::UNKNOWN_MEMBER_ID));
            }
            if let Some(waiting) = member.awaiting_sync.take() {
                let _ = waiting.send(error_sync(error_code::UNKNOWN_MEMBER_ID));
            }
        }
    }

    /// After a member left: a settled group rebalances; a join phase may be complete now.
    fn member_gone(&mut self, now: Instant) {
        if matches!(self.state, State::Stable | State::CompletingRebalance) {
            self.prepare_rebalance(now);
        }
        self.maybe_complete_join(now);
    }

    /// Expires sessions and pending member ids, and ends a join phase whose time is up.
    pub fn tick(&mut self, now: Instant) {
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, member)| member.awaiting_join.is_none() && member.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            log::info!("group {}: session of member {id} expired", self.id);
            self.remove(id);
        }
        if expired.is_empty() {
            self.maybe_complete_join(now);
        } else {
            self.member_gone(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(member_id: &str, instance_id: Option<&str>, protocols: &[&str]) -> Join {
        Join {
            member_id: member_id.into(),
            instance_id: instance_id.map(Into::into),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            session_timeout_allowed: Duration::from_secs(6)..=Duration::from_secs(30 * 60),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|name| (name.to_string(), Bytes::from(format!("meta-{name}"))))
                .collect(),
            requires_known_member_id: true,
        }
    }

    fn now_answer<T>(reply: Reply<T>) -> T {
        match reply {
            Reply::Now(answer) => answer,
            Reply::Later(_) => panic!("expected an answer now"),
        }
    }

    fn later<T>(reply: Reply<T>) -> flume::Receiver<T> {
        match reply {
            Reply::Later(receiver) => receiver,
            Reply::Now(_) => panic!("expected to wait"),
        }
    }

    /// Joins a new dynamic member through the MEMBER_ID_REQUIRED round trip.
    fn join_new(
        group: &mut Group,
        protocols: &[&str],
        now: Instant,
    ) -> (String, flume::Receiver<JoinGroupResponse>) {
        let first = now_answer(group.join(join("", None, protocols), now));
        assert_eq!(first.error_code, error_code::MEMBER_ID_REQUIRED);
        let id = first.member_id;
        let waiting = later(group.join(join(&id, None, protocols), now));
        (id, waiting)
    }

    #[test]
    fn a_settled_generation_is_stored_and_a_restored_group_carries_on() {
        let start = Instant::now();
        let mut group = Group::new("g".into(), Duration::from_millis(100), start);
        let (a, a_join) = join_new(&mut group, &["range"], start);
        let (b, b_join) = join_new(&mut group, &["range"], start);
        group.tick(start + Duration::from_millis(150));
        a_join.try_recv().unwrap();
        b_join.try_recv().unwrap();
        assert_eq!(
            group.take_unstored(1),
            None,
            "nothing settled while completing"
        );
        let now = start + Duration::from_millis(200);
        let assignments = vec![(a.clone(), Bytes::from("A")), (b.clone(), Bytes::from("B"))];
        later(group.sync(&a, None, 1, (None, None), assignments, now));
        let stored = group
            .take_unstored(7)
            .expect("the leader's sync settled generation 1");
        assert_eq!(group.take_unstored(8), None, "taken once");
        assert_eq!((stored.generation, stored.state_timestamp), (1, 7));
        assert_eq!(stored.leader.as_deref(), Some(a.as_str()));
        assert_eq!(stored.protocol.as_deref(), Some("range"));
        assert_eq!(stored.members.len(), 2);
        group.store_failed();
        assert_eq!(group.take_unstored(9).map(|g| g.generation), Some(1));

        // Another coordinator takes the group over from the record.
        let later_on = now + Duration::from_secs(60);
        let mut restored = Group::restore("g".into(), stored, Duration::ZERO, later_on);
        assert_eq!(restored.state(), State::Stable);
        assert_eq!(restored.heartbeat(&b, None, 1, later_on), error_code::NONE);
        assert_eq!(
            restored.heartbeat(&b, None, 0, later_on),
            error_code::ILLEGAL_GENERATION
        );
        let b_sync = now_answer(restored.sync(&b, None, 1, (None, None), vec![], later_on));
        assert_eq!(b_sync.assignment, Bytes::from("B"));
        let described = restored.members();
        assert_eq!(described[0].metadata, Bytes::from("meta-range"));
        // The same member joining again gets the current generation, no rebalance.
        let answer = now_answer(restored.join(join(&b, None, &["range"]), later_on));
        assert_eq!(answer.generation_id, 1);
        // Sessions run from the takeover: members that do not come back expire.
        restored.tick(later_on + Duration::from_secs(9));
        assert_eq!(restored.state(), State::Stable);
        restored.tick(later_on + Duration::from_secs(11));
        assert_eq!(restored.state(), State::Empty);
        let emptied = restored
            .take_unstored(10)
            .expect("the empty generation is stored");
        assert_eq!((emptied.generation, emptied.members.len()), (2, 0));
        let empty = Group::restore("g".into(), emptied, Duration::ZERO, later_on);
        assert_eq!(empty.state(), State::Empty);
        assert!(empty.is_idle());
        assert_eq!(empty.protocol_type(), "consumer");
    }

    #[test]
    fn an_emptied_group_keeps_its_protocol_type() {
        let start = Instant::now();
        let mut group = Group::new("g".into(), Duration::from_millis(100), start);
        let (a, _a_join) = join_new(&mut group, &["range"], start);
        group.tick(start + Duration::from_millis(150));
        assert_eq!(group.protocol_type(), "consumer");
        assert_eq!(
            group.leave(&a, None, start + Duration::from_millis(200)),
            error_code::NONE
        );
        group.tick(start + Duration::from_millis(300));
        assert_eq!(group.state(), State::Empty);
        assert_eq!(group.protocol_type(), "consumer");
    }

    #[test]
    fn three_members_join_sync_and_rebalance_when_one_leaves() {
        let start = Instant::now();
        let mut group = Group::new("g".into(), Duration::from_millis(100), start);
        let (a, a_join) = join_new(&mut group, &["range", "roundrobin"], start);
        let (b, b_join) = join_new(&mut group, &["roundrobin", "range"], start);
        let (c, c_join) = join_new(&mut group, &["roundrobin"], start);
        assert!(
            a_join.try_recv().is_err(),
            "initial delay holds the first join"
        );
        group.tick(start + Duration::from_millis(150));
        let answers = [&a_join, &b_join, &c_join].map(|waiting| waiting.try_recv().unwrap());
        for answer in &answers {
            assert_eq!(answer.error_code, error_code::NONE);
            assert_eq!(answer.generation_id, 1);
            assert_eq!(answer.leader, a);
            assert_eq!(answer.protocol_name.as_deref(), Some("roundrobin"));
        }
        assert_eq!(answers[0].members.len(), 3);
        assert!(answers[1].members.is_empty());
        assert_eq!(group.state(), State::CompletingRebalance);

        let now = start + Duration::from_millis(200);
        let b_sync = later(group.sync(&b, None, 1, (None, None), vec![], now));
        let assignments = vec![
            (a.clone(), Bytes::from("A")),
            (b.clone(), Bytes::from("B")),
            (c.clone(), Bytes::from("C")),
        ];
        let a_sync = later(group.sync(&a, None, 1, (None, None), assignments, now));
        assert_eq!(a_sync.try_recv().unwrap().assignment, Bytes::from("A"));
        assert_eq!(b_sync.try_recv().unwrap().assignment, Bytes::from("B"));
        let c_sync = now_answer(group.sync(&c, None, 1, (None, Some("roundrobin")), vec![], now));
        assert_eq!(c_sync.assignment, Bytes::from("C"));
        assert_eq!(group.state(), State::Stable);
        assert_eq!(group.heartbeat(&b, None, 1, now), error_code::NONE);
        assert_eq!(
            group.heartbeat(&b, None, 0, now),
            error_code::ILLEGAL_GENERATION
        );

        assert_eq!(group.leave(&c, None, now), error_code::NONE);
        assert_eq!(group.state(), State::PreparingRebalance);
        assert_eq!(
            group.heartbeat(&a, None, 1, now),
            error_code::REBALANCE_IN_PROGRESS
        );
        let a_join = later(group.join(join(&a, None, &["roundrobin"]), now));
        assert!(a_join.try_recv().is_err(), "waits for b to rejoin");
        let b_join = later(group.join(join(&b, None, &["roundrobin"]), now));
        let answer = a_join.try_recv().unwrap();
        assert_eq!(answer.generation_id, 2);
        assert_eq!(answer.members.len(), 2);
        assert_eq!(b_join.try_recv().unwrap().generation_id, 2);
        assert_eq!(group.leave(&c, None, now), error_code::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn a_silent_member_expires_and_the_rest_rebalance() {
        let start = Instant::now();
        let mut group = Group::new("g".into(), Duration::from_millis(100), start);
        let (a, _a_join) = join_new(&mut group, &["range"], start);
        let (b, b_join) = join_new(&mut group, &["range"], start);
        group.tick(start + Duration::from_millis(100));
        assert_eq!(b_join.try_recv().unwrap().generation_id, 1);
        let _ = later(group.sync(&a, None, 1, (None, None), vec![], start));
        assert_eq!(group.state(), State::Stable);
        let later_on = start + Duration::from_secs(8);
        assert_eq!(group.heartbeat(&b, None, 1, later_on), error_code::NONE);
        group.tick(start + Duration::from_secs(11));
        assert_eq!(group.state(), State::PreparingRebalance);
        assert_eq!(
            group.heartbeat(&a, None, 1, later_on),
            error_code::UNKNOWN_MEMBER_ID
        );
        let b_join = later(group.join(join(&b, None, &["range"]), later_on));
        let answer = b_join.try_recv().unwrap();
        assert_eq!((answer.generation_id, answer.leader), (2, b));
    }

    #[test]
    fn a_member_that_does_not_rejoin_in_time_is_dropped() {
        let start = Instant::now();
        let mut group = Group::new("g".into(), Duration::ZERO, start);
        let (a, _a_join) = join_new(&mut group, &["range"], start);
        let _ = later(group.sync(&a, None, 1, (None, None), vec![], start));
        let (b, b_join) = join_new(&mut group, &["range"], start);
        assert!(b_join.try_recv().is_err());
        // a keeps heartbeating but never rejoins; the rebalance timeout (30 s) ends it.
        for second in 1..30 {
            let now = start + Duration::from_secs(second);
            group.heartbeat(&a, None, 1, now);
            group.tick(now);
        }
        assert!(b_join.try_recv().is_err());
        group.tick(start + Duration::from_secs(31));
        let answer = b_join.try_recv().unwrap();
        assert_eq!(
            (answer.generation_id, answer.leader.as_str()),
            (2, b.as_str())
        );
        assert_eq!(group.members().len(), 1);
    }

    #[test]
    fn a_static_member_rejoins_without_a_rebalance_and_fences_its_old_id() {
        let start = Instant::now();
        let mut group = Group::new("g".into(), Duration::ZERO, start);
        let a_join = later(group.join(join("", Some("i-a"), &["range"]), start));
        let a = a_join.try_recv().unwrap().member_id;
        let _ = later(group.sync(
            &a,
            Some("i-a"),
            1,
            (None, None),
            vec![(a.clone(), "A".into())],
            start,
        ));
        assert_eq!(group.state(), State::Stable);
        let again = now_answer(group.join(join("", Some("i-a"), &["range"]), start));
        assert_eq!(again.generation_id, 1, "no new generation");
        assert_ne!(again.member_id, a);
        assert_eq!(group.state(), State::Stable);
        let sync = now_answer(group.sync(
            &again.member_id,
            Some("i-a"),
            1,
            (None, None),
            vec![],
            start,
        ));
        assert_eq!(sync.assignment, Bytes::from("A"));
        assert_eq!(
            group.heartbeat(&a, Some("i-a"), 1, start),
            error_code::FENCED_INSTANCE_ID
        );
        assert_eq!(group.leave("", Some("i-a"), start), error_code::NONE);
        assert_eq!(group.state(), State::Empty);
    }

    #[test]
    fn joins_are_checked() {
        let start = Instant::now();
        let mut group = Group::new("g".into(), Duration::ZERO, start);
        let mut short = join("", None, &["range"]);
        short.session_timeout = Duration::from_secs(1);
        assert_eq!(
            now_answer(group.join(short, start)).error_code,
            error_code::INVALID_SESSION_TIMEOUT
        );
        let (_a, _waiting) = join_new(&mut group, &["range"], start);
        assert_eq!(
            now_answer(group.join(join("", None, &["roundrobin"]), start)).error_code,
            error_code::INCONSISTENT_GROUP_PROTOCOL
        );
        assert_eq!(
            now_answer(group.join(join("nobody", None, &["range"]), start)).error_code,
            error_code::UNKNOWN_MEMBER_ID
        );
    }
}
