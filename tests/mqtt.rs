//! MQTT end to end against the real binary, with clients nobody here wrote: mosquitto_pub
//! and mosquitto_sub (Debian's mosquitto-clients) at protocol levels 3, 4 and 5, paho-mqtt
//! 2.x (scripts in `tests/python/mqtt_*.py`), and kcat and confluent-kafka on the Kafka side
//! of the same log. `tools/test-all.sh` installs them all.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/kcat.rs"]
mod kcat;
#[path = "support/mosquitto.rs"]
mod mosquitto;
#[path = "support/python.rs"]
mod python;
#[path = "support/raw_mqtt.rs"]
mod raw_mqtt;

use std::process::Command;
use std::time::{Duration, Instant};

use broker::Broker;
use bytes::Bytes;
use coremq_net::mqtt::codec::{
    self, Ack, Level, Packet, Properties, Publish, QoS, Subscribe, Subscription, reason,
};
use mosquitto::{Subscriber, publish};
use raw_mqtt::{Raw, connect_packet};

fn start(name: &str, extra: &[&str]) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join(name), extra);
    (dir, broker)
}

/// Runs kcat against the broker's Kafka listener with `args`, feeding it `input`.
fn kcat(broker: &Broker, args: &[&str], input: &str) -> String {
    kcat::run(&broker.bootstrap(), args, input)
        .unwrap_or_else(|error| panic!("kcat {args:?}: {error}"))
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

/// Runs the paho-mqtt scenario `scenario` of `tests/python/mqtt_paho.py`; fails the test
/// (with its output and the broker's log) unless it passes.
fn paho(broker: &Broker, scenario: &str) {
    paho_at(broker, broker.mqtt_port(), scenario);
}

/// As `paho`, against the listener on `port`.
fn paho_at(broker: &Broker, port: u16, scenario: &str) {
    let dir = python::scripts();
    let address = format!("127.0.0.1:{port}");
    let output = Command::new(python::interpreter())
        .arg(dir.join("mqtt_paho.py"))
        .args([&address, scenario, &broker.bootstrap()])
        .current_dir(&dir)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{scenario} failed:\n{}\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        broker.log()
    );
}

#[test]
fn mqtt_3_1_2_8_a_will_is_published_when_the_connection_drops_and_not_after_disconnect() {
    let (_dir, broker) = start("will", &[]);
    paho(&broker, "will_on_abnormal_disconnect");
}

#[test]
fn mqtt_3_3_1_5_retained_messages_are_kept_replaced_cleared_and_survive_a_restart() {
    let (_dir, mut broker) = start("retained", &[]);
    paho(&broker, "retained_messages");
    broker.restart();
    paho(&broker, "retained_check");
}

#[test]
fn mqtt_3_1_2_5_a_resumed_session_gets_the_qos_2_messages_queued_while_away_once() {
    let (_dir, broker) = start("qos2", &[]);
    paho(&broker, "qos2_exactly_once_across_reconnect");
}

#[test]
fn mqtt_3_3_2_15_request_response_carries_response_topic_and_correlation_data() {
    let (_dir, broker) = start("request-response", &[]);
    paho(&broker, "request_response");
}

#[test]
fn mqtt_3_2_2_17_a_client_publishes_by_topic_alias_and_one_over_the_maximum_disconnects() {
    let (_dir, broker) = start("aliases", &[]);
    paho(&broker, "topic_aliases");
}

#[test]
fn mqtt_3_2_2_15_a_packet_over_the_maximum_packet_size_gets_disconnect_0x95() {
    let (_dir, broker) = start("oversized", &["--mqtt-maximum-packet-size", "4096"]);
    paho(&broker, "oversized_packets");
}

#[test]
fn mqtt_3_8_3_3_no_local_subscription_identifiers_and_overlapping_subscriptions() {
    let (_dir, broker) = start("options", &[]);
    paho(&broker, "subscription_options");
}

#[test]
fn mqtt_3_1_0_1_a_packet_before_connect_closes_the_connection() {
    let (_dir, broker) = start("before-connect", &[]);
    let mut raw = Raw::open(&broker, Level::V311);
    raw.send(&Packet::Publish(Publish {
        topic: "a".into(),
        payload: Bytes::from_static(b"early"),
        ..Publish::default()
    }));
    assert!(raw.receive().is_none(), "closed without an answer");
    // The broker serves others as before.
    let (_raw, connack) = Raw::connect(&broker, Level::V311, "fine", Properties::default());
    assert_eq!(connack.code, reason::SUCCESS);
}

