use bytes::{Bytes, BytesMut};

use super::*;

/// Encodes `packet` for `level` and decodes it back.
fn round_trip(packet: &Packet, level: Level) -> Packet {
    let mut out = BytesMut::new();
    encode(packet, level, &mut out).unwrap();
    let (first, body) = split(&out);
    if let Packet::Connect(_) = packet {
        return Packet::Connect(Box::new(decode_connect(first, body).unwrap()));
    }
    decode(first, body, level).unwrap()
}

/// A whole packet's first byte and body, checking its remaining length.
fn split(packet: &[u8]) -> (u8, Bytes) {
    let mut header_len = 2;
    let length = loop {
        match remaining_length(&packet[..header_len]).unwrap() {
            Some(length) => break length,
            None => header_len += 1,
        }
    };
    assert_eq!(header_len + length, packet.len());
    (packet[0], Bytes::copy_from_slice(&packet[header_len..]))
}

fn user_properties() -> Properties {
    Properties {
        user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        ..Properties::default()
    }
}

fn every_packet(level: Level) -> Vec<Packet> {
    let v5 = level == Level::V5;
    let properties = |p: Properties| if v5 { p } else { Properties::default() };
    let ack = |code| Ack {
        packet_id: 7,
        code: if v5 { code } else { 0 },
        properties: properties(Properties {
            reason_string: Some("why".into()),
            ..Properties::default()
        }),
    };
    vec![
        Packet::Connect(Box::new(Connect {
            level,
            clean_start: true,
            keep_alive: 60,
            client_id: "client-1".into(),
            will: Some(Will {
                topic: "will/topic".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: properties(Properties {
                    will_delay_interval: Some(5),
                    content_type: Some("text/plain".into()),
                    ..Properties::default()
                }),
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"secret")),
            properties: properties(Properties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(10),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(8),
                ..user_properties()
            }),
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: properties(Properties {
                assigned_client_identifier: Some("auto-1".into()),
                maximum_qos: Some(1),
                retain_available: Some(1),
                ..Properties::default()
            }),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: 9,
            payload: Bytes::from_static(b"payload"),
            properties: properties(Properties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(30),
                response_topic: Some("reply/to".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                subscription_identifiers: vec![1, 268_435_455],
                topic_alias: Some(3),
                ..user_properties()
            }),
        }),
        Packet::Publish(Publish {
            topic: "qos0".into(),
            ..Publish::default()
        }),
        Packet::PubAck(ack(0x10)),
        Packet::PubRec(ack(0x80)),
        Packet::PubRel(ack(0x92)),
        Packet::PubComp(Ack {
            packet_id: 1,
            ..Ack::default()
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 3,
            subscriptions: vec![
                Subscription {
                    filter: "a/+/c".into(),
                    qos: QoS::AtLeastOnce,
                    no_local: v5,
                    retain_as_published: v5,
                    retain_handling: if v5 { 2 } else { 0 },
                },
                Subscription {
                    filter: "#".into(),
                    ..Subscription::default()
                },
            ],
            properties: properties(Properties {
                subscription_identifiers: vec![42],
                ..Properties::default()
            }),
        }),
        Packet::SubAck(SubAck {
            packet_id: 3,
            codes: vec![1, 0x80],
            properties: properties(user_properties()),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 4,
            filters: vec!["a/+/c".into(), "#".into()],
            properties: properties(user_properties()),
        }),
        Packet::UnsubAck(SubAck {
            packet_id: 4,
            codes: if v5 { vec![0, 0x11] } else { Vec::new() },
            properties: properties(user_properties()),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect {
            code: if v5 { 0x04 } else { 0 },
            properties: properties(Properties {
                session_expiry_interval: Some(0),
                ..Properties::default()
            }),
        }),
    ]
}

#[test]
fn every_packet_survives_a_round_trip_at_every_level() {
    for level in [Level::V31, Level::V311, Level::V5] {
        for packet in every_packet(level) {
            assert_eq!(round_trip(&packet, level), packet, "{level:?}");
        }
    }
    let auth = Packet::Auth(Disconnect {
        code: 0x18,
        properties: Properties {
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(Bytes::from_static(b"data")),
            ..Properties::default()
        },
    });
    assert_eq!(round_trip(&auth, Level::V5), auth);
}

#[test]
fn decodes_a_3_1_1_connect_as_mosquitto_sends_it() {
    // mosquitto_pub -V mqttv311 -i client -k 60 (clean session).
    let mut body = vec![0, 4];
    body.extend_from_slice(b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60, 0, 6]);
    body.extend_from_slice(b"client");
    let connect = decode_connect(0x10, Bytes::from(body)).unwrap();
    assert_eq!(connect.level, Level::V311);
    assert_eq!(connect.client_id, "client");
    assert_eq!(connect.keep_alive, 60);
    assert!(connect.clean_start);
    assert!(connect.will.is_none());
}

