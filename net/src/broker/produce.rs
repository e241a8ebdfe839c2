//! Produce: each partition's record batches checked (framing here, CRC-32C, magic, counts
//! and sizes in the engine) and appended in order; partitions in parallel, each on the
//! shard that owns it. acks=all waits for the log's durability policy (the fdatasync under
//! `always`); acks=1 and acks=0 only for the write to the file, as on a Kafka or Redpanda
//! leader; acks=0 gets no answer.

use std::rc::Rc;

use bytes::Bytes;
use coremq_engine::batch::{self, CheckedBatch};
use coremq_engine::{Ack, Compression, TopicPartition, record};

use super::groups::OFFSETS_TOPIC;
use super::{Context, configs, errors};
use crate::protocol::error_code;
use crate::protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use crate::protocol::messages::{ProduceRequest, ProduceResponse};

/// A partition's answer: known at once (refused), or its append running in parallel.
enum Pending {
    Done(PartitionProduceResponse),
    Appending(glommio::Task<PartitionProduceResponse>),
}

pub async fn handle(context: &Rc<Context>, request: ProduceRequest) -> Option<ProduceResponse> {
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
    let ack = if acks == -1 {
        Ack::Policy
    } else {
        Ack::Written
    };
    let table = context.topics();
    let mut pending = Vec::new();
    for topic_data in request.topic_data {
        let topic = table.get(&topic_data.name).cloned();
        let mut partitions = Vec::new();
        for partition_data in topic_data.partition_data {
            let index = partition_data.index;
            let log = topic
                .as_ref()
                .filter(|topic| topic.name != OFFSETS_TOPIC)
                .and_then(|topic| topic.log(index));
            let failure = match (&refuse, log.is_some(), &partition_data.records) {
                (Some(refusal), _, _) => Some(refusal.clone()),
                (None, false, _) => Some((
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("{}-{index} does not exist", topic_data.name),
                )),
                (None, true, None) => Some((error_code::INVALID_RECORD, "no records".into())),
                (None, true, Some(_)) => None,
            };
            if let Some((code, message)) = failure {
                partitions.push(Pending::Done(failed(index, code, message)));
                continue;
            }
            let log = log.expect("checked above");
            let records = partition_data.records.expect("checked above").to_bytes();
            let context = context.clone();
            let recompress = topic.as_deref().and_then(configs::recompression);
            partitions.push(Pending::Appending(glommio::spawn_local(async move {
                append(&context, &log, index, records, recompress, ack).await
            })));
        }
        pending.push((topic_data.name, partitions));
    }
    let mut responses = Vec::with_capacity(pending.len());
    for (name, partitions) in pending {
        let mut partition_responses = Vec::with_capacity(partitions.len());
        for partition in partitions {
            partition_responses.push(match partition {
                Pending::Done(response) => response,
                Pending::Appending(task) => task.await,
            });
        }
        responses.push(TopicProduceResponse {
            name,
            partition_responses,
        });
    }
    (acks != 0).then(|| ProduceResponse {
        responses,
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

/// Appends every batch of `records` in order, on the shard owning the log: all batches are
/// checked first (a bad one fails the partition with nothing stored), recompressed when the
/// topic sets `compression.type`, then appended. The answer carries the first batch's offset.
async fn append(
    context: &Context,
    log: &TopicPartition,
    index: i32,
    records: Bytes,
    recompress: Option<Compression>,
    ack: Ack,
) -> PartitionProduceResponse {
    let mut batches = Vec::new();
    let mut covered = 0;
    for frame in batch::frames(&records) {
        batches.push(records.slice(frame.position..frame.end()));
        covered = frame.end();
    }
    if batches.is_empty() || covered != records.len() {
        return failed(
            index,
            error_code::CORRUPT_MESSAGE,
            format!(
                "records hold {} bytes that are not whole record batches",
                records.len() - covered
            ),
        );
    }
    let shard = context.handle.shard_of(log);
    let target = log.clone();
    let appended = context
        .handle
        .on_shard(shard, move |shard| async move {
            let log = shard.log(&target)?;
            let config = log.config();
            let mut checked = Vec::with_capacity(batches.len());
            for batch in batches {
                let mut batch = CheckedBatch::new(batch, config.batch_bytes_max)?;
                let header = batch.header();
                if header.is_transactional() || header.is_control() {
                    return Err(coremq_engine::Error::InvalidBatch {
                        reason: "transactional and control batches are not supported".into(),
                    });
                }
                if let Some(codec) = recompress {
                    let rebuilt =
                        record::recompress(batch.bytes(), codec, config.decompressed_bytes_max)?;
                    batch = CheckedBatch::new(rebuilt, config.batch_bytes_max)?;
                }
                checked.push(batch);
            }
            let mut first = None;
            for batch in checked {
                let info = log.append_checked(batch, ack).await?;
                first.get_or_insert(info);
            }
            let log_start = log.offsets().log_start;
            Ok((first.expect("at least one batch"), log_start))
        })
        .await;
    match appended {
        Ok((info, log_start)) => PartitionProduceResponse {
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
