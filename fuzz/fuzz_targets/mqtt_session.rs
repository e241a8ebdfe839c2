//! Arbitrary bytes as what an MQTT client sends on one connection, handled by a running
//! broker (one shard, a temporary data directory): most inputs start with a CONNECT of the
//! level the first byte picks, so the packets behind it reach the session's handlers
//! (publish, subscribe, acknowledgements, will, aliases) rather than the CONNECT check.
//! Whatever comes, the broker must not panic, must answer each packet within 50 ms or not at
//! all, and everything it writes back must be well-formed packets of the connection's level.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use coremq_net::broker::Broker;
use coremq_net::mqtt::codec::{self, Connect, Level, Packet, Properties};
use libfuzzer_sys::fuzz_target;

#[path = "shared/broker.rs"]
mod shared;

fn broker() -> &'static Broker {
    static BROKER: OnceLock<(tempfile::TempDir, Broker)> = OnceLock::new();
    let (_, broker) = BROKER.get_or_init(|| shared::start(|_| {}));
    broker
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let level = match selector % 3 {
        0 => Level::V31,
        1 => Level::V311,
        _ => Level::V5,
    };
    let mut input = BytesMut::new();
    if selector & 0x80 == 0 {
        let connect = Packet::Connect(Box::new(Connect {
            level,
            clean_start: true,
            keep_alive: 60,
            client_id: format!("fuzz-{}", selector & 0x0F),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }));
        codec::encode(&connect, level, &mut input).expect("a CONNECT encodes");
    }
    input.extend_from_slice(rest);
    let written = broker().mqtt_converse(input.freeze(), Duration::from_millis(50));
    let mut output: Vec<u8> = written.iter().flat_map(|chunk| chunk.iter().copied()).collect();
    // Every packet the broker wrote decodes at the connection's level (a CONNACK refusing an
    // unknown level is in the 3.1.1 form).
    while !output.is_empty() {
        let mut header = 2;
        let length = loop {
            match codec::remaining_length(&output[..header]).expect("valid remaining length") {
                Some(length) => break length,
                None => header += 1,
            }
        };
        assert!(output.len() >= header + length, "a whole packet");
        let body = Bytes::copy_from_slice(&output[header..header + length]);
        let first = output[0];
        let decoded = codec::decode(first, body.clone(), level)
            .or_else(|_| codec::decode(first, body, Level::V311));
        assert!(decoded.is_ok(), "the broker wrote a malformed packet: {decoded:?}");
        output.drain(..header + length);
    }
});
