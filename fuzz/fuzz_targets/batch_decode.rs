//! Arbitrary bytes as a producer's record batch: header parse, append checks, record
//! decoding with every codec. Errors are fine; panics, hangs and huge allocations are not.
#![no_main]

use bytes::Bytes;
use coremq_engine::batch::{self, BatchHeader};
use coremq_engine::record::decode_records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = BatchHeader::parse(data);
    if let Ok(header) = batch::validate_for_append(data, 1 << 20) {
        assert_eq!(header.total_bytes(), data.len());
    }
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(records) = decode_records(&bytes, 1 << 20) {
        let header = BatchHeader::parse(data).expect("decoded batches have headers");
        assert_eq!(records.len(), header.records_count as usize);
    }
    for frame in batch::frames(data) {
        assert!(frame.end() <= data.len());
    }
});
