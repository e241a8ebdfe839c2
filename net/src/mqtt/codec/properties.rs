//! MQTT 5.0 properties (section 2.2.2): a variable byte integer length, then identifier and
//! value pairs. Each packet allows its own set; one outside it, or one given twice (other than
//! the user property and, in PUBLISH, the subscription identifier), is a protocol error
//! (MQTT-2.2.2-2 and section 2.2.2.2).

use bytes::Bytes;

use super::decode::Reader;
use super::encode::Writer;
use super::{DecodeError, VARIABLE_INTEGER_MAX};

/// Property identifiers.
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// The properties each packet may carry, as bit sets of identifiers (section 2.2.2.2).
pub mod allowed {
    use super::id::*;

    const fn set(ids: &[u8]) -> u64 {
        let mut bits = 0u64;
        let mut index = 0;
        while index < ids.len() {
            bits |= 1 << ids[index];
            index += 1;
        }
        bits
    }

    pub const CONNECT: u64 = set(&[
        SESSION_EXPIRY_INTERVAL,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        REQUEST_PROBLEM_INFORMATION,
        REQUEST_RESPONSE_INFORMATION,
        RECEIVE_MAXIMUM,
        TOPIC_ALIAS_MAXIMUM,
        USER_PROPERTY,
        MAXIMUM_PACKET_SIZE,
    ]);
    pub const CONNACK: u64 = set(&[
        SESSION_EXPIRY_INTERVAL,
        ASSIGNED_CLIENT_IDENTIFIER,
        SERVER_KEEP_ALIVE,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        REASON_STRING,
        RECEIVE_MAXIMUM,
        TOPIC_ALIAS_MAXIMUM,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        USER_PROPERTY,
        MAXIMUM_PACKET_SIZE,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
    ]);
    pub const PUBLISH: u64 = set(&[
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        SUBSCRIPTION_IDENTIFIER,
        TOPIC_ALIAS,
        USER_PROPERTY,
    ]);
    pub const WILL: u64 = set(&[
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        WILL_DELAY_INTERVAL,
        USER_PROPERTY,
    ]);
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK.
    pub const ACK: u64 = set(&[REASON_STRING, USER_PROPERTY]);
    pub const SUBSCRIBE: u64 = set(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]);
    pub const UNSUBSCRIBE: u64 = set(&[USER_PROPERTY]);
    pub const DISCONNECT: u64 = set(&[
        SESSION_EXPIRY_INTERVAL,
        SERVER_REFERENCE,
        REASON_STRING,
        USER_PROPERTY,
    ]);
    pub const AUTH: u64 = set(&[
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        REASON_STRING,
        USER_PROPERTY,
    ]);
}

/// Every property of MQTT 5.0, each absent until given. A packet uses the ones it allows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// One in SUBSCRIBE; in PUBLISH one per matching subscription that has one.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// Sets `slot` once; a second time is a protocol error.
fn once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::protocol(format!("{name} given twice")));
    }
    *slot = Some(value);
    Ok(())
}

/// A byte property that may only be 0 or 1.
fn flag(reader: &mut Reader, name: &str) -> Result<u8, DecodeError> {
    let value = reader.u8()?;
    if value > 1 {
        return Err(DecodeError::protocol(format!("{name} of {value}")));
    }
    Ok(value)
}

