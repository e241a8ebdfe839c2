//! Encoding: a [`Packet`] into its bytes for a connection speaking a protocol level. A string
//! or binary field longer than its two-byte length can say, or a packet over the largest
//! remaining length, fails the encoding rather than writing a length that lies.

use bytes::{BufMut, BytesMut};

use super::properties::Properties;
use super::{Ack, ConnAck, Connect, Disconnect, Level, Packet, Publish, QoS, SubAck, kind};
use super::{Subscribe, Unsubscribe, VARIABLE_INTEGER_MAX};

/// A packet that cannot be encoded: a field too long for its length prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    pub reason: String,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for EncodeError {}

/// Writes a packet body, remembering the first field that did not fit its length prefix.
pub(crate) struct Writer {
    out: Vec<u8>,
    too_long: Option<usize>,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            out: Vec::new(),
            too_long: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.out.len()
    }

    pub(crate) fn u8(&mut self, value: u8) {
        self.out.push(value);
    }

    pub(crate) fn u16(&mut self, value: u16) {
        self.out.extend_from_slice(&value.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, value: u32) {
        self.out.extend_from_slice(&value.to_be_bytes());
    }

    pub(crate) fn variable_integer(&mut self, value: u32) {
        put_variable_integer(&mut self.out, value);
    }

    pub(crate) fn binary(&mut self, bytes: &[u8]) {
        let Ok(length) = u16::try_from(bytes.len()) else {
            self.too_long.get_or_insert(bytes.len());
            self.u16(0);
            return;
        };
        self.u16(length);
        self.out.extend_from_slice(bytes);
    }

    pub(crate) fn string(&mut self, text: &str) {
        self.binary(text.as_bytes());
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }
}

fn put_variable_integer(out: &mut impl BufMut, mut value: u32) {
    debug_assert!(value <= VARIABLE_INTEGER_MAX);
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

/// The bytes a variable byte integer takes.
pub(crate) fn variable_integer_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `packet`, encoded for `level`, to `out`.
pub fn encode(packet: &Packet, level: Level, out: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = level == Level::V5;
    let mut w = Writer::new();
    let mut payload: &[u8] = &[];
    let first = match packet {
        Packet::Connect(connect) => {
            encode_connect(connect, &mut w);
            kind::CONNECT << 4
        }
        Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties,
        }) => {
            w.u8(u8::from(*session_present));
            w.u8(*code);
            if v5 {
                properties.write(&mut w);
            }
            kind::CONNACK << 4
        }
        Packet::Publish(publish) => {
            encode_publish_head(publish, v5, &mut w);
            payload = &publish.payload;
            let Publish {
                dup, qos, retain, ..
            } = publish;
            kind::PUBLISH << 4 | u8::from(*dup) << 3 | (*qos as u8) << 1 | u8::from(*retain)
        }
        Packet::PubAck(ack) => encode_ack(kind::PUBACK << 4, ack, v5, &mut w),
        Packet::PubRec(ack) => encode_ack(kind::PUBREC << 4, ack, v5, &mut w),
        Packet::PubRel(ack) => encode_ack(kind::PUBREL << 4 | 0b0010, ack, v5, &mut w),
        Packet::PubComp(ack) => encode_ack(kind::PUBCOMP << 4, ack, v5, &mut w),
        Packet::Subscribe(Subscribe {
            packet_id,
            subscriptions,
            properties,
        }) => {
            w.u16(*packet_id);
            if v5 {
                properties.write(&mut w);
            }
            for subscription in subscriptions {
                w.string(&subscription.filter);
                let mut options = subscription.qos as u8;
                if v5 {
                    options |= u8::from(subscription.no_local) << 2
                        | u8::from(subscription.retain_as_published) << 3
                        | (subscription.retain_handling & 0x03) << 4;
                }
                w.u8(options);
            }
            kind::SUBSCRIBE << 4 | 0b0010
        }
        Packet::SubAck(suback) => {
            encode_suback(suback, v5, &mut w);
            kind::SUBACK << 4
        }
        Packet::Unsubscribe(Unsubscribe {
            packet_id,
            filters,
            properties,
        }) => {
            w.u16(*packet_id);
            if v5 {
                properties.write(&mut w);
            }
            for filter in filters {
                w.string(filter);
            }
            kind::UNSUBSCRIBE << 4 | 0b0010
        }
        Packet::UnsubAck(unsuback) => {
            if v5 {
                encode_suback(unsuback, v5, &mut w);
            } else {
                w.u16(unsuback.packet_id);
            }
            kind::UNSUBACK << 4
        }
        Packet::PingReq => kind::PINGREQ << 4,
        Packet::PingResp => kind::PINGRESP << 4,
        Packet::Disconnect(disconnect) => {
            if v5 {
                encode_disconnect(disconnect, &mut w);
            }
            kind::DISCONNECT << 4
        }
        Packet::Auth(auth) => {
            encode_disconnect(auth, &mut w);
            kind::AUTH << 4
        }
    };
    if let Some(length) = w.too_long {
        return Err(EncodeError {
            reason: format!(
                "a {} field of {length} bytes (at most 65535)",
                packet.name()
            ),
        });
    }
    let remaining = w.out.len() + payload.len();
    if remaining > VARIABLE_INTEGER_MAX as usize {
        return Err(EncodeError {
            reason: format!("a {} of {remaining} bytes", packet.name()),
        });
    }
    out.reserve(1 + variable_integer_len(remaining as u32) + remaining);
    out.put_u8(first);
    put_variable_integer(out, remaining as u32);
    out.extend_from_slice(&w.out);
    out.extend_from_slice(payload);
    Ok(())
}

