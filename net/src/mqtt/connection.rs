//! One MQTT connection: its packets decoded in order, then handled one after another in
//! that order (a CONNECT completes before the SUBSCRIBE behind it starts), while what each
//! waits for afterwards (a QoS 1 message becoming durable before its PUBACK) overlaps with
//! the packets behind it; answers are written in the order the packets came.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use coremq_engine::notify::Notify;

use super::appender::Ticket;
use super::codec::{
    self, Ack, ConnAck, Connect, Disconnect, Level, Packet, Properties, Publish, QoS, SubAck,
    Subscribe, Unsubscribe, Will, reason,
};
use super::records::Message;
use super::session::{Attached, Options, Outgoing, Session, State};
use super::sessions::Store;
use super::{Mqtt, MqttConfig, topic};
use crate::client::partition_for_key;
use crate::server::{CloseReason, Incoming, Link};

/// A connection's state.
pub(crate) struct Client {
    id: u64,
    peer: Option<SocketAddr>,
    link: Link,
    /// Known once CONNECT is decoded.
    level: Cell<Option<Level>>,
    /// Set once CONNECT succeeded.
    session: RefCell<Option<Rc<Session>>>,
    /// The will, until a DISCONNECT without it (MQTT-3.1.2-10) or its publication.
    will: RefCell<Option<Will>>,
    /// The last packet handed to its handler: the next waits for it.
    turn: RefCell<Option<Rc<Turn>>>,
    /// Topic aliases the client set (5.0).
    aliases: RefCell<HashMap<u16, String>>,
    /// QoS 1 and 2 PUBLISH packets received and not yet acknowledged (receive maximum).
    unacknowledged: Rc<Cell<usize>>,
    /// Reason strings may go on acknowledgements (5.0's request problem information) and fit
    /// the client's maximum packet size.
    reasons: Rc<Cell<Reasons>>,
}

/// What the client allows of reason strings on acknowledgements.
#[derive(Debug, Clone, Copy)]
struct Reasons {
    /// MQTT-3.1.2-29: request problem information 0 allows none.
    allowed: bool,
    /// The client's maximum packet size: a reason string that would pass it is left out
    /// (MQTT-3.4.2-2, MQTT-3.5.2-2).
    packet_bytes_max: usize,
}

/// A decoded packet and its place in the connection's order.
pub(crate) struct Request {
    packet: Packet,
    previous: Option<Rc<Turn>>,
    done: TurnDone,
}

/// One packet's turn in its connection's order: done once its handler ran its ordered part
/// (or was dropped), which the next packet's handler waits for. (A flume channel per packet
/// did the same at an allocation and a waiter registration more per message.)
#[derive(Default)]
pub(crate) struct Turn {
    done: Cell<bool>,
    notify: Notify,
}

impl Turn {
    async fn wait(&self) {
        while !self.done.get() {
            self.notify.notified().await;
        }
    }
}

/// Ends its turn when dropped.
pub(crate) struct TurnDone(Rc<Turn>);

impl Drop for TurnDone {
    fn drop(&mut self) {
        self.0.done.set(true);
        self.0.notify.notify_all();
    }
}

impl Client {
    pub(super) fn new(
        id: u64,
        peer: Option<SocketAddr>,
        link: Link,
        config: &MqttConfig,
    ) -> Client {
        link.set_idle(Some(Duration::from_millis(config.connect_timeout_ms)));
        Client {
            id,
            peer,
            link,
            level: Cell::new(None),
            session: RefCell::new(None),
            will: RefCell::new(None),
            turn: RefCell::new(None),
            aliases: RefCell::default(),
            unacknowledged: Rc::new(Cell::new(0)),
            reasons: Rc::new(Cell::new(Reasons {
                allowed: true,
                packet_bytes_max: usize::MAX,
            })),
        }
    }

    fn v5(&self) -> bool {
        self.level.get() == Some(Level::V5)
    }

