//! Structure-aware Produce requests (`arbitrary`), handled by a running broker (one shard, a
//! temporary data directory): record batches the fuzzer builds field by field, so they pass
//! the framing and CRC checks and reach the log's `append`, some of them damaged afterwards
//! (a flipped byte, a cut) to reach each check behind the CRC. Every request must get a
//! well-formed Produce response naming each partition it sent; an undamaged batch without
//! producer fields sent with acks=1 to an existing partition must be stored.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use coremq_engine::{BatchBuilder, Compression, Timestamp};
use coremq_net::broker::Broker;
use coremq_net::protocol::api::{RequestBody, ResponseBody};
use coremq_net::protocol::frame::{decode_response, encode_request};
use coremq_net::protocol::messages::create_topics_request::CreatableTopic;
use coremq_net::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use coremq_net::protocol::messages::{
    CreateTopicsRequest, ProduceRequest, ProduceResponse, RequestHeader,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[path = "shared/broker.rs"]
mod shared;

const TOPIC: &str = "fuzz";
const PARTITIONS: i32 = 2;

#[derive(Debug, Arbitrary)]
struct Input {
    version: u8,
    acks: u8,
    topics: Vec<TopicInput>,
}

#[derive(Debug, Arbitrary)]
struct TopicInput {
    /// Most requests go to the existing topic; the rest to a name of the fuzzer's.
    other_name: Option<String>,
    partitions: Vec<PartitionInput>,
}

#[derive(Debug, Arbitrary)]
struct PartitionInput {
    index: i8,
    batches: Vec<BatchInput>,
    /// A byte of the partition's records to flip (position, bits).
    flip: Option<(u16, u8)>,
    /// Bytes to cut from the end of the partition's records.
    cut: Option<u8>,
}

#[derive(Debug, Arbitrary)]
struct BatchInput {
    codec: u8,
    timestamp: i64,
    producer: Option<(i64, i16, i32)>,
    records: Vec<RecordInput>,
}

#[derive(Debug, Arbitrary)]
struct RecordInput {
    timestamp_delta: i16,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn request(api_key: i16, version: i16, body: RequestBody) -> Bytes {
    let header = RequestHeader {
        request_api_key: api_key,
        request_api_version: version,
        correlation_id: 7,
        client_id: Some("fuzz".into()),
    };
    encode_request(&header, &body)
}

fn broker() -> &'static Broker {
    static BROKER: OnceLock<(tempfile::TempDir, Broker)> = OnceLock::new();
    let (_, broker) = BROKER.get_or_init(|| {
        let (dir, broker) = shared::start(|config| {
            config.offsets_topic_partitions = 1;
            config.auto_create_topics = false;
        });
        let create = CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: TOPIC.into(),
                num_partitions: PARTITIONS,
                replication_factor: 1,
                ..CreatableTopic::default()
            }],
            timeout_ms: 5_000,
            ..CreateTopicsRequest::default()
        };
        let frame = request(19, 5, RequestBody::CreateTopics(create));
        broker
            .handle_frame(frame, Duration::from_secs(5))
            .expect("CreateTopics is answered");
        (dir, broker)
    });
    broker
}

fn build(batch: &BatchInput) -> Bytes {
    let codec = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ][usize::from(batch.codec) % 5];
    let mut builder = BatchBuilder::new(codec);
    if let Some((id, epoch, sequence)) = batch.producer {
        builder = builder.producer(id, epoch, sequence);
    }
    for record in batch.records.iter().take(50) {
        let headers: Vec<_> = record
            .headers
            .iter()
            .take(4)
            .map(|(key, value)| coremq_engine::Header {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: value.clone().map(Bytes::from),
            })
            .collect();
        let timestamp = Timestamp(
            batch
                .timestamp
                .wrapping_add(i64::from(record.timestamp_delta)),
        );
        builder.push(
            timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
    }
    builder.build()
}

fuzz_target!(|input: Input| {
    let version = 3 + i16::from(input.version % 9);
    let acks = [0, 1, -1][usize::from(input.acks % 3)];
    // (topic, partition, whether the batches must be stored)
    let mut expected = Vec::new();
    let mut topic_data = Vec::new();
    for topic in input.topics.iter().take(3) {
        let name = topic.other_name.clone().unwrap_or_else(|| TOPIC.into());
        let mut partition_data = Vec::new();
        for partition in topic.partitions.iter().take(3) {
            let batches: Vec<_> = partition
                .batches
                .iter()
                .take(4)
                .filter(|b| !b.records.is_empty())
                .collect();
            let mut records: Vec<u8> = batches
                .iter()
                .flat_map(|batch| build(batch).to_vec())
                .collect();
            if let Some((position, bits)) = partition.flip
                && !records.is_empty()
            {
                let at = usize::from(position) % records.len();
                records[at] ^= bits.max(1);
            }
            if let Some(cut) = partition.cut {
                records.truncate(records.len().saturating_sub(usize::from(cut).max(1)));
            }
            let intact = partition.flip.is_none() && partition.cut.is_none();
            let must_store = intact
                && !batches.is_empty()
                && name == TOPIC
                && (0..PARTITIONS).contains(&i32::from(partition.index))
                && batches.iter().all(|batch| batch.producer.is_none());
            expected.push((name.clone(), i32::from(partition.index), must_store));
            partition_data.push(PartitionProduceData {
                index: i32::from(partition.index),
                records: Some(coremq_net::protocol::codec::Records::new(vec![
                    Bytes::from(records),
                ])),
            });
        }
        topic_data.push(TopicProduceData {
            name,
            partition_data,
        });
    }
    let produce = ProduceRequest {
        acks,
        timeout_ms: 1_000,
        topic_data,
        ..ProduceRequest::default()
    };
    let frame = request(0, version, RequestBody::Produce(produce));
    let answer = broker().handle_frame(frame, Duration::from_secs(5));
    if acks == 0 {
        return;
    }
    let chunks = answer.expect("a produce request with acks is answered");
    let frame: Vec<u8> = chunks.iter().flat_map(|chunk| chunk.to_vec()).collect();
    let (_, body) = decode_response(0, version, Bytes::from(frame[4..].to_vec()))
        .expect("the answer is a well-formed Produce response");
    let ResponseBody::Produce(ProduceResponse { responses, .. }) = body else {
        panic!("a Produce request gets a Produce response");
    };
    for (name, index, must_store) in &expected {
        // A partition named twice gets two answers that cannot be told apart.
        let named = expected
            .iter()
            .filter(|(n, i, _)| (n, i) == (name, index))
            .count();
        let must_store = *must_store && named == 1;
        let partition = responses
            .iter()
            .filter(|topic| &topic.name == name)
            .flat_map(|topic| topic.partition_responses.iter())
            .find(|partition| partition.index == *index);
        let partition = partition.unwrap_or_else(|| panic!("no answer for {name}-{index}"));
        if must_store && acks == 1 {
            assert_eq!(
                partition.error_code, 0,
                "{name}-{index} was refused: {partition:?}"
            );
        }
    }
});
