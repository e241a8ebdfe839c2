//! `coremq-perf` against an in-process coremq broker: each subcommand's JSON summary (the
//! last line) holds what the run did. Assertions are on counts and shapes, never timings.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coremq_net::broker::{Broker, BrokerConfig};
use serde_json::Value;

fn broker(dir: &Path) -> Broker {
    Broker::start(BrokerConfig {
        data_dir: dir.to_path_buf(),
        kafka_listener: "127.0.0.1:0".parse().unwrap(),
        admin_listener: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        pin_shards: false,
        offsets_topic_partitions: 1,
        group_initial_rebalance_delay_ms: 300,
        mqtt: coremq_net::mqtt::MqttConfig {
            listener: None,
            ..Default::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap()
}

/// Runs coremq-perf with `args`; returns its exit status success, stdout and stderr.
fn perf(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_coremq-perf"))
        .args(args)
        .output()
        .expect("coremq-perf runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs coremq-perf with `--json`, expecting success; returns the last line as JSON.
fn summary(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (ok, stdout, stderr) = perf(&args);
    assert!(ok, "coremq-perf {args:?} failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|error| panic!("{error}: {last}"))
}

fn assert_percentiles(latency: &Value, count: u64) {
    assert_eq!(latency["count"], count, "{latency}");
    let at = |key: &str| {
        latency[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {latency}"))
    };
    let order = ["p50", "p90", "p99", "p99_9", "p99_99", "max"].map(at);
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{latency}");
    assert!(order[0] > 0.0);
}

#[test]
fn produce_consume_e2e_and_capacity_report_what_they_did() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let bootstrap = broker.kafka_address.to_string();
    let common = [
        "--bootstrap",
        &bootstrap,
        "--topic",
        "perf",
        "--partitions",
        "4",
    ];
    let histograms = dir.path().join("produce.hlog");

    let mut args = vec!["produce"];
    args.extend(common);
    args.extend([
        "--records",
        "5000",
        "--record-size",
        "100..300",
        "--keys",
        "20",
        "--acks",
        "all",
        "--compression",
        "zstd",
        "--producers",
        "2",
        "--histogram-out",
        histograms.to_str().unwrap(),
    ]);
    let produced = summary(&args);
    assert_eq!(produced["mode"], "produce");
    assert_eq!(produced["produced"]["records"], 5000);
    let bytes = produced["produced"]["bytes"].as_u64().unwrap();
    // Values of 100..300 bytes, keys "key-0".."key-19".
    assert!((5000 * 105..=5000 * 306).contains(&bytes), "{bytes}");
    assert_eq!(produced["errors"], serde_json::json!({}));
    assert_percentiles(&produced["ack_latency_ms"], 5000);
    assert_eq!(produced["config"]["partitions"], 4);
    let log = std::fs::read_to_string(&histograms).unwrap();
    assert!(log.starts_with('#'), "{log}");
    assert!(
        log.lines().any(|line| line.starts_with("Tag=ack,")),
        "{log}"
    );

    let mut args = vec!["consume"];
    args.extend(common);
    args.extend(["--records", "5000", "--consumers", "2"]);
    let consumed = summary(&args);
    assert_eq!(consumed["consumed"]["records"], 5000);
    assert_eq!(consumed["consumed"]["bytes"].as_u64().unwrap(), bytes);
    assert!(consumed["produced"].is_null());

    // A consumer group reads everything and commits; a second run of the group reads only
    // what was produced since.
    let mut args = vec!["consume"];
    args.extend(common);
    args.extend([
        "--records",
        "5000",
        "--consumers",
        "2",
        "--group",
        "readers",
    ]);
    assert_eq!(summary(&args)["consumed"]["records"], 5000);
    let mut args = vec!["produce"];
    args.extend(common);
    args.extend(["--records", "300", "--record-size", "50"]);
    assert_eq!(summary(&args)["produced"]["records"], 300);
    let mut args = vec!["consume"];
    args.extend(common);
    args.extend(["--duration", "3s", "--consumers", "2", "--group", "readers"]);
    let again = summary(&args);
    assert_eq!(again["consumed"]["records"], 300, "{again}");
    assert_eq!(again["consumed"]["bytes"], 300 * 50);

    let mut args = vec!["e2e"];
    args.extend(common);
    args.extend([
        "--duration",
        "2s",
        "--rate",
        "500",
        "--record-size",
        "64",
        "--acks",
        "1",
    ]);
    let e2e = summary(&args);
    let records = e2e["produced"]["records"].as_u64().unwrap();
    assert!(records > 0);
    assert_eq!(
        e2e["consumed"]["records"], records,
        "every record produced came back"
    );
    assert_percentiles(&e2e["e2e_latency_ms"], records);
    assert_percentiles(&e2e["ack_latency_ms"], records);

    let mut args = vec!["capacity"];
    args.extend(common);
    args.extend([
        "--step-duration",
        "1s",
        "--start-rate",
        "200",
        "--step-factor",
        "2",
        "--max-steps",
        "2",
        "--windows",
        "2",
        "--refine",
        "1",
        "--slo-p99-ms",
        "1000",
        "--record-size",
        "200",
        "--target-rate",
        "50000",
        "--target-record-bytes",
        "200",
        "--target-clients",
        "50000",
        "--headroom",
        "0.3",
    ]);
    let capacity = summary(&args);
    assert_eq!(capacity["mode"], "capacity");
    let steps = capacity["steps"].as_array().unwrap();
    assert!((1..=3).contains(&steps.len()), "{capacity}");
    assert_eq!(steps[0]["offered_records_per_s"], 200.0);
    for step in steps {
        // Two windows a step, judged on their median, with the spread and what the host
        // and CPUs did.
        assert_eq!(step["windows"].as_array().unwrap().len(), 2, "{step}");
        let p99 = &step["e2e_p99_ms"];
        let (min, median, max) = (
            p99["min"].as_f64().unwrap(),
            p99["median"].as_f64().unwrap(),
            p99["max"].as_f64().unwrap(),
        );
        assert!(min <= median && median <= max, "{p99}");
        for window in step["windows"].as_array().unwrap() {
            assert!(
                window["wakeup_late_ms"]["wakeups"].as_u64().unwrap() > 100,
                "{window}"
            );
            assert!(window["steal_pct"].as_f64().is_some(), "{window}");
        }
        match step["sustainable"].as_bool().unwrap() {
            true => assert!(step["limit"].is_null()),
            false => assert!(
                ["saturated", "host stalled", "neither"]
                    .contains(&step["limit"]["verdict"].as_str().unwrap()),
                "{step}"
            ),
        }
    }
    for key in [
        "max_sustainable_records_per_s",
        "max_sustainable_mb_s",
        "p99_ms_at_max",
    ] {
        assert!(capacity.get(key).is_some(), "{key} missing: {capacity}");
    }
    match capacity["max_sustainable_records_per_s"].as_f64() {
        Some(max) => {
            // The sizing follows from the measured maximum and the headroom.
            let mb = capacity["max_sustainable_mb_s"].as_f64().unwrap();
            let by_records = 50000.0 / (max * 0.7);
            let by_bytes = 50000.0 * 200.0 / (1024.0 * 1024.0) / (mb * 0.7);
            let expected = by_records.max(by_bytes).ceil().max(1.0) as u64;
            assert_eq!(capacity["brokers_needed"], expected, "{capacity}");
        }
        None => assert!(capacity["brokers_needed"].is_null()),
    }
    assert!(capacity["assumptions"].as_array().unwrap().len() >= 4);

    // An existing topic keeps its partitions, and the run says so; consumers beyond the
    // partition count are reported idle; a consumer asked for more records than there are
    // says how many it found and fails.
    let (ok, stdout, stderr) = perf(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "perf",
        "--partitions",
        "2",
        "--records",
        "10",
        "--json",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("exists with 4 partitions"), "{stderr}");
    let produced: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(produced["config"]["partitions"], 4);
    let mut args = vec!["consume"];
    args.extend(common);
    args.extend(["--records", "100", "--consumers", "6"]);
    let crowded = summary(&args);
    assert_eq!(crowded["idle_consumers"], 2, "{crowded}");
    let (ok, stdout, stderr) = perf(&[
        "consume",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "perf",
        "--records",
        "1000000",
        "--json",
    ]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("asked for 1000000 records but found"),
        "{stderr}"
    );
    broker.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn an_unreachable_cluster_and_bad_options_fail_with_a_message() {
    let (ok, _, stderr) = perf(&["produce", "--bootstrap", "127.0.0.1:1", "--records", "1"]);
    assert!(!ok);
    assert!(stderr.contains("coremq-perf:"), "{stderr}");
    let (ok, _, stderr) = perf(&["produce", "--record-size", "4"]);
    assert!(!ok);
    assert!(stderr.contains("at least 8 bytes"), "{stderr}");
    let (ok, _, stderr) = perf(&["e2e", "--acks", "2"]);
    assert!(!ok);
    assert!(stderr.contains("acks"), "{stderr}");
}

/// A TCP proxy in front of a broker that can drop dead as a SIGKILLed broker does: every
/// connection reset, and new ones refused.
struct Proxy {
    address: std::net::SocketAddr,
    dead: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(listener: TcpListener, target: std::net::SocketAddr) -> Proxy {
        let address = listener.local_addr().unwrap();
        let dead = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (accept_dead, accept_sockets) = (dead.clone(), sockets.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accept_dead.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut list = accept_sockets.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
                list.extend([client, server]);
            }
        });
        Proxy {
            address,
            dead,
            sockets,
        }
    }

    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        for socket in self.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // Wakes the accept loop, which then drops the listener: new connections are refused.
        let _ = TcpStream::connect(self.address);
    }
}

/// The broker dies in the middle of a run: coremq-perf still ends within its duration plus a
/// bounded grace, prints its summary with the failure and what was not acknowledged, and
/// exits non-zero. It used to print "errors 0" progress lines forever.
#[test]
fn a_broker_that_dies_mid_run_ends_the_run_with_a_failed_summary() {
    let dir = tempfile::tempdir().unwrap();
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let broker = Broker::start(BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        kafka_listener: "127.0.0.1:0".parse().unwrap(),
        admin_listener: "127.0.0.1:0".parse().unwrap(),
        advertised_port: Some(front.local_addr().unwrap().port()),
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
    let proxy = Proxy::start(front, broker.kafka_address);
    let bootstrap = proxy.address.to_string();
    let started = Instant::now();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(perf(&[
            "e2e",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "doomed",
            "--rate",
            "2000",
            "--duration",
            "8s",
            "--json",
        ]));
    });
    std::thread::sleep(Duration::from_secs(3));
    proxy.kill();
    let (ok, stdout, stderr) = result
        .recv_timeout(Duration::from_secs(90))
        .expect("coremq-perf ends after its broker died");
    let took = started.elapsed();
    assert!(
        !ok,
        "a run whose broker died must fail:\n{stdout}\n{stderr}"
    );
    // Duration 8 s, drain grace 10 s, stop grace 10 s, and a margin for startup.
    assert!(took < Duration::from_secs(45), "took {took:?}");
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap())
        .unwrap_or_else(|error| panic!("{error}: {stdout}"));
    assert!(summary["failure"].is_string(), "{summary}");
    let produced = summary["produced"]["records"].as_u64().unwrap();
    assert!(
        produced > 0,
        "records were acknowledged before the kill: {summary}"
    );
    assert!(stderr.contains("coremq-perf:"), "{stderr}");
    broker.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn mqtt_workloads_count_what_each_client_published_and_received() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        kafka_listener: "127.0.0.1:0".parse().unwrap(),
        admin_listener: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        pin_shards: false,
        offsets_topic_partitions: 1,
        mqtt: coremq_net::mqtt::MqttConfig {
            listener: Some("127.0.0.1:0".parse().unwrap()),
            websocket_listener: None,
            ..Default::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap();
    let address = broker.mqtt_address.unwrap().to_string();
    // Four publishers on two topics, two subscribers of each: every message reaches two.
    for (qos, version) in [("0", "3.1.1"), ("1", "5"), ("2", "3.1.1")] {
        let run = summary(&[
            "mqtt",
            "--broker",
            &address,
            "--mqtt-version",
            version,
            "--qos",
            qos,
            "--publishers",
            "4",
            "--subscribers",
            "4",
            "--topics",
            "2",
            "--payload",
            "50..150",
            "--messages",
            "400",
        ]);
        assert_eq!(run["mode"], "mqtt");
        assert_eq!(run["produced"]["records"], 400, "{run}");
        assert_eq!(run["consumed"]["records"], 800, "{run}");
        assert_eq!(run["undelivered"], 0, "{run}");
        assert_eq!(run["errors"], serde_json::json!({}), "{run}");
        assert_percentiles(&run["e2e_latency_ms"], 800);
        if qos == "0" {
            assert!(run["ack_latency_ms"].is_null(), "{run}");
        } else {
            assert_percentiles(&run["ack_latency_ms"], 400);
        }
    }
    // One publisher to three wildcard subscribers of three topics: each gets everything.
    let fan_out = summary(&[
        "mqtt",
        "--broker",
        &address,
        "--subscribers",
        "3",
        "--topics",
        "3",
        "--wildcard",
        "--qos",
        "1",
        "--messages",
        "100",
        "--rate",
        "500",
    ]);
    assert_eq!(fan_out["produced"]["records"], 100, "{fan_out}");
    assert_eq!(fan_out["consumed"]["records"], 300, "{fan_out}");

    let pid = std::process::id().to_string();
    let idle = summary(&[
        "mqtt-idle",
        "--broker",
        &address,
        "--connections",
        "50",
        "--hold",
        "1s",
        "--broker-pid",
        &pid,
    ]);
    assert_eq!(idle["connections"], 50, "{idle}");
    assert_eq!(idle["still_open"], 50, "{idle}");
    assert!(
        idle["broker_rss_after_bytes"].as_u64().unwrap() > 0,
        "{idle}"
    );

    // A broker that refuses to listen fails the run with the reason.
    let (ok, _, stderr) = perf(&["mqtt", "--broker", "127.0.0.1:1", "--messages", "1"]);
    assert!(!ok);
    assert!(stderr.contains("connecting to 127.0.0.1:1"), "{stderr}");
    broker.shutdown(Duration::from_secs(5)).unwrap();
}