    /// Closes the connection for a protocol violation: with a DISCONNECT carrying `code` for
    /// a 5.0 client (MQTT-4.13.1-1), without for the others (MQTT-4.8.0-1 of 3.1.1).
    fn violation(&self, code: u8, reason: String) -> Option<Vec<Bytes>> {
        let disconnect = |reason_string| {
            let properties = Properties {
                reason_string,
                ..Properties::default()
            };
            encode(
                &Packet::Disconnect(Disconnect { code, properties }),
                Level::V5,
            )
        };
        let answer = self.v5().then(|| {
            let answer = disconnect(Some(reason.clone()));
            // MQTT-3.14.2-3: not past the client's maximum packet size.
            if answer.len() > self.reasons.get().packet_bytes_max {
                return disconnect(None);
            }
            answer
        });
        self.link.close(CloseReason::ProtocolError, reason);
        answer.map(|frame| vec![frame])
    }

    /// The DISCONNECT for a packet over the server's maximum packet size (5.0).
    pub(super) fn too_large(&self) -> Option<Vec<Bytes>> {
        self.v5().then(|| {
            vec![encode(
                &Packet::Disconnect(Disconnect {
                    code: reason::PACKET_TOO_LARGE,
                    properties: Properties {
                        reason_string: Some("a packet over the maximum packet size".into()),
                        ..Properties::default()
                    },
                }),
                Level::V5,
            )]
        })
    }

    pub(super) fn decode(&self, first: u8, body: Bytes) -> Result<Incoming<Request>, String> {
        let packet = match self.level.get() {
            None => match codec::decode_connect(first, body) {
                Ok(connect) => {
                    self.level.set(Some(connect.level));
                    Packet::Connect(Box::new(connect))
                }
                Err(error) if error.code == reason::UNSUPPORTED_PROTOCOL_VERSION => {
                    // MQTT-3.1.2-2: return code 0x01, in the 3.1.1 form a client of any
                    // level reads, then close.
                    let connack = Packet::ConnAck(ConnAck {
                        code: reason::V3_UNACCEPTABLE_PROTOCOL_VERSION,
                        ..ConnAck::default()
                    });
                    self.link.close(CloseReason::ProtocolError, error.reason);
                    return Ok(Incoming::Answered(vec![encode(&connack, Level::V311)]));
                }
                // MQTT-3.1.0-1, MQTT-3.1.4-1: close without a CONNACK.
                Err(error) => return Err(format!("MQTT CONNECT refused: {error}")),
            },
            Some(level) => match codec::decode(first, body, level) {
                Ok(Packet::Connect(_)) => {
                    // MQTT-3.1.0-2.
                    let answer = self.violation(reason::PROTOCOL_ERROR, "a second CONNECT".into());
                    return Ok(Incoming::Answered(answer.unwrap_or_default()));
                }
                Ok(packet) => packet,
                Err(error) => {
                    let answer = self.violation(error.code, error.reason);
                    return Ok(Incoming::Answered(answer.unwrap_or_default()));
                }
            },
        };
        let turn = Rc::new(Turn::default());
        let previous = self.turn.replace(Some(turn.clone()));
        let done = TurnDone(turn);
        Ok(Incoming::Request(Request {
            packet,
            previous,
            done,
        }))
    }
}

fn encode(packet: &Packet, level: Level) -> Bytes {
    let mut out = BytesMut::new();
    codec::encode(packet, level, &mut out).expect("the server's packets fit their fields");
    out.freeze()
}

/// What handling a packet leaves to wait for: nothing, or the answer once it is ready.
enum Reply {
    Now(Option<Vec<Bytes>>),
    Later(Pin<Box<dyn Future<Output = Option<Vec<Bytes>>>>>),
}

pub(super) async fn respond(
    mqtt: Rc<Mqtt>,
    client: Rc<Client>,
    request: Request,
) -> Option<Vec<Bytes>> {
    let Request {
        packet,
        previous,
        done,
    } = request;
    if let Some(previous) = previous {
        previous.wait().await;
    }
    if client.link.is_closing() {
        return None;
    }
    let reply = handle(&mqtt, &client, packet).await;
    drop(done);
    match reply {
        Reply::Now(answer) => answer,
        Reply::Later(answer) => answer.await,
    }
}

