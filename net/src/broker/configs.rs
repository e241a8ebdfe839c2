//! Topic configs: the keys a topic accepts, their defaults, and the log settings they give.
//!
//! A topic stores only the keys set on it (Kafka's dynamic topic overrides) in the topic
//! table; its logs' settings are the base (the engine's defaults, or the internal offsets
//! topic's) with those overrides applied. `compression.type` is the broker's (produce
//! recompresses); every other key is the engine's, with Kafka's name.

use std::collections::BTreeMap;

use coremq_engine::{CleanupPolicy, Compression, Durability, LogConfig};

use super::BrokerConfig;
use super::groups;
use coremq_replication::topics::Topic;

/// Kafka's `ConfigType` values (DescribeConfigs v3+).
pub const TYPE_BOOLEAN: i8 = 1;
pub const TYPE_STRING: i8 = 2;
pub const TYPE_INT: i8 = 3;
pub const TYPE_SHORT: i8 = 4;
pub const TYPE_LONG: i8 = 5;
const TYPE_DOUBLE: i8 = 6;
pub const TYPE_LIST: i8 = 7;

/// Kafka's `ConfigSource` values.
pub const SOURCE_DYNAMIC_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

pub const COMPRESSION_TYPE: &str = "compression.type";
pub const CLEANUP_POLICY: &str = "cleanup.policy";
const FLUSH_MESSAGES: &str = "flush.messages";
const FLUSH_MS: &str = "flush.ms";
const LONG_MAX: &str = "9223372036854775807";

/// How a value is checked, as Kafka's validator for the key checks it.
#[derive(Clone, Copy)]
enum Check {
    /// A 64-bit integer at least this.
    Long(i64),
    /// A 32-bit integer in this range, or -1 when `or_minus_one`.
    Int {
        min: i64,
        max: i64,
        or_minus_one: bool,
    },
    /// A floating-point number in this range.
    Double(f64, f64),
    Bool,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A comma-separated list of these words (possibly empty).
    ListOf(&'static [&'static str]),
    /// Throttled replicas: empty, `*`, or `partition:broker` pairs.
    Replicas,
    /// Only `false`: the feature it would turn on does not exist here.
    FalseOnly(&'static str),
}

impl Check {
    /// A 32-bit integer at least `min`.
    const fn int_at_least(min: i64) -> Check {
        Check::Int {
            min,
            max: i32::MAX as i64,
            or_minus_one: false,
        }
    }
}

/// What coremq does with a key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// A log setting of the engine's, with the same name.
    Log,
    /// Read by the broker (produce recompresses for `compression.type`; replication reads
    /// `min.insync.replicas`, the controller `unclean.leader.election.enable`).
    Broker,
    /// `flush.messages` and `flush.ms`: together they give the log's fsync policy.
    Flush,
    /// Accepted and checked, without effect; the reason is reported in DescribeConfigs.
    None(&'static str),
}

/// One topic config Kafka 4.x accepts.
struct Spec {
    key: &'static str,
    kind: i8,
    /// Kafka's default, for keys whose default is not coremq's log setting.
    default: &'static str,
    check: Check,
    effect: Effect,
}

const NO_REPLICATION: &str = "coremq: accepted and checked; replication is not throttled";
const NO_TIERED: &str = "coremq: accepted and checked; there is no tiered storage";
const NO_LEVELS: &str =
    "coremq: accepted and checked; recompression uses the codec's default level";
const NO_CLEANER_TUNING: &str =
    "coremq: accepted and checked; compaction rewrites every sealed segment each cleanup pass";
const NO_TIMESTAMP_BOUNDS: &str =
    "coremq: accepted and checked; record timestamps are not checked against the clock";

