//! Produce: each partition's record batches checked (framing here, CRC-32C, magic, counts
//! and sizes in the engine) and appended in order; partitions in parallel, each on the
//! shard that owns it. acks=all waits for the log's durability policy (the fdatasync under
//! `always`); acks=1 and acks=0 only for the write to the file, as on a Kafka or Redpanda
//! leader; acks=0 gets no answer.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use coremq_engine::batch::{self, BatchHeader, CheckedBatch};
use coremq_engine::{Compression, TopicPartition, record};
use coremq_replication::Consistency;

use super::groups::OFFSETS_TOPIC;
use super::{Context, configs, errors};
use crate::protocol::error_code;
use crate::protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use crate::protocol::messages::{ProduceRequest, ProduceResponse};

/// A partition whose records are to be appended, once they are split out of the frame.
struct Accepted {
    log: TopicPartition,
    index: i32,
    recompress: Option<Compression>,
}

pub async fn handle(
    context: &Rc<Context>,
    request: ProduceRequest,
    frame: Bytes,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    let refuse = if !matches!(acks, -1..=1) {
        Some((
            error_code::INVALID_REQUIRED_ACKS,
            "acks must be -1, 0 or 1".to_string(),
        ))
    } else if request.transactional_id.is_some() {
        Some((
            error_code::INVALID_REQUEST,
            "transactions are not supported".to_string(),
        ))
    } else {
        None
    };
    let consistency = if acks == -1 {
        // Kafka's produce timeout: how long the leader waits for the in-sync replicas.
        Consistency::Durable {
            timeout: Duration::from_millis(request.timeout_ms.max(0) as u64),
        }
    } else {
        Consistency::Leader
    };
    let table = context.topics();
    // Per topic, each partition's answer if it was refused at once.
    let mut answers = Vec::new();
    let mut accepted = Vec::new();
    let mut records = Vec::new();
    // The leaders named in current-leader hints (KIP-951).
    let mut endpoints = Vec::new();
    for topic_data in request.topic_data {
        let topic = table.get(&topic_data.name).cloned();
        let mut partitions = Vec::new();
        for partition_data in topic_data.partition_data {
            let index = partition_data.index;
            let log = topic.as_ref().and_then(|topic| topic.log(index));
            let failure = if let Some(refusal) = &refuse {
                Some(refusal.clone())
            } else if topic_data.name == OFFSETS_TOPIC {
                // Kafka's answer to a client appending to an internal topic.
                Some((
                    error_code::INVALID_TOPIC_EXCEPTION,
                    format!("cannot append to the internal topic {OFFSETS_TOPIC}"),
                ))
            } else if log.is_none() {
                Some((
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("{}-{index} does not exist", topic_data.name),
                ))
            } else if let Some(Err(code)) =
                log.as_ref().map(|log| errors::check_leader(context, log))
            {
                Some((
                    code,
                    format!(
                        "broker {} does not lead {}-{index}",
                        context.config.node_id, topic_data.name
                    ),
                ))
            } else if partition_data.records.is_none() {
                Some((error_code::INVALID_RECORD, "no records".into()))
            } else {
                None
            };
            if let Some((code, message)) = failure {
                let mut response = failed(index, code, message);
                let hint = log
                    .as_ref()
                    .filter(|_| code == error_code::NOT_LEADER_OR_FOLLOWER);
                if let Some((epoch, leader)) =
                    hint.and_then(|log| errors::leader_hint(context, log))
                {
                    response.current_leader = LeaderIdAndEpoch {
                        leader_id: leader.id,
                        leader_epoch: epoch,
                    };
                    if !endpoints
                        .iter()
                        .any(|known: &NodeEndpoint| known.node_id == leader.id)
                    {
                        endpoints.push(NodeEndpoint {
                            node_id: leader.id,
                            host: leader.host,
                            port: leader.port.into(),
                            rack: leader.rack,
                        });
                    }
                }
                partitions.push(Some(response));
                continue;
            }
            partitions.push(None);
            accepted.push(Accepted {
                log: log.expect("checked above"),
                index,
                recompress: topic.as_deref().and_then(configs::recompression),
            });
            records.push(partition_data.records.expect("checked above").to_bytes());
        }
        answers.push((topic_data.name, partitions));
    }
    // The appends run in parallel, each partition on the shard owning it.
    let mut appends = accepted
        .into_iter()
        .zip(writable(frame, records))
        .map(|(partition, records)| {
            let context = context.clone();
            coremq_runtime::spawn_local(async move {
                let Accepted {
                    log,
                    index,
                    recompress,
                } = partition;
                append(&context, &log, index, records, recompress, consistency).await
            })
        })
        .collect::<Vec<_>>()
        .into_iter();
    let mut responses = Vec::with_capacity(answers.len());
    for (name, partitions) in answers {
        let mut partition_responses = Vec::with_capacity(partitions.len());
        for refused in partitions {
            partition_responses.push(match refused {
                Some(response) => response,
                None => appends.next().expect("a task per accepted partition").await,
            });
        }
        responses.push(TopicProduceResponse {
            name,
            partition_responses,
        });
    }
    (acks != 0).then(|| ProduceResponse {
        responses,
        node_endpoints: endpoints,
        ..ProduceResponse::default()
    })
}

