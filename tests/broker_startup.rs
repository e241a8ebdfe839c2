//! The `coremq` binary's startup and admin surface: settings from a TOML file under flags,
//! clear refusals (bad config, unusable data directory, too little locked memory), and the
//! HTTP admin listener's /health, /ready and /metrics.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/wire.rs"]
mod wire;

use std::process::Command;

use broker::{Broker, free_port};
use coremq_net::protocol::api::{RequestBody, ResponseBody};
use coremq_net::protocol::error_code;
use coremq_net::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use coremq_net::protocol::messages::join_group_request::JoinGroupRequestProtocol;
use coremq_net::protocol::messages::{ApiVersionsRequest, FetchRequest, JoinGroupRequest};
use wire::Wire;

/// Runs the binary with `args` under `sh -c` (for `ulimit`); returns exit code and stderr.
/// A binary that starts instead of refusing is stopped after 30 s (SIGTERM: exit code 0).
fn refused(shell_prefix: &str, args: &[&str]) -> (i32, String) {
    let command = format!(
        "{shell_prefix} exec timeout 30 {} {}",
        env!("CARGO_BIN_EXE_coremq"),
        args.join(" ")
    );
    let output = Command::new("sh").args(["-c", &command]).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_and_environments_are_refused_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "not a directory").unwrap();
    let listener = format!("127.0.0.1:{}", free_port());
    let base = [
        "--kafka-listener",
        &listener,
        "--admin-listener",
        "127.0.0.1:0",
        "--mqtt-listener",
        "127.0.0.1:0",
        "--mqtt-ws-listener",
        "127.0.0.1:0",
    ];

    let data_dir = file.join("data");
    let mut args = base.to_vec();
    args.extend(["--data-dir", data_dir.to_str().unwrap()]);
    let (code, stderr) = refused("", &args);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("data directory") && stderr.contains("unusable"),
        "{stderr}"
    );

    let data_dir = dir.path().join("data");
    let mut args = base.to_vec();
    args.extend(["--data-dir", data_dir.to_str().unwrap()]);
    let (code, stderr) = refused("ulimit -l 256;", &args);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("RLIMIT_MEMLOCK") && stderr.contains("ulimit -l"),
        "{stderr}"
    );

    let config = dir.path().join("coremq.toml");
    std::fs::write(&config, "kafka_listner = \"127.0.0.1:1\"\n").unwrap();
    let (code, stderr) = refused("", &["--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("kafka_listner"), "{stderr}");

    std::fs::write(&config, "accept = \"sideways\"\n").unwrap();
    let (code, stderr) = refused("", &["--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not an accept mode"), "{stderr}");
}

/// Runs the binary as a container's default seccomp profile would: `io_uring_setup` fails
/// with EPERM. The filter is put on a thread of its own, which the child inherits.
#[test]
fn a_seccomp_profile_that_blocks_io_uring_is_refused_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listener = format!("127.0.0.1:{}", free_port());
    let args = [
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--kafka-listener",
        &listener,
        "--admin-listener",
        "127.0.0.1:0",
        "--mqtt-listener",
        "127.0.0.1:0",
        "--mqtt-ws-listener",
        "127.0.0.1:0",
    ]
    .map(String::from);
    let (code, stderr) = std::thread::spawn(move || {
        let blocked = std::collections::BTreeMap::from([(libc::SYS_io_uring_setup, vec![])]);
        let filter = seccompiler::SeccompFilter::new(
            blocked,
            seccompiler::SeccompAction::Allow,
            seccompiler::SeccompAction::Errno(libc::EPERM as u32),
            std::env::consts::ARCH.try_into().unwrap(),
        )
        .unwrap();
        let program: seccompiler::BpfProgram = filter.try_into().unwrap();
        seccompiler::apply_filter(&program).unwrap();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused("", &args)
    })
    .join()
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        stderr.contains("io_uring is unavailable")
            && stderr.contains("seccomp profile")
            && stderr.contains("seccomp=unconfined"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("  "),
        "one line, no runs of spaces: {stderr}"
    );
}

#[test]
fn the_toml_file_sets_what_flags_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coremq.toml");
    let file_port = free_port();
    std::fs::write(
        &config,
        format!("default_partitions = 3\nkafka_listener = \"127.0.0.1:{file_port}\"\n"),
    )
    .unwrap();
    // The flag's listener (set by Broker::start) wins over the file's.
    let broker = Broker::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", file_port)).is_err());
    let metadata = Command::new("kcat")
        .args(["-b", &broker.bootstrap(), "-L", "-J", "-t", "auto"])
        .output()
        .expect("kcat is installed (tools/test-all.sh installs it)");
    let json: serde_json::Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let partitions = json["topics"][0]["partitions"].as_array().unwrap().len();
    assert_eq!(partitions, 3, "default_partitions from the file: {json}");
}

