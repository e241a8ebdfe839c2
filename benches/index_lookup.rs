//! Sparse offset and time index lookups over a full 1 GiB segment's worth of entries.

use coremq_engine::offset_index::OffsetIndexWriter;
use coremq_engine::time_index::TimeIndexWriter;
use coremq_engine::{Offset, Position, Timestamp};
use criterion::{Criterion, criterion_group, criterion_main};

fn lookups(c: &mut Criterion) {
    let entries = (1u64 << 30) / 4096;
    let mut offsets = OffsetIndexWriter::new(Offset(0), 4096);
    let mut times = TimeIndexWriter::new(Offset(0), 4096);
    for n in 0..entries {
        offsets.on_batch(Offset(n * 40), Position(n * 4096), 4096);
        times.on_batch(Offset(n * 40), Timestamp(n as i64 * 3), 4096);
    }
    let mut group = c.benchmark_group("index_lookup");
    let mut target = 0u64;
    group.bench_function("offset_262144_entries", |b| {
        b.iter(|| {
            target = (target + 7919) % (entries * 40);
            offsets.view().lookup(Offset(target))
        })
    });
    group.bench_function("time_262144_entries", |b| {
        b.iter(|| {
            target = (target + 7919) % (entries * 3);
            times.view().lookup(Timestamp(target as i64))
        })
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