fn failed(index: i32, code: i16, message: String) -> PartitionProduceResponse {
    PartitionProduceResponse {
        index,
        error_code: code,
        error_message: Some(message),
        ..PartitionProduceResponse::default()
    }
}

/// The `records` of a produce request as writable buffers, so the engine stamps each
/// batch's base offset in place instead of copying the batch out of the request. Each is a
/// view of `frame`: once the request's other views are gone the frame is split at their
/// bounds, which copies nothing. Where that cannot be done (another view of the frame is
/// alive), each is copied.
fn writable(frame: Bytes, records: Vec<Bytes>) -> Vec<BytesMut> {
    let base = frame.as_ptr() as usize;
    let mut bounds = Vec::with_capacity(records.len());
    let mut floor = 0;
    for part in &records {
        let start = if part.is_empty() {
            floor
        } else {
            (part.as_ptr() as usize).wrapping_sub(base)
        };
        if start < floor || start > frame.len() || frame.len() - start < part.len() {
            return records
                .iter()
                .map(|part| BytesMut::from(&part[..]))
                .collect();
        }
        bounds.push(start..start + part.len());
        floor = start + part.len();
    }
    drop(records);
    match frame.try_into_mut() {
        Ok(mut rest) => {
            let mut at = 0;
            bounds
                .into_iter()
                .map(|bound| {
                    rest.advance(bound.start - at);
                    at = bound.end;
                    rest.split_to(bound.len())
                })
                .collect()
        }
        Err(frame) => bounds
            .into_iter()
            .map(|bound| BytesMut::from(&frame[bound]))
            .collect(),
    }
}