async fn handle(mqtt: &Rc<Mqtt>, client: &Rc<Client>, packet: Packet) -> Reply {
    if let Packet::Connect(connect) = packet {
        return Reply::Now(connect_client(mqtt, client, *connect).await);
    }
    let Some(session) = client.session.borrow().clone() else {
        // Packets behind a refused CONNECT.
        return Reply::Now(None);
    };
    let level = client.level.get().unwrap_or(Level::V311);
    let v5 = level == Level::V5;
    let now_ms = super::now_ms();
    match packet {
        Packet::Publish(publish) => publish_message(mqtt, client, &session, publish),
        Packet::PubAck(ack) => {
            session.complete(ack.packet_id, QoS::AtLeastOnce);
            pump(mqtt, &session, now_ms);
            Reply::Now(None)
        }
        Packet::PubRec(ack) => {
            let known = session.received(ack.packet_id, ack.code >= 0x80);
            pump(mqtt, &session, now_ms);
            if ack.code >= 0x80 {
                return Reply::Now(None);
            }
            let pubrel = Packet::PubRel(ack_for(ack.packet_id, known, v5));
            Reply::Now(Some(vec![encode(&pubrel, level)]))
        }
        Packet::PubRel(ack) => {
            let known = session
                .state
                .borrow_mut()
                .inbound_qos2
                .remove(&ack.packet_id);
            session.dirty.set(true);
            if known {
                client
                    .unacknowledged
                    .set(client.unacknowledged.get().saturating_sub(1));
            }
            let pubcomp = encode(&Packet::PubComp(ack_for(ack.packet_id, known, v5)), level);
            if !known {
                return Reply::Now(Some(vec![pubcomp]));
            }
            // The identifier is free once PUBCOMP is sent: a persistent session stores that
            // first, so a broker restarted after it does not take the identifier's next
            // message for the old one sent again.
            let (mqtt, session) = (mqtt.clone(), session.clone());
            Reply::Later(Box::pin(async move {
                if let Err(error) = mqtt.store_session(&session, Store::Changed).await {
                    log::warn!("MQTT: storing session {:?}: {error}", session.client_id);
                }
                Some(vec![pubcomp])
            }))
        }
        Packet::PubComp(ack) => {
            session.complete(ack.packet_id, QoS::ExactlyOnce);
            pump(mqtt, &session, now_ms);
            Reply::Now(None)
        }
        Packet::Subscribe(subscribe) => {
            Reply::Now(subscribe_client(mqtt, client, &session, subscribe).await)
        }
        Packet::Unsubscribe(unsubscribe) => {
            let answer = unsubscribe_client(mqtt, &session, unsubscribe, level);
            if let Err(error) = mqtt.store_session(&session, Store::Changed).await {
                log::warn!("MQTT: storing session {:?}: {error}", session.client_id);
            }
            Reply::Now(Some(answer))
        }
        Packet::PingReq => Reply::Now(Some(vec![encode(&Packet::PingResp, level)])),
        Packet::Disconnect(disconnect) => {
            Reply::Now(disconnect_client(client, &session, disconnect))
        }
        Packet::Auth(_) => Reply::Now(client.violation(
            reason::PROTOCOL_ERROR,
            "AUTH without an authentication method in CONNECT".into(),
        )),
        other => Reply::Now(client.violation(
            reason::PROTOCOL_ERROR,
            format!("a client may not send {}", other.name()),
        )),
    }
}

/// The PUBREL or PUBCOMP for `packet_id`: success, or (5.0) packet identifier not found
/// when it was not `known`.
fn ack_for(packet_id: u16, known: bool, v5: bool) -> Ack {
    let code = if known || !v5 {
        reason::SUCCESS
    } else {
        reason::PACKET_IDENTIFIER_NOT_FOUND
    };
    ack_with(packet_id, code)
}

fn ack_with(packet_id: u16, code: u8) -> Ack {
    Ack {
        packet_id,
        code,
        properties: Properties::default(),
    }
}

fn pump(mqtt: &Mqtt, session: &Session, now_ms: i64) {
    for reason in session.pump(now_ms) {
        mqtt.count_dropped(reason);
    }
}