#[test]
fn mqtt_3_1_0_2_a_second_connect_is_a_protocol_error() {
    let (_dir, broker) = start("second-connect", &[]);
    for level in [Level::V311, Level::V5] {
        let (mut raw, _) = Raw::connect(&broker, level, "twice", Properties::default());
        raw.send(&connect_packet(
            level,
            "twice",
            true,
            60,
            Properties::default(),
        ));
        if level == Level::V5 {
            match raw.receive() {
                Some(Packet::Disconnect(disconnect)) => {
                    assert_eq!(disconnect.code, reason::PROTOCOL_ERROR)
                }
                other => panic!("expected DISCONNECT, got {other:?}"),
            }
        }
        assert!(raw.closed());
    }
}

#[test]
fn mqtt_1_5_4_1_a_string_that_is_not_utf8_closes_the_connection() {
    let (_dir, broker) = start("utf8", &[]);
    for level in [Level::V311, Level::V5] {
        let (mut raw, _) = Raw::connect(&broker, level, "utf8", Properties::default());
        // PUBLISH QoS 0, topic of two bytes that are not UTF-8.
        let mut packet = vec![0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, b'x'];
        if level == Level::V5 {
            packet = vec![0x30, 0x06, 0x00, 0x02, 0xC3, 0x28, 0x00, b'x'];
        }
        raw.send_bytes(&packet);
        if level == Level::V5 {
            match raw.receive() {
                Some(Packet::Disconnect(disconnect)) => {
                    assert_eq!(disconnect.code, reason::MALFORMED_PACKET)
                }
                other => panic!("expected DISCONNECT, got {other:?}"),
            }
        }
        assert!(raw.closed());
    }
}

#[test]
fn mqtt_3_3_2_2_a_wildcard_in_a_publish_topic_closes_the_connection() {
    let (_dir, broker) = start("wildcard", &[]);
    let subscriber = Subscriber::start(&broker, &["-t", "#", "-v"]);
    for level in [Level::V311, Level::V5] {
        let (mut raw, _) = Raw::connect(&broker, level, "wild", Properties::default());
        raw.send(&Packet::Publish(Publish {
            topic: "a/+".into(),
            payload: Bytes::from_static(b"no"),
            ..Publish::default()
        }));
        if level == Level::V5 {
            match raw.receive() {
                Some(Packet::Disconnect(disconnect)) => {
                    assert_eq!(disconnect.code, reason::TOPIC_NAME_INVALID)
                }
                other => panic!("expected DISCONNECT, got {other:?}"),
            }
        }
        assert!(raw.closed());
    }
    publish(&broker, &["-t", "after", "-m", "ok"]);
    assert_eq!(
        subscriber.messages(1),
        ["after ok"],
        "nothing of a/+ was delivered"
    );
}