/// Every topic config Kafka 4.x accepts (`TopicConfig`), with Kafka's type, default and
/// validator; the few Kafka 3.x keys that admin tools still set are accepted too.
const TOPIC_CONFIGS: &[Spec] = &[
    Spec {
        key: CLEANUP_POLICY,
        kind: TYPE_LIST,
        default: "delete",
        check: Check::ListOf(&["compact", "delete"]),
        effect: Effect::Log,
    },
    Spec {
        key: "compression.gzip.level",
        kind: TYPE_INT,
        default: "-1",
        check: Check::Int {
            min: 1,
            max: 9,
            or_minus_one: true,
        },
        effect: Effect::None(NO_LEVELS),
    },
    Spec {
        key: "compression.lz4.level",
        kind: TYPE_INT,
        default: "9",
        check: Check::Int {
            min: 1,
            max: 17,
            or_minus_one: false,
        },
        effect: Effect::None(NO_LEVELS),
    },
    Spec {
        key: COMPRESSION_TYPE,
        kind: TYPE_STRING,
        default: "producer",
        check: Check::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        effect: Effect::Broker,
    },
    Spec {
        key: "compression.zstd.level",
        kind: TYPE_INT,
        default: "3",
        check: Check::Int {
            min: -131_072,
            max: 22,
            or_minus_one: false,
        },
        effect: Effect::None(NO_LEVELS),
    },
    Spec {
        key: "delete.retention.ms",
        kind: TYPE_LONG,
        default: "86400000",
        check: Check::Long(0),
        effect: Effect::Log,
    },
    Spec {
        key: "file.delete.delay.ms",
        kind: TYPE_LONG,
        default: "60000",
        check: Check::Long(0),
        effect: Effect::None("coremq: accepted and checked; expired segments are deleted at once"),
    },
    Spec {
        key: FLUSH_MESSAGES,
        kind: TYPE_LONG,
        default: LONG_MAX,
        check: Check::Long(1),
        effect: Effect::Flush,
    },
    Spec {
        key: FLUSH_MS,
        kind: TYPE_LONG,
        default: LONG_MAX,
        check: Check::Long(0),
        effect: Effect::Flush,
    },
    Spec {
        key: "follower.replication.throttled.replicas",
        kind: TYPE_LIST,
        default: "",
        check: Check::Replicas,
        effect: Effect::None(NO_REPLICATION),
    },
    Spec {
        key: "index.interval.bytes",
        kind: TYPE_INT,
        default: "4096",
        check: Check::int_at_least(0),
        effect: Effect::Log,
    },
    Spec {
        key: "leader.replication.throttled.replicas",
        kind: TYPE_LIST,
        default: "",
        check: Check::Replicas,
        effect: Effect::None(NO_REPLICATION),
    },
    Spec {
        key: "local.retention.bytes",
        kind: TYPE_LONG,
        default: "-2",
        check: Check::Long(-2),
        effect: Effect::None(NO_TIERED),
    },
    Spec {
        key: "local.retention.ms",
        kind: TYPE_LONG,
        default: "-2",
        check: Check::Long(-2),
        effect: Effect::None(NO_TIERED),
    },
    Spec {
        key: "max.compaction.lag.ms",
        kind: TYPE_LONG,
        default: LONG_MAX,
        check: Check::Long(1),
        effect: Effect::None(NO_CLEANER_TUNING),
    },
    Spec {
        key: "max.message.bytes",
        kind: TYPE_INT,
        default: "1048588",
        check: Check::int_at_least(0),
        effect: Effect::Log,
    },
    Spec {
        key: "message.downconversion.enable",
        kind: TYPE_BOOLEAN,
        default: "true",
        check: Check::Bool,
        effect: Effect::None(
            "coremq: accepted and checked; batches are served as stored (v2), as in Kafka 4",
        ),
    },
    Spec {
        key: "message.format.version",
        kind: TYPE_STRING,
        default: "3.0-IV1",
        check: Check::OneOf(&[
            "0.10.0", "0.10.1", "0.10.2", "0.11.0", "1.0", "1.1", "2.0", "2.1", "2.2", "2.3",
            "2.4", "2.5", "2.6", "2.7", "2.8", "3.0", "3.0-IV1",
        ]),
        effect: Effect::None(
            "coremq: accepted and checked (a Kafka 3 key); batches are always RecordBatch v2",
        ),
    },
    Spec {
        key: "message.timestamp.after.max.ms",
        kind: TYPE_LONG,
        default: "3600000",
        check: Check::Long(0),
        effect: Effect::None(NO_TIMESTAMP_BOUNDS),
    },
    Spec {
        key: "message.timestamp.before.max.ms",
        kind: TYPE_LONG,
        default: LONG_MAX,
        check: Check::Long(0),
        effect: Effect::None(NO_TIMESTAMP_BOUNDS),
    },
    Spec {
        key: "message.timestamp.difference.max.ms",
        kind: TYPE_LONG,
        default: LONG_MAX,
        check: Check::Long(0),
        effect: Effect::None(NO_TIMESTAMP_BOUNDS),
    },
    Spec {
        key: "message.timestamp.type",
        kind: TYPE_STRING,
        default: "CreateTime",
        check: Check::OneOf(&["CreateTime", "LogAppendTime"]),
        effect: Effect::Log,
    },
    Spec {
        key: "min.cleanable.dirty.ratio",
        kind: TYPE_DOUBLE,
        default: "0.5",
        check: Check::Double(0.0, 1.0),
        effect: Effect::None(NO_CLEANER_TUNING),
    },
    Spec {
        key: "min.compaction.lag.ms",
        kind: TYPE_LONG,
        default: "0",
        check: Check::Long(0),
        effect: Effect::None(NO_CLEANER_TUNING),
    },
    Spec {
        key: "min.insync.replicas",
        kind: TYPE_INT,
        default: "1",
        check: Check::int_at_least(1),
        effect: Effect::Broker,
    },
    Spec {
        key: "preallocate",
        kind: TYPE_BOOLEAN,
        default: "false",
        check: Check::Bool,
        effect: Effect::None("coremq: accepted and checked; segments grow as written"),
    },
    Spec {
        key: "remote.log.copy.disable",
        kind: TYPE_BOOLEAN,
        default: "false",
        check: Check::Bool,
        effect: Effect::None(NO_TIERED),
    },
    Spec {
        key: "remote.log.delete.on.disable",
        kind: TYPE_BOOLEAN,
        default: "false",
        check: Check::Bool,
        effect: Effect::None(NO_TIERED),
    },
    Spec {
        key: "remote.storage.enable",
        kind: TYPE_BOOLEAN,
        default: "false",
        check: Check::FalseOnly("tiered storage is not supported"),
        effect: Effect::None(NO_TIERED),
    },
    Spec {
        key: "retention.bytes",
        kind: TYPE_LONG,
        default: "-1",
        check: Check::Long(-1),
        effect: Effect::Log,
    },
    Spec {
        key: "retention.ms",
        kind: TYPE_LONG,
        default: "604800000",
        check: Check::Long(-1),
        effect: Effect::Log,
    },
    Spec {
        key: "segment.bytes",
        kind: TYPE_INT,
        default: "1073741824",
        check: Check::int_at_least(14),
        effect: Effect::Log,
    },
    Spec {
        key: "segment.index.bytes",
        kind: TYPE_INT,
        default: "10485760",
        check: Check::int_at_least(4),
        effect: Effect::None("coremq: accepted and checked; indexes grow as needed"),
    },
    Spec {
        key: "segment.jitter.ms",
        kind: TYPE_LONG,
        default: "0",
        check: Check::Long(0),
        effect: Effect::None("coremq: accepted and checked; segments roll at segment.ms exactly"),
    },
    Spec {
        key: "segment.ms",
        kind: TYPE_LONG,
        default: "604800000",
        check: Check::Long(1),
        effect: Effect::Log,
    },
    Spec {
        key: "unclean.leader.election.enable",
        kind: TYPE_BOOLEAN,
        default: "false",
        check: Check::Bool,
        effect: Effect::Broker,
    },
];

