//! The replica-management APIs: ElectLeaders (preferred-leader election through the
//! controller), AlterPartitionReassignments and ListPartitionReassignments (moving replicas
//! between brokers), and DescribeLogDirs (the one log directory and the partitions this
//! broker holds).

use std::rc::Rc;

use coremq_replication::metadata::PartitionState;

use super::{Context, errors};
use crate::protocol::error_code;
use crate::protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use crate::protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use crate::protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use crate::protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use crate::protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
    DescribeLogDirsRequest, DescribeLogDirsResponse, ElectLeadersRequest, ElectLeadersResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};

/// Kafka's `ElectionType`: preferred (0) and unclean (1).
const ELECTION_TYPES: [i8; 2] = [0, 1];

/// Partition `index` of `topic` as the cluster metadata has it.
fn partition_state(context: &Context, topic: &str, index: i32) -> Option<PartitionState> {
    let image = context.cluster.image();
    let id = image.topic_id(topic)?;
    let index = u32::try_from(index).ok()?;
    image.partition(&id, index).cloned()
}

fn partition_result(partition_id: i32, code: i16, message: &str) -> PartitionResult {
    PartitionResult {
        partition_id,
        error_code: code,
        error_message: (code != error_code::NONE).then(|| message.to_string()),
    }
}

/// ElectLeaders. Preferred (0): a partition led by its preferred replica (the first of its
/// assignment) gets ELECTION_NOT_NEEDED; the others ask the controller to move leadership
/// there (PREFERRED_LEADER_NOT_AVAILABLE unless that replica is live and in sync); a request
/// for every partition (null) lists only those it tried, as Kafka leaves out the partitions
/// whose leader is already the one wanted. Unclean (1): a partition with a leader gets
/// ELECTION_NOT_NEEDED; one without gets ELIGIBLE_LEADERS_NOT_AVAILABLE, since unclean
/// election is the topic's `unclean.leader.election.enable`, not a request.
pub async fn elect_leaders(
    context: &Rc<Context>,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    if !ELECTION_TYPES.contains(&request.election_type) {
        let results = request
            .topic_partitions
            .unwrap_or_default()
            .into_iter()
            .map(|wanted| ReplicaElectionResult {
                partition_result: wanted
                    .partitions
                    .iter()
                    .map(|&index| {
                        partition_result(
                            index,
                            error_code::INVALID_REQUEST,
                            "election type must be 0 (preferred) or 1 (unclean)",
                        )
                    })
                    .collect(),
                topic: wanted.topic,
            })
            .collect();
        return ElectLeadersResponse {
            error_code: error_code::INVALID_REQUEST,
            replica_election_results: results,
            ..ElectLeadersResponse::default()
        };
    }
    let every = request.topic_partitions.is_none();
    let wanted: Vec<(String, Vec<i32>)> = match request.topic_partitions {
        Some(topics) => topics
            .into_iter()
            .map(|topic| (topic.topic, topic.partitions))
            .collect(),
        None => {
            let image = context.cluster.image();
            image
                .topics
                .values()
                .map(|topic| {
                    (
                        topic.name.clone(),
                        (0..topic.partitions.len() as i32).collect(),
                    )
                })
                .collect()
        }
    };
    let mut results = Vec::with_capacity(wanted.len());
    for (topic, partitions) in wanted {
        let mut partition_results = Vec::with_capacity(partitions.len());
        for index in partitions {
            let (code, message) = elect(context, request.election_type, &topic, index).await;
            if every && code == error_code::ELECTION_NOT_NEEDED {
                continue;
            }
            partition_results.push(partition_result(index, code, &message));
        }
        if !(every && partition_results.is_empty()) {
            results.push(ReplicaElectionResult {
                topic,
                partition_result: partition_results,
            });
        }
    }
    ElectLeadersResponse {
        error_code: error_code::NONE,
        replica_election_results: results,
        ..ElectLeadersResponse::default()
    }
}

/// One partition's election of `kind`: the code and message to answer.
async fn elect(context: &Context, kind: i8, topic: &str, index: i32) -> (i16, String) {
    let Some(state) = partition_state(context, topic, index) else {
        return (
            error_code::UNKNOWN_TOPIC_OR_PARTITION,
            "no such topic or partition".into(),
        );
    };
    let assignment = &state.assignment;
    if kind == 1 {
        return if assignment.leader >= 0 {
            (
                error_code::ELECTION_NOT_NEEDED,
                "the partition has a leader".into(),
            )
        } else {
            (
                error_code::ELIGIBLE_LEADERS_NOT_AVAILABLE,
                "unclean election is the topic's unclean.leader.election.enable, not a request"
                    .into(),
            )
        };
    }
    if assignment.replicas.first() == Some(&assignment.leader) {
        return (
            error_code::ELECTION_NOT_NEEDED,
            "the preferred replica leads the partition".into(),
        );
    }
    let Some(id) = context.cluster.image().topic_id(topic) else {
        return (
            error_code::UNKNOWN_TOPIC_OR_PARTITION,
            "no such topic or partition".into(),
        );
    };
    match context.cluster.elect_preferred(id, index as u32).await {
        Ok(()) => (error_code::NONE, String::new()),
        Err(error) => (errors::cluster_code(&error), error.to_string()),
    }
}

