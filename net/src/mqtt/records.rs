//! MQTT messages as Kafka records, and back. The record key is the MQTT topic, the value the
//! payload; what else MQTT says of the message travels in headers:
//!
//! | header | value |
//! |---|---|
//! | `mqtt.qos` | `0`, `1` or `2`: the QoS it was published with |
//! | `mqtt.retain` | `1` when published with RETAIN |
//! | `mqtt.client_id` | the publisher's client identifier (for no-local) |
//! | `mqtt.payload_format` | `1`: the payload is UTF-8 |
//! | `mqtt.message_expiry` | the message expiry interval in seconds, from the record's timestamp |
//! | `mqtt.content_type` | the content type |
//! | `mqtt.response_topic` | the response topic |
//! | `mqtt.correlation_data` | the correlation data (bytes) |
//! | anything else | a user property (name and value), in order |
//!
//! A record a Kafka producer wrote has no `mqtt.*` headers: it is a QoS 1 message, not
//! retained, and its headers whose names and values are UTF-8 become user properties.

use bytes::Bytes;
use coremq_engine::record::{Header, Record};

use super::codec::{Properties, QoS};
use super::topic;

/// A message as MQTT sees it, stored or about to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The publisher, when it came over MQTT.
    pub client_id: Option<String>,
    pub payload_format: Option<u8>,
    pub message_expiry: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    /// When it was stored, in milliseconds since the epoch (the record's timestamp).
    pub timestamp_ms: i64,
}

mod name {
    pub const QOS: &str = "mqtt.qos";
    pub const RETAIN: &str = "mqtt.retain";
    pub const CLIENT_ID: &str = "mqtt.client_id";
    pub const PAYLOAD_FORMAT: &str = "mqtt.payload_format";
    pub const MESSAGE_EXPIRY: &str = "mqtt.message_expiry";
    pub const CONTENT_TYPE: &str = "mqtt.content_type";
    pub const RESPONSE_TOPIC: &str = "mqtt.response_topic";
    pub const CORRELATION_DATA: &str = "mqtt.correlation_data";
}

impl Message {
    /// A message from a PUBLISH (or a will) with its 5.0 properties.
    pub fn new(
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        client_id: &str,
        properties: &Properties,
    ) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            client_id: Some(client_id.to_string()),
            payload_format: properties.payload_format_indicator,
            message_expiry: properties.message_expiry_interval,
            content_type: properties.content_type.clone(),
            response_topic: properties.response_topic.clone(),
            correlation_data: properties.correlation_data.clone(),
            user_properties: properties.user_properties.clone(),
            timestamp_ms: 0,
        }
    }

    /// A QoS 1 message with nothing but its topic, payload and time.
    pub fn bare(topic: String, payload: Bytes, timestamp_ms: i64) -> Message {
        Message {
            topic,
            payload,
            qos: QoS::AtLeastOnce,
            retain: false,
            client_id: None,
            payload_format: None,
            message_expiry: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            timestamp_ms,
        }
    }

    /// The record's headers.
    pub fn headers(&self) -> Vec<Header> {
        let text = |key: &str, value: &str| Header {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
        };
        // Fixed names and values are static: these two come with every message.
        let fixed = |key: &'static str, value: &'static str| Header {
            key: Bytes::from_static(key.as_bytes()),
            value: Some(Bytes::from_static(value.as_bytes())),
        };
        let qos = match self.qos {
            QoS::AtMostOnce => "0",
            QoS::AtLeastOnce => "1",
            QoS::ExactlyOnce => "2",
        };
        let mut headers = Vec::with_capacity(3);
        headers.push(fixed(name::QOS, qos));
        if self.retain {
            headers.push(fixed(name::RETAIN, "1"));
        }
        if let Some(client_id) = &self.client_id {
            headers.push(Header {
                key: Bytes::from_static(name::CLIENT_ID.as_bytes()),
                value: Some(Bytes::copy_from_slice(client_id.as_bytes())),
            });
        }
        if let Some(format) = self.payload_format {
            headers.push(text(name::PAYLOAD_FORMAT, &format.to_string()));
        }
        if let Some(expiry) = self.message_expiry {
            headers.push(text(name::MESSAGE_EXPIRY, &expiry.to_string()));
        }
        if let Some(content_type) = &self.content_type {
            headers.push(text(name::CONTENT_TYPE, content_type));
        }
        if let Some(response_topic) = &self.response_topic {
            headers.push(text(name::RESPONSE_TOPIC, response_topic));
        }
        if let Some(data) = &self.correlation_data {
            headers.push(Header {
                key: Bytes::from_static(name::CORRELATION_DATA.as_bytes()),
                value: Some(data.clone()),
            });
        }
        for (key, value) in &self.user_properties {
            headers.push(text(key, value));
        }
        headers
    }

    /// The message a stored record holds, if its key is an MQTT topic name (UTF-8, no
    /// wildcard, no U+0000, at most 65535 bytes).
    pub fn from_record(record: &Record) -> Option<Message> {
        let key = record.key.as_ref()?;
        let topic = std::str::from_utf8(key).ok()?;
        if !topic::valid_name(topic) || topic.contains('\0') || topic.len() > u16::MAX as usize {
            return None;
        }
        let mut message = Message::bare(
            topic.to_string(),
            record.value.clone().unwrap_or_default(),
            record.timestamp.0,
        );
        for header in &record.headers {
            let Ok(key) = std::str::from_utf8(&header.key) else {
                continue;
            };
            let value = header.value.as_deref().unwrap_or_default();
            let text = std::str::from_utf8(value)
                .ok()
                .filter(|text| !text.contains('\0') && text.len() <= u16::MAX as usize);
            match (key, text) {
                (name::QOS, Some(text)) => {
                    if let Some(qos) = text.parse().ok().and_then(QoS::from_bits) {
                        message.qos = qos;
                    }
                }
                (name::RETAIN, Some(text)) => message.retain = text == "1",
                (name::CLIENT_ID, Some(text)) => message.client_id = Some(text.to_string()),
                (name::PAYLOAD_FORMAT, Some(text)) => {
                    message.payload_format = text.parse().ok().filter(|&format: &u8| format <= 1)
                }
                (name::MESSAGE_EXPIRY, Some(text)) => message.message_expiry = text.parse().ok(),
                (name::CONTENT_TYPE, Some(text)) => message.content_type = Some(text.to_string()),
                (name::RESPONSE_TOPIC, Some(text)) if topic::valid_name(text) => {
                    message.response_topic = Some(text.to_string());
                }
                (name::CORRELATION_DATA, _) if value.len() <= u16::MAX as usize => {
                    message.correlation_data = header.value.clone();
                }
                (key, Some(text))
                    if !key.starts_with("mqtt.")
                        && !key.contains('\0')
                        && key.len() <= u16::MAX as usize =>
                {
                    message
                        .user_properties
                        .push((key.to_string(), text.to_string()));
                }
                _ => {}
            }
        }
        Some(message)
    }

    /// The seconds left of the message's expiry interval at `now_ms`: `Some(None)` when it
    /// never expires, `None` when it expired (MQTT-3.3.2-5).
    pub fn expiry_left(&self, now_ms: i64) -> Option<Option<u32>> {
        let Some(interval) = self.message_expiry else {
            return Some(None);
        };
        let elapsed = (now_ms.saturating_sub(self.timestamp_ms).max(0) / 1000) as u64;
        let left = u64::from(interval).checked_sub(elapsed)?;
        (left > 0).then_some(Some(left as u32))
    }
}

