//! Arbitrary bytes as what a broker sends the client: a response frame of any API key and
//! version (the first four bytes pick them), and the consumer-protocol subscription and
//! assignment that JoinGroup and SyncGroup carry. Errors are fine; panics, hangs and
//! allocations beyond the input's size are not.
#![no_main]

use bytes::Bytes;
use coremq_net::client::decode_data;
use coremq_net::protocol::frame::decode_response;
use coremq_net::protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let key = i16::from_be_bytes([data[0], data[1]]);
    let version = i16::from_be_bytes([data[2], data[3]]);
    let body = Bytes::copy_from_slice(&data[4..]);
    let _ = decode_response(key, version, body.clone());
    let _ = decode_data::<ConsumerProtocolSubscription>(body.clone());
    let _ = decode_data::<ConsumerProtocolAssignment>(body);
});