/// Appends every batch of `records` in order, on the shard owning the log: all batches are
/// checked first (a bad one fails the partition with nothing stored), recompressed when the
/// topic sets `compression.type`, then appended. The answer carries the first batch's offset.
async fn append(
    context: &Context,
    log: &TopicPartition,
    index: i32,
    mut records: BytesMut,
    recompress: Option<Compression>,
    consistency: Consistency,
) -> PartitionProduceResponse {
    let sizes: Vec<usize> = batch::frames(&records)
        .map(|frame| frame.header.total_bytes())
        .collect();
    let covered: usize = sizes.iter().sum();
    if sizes.is_empty() || covered != records.len() {
        // A header that parses but runs past the data is a cut batch; one that does not parse
        // (no batch, another magic, impossible lengths) is an invalid record, as in Kafka.
        let rest = &records[covered..];
        let (code, reason) = match BatchHeader::parse(rest) {
            Ok(_) => (
                error_code::CORRUPT_MESSAGE,
                format!("the last {} bytes are a cut record batch", rest.len()),
            ),
            Err(error) => (errors::code(&error), error.to_string()),
        };
        return failed(index, code, reason);
    }
    let batches: Vec<BytesMut> = sizes
        .into_iter()
        .map(|size| records.split_to(size))
        .collect();
    let appended = context
        .cluster
        .on_partition(log, move |partition| async move {
            let config = partition.config();
            let mut checked = Vec::with_capacity(batches.len());
            for batch in batches {
                let mut batch = CheckedBatch::from_mut(batch, config.batch_limits())?;
                // Kafka's LogValidator: a compacted topic refuses records without a key.
                if config.cleanup_policy.compacts() && !batch.summary().null_keys.is_empty() {
                    return Ok(Err(batch.summary().null_keys.clone()));
                }
                let header = batch.header();
                if header.is_transactional() || header.is_control() {
                    return Err(coremq_engine::Error::InvalidBatch {
                        reason: "transactional and control batches are not supported".into(),
                    });
                }
                if let Some(codec) = recompress
                    && header.compression()? != codec
                {
                    let rebuilt = record::recompress(
                        &batch.into_bytes(),
                        codec,
                        config.decompressed_bytes_max,
                    )?;
                    batch = CheckedBatch::new(rebuilt, config.batch_limits())?;
                }
                checked.push(batch);
            }
            let mut first = None;
            for batch in checked {
                let info = partition.append(batch, consistency).await?;
                first.get_or_insert(info);
            }
            let log_start = partition.offsets().log_start;
            Ok(Ok((first.expect("at least one batch"), log_start)))
        })
        .await;
    match appended {
        Ok(Err(keyless)) => {
            let message = format!(
                "Compacted topic cannot accept message without key in topic partition {log}."
            );
            PartitionProduceResponse {
                record_errors: keyless
                    .iter()
                    .map(|&record| BatchIndexAndErrorMessage {
                        batch_index: record as i32,
                        batch_index_error_message: Some(message.clone()),
                    })
                    .collect(),
                ..failed(index, error_code::INVALID_RECORD, message)
            }
        }
        Ok(Ok((info, log_start))) => PartitionProduceResponse {
            index,
            error_code: error_code::NONE,
            base_offset: info.base_offset.0 as i64,
            log_append_time_ms: info.log_append_time.map_or(-1, |time| time.0),
            log_start_offset: log_start.0 as i64,
            ..PartitionProduceResponse::default()
        },
        Err(error) => failed(index, errors::code(&error), error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Bytes {
        Bytes::from((0..100u8).collect::<Vec<u8>>())
    }

    #[test]
    fn records_are_split_out_of_their_frame_without_copies() {
        let frame = frame();
        let records = vec![frame.slice(10..30), Bytes::new(), frame.slice(40..41)];
        let starts: Vec<usize> = records.iter().map(|part| part.as_ptr() as usize).collect();
        let out = writable(frame, records);
        assert_eq!(&out[0][..], &(10..30u8).collect::<Vec<u8>>()[..]);
        assert!(out[1].is_empty());
        assert_eq!(&out[2][..], &[40]);
        assert_eq!(out[0].as_ptr() as usize, starts[0]);
        assert_eq!(out[2].as_ptr() as usize, starts[2]);
    }

    #[test]
    fn records_are_copied_while_their_frame_is_shared() {
        let frame = frame();
        let other_view = frame.clone();
        let records = vec![frame.slice(0..5), frame.slice(5..7)];
        let out = writable(frame, records);
        assert_eq!(&out[0][..], &other_view[0..5]);
        assert_eq!(&out[1][..], &other_view[5..7]);
        assert_ne!(out[0].as_ptr(), other_view.as_ptr());
    }

    #[test]
    fn records_from_elsewhere_or_out_of_order_are_copied() {
        let frame = frame();
        let elsewhere = Bytes::from_static(b"abc");
        let out = writable(frame.clone(), vec![frame.slice(50..60), elsewhere]);
        assert_eq!(&out[0][..], &frame[50..60]);
        assert_eq!(&out[1][..], b"abc");
        let out = writable(frame.clone(), vec![frame.slice(50..60), frame.slice(0..10)]);
        assert_eq!(&out[0][..], &frame[50..60]);
        assert_eq!(&out[1][..], &frame[0..10]);
    }
}
