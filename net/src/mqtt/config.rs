//! The MQTT front end's settings, and the mappings that say which Kafka topic holds the
//! messages of an MQTT topic.

use std::net::SocketAddr;

use super::topic;

/// One mapping: MQTT topics matching `filter` are stored in the Kafka topic `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub filter: String,
    pub topic: String,
}

#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// MQTT over TCP; `None`: no MQTT listener (and no MQTT at all).
    pub listener: Option<SocketAddr>,
    /// MQTT over WebSockets (served only with the TCP listener); `None`: none.
    pub websocket_listener: Option<SocketAddr>,
    /// The WebSocket listener's request path.
    pub websocket_path: String,
    /// MQTT topic filters to Kafka topics, the first match winning.
    pub mappings: Vec<Mapping>,
    /// The Kafka topic of MQTT topics no mapping matches.
    pub default_topic: String,
    /// Largest packet accepted (and announced to 5.0 clients); bigger ones close the
    /// connection, after a DISCONNECT with reason 0x95 for a 5.0 client.
    pub maximum_packet_size: u32,
    /// QoS 1 and 2 PUBLISH packets a client may have unacknowledged at once (5.0's receive
    /// maximum, announced in CONNACK); also the server's own in-flight window towards a
    /// client that sets none.
    pub receive_maximum: u16,
    /// Messages queued per session beyond those in flight (a client offline, or its window
    /// full); more are dropped and counted.
    pub max_queued_messages: usize,
    /// Topic aliases a 5.0 client may set (announced in CONNACK).
    pub topic_alias_maximum: u16,
    /// A connection must send CONNECT within this long.
    pub connect_timeout_ms: u64,
    /// Bytes of deliveries waiting to be written to one connection before QoS 0 messages
    /// to it are dropped (a subscriber that does not read).
    pub pending_bytes_max: usize,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            listener: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            websocket_listener: Some(SocketAddr::from(([127, 0, 0, 1], 8083))),
            websocket_path: "/mqtt".into(),
            mappings: Vec::new(),
            default_topic: "mqtt".into(),
            maximum_packet_size: 1 << 20,
            receive_maximum: 100,
            max_queued_messages: 1000,
            topic_alias_maximum: 10,
            connect_timeout_ms: 10_000,
            pending_bytes_max: 4 << 20,
        }
    }
}

impl MqttConfig {
    /// The Kafka topic that stores messages published to `mqtt_topic`.
    pub fn kafka_topic(&self, mqtt_topic: &str) -> &str {
        self.mappings
            .iter()
            .find(|mapping| topic::matches(&mapping.filter, mqtt_topic))
            .map_or(self.default_topic.as_str(), |mapping| {
                mapping.topic.as_str()
            })
    }

    /// Every Kafka topic that may hold messages matching the subscription filter `filter`:
    /// the mapped topics whose filters overlap it, and the default topic.
    pub fn kafka_topics_for(&self, filter: &str) -> Vec<&str> {
        let mut topics = vec![self.default_topic.as_str()];
        for mapping in &self.mappings {
            if overlaps(&mapping.filter, filter) && !topics.contains(&mapping.topic.as_str()) {
                topics.push(&mapping.topic);
            }
        }
        topics
    }

    /// Every Kafka topic MQTT messages may be stored in.
    pub fn kafka_topics(&self) -> Vec<&str> {
        let mut topics = vec![self.default_topic.as_str()];
        for mapping in &self.mappings {
            if !topics.contains(&mapping.topic.as_str()) {
                topics.push(&mapping.topic);
            }
        }
        topics
    }
}

/// Parses mappings written `FILTER=TOPIC` separated by commas (`quotes/#=quotes`).
pub fn parse_mappings(text: &str) -> Result<Vec<Mapping>, String> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (filter, topic) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not FILTER=TOPIC"))?;
            let (filter, topic) = (filter.trim(), topic.trim());
            let parsed =
                topic::parse_filter(filter).map_err(|error| format!("{filter:?}: {error}"))?;
            if parsed.group.is_some() {
                return Err(format!(
                    "{filter:?}: a mapping cannot be a shared subscription"
                ));
            }
            crate::broker::topics::validate_name(topic)?;
            Ok(Mapping {
                filter: filter.to_string(),
                topic: topic.to_string(),
            })
        })
        .collect()
}

/// Whether some topic name matches both filters.
pub fn overlaps(a: &str, b: &str) -> bool {
    // A leading wildcard matches no topic starting with `$` (MQTT-4.7.2-1).
    let wild = |filter: &str| filter.starts_with(['+', '#']);
    if (wild(a) && b.starts_with('$')) || (wild(b) && a.starts_with('$')) {
        return false;
    }
    let mut left = a.split('/');
    let mut right = b.split('/');
    loop {
        match (left.next(), right.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) => {
                if x != y {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_mapping_picks_the_kafka_topic() {
        let config = MqttConfig {
            mappings: parse_mappings("quotes/#=quotes, sensors/+/temp=temps,sensors/#=sensors")
                .unwrap(),
            ..MqttConfig::default()
        };
        assert_eq!(config.kafka_topic("quotes/AAPL"), "quotes");
        assert_eq!(config.kafka_topic("sensors/1/temp"), "temps");
        assert_eq!(config.kafka_topic("sensors/1/hum"), "sensors");
        assert_eq!(config.kafka_topic("other"), "mqtt");
        assert_eq!(config.kafka_topics_for("quotes/+"), vec!["mqtt", "quotes"]);
        assert_eq!(
            config.kafka_topics_for("sensors/2/#"),
            vec!["mqtt", "temps", "sensors"]
        );
        assert_eq!(
            config.kafka_topics_for("#"),
            vec!["mqtt", "quotes", "temps", "sensors"]
        );
        assert_eq!(config.kafka_topics_for("other/x"), vec!["mqtt"]);
        assert!(parse_mappings("a/#").is_err());
        assert!(parse_mappings("a/#=bad topic").is_err());
        assert!(parse_mappings("a/#/b=t").is_err());
    }

    #[test]
    fn filters_overlap_when_a_topic_matches_both() {
        assert!(overlaps("a/#", "a/b/c"));
        assert!(overlaps("a/+/c", "+/b/#"));
        assert!(!overlaps("a/+", "a/b/c"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("#", "$SYS/x"));
        assert!(overlaps("$SYS/#", "$SYS/+"));
    }
}