/// The broker settings that give topics their defaults, as Kafka 4.x names them (its
/// `ServerTopicConfigSynonyms`): topic key, broker key. Topic keys without one (the
/// throttled-replica lists, the remote-storage switches, the removed 3.x keys) have none.
const BROKER_SYNONYMS: &[(&str, &str)] = &[
    (CLEANUP_POLICY, "log.cleanup.policy"),
    ("compression.gzip.level", "compression.gzip.level"),
    ("compression.lz4.level", "compression.lz4.level"),
    (COMPRESSION_TYPE, "compression.type"),
    ("compression.zstd.level", "compression.zstd.level"),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms"),
    ("file.delete.delay.ms", "log.segment.delete.delay.ms"),
    (FLUSH_MESSAGES, "log.flush.interval.messages"),
    (FLUSH_MS, "log.flush.interval.ms"),
    ("index.interval.bytes", "log.index.interval.bytes"),
    ("local.retention.bytes", "log.local.retention.bytes"),
    ("local.retention.ms", "log.local.retention.ms"),
    ("max.compaction.lag.ms", "log.cleaner.max.compaction.lag.ms"),
    ("max.message.bytes", "message.max.bytes"),
    (
        "message.timestamp.after.max.ms",
        "log.message.timestamp.after.max.ms",
    ),
    (
        "message.timestamp.before.max.ms",
        "log.message.timestamp.before.max.ms",
    ),
    ("message.timestamp.type", "log.message.timestamp.type"),
    (
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
    ),
    ("min.compaction.lag.ms", "log.cleaner.min.compaction.lag.ms"),
    ("min.insync.replicas", "min.insync.replicas"),
    ("preallocate", "log.preallocate"),
    ("retention.bytes", "log.retention.bytes"),
    ("retention.ms", "log.retention.ms"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.index.bytes", "log.index.size.max.bytes"),
    ("segment.jitter.ms", "log.roll.jitter.ms"),
    ("segment.ms", "log.roll.ms"),
    (
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
    ),
];

/// The source of a value the broker's settings give: Kafka's default source when it is
/// the value with no setting changed, the static broker config otherwise.
pub fn broker_source(value: &str, unchanged: &str) -> i8 {
    if value == unchanged {
        SOURCE_DEFAULT
    } else {
        SOURCE_STATIC_BROKER
    }
}

/// The broker's topic defaults under their broker names (DescribeConfigs of the broker),
/// with where each value comes from.
pub fn broker_topic_defaults(config: &BrokerConfig) -> Vec<Described> {
    let unchanged = BrokerConfig::default();
    BROKER_SYNONYMS
        .iter()
        .map(|&(topic_key, broker_key)| {
            let spec = spec(topic_key).expect("every synonym names a topic config");
            let value = default_value(config, "", topic_key);
            Described {
                name: broker_key,
                source: broker_source(&value, &default_value(&unchanged, "", topic_key)),
                value,
                config_type: spec.kind,
                documentation: match spec.effect {
                    Effect::None(why) => Some(why),
                    _ => None,
                },
            }
        })
        .collect()
}

fn spec(key: &str) -> Option<&'static Spec> {
    TOPIC_CONFIGS.iter().find(|spec| spec.key == key)
}

