//! Hostile or careless connections get closed, each with one log line at most, counted in
//! `/metrics`: idle ones (Kafka's `connections.max.idle.ms`), ones whose request trickles in
//! (slowloris, or a size prefix announcing bytes that never come), ones over
//! `max_connections` or `max_connections_per_ip`. None of them was ever closed before:
//! 200 slowloris, 2,000 idle and 50 half-sent 100 MiB frames were all kept open. A client
//! that waits on a long poll is not idle, and an active one is never closed.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/wire.rs"]
mod wire;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use broker::Broker;
use coremq_net::protocol::api::{RequestBody, ResponseBody};
use coremq_net::protocol::error_code;
use coremq_net::protocol::messages::create_topics_request::CreatableTopic;
use coremq_net::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use coremq_net::protocol::messages::{ApiVersionsRequest, CreateTopicsRequest, FetchRequest};
use wire::Wire;

/// Whether the broker closes `stream` within `limit` (a read sees the end or a reset).
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn api_versions(wire: &mut Wire) {
    let response = wire.call(3, RequestBody::ApiVersions(ApiVersionsRequest::default()));
    assert!(matches!(response, ResponseBody::ApiVersions(_)));
}

/// The value of a `/metrics` line starting with `name`, 0 when absent.
fn metric(broker: &Broker, name: &str) -> u64 {
    let (_, body) = broker.http_get("/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn idle_and_trickling_connections_are_closed_but_waiting_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        &[
            "--connections-max-idle-ms",
            "1000",
            "--request-read-timeout-ms",
            "1000",
        ],
    );
    let address = ("127.0.0.1", broker.port);

    let mut idle = TcpStream::connect(address).unwrap();
    let mut announced = TcpStream::connect(address).unwrap();
    announced.write_all(&(100i32 << 20).to_be_bytes()).unwrap();
    announced.write_all(b"x").unwrap();
    let mut half_prefix = TcpStream::connect(address).unwrap();
    half_prefix.write_all(&[0]).unwrap();
    // A well-formed request, one byte every 300 ms.
    let mut slowloris = TcpStream::connect(address).unwrap();
    let trickle = std::thread::spawn({
        let mut stream = slowloris.try_clone().unwrap();
        move || {
            let request = coremq_net::protocol::frame::encode_request(
                &coremq_net::protocol::messages::RequestHeader {
                    request_api_key: 18,
                    request_api_version: 3,
                    correlation_id: 1,
                    client_id: Some("slow".into()),
                },
                &RequestBody::ApiVersions(ApiVersionsRequest::default()),
            );
            let mut framed = (request.len() as i32).to_be_bytes().to_vec();
            framed.extend_from_slice(&request);
            for byte in framed {
                if stream.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    });

    // An active client and one waiting on a long poll (2.5 s, longer than the idle limit).
    let mut active = Wire::connect(address);
    let mut polling = Wire::connect(address);
    let response = polling.call(
        7,
        RequestBody::CreateTopics(CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: "quiet".into(),
                num_partitions: 1,
                replication_factor: 1,
                ..CreatableTopic::default()
            }],
            timeout_ms: 30_000,
            ..CreateTopicsRequest::default()
        }),
    );
    let ResponseBody::CreateTopics(created) = response else {
        panic!("not a CreateTopics response");
    };
    assert_eq!(created.topics[0].error_code, error_code::NONE);
    let fetch = RequestBody::Fetch(FetchRequest {
        replica_id: -1,
        max_wait_ms: 2_500,
        min_bytes: 1,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            topic: "quiet".into(),
            partitions: vec![FetchPartition {
                partition: 0,
                fetch_offset: 0,
                partition_max_bytes: 1 << 20,
                current_leader_epoch: -1,
                ..FetchPartition::default()
            }],
            ..FetchTopic::default()
        }],
        ..FetchRequest::default()
    });
    polling.request(11, fetch);
    for _ in 0..6 {
        api_versions(&mut active);
        std::thread::sleep(Duration::from_millis(500));
    }
    let ResponseBody::Fetch(answer) = polling.response(1, 11) else {
        panic!("not a Fetch response");
    };
    assert_eq!(
        answer.responses[0].partitions[0].error_code,
        error_code::NONE
    );
    api_versions(&mut active);

    for (what, stream) in [
        ("idle", &mut idle),
        ("100 MiB announced, one byte sent", &mut announced),
        ("half a size prefix", &mut half_prefix),
        ("slowloris", &mut slowloris),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(5)),
            "{what} still open"
        );
    }
    trickle.join().unwrap();
    let log = broker.log();
    assert!(log.contains("connections_max_idle_ms"), "{log}");
    assert!(log.contains("request_read_timeout_ms"), "{log}");
    assert!(metric(&broker, "coremq_connections_closed_total{reason=\"idle\"}") >= 1);
    assert_eq!(
        metric(
            &broker,
            "coremq_connections_closed_total{reason=\"slow_request\"}"
        ),
        3
    );
}

#[test]
fn connections_over_the_limits_are_closed_as_they_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("all"), &["--max-connections", "3"]);
    let address = ("127.0.0.1", broker.port);
    let mut open: Vec<Wire> = (0..3).map(|_| Wire::connect(address)).collect();
    for wire in &mut open {
        api_versions(wire);
    }
    let mut fourth = TcpStream::connect(address).unwrap();
    assert!(closed_within(&mut fourth, Duration::from_secs(5)));
    drop(open.pop());
    // The closed connection's place frees once the broker sees it go.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = TcpStream::connect(address).unwrap();
        if !closed_within(&mut again, Duration::from_millis(300)) {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed");
    }
    assert!(
        metric(
            &broker,
            "coremq_connections_closed_total{reason=\"max_connections\"}"
        ) >= 1
    );

    let per_ip = Broker::start(&dir.path().join("ip"), &["--max-connections-per-ip", "2"]);
    let address = ("127.0.0.1", per_ip.port);
    let mut two: Vec<Wire> = (0..2).map(|_| Wire::connect(address)).collect();
    for wire in &mut two {
        api_versions(wire);
    }
    let mut third = TcpStream::connect(address).unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(5)));
    for wire in &mut two {
        api_versions(wire);
    }
    assert!(
        per_ip.log().contains("max_connections_per_ip is 2"),
        "{}",
        per_ip.log()
    );
}

/// 60 connections sending garbage: at most 10 lines per shard each window (the burst is
/// shorter than two), the rest summed up in one line per shard, every one counted.
#[test]
fn close_lines_are_rate_limited_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    for _ in 0..60 {
        let mut stream = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
        stream.write_all(&(-5i32).to_be_bytes()).unwrap();
        assert!(closed_within(&mut stream, Duration::from_secs(5)));
    }
    assert_eq!(
        metric(
            &broker,
            "coremq_connections_closed_total{reason=\"bad_request\"}"
        ),
        60
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !broker.log().contains("more connections in the last") {
        assert!(
            Instant::now() < deadline,
            "no summary line: {}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = broker.log();
    let lines = log.matches("closing connection from").count();
    // 10 a shard each window; the burst may straddle a window's end on either shard.
    assert!((10..=40).contains(&lines), "{lines} close lines:\n{log}");
    let summed: u64 = log
        .lines()
        .filter(|line| line.contains("more connections in the last"))
        .filter_map(|line| {
            line.split("bad_request=")
                .nth(1)?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(lines as u64 + summed, 60, "{log}");
}