#[cfg(test)]
mod tests {
    use coremq_engine::{Offset, Timestamp};

    use super::*;

    fn record(message: &Message) -> Record {
        Record {
            offset: Offset(0),
            timestamp: Timestamp(1_000_000),
            key: Some(Bytes::copy_from_slice(message.topic.as_bytes())),
            value: Some(message.payload.clone()),
            headers: message.headers(),
        }
    }

    #[test]
    fn a_message_survives_its_record() {
        let properties = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\xff\x00")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            ..Properties::default()
        };
        let mut message = Message::new(
            "a/b".into(),
            Bytes::from_static(b"hello"),
            QoS::ExactlyOnce,
            true,
            "client",
            &properties,
        );
        message.timestamp_ms = 1_000_000;
        assert_eq!(Message::from_record(&record(&message)).unwrap(), message);
    }

    #[test]
    fn a_kafka_record_is_a_qos_1_message_with_its_headers_as_user_properties() {
        let record = Record {
            offset: Offset(5),
            timestamp: Timestamp(7),
            key: Some(Bytes::from_static(b"quotes/AAPL")),
            value: Some(Bytes::from_static(b"187.3")),
            headers: vec![
                Header {
                    key: Bytes::from_static(b"source"),
                    value: Some(Bytes::from_static(b"kafka")),
                },
                Header {
                    key: Bytes::from_static(b"binary"),
                    value: Some(Bytes::from_static(b"\xff")),
                },
            ],
        };
        let message = Message::from_record(&record).unwrap();
        assert_eq!(message.topic, "quotes/AAPL");
        assert_eq!(message.qos, QoS::AtLeastOnce);
        assert!(!message.retain);
        assert_eq!(
            message.user_properties,
            vec![("source".into(), "kafka".into())]
        );
        let keyless = Record {
            key: None,
            ..record.clone()
        };
        assert!(Message::from_record(&keyless).is_none());
        let wildcard = Record {
            key: Some(Bytes::from_static(b"a/#")),
            ..record
        };
        assert!(Message::from_record(&wildcard).is_none());
    }

    #[test]
    fn mqtt_3_3_2_6_the_expiry_sent_on_is_what_is_left() {
        let mut message = Message::from_record(&Record {
            offset: Offset(0),
            timestamp: Timestamp(10_000),
            key: Some(Bytes::from_static(b"t")),
            value: None,
            headers: Vec::new(),
        })
        .unwrap();
        assert_eq!(message.expiry_left(20_000), Some(None));
        message.message_expiry = Some(30);
        assert_eq!(message.expiry_left(20_000), Some(Some(20)));
        assert_eq!(message.expiry_left(40_000), None);
    }
}
