//! The Kafka request path, each beside a baseline in the same run:
//! - `produce_decode`: decoding a Produce v9 frame holding one 16 KiB batch (records stay
//!   zero-copy) against copying the frame's bytes once;
//! - `fetch_encode`: encoding a Fetch v12 response with 8 partitions of 16 KiB stored batches
//!   (batches become chunks, not copies) against copying those batches once;
//! - `produce_request`: a whole Produce request handled by an in-process broker (decode,
//!   shard hop, checks, append with fsync, encode) against the same batch appended straight
//!   to a storage engine with the same durability.

mod common;

use std::time::Duration;

use bytes::Bytes;
use coremq_engine::{Compression, TopicPartition};
use coremq_net::broker::{Broker, BrokerConfig};
use coremq_net::protocol::api::ResponseBody;
use coremq_net::protocol::codec::Records;
use coremq_net::protocol::frame::{decode_request, encode_response};
use coremq_net::protocol::messages::FetchResponse;
use coremq_net::protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_lite::future::block_on;

fn codec(c: &mut Criterion) {
    let batch = common::batch(160, 100, Compression::None);
    let frame = common::produce_frame("quotes", &[0], -1, &batch);
    let mut group = c.benchmark_group("produce_decode");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| decode_request(frame.clone()).unwrap())
    });
    group.bench_function("baseline_copy", |b| {
        b.iter(|| Bytes::copy_from_slice(&frame))
    });
    group.finish();

    let response = ResponseBody::Fetch(FetchResponse {
        responses: vec![FetchableTopicResponse {
            topic: "quotes".into(),
            partitions: (0..8)
                .map(|index| PartitionData {
                    partition_index: index,
                    high_watermark: 1_000,
                    records: Some(Records::from(batch.clone())),
                    ..PartitionData::default()
                })
                .collect(),
            ..FetchableTopicResponse::default()
        }],
        ..FetchResponse::default()
    });
    let mut group = c.benchmark_group("fetch_encode");
    group.throughput(Throughput::Bytes(8 * batch.len() as u64));
    group.bench_function("encode", |b| b.iter(|| encode_response(7, 12, &response)));
    group.bench_function("baseline_copy", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(8 * batch.len());
            for _ in 0..8 {
                out.extend_from_slice(&batch);
            }
            out
        })
    });
    group.finish();
}

fn request_path(c: &mut Criterion) {
    let parent = std::env::var("COREMQ_BENCH_DIR").unwrap_or(".".into());
    let dir = tempfile::tempdir_in(parent).unwrap();
    let broker = Broker::start(BrokerConfig {
        data_dir: dir.path().join("broker"),
        kafka_listener: "127.0.0.1:0".parse().unwrap(),
        admin_listener: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        pin_shards: false,
        offsets_topic_partitions: 1,
        mqtt: coremq_net::mqtt::MqttConfig {
            listener: None,
            ..Default::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap();
    common::create_topic(&broker, "quotes", 1);
    let (_engine_dir, engine) = common::engine();
    let handle = engine.handle();
    let log = TopicPartition::new("quotes", 0).unwrap();
    block_on(handle.create_log(&log, None)).unwrap();

    let batch = common::batch(160, 100, Compression::None);
    let frame = common::produce_frame("quotes", &[0], -1, &batch);
    let mut group = c.benchmark_group("produce_request");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("broker", |b| {
        b.iter(|| {
            broker
                .handle_frame(frame.clone(), Duration::from_secs(30))
                .unwrap()
        })
    });
    group.bench_function("baseline_engine_append", |b| {
        b.iter(|| block_on(handle.append(&log, batch.clone())).unwrap())
    });
    group.finish();
    broker.shutdown(Duration::from_secs(5)).unwrap();
    engine.shutdown().unwrap();
}

criterion_group!(benches, codec, request_path);
criterion_main!(benches);