pub fn config_type(key: &str) -> i8 {
    spec(key).map_or(0, |spec| spec.kind)
}

/// Checks `value` for `key` as Kafka does; the error is the message for INVALID_CONFIG.
fn check(spec: &Spec, value: &str) -> Result<(), String> {
    let key = spec.key;
    let invalid = |why: String| Err(format!("invalid value {value:?} for {key}: {why}"));
    match spec.check {
        Check::Long(min) => match value.trim().parse::<i64>() {
            Ok(number) if number >= min => Ok(()),
            Ok(_) => invalid(format!("must be at least {min}")),
            Err(_) => invalid("not a 64-bit integer".into()),
        },
        Check::Int {
            min,
            max,
            or_minus_one,
        } => match value.trim().parse::<i32>() {
            Ok(-1) if or_minus_one => Ok(()),
            Ok(number) if (min..=max).contains(&i64::from(number)) => Ok(()),
            Ok(_) if or_minus_one => invalid(format!("must be in [{min}, {max}] or -1")),
            Ok(_) => invalid(format!("must be in [{min}, {max}]")),
            Err(_) => invalid("not a 32-bit integer".into()),
        },
        Check::Double(min, max) => match value.trim().parse::<f64>() {
            Ok(number) if (min..=max).contains(&number) => Ok(()),
            _ => invalid(format!("must be a number in [{min}, {max}]")),
        },
        Check::Bool => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "false" => Ok(()),
            _ => invalid("must be true or false".into()),
        },
        Check::OneOf(words) => match words.contains(&value.trim()) {
            true => Ok(()),
            false => invalid(format!("must be one of {}", words.join(", "))),
        },
        Check::ListOf(words) => {
            match value
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .all(|item| words.contains(&item))
            {
                true => Ok(()),
                false => invalid(format!("items must be among {}", words.join(", "))),
            }
        }
        Check::Replicas => {
            let pair = |item: &str| {
                item.split_once(':').is_some_and(|(partition, broker)| {
                    partition.trim().parse::<u32>().is_ok() && broker.trim().parse::<u32>().is_ok()
                })
            };
            let value = value.trim();
            if value.is_empty() || value == "*" || value.split(',').all(pair) {
                Ok(())
            } else {
                invalid("must be empty, * or partition:broker pairs".into())
            }
        }
        Check::FalseOnly(why) => match value.trim().eq_ignore_ascii_case("false") {
            true => Ok(()),
            false => invalid(why.to_string()),
        },
    }
}

