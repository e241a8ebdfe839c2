//! Fetch and ListOffsets. Fetch answers with the stored batches themselves (no copy, no
//! re-encoding) and long-polls: with fewer than `min_bytes` ready it waits, up to
//! `max_wait_ms`, for any requested partition to get data, then reads again. Fetch sessions
//! (KIP-227) are not created: every answer has session id 0, which tells the client to keep
//! sending full requests.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use coremq_engine::{Error, Offset, Timestamp, TopicPartition};
use coremq_replication::Isolation;

use super::{Context, errors};
use crate::protocol::codec::{Records, Uuid};
use crate::protocol::error_code;
use crate::protocol::messages::fetch_response::{
    FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use crate::protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use crate::protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
};

/// Error code for a session id the broker never handed out.
const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;

/// Who fetches: a consumer reads what the in-sync replicas have (the high watermark); a
/// follower (a replica id) reads everything written and reports its progress by fetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Consumer,
    Replica(i32),
}

impl Reader {
    fn isolation(self) -> Isolation {
        match self {
            Reader::Consumer => Isolation::Committed,
            Reader::Replica(_) => Isolation::Written,
        }
    }
}

/// One requested partition, resolved.
struct Wanted {
    log: Option<TopicPartition>,
    partition: i32,
    /// The leader epoch the fetcher knows (-1: none given).
    leader_epoch: i32,
    /// Where another broker leads it: its epoch and that broker (KIP-951's hint).
    hint: Option<(i32, super::metadata::Broker)>,
    /// The error for a partition that cannot be read at all.
    error: i16,
    offset: i64,
    max_bytes: usize,
}

pub async fn handle(context: &Rc<Context>, request: FetchRequest, version: i16) -> FetchResponse {
    if request.session_id != 0 {
        return FetchResponse {
            error_code: FETCH_SESSION_ID_NOT_FOUND,
            ..FetchResponse::default()
        };
    }
    let table = context.topics();
    let mut topics: Vec<(String, Uuid, Vec<Wanted>)> = Vec::new();
    for topic in &request.topics {
        let found = if version >= 13 {
            table.by_id(&topic.topic_id.into()).cloned()
        } else {
            table.get(&topic.topic).cloned()
        };
        let missing = if version >= 13 {
            error_code::UNKNOWN_TOPIC_ID
        } else {
            error_code::UNKNOWN_TOPIC_OR_PARTITION
        };
        let wanted = topic
            .partitions
            .iter()
            .map(|partition| {
                let index = partition.partition;
                let known = found.as_ref().and_then(|topic| topic.log(index));
                let led = known.as_ref().map(|log| errors::check_leader(context, log));
                let hint = known
                    .as_ref()
                    .filter(|_| led == Some(Err(error_code::NOT_LEADER_OR_FOLLOWER)))
                    .and_then(|log| errors::leader_hint(context, log));
                let log = known.filter(|_| led == Some(Ok(())));
                Wanted {
                    error: if let Some(Err(code)) = led {
                        code
                    } else if log.is_some() {
                        error_code::NONE
                    } else if found.is_some() {
                        error_code::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        missing
                    },
                    log,
                    partition: index,
                    leader_epoch: partition.current_leader_epoch,
                    hint,
                    offset: partition.fetch_offset,
                    max_bytes: partition.partition_max_bytes.max(0) as usize,
                }
            })
            .collect();
        let name = found
            .as_ref()
            .map_or(topic.topic.clone(), |t| t.name.clone());
        topics.push((name, topic.topic_id, wanted));
    }
    let response_max = if version >= 3 {
        request.max_bytes.max(0) as usize
    } else {
        usize::MAX
    };
    let min_bytes = request.min_bytes.max(0) as usize;
    let replica = if version >= 15 {
        request.replica_state.replica_id
    } else {
        request.replica_id
    };
    let reader = if replica >= 0 {
        Reader::Replica(replica)
    } else {
        Reader::Consumer
    };
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64);
    loop {
        let (responses, bytes) = read_all(context, reader, &topics, response_max).await;
        let left = deadline.saturating_duration_since(Instant::now());
        if bytes >= min_bytes || left.is_zero() || !wait_any(context, reader, &topics, left).await {
            let mut node_endpoints: Vec<NodeEndpoint> = Vec::new();
            for (_, _, wanted) in &topics {
                for (_, leader) in wanted
                    .iter()
                    .filter_map(|partition| partition.hint.as_ref())
                {
                    if !node_endpoints
                        .iter()
                        .any(|known| known.node_id == leader.id)
                    {
                        node_endpoints.push(NodeEndpoint {
                            node_id: leader.id,
                            host: leader.host.clone(),
                            port: leader.port.into(),
                            rack: leader.rack.clone(),
                        });
                    }
                }
            }
            return FetchResponse {
                responses,
                node_endpoints,
                ..FetchResponse::default()
            };
        }
    }
}

