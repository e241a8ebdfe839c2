//! Engine and broker errors as Kafka error codes.

use coremq_engine::Error;

use super::topics::Topic;
use crate::protocol::error_code;

/// The log of partition `index` of `topic` (as the caller found it, or `None`), or Kafka's
/// UNKNOWN_TOPIC_OR_PARTITION when the topic or the partition does not exist.
pub fn partition_log(
    topic: Option<&Topic>,
    index: i32,
) -> Result<coremq_engine::TopicPartition, i16> {
    topic
        .and_then(|topic| topic.log(index))
        .ok_or(error_code::UNKNOWN_TOPIC_OR_PARTITION)
}

pub fn code(error: &Error) -> i16 {
    match error {
        Error::InvalidBatch { .. } | Error::DecompressedTooLarge { .. } => {
            error_code::INVALID_RECORD
        }
        Error::ChecksumMismatch { .. } => error_code::CORRUPT_MESSAGE,
        Error::BatchTooLarge { .. } => error_code::MESSAGE_TOO_LARGE,
        Error::UnknownCompression { .. } => error_code::UNSUPPORTED_COMPRESSION_TYPE,
        Error::InvalidName { .. } => error_code::INVALID_TOPIC_EXCEPTION,
        Error::OffsetOutOfRange { .. } => error_code::OFFSET_OUT_OF_RANGE,
        Error::InvalidConfig { .. } => error_code::INVALID_CONFIG,
        Error::UnknownLog { .. } => error_code::UNKNOWN_TOPIC_OR_PARTITION,
        Error::DiskFull { .. }
        | Error::Fenced { .. }
        | Error::Corrupt { .. }
        | Error::Io { .. } => error_code::KAFKA_STORAGE_ERROR,
        Error::OutOfOrderSequence { .. } => error_code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        Error::ProducerFenced { .. } => error_code::INVALID_PRODUCER_EPOCH,
        // Retriable: the client tries again once the broker is back.
        Error::ShuttingDown => error_code::NOT_LEADER_OR_FOLLOWER,
        _ => error_code::UNKNOWN_SERVER_ERROR,
    }
}

/// The Kafka error code for a broker error.
pub fn broker_code(error: &super::Error) -> i16 {
    use super::Error as Broker;
    match error {
        Broker::Engine(error) => code(error),
        Broker::Step { source, .. } => broker_code(source),
        Broker::UnknownTopic { .. } => error_code::UNKNOWN_TOPIC_OR_PARTITION,
        Broker::TopicConfig { .. } | Broker::Config { .. } => error_code::INVALID_CONFIG,
        Broker::Metadata { .. } => error_code::KAFKA_STORAGE_ERROR,
        Broker::Listen { .. } | Broker::Admin { .. } => error_code::UNKNOWN_SERVER_ERROR,
    }
}