fn encode_connect(connect: &Connect, w: &mut Writer) {
    let level = connect.level;
    w.string(level.name());
    w.u8(level as u8);
    let mut flags = u8::from(connect.clean_start) << 1;
    if let Some(will) = &connect.will {
        flags |= 0x04 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
    }
    if connect.password.is_some() {
        flags |= 0x40;
    }
    if connect.username.is_some() {
        flags |= 0x80;
    }
    w.u8(flags);
    w.u16(connect.keep_alive);
    let v5 = level == Level::V5;
    if v5 {
        connect.properties.write(w);
    }
    w.string(&connect.client_id);
    if let Some(will) = &connect.will {
        if v5 {
            will.properties.write(w);
        }
        w.string(&will.topic);
        w.binary(&will.payload);
    }
    if let Some(username) = &connect.username {
        w.string(username);
    }
    if let Some(password) = &connect.password {
        w.binary(password);
    }
}

fn encode_publish_head(publish: &Publish, v5: bool, w: &mut Writer) {
    w.string(&publish.topic);
    if publish.qos != QoS::AtMostOnce {
        w.u16(publish.packet_id);
    }
    if v5 {
        publish.properties.write(w);
    }
}

fn encode_ack(first: u8, ack: &Ack, v5: bool, w: &mut Writer) -> u8 {
    w.u16(ack.packet_id);
    if v5 && (ack.code != 0 || ack.properties != Properties::default()) {
        // The property length follows the reason code even when 0: the specification allows
        // leaving it out, but some clients (paho-mqtt 2.1) then ignore the reason code.
        w.u8(ack.code);
        ack.properties.write(w);
    }
    first
}

fn encode_suback(suback: &SubAck, v5: bool, w: &mut Writer) {
    w.u16(suback.packet_id);
    if v5 {
        suback.properties.write(w);
    }
    w.raw(&suback.codes);
}

/// As for acknowledgements, a reason code is always followed by its property length.
fn encode_disconnect(disconnect: &Disconnect, w: &mut Writer) {
    if disconnect.code != 0 || disconnect.properties != Properties::default() {
        w.u8(disconnect.code);
        disconnect.properties.write(w);
    }
}
