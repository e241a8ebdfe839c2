//! Arbitrary bytes as a stream of MQTT packets at a protocol level (the first byte picks 3, 4
//! or 5): every packet that decodes encodes again and decodes to the same packet. Errors are
//! fine; panics, hangs and allocations beyond the bytes present are not.
#![no_main]

use bytes::{Bytes, BytesMut};
use coremq_net::mqtt::codec::{self, Level, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut stream)) = data.split_first() else {
        return;
    };
    let level = match selector % 3 {
        0 => Level::V31,
        1 => Level::V311,
        _ => Level::V5,
    };
    while !stream.is_empty() {
        let mut header_len = 1;
        let length = loop {
            header_len += 1;
            if header_len > stream.len() {
                return;
            }
            match codec::remaining_length(&stream[..header_len]) {
                Ok(Some(length)) => break length,
                Ok(None) => continue,
                Err(_) => return,
            }
        };
        let Some(body) = stream.get(header_len..header_len + length) else {
            return;
        };
        let first = stream[0];
        stream = &stream[header_len + length..];
        let body = Bytes::copy_from_slice(body);
        let _ = codec::decode_connect(first, body.clone());
        let Ok(packet) = codec::decode(first, body, level) else {
            continue;
        };
        let mut out = BytesMut::new();
        codec::encode(&packet, level, &mut out).expect("a decoded packet encodes");
        let mut header_len = 2;
        let length = loop {
            match codec::remaining_length(&out[..header_len]).expect("encoded lengths are valid") {
                Some(length) => break length,
                None => header_len += 1,
            }
        };
        assert_eq!(header_len + length, out.len());
        let body = out.split_off(header_len).freeze();
        let again = match &packet {
            Packet::Connect(_) => Packet::Connect(Box::new(
                codec::decode_connect(out[0], body).expect("an encoded CONNECT decodes"),
            )),
            _ => codec::decode(out[0], body, level).expect("an encoded packet decodes"),
        };
        assert_eq!(again, packet);
    }
});
