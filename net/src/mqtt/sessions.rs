//! Persistent sessions kept across broker restarts, in the compacted internal topic
//! `__mqtt_sessions` (key: the client identifier; value: the session below; a tombstone when
//! it ends). A session stores what it is, not the messages for it: its subscriptions, and
//! where its delivery stands in each partition it reads (the first message it has not
//! acknowledged), plus the packet identifiers in flight each way. After a restart the
//! messages are read again from the log from those positions: a message fanned out to many
//! sessions is stored once, in its topic.
//!
//! A session is stored when it is created, when its subscriptions or expiry change (before
//! the answer), before each PUBREC and PUBCOMP it sends (its QoS 2 identifiers), when its
//! connection ends, and otherwise each second while it changes.
//!
//! Each record names the broker that stored it (header `mqtt.owner`) and the session's claim
//! (header `mqtt.claim`): when its connection claimed the client identifier, in milliseconds
//! since the epoch, made later than any claim of the identifier the broker knows of. A
//! broker restores at start the sessions it (or no named broker) stored last, and keeps
//! aside, following the partitions to their high watermark, the ones other brokers of the
//! cluster stored last: a client that comes back through it (after its broker failed, say)
//! resumes that session from its stored positions.
//!
//! A client identifier is held by one broker of the cluster at a time. Where other brokers
//! follow its partition, a session with no expiry (clean) is stored too when it starts, so
//! they learn of the claim; a broker that follows a later claim from another broker gives its
//! session of the identifier up (the connection gets DISCONNECT 0x8E and is closed,
//! MQTT-3.1.4-3; the session is never stored again), and one that follows an earlier claim
//! (a store that was on its way when the later claim came) stores its own session again, so
//! the partition ends with the later claim. Records are applied in order of their claims, not
//! of their offsets.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coremq_engine::record::{Header, Record, decode_records};
use coremq_engine::{Offset, TopicPartition};
use coremq_replication::Isolation;
use serde::{Deserialize, Serialize};

use super::codec::QoS;
use super::records::Message;
use super::session::{Inflight, Options, Outgoing, Place, Session, State};
use super::{Mqtt, topic};

/// The compacted topic that stores persistent sessions.
pub const SESSIONS_TOPIC: &str = "__mqtt_sessions";

/// How often changed sessions are stored.
const STORE_INTERVAL: Duration = Duration::from_secs(1);

/// The layout's version, first in every value.
const VERSION: u8 = 1;

/// The record header naming the broker that stored the session (its id in decimal).
const OWNER_HEADER: &str = "mqtt.owner";

/// The owner of a record from before the owner header.
const NO_BROKER: i32 = -1;

/// The record header with the session's claim (milliseconds since the epoch, in decimal).
const CLAIM_HEADER: &str = "mqtt.claim";

/// How long a follower of the partitions waits for records before it looks whether the
/// broker stops.
const FOLLOW_WAIT: Duration = Duration::from_millis(500);

/// The value of `record`'s header `key`, if it has one in UTF-8.
fn header<'r>(record: &'r Record, key: &str) -> Option<&'r str> {
    let header = record
        .headers
        .iter()
        .find(|header| &header.key[..] == key.as_bytes())?;
    std::str::from_utf8(header.value.as_deref()?).ok()
}

/// The broker that stored `record`, where it says.
fn owner_of(record: &Record) -> Option<i32> {
    header(record, OWNER_HEADER)?.parse().ok()
}

/// A session's claim on its client identifier across the cluster: the later one holds it.
/// Two claims made in the same millisecond are ordered by broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Claim {
    pub at: u64,
    pub broker: i32,
}

/// The claim `record` was stored under (the earliest for a record from before claims).
fn claim_of(record: &Record) -> Claim {
    Claim {
        at: header(record, CLAIM_HEADER)
            .and_then(|at| at.parse().ok())
            .unwrap_or(0),
        broker: owner_of(record).unwrap_or(NO_BROKER),
    }
}

