//! End to end with two Python clients nobody here wrote, against the real binary:
//! confluent-kafka (current librdkafka) and kafka-python (an independent pure-Python
//! implementation). Each scenario is a script in `tests/python/` that asserts what the
//! clients see; these tests start the broker, run the scripts and check what is on disk.
//!
//! The clients live in a virtual environment that `tools/test-all.sh` creates
//! (`target/e2e-venv`); `COREMQ_TEST_PYTHON` names another interpreter that has them.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/python.rs"]
mod python;

use std::process::Command;

use broker::{Broker, free_port};
use coremq_engine::{BatchHeader, Compression};

/// Settings every test broker shares: quick first rebalances (Kafka waits 3 s).
const FLAGS: &[&str] = &["--group-initial-rebalance-delay-ms", "300"];

/// Runs `tests/python/{script}` with `args`; fails the test (with its output and the
/// broker's log) unless it exits 0.
fn run(broker: &Broker, script: &str, args: &[&str]) -> String {
    let dir = python::scripts();
    let output = Command::new(python::interpreter())
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} {args:?} failed:\n{stdout}\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        broker.log()
    );
    println!("{stdout}");
    stdout
}

fn start(name: &str, extra: &[&str]) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let flags: Vec<&str> = FLAGS.iter().chain(extra).copied().collect();
    let broker = Broker::start(&dir.path().join(name), &flags);
    (dir, broker)
}

/// The compression codec of every batch stored in `topic`'s partition 0.
fn stored_codecs(broker: &Broker, topic: &str) -> Vec<Compression> {
    let dir = broker.data_dir.join("logs").join(format!("{topic}-0"));
    let mut codecs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "log") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let mut at = 0;
        while let Ok(header) = BatchHeader::parse(&bytes[at..]) {
            codecs.push(header.compression().unwrap());
            at += header.total_bytes();
        }
    }
    codecs
}

#[test]
fn both_clients_produce_and_consume_every_codec_acks_and_position() {
    let (_dir, broker) = start("clients", &[]);
    run(&broker, "clients.py", &[&broker.bootstrap()]);
    let codecs = stored_codecs(&broker, "recompressed");
    assert!(!codecs.is_empty());
    assert!(
        codecs.iter().all(|codec| *codec == Compression::Zstd),
        "compression.type=zstd stores zstd batches: {codecs:?}"
    );
    assert!(
        stored_codecs(&broker, "codec-kafka-python-none")
            .iter()
            .all(|codec| *codec == Compression::None)
    );
}

#[test]
fn a_group_of_three_rebalances_with_the_eager_assignor() {
    let (_dir, broker) = start("eager", &[]);
    run(&broker, "groups.py", &[&broker.bootstrap(), "range"]);
}

#[test]
fn a_group_of_three_rebalances_with_the_cooperative_assignor() {
    let (_dir, broker) = start("cooperative", &[]);
    run(
        &broker,
        "groups.py",
        &[&broker.bootstrap(), "cooperative-sticky"],
    );
}

#[test]
fn a_restarted_static_member_keeps_its_partitions_without_a_rebalance() {
    let (_dir, broker) = start("static", &[]);
    run(&broker, "static_members.py", &[&broker.bootstrap()]);
}

#[test]
fn committed_offsets_and_data_survive_a_restart() {
    let (dir, mut broker) = start("restart", &[]);
    let state = dir.path().join("state.json");
    let state = state.to_str().unwrap();
    run(
        &broker,
        "restart.py",
        &[&broker.bootstrap(), "before", state],
    );
    broker.restart();
    run(
        &broker,
        "restart.py",
        &[&broker.bootstrap(), "after", state],
    );
}

#[test]
fn idempotent_producers_store_retried_batches_once() {
    let proxy = free_port().to_string();
    let (_dir, broker) = start("idempotence", &["--advertised-port", &proxy]);
    run(
        &broker,
        "idempotence.py",
        &[&proxy, &broker.port.to_string()],
    );
    let (status, metrics) = broker.http_get("/metrics");
    assert_eq!(status, 200);
    let duplicates: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("coremq_duplicate_batches_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the duplicate counter is exported");
    assert!(
        duplicates > 0,
        "the retries reached the broker as duplicates"
    );
}

#[test]
fn admin_operations_work_from_both_clients() {
    let (_dir, mut broker) = start("admin", &[]);
    run(&broker, "admin.py", &[&broker.bootstrap()]);
    broker.restart();
    run(&broker, "admin.py", &[&broker.bootstrap(), "after-restart"]);
}

/// Keyless records on a compacted topic and transactions are refused at once, every
/// operation is authorized, an emptied group keeps its protocol type.
#[test]
fn conformance_gaps_the_client_suites_found() {
    let (_dir, broker) = start("conformance", &[]);
    run(&broker, "conformance.py", &[&broker.bootstrap()]);
}