impl Properties {
    /// Reads a property list allowed in a packet whose properties are `allowed` (a bit set of
    /// identifiers); `multiple_subscription_identifiers` only in PUBLISH.
    pub(crate) fn read(
        reader: &mut Reader,
        allowed: u64,
        multiple_subscription_identifiers: bool,
    ) -> Result<Properties, DecodeError> {
        let length = reader.variable_integer()? as usize;
        let mut reader = reader.sub(length, "the property length")?;
        let mut properties = Properties::default();
        while !reader.is_empty() {
            let identifier = reader.variable_integer()?;
            if identifier >= 64 || allowed & (1 << identifier) == 0 {
                return Err(DecodeError::protocol(format!(
                    "property 0x{identifier:02X} is not allowed here"
                )));
            }
            let p = &mut properties;
            let r = &mut reader;
            match identifier as u8 {
                id::PAYLOAD_FORMAT_INDICATOR => {
                    let value = flag(r, "payload format indicator")?;
                    once(&mut p.payload_format_indicator, value, "payload format")?
                }
                id::MESSAGE_EXPIRY_INTERVAL => {
                    once(&mut p.message_expiry_interval, r.u32()?, "message expiry")?
                }
                id::CONTENT_TYPE => once(&mut p.content_type, r.string()?, "content type")?,
                id::RESPONSE_TOPIC => once(&mut p.response_topic, r.string()?, "response topic")?,
                id::CORRELATION_DATA => {
                    once(&mut p.correlation_data, r.binary()?, "correlation data")?
                }
                id::SUBSCRIPTION_IDENTIFIER => {
                    let value = r.variable_integer()?;
                    if value == 0 {
                        return Err(DecodeError::protocol("a subscription identifier of 0"));
                    }
                    if !multiple_subscription_identifiers && !p.subscription_identifiers.is_empty()
                    {
                        return Err(DecodeError::protocol("subscription identifier given twice"));
                    }
                    p.subscription_identifiers.push(value);
                }
                id::SESSION_EXPIRY_INTERVAL => {
                    once(&mut p.session_expiry_interval, r.u32()?, "session expiry")?
                }
                id::ASSIGNED_CLIENT_IDENTIFIER => once(
                    &mut p.assigned_client_identifier,
                    r.string()?,
                    "assigned client identifier",
                )?,
                id::SERVER_KEEP_ALIVE => {
                    once(&mut p.server_keep_alive, r.u16()?, "server keep alive")?
                }
                id::AUTHENTICATION_METHOD => once(
                    &mut p.authentication_method,
                    r.string()?,
                    "authentication method",
                )?,
                id::AUTHENTICATION_DATA => once(
                    &mut p.authentication_data,
                    r.binary()?,
                    "authentication data",
                )?,
                id::REQUEST_PROBLEM_INFORMATION => {
                    let value = flag(r, "request problem information")?;
                    once(&mut p.request_problem_information, value, "problem info")?
                }
                id::WILL_DELAY_INTERVAL => {
                    once(&mut p.will_delay_interval, r.u32()?, "will delay")?
                }
                id::REQUEST_RESPONSE_INFORMATION => {
                    let value = flag(r, "request response information")?;
                    once(&mut p.request_response_information, value, "response info")?
                }
                id::RESPONSE_INFORMATION => once(
                    &mut p.response_information,
                    r.string()?,
                    "response information",
                )?,
                id::SERVER_REFERENCE => {
                    once(&mut p.server_reference, r.string()?, "server reference")?
                }
                id::REASON_STRING => once(&mut p.reason_string, r.string()?, "reason string")?,
                id::RECEIVE_MAXIMUM => {
                    let value = r.u16()?;
                    if value == 0 {
                        return Err(DecodeError::protocol("a receive maximum of 0"));
                    }
                    once(&mut p.receive_maximum, value, "receive maximum")?
                }
                id::TOPIC_ALIAS_MAXIMUM => {
                    once(&mut p.topic_alias_maximum, r.u16()?, "topic alias maximum")?
                }
                id::TOPIC_ALIAS => once(&mut p.topic_alias, r.u16()?, "topic alias")?,
                id::MAXIMUM_QOS => {
                    let value = flag(r, "maximum QoS")?;
                    once(&mut p.maximum_qos, value, "maximum QoS")?
                }
                id::RETAIN_AVAILABLE => {
                    let value = flag(r, "retain available")?;
                    once(&mut p.retain_available, value, "retain available")?
                }
                id::USER_PROPERTY => {
                    let key = r.string()?;
                    let value = r.string()?;
                    p.user_properties.push((key, value));
                }
                id::MAXIMUM_PACKET_SIZE => {
                    let value = r.u32()?;
                    if value == 0 {
                        return Err(DecodeError::protocol("a maximum packet size of 0"));
                    }
                    once(&mut p.maximum_packet_size, value, "maximum packet size")?
                }
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    let value = flag(r, "wildcard subscription available")?;
                    once(&mut p.wildcard_subscription_available, value, "wildcards")?
                }
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    let value = flag(r, "subscription identifier available")?;
                    once(
                        &mut p.subscription_identifier_available,
                        value,
                        "identifiers",
                    )?
                }
                id::SHARED_SUBSCRIPTION_AVAILABLE => {
                    let value = flag(r, "shared subscription available")?;
                    once(&mut p.shared_subscription_available, value, "shared")?
                }
                other => {
                    return Err(DecodeError::protocol(format!(
                        "unknown property 0x{other:02X}"
                    )));
                }
            }
        }
        Ok(properties)
    }

    /// Writes the property list: its length, then each property present.
    pub(crate) fn write(&self, out: &mut Writer) {
        let length = self.body_len();
        out.variable_integer(length as u32);
        let start = out.len();
        self.write_body(out);
        debug_assert_eq!(out.len() - start, length);
    }

    fn body_len(&self) -> usize {
        let string = |value: &Option<String>| value.as_ref().map_or(0, |value| 3 + value.len());
        let binary = |value: &Option<Bytes>| value.as_ref().map_or(0, |value| 3 + value.len());
        let byte = |value: Option<u8>| value.map_or(0, |_| 2);
        let short = |value: Option<u16>| value.map_or(0, |_| 3);
        let int = |value: Option<u32>| value.map_or(0, |_| 5);
        byte(self.payload_format_indicator)
            + int(self.message_expiry_interval)
            + string(&self.content_type)
            + string(&self.response_topic)
            + binary(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|&value| 1 + super::encode::variable_integer_len(value))
                .sum::<usize>()
            + int(self.session_expiry_interval)
            + string(&self.assigned_client_identifier)
            + short(self.server_keep_alive)
            + string(&self.authentication_method)
            + binary(&self.authentication_data)
            + byte(self.request_problem_information)
            + int(self.will_delay_interval)
            + byte(self.request_response_information)
            + string(&self.response_information)
            + string(&self.server_reference)
            + string(&self.reason_string)
            + short(self.receive_maximum)
            + short(self.topic_alias_maximum)
            + short(self.topic_alias)
            + byte(self.maximum_qos)
            + byte(self.retain_available)
            + self
                .user_properties
                .iter()
                .map(|(key, value)| 5 + key.len() + value.len())
                .sum::<usize>()
            + int(self.maximum_packet_size)
            + byte(self.wildcard_subscription_available)
            + byte(self.subscription_identifier_available)
            + byte(self.shared_subscription_available)
    }

    fn write_body(&self, out: &mut Writer) {
        let byte = |out: &mut Writer, identifier: u8, value: Option<u8>| {
            if let Some(value) = value {
                out.u8(identifier);
                out.u8(value);
            }
        };
        let short = |out: &mut Writer, identifier: u8, value: Option<u16>| {
            if let Some(value) = value {
                out.u8(identifier);
                out.u16(value);
            }
        };
        let int = |out: &mut Writer, identifier: u8, value: Option<u32>| {
            if let Some(value) = value {
                out.u8(identifier);
                out.u32(value);
            }
        };
        let string = |out: &mut Writer, identifier: u8, value: &Option<String>| {
            if let Some(value) = value {
                out.u8(identifier);
                out.string(value);
            }
        };
        let binary = |out: &mut Writer, identifier: u8, value: &Option<Bytes>| {
            if let Some(value) = value {
                out.u8(identifier);
                out.binary(value);
            }
        };
        byte(
            out,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        int(
            out,
            id::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        string(out, id::CONTENT_TYPE, &self.content_type);
        string(out, id::RESPONSE_TOPIC, &self.response_topic);
        binary(out, id::CORRELATION_DATA, &self.correlation_data);
        for &value in &self.subscription_identifiers {
            out.u8(id::SUBSCRIPTION_IDENTIFIER);
            out.variable_integer(value.min(VARIABLE_INTEGER_MAX));
        }
        int(
            out,
            id::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        string(
            out,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        );
        short(out, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        string(out, id::AUTHENTICATION_METHOD, &self.authentication_method);
        binary(out, id::AUTHENTICATION_DATA, &self.authentication_data);
        byte(
            out,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        int(out, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        byte(
            out,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        string(out, id::RESPONSE_INFORMATION, &self.response_information);
        string(out, id::SERVER_REFERENCE, &self.server_reference);
        string(out, id::REASON_STRING, &self.reason_string);
        short(out, id::RECEIVE_MAXIMUM, self.receive_maximum);
        short(out, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        short(out, id::TOPIC_ALIAS, self.topic_alias);
        byte(out, id::MAXIMUM_QOS, self.maximum_qos);
        byte(out, id::RETAIN_AVAILABLE, self.retain_available);
        for (key, value) in &self.user_properties {
            out.u8(id::USER_PROPERTY);
            out.string(key);
            out.string(value);
        }
        int(out, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        byte(
            out,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        byte(
            out,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        byte(
            out,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
    }
}