/// A session another broker stored last, kept aside for its client's return.
#[derive(Debug)]
pub(super) struct Parked {
    claim: Claim,
    stored: Stored,
}

/// What a store of a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Store {
    /// Its state changed: stored if it is persistent.
    Changed,
    /// Its connection claimed the client identifier: stored if it is persistent or other
    /// brokers follow its partition (so they learn of the claim).
    Claimed,
    /// It ended: a tombstone, if it was stored.
    Ended,
}

/// Whether a session stored as `stored` has expired by `now_ms`.
fn expired(stored: &Stored, now_ms: i64) -> bool {
    let ended_at = stored
        .disconnected_at_ms
        .unwrap_or(now_ms)
        .saturating_add(i64::from(stored.expiry_interval).saturating_mul(1000));
    stored.expiry_interval != u32::MAX && ended_at <= now_ms
}

/// A session as stored (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub version: u8,
    pub expiry_interval: u32,
    /// When its last connection ended (milliseconds since the epoch); `None` while
    /// connected when stored.
    pub disconnected_at_ms: Option<i64>,
    pub subscriptions: Vec<StoredSubscription>,
    /// Kafka topic, partition, and the first offset not yet delivered and acknowledged.
    pub positions: Vec<(String, u32, u64)>,
    pub inflight: Vec<StoredInflight>,
    pub inbound_qos2: Vec<u16>,
    pub next_packet_id: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub identifier: Option<u32>,
}

/// A QoS 1 or 2 message in flight to the client: its packet identifier and where it is
/// stored; `released` once PUBREC came (only PUBREL is sent again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInflight {
    pub packet_id: u16,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub qos: u8,
    pub released: bool,
}

impl Stored {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("sessions serialize")
    }

    /// Decodes a stored session; `None` for bytes that are not one (another version, cut,
    /// or damaged), which the loader skips.
    pub fn decode(bytes: &[u8]) -> Option<Stored> {
        let (stored, rest) = postcard::take_from_bytes::<Stored>(bytes).ok()?;
        (stored.version == VERSION && rest.is_empty()).then_some(stored)
    }
}

impl Mqtt {
    /// The partition of `__mqtt_sessions` that stores `client_id`'s session.
    fn sessions_log(&self, client_id: &str) -> Option<TopicPartition> {
        let table = self.context.topics();
        let topic = table.get(SESSIONS_TOPIC)?;
        let partition = (crate::client::murmur2(client_id.as_bytes()) as u32 as usize)
            % topic.partitions.max(1) as usize;
        topic.log(partition as i32)
    }

    /// The session as stored now.
    fn stored(&self, session: &Session) -> Stored {
        let state = session.state.borrow();
        let topics: Vec<String> = state
            .subscriptions
            .keys()
            .filter_map(|filter| topic::parse_filter(filter).ok())
            .flat_map(|parsed| self.config().kafka_topics_for(parsed.filter))
            .map(str::to_string)
            .collect();
        let tailed: HashMap<TopicPartition, u64> = self
            .tail_next
            .borrow()
            .iter()
            .filter(|(log, _)| topics.contains(&log.topic))
            .map(|(log, &next)| (log.clone(), next))
            .collect();
        drop(state);
        let positions = session
            .positions(&tailed)
            .into_iter()
            .map(|place| (place.log.topic, place.log.partition, place.offset))
            .collect();
        let state = session.state.borrow();
        Stored {
            version: VERSION,
            expiry_interval: state.expiry_interval,
            disconnected_at_ms: session.disconnected_at_ms.get(),
            subscriptions: state
                .subscriptions
                .iter()
                .map(|(filter, options)| StoredSubscription {
                    filter: filter.clone(),
                    qos: options.qos as u8,
                    no_local: options.no_local,
                    retain_as_published: options.retain_as_published,
                    retain_handling: options.retain_handling,
                    identifier: options.identifier,
                })
                .collect(),
            positions,
            inflight: state
                .inflight
                .iter()
                .filter_map(|inflight| {
                    let place = inflight.outgoing.place.as_deref()?;
                    Some(StoredInflight {
                        packet_id: inflight.packet_id,
                        topic: place.log.topic.clone(),
                        partition: place.log.partition,
                        offset: place.offset,
                        qos: inflight.outgoing.qos as u8,
                        released: inflight.released,
                    })
                })
                .collect(),
            inbound_qos2: state.inbound_qos2.iter().copied().collect(),
            next_packet_id: state.next_packet_id,
        }
    }

