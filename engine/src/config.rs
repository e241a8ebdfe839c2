//! Per-log and per-engine settings, with Kafka's names and defaults where Kafka has them.

#[cfg(feature = "runtime")]
use std::collections::BTreeMap;
use std::fmt::Write as _;
#[cfg(feature = "runtime")]
use std::path::PathBuf;

use crate::batch::{BatchLimits, TimestampType};
use crate::error::{Error, Result};

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged after fdatasync; concurrent appends share one fdatasync (group commit).
    Always,
    /// Acknowledged once written to the file; fdatasync runs every this many milliseconds.
    IntervalMs(u64),
    /// Acknowledged once written to the file; fdatasync only on roll and close. For logs
    /// that replication keeps safe.
    Never,
}

/// What cleanup does to old data (Kafka `cleanup.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    Delete,
    Compact,
    CompactDelete,
    /// Neither (Kafka's empty `cleanup.policy`): old data stays until deleted by hand.
    Keep,
}

impl CleanupPolicy {
    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }

    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }
}

/// Settings of one log. Persisted in the log's directory (`log.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment when it would grow past this (Kafka `segment.bytes`).
    pub segment_bytes: u64,
    /// Roll the active segment when it is this old (Kafka `segment.ms`).
    pub segment_ms: u64,
    /// Bytes of log between sparse index entries (Kafka `index.interval.bytes`).
    pub index_interval_bytes: u64,
    /// Largest batch accepted (Kafka `max.message.bytes`).
    pub batch_bytes_max: usize,
    /// Delete old segments while the log is larger than this (Kafka `retention.bytes`).
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this (Kafka `retention.ms`).
    pub retention_ms: Option<u64>,
    pub cleanup_policy: CleanupPolicy,
    /// How long compaction keeps tombstones (Kafka `delete.retention.ms`).
    pub delete_retention_ms: u64,
    pub durability: Durability,
    pub timestamp_type: TimestampType,
    /// Bound on one batch's inflated records when the engine decodes it.
    pub decompressed_bytes_max: usize,
    /// Appended bytes not yet written to the file before appends wait (backpressure).
    pub pending_bytes_max: usize,
}

pub const DAY_MS: u64 = 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            index_interval_bytes: 4096,
            batch_bytes_max: 1_048_588,
            retention_bytes: None,
            retention_ms: Some(7 * DAY_MS),
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DAY_MS,
            durability: Durability::Always,
            timestamp_type: TimestampType::CreateTime,
            decompressed_bytes_max: 64 << 20,
            pending_bytes_max: 32 << 20,
        }
    }
}

/// Smallest segment allowed: it must hold the largest batch.
pub const SEGMENT_BYTES_MIN: u64 = 4096;
/// Offsets and positions in the index are 32-bit relative values.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;