/// A CONNACK refusing the connection, and the close.
fn refuse(
    client: &Client,
    level: Level,
    code: u8,
    v3_code: u8,
    reason: String,
) -> Option<Vec<Bytes>> {
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code: if level == Level::V5 { code } else { v3_code },
        properties: Properties {
            reason_string: (level == Level::V5).then(|| reason.clone()),
            ..Properties::default()
        },
    });
    client.link.close(CloseReason::ProtocolError, reason);
    Some(vec![encode(&connack, level)])
}

async fn connect_client(
    mqtt: &Rc<Mqtt>,
    client: &Rc<Client>,
    connect: Connect,
) -> Option<Vec<Bytes>> {
    let level = connect.level;
    let v5 = level == Level::V5;
    let config = mqtt.config().clone();
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if level == Level::V31 || (level == Level::V311 && !connect.clean_start) {
            // MQTT-3.1.3-8: a zero-length identifier needs a clean session.
            return refuse(
                client,
                level,
                reason::CLIENT_IDENTIFIER_NOT_VALID,
                reason::V3_IDENTIFIER_REJECTED,
                "a zero-length client identifier needs a clean session".into(),
            );
        }
        // MQTT-3.1.3-6: the server assigns a unique identifier.
        let id = format!("coremq-{:016x}", rand::random::<u64>());
        assigned = v5.then(|| id.clone());
        id
    } else {
        connect.client_id.clone()
    };
    if connect.properties.authentication_method.is_some() {
        // Section 4.12: no enhanced authentication method is supported.
        return refuse(
            client,
            level,
            reason::BAD_AUTHENTICATION_METHOD,
            reason::V3_NOT_AUTHORIZED,
            "enhanced authentication is not supported".into(),
        );
    }
    if let Some(will) = &connect.will
        && !topic::valid_name(&will.topic)
    {
        return refuse(
            client,
            level,
            reason::TOPIC_NAME_INVALID,
            reason::V3_IDENTIFIER_REJECTED,
            format!("will topic {:?} is not a topic name", will.topic),
        );
    }
    let expiry_interval = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let stored_claim = mqtt.adopt(&client_id, !connect.clean_start).await;
    let (previous, generation) = match mqtt.claim(&client_id).await {
        Ok(claim) => claim,
        Err(error) => {
            return refuse(
                client,
                level,
                reason::SERVER_UNAVAILABLE,
                reason::V3_SERVER_UNAVAILABLE,
                format!("the session registry is unavailable: {error}"),
            );
        }
    };
    let taken = match previous {
        Some(shard) => mqtt.take(shard, &client_id, generation).await,
        None => None,
    };
    let existed = taken.is_some();
    // Later than every claim of the identifier this broker knows of.
    let claim = stored_claim
        .max(taken.as_ref().map(|(_, claim)| *claim))
        .map_or(0, |claim| claim + 1)
        .max(super::now_ms() as u64);
    let (state, session_present) = match taken {
        Some((state, _)) if !connect.clean_start => (state, true),
        _ => (State::default(), false),
    };
    if !mqtt.may_install(&client_id, generation) || client.link.is_closing() {
        client.link.close(
            CloseReason::SessionTakenOver,
            format!("client {client_id:?} connected again"),
        );
        return None;
    }
    let session = Rc::new(Session::new(
        client_id.clone(),
        mqtt.next_key(),
        generation,
        claim,
        State {
            expiry_interval,
            ..state
        },
    ));
    // A session it replaces may be stored: its end (or this one's storing) replaces it.
    session.persisted.set(existed);
    mqtt.install(session.clone()).await;
    if let Err(error) = mqtt.store_session(&session, Store::Claimed).await {
        return refuse(
            client,
            level,
            reason::SERVER_UNAVAILABLE,
            reason::V3_SERVER_UNAVAILABLE,
            format!("storing the session failed: {error}"),
        );
    }
    let keep_alive = match connect.keep_alive {
        // MQTT-3.1.2-24: one and a half keep-alive periods.
        0 => None,
        seconds => Some(Duration::from_millis(u64::from(seconds) * 1500)),
    };
    client.link.set_idle(keep_alive);
    client.reasons.set(Reasons {
        allowed: connect.properties.request_problem_information != Some(0),
        packet_bytes_max: connect
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |max| max as usize),
    });
    *client.will.borrow_mut() = connect.will;
    *client.session.borrow_mut() = Some(session.clone());
    let properties = if v5 {
        Properties {
            assigned_client_identifier: assigned,
            receive_maximum: Some(config.receive_maximum),
            maximum_packet_size: Some(config.maximum_packet_size),
            topic_alias_maximum: Some(config.topic_alias_maximum),
            ..Properties::default()
        }
    } else {
        Properties::default()
    };
    let connack = Packet::ConnAck(ConnAck {
        session_present,
        code: reason::SUCCESS,
        properties,
    });
    client.link.push(vec![encode(&connack, level)]);
    let attached = Attached::new(
        client.link.clone(),
        level,
        client.id,
        connect
            .properties
            .receive_maximum
            .unwrap_or(config.receive_maximum),
        connect
            .properties
            .maximum_packet_size
            .unwrap_or(codec::VARIABLE_INTEGER_MAX + 5),
        connect.properties.topic_alias_maximum.unwrap_or(0),
    );
    for reason in session.resume(attached, super::now_ms()) {
        mqtt.count_dropped(reason);
    }
    mqtt.share_presence(&session);
    log::debug!(
        "MQTT client {client_id:?} connected from {:?} (level {}, session present {session_present})",
        client.peer,
        level as u8
    );
    None
}

