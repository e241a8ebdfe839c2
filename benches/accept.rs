//! How connections reach the shards: SO_REUSEPORT listeners on every shard (the kernel picks
//! a shard by connection hash) against one acceptor on shard 0 dealing connections out in
//! turn. Both run side by side in one run, on a two-shard in-process broker over loopback:
//! - `connect_request_close`: one client connects, has an ApiVersions answered, and closes
//!   (the accept path's cost, and the handoff's extra hop);
//! - `produce_8_connections`: eight clients, one connection each, produce at once (acks=1),
//!   each request a 16 KiB batch for a partition of each shard, as a client's request for
//!   many partitions would be (what balance across shards is worth, with the same hops
//!   whichever shard serves a connection).
//!
//! The connections each shard serves are printed for every run, from `/metrics`.

mod common;
#[path = "../tests/support/wire.rs"]
mod wire;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coremq_engine::engine::placement;
use coremq_engine::{Compression, TopicPartition};
use coremq_net::broker::{AcceptMode, Broker, BrokerConfig};
use coremq_net::protocol::api::{RequestBody, ResponseBody};
use coremq_net::protocol::frame::{decode_response, encode_request};
use coremq_net::protocol::messages::ApiVersionsRequest;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wire::Wire;

const CLIENTS: usize = 8;
/// Enough partitions that each shard owns at least `CLIENTS` of them.
const PARTITIONS: i32 = 64;
const TOPIC: &str = "spread";
const WARM_UP: Duration = Duration::from_secs(10);

fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(accept: AcceptMode, dir: &std::path::Path) -> (Broker, SocketAddr) {
    let admin = free_address();
    let broker = Broker::start(BrokerConfig {
        data_dir: dir.to_path_buf(),
        kafka_listener: "127.0.0.1:0".parse().unwrap(),
        admin_listener: admin,
        accept,
        shards: 2,
        pin_shards: false,
        offsets_topic_partitions: 1,
        mqtt: coremq_net::mqtt::MqttConfig {
            listener: None,
            ..Default::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap();
    common::create_topic(&broker, TOPIC, PARTITIONS);
    (broker, admin)
}

/// The `coremq_connections` lines of the broker's `/metrics`.
fn connections_by_shard(admin: SocketAddr) -> String {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|line| line.starts_with("coremq_connections{"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Clients with one connection each, every one of them served.
fn connect_clients(address: SocketAddr, frames: &[Bytes]) -> Vec<Wire> {
    frames
        .iter()
        .map(|frame| {
            let mut wire = Wire::connect(address);
            wire.send(frame);
            let response = wire.receive().expect("a Produce response");
            let (_, decoded) = decode_response(0, 9, response).unwrap();
            let ResponseBody::Produce(produced) = decoded else {
                panic!("not a Produce response: {decoded:?}");
            };
            for partition in &produced.responses[0].partition_responses {
                assert_eq!(partition.error_code, 0, "{partition:?}");
            }
            wire
        })
        .collect()
}

/// Every client sends `iterations` requests, all clients at once.
fn produce(clients: &mut [Wire], frames: &[Bytes], iterations: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for (wire, frame) in clients.iter_mut().zip(frames) {
            scope.spawn(move || {
                for _ in 0..iterations {
                    wire.send(frame);
                    wire.receive().expect("a Produce response");
                }
            });
        }
    });
    start.elapsed()
}

fn accept(c: &mut Criterion) {
    let parent = std::env::var("COREMQ_BENCH_DIR").unwrap_or(".".into());
    let api_versions = encode_request(
        &common::header(18, 3),
        &RequestBody::ApiVersions(ApiVersionsRequest::default()),
    );
    let batch = common::batch(160, 100, Compression::None);
    let owned_by = |shard: usize| {
        (0..PARTITIONS).filter(move |&partition| {
            let topic_partition = TopicPartition::new(TOPIC, partition as u32).unwrap();
            placement(&topic_partition, 2, &BTreeMap::new()) == shard
        })
    };
    let frames: Vec<Bytes> = owned_by(0)
        .zip(owned_by(1))
        .take(CLIENTS)
        .map(|(first, second)| common::produce_frame(TOPIC, &[first, second], 1, &batch))
        .collect();
    assert_eq!(frames.len(), CLIENTS);

    // The first broker in a process runs slower for seconds (measured: 1.35x, whichever mode
    // went first); a throwaway one takes that before anything is measured.
    let dir = tempfile::tempdir_in(&parent).unwrap();
    let (broker, _) = start(AcceptMode::ReusePort, dir.path());
    let mut streams = connect_clients(broker.kafka_address, &frames);
    // `cargo bench` passes --bench; the test command's single pass skips the wait.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let warm_until = Instant::now() + if measuring { WARM_UP } else { Duration::ZERO };
    while Instant::now() < warm_until {
        produce(&mut streams, &frames, 100);
    }
    drop(streams);
    broker.shutdown(Duration::from_secs(5)).unwrap();

    for (name, mode) in [
        ("handoff", AcceptMode::Handoff),
        ("reuseport", AcceptMode::ReusePort),
    ] {
        let dir = tempfile::tempdir_in(&parent).unwrap();
        let (broker, admin) = start(mode, dir.path());
        let address = broker.kafka_address;

        let mut group = c.benchmark_group("connect_request_close");
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut wire = Wire::connect(address);
                wire.send(&api_versions);
                wire.receive().expect("an ApiVersions response")
            })
        });
        group.finish();

        let mut streams = connect_clients(address, &frames);
        eprintln!(
            "{name}: {CLIENTS} connections: {}",
            connections_by_shard(admin)
        );
        let mut group = c.benchmark_group("produce_8_connections");
        group.throughput(Throughput::Bytes((2 * CLIENTS * batch.len()) as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| produce(&mut streams, &frames, iterations))
        });
        group.finish();
        drop(streams);
        broker.shutdown(Duration::from_secs(5)).unwrap();
    }
}

criterion_group!(benches, accept);
criterion_main!(benches);