/// The log settings a topic's overrides start from: the broker's topic defaults, or the
/// internal offsets topic's own.
fn base(config: &BrokerConfig, topic_name: &str) -> LogConfig {
    if topic_name == groups::OFFSETS_TOPIC {
        return groups::offsets_log_config();
    }
    let defaults = LogConfig::default();
    LogConfig {
        segment_bytes: config.log_segment_bytes,
        batch_bytes_max: config.message_max_bytes,
        retention_bytes: u64::try_from(config.log_retention_bytes).ok(),
        retention_ms: u64::try_from(config.log_retention_ms).ok(),
        cleanup_policy: config.log_cleanup_policy,
        durability: durability(
            config.log_flush_interval_messages,
            config.log_flush_interval_ms,
        ),
        ..defaults
    }
}

/// The fsync policy Kafka's `flush.messages` and `flush.ms` ask for. `flush.messages=1` (or
/// `flush.ms=0`) is an fsync before each acknowledgement (concurrent appends share one);
/// coremq has no fsync every N messages, so N > 1 is treated as 1, which is stronger.
/// `flush.ms=N` alone is an fsync every N ms; neither set (Kafka's default, Long.MAX) is no
/// fsync but at roll and close, leaving writes to the page cache as Kafka does.
pub fn durability(flush_messages: u64, flush_ms: u64) -> Durability {
    let never = i64::MAX as u64;
    if flush_messages < never || flush_ms == 0 {
        Durability::Always
    } else if flush_ms < never {
        Durability::IntervalMs(flush_ms)
    } else {
        Durability::Never
    }
}

/// The value topic `topic_name` has for `key` when it does not override it.
pub fn default_value(config: &BrokerConfig, topic_name: &str, key: &str) -> String {
    default_in(config, &base(config, topic_name), key)
}

fn default_in(config: &BrokerConfig, base: &LogConfig, key: &str) -> String {
    match key {
        FLUSH_MESSAGES => return config.log_flush_interval_messages.to_string(),
        FLUSH_MS => return config.log_flush_interval_ms.to_string(),
        _ => {}
    }
    let Some(spec) = spec(key) else {
        return String::new();
    };
    if spec.effect != Effect::Log {
        return spec.default.to_string();
    }
    base.encode()
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once('=')?;
            (name == key).then(|| value.to_string())
        })
        .unwrap_or_else(|| spec.default.to_string())
}

