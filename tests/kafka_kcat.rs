//! End to end with Debian's `kcat` (librdkafka 2.0.2), a client nobody here wrote, against
//! the real binary: metadata, produce and consume with every codec, keys, headers and null
//! values, acks 0/1/all, consuming from earliest, latest and a timestamp, data surviving a
//! restart, and bad frames closing only their own connection.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/kcat.rs"]
mod kcat;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use broker::Broker;

fn kcat(broker: &Broker, args: &[&str], input: &str) -> String {
    kcat::run(&broker.bootstrap(), args, input).unwrap_or_else(|error| {
        panic!(
            "kcat {args:?} failed: {error}\nbroker log:\n{}",
            broker.log()
        )
    })
}

fn consume_json(broker: &Broker, topic: &str, offset: &str) -> Vec<serde_json::Value> {
    kcat(
        broker,
        &["-C", "-t", topic, "-o", offset, "-e", "-J", "-q"],
        "",
    )
    .lines()
    .map(|line| serde_json::from_str(line).expect("kcat -J prints JSON"))
    .collect()
}

#[test]
fn metadata_names_the_broker_and_auto_created_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    kcat(&broker, &["-P", "-t", "auto.created"], "x\n");
    let metadata: serde_json::Value =
        serde_json::from_str(&kcat(&broker, &["-L", "-J"], "")).unwrap();
    let brokers = metadata["brokers"].as_array().unwrap();
    assert_eq!(brokers.len(), 1);
    assert_eq!(brokers[0]["name"], format!("127.0.0.1:{}", broker.port));
    assert_eq!(brokers[0]["id"], 0);
    let topic = metadata["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|topic| topic["topic"] == "auto.created")
        .expect("auto-created topic listed");
    assert_eq!(topic["partitions"].as_array().unwrap().len(), 1);
    assert_eq!(topic["partitions"][0]["leader"], 0);
}

#[test]
fn every_codec_keeps_keys_headers_and_null_values() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    for codec in codecs {
        let input = format!("key-{codec}:value-{codec}\nnull-{codec}:\n");
        kcat(
            &broker,
            &[
                "-P",
                "-t",
                "codecs",
                "-z",
                codec,
                "-K:",
                "-Z",
                "-H",
                "trace=abc",
                "-H",
                "n=1",
            ],
            &input,
        );
    }
    let records = consume_json(&broker, "codecs", "beginning");
    assert_eq!(records.len(), 2 * codecs.len());
    for (index, codec) in codecs.iter().enumerate() {
        let with_value = &records[2 * index];
        assert_eq!(with_value["offset"], 2 * index);
        assert_eq!(with_value["key"], format!("key-{codec}"));
        assert_eq!(with_value["payload"], format!("value-{codec}"));
        assert_eq!(
            with_value["headers"],
            serde_json::json!(["trace", "abc", "n", "1"])
        );
        let null = &records[2 * index + 1];
        assert_eq!(null["key"], format!("null-{codec}"));
        assert!(null["payload"].is_null(), "null value kept: {null}");
    }
}

#[test]
fn acks_zero_one_and_all_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    for acks in ["0", "1", "all"] {
        let input: String = (0..100).map(|n| format!("{acks}-{n}\n")).collect();
        kcat(
            &broker,
            &["-P", "-t", "acks", "-X", &format!("acks={acks}")],
            &input,
        );
    }
    let records = consume_json(&broker, "acks", "beginning");
    let payloads: Vec<&str> = records
        .iter()
        .map(|record| record["payload"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = ["0", "1", "all"]
        .iter()
        .flat_map(|acks| (0..100).map(move |n| format!("{acks}-{n}")))
        .collect();
    assert_eq!(payloads, expected);
}

#[test]
fn consume_from_earliest_latest_and_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    kcat(&broker, &["-P", "-t", "times"], "a\nb\n");
    std::thread::sleep(Duration::from_millis(50));
    let records = consume_json(&broker, "times", "beginning");
    let cut = records[1]["ts"].as_i64().unwrap() + 1;
    std::thread::sleep(Duration::from_millis(50));
    kcat(&broker, &["-P", "-t", "times"], "c\n");
    let from_time = consume_json(&broker, "times", &format!("s@{cut}"));
    assert_eq!(from_time.len(), 1);
    assert_eq!(from_time[0]["payload"], "c");
    assert_eq!(from_time[0]["offset"], 2);
    assert_eq!(consume_json(&broker, "times", "-1")[0]["payload"], "c");

    // A consumer at the end sees only what is produced after it started (long poll).
    let mut tail = Command::new("kcat")
        .args([
            "-b",
            &broker.bootstrap(),
            "-C",
            "-t",
            "times",
            "-o",
            "end",
            "-c",
            "1",
        ])
        .args(["-f", "%s@%o\n"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    kcat(&broker, &["-P", "-t", "times"], "d\n");
    let mut seen = String::new();
    tail.stdout
        .take()
        .unwrap()
        .read_to_string(&mut seen)
        .unwrap();
    assert!(tail.wait().unwrap().success());
    assert_eq!(seen, "d@3\n");
}

#[test]
fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let input: String = (0..1000).map(|n| format!("k{}:v{n}\n", n % 7)).collect();
    kcat(
        &broker,
        &["-P", "-t", "durable", "-K:", "-z", "zstd"],
        &input,
    );
    broker.restart();
    let records = consume_json(&broker, "durable", "beginning");
    assert_eq!(records.len(), 1000);
    for (n, record) in records.iter().enumerate() {
        assert_eq!(record["offset"], n);
        assert_eq!(record["payload"], format!("v{n}"));
    }
    kcat(&broker, &["-P", "-t", "durable"], "after\n");
    assert_eq!(consume_json(&broker, "durable", "-1")[0]["offset"], 1000);
}

#[test]
fn bad_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let frames: [&[u8]; 4] = [
        // An impossible size.
        &[0xff, 0xff, 0xff, 0xf0],
        // Larger than socket_request_max_bytes (100 MiB).
        &[0x10, 0x00, 0x00, 0x00],
        // A frame too short for a header.
        &[0, 0, 0, 2, 0, 18],
        // An unknown API key.
        &[0, 0, 0, 10, 0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0, 0],
    ];
    for frame in frames {
        let mut stream = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(frame).unwrap();
        let mut buffer = [0u8; 16];
        let read = stream.read(&mut buffer).expect("closed, not hung");
        assert_eq!(read, 0, "the broker closes the connection for {frame:?}");
    }
    kcat(&broker, &["-P", "-t", "still.fine"], "ok\n");
    assert_eq!(
        consume_json(&broker, "still.fine", "beginning")[0]["payload"],
        "ok"
    );
    assert!(
        broker.log().contains("closing connection"),
        "{}",
        broker.log()
    );
}
