//! A session: what the server keeps of a client between its connections (its subscriptions,
//! the QoS 1 and 2 messages in flight to it, those queued behind them, the QoS 2 packet
//! identifiers it sent and has not released), and the delivery of messages to it over the
//! connection it has, if any: the client's receive maximum bounds what is in flight, its
//! maximum packet size what is sent, its topic alias maximum the aliases the server uses.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;

use coremq_engine::TopicPartition;

use super::codec::{self, Level, Packet, Properties, Publish, QoS};
use super::records::Message;
use crate::server::Link;

/// A subscription's options (MQTT 5.0 section 3.8.3.1; 3.1.1 has only the QoS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub identifier: Option<u32>,
}

/// A message on its way to one session, at the QoS it is delivered with.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_identifiers: Vec<u32>,
    /// Where the message is stored (`None` for a retained message sent at subscribe): a
    /// persistent session remembers it to send again after a restart.
    pub place: Option<Arc<Place>>,
}

/// A record's place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Place {
    pub log: TopicPartition,
    pub offset: u64,
}

/// A QoS 1 or 2 message sent and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: u16,
    pub outgoing: Outgoing,
    /// QoS 2: PUBREC came and PUBREL was sent; waiting for PUBCOMP.
    pub released: bool,
}

/// What a session holds, apart from its connection: moved whole to the shard of a new
/// connection that resumes it.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// By the filter as subscribed (with its `$share/{group}/` prefix).
    pub subscriptions: BTreeMap<String, Options>,
    /// In the order they were first sent (they are sent again in that order, MQTT-4.4.0-1).
    pub inflight: VecDeque<Inflight>,
    pub queue: VecDeque<Outgoing>,
    pub next_packet_id: u16,
    /// QoS 2 messages received whose PUBREL has not come.
    pub inbound_qos2: HashSet<u16>,
    /// Seconds the session outlives its connection; `u32::MAX`: for ever.
    pub expiry_interval: u32,
}

/// What the session's current connection allows.
pub struct Attached {
    pub link: Link,
    pub level: Level,
    /// Which connection, so a late close of an older one does not detach this one.
    pub connection_id: u64,
    pub receive_maximum: u16,
    pub maximum_packet_size: u32,
    pub topic_alias_maximum: u16,
    aliases: HashMap<String, u16>,
}

impl Attached {
    pub fn new(
        link: Link,
        level: Level,
        connection_id: u64,
        receive_maximum: u16,
        maximum_packet_size: u32,
        topic_alias_maximum: u16,
    ) -> Attached {
        Attached {
            link,
            level,
            connection_id,
            receive_maximum,
            maximum_packet_size,
            topic_alias_maximum,
            aliases: HashMap::new(),
        }
    }
}

/// Why a message was not delivered (the `reason` of the dropped-messages counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The session's queue was at `max_queued_messages`.
    QueueFull,
    /// A QoS 0 message to a client that does not read fast enough.
    SlowSubscriber,
    /// Bigger than the client's maximum packet size (MQTT-3.1.2-25).
    TooLarge,
    /// Its message expiry interval passed (MQTT-3.3.2-5).
    Expired,
    /// QoS 0 to a session without a connection.
    Offline,
}

impl Dropped {
    pub fn label(self) -> &'static str {
        match self {
            Dropped::QueueFull => "queue_full",
            Dropped::SlowSubscriber => "slow_subscriber",
            Dropped::TooLarge => "too_large",
            Dropped::Expired => "expired",
            Dropped::Offline => "offline",
        }
    }
}

/// A session on this shard.
pub struct Session {
    pub client_id: String,
    /// Unique on this shard: names the session in the shard's subscription tree.
    pub key: u64,
    /// The registry's generation of the claim that made it (see `registry.rs`).
    pub generation: u64,
    /// Its claim across the cluster (see `sessions.rs`): a session stored by another
    /// broker under a later claim takes it over.
    pub claim: u64,
    /// Taken over (by a connection on another shard or broker): never stored again.
    pub taken: Cell<bool>,
    pub state: RefCell<State>,
    pub attached: RefCell<Option<Attached>>,
    /// Bumped at each detach, so an expiry timer of an earlier disconnect does nothing.
    pub detaches: Cell<u64>,
    /// Changed since it was last stored (a persistent session is stored again).
    pub dirty: Cell<bool>,
    /// Stored in `__mqtt_sessions` (its end writes a tombstone there).
    pub persisted: Cell<bool>,
    /// When its last connection ended, in milliseconds since the epoch.
    pub disconnected_at_ms: Cell<Option<i64>>,
}

/// Limits the shard's settings put on delivery.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_queued_messages: usize,
    pub pending_bytes_max: usize,
}