fn connect_body(name: &[u8], level: u8, flags: u8) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 10]);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&[0, 1, b'c']);
    body
}

#[test]
fn mqtt_3_1_2_2_an_unknown_protocol_level_is_unsupported() {
    let error = decode_connect(0x10, connect_body(b"MQTT", 6, 2).into()).unwrap_err();
    assert_eq!(error.code, reason::UNSUPPORTED_PROTOCOL_VERSION);
    let error = decode_connect(0x10, connect_body(b"MQTX", 4, 2).into()).unwrap_err();
    assert_eq!(error.code, reason::PROTOCOL_ERROR);
    let v31 = decode_connect(0x10, connect_body(b"MQIsdp", 3, 2).into()).unwrap();
    assert_eq!(v31.level, Level::V31);
}

#[test]
fn mqtt_3_1_2_3_the_reserved_connect_flag_must_be_zero() {
    let error = decode_connect(0x10, connect_body(b"MQTT", 4, 3).into()).unwrap_err();
    assert_eq!(error.code, reason::MALFORMED_PACKET);
}

#[test]
fn mqtt_3_1_2_11_will_qos_and_retain_need_a_will() {
    for flags in [0x02 | 0x08, 0x02 | 0x20] {
        let error = decode_connect(0x10, connect_body(b"MQTT", 4, flags).into()).unwrap_err();
        assert_eq!(error.code, reason::MALFORMED_PACKET, "{flags:x}");
    }
}

#[test]
fn mqtt_3_1_2_22_a_password_needs_a_user_name_below_5() {
    let mut body = connect_body(b"MQTT", 4, 0x42);
    body.extend_from_slice(&[0, 1, b'p']);
    let error = decode_connect(0x10, body.into()).unwrap_err();
    assert_eq!(error.code, reason::MALFORMED_PACKET);
    let mut body = connect_body(b"MQTT", 5, 0x42);
    body.extend_from_slice(&[0, 1, b'p']);
    let connect = decode_connect(0x10, body.into()).unwrap();
    assert_eq!(connect.password.as_deref(), Some(&b"p"[..]));
}

#[test]
fn mqtt_1_5_4_1_strings_must_be_well_formed_utf8_without_nul() {
    for client_id in [&b"a\0b"[..], &[0xC3, 0x28][..], &[0xED, 0xA0, 0x80][..]] {
        let mut body = connect_body(b"MQTT", 4, 2);
        body.truncate(body.len() - 3);
        body.extend_from_slice(&[0, client_id.len() as u8]);
        body.extend_from_slice(client_id);
        let error = decode_connect(0x10, body.into()).unwrap_err();
        assert_eq!(error.code, reason::MALFORMED_PACKET, "{client_id:?}");
    }
}

#[test]
fn mqtt_2_2_2_2_fixed_header_flags_must_be_as_specified() {
    // PUBREL, SUBSCRIBE and UNSUBSCRIBE need 0010; the others 0000.
    let body = Bytes::from_static(&[0, 1]);
    assert!(decode(0x62, body.clone(), Level::V311).is_ok());
    assert!(decode(0x60, body.clone(), Level::V311).is_err());
    assert!(decode(0x41, body.clone(), Level::V311).is_err());
    assert!(decode(0xC1, Bytes::new(), Level::V311).is_err());
    let subscribe = Bytes::from_static(&[0, 1, 0, 1, b'a', 0]);
    assert!(decode(0x82, subscribe.clone(), Level::V311).is_ok());
    assert!(decode(0x80, subscribe, Level::V311).is_err());
}

#[test]
fn mqtt_3_3_1_4_a_publish_with_qos_3_is_malformed() {
    let error = decode(0x36, Bytes::from_static(&[0, 1, b'a', 0, 1]), Level::V311).unwrap_err();
    assert_eq!(error.code, reason::MALFORMED_PACKET);
}

#[test]
fn mqtt_3_3_1_2_a_qos_0_publish_with_dup_is_malformed() {
    let error = decode(0x38, Bytes::from_static(&[0, 1, b'a']), Level::V311).unwrap_err();
    assert_eq!(error.code, reason::MALFORMED_PACKET);
}

#[test]
fn mqtt_2_3_1_1_packet_identifiers_are_not_zero() {
    let publish = decode(0x32, Bytes::from_static(&[0, 1, b'a', 0, 0]), Level::V311);
    assert!(publish.is_err());
    assert!(decode(0x40, Bytes::from_static(&[0, 0]), Level::V311).is_err());
    assert!(
        decode(
            0x82,
            Bytes::from_static(&[0, 0, 0, 1, b'a', 0]),
            Level::V311
        )
        .is_err()
    );
}

