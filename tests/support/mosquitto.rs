//! Debian's mosquitto-clients against a broker's MQTT listener: `mosquitto_sub` running
//! beside the test, its messages on a channel, and `mosquitto_pub` runs.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::broker::Broker;

/// A running `mosquitto_sub` whose messages arrive on a channel, one line each.
pub struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Messages that came before the SUBACK (a resumed session's queue).
    early: RefCell<VecDeque<String>>,
}

/// Whether a line of `mosquitto_sub -d` is a message, not its debug output.
fn is_message(line: &str) -> bool {
    !line.starts_with("Client ") && !line.starts_with("Subscribed")
}

impl Subscriber {
    /// Starts `mosquitto_sub` with `args` and waits for its SUBACK, so what is published
    /// afterwards is delivered to it (messages before it are kept).
    pub fn start(broker: &Broker, args: &[&str]) -> Subscriber {
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
        let subscriber = Subscriber {
            child,
            lines,
            early: RefCell::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = subscriber
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("mosquitto_sub got no SUBACK: {}", broker.log()));
            if line.contains("received SUBACK") {
                return subscriber;
            }
            if is_message(&line) {
                subscriber.early.borrow_mut().push_back(line);
            }
        }
    }

    /// The next `count` messages (lines that are not mosquitto_sub's debug output).
    pub fn messages(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut messages = Vec::new();
        while messages.len() < count
            && let Some(line) = self.early.borrow_mut().pop_front()
        {
            messages.push(line);
        }
        while messages.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("{} of {count} messages came: {messages:?}", messages.len());
            };
            if is_message(&line) {
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
pub fn publish(broker: &Broker, args: &[&str]) {
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

/// The retained message `mosquitto_sub -v` gets for `topic` on subscribing ("topic payload"),
/// or `None` if it gets none within a second.
pub fn retained(broker: &Broker, topic: &str) -> Option<String> {
    let port = broker.mqtt_port().to_string();
    let output = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-v", "--retained-only"])
        .args(["-C", "1", "-W", "1", "-t", topic])
        .output()
        .expect("mosquitto_sub runs");
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (!printed.is_empty()).then_some(printed)
}