/// AlterPartitionReassignments: each partition asked for starts moving to its new replicas
/// (or its reassignment in progress is cancelled, where the list is null) through the
/// controller; the answer comes once the move has started. The new replicas copy the log
/// from the leader, and once all of them are in sync the replicas left out are removed
/// (KIP-455); ListPartitionReassignments shows what is still moving.
pub async fn alter_partition_reassignments(
    context: &Rc<Context>,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let mut responses = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let id = context.cluster.image().topic_id(&topic.name);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let index = partition.partition_index;
            let known = id.filter(|_| partition_state(context, &topic.name, index).is_some());
            let (code, message) = match known {
                None => (
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    Some("no such topic or partition".to_string()),
                ),
                Some(id) => {
                    let moved = context
                        .cluster
                        .reassign(id, index as u32, partition.replicas)
                        .await;
                    match moved {
                        Ok(()) => (error_code::NONE, None),
                        Err(error) => (errors::cluster_code(&error), Some(error.to_string())),
                    }
                }
            };
            partitions.push(ReassignablePartitionResponse {
                partition_index: index,
                error_code: code,
                error_message: message,
            });
        }
        responses.push(ReassignableTopicResponse {
            name: topic.name,
            partitions,
        });
    }
    AlterPartitionReassignmentsResponse {
        error_code: error_code::NONE,
        responses,
        ..AlterPartitionReassignmentsResponse::default()
    }
}

/// ListPartitionReassignments: the partitions asked for (every partition when the topics
/// are null) with a reassignment in progress: their replicas, and those being added and
/// removed. Partitions not moving, or unknown, are left out, as Kafka does.
pub fn list_partition_reassignments(
    context: &Context,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let image = context.cluster.image();
    let wanted: Vec<(String, Option<Vec<i32>>)> = match request.topics {
        Some(topics) => topics
            .into_iter()
            .map(|topic| (topic.name, Some(topic.partition_indexes)))
            .collect(),
        None => image
            .topics
            .values()
            .map(|topic| (topic.name.clone(), None))
            .collect(),
    };
    let mut topics = Vec::new();
    for (name, indexes) in wanted {
        let Some(topic) = image.topic_id(&name).and_then(|id| image.topics.get(&id)) else {
            continue;
        };
        let indexes = indexes.unwrap_or_else(|| (0..topic.partitions.len() as i32).collect());
        let partitions: Vec<OngoingPartitionReassignment> = indexes
            .into_iter()
            .filter_map(|index| {
                let state = topic.partitions.get(usize::try_from(index).ok()?)?;
                let moving = state.reassigning.as_ref()?;
                Some(OngoingPartitionReassignment {
                    partition_index: index,
                    replicas: state.assignment.replicas.clone(),
                    adding_replicas: moving.adding.clone(),
                    removing_replicas: moving.removing.clone(),
                })
            })
            .collect();
        if !partitions.is_empty() {
            topics.push(OngoingTopicReassignment { name, partitions });
        }
    }
    ListPartitionReassignmentsResponse {
        error_code: error_code::NONE,
        topics,
        ..ListPartitionReassignmentsResponse::default()
    }
}

/// DescribeLogDirs: the one log directory, the size of each partition here asked for (every
/// partition when the topics are null) and its lag (the log end past the high watermark),
/// and from v4 the volume's total and usable bytes. Partitions that do not exist are left
/// out, as Kafka leaves out those a directory does not hold.
pub async fn describe_log_dirs(
    context: &Rc<Context>,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let table = context.topics();
    let wanted: Vec<(String, Vec<i32>)> = match request.topics {
        Some(topics) => topics
            .into_iter()
            .map(|topic| (topic.topic, topic.partitions))
            .collect(),
        None => table
            .iter()
            .map(|topic| (topic.name.clone(), (0..topic.partitions as i32).collect()))
            .collect(),
    };
    let mut error = error_code::NONE;
    let mut topics = Vec::with_capacity(wanted.len());
    for (name, indexes) in wanted {
        let Some(topic) = table.get(&name) else {
            continue;
        };
        let mut partitions = Vec::with_capacity(indexes.len());
        for index in indexes {
            let Some(log) = topic.log(index) else {
                continue;
            };
            let here = partition_state(context, &name, index)
                .is_some_and(|state| state.assignment.replicas.contains(&context.config.node_id));
            if !here {
                continue;
            }
            match context.cluster.offsets(&log).await {
                Ok(offsets) => partitions.push(DescribeLogDirsPartition {
                    partition_index: index,
                    partition_size: offsets.size_bytes as i64,
                    offset_lag: offsets.log_end.0.saturating_sub(offsets.high_watermark.0) as i64,
                    is_future_key: false,
                }),
                Err(failure) => {
                    log::warn!("DescribeLogDirs: partition {log}: {failure}");
                    error = errors::code(&failure);
                }
            }
        }
        if !partitions.is_empty() {
            topics.push(DescribeLogDirsTopic { name, partitions });
        }
    }
    let logs_dir = context.config.logs_dir();
    let log_dir = std::path::absolute(&logs_dir).unwrap_or(logs_dir);
    let (total_bytes, usable_bytes) = match rustix::fs::statvfs(&log_dir) {
        Ok(volume) => (
            volume.f_blocks.saturating_mul(volume.f_frsize) as i64,
            volume.f_bavail.saturating_mul(volume.f_frsize) as i64,
        ),
        Err(_) => (-1, -1),
    };
    DescribeLogDirsResponse {
        error_code: error_code::NONE,
        results: vec![DescribeLogDirsResult {
            error_code: error,
            log_dir: log_dir.display().to_string(),
            topics,
            total_bytes,
            usable_bytes,
        }],
        ..DescribeLogDirsResponse::default()
    }
}
