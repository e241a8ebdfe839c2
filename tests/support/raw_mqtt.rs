//! A bare MQTT client for tests: packets written and read with the broker's own codec, one
//! at a time over a blocking socket.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use coremq_net::mqtt::codec::{
    self, ConnAck, Connect, Level, Packet, Properties, QoS, Subscribe, Subscription,
};

use super::broker::Broker;

/// A bare MQTT connection for the checks no client library lets one make (packets out of
/// order, malformed ones, the server's own topic aliases): packets written with the broker's
/// codec, whose encoding the clients above check against their own.
pub struct Raw {
    pub stream: std::net::TcpStream,
    pub level: Level,
}

/// A CONNECT without will, user name or password.
pub fn connect_packet(
    level: Level,
    client_id: impl Into<String>,
    clean_start: bool,
    keep_alive: u16,
    properties: Properties,
) -> Packet {
    Packet::Connect(Box::new(Connect {
        level,
        clean_start,
        keep_alive,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties,
    }))
}

impl Raw {
    pub fn open(broker: &Broker, level: Level) -> Raw {
        let stream = std::net::TcpStream::connect(("127.0.0.1", broker.mqtt_port())).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw { stream, level }
    }

    /// Opens and CONNECTs as `client_id`; the CONNACK.
    pub fn connect(
        broker: &Broker,
        level: Level,
        client_id: &str,
        properties: Properties,
    ) -> (Raw, ConnAck) {
        let mut raw = Raw::open(broker, level);
        raw.send(&connect_packet(level, client_id, true, 60, properties));
        match raw.receive() {
            Some(Packet::ConnAck(connack)) => (raw, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(packet, self.level, &mut out).unwrap();
        self.send_bytes(&out);
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        use std::io::Write as _;
        let _ = self.stream.write_all(bytes);
    }

    /// The next packet, or `None` once the server closed the connection.
    pub fn receive(&mut self) -> Option<Packet> {
        use std::io::Read as _;
        let mut header = vec![0u8; 1];
        self.stream.read_exact(&mut header).ok()?;
        let length = loop {
            let mut byte = [0u8];
            self.stream.read_exact(&mut byte).ok()?;
            header.push(byte[0]);
            if let Some(length) = codec::remaining_length(&header).unwrap() {
                break length;
            }
        };
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).ok()?;
        if header[0] >> 4 == codec::kind::CONNACK && self.level == Level::V311 {
            return Some(codec::decode(header[0], Bytes::from(body), Level::V311).unwrap());
        }
        Some(codec::decode(header[0], Bytes::from(body), self.level).unwrap())
    }

    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscriptions: vec![Subscription {
                filter: filter.into(),
                qos,
                ..Subscription::default()
            }],
            properties: Properties::default(),
        }));
        assert!(matches!(self.receive(), Some(Packet::SubAck(_))));
    }

    /// Whether the server closed the connection (after any packets it sent first).
    pub fn closed(&mut self) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.receive().is_none() {
                return true;
            }
        }
        false
    }
}