impl LogConfig {
    /// The bounds a producer's batch is checked against on this log.
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            batch_bytes_max: self.batch_bytes_max,
            decompressed_bytes_max: self.decompressed_bytes_max,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let invalid = |key, reason: String| Err(Error::InvalidConfig { key, reason });
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return invalid(
                "segment.bytes",
                format!(
                    "{} is outside [{SEGMENT_BYTES_MIN}, {SEGMENT_BYTES_MAX}]",
                    self.segment_bytes
                ),
            );
        }
        if self.segment_ms == 0 {
            return invalid("segment.ms", "must be positive".into());
        }
        if self.index_interval_bytes == 0 {
            return invalid("index.interval.bytes", "must be positive".into());
        }
        if self.batch_bytes_max < crate::batch::BATCH_HEADER_BYTES {
            return invalid("max.message.bytes", "smaller than a batch header".into());
        }
        if self.pending_bytes_max < self.batch_bytes_max {
            return invalid("pending.bytes.max", "smaller than max.message.bytes".into());
        }
        if let Durability::IntervalMs(0) = self.durability {
            return invalid("flush.ms", "must be positive".into());
        }
        Ok(())
    }

    /// Encodes as `key=value` lines with Kafka's config names.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let optional = |value: Option<u64>| value.map_or("-1".to_string(), |v| v.to_string());
        let durability = match self.durability {
            Durability::Always => "always".to_string(),
            Durability::IntervalMs(ms) => format!("interval_ms:{ms}"),
            Durability::Never => "never".to_string(),
        };
        let policy = match self.cleanup_policy {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
            CleanupPolicy::Keep => "",
        };
        let timestamp_type = match self.timestamp_type {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        };
        let lines = [
            ("segment.bytes", self.segment_bytes.to_string()),
            ("segment.ms", self.segment_ms.to_string()),
            (
                "index.interval.bytes",
                self.index_interval_bytes.to_string(),
            ),
            ("max.message.bytes", self.batch_bytes_max.to_string()),
            ("retention.bytes", optional(self.retention_bytes)),
            ("retention.ms", optional(self.retention_ms)),
            ("cleanup.policy", policy.to_string()),
            ("delete.retention.ms", self.delete_retention_ms.to_string()),
            ("durability", durability),
            ("message.timestamp.type", timestamp_type.to_string()),
            (
                "decompressed.bytes.max",
                self.decompressed_bytes_max.to_string(),
            ),
            ("pending.bytes.max", self.pending_bytes_max.to_string()),
        ];
        for (key, value) in lines {
            writeln!(out, "{key}={value}").expect("writing to a String cannot fail");
        }
        out
    }

    /// Applies one `key=value` setting with Kafka's config names.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let invalid = |reason: &str| Error::InvalidConfig {
            key: static_key(key),
            reason: format!("{value:?}: {reason}"),
        };
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| invalid("not a non-negative integer"))
        };
        let optional = || -> Result<Option<u64>> {
            if value == "-1" {
                Ok(None)
            } else {
                number().map(Some)
            }
        };
        match key {
            "segment.bytes" => self.segment_bytes = number()?,
            "segment.ms" => self.segment_ms = number()?,
            "index.interval.bytes" => self.index_interval_bytes = number()?,
            "max.message.bytes" => self.batch_bytes_max = number()? as usize,
            "retention.bytes" => self.retention_bytes = optional()?,
            "retention.ms" => self.retention_ms = optional()?,
            "delete.retention.ms" => self.delete_retention_ms = number()?,
            "decompressed.bytes.max" => self.decompressed_bytes_max = number()? as usize,
            // Configs written before one cache budget per shard carry the per-log size; the
            // shard's budget (`EngineConfig::cache_bytes`) replaces it.
            "tail.cache.bytes" => {
                number()?;
            }
            "pending.bytes.max" => self.pending_bytes_max = number()? as usize,
            "cleanup.policy" => {
                self.cleanup_policy = match value {
                    "delete" => CleanupPolicy::Delete,
                    "compact" => CleanupPolicy::Compact,
                    "compact,delete" | "delete,compact" => CleanupPolicy::CompactDelete,
                    "" => CleanupPolicy::Keep,
                    _ => return Err(invalid("expected delete, compact or compact,delete")),
                }
            }
            "durability" => {
                self.durability = match value.split_once(':') {
                    None if value == "always" => Durability::Always,
                    None if value == "never" => Durability::Never,
                    Some(("interval_ms", ms)) => {
                        Durability::IntervalMs(ms.parse().map_err(|_| invalid("bad interval"))?)
                    }
                    _ => return Err(invalid("expected always, never or interval_ms:N")),
                }
            }
            "message.timestamp.type" => {
                self.timestamp_type = match value {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(invalid("expected CreateTime or LogAppendTime")),
                }
            }
            _ => {
                return Err(Error::InvalidConfig {
                    key: "unknown",
                    reason: format!("unknown log config {key:?}"),
                });
            }
        }
        Ok(())
    }

    /// Parses what [`LogConfig::encode`] wrote, over the defaults.
    pub fn decode(text: &str) -> Result<LogConfig> {
        let mut config = LogConfig::default();
        for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
            let Some((key, value)) = line.split_once('=') else {
                return Err(Error::InvalidConfig {
                    key: "log.conf",
                    reason: format!("line {line:?} is not key=value"),
                });
            };
            config.set(key.trim(), value.trim())?;
        }
        config.validate()?;
        Ok(config)
    }
}