/// Reads every partition concurrently, then keeps whole batches in request order up to
/// `response_max` bytes (the first non-empty partition always keeps its first batch).
async fn read_all(
    context: &Rc<Context>,
    reader: Reader,
    topics: &[(String, Uuid, Vec<Wanted>)],
    response_max: usize,
) -> (Vec<FetchableTopicResponse>, usize) {
    let mut reads = Vec::new();
    for (_, _, wanted) in topics {
        for partition in wanted {
            let context = context.clone();
            let log = partition.log.clone();
            let (offset, max_bytes) = (partition.offset, partition.max_bytes.min(response_max));
            let epoch = partition.leader_epoch;
            reads.push(coremq_runtime::spawn_local(async move {
                let log = log?;
                let from = Offset(offset.max(0) as u64);
                if offset < 0 {
                    return Some(Err(out_of_range(&context, &log).await));
                }
                let max_bytes = max_bytes.max(1);
                let read = match reader {
                    Reader::Consumer => {
                        context
                            .cluster
                            .read(&log, from, max_bytes, Isolation::Committed)
                            .await
                    }
                    Reader::Replica(replica) => {
                        context
                            .cluster
                            .on_partition(&log, move |partition| async move {
                                partition
                                    .replica_read(replica, epoch, from, max_bytes)
                                    .await
                            })
                            .await
                    }
                };
                Some(read.map_err(|error| Failure::from(&error)))
            }));
        }
    }
    let mut reads = reads.into_iter();
    let mut total = 0usize;
    let mut responses = Vec::with_capacity(topics.len());
    for (name, id, wanted) in topics {
        let mut partitions = Vec::with_capacity(wanted.len());
        for partition in wanted {
            let read = reads.next().expect("one read per partition").await;
            let mut data = PartitionData {
                partition_index: partition.partition,
                error_code: partition.error,
                records: Some(Records::default()),
                ..PartitionData::default()
            };
            if let Some((epoch, leader)) = &partition.hint {
                data.current_leader = LeaderIdAndEpoch {
                    leader_id: leader.id,
                    leader_epoch: *epoch,
                };
            }
            match read {
                None => {}
                Some(Ok(read)) => {
                    let mut batches = Vec::new();
                    for batch in read.batches {
                        if total + batch.len() > response_max && total > 0 {
                            break;
                        }
                        total += batch.len();
                        batches.push(batch);
                    }
                    data.high_watermark = read.high_watermark.0 as i64;
                    data.last_stable_offset = read.high_watermark.0 as i64;
                    data.log_start_offset = read.log_start.0 as i64;
                    data.records = Some(Records::new(batches));
                }
                Some(Err(failure)) => {
                    data.error_code = failure.code;
                    data.high_watermark = failure.high_watermark;
                    data.last_stable_offset = failure.high_watermark;
                    data.log_start_offset = failure.log_start;
                }
            }
            partitions.push(data);
        }
        responses.push(FetchableTopicResponse {
            topic: name.clone(),
            topic_id: *id,
            partitions,
        });
    }
    (responses, total)
}

/// A partition that could not be read: the error code, and the log's watermarks where known
/// (clients use them to reset an out-of-range position).
struct Failure {
    code: i16,
    log_start: i64,
    high_watermark: i64,
}

impl From<&Error> for Failure {
    fn from(error: &Error) -> Failure {
        let (log_start, high_watermark) = match error {
            Error::OffsetOutOfRange {
                log_start, log_end, ..
            } => (log_start.0 as i64, log_end.0 as i64),
            _ => (-1, -1),
        };
        let code = match error {
            Error::StaleLeaderEpoch { epoch, latest } if epoch < latest => {
                error_code::FENCED_LEADER_EPOCH
            }
            Error::StaleLeaderEpoch { .. } => error_code::UNKNOWN_LEADER_EPOCH,
            _ => errors::code(error),
        };
        Failure {
            code,
            log_start,
            high_watermark,
        }
    }
}

