//! Fresh brokers under load, many times: the shape of run that used to abort the broker with
//! glibc heap corruption (about 1 run in 10 to 20, more often on a loaded machine) before the
//! glommio-ng fix (docs/design.md). Each round starts a new in-process broker (two shards, so
//! produce, fetch and their replies cross shards), runs `coremq-perf e2e` with one producer
//! and one consumer on a new two-partition topic while two threads keep the cores busy, and
//! checks that every record produced came back and the broker shuts down cleanly. A shard
//! that corrupted the heap would abort this test process. The deterministic check of the
//! glommio race itself is `engine/tests/foreign_waker.rs` under AddressSanitizer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coremq_net::broker::{Broker, BrokerConfig};

const ROUNDS: usize = 6;

#[test]
fn fresh_brokers_serve_producer_and_consumer_while_the_machine_is_loaded() {
    let busy = Arc::new(AtomicBool::new(true));
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                let mut spins = 0u64;
                while busy.load(Ordering::Relaxed) {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            })
        })
        .collect();
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            kafka_listener: "127.0.0.1:0".parse().unwrap(),
            admin_listener: "127.0.0.1:0".parse().unwrap(),
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
        let bootstrap = broker.kafka_address.to_string();
        let topic = format!("stress-{round}");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_coremq-perf"))
            .args([
                "e2e",
                "--bootstrap",
                &bootstrap,
                "--topic",
                &topic,
                "--partitions",
                "2",
                "--record-size",
                "1024",
                "--rate",
                "5000",
                "--linger-ms",
                "1",
                "--batch-size",
                "1048576",
                "--acks",
                "1",
                "--duration",
                "2s",
                "--json",
            ])
            .output()
            .expect("coremq-perf runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "round {round}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap();
        let produced = summary["produced"]["records"].as_u64().unwrap();
        assert!(produced > 0, "round {round}: {summary}");
        assert_eq!(
            summary["consumed"]["records"], produced,
            "round {round}: every record produced came back"
        );
        assert_eq!(summary["errors"], serde_json::json!({}), "round {round}");
        broker.shutdown(Duration::from_secs(10)).unwrap();
    }
    busy.store(false, Ordering::Relaxed);
    for burner in burners {
        burner.join().unwrap();
    }
}