fn static_key(key: &str) -> &'static str {
    const KEYS: [&str; 13] = [
        "segment.bytes",
        "segment.ms",
        "index.interval.bytes",
        "max.message.bytes",
        "retention.bytes",
        "retention.ms",
        "cleanup.policy",
        "delete.retention.ms",
        "durability",
        "message.timestamp.type",
        "decompressed.bytes.max",
        "tail.cache.bytes",
        "pending.bytes.max",
    ];
    KEYS.into_iter()
        .find(|known| *known == key)
        .unwrap_or("unknown")
}

/// Settings of the whole engine.
#[cfg(feature = "runtime")]
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Holds one directory per log, `topic-partition`.
    pub data_dir: PathBuf,
    /// Number of shards (glommio executors); default: one per available core.
    pub shards: usize,
    /// Pin shard `n` to CPU `n % cores`.
    pub pin_shards: bool,
    /// Registered io_uring buffer memory per shard; all shards together must fit the
    /// memlock limit unless the process may raise it.
    pub io_memory_bytes: usize,
    /// Commands queued to one shard before callers wait.
    pub shard_queue_depth: usize,
    /// Fixed shard for some logs (by `topic-partition` name); others are placed by hash.
    pub placement: BTreeMap<String, usize>,
    /// Settings for logs created without their own.
    pub log_defaults: LogConfig,
    /// How often retention and compaction look at each log.
    pub cleanup_interval_ms: u64,
    /// Where durable writes go: the file system, watched by test hooks if it has any.
    pub storage: crate::storage::Storage,
    /// Memory per shard for recent batches, shared by its logs (default: an eighth of the
    /// machine's memory, split between the shards, at least 16 MiB).
    pub cache_bytes: usize,
}

#[cfg(feature = "runtime")]
impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineConfig {
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        EngineConfig {
            data_dir: data_dir.into(),
            shards,
            pin_shards: true,
            io_memory_bytes: 1 << 20,
            shard_queue_depth: 1024,
            placement: BTreeMap::new(),
            log_defaults: LogConfig::default(),
            cleanup_interval_ms: 30_000,
            storage: crate::storage::Storage::default(),
            cache_bytes: EngineConfig::default_cache_bytes(shards),
        }
    }

    /// An eighth of the machine's memory (`/proc/meminfo`; 8 GiB if unreadable) split between
    /// `shards`, at least 16 MiB each: recent data for readers from memory, leaving most of it to
    /// the page cache, connections and the rest of the process.
    pub fn default_cache_bytes(shards: usize) -> usize {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib.saturating_mul(1024))
            })
            .unwrap_or(8 << 30);
        let share = total / 8 / shards.max(1) as u64;
        usize::try_from(share).unwrap_or(usize::MAX).max(16 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_config_round_trips_through_text() {
        let config = LogConfig {
            retention_bytes: Some(12345),
            retention_ms: None,
            cleanup_policy: CleanupPolicy::CompactDelete,
            durability: Durability::IntervalMs(250),
            timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        };
        assert_eq!(LogConfig::decode(&config.encode()).unwrap(), config);
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut config = LogConfig::default();
        let error = config.set("segment.bytes", "lots").unwrap_err();
        assert!(error.to_string().contains("segment.bytes"), "{error}");
        assert!(config.set("no.such.key", "1").is_err());
        config.segment_bytes = 10;
        assert!(config.validate().is_err());
    }
}