/// The answer to a negative fetch offset.
async fn out_of_range(context: &Context, log: &TopicPartition) -> Failure {
    match context.cluster.offsets(log).await {
        Ok(offsets) => Failure {
            code: error_code::OFFSET_OUT_OF_RANGE,
            log_start: offsets.log_start.0 as i64,
            high_watermark: offsets.high_watermark.0 as i64,
        },
        Err(error) => Failure::from(&error),
    }
}

/// Waits until any readable partition has data past its fetch offset, at most `timeout`;
/// false if none did. The waits are polled together in this task, not spawned: when one
/// answers, the others are dropped at once and leave nothing behind.
async fn wait_any(
    context: &Rc<Context>,
    reader: Reader,
    topics: &[(String, Uuid, Vec<Wanted>)],
    timeout: Duration,
) -> bool {
    let mut waits: Vec<Pin<Box<dyn Future<Output = bool> + '_>>> = Vec::new();
    for (_, _, wanted) in topics {
        for partition in wanted {
            let Some(log) = partition.log.as_ref() else {
                continue;
            };
            if partition.offset < 0 {
                continue;
            }
            let from = Offset(partition.offset as u64);
            waits.push(Box::pin(async move {
                context
                    .cluster
                    .wait_readable(log, from, reader.isolation(), timeout)
                    .await
                    .unwrap_or(true)
            }));
        }
    }
    if waits.is_empty() {
        coremq_runtime::sleep(timeout).await;
        return false;
    }
    std::future::poll_fn(|task| {
        let mut index = 0;
        while index < waits.len() {
            match waits[index].as_mut().poll(task) {
                Poll::Ready(true) => return Poll::Ready(true),
                Poll::Ready(false) => drop(waits.swap_remove(index)),
                Poll::Pending => index += 1,
            }
        }
        if waits.is_empty() {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    })
    .await
}

/// ListOffsets' special timestamps (Kafka's `ListOffsetsRequest`).
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// The record with the largest timestamp (v7+, KIP-734).
const MAX_TIMESTAMP: i64 = -3;
/// The local log's start (v8+, KIP-405): the log start, with no tiered storage.
const EARLIEST_LOCAL: i64 = -4;
/// The last offset in tiered storage (v9+, KIP-1005): none, with no tiered storage.
const LATEST_TIERED: i64 = -5;

/// ListOffsets: earliest (and earliest local), latest, the record with the largest
/// timestamp, or the first record at or after a timestamp. No tiered storage: the latest
/// tiered offset is Kafka's "none" (-1).
pub async fn list_offsets(
    context: &Rc<Context>,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let table = context.topics();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let found = table.get(&topic.name).cloned();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let index = partition.partition_index;
            let mut answer = ListOffsetsPartitionResponse {
                partition_index: index,
                error_code: error_code::NONE,
                timestamp: -1,
                offset: -1,
                leader_epoch: -1,
                ..ListOffsetsPartitionResponse::default()
            };
            let log = match errors::led_partition_log(context, found.as_deref(), index) {
                Ok(log) => log,
                Err(code) => {
                    answer.error_code = code;
                    partitions.push(answer);
                    continue;
                }
            };
            let result = match partition.timestamp {
                EARLIEST | EARLIEST_LOCAL => context
                    .cluster
                    .offsets(&log)
                    .await
                    .map(|offsets| Some((offsets.log_start, Timestamp(-1)))),
                LATEST => context
                    .cluster
                    .offsets(&log)
                    .await
                    .map(|offsets| Some((offsets.high_watermark, Timestamp(-1)))),
                MAX_TIMESTAMP => context.cluster.max_timestamp_record(&log).await,
                LATEST_TIERED => Ok(None),
                timestamp if timestamp >= 0 => {
                    context
                        .cluster
                        .offset_for_timestamp(&log, Timestamp(timestamp))
                        .await
                }
                _ => {
                    answer.error_code = error_code::INVALID_REQUEST;
                    partitions.push(answer);
                    continue;
                }
            };
            match result {
                Ok(Some((offset, timestamp))) => {
                    answer.offset = offset.0 as i64;
                    answer.timestamp = timestamp.0;
                    let epoch = context
                        .cluster
                        .on_partition(&log, move |partition| async move {
                            Ok(partition.leader_epoch_at(offset))
                        })
                        .await;
                    answer.leader_epoch = epoch.ok().flatten().unwrap_or(-1);
                }
                Ok(None) => {}
                Err(error) => answer.error_code = errors::code(&error),
            }
            partitions.push(answer);
        }
        topics.push(ListOffsetsTopicResponse {
            name: topic.name,
            partitions,
        });
    }
    ListOffsetsResponse {
        topics,
        ..ListOffsetsResponse::default()
    }
}