/// Where a message is stored: its Kafka topic's partition for its MQTT topic.
fn partition_of(mqtt: &Mqtt, mqtt_topic: &str) -> Result<coremq_engine::TopicPartition, String> {
    let name = mqtt.config().kafka_topic(mqtt_topic);
    let table = mqtt.context.topics();
    let topic = table
        .get(name)
        .ok_or_else(|| format!("Kafka topic {name} does not exist"))?;
    let partition = partition_for_key(mqtt_topic.as_bytes(), topic.partitions.max(1) as usize);
    topic
        .log(partition)
        .ok_or_else(|| format!("Kafka topic {name} has no partition {partition}"))
}

/// Hands `message` to the appender; its ticket for the outcome.
pub(super) fn store(mqtt: &Mqtt, message: &Message) -> Result<Ticket, String> {
    let log = partition_of(mqtt, &message.topic)?;
    mqtt.counters.borrow_mut().messages_received += 1;
    Ok(mqtt.appender.append(
        &mqtt.context.cluster,
        &log,
        Bytes::copy_from_slice(message.topic.as_bytes()),
        Some(message.payload.clone()),
        message.headers(),
        message.qos != QoS::AtMostOnce,
    ))
}

fn publish_message(
    mqtt: &Rc<Mqtt>,
    client: &Rc<Client>,
    session: &Rc<Session>,
    publish: Publish,
) -> Reply {
    let level = client.level.get().unwrap_or(Level::V311);
    let v5 = level == Level::V5;
    let Publish {
        qos,
        retain,
        mut topic,
        packet_id,
        payload,
        properties,
        ..
    } = publish;
    if let Some(alias) = properties.topic_alias {
        if alias == 0 || alias > mqtt.config().topic_alias_maximum {
            // MQTT-3.3.2-8, MQTT-3.3.2-9.
            return Reply::Now(client.violation(
                reason::TOPIC_ALIAS_INVALID,
                format!("topic alias {alias} is out of range"),
            ));
        }
        if topic.is_empty() {
            match client.aliases.borrow().get(&alias) {
                Some(known) => topic = known.clone(),
                None => {
                    return Reply::Now(client.violation(
                        reason::PROTOCOL_ERROR,
                        format!("topic alias {alias} was never set"),
                    ));
                }
            }
        } else {
            client.aliases.borrow_mut().insert(alias, topic.clone());
        }
    }
    if !topic::valid_name(&topic) {
        // MQTT-3.3.2-1, MQTT-3.3.2-2, MQTT-4.7.3-1.
        return Reply::Now(client.violation(
            reason::TOPIC_NAME_INVALID,
            format!("{topic:?} is not a topic name"),
        ));
    }
    if !properties.subscription_identifiers.is_empty() {
        // MQTT-3.3.4-6.
        return Reply::Now(client.violation(
            reason::PROTOCOL_ERROR,
            "a PUBLISH from a client carries a subscription identifier".into(),
        ));
    }
    if qos != QoS::AtMostOnce {
        let duplicate =
            qos == QoS::ExactlyOnce && session.state.borrow().inbound_qos2.contains(&packet_id);
        if duplicate {
            // MQTT-4.3.3-9: a QoS 2 message already received is not stored again.
            return Reply::Now(Some(vec![encode(
                &Packet::PubRec(ack_with(packet_id, 0)),
                level,
            )]));
        }
        let unacknowledged = client.unacknowledged.get() + 1;
        if v5 && unacknowledged > mqtt.config().receive_maximum as usize {
            // MQTT-3.3.4-9.
            return Reply::Now(client.violation(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                format!(
                    "more than {} QoS 1 and 2 messages unacknowledged",
                    mqtt.config().receive_maximum
                ),
            ));
        }
        client.unacknowledged.set(unacknowledged);
    }
    let message = Message::new(topic, payload, qos, retain, &session.client_id, &properties);
    let stored = store(mqtt, &message);
    // MQTT-3.3.1-5, MQTT-3.3.1-10: a retained message replaces the topic's, an empty one
    // clears it.
    let retained = retain.then(|| {
        let mqtt = mqtt.clone();
        coremq_runtime::spawn_local(async move { mqtt.retain(message).await })
    });
    if qos == QoS::ExactlyOnce {
        session.state.borrow_mut().inbound_qos2.insert(packet_id);
        session.dirty.set(true);
    }
    let unacknowledged = client.unacknowledged.clone();
    let reasons = client.reasons.clone();
    let session = session.clone();
    let outcome = {
        let (mqtt, session) = (mqtt.clone(), session.clone());
        async move {
            match stored {
                Ok(ticket) => {
                    ticket.wait().await?;
                }
                Err(error) => return Err(error),
            }
            if qos == QoS::ExactlyOnce {
                // MQTT-4.3.3-10 across a restart: a persistent session stores the identifier
                // before PUBREC, so the message sent again after a crash is known.
                mqtt.store_session(&session, Store::Changed).await?;
            }
            match retained {
                Some(retained) => retained.await,
                None => Ok(()),
            }
        }
    };
    match qos {
        QoS::AtMostOnce => {
            // Nothing to answer; a failed store is logged by nobody but the counters.
            coremq_runtime::spawn_local(async move {
                if let Err(error) = outcome.await {
                    log::debug!("MQTT: a QoS 0 message was not stored: {error}");
                }
            })
            .detach();
            Reply::Now(None)
        }
        QoS::AtLeastOnce | QoS::ExactlyOnce => {
            let link = client.link.clone();
            Reply::Later(Box::pin(async move {
                let result = outcome.await;
                let code = match &result {
                    Ok(()) => reason::SUCCESS,
                    Err(_) => reason::UNSPECIFIED_ERROR,
                };
                if qos == QoS::AtLeastOnce || result.is_err() {
                    unacknowledged.set(unacknowledged.get().saturating_sub(1));
                }
                if let Err(error) = &result {
                    if qos == QoS::ExactlyOnce {
                        session.state.borrow_mut().inbound_qos2.remove(&packet_id);
                    }
                    if !v5 {
                        // 3.1.1 has no negative acknowledgement: the connection closes.
                        link.close(
                            CloseReason::ProtocolError,
                            format!("storing a message failed: {error}"),
                        );
                        return None;
                    }
                }
                let with_reason = |reason_string| {
                    let ack = Ack {
                        packet_id,
                        code,
                        properties: Properties {
                            reason_string,
                            ..Properties::default()
                        },
                    };
                    let packet = if qos == QoS::AtLeastOnce {
                        Packet::PubAck(ack)
                    } else {
                        Packet::PubRec(ack)
                    };
                    encode(&packet, level)
                };
                let reasons = reasons.get();
                let reason = result.err().filter(|_| v5 && reasons.allowed);
                let mut answer = with_reason(reason);
                if answer.len() > reasons.packet_bytes_max {
                    answer = with_reason(None);
                }
                Some(vec![answer])
            }))
        }
    }
}