/// The log settings for `topic_name` with `overrides`, checked; the error is the message
/// for INVALID_CONFIG.
pub fn log_config(
    config: &BrokerConfig,
    topic_name: &str,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, String> {
    let mut log = base(config, topic_name);
    for (key, value) in overrides {
        let spec = spec(key).ok_or_else(|| format!("unknown topic config {key:?}"))?;
        check(spec, value)?;
        if spec.effect == Effect::Log {
            let value = if key == CLEANUP_POLICY {
                normalized_policy(value)
            } else {
                value.trim().to_string()
            };
            log.set(key, &value).map_err(|error| error.to_string())?;
        }
    }
    if overrides.contains_key(FLUSH_MESSAGES) || overrides.contains_key(FLUSH_MS) {
        let number = |key: &str| {
            overrides
                .get(key)
                .map_or_else(|| default_value(config, topic_name, key), Clone::clone)
                .trim()
                .parse::<u64>()
                .unwrap_or(i64::MAX as u64)
        };
        log.durability = durability(number(FLUSH_MESSAGES), number(FLUSH_MS));
    }
    // The bound on bytes appended but not yet written must hold one batch of the largest
    // size; it is the engine's own buffer, not a setting users know, so it follows.
    log.pending_bytes_max = log.pending_bytes_max.max(log.batch_bytes_max);
    if log.batch_bytes_max > config.socket_request_max_bytes {
        return Err(format!(
            "max.message.bytes {} is over the broker's socket_request_max_bytes {}: a batch \
             that large could not arrive in a request",
            log.batch_bytes_max, config.socket_request_max_bytes
        ));
    }
    log.validate().map_err(|error| error.to_string())?;
    Ok(log)
}

/// A `cleanup.policy` list (`delete`, `compact`, both, or empty) as the engine's policy.
pub fn parse_cleanup_policy(value: &str) -> Result<CleanupPolicy, String> {
    let spec = spec(CLEANUP_POLICY).expect("cleanup.policy is a topic config");
    check(spec, value)?;
    let mut log = LogConfig::default();
    log.set(CLEANUP_POLICY, &normalized_policy(value))
        .map_err(|error| error.to_string())?;
    Ok(log.cleanup_policy)
}

/// `cleanup.policy` as the engine reads it: `delete`, `compact`, both, or empty.
fn normalized_policy(value: &str) -> String {
    let has = |word| value.split(',').any(|item| item.trim() == word);
    match (has("compact"), has("delete")) {
        (true, true) => "compact,delete",
        (true, false) => "compact",
        (false, true) => "delete",
        (false, false) => "",
    }
    .to_string()
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
    /// Why a key has no effect here, when it has none.
    pub documentation: Option<&'static str>,
}

/// Every topic config of `name` with `overrides`: the override where set, else the default.
pub fn describe(
    config: &BrokerConfig,
    name: &str,
    overrides: &BTreeMap<String, String>,
) -> Vec<Described> {
    let base_unchanged = self::base(&BrokerConfig::default(), name);
    let base = base(config, name);
    TOPIC_CONFIGS
        .iter()
        .map(|spec| {
            let documentation = match spec.effect {
                Effect::None(why) => Some(why),
                _ => None,
            };
            match overrides.get(spec.key) {
                Some(value) => Described {
                    name: spec.key,
                    value: value.clone(),
                    source: SOURCE_DYNAMIC_TOPIC,
                    config_type: spec.kind,
                    documentation,
                },
                None => {
                    let value = default_in(config, &base, spec.key);
                    let from_broker = BROKER_SYNONYMS.iter().any(|(key, _)| *key == spec.key);
                    let unchanged = default_in(&BrokerConfig::default(), &base_unchanged, spec.key);
                    Described {
                        name: spec.key,
                        source: if from_broker {
                            broker_source(&value, &unchanged)
                        } else {
                            SOURCE_DEFAULT
                        },
                        value,
                        config_type: spec.kind,
                        documentation,
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &str, value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(key.to_string(), value.to_string())])
    }

    #[test]
    fn overrides_give_the_log_settings() {
        let broker = BrokerConfig::default();
        let overrides = BTreeMap::from([
            ("retention.ms".to_string(), "60000".to_string()),
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("compression.type".to_string(), "zstd".to_string()),
        ]);
        let config = log_config(&broker, "quotes", &overrides).unwrap();
        assert_eq!(config.retention_ms, Some(60_000));
        assert!(config.cleanup_policy.compacts());
        let described = describe(&broker, "quotes", &overrides);
        let get = |key| described.iter().find(|config| config.name == key).unwrap();
        assert_eq!(get("retention.ms").value, "60000");
        assert_eq!(get("retention.ms").source, SOURCE_DYNAMIC_TOPIC);
        assert_eq!(
            get("segment.bytes").value,
            LogConfig::default().segment_bytes.to_string()
        );
        assert_eq!(get("segment.bytes").source, SOURCE_DEFAULT);
        assert_eq!(get("compression.type").value, "zstd");
        assert_eq!(get("min.insync.replicas").value, "1");
        assert!(
            get("leader.replication.throttled.replicas")
                .documentation
                .is_some()
        );
        assert!(get("retention.ms").documentation.is_none());
        let bad = |key: &str, value: &str| log_config(&broker, "t", &one(key, value)).is_err();
        assert!(bad("compression.type", "brotli"));
        assert!(bad("retention.ms", "soon"));
        assert!(bad("segment.bytes", "10"));
        assert!(bad("no.such.key", "1"));
        assert!(!bad("compression.type", "uncompressed"));
    }

    /// Every key Kafka 4.x accepts is accepted with a valid value and refused with an
    /// invalid one, as Kafka's validators do.
    #[test]
    fn kafka_topic_configs_are_checked_as_kafka_checks_them() {
        let broker = BrokerConfig::default();
        let accepted = [
            ("min.insync.replicas", "2"),
            ("unclean.leader.election.enable", "true"),
            ("file.delete.delay.ms", "1000"),
            ("min.cleanable.dirty.ratio", "0.1"),
            ("max.compaction.lag.ms", "60000"),
            ("message.format.version", "2.8"),
            ("compression.gzip.level", "-1"),
            ("compression.zstd.level", "-5"),
            ("leader.replication.throttled.replicas", "0:1,1:2"),
            ("follower.replication.throttled.replicas", "*"),
            ("remote.storage.enable", "false"),
            ("cleanup.policy", ""),
            ("preallocate", "TRUE"),
        ];
        for (key, value) in accepted {
            assert!(
                log_config(&broker, "t", &one(key, value)).is_ok(),
                "{key}={value}"
            );
        }
        let refused = [
            ("min.insync.replicas", "0"),
            ("unclean.leader.election.enable", "maybe"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("max.compaction.lag.ms", "0"),
            ("compression.gzip.level", "10"),
            ("compression.lz4.level", "0"),
            ("flush.messages", "0"),
            ("leader.replication.throttled.replicas", "zero"),
            ("remote.storage.enable", "true"),
            ("cleanup.policy", "shred"),
            ("local.retention.ms", "-3"),
        ];
        for (key, value) in refused {
            let error = log_config(&broker, "t", &one(key, value)).unwrap_err();
            assert!(error.contains(key), "{key}={value}: {error}");
        }
        let empty = log_config(&broker, "t", &one("cleanup.policy", "")).unwrap();
        assert_eq!(empty.cleanup_policy, CleanupPolicy::Keep);
    }

    #[test]
    fn flush_settings_give_the_fsync_policy() {
        let broker = BrokerConfig::default();
        let durability_of = |overrides: &[(&str, &str)]| {
            let overrides = overrides
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect();
            log_config(&broker, "t", &overrides).unwrap().durability
        };
        assert_eq!(durability_of(&[]), Durability::Always);
        assert_eq!(
            durability_of(&[("flush.messages", LONG_MAX), ("flush.ms", "250")]),
            Durability::IntervalMs(250)
        );
        assert_eq!(
            durability_of(&[("flush.messages", LONG_MAX)]),
            Durability::Never
        );
        assert_eq!(
            durability_of(&[("flush.messages", "1000")]),
            Durability::Always
        );
        assert_eq!(durability_of(&[("flush.ms", "0")]), Durability::Always);
        let kafka_like = BrokerConfig {
            log_flush_interval_messages: i64::MAX as u64,
            ..BrokerConfig::default()
        };
        let log = log_config(&kafka_like, "t", &BTreeMap::new()).unwrap();
        assert_eq!(log.durability, Durability::Never);
    }

    #[test]
    fn max_message_bytes_is_bounded_by_the_request_size_not_a_hidden_buffer() {
        let broker = BrokerConfig::default();
        let raised = log_config(&broker, "t", &one("max.message.bytes", "67108864")).unwrap();
        assert_eq!(raised.batch_bytes_max, 64 << 20);
        let error = log_config(&broker, "t", &one("max.message.bytes", "200000000")).unwrap_err();
        assert!(error.contains("max.message.bytes") && error.contains("socket_request_max_bytes"));
        assert!(!error.contains("pending"), "{error}");
    }
}
