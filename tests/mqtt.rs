//! MQTT end to end against the real binary, with clients nobody here wrote: mosquitto_pub
//! and mosquitto_sub (Debian's mosquitto-clients) at protocol levels 3, 4 and 5, paho-mqtt
//! 2.x (scripts in `tests/python/mqtt_*.py`), and kcat and confluent-kafka on the Kafka side
//! of the same log. `tools/test-all.sh` installs them all.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/python.rs"]
mod python;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use broker::Broker;

fn start(name: &str, extra: &[&str]) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join(name), extra);
    (dir, broker)
}

/// A running `mosquitto_sub` whose messages arrive on a channel, one line each.
struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Subscriber {
    /// Starts `mosquitto_sub` with `args` and waits for its SUBACK, so what is published
    /// afterwards is delivered to it.
    fn start(broker: &Broker, args: &[&str]) -> Subscriber {
        let port = broker.mqtt_port().to_string();
        // Line-buffered: mosquitto_sub's debug lines (the SUBACK) are not flushed otherwise.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port, "-d"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub runs (apt-get install mosquitto-clients)");
        let (send, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let subscriber = Subscriber { child, lines };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = subscriber
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("mosquitto_sub got no SUBACK: {}", broker.log()));
            if line.contains("received SUBACK") {
                return subscriber;
            }
        }
    }

    /// The next `count` messages (lines that are not mosquitto_sub's debug output).
    fn messages(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut messages = Vec::new();
        while messages.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("{} of {count} messages came: {messages:?}", messages.len());
            };
            if !line.starts_with("Client ") && !line.starts_with("Subscribed") {
                messages.push(line);
            }
        }
        messages
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mosquitto_pub` with `args`; fails the test unless it exits 0.
fn publish(broker: &Broker, args: &[&str]) {
    let port = broker.mqtt_port().to_string();
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args)
        .output()
        .expect("mosquitto_pub runs");
    assert!(
        output.status.success(),
        "mosquitto_pub {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs kcat against the broker's Kafka listener with `args`, feeding it `input`.
fn kcat(broker: &Broker, args: &[&str], input: &str) -> String {
    let mut child = Command::new("kcat")
        .args(["-b", &broker.bootstrap()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kcat {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn mosquitto_clients_publish_and_subscribe_at_every_level_and_qos() {
    let (_dir, broker) = start("levels", &[]);
    for version in ["mqttv31", "mqttv311", "mqttv5"] {
        let filter = format!("{version}/#");
        let subscriber =
            Subscriber::start(&broker, &["-V", version, "-q", "2", "-v", "-t", &filter]);
        for qos in ["0", "1", "2"] {
            let topic = format!("{version}/q{qos}");
            let message = format!("m{qos}");
            publish(
                &broker,
                &["-V", version, "-q", qos, "-t", &topic, "-m", &message],
            );
        }
        assert_eq!(
            subscriber.messages(3),
            [
                format!("{version}/q0 m0"),
                format!("{version}/q1 m1"),
                format!("{version}/q2 m2"),
            ]
        );
    }
}

#[test]
fn an_mqtt_publish_is_a_kafka_record_keyed_by_its_topic_with_headers() {
    let (_dir, broker) = start("to-kafka", &["--mqtt-topic-map", "sensors/#=sensors"]);
    for value in ["21.5", "21.7"] {
        publish(
            &broker,
            &[
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-i",
                "thermometer",
                "-t",
                "sensors/1/temp",
                "-m",
                value,
                "-D",
                "publish",
                "user-property",
                "unit",
                "celsius",
                "-D",
                "publish",
                "content-type",
                "text/plain",
            ],
        );
    }
    let records = kcat(
        &broker,
        &["-C", "-t", "sensors", "-e", "-q", "-f", "%k|%s|%h\n"],
        "",
    );
    let lines: Vec<&str> = records.lines().collect();
    assert_eq!(lines.len(), 2, "{records}");
    for (line, value) in lines.iter().zip(["21.5", "21.7"]) {
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(&fields[..2], ["sensors/1/temp", value], "{line}");
        for header in [
            "mqtt.qos=1",
            "mqtt.client_id=thermometer",
            "mqtt.content_type=text/plain",
            "unit=celsius",
        ] {
            assert!(
                fields[2].split(',').any(|h| h == header),
                "{header} in {line}"
            );
        }
    }
    // The unmapped default topic got nothing.
    let default = kcat(&broker, &["-C", "-t", "mqtt", "-e", "-q", "-f", "%k\n"], "");
    assert_eq!(default, "");
}

#[test]
fn a_kafka_record_reaches_mqtt_subscribers_of_its_key() {
    let (_dir, broker) = start("from-kafka", &["--mqtt-topic-map", "quotes/#=quotes"]);
    let subscriber = Subscriber::start(
        &broker,
        &[
            "-V", "mqttv5", "-q", "1", "-t", "quotes/+", "-F", "%t %p %P",
        ],
    );
    let other = Subscriber::start(&broker, &["-V", "mqttv311", "-t", "quotes/MSFT", "-v"]);
    kcat(
        &broker,
        &["-P", "-t", "quotes", "-K", ":", "-H", "source=kafka"],
        "quotes/AAPL:187.3\nquotes/MSFT:411.2\n",
    );
    // Two keys, maybe two partitions: no order between them.
    let mut messages = subscriber.messages(2);
    messages.sort();
    assert_eq!(
        messages,
        [
            "quotes/AAPL 187.3 source:kafka",
            "quotes/MSFT 411.2 source:kafka"
        ]
    );
    assert_eq!(other.messages(1), ["quotes/MSFT 411.2"]);
}