async fn subscribe_client(
    mqtt: &Rc<Mqtt>,
    client: &Client,
    session: &Session,
    subscribe: Subscribe,
) -> Option<Vec<Bytes>> {
    let level = client.level.get().unwrap_or(Level::V311);
    let v5 = level == Level::V5;
    let identifier = subscribe
        .properties
        .subscription_identifiers
        .first()
        .copied();
    let mut codes = Vec::with_capacity(subscribe.subscriptions.len());
    let mut retained: Vec<(String, Options)> = Vec::new();
    let shared_no_local = subscribe.subscriptions.iter().any(|subscription| {
        subscription.no_local
            && topic::parse_filter(&subscription.filter).is_ok_and(|parsed| parsed.group.is_some())
    });
    if shared_no_local {
        // MQTT-3.8.3-4.
        return client.violation(
            reason::PROTOCOL_ERROR,
            "no-local on a shared subscription".into(),
        );
    }
    for subscription in subscribe.subscriptions {
        let code = match topic::parse_filter(&subscription.filter) {
            Err(_) => {
                if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    reason::V3_SUBSCRIPTION_FAILURE
                }
            }
            Ok(parsed) => {
                let options = Options {
                    qos: subscription.qos,
                    no_local: subscription.no_local,
                    retain_as_published: subscription.retain_as_published,
                    retain_handling: subscription.retain_handling,
                    identifier,
                };
                // MQTT-3.8.4-3: a subscription to the same filter replaces the old one.
                mqtt.unsubscribe(session, &subscription.filter);
                let existed = session
                    .state
                    .borrow_mut()
                    .subscriptions
                    .insert(subscription.filter.clone(), options.clone())
                    .is_some();
                mqtt.subscribe(session, &subscription.filter, options.clone())
                    .await;
                // MQTT-3.3.1-9, MQTT-3.8.4-4: retained messages for the new subscription,
                // as its retain handling says.
                // Section 4.8.2: a shared subscription gets no retained messages.
                let send_retained = parsed.group.is_none()
                    && match options.retain_handling {
                        0 => true,
                        1 => !existed,
                        _ => false,
                    };
                if send_retained {
                    retained.push((parsed.filter.to_string(), options));
                }
                subscription.qos as u8
            }
        };
        codes.push(code);
    }
    let suback = Packet::SubAck(SubAck {
        packet_id: subscribe.packet_id,
        codes,
        properties: Properties::default(),
    });
    if let Err(error) = mqtt.store_session(session, Store::Changed).await {
        log::warn!("MQTT: storing session {:?}: {error}", session.client_id);
    }
    // Pushed, so the retained messages behind it follow it on the wire.
    client.link.push(vec![encode(&suback, level)]);
    let now_ms = super::now_ms();
    for (filter, options) in retained {
        for message in mqtt.retained_matching(&filter).await {
            let outgoing = Outgoing {
                qos: options.qos.min(message.qos),
                message,
                retain: true,
                subscription_identifiers: options.identifier.into_iter().collect(),
                place: None,
            };
            mqtt.offer(session, outgoing, now_ms);
        }
    }
    None
}

