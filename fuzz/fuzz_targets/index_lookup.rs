//! Arbitrary bytes as index files read from disk: an index that passes its checks must give
//! floor lookups (the entry found is at or before the target, and the next one is after).
#![no_main]

use coremq_engine::offset_index::OffsetIndex;
use coremq_engine::time_index::TimeIndex;
use coremq_engine::{Offset, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (probe, entries) = data.split_at(8);
    let target = u64::from_le_bytes(probe.try_into().unwrap());
    let base = Offset(1000);
    if OffsetIndex::check(entries, base, 1 << 32).is_ok() {
        let index = OffsetIndex::new(entries, base);
        let target = Offset(base.0 + target % (1 << 33));
        let (offset, _) = index.lookup(target);
        assert!(offset <= target || index.is_empty() || offset == base);
        let after = (0..index.len()).map(|n| index.entry(n)).find(|(o, _)| *o > offset);
        if let Some((next, _)) = after {
            assert!(next > target);
        }
    }
    let whole = entries.len() - entries.len() % 12;
    if TimeIndex::check(&entries[..whole], base, Offset(u64::MAX)).is_ok() {
        let index = TimeIndex::new(&entries[..whole], base);
        let found = index.lookup(Timestamp(target as i64));
        assert!(found >= base);
    }
});