#[test]
fn mqtt_3_1_2_2_an_unsupported_protocol_level_gets_return_code_1() {
    let (_dir, broker) = start("level", &[]);
    let mut raw = Raw::open(&broker, Level::V311);
    let body = [0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 60, 0, 1, b'c'];
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    raw.send_bytes(&packet);
    match raw.receive() {
        Some(Packet::ConnAck(connack)) => {
            assert_eq!(connack.code, reason::V3_UNACCEPTABLE_PROTOCOL_VERSION)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(raw.closed());
}

#[test]
fn mqtt_3_1_3_8_an_empty_client_id_needs_a_clean_session_and_5_0_gets_one_assigned() {
    let (_dir, broker) = start("client-id", &[]);
    let mut raw = Raw::open(&broker, Level::V311);
    raw.send(&connect_packet(
        Level::V311,
        String::new(),
        false,
        60,
        Properties::default(),
    ));
    match raw.receive() {
        Some(Packet::ConnAck(connack)) => assert_eq!(connack.code, reason::V3_IDENTIFIER_REJECTED),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(raw.closed());
    // MQTT-3.2.2-16: a 5.0 client without an identifier is told the one assigned.
    let (_raw, connack) = Raw::connect(&broker, Level::V5, "", Properties::default());
    assert_eq!(connack.code, reason::SUCCESS);
    let assigned = connack.properties.assigned_client_identifier.unwrap();
    assert!(!assigned.is_empty());
}

#[test]
fn mqtt_3_1_4_3_a_connection_with_the_same_client_id_takes_the_session_over() {
    let (_dir, broker) = start("takeover", &[]);
    let mut connections = Vec::new();
    // Enough connections that some land on each shard.
    for _ in 0..4 {
        let (old, _) = Raw::connect(&broker, Level::V5, "same", Properties::default());
        connections.push(old);
        let (mut old, _) = Raw::connect(&broker, Level::V5, "same", Properties::default());
        let mut older = connections.pop().unwrap();
        match older.receive() {
            Some(Packet::Disconnect(disconnect)) => {
                assert_eq!(disconnect.code, reason::SESSION_TAKEN_OVER)
            }
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
        assert!(older.closed());
        old.send(&Packet::PingReq);
        assert_eq!(old.receive(), Some(Packet::PingResp));
        connections.push(old);
    }
}

#[test]
fn mqtt_3_1_2_22_a_client_silent_for_one_and_a_half_keep_alives_is_disconnected() {
    let (_dir, broker) = start("keep-alive", &[]);
    let mut raw = Raw::open(&broker, Level::V311);
    raw.send(&connect_packet(
        Level::V311,
        "sleepy",
        true,
        1,
        Properties::default(),
    ));
    assert!(matches!(raw.receive(), Some(Packet::ConnAck(_))));
    let started = Instant::now();
    assert!(raw.closed());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
}

#[test]
fn mqtt_3_1_2_26_the_server_uses_topic_aliases_up_to_the_client_maximum() {
    let (_dir, broker) = start("server-aliases", &[]);
    let properties = Properties {
        topic_alias_maximum: Some(2),
        ..Properties::default()
    };
    let (mut raw, _) = Raw::connect(&broker, Level::V5, "aliased", properties);
    raw.subscribe("alias/#", QoS::AtMostOnce);
    for topic in ["alias/a", "alias/a", "alias/b", "alias/c", "alias/b"] {
        publish(&broker, &["-t", topic, "-m", "x"]);
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let Some(Packet::Publish(publish)) = raw.receive() else {
            panic!("expected PUBLISH");
        };
        seen.push((publish.topic, publish.properties.topic_alias));
    }
    assert_eq!(
        seen,
        [
            ("alias/a".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("alias/b".to_string(), Some(2)),
            // Both aliases taken: sent by name, the client's maximum reached.
            ("alias/c".to_string(), None),
            (String::new(), Some(2)),
        ]
    );
}

#[test]
fn mqtt_4_3_3_10_a_qos_2_message_sent_again_before_pubrel_is_stored_once() {
    let (_dir, broker) = start("qos2-inbound", &["--mqtt-topic-map", "once/#=once"]);
    let (mut raw, _) = Raw::connect(&broker, Level::V311, "twice", Properties::default());
    let publish = |dup| {
        Packet::Publish(Publish {
            dup,
            qos: QoS::ExactlyOnce,
            topic: "once/x".into(),
            packet_id: 7,
            payload: Bytes::from_static(b"only once"),
            ..Publish::default()
        })
    };
    raw.send(&publish(false));
    assert!(matches!(
        raw.receive(),
        Some(Packet::PubRec(Ack { packet_id: 7, .. }))
    ));
    raw.send(&publish(true));
    assert!(matches!(
        raw.receive(),
        Some(Packet::PubRec(Ack { packet_id: 7, .. }))
    ));
    raw.send(&Packet::PubRel(Ack {
        packet_id: 7,
        ..Ack::default()
    }));
    assert!(matches!(
        raw.receive(),
        Some(Packet::PubComp(Ack { packet_id: 7, .. }))
    ));
    // After PUBREL the identifier is free: the same one is a new message.
    raw.send(&publish(false));
    assert!(matches!(
        raw.receive(),
        Some(Packet::PubRec(Ack { packet_id: 7, .. }))
    ));
    let records = kcat(&broker, &["-C", "-t", "once", "-e", "-q", "-f", "%s\n"], "");
    assert_eq!(records, "only once\nonly once\n");
}

/// MQTT-4.3.3-10 across crashes: a persistent session's QoS 2 identifier is stored before
/// PUBREC (the message sent again after a SIGKILL is known, not stored twice) and its
/// release before PUBCOMP (the identifier's next message after a SIGKILL is a new one).
#[test]
fn mqtt_4_3_3_10_qos_2_identifiers_outlive_a_crash_from_pubrec_and_from_pubcomp() {
    let (_dir, mut broker) = start("qos2-crash", &["--mqtt-topic-map", "once/#=once"]);
    let connect = |broker: &Broker| {
        let mut raw = Raw::open(broker, Level::V311);
        raw.send(&connect_packet(
            Level::V311,
            "crashy",
            false,
            60,
            Properties::default(),
        ));
        assert!(matches!(raw.receive(), Some(Packet::ConnAck(_))));
        raw
    };
    let publish = |dup, payload: &'static [u8]| {
        Packet::Publish(Publish {
            dup,
            qos: QoS::ExactlyOnce,
            topic: "once/x".into(),
            packet_id: 7,
            payload: Bytes::from_static(payload),
            ..Publish::default()
        })
    };
    let pubrel = Packet::PubRel(Ack {
        packet_id: 7,
        ..Ack::default()
    });
    let crash = |broker: &mut Broker| {
        broker.stop_with("-KILL");
        broker.respawn();
        broker
            .wait_ready(Duration::from_secs(30))
            .unwrap_or_else(|failure| panic!("the broker restarts: {failure}"));
    };
    // Sends `packet` and expects PUBREC (or, for a PUBREL, PUBCOMP) for identifier 7.
    let answered = |raw: &mut Raw, packet: &Packet| {
        raw.send(packet);
        let answer = raw.receive();
        let expected = match (packet, &answer) {
            (Packet::PubRel(_), Some(Packet::PubComp(ack))) => ack.packet_id == 7,
            (Packet::Publish(_), Some(Packet::PubRec(ack))) => ack.packet_id == 7,
            _ => false,
        };
        assert!(expected, "{answer:?} for {packet:?}");
    };
    let mut raw = connect(&broker);
    answered(&mut raw, &publish(false, b"first"));
    crash(&mut broker);
    let mut raw = connect(&broker);
    answered(&mut raw, &publish(true, b"first"));
    answered(&mut raw, &pubrel);
    crash(&mut broker);
    let mut raw = connect(&broker);
    answered(&mut raw, &publish(false, b"second"));
    answered(&mut raw, &pubrel);
    let records = kcat(&broker, &["-C", "-t", "once", "-e", "-q", "-f", "%s\n"], "");
    assert_eq!(records, "first\nsecond\n", "{}", broker.log());
}

#[test]
fn mqtt_4_8_2_a_shared_subscription_splits_a_stream_among_its_members_on_every_shard() {
    let (_dir, broker) = start("shared", &[]);
    paho(&broker, "shared_subscriptions");
}

#[test]
fn mqtt_3_1_2_23_a_persistent_session_keeps_its_subscriptions_and_queue_across_a_restart() {
    let (_dir, mut broker) = start("durable", &[]);
    paho(&broker, "durable_before");
    broker.restart();
    paho(&broker, "durable_after");
    // Again, with the broker killed instead of stopped.
    paho(&broker, "durable_before");
    broker.stop_with("-KILL");
    broker.respawn();
    broker.wait_ready(Duration::from_secs(60)).unwrap();
    paho(&broker, "durable_after");
}

#[test]
fn nothing_acknowledged_on_either_protocol_is_lost_when_the_broker_is_killed() {
    let (_dir, mut broker) = start("cross", &[]);
    paho(&broker, "cross_before");
    broker.stop_with("-KILL");
    broker.respawn();
    broker.wait_ready(Duration::from_secs(60)).unwrap();
    paho(&broker, "cross_after");
}

#[test]
fn mqtt_6_0_0_4_mqtt_over_websockets_with_the_mqtt_subprotocol() {
    let (_dir, broker) = start("websockets", &[]);
    paho_at(&broker, broker.mqtt_ws_port(), "websockets");
    // A WebSocket upgrade elsewhere than /mqtt, or a plain MQTT CONNECT, is refused.
    use std::io::{Read as _, Write as _};
    let mut wrong_path =
        std::net::TcpStream::connect(("127.0.0.1", broker.mqtt_ws_port())).unwrap();
    wrong_path
        .write_all(
            b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Protocol: mqtt\r\n\r\n",
        )
        .unwrap();
    let mut answer = String::new();
    let _ = wrong_path.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let (mut raw, _) = {
        let mut raw = Raw {
            stream: std::net::TcpStream::connect(("127.0.0.1", broker.mqtt_ws_port())).unwrap(),
            level: Level::V311,
        };
        raw.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        raw.send(&connect_packet(
            Level::V311,
            "plain",
            true,
            60,
            Properties::default(),
        ));
        (raw, ())
    };
    let mut bytes = Vec::new();
    let _ = raw.stream.read_to_end(&mut bytes);
    assert!(
        bytes.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[test]
fn mqtt_3_9_3_1_suback_and_unsuback_codes_follow_the_filters_in_order() {
    let (_dir, broker) = start("acks-in-order", &[]);
    for level in [Level::V311, Level::V5] {
        let id = format!("orders-{}", level as u8);
        let topic = format!("orders/{}", level as u8);
        let subscription = |filter: &str, qos| Subscription {
            filter: filter.into(),
            qos,
            ..Subscription::default()
        };
        let (mut raw, _) = Raw::connect(&broker, level, &id, Properties::default());
        // MQTT-3.8.4-4, -5, MQTT-3.9.3-1: one SUBACK with the packet id, a code per filter
        // in their order, a failure for the invalid one.
        raw.send(&Packet::Subscribe(Subscribe {
            packet_id: 7,
            subscriptions: vec![
                subscription(&topic, QoS::AtLeastOnce),
                subscription("orders/#/bad", QoS::AtMostOnce),
                subscription("other/+", QoS::ExactlyOnce),
            ],
            properties: Properties::default(),
        }));
        let invalid = match level {
            Level::V5 => reason::TOPIC_FILTER_INVALID,
            _ => reason::V3_SUBSCRIPTION_FAILURE,
        };
        match raw.receive() {
            Some(Packet::SubAck(ack)) => {
                assert_eq!(ack.packet_id, 7);
                assert_eq!(ack.codes, vec![1, invalid, 2]);
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
        // MQTT-3.8.4-3: the same filter again replaces the subscription (QoS 0 now).
        raw.send(&Packet::Subscribe(Subscribe {
            packet_id: 8,
            subscriptions: vec![subscription(&topic, QoS::AtMostOnce)],
            properties: Properties::default(),
        }));
        match raw.receive() {
            Some(Packet::SubAck(ack)) => assert_eq!((ack.packet_id, ack.codes), (8, vec![0])),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        let (mut publisher, _) =
            Raw::connect(&broker, level, &format!("{id}-pub"), Properties::default());
        publisher.send(&Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: topic.clone(),
            packet_id: 3,
            payload: Bytes::from_static(b"one"),
            ..Publish::default()
        }));
        match publisher.receive() {
            Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, 3),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        match raw.receive() {
            Some(Packet::Publish(publish)) => {
                assert_eq!(publish.payload, Bytes::from_static(b"one"));
                assert_eq!(
                    publish.qos,
                    QoS::AtMostOnce,
                    "the minimum of 1 and the new 0"
                );
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
        // MQTT-3.12.4-1; and no second copy from the replaced subscription came before it.
        raw.send(&Packet::PingReq);
        assert_eq!(raw.receive(), Some(Packet::PingResp));
        // MQTT-3.10.4-4..6, MQTT-3.11.3-1, -2: one UNSUBACK with the packet id; 5.0 gives a
        // code per filter in their order, "no subscription existed" for one never made.
        raw.send(&Packet::Unsubscribe(codec::Unsubscribe {
            packet_id: 9,
            filters: vec![topic.clone(), "never/subscribed".into()],
            properties: Properties::default(),
        }));
        match raw.receive() {
            Some(Packet::UnsubAck(ack)) => {
                assert_eq!(ack.packet_id, 9);
                let expected = match level {
                    Level::V5 => vec![reason::SUCCESS, reason::NO_SUBSCRIPTION_EXISTED],
                    _ => Vec::new(),
                };
                assert_eq!(ack.codes, expected);
            }
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }
}