    /// Stores `session` as `store` says (never one taken over); answers once durable.
    pub(super) async fn store_session(
        &self,
        session: &Session,
        store: Store,
    ) -> Result<(), String> {
        if session.taken.get() {
            return Ok(());
        }
        let Some(log) = self.sessions_log(&session.client_id) else {
            return Err(format!("{SESSIONS_TOPIC} does not exist"));
        };
        let persistent = session.state.borrow().expiry_interval != 0;
        let stores = match store {
            Store::Changed => persistent,
            Store::Claimed => persistent || self.followed_elsewhere(&log),
            Store::Ended => session.persisted.get(),
        };
        if !stores {
            return Ok(());
        }
        session.dirty.set(false);
        let value = (store != Store::Ended).then(|| Bytes::from(self.stored(session).encode()));
        let stored = value.is_some();
        self.store_record(&log, &session.client_id, session.claim, value)
            .await?;
        session.persisted.set(stored);
        Ok(())
    }

    /// Appends `client_id`'s record (a tombstone for no `value`) to `log` under `claim`,
    /// naming this broker; answers once durable.
    async fn store_record(
        &self,
        log: &TopicPartition,
        client_id: &str,
        claim: u64,
        value: Option<Bytes>,
    ) -> Result<(), String> {
        let header = |key: &'static str, value: String| Header {
            key: Bytes::from_static(key.as_bytes()),
            value: Some(Bytes::from(value)),
        };
        let headers = vec![
            header(OWNER_HEADER, self.context.config.node_id.to_string()),
            header(CLAIM_HEADER, claim.to_string()),
        ];
        let ticket = self.appender.append(
            &self.context.cluster,
            log,
            Bytes::copy_from_slice(client_id.as_bytes()),
            value,
            headers,
            true,
        );
        ticket.wait().await.map(drop)
    }

    /// Whether another broker holds a replica of `log` (and so follows it).
    fn followed_elsewhere(&self, log: &TopicPartition) -> bool {
        let me = self.context.config.node_id;
        let image = self.context.cluster.image();
        image
            .topic_id(&log.topic)
            .and_then(|id| image.partition(&id, log.partition))
            .is_some_and(|partition| {
                partition
                    .assignment
                    .replicas
                    .iter()
                    .any(|&replica| replica != me)
            })
    }

    /// Stores every persistent session that changed, each [`STORE_INTERVAL`], until the broker
    /// stops.
    pub(crate) async fn store_loop(self: Rc<Self>) {
        while !self.context.sleep_unless_stopping(STORE_INTERVAL).await {
            let changed: Vec<Rc<Session>> = self
                .sessions
                .borrow()
                .values()
                .filter(|session| session.dirty.get())
                .cloned()
                .collect();
            for session in changed {
                if let Err(error) = self.store_session(&session, Store::Changed).await {
                    log::warn!("MQTT: storing session {:?}: {error}", session.client_id);
                }
            }
        }
    }

    /// Restores the persistent sessions stored in the partitions of `__mqtt_sessions` this
    /// shard owns that this broker stored last: each registered, its subscriptions in the
    /// tree, the messages since its positions queued again and what was in flight sent again
    /// when it reconnects. Those another broker stored last are kept aside, and the
    /// partitions followed from here on. How many it restored.
    pub(crate) async fn load_sessions(self: &Rc<Self>) -> Result<usize, coremq_engine::Error> {
        let table = self.context.topics();
        let mut loaded = HashMap::new();
        let Some(topic) = table.get(SESSIONS_TOPIC).cloned() else {
            // A new cluster's topic may reach this broker's table a little later.
            coremq_runtime::spawn_local(self.clone().follow_session_partitions(loaded)).detach();
            return Ok(0);
        };
        let me = self.context.config.node_id;
        let mut latest: HashMap<String, (Claim, Option<Stored>)> = HashMap::new();
        for index in 0..topic.partitions as i32 {
            let Some(log) = topic.log(index) else {
                continue;
            };
            if self.context.cluster.shard_of(&log) != self.shard {
                continue;
            }
            let end = match self.context.cluster.offsets(&log).await {
                Ok(offsets) => offsets.log_end,
                // Not here yet (a new cluster's replica comes a little later), or never.
                Err(coremq_engine::Error::UnknownLog { .. }) => Offset(0),
                Err(error) => return Err(error),
            };
            for (key, record) in self.read_partition(&log).await? {
                let claim = claim_of(&record);
                if latest.get(&key).is_some_and(|(known, _)| *known > claim) {
                    // Stored by a broker a later claim had taken the session from.
                    continue;
                }
                let session = record.value.as_deref().and_then(Stored::decode);
                latest.insert(key, (claim, session));
            }
            loaded.insert(index, end);
        }
        coremq_runtime::spawn_local(self.clone().follow_session_partitions(loaded)).detach();
        let now_ms = super::now_ms();
        let mut restored = 0;
        let mut ended = Vec::new();
        for (client_id, (claim, session)) in latest {
            let Some(session) = session else {
                continue;
            };
            // Records from before the owner header name no broker: this one's.
            let own = claim.broker == NO_BROKER || claim.broker == me;
            if expired(&session, now_ms) {
                if own {
                    ended.push((client_id, claim));
                }
                continue;
            }
            if !own {
                let parked = Parked {
                    claim,
                    stored: session,
                };
                self.parked.borrow_mut().insert(client_id, parked);
                continue;
            }
            if self.restore(client_id, session, claim.at, now_ms).await {
                restored += 1;
            }
        }
        if !ended.is_empty() {
            coremq_runtime::spawn_local(self.clone().end_stored(ended)).detach();
        }
        Ok(restored)
    }

    /// Stores tombstones for sessions this broker stored that expired while it was down
    /// (or, with no expiry, whose connection its stop cut), each under its claim.
    async fn end_stored(self: Rc<Self>, ended: Vec<(String, Claim)>) {
        for (client_id, claim) in ended {
            let Some(log) = self.sessions_log(&client_id) else {
                return;
            };
            if let Err(error) = self.store_record(&log, &client_id, claim.at, None).await {
                log::warn!("MQTT: ending expired session {client_id:?}: {error}");
            }
        }
    }

    /// Follows the partitions of `__mqtt_sessions` this shard owns, each from where the load
    /// (`loaded`, by partition) left it or its start, once the topic is in the table.
    async fn follow_session_partitions(self: Rc<Self>, loaded: HashMap<i32, Offset>) {
        let topic = loop {
            if let Some(topic) = self.context.topics().get(SESSIONS_TOPIC).cloned() {
                break topic;
            }
            if self.context.sleep_unless_stopping(FOLLOW_WAIT).await {
                return;
            }
        };
        for index in 0..topic.partitions as i32 {
            let Some(log) = topic.log(index) else {
                continue;
            };
            if self.context.cluster.shard_of(&log) == self.shard {
                let from = loaded.get(&index).copied().unwrap_or_default();
                coremq_runtime::spawn_local(self.clone().follow_sessions(log, from)).detach();
            }
        }
    }

    /// Keeps aside the sessions other brokers store in `log` from `from` on (forgetting those
    /// this broker stores or any broker ends), and settles each claim another broker stores
    /// with this broker's session of the client identifier, until the broker stops; while
    /// this broker holds no replica of `log`, it looks again now and then.
    async fn follow_sessions(self: Rc<Self>, log: TopicPartition, from: Offset) {
        let me = self.context.config.node_id;
        let apply = |client_id: &str, record: &Record| {
            let claim = claim_of(record);
            let elsewhere = owner_of(record).is_some_and(|owner| owner != me);
            let mut parked = self.parked.borrow_mut();
            let known = parked.get(client_id).map(|known| known.claim);
            if elsewhere && known.is_none_or(|known| known < claim) {
                // A claim not seen before (the stores each second of a session parked here
                // repeat its claim, and were settled with its first record).
                let settle = self.clone().settle(client_id.to_string(), claim);
                coremq_runtime::spawn_local(settle).detach();
            }
            if known.is_none_or(|known| known <= claim) {
                let now_ms = super::now_ms();
                let stored = record
                    .value
                    .as_deref()
                    .and_then(Stored::decode)
                    .filter(|stored| elsewhere && !expired(stored, now_ms));
                match stored {
                    Some(stored) => {
                        parked.insert(client_id.to_string(), Parked { claim, stored });
                    }
                    None => {
                        parked.remove(client_id);
                    }
                }
            }
        };
        self.follow_log(&log, from, FOLLOW_WAIT, apply, |_| {})
            .await;
    }

    /// Settles which broker holds `client_id` now that another broker stored its session
    /// under `claim`: a session of it here under an earlier claim is given up, one under a
    /// later claim is stored again.
    async fn settle(self: Rc<Self>, client_id: String, claim: Claim) {
        let Some(shard) = self.session_shard(&client_id).await else {
            return;
        };
        let _ = self
            .context
            .handle
            .on_shard(shard, move |_| async move {
                if let Some(mqtt) = Mqtt::current() {
                    mqtt.settle_here(&client_id, claim).await;
                }
                Ok(())
            })
            .await;
    }

    async fn settle_here(self: &Rc<Self>, client_id: &str, claim: Claim) {
        let Some(session) = self.sessions.borrow().get(client_id).cloned() else {
            return;
        };
        let mine = Claim {
            at: session.claim,
            broker: self.context.config.node_id,
        };
        if claim > mine {
            log::info!(
                "MQTT: client {client_id:?} connected through broker {}: its session here is given up",
                claim.broker
            );
            self.give_up(
                &session,
                format!("client {client_id:?} connected through another broker"),
            );
            self.release(client_id, session.generation).await;
        } else if claim < mine
            && let Err(error) = self.store_session(&session, Store::Claimed).await
        {
            log::warn!("MQTT: storing session {client_id:?} again: {error}");
        }
    }

    /// Before a connection claims `client_id`, where no session of it is on this broker and
    /// another broker stored it last: with `resume`, restores that session here (its
    /// subscriptions, and the messages since its positions queued), so the claim takes it
    /// over as it would a session of this broker. The claim it was stored under, if any.
    pub(super) async fn adopt(self: &Rc<Self>, client_id: &str, resume: bool) -> Option<u64> {
        if self.session_shard(client_id).await.is_some() {
            return None;
        }
        let log = self.sessions_log(client_id)?;
        let id = client_id.to_string();
        let parked = self
            .context
            .handle
            .on_shard(self.context.cluster.shard_of(&log), move |_| async move {
                Ok(Mqtt::current().and_then(|mqtt| mqtt.parked.borrow_mut().remove(&id)))
            })
            .await
            .ok()
            .flatten()?;
        let now_ms = super::now_ms();
        if resume && !expired(&parked.stored, now_ms) {
            log::info!("MQTT: client {client_id:?} resumes the session another broker stored");
            let claim = parked.claim.at;
            self.restore(client_id.to_string(), parked.stored, claim, now_ms)
                .await;
        }
        Some(parked.claim.at)
    }

    async fn restore(
        self: &Rc<Self>,
        client_id: String,
        stored: Stored,
        claim: u64,
        now_ms: i64,
    ) -> bool {
        let Ok((_, generation)) = self.claim(&client_id).await else {
            return false;
        };
        let subscriptions = stored
            .subscriptions
            .iter()
            .filter_map(|subscription| {
                Some((
                    subscription.filter.clone(),
                    Options {
                        qos: QoS::from_bits(subscription.qos)?,
                        no_local: subscription.no_local,
                        retain_as_published: subscription.retain_as_published,
                        retain_handling: subscription.retain_handling,
                        identifier: subscription.identifier,
                    },
                ))
            })
            .collect();
        let state = State {
            subscriptions,
            inbound_qos2: stored.inbound_qos2.iter().copied().collect(),
            next_packet_id: stored.next_packet_id,
            expiry_interval: stored.expiry_interval,
            ..State::default()
        };
        let session = Rc::new(Session::new(
            client_id,
            self.next_key(),
            generation,
            claim,
            state,
        ));
        session.persisted.set(true);
        session
            .disconnected_at_ms
            .set(Some(stored.disconnected_at_ms.unwrap_or(now_ms)));
        self.install(session.clone()).await;
        // What was in flight is sent again on reconnect, with the same packet identifiers.
        for inflight in &stored.inflight {
            let log = TopicPartition {
                topic: inflight.topic.clone(),
                partition: inflight.partition,
            };
            let message = match inflight.released {
                true => None,
                false => read_message(self, &log, inflight.offset).await,
            };
            let (Some(qos), Some(message)) = (
                QoS::from_bits(inflight.qos),
                message.or_else(|| {
                    // Only its packet identifier matters: PUBREL is sent again, not it.
                    inflight
                        .released
                        .then(|| Message::bare(String::new(), Bytes::new(), 0))
                }),
            ) else {
                continue;
            };
            session.state.borrow_mut().inflight.push_back(Inflight {
                packet_id: inflight.packet_id,
                outgoing: Outgoing {
                    message: Arc::new(message),
                    qos,
                    retain: false,
                    subscription_identifiers: Vec::new(),
                    place: Some(Arc::new(Place {
                        log,
                        offset: inflight.offset,
                    })),
                },
                released: inflight.released,
            });
        }
        // Then what came after its positions, up to where the tails started.
        let inflight: Vec<(TopicPartition, u64)> = stored
            .inflight
            .iter()
            .map(|i| {
                let log = TopicPartition {
                    topic: i.topic.clone(),
                    partition: i.partition,
                };
                (log, i.offset)
            })
            .collect();
        for (topic, partition, position) in &stored.positions {
            let log = TopicPartition {
                topic: topic.clone(),
                partition: *partition,
            };
            let Some(end) = self.tail_next.borrow().get(&log).copied() else {
                continue;
            };
            self.catch_up(&session, &log, *position, end, &inflight)
                .await;
        }
        true
    }

    /// Queues for `session` the messages of `log` in `[from, end)` its subscriptions match
    /// (QoS 1 and 2: a session without a connection gets no QoS 0), other than those
    /// already in flight.
    async fn catch_up(
        &self,
        session: &Session,
        log: &TopicPartition,
        from: u64,
        end: u64,
        inflight: &[(TopicPartition, u64)],
    ) {
        let mut next = from;
        let limits = self.limits();
        let now_ms = super::now_ms();
        while next < end {
            let read = self
                .context
                .cluster
                .read(log, Offset(next), 1 << 20, Isolation::Committed)
                .await;
            let Ok(read) = read else {
                return;
            };
            if read.batches.is_empty() {
                return;
            }
            for batch in read.batches {
                let Ok(records) = decode_records(&batch, 64 << 20) else {
                    return;
                };
                for record in records {
                    let offset = record.offset.0;
                    if offset < next || offset >= end {
                        continue;
                    }
                    next = offset + 1;
                    if inflight.contains(&(log.clone(), offset)) {
                        continue;
                    }
                    let Some(message) = Message::from_record(&record) else {
                        continue;
                    };
                    let Some(outgoing) = self.outgoing_for(session, message, log, offset) else {
                        continue;
                    };
                    if outgoing.qos == QoS::AtMostOnce {
                        continue;
                    }
                    self.offer_queued(session, outgoing, &limits, now_ms);
                }
            }
        }
    }

    /// What `session`'s own (not shared) subscriptions make of `message`, if any matches.
    fn outgoing_for(
        &self,
        session: &Session,
        message: Message,
        log: &TopicPartition,
        offset: u64,
    ) -> Option<Outgoing> {
        let state = session.state.borrow();
        let mut outgoing: Option<Outgoing> = None;
        let message = Arc::new(message);
        for (filter, options) in &state.subscriptions {
            let Ok(parsed) = topic::parse_filter(filter) else {
                continue;
            };
            if parsed.group.is_some() || !topic::matches(parsed.filter, &message.topic) {
                continue;
            }
            if options.no_local && message.client_id.as_deref() == Some(&session.client_id) {
                continue;
            }
            let qos = options.qos.min(message.qos);
            let entry = outgoing.get_or_insert_with(|| Outgoing {
                message: message.clone(),
                qos,
                retain: false,
                subscription_identifiers: Vec::new(),
                place: Some(Arc::new(Place {
                    log: log.clone(),
                    offset,
                })),
            });
            entry.qos = entry.qos.max(qos);
            entry.retain |= options.retain_as_published && message.retain;
            entry.subscription_identifiers.extend(options.identifier);
        }
        outgoing
    }

    fn offer_queued(
        &self,
        session: &Session,
        outgoing: Outgoing,
        limits: &super::session::Limits,
        now_ms: i64,
    ) {
        match session.offer(outgoing, limits, now_ms) {
            Ok(()) => {}
            Err(reason) => self.count_dropped(reason),
        }
    }
}