#[test]
fn the_admin_listener_answers_health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    assert_eq!(broker.http_get("/health"), (200, "ok\n".to_string()));
    assert_eq!(broker.http_get("/ready"), (200, "ready\n".to_string()));
    assert_eq!(broker.http_get("/nowhere").0, 404);
    let produced = Command::new("sh")
        .args([
            "-c",
            &format!(
                "printf 'a\\nb\\n' | kcat -b {} -P -t scraped",
                broker.bootstrap()
            ),
        ])
        .status()
        .unwrap();
    assert!(produced.success());
    let (status, metrics) = broker.http_get("/metrics");
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    assert_eq!(value("coremq_records_appended_total "), 2.0);
    assert!(value("coremq_requests_total{api=\"Produce\"} ") >= 1.0);
    assert!(value("coremq_partitions ") >= 1.0);
    assert!(metrics.contains("coremq_fsync_latency_seconds_bucket{le=\"0.001\"}"));
    assert!(value("coremq_request_latency_seconds_count{api=\"Produce\"} ") >= 1.0);
    assert!(value("coremq_request_latency_seconds_bucket{le=\"+Inf\",api=\"Produce\"} ") >= 1.0);
    assert_eq!(
        value("coremq_topic_records_appended_total{topic=\"scraped\"} "),
        2.0
    );
    assert_eq!(
        value("coremq_partition_high_watermark{topic=\"scraped\",partition=\"0\"} "),
        2.0
    );
    assert_eq!(value("coremq_under_replicated_partitions "), 0.0);
    assert_eq!(value("coremq_controller_active "), 1.0);
    assert_eq!(value("coremq_build_info{version=\"0.1.0\"} "), 1.0);
    assert!(broker.stop().success());
}

/// A connection that has had one request answered, so a shard is serving it.
fn served_connection(broker: &Broker) -> Wire {
    let mut wire = Wire::connect(broker.bootstrap());
    wire.call(3, RequestBody::ApiVersions(ApiVersionsRequest::default()));
    wire
}

/// Polls the metrics until each shard serves the given number of connections.
fn wait_for_connections(broker: &Broker, by_shard: [usize; 2]) {
    let lines: Vec<String> = by_shard
        .iter()
        .enumerate()
        .map(|(shard, count)| format!("coremq_connections{{shard=\"{shard}\"}} {count}"))
        .collect();
    wait_for_metrics(broker, &lines);
}

/// Polls the metrics until every one of `lines` is in them.
fn wait_for_metrics(broker: &Broker, lines: &[String]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, metrics) = broker.http_get("/metrics");
        if lines.iter().all(|line| metrics.contains(line)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{lines:?} missing from\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn handoff_from_the_toml_file_deals_connections_to_the_least_loaded_shard() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coremq.toml");
    std::fs::write(&config, "accept = \"handoff\"\n").unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    // The start-up probe's connection is gone first.
    wait_for_connections(&broker, [0, 0]);
    // Equal shards take turns from shard 0, so the even connections land there.
    let mut connections = Vec::new();
    for opened in 1..=6usize {
        connections.push(Some(served_connection(&broker)));
        wait_for_connections(&broker, [opened.div_ceil(2), opened / 2]);
    }
    // Closing the even ones leaves shard 0 empty: the next two connections both go to it
    // (dealing in turn would have sent one to each).
    for even in connections.iter_mut().step_by(2) {
        even.take();
    }
    wait_for_connections(&broker, [0, 3]);
    connections.extend((0..2).map(|_| Some(served_connection(&broker))));
    wait_for_connections(&broker, [2, 3]);
}