#[test]
fn mqtt_3_8_3_3_a_subscribe_needs_a_topic_filter() {
    let error = decode(0x82, Bytes::from_static(&[0, 1]), Level::V311).unwrap_err();
    assert_eq!(error.code, reason::PROTOCOL_ERROR);
    let error = decode(0x82, Bytes::from_static(&[0, 1, 0]), Level::V5).unwrap_err();
    assert_eq!(error.code, reason::PROTOCOL_ERROR);
    let error = decode(0xA2, Bytes::from_static(&[0, 1]), Level::V311).unwrap_err();
    assert_eq!(error.code, reason::PROTOCOL_ERROR);
}

#[test]
fn mqtt_3_8_3_4_reserved_subscription_option_bits_must_be_zero() {
    // 3.1.1: bits 2-7 reserved; 5.0: bits 6-7.
    let options = |byte| Bytes::from(vec![0, 1, 0, 1, b'a', byte]);
    assert!(decode(0x82, options(0x04), Level::V311).is_err());
    let mut v5 = vec![0, 1, 0, 0, 1, b'a', 0x40];
    assert!(decode(0x82, Bytes::from(v5.clone()), Level::V5).is_err());
    v5[6] = 0x2D;
    let Packet::Subscribe(subscribe) = decode(0x82, Bytes::from(v5), Level::V5).unwrap() else {
        panic!("not a subscribe");
    };
    let subscription = &subscribe.subscriptions[0];
    assert!(subscription.no_local && subscription.retain_as_published);
    assert_eq!(subscription.retain_handling, 2);
    assert_eq!(subscription.qos, QoS::AtLeastOnce);
}

#[test]
fn properties_given_twice_or_out_of_place_are_protocol_errors() {
    // PUBACK with a reason string twice.
    let twice = Bytes::from_static(&[0, 1, 0, 8, 0x1F, 0, 1, b'a', 0x1F, 0, 1, b'b']);
    let error = decode(0x40, twice, Level::V5).unwrap_err();
    assert_eq!(error.code, reason::PROTOCOL_ERROR);
    // PUBACK with a topic alias.
    let misplaced = Bytes::from_static(&[0, 1, 0, 3, 0x23, 0, 1]);
    let error = decode(0x40, misplaced, Level::V5).unwrap_err();
    assert_eq!(error.code, reason::PROTOCOL_ERROR);
    // A property list longer than the packet.
    let long = Bytes::from_static(&[0, 1, 0, 9, 0x1F, 0, 1, b'a']);
    let error = decode(0x40, long, Level::V5).unwrap_err();
    assert_eq!(error.code, reason::MALFORMED_PACKET);
}

#[test]
fn lengths_past_the_bytes_present_are_malformed() {
    // A topic claiming 65535 bytes with two present.
    let error = decode(
        0x30,
        Bytes::from_static(&[0xFF, 0xFF, b'a', b'b']),
        Level::V311,
    );
    assert_eq!(error.unwrap_err().code, reason::MALFORMED_PACKET);
    // Bytes after a PINGREQ.
    assert!(decode(0xC0, Bytes::from_static(&[0]), Level::V311).is_err());
    // A 5.0 property length of four variable-integer bytes that all continue.
    let error = decode(
        0x30,
        Bytes::from_static(&[0, 1, b'a', 0xFF, 0xFF, 0xFF, 0xFF]),
        Level::V5,
    );
    assert_eq!(error.unwrap_err().code, reason::MALFORMED_PACKET);
}

#[test]
fn the_remaining_length_takes_at_most_four_bytes() {
    assert_eq!(remaining_length(&[0x30]), Ok(None));
    assert_eq!(remaining_length(&[0x30, 0x00]), Ok(Some(0)));
    assert_eq!(remaining_length(&[0x30, 0xC1, 0x02]), Ok(Some(321)));
    assert_eq!(remaining_length(&[0x30, 0xFF, 0xFF]), Ok(None));
    assert_eq!(
        remaining_length(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
        Ok(Some(VARIABLE_INTEGER_MAX as usize))
    );
    assert!(remaining_length(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
}

#[test]
fn fields_too_long_for_their_length_prefix_are_not_encoded() {
    let publish = Packet::Publish(Publish {
        topic: "t".repeat(70_000),
        ..Publish::default()
    });
    let mut out = BytesMut::new();
    assert!(encode(&publish, Level::V311, &mut out).is_err());
    assert!(out.is_empty());
}
