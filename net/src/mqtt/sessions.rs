//! Persistent sessions kept across broker restarts, in the compacted internal topic
//! `__mqtt_sessions` (key: the client identifier; value: the session below; a tombstone when
//! it ends). A session stores what it is, not the messages for it: its subscriptions, and
//! where its delivery stands in each partition it reads (the first message it has not
//! acknowledged), plus the packet identifiers in flight each way. After a restart the
//! messages are read again from the log from those positions: a message fanned out to many
//! sessions is stored once, in its topic.
//!
//! A session is stored when it is created, when its subscriptions or expiry change (before
//! the answer), when its connection ends, and otherwise each second while it changes.
//!
//! Each record names the broker that stored it (header `mqtt.owner`). A broker restores at
//! start the sessions it (or no named broker) stored last, and keeps aside, following the
//! partitions to their high watermark, the ones other brokers of the cluster stored last: a
//! client that comes back through it (after its broker failed, say) resumes that session
//! from its stored positions.

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

/// How long a follower of the partitions waits for records before it looks whether the
/// broker stops.
const FOLLOW_WAIT: Duration = Duration::from_millis(500);

/// The broker that stored `record`, where it says.
fn owner_of(record: &Record) -> Option<i32> {
    let header = record
        .headers
        .iter()
        .find(|header| &header.key[..] == OWNER_HEADER.as_bytes())?;
    std::str::from_utf8(header.value.as_deref()?)
        .ok()?
        .parse()
        .ok()
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

    /// Stores `session` (a tombstone when `ended`) if it is persistent; answers once durable.
    pub(super) async fn store_session(&self, session: &Session, ended: bool) -> Result<(), String> {
        if session.state.borrow().expiry_interval == 0 && !ended {
            return Ok(());
        }
        let Some(log) = self.sessions_log(&session.client_id) else {
            return Err(format!("{SESSIONS_TOPIC} does not exist"));
        };
        session.dirty.set(false);
        let value = (!ended).then(|| Bytes::from(self.stored(session).encode()));
        if value.is_none() && !session.persisted.get() {
            return Ok(());
        }
        let stored = value.is_some();
        let owner = Header {
            key: Bytes::from_static(OWNER_HEADER.as_bytes()),
            value: Some(Bytes::from(self.context.config.node_id.to_string())),
        };
        let ticket = self.appender.append(
            &self.context.cluster,
            &log,
            Bytes::copy_from_slice(session.client_id.as_bytes()),
            value,
            vec![owner],
            true,
        );
        ticket.wait().await?;
        session.persisted.set(stored);
        Ok(())
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
                if let Err(error) = self.store_session(&session, false).await {
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
        let mut stored: HashMap<String, (Option<i32>, Stored)> = HashMap::new();
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
                match record.value.as_deref().and_then(Stored::decode) {
                    Some(session) => stored.insert(key, (owner_of(&record), session)),
                    None => stored.remove(&key),
                };
            }
            loaded.insert(index, end);
        }
        coremq_runtime::spawn_local(self.clone().follow_session_partitions(loaded)).detach();
        let now_ms = super::now_ms();
        let mut restored = 0;
        for (client_id, (owner, session)) in stored {
            if expired(&session, now_ms) {
                continue;
            }
            if owner.is_some_and(|owner| owner != me) {
                self.parked.borrow_mut().insert(client_id, session);
                continue;
            }
            if self.restore(client_id, session, now_ms).await {
                restored += 1;
            }
        }
        Ok(restored)
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
    /// this broker stores or any broker ends), until the broker stops; while this broker
    /// holds no replica of `log`, it looks again now and then.
    async fn follow_sessions(self: Rc<Self>, log: TopicPartition, from: Offset) {
        let me = self.context.config.node_id;
        let apply = |client_id: &str, record: &Record| {
            let mut parked = self.parked.borrow_mut();
            match record.value.as_deref().and_then(Stored::decode) {
                Some(session) if owner_of(record).is_some_and(|owner| owner != me) => {
                    parked.insert(client_id.to_string(), session);
                }
                _ => {
                    parked.remove(client_id);
                }
            }
        };
        self.follow_log(&log, from, FOLLOW_WAIT, apply, |_| {})
            .await;
    }

    /// Before a connection without clean start claims `client_id`: where no session of it
    /// is on this broker and another broker stored it last, restores that one here (its
    /// subscriptions, and the messages since its positions queued), so the claim takes it
    /// over as it would a session of this broker.
    pub(super) async fn adopt(self: &Rc<Self>, client_id: &str) {
        if self.is_claimed(client_id).await {
            return;
        }
        let Some(log) = self.sessions_log(client_id) else {
            return;
        };
        let id = client_id.to_string();
        let parked = self
            .context
            .handle
            .on_shard(self.context.cluster.shard_of(&log), move |_| async move {
                Ok(Mqtt::current().and_then(|mqtt| mqtt.parked.borrow_mut().remove(&id)))
            })
            .await
            .ok()
            .flatten();
        let now_ms = super::now_ms();
        if let Some(stored) = parked.filter(|stored| !expired(stored, now_ms)) {
            log::info!("MQTT: client {client_id:?} resumes the session another broker stored");
            self.restore(client_id.to_string(), stored, now_ms).await;
        }
    }

    async fn restore(self: &Rc<Self>, client_id: String, stored: Stored, now_ms: i64) -> bool {
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
        let session = Rc::new(Session::new(client_id, self.next_key(), generation, state));
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