impl Session {
    pub fn new(client_id: String, key: u64, generation: u64, claim: u64, state: State) -> Session {
        Session {
            client_id,
            key,
            generation,
            claim,
            taken: Cell::new(false),
            state: RefCell::new(state),
            attached: RefCell::new(None),
            detaches: Cell::new(0),
            dirty: Cell::new(false),
            persisted: Cell::new(false),
            disconnected_at_ms: Cell::new(None),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.attached.borrow().is_some()
    }

    /// Delivers `outgoing`: sent at once if the window allows, else queued. The reason, if it
    /// was dropped.
    pub fn offer(&self, outgoing: Outgoing, limits: &Limits, now_ms: i64) -> Result<(), Dropped> {
        let connection = self
            .attached
            .borrow()
            .as_ref()
            .map(|attached| (attached.link.pushed_bytes(), attached.receive_maximum));
        let Some((pushed_bytes, window)) = connection else {
            if outgoing.qos == QoS::AtMostOnce {
                return Err(Dropped::Offline);
            }
            return self.enqueue(outgoing, limits);
        };
        if outgoing.qos == QoS::AtMostOnce {
            if pushed_bytes > limits.pending_bytes_max {
                return Err(Dropped::SlowSubscriber);
            }
            return self.send(&outgoing, 0, false, now_ms);
        }
        let full = {
            let state = self.state.borrow();
            state.inflight.len() >= window as usize || !state.queue.is_empty()
        };
        if full {
            return self.enqueue(outgoing, limits);
        }
        self.send_inflight(outgoing, now_ms)
    }

    fn enqueue(&self, outgoing: Outgoing, limits: &Limits) -> Result<(), Dropped> {
        let mut state = self.state.borrow_mut();
        if state.queue.len() >= limits.max_queued_messages {
            return Err(Dropped::QueueFull);
        }
        state.queue.push_back(outgoing);
        self.dirty.set(true);
        Ok(())
    }

    /// Gives a QoS 1 or 2 message a packet identifier, records it in flight and sends it.
    fn send_inflight(&self, outgoing: Outgoing, now_ms: i64) -> Result<(), Dropped> {
        let packet_id = {
            let mut state = self.state.borrow_mut();
            // Ids go round in order, so the next one is free unless the window wrapped.
            let mut id = state.next_packet_id.wrapping_add(1).max(1);
            while state
                .inflight
                .iter()
                .any(|inflight| inflight.packet_id == id)
            {
                id = id.wrapping_add(1).max(1);
            }
            state.next_packet_id = id;
            id
        };
        let sent = self.send(&outgoing, packet_id, false, now_ms);
        if sent.is_ok() {
            self.dirty.set(true);
            self.state.borrow_mut().inflight.push_back(Inflight {
                packet_id,
                outgoing,
                released: false,
            });
        }
        sent
    }

    /// Encodes and pushes one PUBLISH over the attached connection.
    fn send(
        &self,
        outgoing: &Outgoing,
        packet_id: u16,
        dup: bool,
        now_ms: i64,
    ) -> Result<(), Dropped> {
        let mut attached = self.attached.borrow_mut();
        let Some(attached) = attached.as_mut() else {
            return Err(Dropped::Offline);
        };
        let message = &outgoing.message;
        // MQTT-4.3.3-7: a message sent once is sent again even if it expired meanwhile.
        let expiry = match message.expiry_left(now_ms) {
            Some(expiry) => expiry,
            None if dup => None,
            None => return Err(Dropped::Expired),
        };
        let v5 = attached.level == Level::V5;
        let mut topic = message.topic.clone();
        let mut properties = Properties::default();
        if v5 {
            properties = Properties {
                payload_format_indicator: message.payload_format,
                message_expiry_interval: expiry,
                content_type: message.content_type.clone(),
                response_topic: message.response_topic.clone(),
                correlation_data: message.correlation_data.clone(),
                user_properties: message.user_properties.clone(),
                subscription_identifiers: outgoing.subscription_identifiers.clone(),
                ..Properties::default()
            };
            if attached.topic_alias_maximum > 0 {
                match attached.aliases.get(&topic) {
                    Some(&alias) => {
                        properties.topic_alias = Some(alias);
                        topic.clear();
                    }
                    None if attached.aliases.len() < attached.topic_alias_maximum as usize => {
                        let alias = attached.aliases.len() as u16 + 1;
                        attached.aliases.insert(topic.clone(), alias);
                        properties.topic_alias = Some(alias);
                    }
                    None => {}
                }
            }
        }
        let publish = Packet::Publish(Publish {
            dup,
            qos: outgoing.qos,
            retain: outgoing.retain,
            topic,
            packet_id,
            payload: message.payload.clone(),
            properties,
        });
        let mut out = BytesMut::new();
        if codec::encode(&publish, attached.level, &mut out).is_err()
            || out.len() > attached.maximum_packet_size as usize
        {
            return Err(Dropped::TooLarge);
        }
        attached.link.push(vec![out.freeze()]);
        Ok(())
    }

    /// Sends queued messages while the window has room.
    pub fn pump(&self, now_ms: i64) -> Vec<Dropped> {
        let mut dropped = Vec::new();
        loop {
            let window = match self.attached.borrow().as_ref() {
                Some(attached) => attached.receive_maximum as usize,
                None => return dropped,
            };
            let next = {
                let mut state = self.state.borrow_mut();
                if state.inflight.len() >= window {
                    return dropped;
                }
                state.queue.pop_front()
            };
            let Some(outgoing) = next else {
                return dropped;
            };
            let sent = if outgoing.qos == QoS::AtMostOnce {
                self.send(&outgoing, 0, false, now_ms)
            } else {
                self.send_inflight(outgoing, now_ms)
            };
            if let Err(reason) = sent {
                dropped.push(reason);
            }
        }
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) for `packet_id`: the message is delivered. Whether
    /// it was in flight.
    pub fn complete(&self, packet_id: u16, qos: QoS) -> bool {
        let mut state = self.state.borrow_mut();
        let found = state.inflight.iter().position(|inflight| {
            inflight.packet_id == packet_id
                && inflight.outgoing.qos == qos
                && (qos == QoS::AtLeastOnce || inflight.released)
        });
        match found {
            Some(index) => {
                state.inflight.remove(index);
                self.dirty.set(true);
                true
            }
            None => false,
        }
    }

    /// PUBREC for `packet_id`: the client has the QoS 2 message; PUBREL follows. Whether it
    /// was in flight. A PUBREC with an error reason code (5.0) ends the exchange instead.
    pub fn received(&self, packet_id: u16, failed: bool) -> bool {
        let mut state = self.state.borrow_mut();
        let found = state.inflight.iter().position(|inflight| {
            inflight.packet_id == packet_id && inflight.outgoing.qos == QoS::ExactlyOnce
        });
        match found {
            Some(index) if failed => {
                state.inflight.remove(index);
                self.dirty.set(true);
                true
            }
            Some(index) => {
                state.inflight[index].released = true;
                self.dirty.set(true);
                true
            }
            None => false,
        }
    }

    /// Attaches a new connection: what was in flight is sent again (PUBLISH with DUP, or
    /// PUBREL for those already received), in the order first sent (MQTT-4.4.0-1), then the
    /// queue as the window allows. The frames to send, in order, after the CONNACK.
    pub fn resume(&self, attached: Attached, now_ms: i64) -> Vec<Dropped> {
        *self.attached.borrow_mut() = Some(attached);
        self.disconnected_at_ms.set(None);
        let inflight: Vec<Inflight> = self.state.borrow().inflight.iter().cloned().collect();
        let mut dropped = Vec::new();
        for entry in inflight {
            if entry.released {
                let level = self.attached.borrow().as_ref().map(|a| a.level);
                if let Some(level) = level {
                    let mut out = BytesMut::new();
                    let pubrel = Packet::PubRel(codec::Ack {
                        packet_id: entry.packet_id,
                        ..codec::Ack::default()
                    });
                    if codec::encode(&pubrel, level, &mut out).is_ok()
                        && let Some(attached) = self.attached.borrow().as_ref()
                    {
                        attached.link.push(vec![out.freeze()]);
                    }
                }
            } else if let Err(reason) = self.send(&entry.outgoing, entry.packet_id, true, now_ms) {
                // An expired or oversized message in flight is dropped from the session.
                self.state
                    .borrow_mut()
                    .inflight
                    .retain(|inflight| inflight.packet_id != entry.packet_id);
                dropped.push(reason);
            }
        }
        dropped.extend(self.pump(now_ms));
        dropped
    }

    /// Detaches connection `connection_id` if it is still the attached one.
    pub fn detach(&self, connection_id: u64) -> bool {
        let mut attached = self.attached.borrow_mut();
        if attached
            .as_ref()
            .is_some_and(|a| a.connection_id == connection_id)
        {
            *attached = None;
            self.detaches.set(self.detaches.get() + 1);
            return true;
        }
        false
    }

    /// The attached connection's link.
    pub fn link(&self) -> Option<Link> {
        self.attached.borrow().as_ref().map(|a| a.link.clone())
    }
}

impl Session {
    /// Where delivery stands in each partition of `tailed` (partition and the offset the
    /// shard's tail reads next): the first message not yet acknowledged, queued or in flight
    /// from it, else the tail's offset (everything before was offered to this session).
    pub fn positions(&self, tailed: &HashMap<TopicPartition, u64>) -> Vec<Place> {
        let state = self.state.borrow();
        let mut positions: HashMap<&TopicPartition, u64> =
            tailed.iter().map(|(log, &next)| (log, next)).collect();
        let pending = state
            .inflight
            .iter()
            .filter(|inflight| !inflight.released)
            .map(|inflight| &inflight.outgoing)
            .chain(state.queue.iter());
        for place in pending.filter_map(|outgoing| outgoing.place.as_deref()) {
            if let Some(position) = positions.get_mut(&place.log) {
                *position = (*position).min(place.offset);
            }
        }
        positions
            .into_iter()
            .map(|(log, offset)| Place {
                log: log.clone(),
                offset,
            })
            .collect()
    }
}
