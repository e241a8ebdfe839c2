//! Arbitrary bytes as what the controller quorum reads from the network and from its metadata
//! log: a frame from another broker (a Raft message, a request forwarded to the controller or
//! its answer, an observer's fetch or a voter's records for it), a bare Raft message, and a
//! metadata record. The first byte picks the decoder.
//! Bad bytes must be refused without a panic or an allocation beyond what they hold, and
//! whatever decodes must encode to bytes that decode to the same value.
#![no_main]

use coremq_replication::metadata::Record;
use coremq_replication::peers;
use coremq_replication::quorum::{decode_message, encode_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            if let Ok(message) = decode_message(data) {
                let bytes = encode_message(&message);
                let again = decode_message(&bytes).expect("re-encoded message decodes");
                assert_eq!(encode_message(&again), bytes);
            }
        }
        1 => {
            if let Ok(record) = Record::decode(data) {
                assert_eq!(Record::decode(&record.encode()), Ok(record));
            }
        }
        _ => {
            if let Ok((from, frame)) = peers::decode(data) {
                let bytes = peers::encode(from, &frame);
                let (again_from, again) = peers::decode(&bytes).expect("re-encoded frame decodes");
                assert_eq!(again_from, from);
                assert_eq!(peers::encode(again_from, &again), bytes);
            }
        }
    }
});