/// SIGINT while a long poll waits: the broker stops reading, answers the poll it has read,
/// then flushes and exits 0.
#[test]
fn sigint_answers_the_request_in_flight_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let produced = Command::new("sh")
        .args([
            "-c",
            &format!("printf 'a\\n' | kcat -b {} -P -t drain", broker.bootstrap()),
        ])
        .status()
        .unwrap();
    assert!(produced.success());
    let mut wire = Wire::connect(("127.0.0.1", broker.port));
    let fetch = FetchRequest {
        replica_id: -1,
        max_wait_ms: 5_000,
        min_bytes: 1,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            topic: "drain".into(),
            partitions: vec![FetchPartition {
                partition: 0,
                fetch_offset: 1,
                partition_max_bytes: 1 << 20,
                current_leader_epoch: -1,
                ..FetchPartition::default()
            }],
            ..FetchTopic::default()
        }],
        ..FetchRequest::default()
    };
    const VERSION: i16 = 11;
    let body = RequestBody::Fetch(fetch);
    let key = body.api_key();
    wire.request(VERSION, body);
    // The broker has read the poll once it counted it.
    wait_for_metrics(
        &broker,
        &["coremq_requests_total{api=\"Fetch\"} 1".to_string()],
    );
    let status = broker.stop_with("-INT");
    let ResponseBody::Fetch(response) = wire.response(key, VERSION) else {
        panic!("not a Fetch response");
    };
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, error_code::NONE);
    assert_eq!(partition.high_watermark, 1);
    assert!(
        status.success(),
        "clean exit on SIGINT: {status}\n{}",
        broker.log()
    );
    assert!(broker.log().contains("signal 2"), "{}", broker.log());
}

/// Operator mistakes that once lost data or split traffic: a second broker on the same data
/// directory or the same Kafka port fails at once, naming what it cannot have, while the
/// first keeps serving every record.
#[test]
fn a_second_broker_cannot_share_the_data_directory_or_the_kafka_port() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let first = Broker::start(&data_dir, &[]);
    let pid = first.pid();

    let other_port = format!("127.0.0.1:{}", free_port());
    let (code, stderr) = refused(
        "",
        &[
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--kafka-listener",
            &other_port,
            "--admin-listener",
            "127.0.0.1:0",
            "--mqtt-listener",
            "127.0.0.1:0",
            "--mqtt-ws-listener",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&data_dir.join("logs").display().to_string())
            && stderr.contains("in use")
            && stderr.contains(&format!("process {pid}")),
        "{stderr}"
    );

    // Another data directory, the same Kafka port: SO_REUSEPORT would have let it in.
    let other_dir = dir.path().join("other");
    let (code, stderr) = refused(
        "",
        &[
            "--data-dir",
            other_dir.to_str().unwrap(),
            "--kafka-listener",
            &first.bootstrap(),
            "--admin-listener",
            "127.0.0.1:0",
            "--mqtt-listener",
            "127.0.0.1:0",
            "--mqtt-ws-listener",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&first.bootstrap()) && stderr.contains("address in use"),
        "{stderr}"
    );

    // Every connection still reaches the first broker.
    for _ in 0..20 {
        let mut client = Wire::connect(first.bootstrap());
        let response = client.call(3, RequestBody::ApiVersions(ApiVersionsRequest::default()));
        assert!(matches!(response, ResponseBody::ApiVersions(_)));
    }
}

