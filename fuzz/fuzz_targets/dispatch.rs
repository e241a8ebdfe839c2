//! Arbitrary bytes as a request frame, decoded and handled by a running broker (one shard,
//! a temporary data directory): every handler must answer or refuse bad input (unknown
//! topics, impossible partition counts, bad configs, bogus group state) without a panic, and
//! an answer must be a well-formed frame. Each request gets at most 50 ms (long polls and
//! joins are cut short); the broker's partition limit bounds what creations can build.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use coremq_net::broker::Broker;
use libfuzzer_sys::fuzz_target;

#[path = "shared/broker.rs"]
mod shared;

fn broker() -> &'static Broker {
    static BROKER: OnceLock<(tempfile::TempDir, Broker)> = OnceLock::new();
    let (_, broker) = BROKER.get_or_init(|| {
        shared::start(|config| {
            config.offsets_topic_partitions = 2;
            config.group_initial_rebalance_delay_ms = 0;
        })
    });
    broker
}

fuzz_target!(|data: &[u8]| {
    let Some(chunks) = broker().handle_frame(Bytes::copy_from_slice(data), Duration::from_millis(50))
    else {
        return;
    };
    let size = i32::from_be_bytes(chunks[0][..4].try_into().unwrap());
    let body: usize = chunks[1..].iter().map(Bytes::len).sum();
    assert_eq!(size as usize, body, "the size prefix matches the response");
});
