//! Decoding: a packet's body (the bytes after its fixed header) into a [`Packet`], for the
//! protocol level the connection speaks. Every read checks the bytes left first.

use bytes::{Buf, Bytes};

use super::properties::allowed;
use super::{
    Ack, ConnAck, Connect, DecodeError, Disconnect, Level, Packet, Properties, Publish, QoS,
    SubAck, Subscribe, Subscription, Unsubscribe, Will, kind, reason,
};

/// A cursor over a packet body that never reads past it.
pub(crate) struct Reader {
    bytes: Bytes,
}

impl Reader {
    pub(crate) fn new(bytes: Bytes) -> Reader {
        Reader { bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn need(&self, count: usize, what: &str) -> Result<(), DecodeError> {
        if self.bytes.len() < count {
            return Err(DecodeError::malformed(format!(
                "{what} needs {count} bytes, {} are left",
                self.bytes.len()
            )));
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1, "a byte")?;
        Ok(self.bytes.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2, "a two-byte integer")?;
        Ok(self.bytes.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4, "a four-byte integer")?;
        Ok(self.bytes.get_u32())
    }

    /// A variable byte integer of at most four bytes (MQTT-1.5.5-1: the fewest bytes is not
    /// checked, as receivers accept longer encodings in practice).
    pub(crate) fn variable_integer(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for index in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::malformed(
            "a variable byte integer of more than four bytes",
        ))
    }

    /// Binary data: a two-byte length, then that many bytes (a view, no copy).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let length = self.u16()? as usize;
        self.need(length, "binary data")?;
        Ok(self.bytes.split_to(length))
    }

    /// A UTF-8 string: well-formed (3.1.1 MQTT-1.4.0-1, 5.0 MQTT-1.5.4-1) and without U+0000
    /// (MQTT-1.4.0-2, MQTT-1.5.4-2), else the packet is malformed.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.binary()?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| DecodeError::malformed("a string that is not well-formed UTF-8"))?;
        if text.contains('\0') {
            return Err(DecodeError::malformed("a string containing U+0000"));
        }
        Ok(text.to_string())
    }

    /// The next `length` bytes as a reader of their own.
    pub(crate) fn sub(&mut self, length: usize, what: &str) -> Result<Reader, DecodeError> {
        self.need(length, what)?;
        Ok(Reader::new(self.bytes.split_to(length)))
    }

    /// Everything left.
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    /// Fails unless every byte was read.
    fn end(&self, packet: &str) -> Result<(), DecodeError> {
        if !self.bytes.is_empty() {
            return Err(DecodeError::malformed(format!(
                "{} bytes after the end of a {packet}",
                self.bytes.len()
            )));
        }
        Ok(())
    }
}

