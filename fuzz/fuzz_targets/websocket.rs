//! Arbitrary bytes as a client's side of an MQTT-over-WebSockets connection: the HTTP upgrade
//! (httparse, our checks), then frames (tungstenite's header parser, our payload reader and
//! unmasking). Whatever comes: no panic, no hang, and never more payload out than bytes in.
//! Half the inputs start with a valid upgrade, so the frame reader gets exercised.
#![no_main]

use coremq_net::server::{WebSocket, replay_websocket};
use libfuzzer_sys::fuzz_target;

const UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::new();
    if selector & 1 == 0 {
        input.extend_from_slice(UPGRADE);
    }
    input.extend_from_slice(rest);
    let websocket = WebSocket {
        path: "/mqtt".into(),
        subprotocol: "mqtt".into(),
    };
    let (answer, payload) = replay_websocket(&input, &websocket);
    if let Ok(payload) = payload {
        assert!(answer.starts_with(b"HTTP/1.1 101 "), "payload only after an upgrade");
        assert!(payload.len() <= input.len(), "never more payload than bytes in");
    }
});