fn unsubscribe_client(
    mqtt: &Mqtt,
    session: &Session,
    unsubscribe: Unsubscribe,
    level: Level,
) -> Vec<Bytes> {
    let codes = unsubscribe
        .filters
        .iter()
        .map(|filter| {
            let existed = session
                .state
                .borrow_mut()
                .subscriptions
                .remove(filter)
                .is_some();
            mqtt.unsubscribe(session, filter);
            if existed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            }
        })
        .collect();
    let unsuback = Packet::UnsubAck(SubAck {
        packet_id: unsubscribe.packet_id,
        codes,
        properties: Properties::default(),
    });
    vec![encode(&unsuback, level)]
}

fn disconnect_client(
    client: &Client,
    session: &Session,
    disconnect: Disconnect,
) -> Option<Vec<Bytes>> {
    if let Some(expiry) = disconnect.properties.session_expiry_interval {
        let mut state = session.state.borrow_mut();
        if state.expiry_interval == 0 && expiry != 0 {
            // MQTT-3.14.2-2.
            drop(state);
            return client.violation(
                reason::PROTOCOL_ERROR,
                "a session expiry set on DISCONNECT after 0 on CONNECT".into(),
            );
        }
        state.expiry_interval = expiry;
        session.dirty.set(true);
    }
    if disconnect.code != reason::DISCONNECT_WITH_WILL {
        // MQTT-3.14.4-3: a normal DISCONNECT discards the will.
        client.will.borrow_mut().take();
    }
    client.link.end();
    None
}

