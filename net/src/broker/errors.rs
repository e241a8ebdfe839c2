//! Engine and broker errors as Kafka error codes.

use coremq_engine::Error;

use crate::protocol::error_code;
use coremq_replication::topics::Topic;

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

/// [`partition_log`], led by this broker: NOT_LEADER_OR_FOLLOWER when another broker (or
/// none) leads it.
pub fn led_partition_log(
    context: &super::Context,
    topic: Option<&Topic>,
    index: i32,
) -> Result<coremq_engine::TopicPartition, i16> {
    let log = partition_log(topic, index)?;
    check_leader(context, &log)?;
    Ok(log)
}

/// NOT_LEADER_OR_FOLLOWER unless this broker leads `log` (clients then refresh their
/// metadata and go to the leader).
pub fn check_leader(
    context: &super::Context,
    log: &coremq_engine::TopicPartition,
) -> Result<(), i16> {
    if context.cluster.leader_of(log) == Some(context.config.node_id) {
        Ok(())
    } else {
        Err(error_code::NOT_LEADER_OR_FOLLOWER)
    }
}

/// The leader of `log` another live broker is, with its leader epoch, for the
/// current-leader hint Produce and Fetch answers carry with NOT_LEADER_OR_FOLLOWER (KIP-951),
/// so a client moves on without a metadata round trip.
pub fn leader_hint(
    context: &super::Context,
    log: &coremq_engine::TopicPartition,
) -> Option<(i32, super::metadata::Broker)> {
    let image = context.cluster.image();
    let id = image.topic_id(&log.topic)?;
    let assignment = &image.partition(&id, log.partition)?.assignment;
    let leader = assignment.leader;
    if leader < 0 || leader == context.config.node_id || !image.is_live(leader) {
        return None;
    }
    Some((
        assignment.leader_epoch,
        super::metadata::broker(&image, leader)?,
    ))
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
        Error::ShuttingDown | Error::NotLeader => error_code::NOT_LEADER_OR_FOLLOWER,
        Error::NotEnoughReplicas {
            after_append: false,
            ..
        } => error_code::NOT_ENOUGH_REPLICAS,
        Error::NotEnoughReplicas {
            after_append: true, ..
        } => error_code::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        Error::TimedOut { .. } => error_code::REQUEST_TIMED_OUT,
        _ => error_code::UNKNOWN_SERVER_ERROR,
    }
}

/// The Kafka error code for a cluster-layer error.
pub fn cluster_code(error: &coremq_replication::Error) -> i16 {
    use coremq_replication::Error as Cluster;
    match error {
        Cluster::Engine(error) => code(error),
        Cluster::UnknownTopic { .. } => error_code::UNKNOWN_TOPIC_OR_PARTITION,
        Cluster::TopicConfig { .. } => error_code::INVALID_CONFIG,
        Cluster::Metadata { .. } => error_code::KAFKA_STORAGE_ERROR,
        Cluster::Controller(refused) => controller_code(refused),
        // Retriable: a controller is elected, or the broker is back.
        Cluster::NotController | Cluster::Stopped => error_code::NOT_CONTROLLER,
    }
}

/// The Kafka error code for a request the controller refused.
fn controller_code(error: &coremq_replication::controller::ControllerError) -> i16 {
    use coremq_replication::controller::ControllerError as Refused;
    match error {
        Refused::UnknownBroker(_) => error_code::STALE_BROKER_EPOCH,
        Refused::StaleLeaderEpoch => error_code::FENCED_LEADER_EPOCH,
        Refused::UnknownTopic => error_code::UNKNOWN_TOPIC_OR_PARTITION,
        Refused::TopicExists(_) => error_code::TOPIC_ALREADY_EXISTS,
        Refused::NotEnoughBrokers { .. } => error_code::INVALID_REPLICATION_FACTOR,
        Refused::InvalidPartitions(_) => error_code::INVALID_PARTITIONS,
        Refused::StalePartitionEpoch => error_code::INVALID_UPDATE_VERSION,
        Refused::IneligibleReplica(_) => error_code::INELIGIBLE_REPLICA,
        Refused::PreferredLeaderNotAvailable => error_code::PREFERRED_LEADER_NOT_AVAILABLE,
        Refused::InvalidAssignment(_) => error_code::INVALID_REPLICA_ASSIGNMENT,
        Refused::NoReassignment => error_code::NO_REASSIGNMENT_IN_PROGRESS,
    }
}
