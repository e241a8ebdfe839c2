//! Arbitrary bytes as a segment file found on disk after a crash: recovery must stop at a
//! clean prefix, and that prefix must rescan cleanly to the same result.
#![no_main]

use coremq_engine::recovery::scan;
use coremq_engine::Offset;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = scan(data, Offset(0), 64);
    assert!(first.valid_bytes as usize <= data.len());
    let prefix = &data[..first.valid_bytes as usize];
    let again = scan(prefix, Offset(0), 64);
    assert!(again.stop.is_none());
    assert_eq!(again.valid_bytes, first.valid_bytes);
    assert_eq!(again.next_offset, first.next_offset);
    assert_eq!(again.offset_index.bytes(), first.offset_index.bytes());
});