/// A wildcard listener is refused unless an advertised host is set (Kafka refuses to
/// advertise 0.0.0.0 too); a host name as listener is resolved and advertised; the startup
/// line says what the broker serves.
#[test]
fn listeners_are_checked_and_the_startup_line_names_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let wildcard = format!("0.0.0.0:{}", free_port());
    let (code, stderr) = refused(
        "",
        &[
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--kafka-listener",
            &wildcard,
            "--admin-listener",
            "127.0.0.1:0",
            "--mqtt-listener",
            "127.0.0.1:0",
            "--mqtt-ws-listener",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("wildcard") && stderr.contains("--advertised-host"),
        "{stderr}"
    );

    let port = free_port();
    let broker = Broker::start_with_listener(&data_dir, &format!("localhost:{port}"), &[]);
    let line = broker.log();
    for part in [
        format!("serving Kafka clients on 127.0.0.1:{port}"),
        format!("advertised as localhost:{port}"),
        format!("admin HTTP on 127.0.0.1:{}", broker.admin_port),
        format!(
            "data in {}",
            std::fs::canonicalize(&data_dir).unwrap().display()
        ),
        "2 shards".to_string(),
        "topics fsync before acks=all is answered by default".to_string(),
        format!("coremq {}", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(line.contains(&part), "{part:?} not in {line}");
    }
}

/// SIGTERM while a group join waits (here on a two-minute initial rebalance delay) and its
/// client is gone: the broker answers the join, and exits within its grace. It used to keep
/// one shard alive with the dead client's connection in CLOSE-WAIT for minutes.
#[test]
fn sigterm_with_a_pending_group_join_exits_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(
        &dir.path().join("data"),
        &["--group-initial-rebalance-delay-ms", "120000"],
    );
    // Several groups, so that some are coordinated on the other shard than the connection's
    // (a join waiting there is a cross-shard call the shard's shutdown waits for).
    let mut wire = Wire::connect(("127.0.0.1", broker.port));
    for group in 0..8 {
        wire.request(
            3,
            RequestBody::JoinGroup(JoinGroupRequest {
                group_id: format!("stuck-{group}"),
                session_timeout_ms: 30_000,
                rebalance_timeout_ms: 120_000,
                protocol_type: "consumer".into(),
                protocols: vec![JoinGroupRequestProtocol {
                    name: "range".into(),
                    metadata: bytes::Bytes::new(),
                }],
                ..JoinGroupRequest::default()
            }),
        );
    }
    wait_for_metrics(
        &broker,
        &["coremq_requests_total{api=\"JoinGroup\"} 8".to_string()],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(wire);
    let began = std::time::Instant::now();
    let status = broker.stop();
    let took = began.elapsed();
    assert!(status.success(), "{status}\n{}", broker.log());
    assert!(
        took < std::time::Duration::from_secs(15),
        "shutdown took {took:?}\n{}",
        broker.log()
    );
}

/// `group.min.session.timeout.ms` is a broker setting: a 2 s session is refused with Kafka's
/// default minimum (6 s) and accepted once the minimum is 1 s.
#[test]
fn the_group_session_timeout_bounds_are_settings() {
    let join = |broker: &Broker| {
        let mut wire = Wire::connect(("127.0.0.1", broker.port));
        let response = wire.call(
            3,
            RequestBody::JoinGroup(JoinGroupRequest {
                group_id: "short-sessions".into(),
                session_timeout_ms: 2_000,
                rebalance_timeout_ms: 2_000,
                protocol_type: "consumer".into(),
                protocols: vec![JoinGroupRequestProtocol {
                    name: "range".into(),
                    metadata: bytes::Bytes::new(),
                }],
                ..JoinGroupRequest::default()
            }),
        );
        let ResponseBody::JoinGroup(response) = response else {
            panic!("not a JoinGroup response");
        };
        response.error_code
    };
    let dir = tempfile::tempdir().unwrap();
    let quick = ["--group-initial-rebalance-delay-ms", "0"];
    let default = Broker::start(&dir.path().join("default"), &quick);
    assert_eq!(join(&default), error_code::INVALID_SESSION_TIMEOUT);
    let mut flags = quick.to_vec();
    flags.extend(["--group-min-session-timeout-ms", "1000"]);
    let lowered = Broker::start(&dir.path().join("lowered"), &flags);
    assert_eq!(join(&lowered), error_code::NONE);
}

/// The kernel's timer on the broker's end of the connection from local port `client`:
/// `/proc/net/tcp`'s `tr` (2: keepalive) and when it fires, in clock ticks.
fn server_side_timer(server: u16, client: u16) -> (u32, u64) {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |address: &str| u16::from_str_radix(address.rsplit(':').next().unwrap(), 16);
        if port(fields[1]) == Ok(server) && port(fields[2]) == Ok(client) {
            let (kind, when) = fields[5].split_once(':').unwrap();
            return (
                u32::from_str_radix(kind, 16).unwrap(),
                u64::from_str_radix(when, 16).unwrap(),
            );
        }
    }
    panic!("no connection from port {client} to port {server} in /proc/net/tcp");
}

#[test]
fn tcp_keepalive_settings_arm_probes_on_kafka_and_mqtt_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = refused("", &["--tcp-keepalive-count", "3"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("need --tcp-keepalive-idle-s"), "{stderr}");

    let keepalive = [
        "--tcp-keepalive-idle-s",
        "40",
        "--tcp-keepalive-interval-s",
        "5",
        "--tcp-keepalive-count",
        "4",
    ];
    let broker = Broker::start(&dir.path().join("on"), &keepalive);
    let plain = Broker::start(&dir.path().join("off"), &[]);
    let ticks_per_second = 100;
    for port in [broker.port, broker.mqtt_port()] {
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let local = client.local_addr().unwrap().port();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (kind, when) = server_side_timer(port, local);
        assert_eq!(
            kind, 2,
            "port {port}: no keepalive timer on the broker's side"
        );
        assert!(
            when > 35 * ticks_per_second && when <= 40 * ticks_per_second,
            "port {port}: the first probe is due in {when} ticks, not about 40 s"
        );
    }
    let client = std::net::TcpStream::connect(("127.0.0.1", plain.port)).unwrap();
    let local = client.local_addr().unwrap().port();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(server_side_timer(plain.port, local).0, 0);
}