/// The connection ended: the will is published unless a DISCONNECT discarded it, and the
/// session ends now or when its expiry interval has passed.
pub(super) fn closed(client: &Client) {
    let Some(session) = client.session.borrow_mut().take() else {
        return;
    };
    if !session.detach(client.id) {
        return;
    }
    let Some(mqtt) = Mqtt::current() else {
        return;
    };
    mqtt.share_presence(&session);
    if let Some(will) = client.will.borrow_mut().take() {
        publish_will(&mqtt, &session, will);
    }
    let expiry = session.state.borrow().expiry_interval;
    if expiry == 0 {
        end_session(&mqtt, &session);
    } else {
        let (mqtt, session) = (mqtt.clone(), session.clone());
        coremq_runtime::spawn_local(async move {
            if let Err(error) = mqtt.store_session(&session, Store::Changed).await {
                log::warn!("MQTT: storing session {:?}: {error}", session.client_id);
            }
        })
        .detach();
    }
    if expiry != 0 && expiry != u32::MAX {
        let detaches = session.detaches.get();
        coremq_runtime::spawn_local(async move {
            coremq_runtime::sleep(Duration::from_secs(u64::from(expiry))).await;
            if !session.is_connected() && session.detaches.get() == detaches {
                end_session(&mqtt, &session);
            }
        })
        .detach();
    }
}

fn end_session(mqtt: &Rc<Mqtt>, session: &Rc<Session>) {
    mqtt.remove(session);
    let (mqtt, session) = (mqtt.clone(), session.clone());
    coremq_runtime::spawn_local(async move {
        if let Err(error) = mqtt.store_session(&session, Store::Ended).await {
            log::warn!(
                "MQTT: ending stored session {:?}: {error}",
                session.client_id
            );
        }
        mqtt.release(&session.client_id, session.generation).await;
    })
    .detach();
}

/// Publishes a will: at once, or after its delay (5.0) unless the session is resumed first
/// (MQTT-3.1.3-9).
fn publish_will(mqtt: &Rc<Mqtt>, session: &Rc<Session>, will: Will) {
    let delay = will.properties.will_delay_interval.unwrap_or(0);
    let message = Message::new(
        will.topic,
        will.payload,
        will.qos,
        will.retain,
        &session.client_id,
        &will.properties,
    );
    let (mqtt, session) = (mqtt.clone(), session.clone());
    let detaches = session.detaches.get();
    coremq_runtime::spawn_local(async move {
        if delay > 0 {
            let expiry = session.state.borrow().expiry_interval;
            coremq_runtime::sleep(Duration::from_secs(u64::from(delay.min(expiry)))).await;
            if session.is_connected() || session.detaches.get() != detaches {
                return;
            }
        }
        let stored = match store(&mqtt, &message) {
            Ok(ticket) => ticket.wait().await.map(drop),
            Err(error) => Err(error),
        };
        let retained = if message.retain {
            mqtt.retain(message).await
        } else {
            Ok(())
        };
        if let Err(error) = stored.and(retained) {
            log::warn!(
                "MQTT: the will of {:?} was not stored: {error}",
                session.client_id
            );
        }
    })
    .detach();
}
