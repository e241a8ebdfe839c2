//! Arbitrary bytes as a producer's record batch: header parse, append checks, record
//! decoding with every codec. Errors are fine; panics, hangs and huge allocations are not.
#![no_main]

use bytes::Bytes;
use coremq_engine::batch::{self, BatchHeader, BatchLimits};
use coremq_engine::record::decode_records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = BatchHeader::parse(data);
    let limits = BatchLimits {
        batch_bytes_max: 1 << 20,
        decompressed_bytes_max: 1 << 20,
    };
    let checked = batch::validate_for_append(data, limits);
    if let Ok((header, _)) = &checked {
        assert_eq!(header.total_bytes(), data.len());
    }
    let bytes = Bytes::copy_from_slice(data);
    let decoded = decode_records(&bytes, 1 << 20);
    if let Ok(records) = &decoded {
        let header = BatchHeader::parse(data).expect("decoded batches have headers");
        assert_eq!(records.len(), header.records_count as usize);
    }
    // A batch the append checks accept decodes to exactly its counted records, numbered
    // from 0, and none of them lacks a key unless the summary says so.
    if let Ok((header, summary)) = checked {
        let records = decoded.expect("a batch that passes the append checks decodes");
        assert_eq!(records.len(), header.records_count as usize);
        for (n, record) in records.iter().enumerate() {
            assert_eq!(record.offset.0, header.base_offset.0 + n as u64);
        }
        let null_keys: Vec<u32> = (0..records.len() as u32)
            .filter(|&n| records[n as usize].key.is_none())
            .collect();
        assert_eq!(null_keys, summary.null_keys);
    }
    for frame in batch::frames(data) {
        assert!(frame.end() <= data.len());
    }
});
