//! Topic configs: the keys a topic accepts, their defaults, and the log settings they give.
//!
//! A topic stores only the keys set on it (Kafka's dynamic topic overrides) in the topic
//! table; its logs' settings are the base (the engine's defaults, or the internal offsets
//! topic's) with those overrides applied. `compression.type` is the broker's (produce
//! recompresses); every other key is the engine's, with Kafka's name.

use std::collections::BTreeMap;

use coremq_engine::{Compression, LogConfig};

use super::groups;
use super::topics::Topic;

/// Kafka's `ConfigType` values (DescribeConfigs v3+).
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

/// Kafka's `ConfigSource` values.
pub const SOURCE_DYNAMIC_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

pub const COMPRESSION_TYPE: &str = "compression.type";
pub const CLEANUP_POLICY: &str = "cleanup.policy";

/// Every topic config key served, with its Kafka type.
pub const TOPIC_KEYS: &[(&str, i8)] = &[
    (CLEANUP_POLICY, TYPE_LIST),
    (COMPRESSION_TYPE, TYPE_STRING),
    ("delete.retention.ms", TYPE_LONG),
    ("index.interval.bytes", TYPE_INT),
    ("max.message.bytes", TYPE_INT),
    ("message.timestamp.type", TYPE_STRING),
    ("retention.bytes", TYPE_LONG),
    ("retention.ms", TYPE_LONG),
    ("segment.bytes", TYPE_INT),
    ("segment.ms", TYPE_LONG),
];

pub fn config_type(key: &str) -> i8 {
    TOPIC_KEYS
        .iter()
        .find(|(known, _)| *known == key)
        .map_or(0, |(_, kind)| *kind)
}

/// The log settings a topic's overrides start from.
fn base(topic_name: &str) -> LogConfig {
    if topic_name == groups::OFFSETS_TOPIC {
        groups::offsets_log_config()
    } else {
        LogConfig::default()
    }
}

/// The value topic `topic_name` has for `key` when it does not override it.
pub fn default_value(topic_name: &str, key: &str) -> String {
    default_in(&base(topic_name).encode(), key)
}

/// `key`'s default given the base settings `encoded` (a [`LogConfig::encode`] text).
fn default_in(encoded: &str, key: &str) -> String {
    if key == COMPRESSION_TYPE {
        return "producer".to_string();
    }
    encoded
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once('=')?;
            (name == key).then(|| value.to_string())
        })
        .unwrap_or_default()
}

/// Checks `compression.type`'s value; the error is the message for INVALID_CONFIG.
fn check_compression(value: &str) -> Result<(), String> {
    match value {
        "producer" | "uncompressed" => Ok(()),
        other if Compression::from_name(other).is_some() && other != "none" => Ok(()),
        other => Err(format!(
            "{other:?} is not a compression.type (uncompressed, gzip, snappy, lz4, zstd, producer)"
        )),
    }
}

/// The log settings for `topic_name` with `overrides`, checked; the error is the message
/// for INVALID_CONFIG.
pub fn log_config(
    topic_name: &str,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, String> {
    let mut config = base(topic_name);
    for (key, value) in overrides {
        if key == COMPRESSION_TYPE {
            check_compression(value)?;
        } else if config_type(key) == 0 {
            return Err(format!("unknown or unsupported topic config {key:?}"));
        } else {
            config.set(key, value).map_err(|error| error.to_string())?;
        }
    }
    config.validate().map_err(|error| error.to_string())?;
    Ok(config)
}

/// The codec produce rewrites batches into; `None` keeps the producer's.
pub fn recompression(topic: &Topic) -> Option<Compression> {
    match topic.configs.get(COMPRESSION_TYPE).map(String::as_str) {
        None | Some("producer") => None,
        Some("uncompressed") => Some(Compression::None),
        Some(name) => Compression::from_name(name),
    }
}

/// One described config.
pub struct Described {
    pub name: &'static str,
    pub value: String,
    pub source: i8,
    pub config_type: i8,
}

/// Every topic config of `name` with `overrides`: the override where set, else the default.
pub fn describe(name: &str, overrides: &BTreeMap<String, String>) -> Vec<Described> {
    let defaults = base(name).encode();
    TOPIC_KEYS
        .iter()
        .map(|&(key, config_type)| match overrides.get(key) {
            Some(value) => Described {
                name: key,
                value: value.clone(),
                source: SOURCE_DYNAMIC_TOPIC,
                config_type,
            },
            None => Described {
                name: key,
                value: default_in(&defaults, key),
                source: SOURCE_DEFAULT,
                config_type,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_give_the_log_settings() {
        let overrides = BTreeMap::from([
            ("retention.ms".to_string(), "60000".to_string()),
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("compression.type".to_string(), "zstd".to_string()),
        ]);
        let config = log_config("quotes", &overrides).unwrap();
        assert_eq!(config.retention_ms, Some(60_000));
        assert!(config.cleanup_policy.compacts());
        let described = describe("quotes", &overrides);
        let get = |key| described.iter().find(|config| config.name == key).unwrap();
        assert_eq!(get("retention.ms").value, "60000");
        assert_eq!(get("retention.ms").source, SOURCE_DYNAMIC_TOPIC);
        assert_eq!(
            get("segment.bytes").value,
            LogConfig::default().segment_bytes.to_string()
        );
        assert_eq!(get("segment.bytes").source, SOURCE_DEFAULT);
        assert_eq!(get("compression.type").value, "zstd");
        let bad = |key: &str, value: &str| {
            log_config("t", &BTreeMap::from([(key.to_string(), value.to_string())])).is_err()
        };
        assert!(bad("compression.type", "brotli"));
        assert!(bad("retention.ms", "soon"));
        assert!(bad("segment.bytes", "10"));
        assert!(bad("no.such.key", "1"));
        assert!(!bad("compression.type", "uncompressed"));
    }
}
