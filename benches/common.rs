//! Inputs shared by the benches.
#![allow(dead_code)]

use bytes::Bytes;
use coremq_engine::{BatchBuilder, Compression, Engine, EngineConfig, Timestamp};
use coremq_net::broker::Broker;
use coremq_net::protocol::api::RequestBody;
use coremq_net::protocol::codec::Records;
use coremq_net::protocol::frame::encode_request;
use coremq_net::protocol::messages::create_topics_request::CreatableTopic;
use coremq_net::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use coremq_net::protocol::messages::{CreateTopicsRequest, ProduceRequest, RequestHeader};

/// A one-shard engine in a temporary directory under `COREMQ_BENCH_DIR` (default: the
/// current directory, so it measures the project's disk rather than a tmpfs).
pub fn engine() -> (tempfile::TempDir, Engine) {
    let parent = std::env::var("COREMQ_BENCH_DIR").unwrap_or(".".into());
    let dir = tempfile::tempdir_in(parent).unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.shards = 1;
    let engine = Engine::start(config).unwrap();
    (dir, engine)
}

/// Quote-like records: a short symbol key and a `value_bytes` payload that compresses the
/// way market data does (some repetition, some noise).
pub fn batch(records: u32, value_bytes: usize, codec: Compression) -> Bytes {
    let mut builder = BatchBuilder::new(codec);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..records {
        let mut value =
            format!("{{\"px\":{}.{},\"qty\":{}}}", 100 + n % 7, n % 100, n % 13).into_bytes();
        while value.len() < value_bytes {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            value.push(b'a' + (state % 16) as u8);
        }
        value.truncate(value_bytes);
        let key = format!("SYM{}", n % 50);
        builder.push(
            Timestamp(1_700_000_000_000 + i64::from(n)),
            Some(key.as_bytes()),
            Some(&value),
            &[],
        );
    }
    builder.build()
}

pub fn header(api_key: i16, version: i16) -> RequestHeader {
    RequestHeader {
        request_api_key: api_key,
        request_api_version: version,
        correlation_id: 7,
        client_id: Some("bench".into()),
    }
}

/// A Produce v9 frame (no size prefix) carrying `batch` to each of `partitions`.
pub fn produce_frame(topic: &str, partitions: &[i32], acks: i16, batch: &Bytes) -> Bytes {
    let body = RequestBody::Produce(ProduceRequest {
        acks,
        timeout_ms: 30_000,
        topic_data: vec![TopicProduceData {
            name: topic.into(),
            partition_data: partitions
                .iter()
                .map(|&index| PartitionProduceData {
                    index,
                    records: Some(Records::from(batch.clone())),
                })
                .collect(),
        }],
        ..ProduceRequest::default()
    });
    encode_request(&header(0, 9), &body)
}

/// Creates `topic` with `partitions` on an in-process broker.
pub fn create_topic(broker: &Broker, topic: &str, partitions: i32) {
    let create = RequestBody::CreateTopics(CreateTopicsRequest {
        topics: vec![CreatableTopic {
            name: topic.into(),
            num_partitions: partitions,
            replication_factor: 1,
            ..CreatableTopic::default()
        }],
        timeout_ms: 30_000,
        ..CreateTopicsRequest::default()
    });
    broker
        .handle_frame(
            encode_request(&header(19, 5), &create),
            std::time::Duration::from_secs(30),
        )
        .unwrap();
}