/// Decodes a CONNECT body (the first packet, which says the protocol level). A CONNECT
/// naming a level this server does not speak fails with
/// [`reason::UNSUPPORTED_PROTOCOL_VERSION`], so the caller can answer with the CONNACK the
/// client expects (MQTT-3.1.2-2).
pub fn decode_connect(fixed_header: u8, body: Bytes) -> Result<Connect, DecodeError> {
    if fixed_header >> 4 != kind::CONNECT {
        return Err(DecodeError::protocol(format!(
            "the first packet is of type {}, not CONNECT",
            fixed_header >> 4
        )));
    }
    if fixed_header & 0x0F != 0 {
        return Err(DecodeError::malformed("CONNECT with reserved flags set"));
    }
    let mut r = Reader::new(body);
    let name = r.binary()?;
    let level_byte = r.u8()?;
    let level = match (&name[..], level_byte) {
        (b"MQIsdp", 3) => Level::V31,
        (b"MQTT", 4) => Level::V311,
        (b"MQTT", 5) => Level::V5,
        (b"MQTT" | b"MQIsdp", _) => {
            return Err(DecodeError {
                code: reason::UNSUPPORTED_PROTOCOL_VERSION,
                reason: format!("protocol level {level_byte} is not supported (3, 4 and 5 are)"),
            });
        }
        _ => {
            return Err(DecodeError::protocol(format!(
                "protocol name {:?} is neither MQTT nor MQIsdp",
                String::from_utf8_lossy(&name)
            )));
        }
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        // MQTT-3.1.2-3.
        return Err(DecodeError::malformed("CONNECT with its reserved flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::from_bits((flags >> 3) & 0x03)
        .ok_or_else(|| DecodeError::malformed("a will QoS of 3"))?;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        // MQTT-3.1.2-11, MQTT-3.1.2-13, MQTT-3.1.2-15.
        return Err(DecodeError::malformed(
            "will QoS or will retain set without a will",
        ));
    }
    if level < Level::V5 && password_flag && !username_flag {
        // MQTT-3.1.2-22.
        return Err(DecodeError::malformed("a password without a user name"));
    }
    let keep_alive = r.u16()?;
    let properties = if level == Level::V5 {
        Properties::read(&mut r, allowed::CONNECT, false)?
    } else {
        Properties::default()
    };
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::protocol(
            "authentication data without an authentication method",
        ));
    }
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if level == Level::V5 {
            Properties::read(&mut r, allowed::WILL, false)?
        } else {
            Properties::default()
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = username_flag.then(|| r.string()).transpose()?;
    let password = password_flag.then(|| r.binary()).transpose()?;
    r.end("CONNECT")?;
    Ok(Connect {
        level,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Decodes a packet other than CONNECT (and CONNECT too, checking it names `level`) of a
/// connection speaking `level`: its fixed header's first byte, then its body.
pub fn decode(fixed_header: u8, body: Bytes, level: Level) -> Result<Packet, DecodeError> {
    let packet_type = fixed_header >> 4;
    let flags = fixed_header & 0x0F;
    let v5 = level == Level::V5;
    // Fixed flags per type (3.1.1 MQTT-2.2.2-1 and -2, 5.0 MQTT-2.1.3-1).
    let required_flags = match packet_type {
        kind::PUBLISH => None,
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => Some(0b0010),
        _ => Some(0),
    };
    if let Some(required) = required_flags
        && flags != required
    {
        return Err(DecodeError::malformed(format!(
            "packet type {packet_type} with flags {flags:04b}, not {required:04b}"
        )));
    }
    let mut r = Reader::new(body);
    let packet = match packet_type {
        kind::CONNECT => {
            let connect = decode_connect(fixed_header, r.rest())?;
            if connect.level != level {
                return Err(DecodeError::protocol("a CONNECT of another protocol level"));
            }
            return Ok(Packet::Connect(Box::new(connect)));
        }
        kind::CONNACK => {
            let flags = r.u8()?;
            if flags & 0xFE != 0 {
                return Err(DecodeError::malformed("CONNACK with reserved flags set"));
            }
            let code = r.u8()?;
            let properties = if v5 {
                Properties::read(&mut r, allowed::CONNACK, false)?
            } else {
                Properties::default()
            };
            Packet::ConnAck(ConnAck {
                session_present: flags & 1 != 0,
                code,
                properties,
            })
        }
        kind::PUBLISH => Packet::Publish(publish(flags, &mut r, v5)?),
        kind::PUBACK => Packet::PubAck(ack(&mut r, v5)?),
        kind::PUBREC => Packet::PubRec(ack(&mut r, v5)?),
        kind::PUBREL => Packet::PubRel(ack(&mut r, v5)?),
        kind::PUBCOMP => Packet::PubComp(ack(&mut r, v5)?),
        kind::SUBSCRIBE => Packet::Subscribe(subscribe(&mut r, v5)?),
        kind::SUBACK => Packet::SubAck(suback(&mut r, v5, allowed::ACK)?),
        kind::UNSUBSCRIBE => {
            let packet_id = packet_id(&mut r)?;
            let properties = if v5 {
                Properties::read(&mut r, allowed::UNSUBSCRIBE, false)?
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                // MQTT-3.10.3-2.
                return Err(DecodeError::protocol("UNSUBSCRIBE without a topic filter"));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        }
        kind::UNSUBACK => {
            if v5 {
                Packet::UnsubAck(suback(&mut r, v5, allowed::ACK)?)
            } else {
                Packet::UnsubAck(SubAck {
                    packet_id: packet_id(&mut r)?,
                    ..SubAck::default()
                })
            }
        }
        kind::PINGREQ => Packet::PingReq,
        kind::PINGRESP => Packet::PingResp,
        kind::DISCONNECT => Packet::Disconnect(if v5 {
            disconnect(&mut r, allowed::DISCONNECT)?
        } else {
            Disconnect::default()
        }),
        kind::AUTH if v5 => Packet::Auth(disconnect(&mut r, allowed::AUTH)?),
        _ => {
            return Err(DecodeError::malformed(format!(
                "packet type {packet_type} does not exist at protocol level {}",
                level as u8
            )));
        }
    };
    r.end(packet.name())?;
    Ok(packet)
}

/// A packet identifier, which must not be 0 (MQTT-2.3.1-1).
fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::malformed("packet identifier 0"));
    }
    Ok(id)
}

fn publish(flags: u8, r: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_bits((flags >> 1) & 0x03)
        .ok_or_else(|| DecodeError::malformed("PUBLISH with QoS 3"))?; // MQTT-3.3.1-4
    if qos == QoS::AtMostOnce && dup {
        // MQTT-3.3.1-2.
        return Err(DecodeError::malformed("a QoS 0 PUBLISH with DUP set"));
    }
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = if v5 {
        Properties::read(r, allowed::PUBLISH, true)?
    } else {
        Properties::default()
    };
    Ok(Publish {
        dup,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: in 5.0 the reason code and properties may be left out
/// (a remaining length of 2 means success, of 3 no properties).
fn ack(r: &mut Reader, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut ack = Ack {
        packet_id,
        ..Ack::default()
    };
    if v5 && !r.is_empty() {
        ack.code = r.u8()?;
        if !r.is_empty() {
            ack.properties = Properties::read(r, allowed::ACK, false)?;
        }
    }
    Ok(ack)
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        Properties::read(r, allowed::SUBSCRIBE, false)?
    } else {
        Properties::default()
    };
    let mut subscriptions = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = r.u8()?;
        let qos = QoS::from_bits(options & 0x03)
            .ok_or_else(|| DecodeError::malformed("a subscription QoS of 3"))?;
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if options & reserved != 0 {
            // MQTT-3.8.3-4 (3.1.1), MQTT-3.8.3-5 (5.0).
            return Err(DecodeError::malformed(
                "subscription options with reserved bits set",
            ));
        }
        let retain_handling = (options >> 4) & 0x03;
        if retain_handling == 3 {
            return Err(DecodeError::protocol("retain handling 3"));
        }
        subscriptions.push(Subscription {
            filter,
            qos,
            no_local: options & 0x04 != 0,
            retain_as_published: options & 0x08 != 0,
            retain_handling,
        });
    }
    if subscriptions.is_empty() {
        // MQTT-3.8.3-3 (3.1.1), MQTT-3.8.3-2 (5.0).
        return Err(DecodeError::protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        subscriptions,
        properties,
    })
}

fn suback(r: &mut Reader, v5: bool, properties_allowed: u64) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        Properties::read(r, properties_allowed, false)?
    } else {
        Properties::default()
    };
    let codes = r.rest().to_vec();
    Ok(SubAck {
        packet_id,
        codes,
        properties,
    })
}

/// A 5.0 DISCONNECT or AUTH: no body means success.
fn disconnect(r: &mut Reader, properties_allowed: u64) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    if !r.is_empty() {
        disconnect.code = r.u8()?;
        if !r.is_empty() {
            disconnect.properties = Properties::read(r, properties_allowed, false)?;
        }
    }
    Ok(disconnect)
}