/// The message stored at `offset` of `log`, if it is still there.
async fn read_message(mqtt: &Mqtt, log: &TopicPartition, offset: u64) -> Option<Message> {
    let read = mqtt
        .context
        .cluster
        .read(log, Offset(offset), 1, Isolation::Committed)
        .await
        .ok()?;
    for batch in read.batches {
        for record in decode_records(&batch, 64 << 20).ok()? {
            if record.offset.0 == offset {
                return Message::from_record(&record);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Stored {
        Stored {
            version: VERSION,
            expiry_interval: 3600,
            disconnected_at_ms: Some(1_700_000_000_000),
            subscriptions: vec![StoredSubscription {
                filter: "$share/g/a/#".into(),
                qos: 2,
                no_local: false,
                retain_as_published: true,
                retain_handling: 1,
                identifier: Some(9),
            }],
            positions: vec![("mqtt".into(), 1, 42)],
            inflight: vec![StoredInflight {
                packet_id: 7,
                topic: "mqtt".into(),
                partition: 1,
                offset: 40,
                qos: 2,
                released: true,
            }],
            inbound_qos2: vec![3, 4],
            next_packet_id: 8,
        }
    }

    #[test]
    fn a_stored_session_decodes_as_it_was() {
        let session = stored();
        assert_eq!(Stored::decode(&session.encode()), Some(session));
    }

    #[test]
    fn damaged_or_cut_sessions_are_skipped_not_trusted() {
        let bytes = stored().encode();
        for cut in 0..bytes.len() {
            assert_eq!(Stored::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut other_version = bytes.clone();
        other_version[0] = 2;
        assert_eq!(Stored::decode(&other_version), None);
        // A count far past the bytes present.
        assert_eq!(Stored::decode(&[1, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), None);
    }
}
