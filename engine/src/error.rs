//! The engine's one error type. Bad input and I/O failures are values; bugs panic.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::types::{Offset, Position};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A record batch (from a client or from disk) is malformed.
    InvalidBatch { reason: String },
    /// A batch's stored CRC-32C does not match its bytes.
    ChecksumMismatch {
        expected: u32,
        actual: u32,
        position: Option<Position>,
    },
    /// A batch is larger than the log accepts.
    BatchTooLarge { size: usize, max: usize },
    /// A compressed batch inflates past the bound.
    DecompressedTooLarge { max: usize },
    /// The compression codec id is not one Kafka defines.
    UnknownCompression { id: u8 },
    /// A topic or log name that Kafka would reject.
    InvalidName { name: String, reason: &'static str },
    /// A requested offset lies outside `[log_start, log_end]`.
    OffsetOutOfRange {
        requested: Offset,
        log_start: Offset,
        log_end: Offset,
    },
    /// A configuration value is out of its range.
    InvalidConfig { key: &'static str, reason: String },
    /// The log does not exist (and was not asked to be created).
    UnknownLog { name: String },
    /// The device is full: the append was not stored; the log is unchanged and usable.
    DiskFull { path: PathBuf },
    /// An fsync failed earlier: the log refuses writes until reopened.
    Fenced { path: PathBuf, cause: String },
    /// A file on disk is corrupt beyond what recovery repairs.
    Corrupt { path: PathBuf, reason: String },
    /// Any other I/O failure, with the file it concerns.
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// An idempotent producer's batch does not follow its last one.
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    /// A batch from an older epoch of a producer that has moved on.
    ProducerFenced {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// A replicated batch starts below the log end: a follower appends the leader's batches
    /// in order, after truncating what diverged.
    ReplicaOffsetBehind {
        base_offset: Offset,
        log_end: Offset,
    },
    /// A leader epoch older than one the log already holds.
    StaleLeaderEpoch { epoch: i32, latest: i32 },
    /// The system refuses what the engine needs (io_uring, locked memory): the cause and
    /// how to fix it.
    System { reason: String },
    /// Another process (or engine) holds the data directory's lock.
    DataDirLocked { dir: PathBuf, holder: Option<u32> },
    /// The engine (or the shard owning the log) has shut down.
    ShuttingDown,
    /// Raised by a replication layer over the logs: a replicated write needs more in-sync
    /// replicas than the partition has (`after_append`: it was stored on the leader, but
    /// the set shrank before it committed).
    NotEnoughReplicas {
        in_sync: usize,
        required: usize,
        after_append: bool,
    },
    /// Raised by a replication layer: this replica does not lead the partition (any more).
    NotLeader,
    /// Raised by a replication layer: a replicated write did not commit in time.
    TimedOut { waited_ms: u64 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidBatch { reason } => write!(f, "invalid record batch: {reason}"),
            Error::ChecksumMismatch {
                expected,
                actual,
                position,
            } => {
                write!(
                    f,
                    "record batch CRC-32C mismatch: stored {expected:#010x}, "
                )?;
                write!(f, "computed {actual:#010x}")?;
                match position {
                    Some(position) => write!(f, " at file position {}", position.0),
                    None => Ok(()),
                }
            }
            Error::BatchTooLarge { size, max } => {
                write!(
                    f,
                    "record batch of {size} bytes exceeds the limit of {max} bytes"
                )
            }
            Error::DecompressedTooLarge { max } => {
                write!(f, "record batch decompresses to more than {max} bytes")
            }
            Error::UnknownCompression { id } => write!(f, "unknown compression codec id {id}"),
            Error::InvalidName { name, reason } => write!(f, "invalid log name {name:?}: {reason}"),
            Error::OffsetOutOfRange {
                requested,
                log_start,
                log_end,
            } => write!(
                f,
                "offset {} is out of range: the log holds [{}, {})",
                requested.0, log_start.0, log_end.0
            ),
            Error::InvalidConfig { key, reason } => write!(f, "invalid config {key}: {reason}"),
            Error::UnknownLog { name } => write!(f, "log {name} does not exist"),
            Error::ReplicaOffsetBehind {
                base_offset,
                log_end,
            } => write!(
                f,
                "replicated batch at offset {} starts before the log end {}",
                base_offset.0, log_end.0
            ),
            Error::StaleLeaderEpoch { epoch, latest } => write!(
                f,
                "leader epoch {epoch} is older than the log's latest epoch {latest}"
            ),
            Error::DiskFull { path } => write!(
                f,
                "no space left on device writing {}: the append was not stored; \
                 free space and retry",
                path.display()
            ),
            Error::Fenced { path, cause } => write!(
                f,
                "log {} is fenced after a failed fsync ({cause}): writes are refused \
                 until the log is reopened",
                path.display()
            ),
            Error::Corrupt { path, reason } => {
                write!(f, "corrupt file {}: {reason}", path.display())
            }
            Error::Io { path, op, source } => {
                write!(f, "I/O error during {op} on {}: {source}", path.display())
            }
            Error::OutOfOrderSequence {
                producer_id,
                expected,
                got,
            } => write!(
                f,
                "producer {producer_id}: sequence {got} is out of order (expected {expected})"
            ),
            Error::ProducerFenced {
                producer_id,
                epoch,
                current,
            } => write!(
                f,
                "producer {producer_id}: epoch {epoch} is older than the current epoch {current}"
            ),
            Error::System { reason } => f.write_str(reason),
            Error::DataDirLocked { dir, holder } => {
                write!(f, "data directory {} is in use by ", dir.display())?;
                match holder {
                    Some(pid) => write!(f, "process {pid}")?,
                    None => f.write_str("another process")?,
                }
                f.write_str(
                    " (its .lock file is locked): stop that process or give this one \
                     another data directory",
                )
            }
            Error::ShuttingDown => write!(f, "the engine is shutting down"),
            Error::NotEnoughReplicas {
                in_sync,
                required,
                after_append,
            } => write!(
                f,
                "{in_sync} in-sync replicas, {required} required (min.insync.replicas){}",
                if *after_append {
                    ": the batch was stored on the leader but did not commit"
                } else {
                    ""
                }
            ),
            Error::NotLeader => write!(f, "this broker does not lead the partition"),
            Error::TimedOut { waited_ms } => {
                write!(
                    f,
                    "not replicated to the in-sync replicas within {waited_ms} ms"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(feature = "runtime")]
impl From<coremq_runtime::Error> for Error {
    fn from(error: coremq_runtime::Error) -> Error {
        match error {
            coremq_runtime::Error::ShuttingDown => Error::ShuttingDown,
            other => Error::System {
                reason: other.to_string(),
            },
        }
    }
}

impl Error {
    pub(crate) fn invalid_batch(reason: impl Into<String>) -> Error {
        Error::InvalidBatch {
            reason: reason.into(),
        }
    }

    /// Whether retrying the same call later can succeed (disk full, shutdown races).
    pub fn is_retriable(&self) -> bool {
        matches!(self, Error::DiskFull { .. })
    }
}
