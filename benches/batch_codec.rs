//! RecordBatch v2: building a batch, checking it for append, decoding its records.

mod common;

use coremq_engine::Compression;
use coremq_engine::batch::{BatchLimits, validate_for_append};
use coremq_engine::record::decode_records;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_codec");
    let batch = common::batch(100, 100, Compression::None);
    group.throughput(Throughput::Elements(100));
    group.bench_function("encode_100x100B", |b| {
        b.iter(|| common::batch(100, 100, Compression::None))
    });
    group.bench_function("decode_100x100B", |b| {
        b.iter(|| decode_records(&batch, 1 << 20).unwrap())
    });
    let large = common::batch(1024, 1000, Compression::None);
    group.throughput(Throughput::Bytes(large.len() as u64));
    group.bench_function("validate_1MiB", |b| {
        let limits = BatchLimits {
            batch_bytes_max: 2 << 20,
            decompressed_bytes_max: 2 << 20,
        };
        b.iter(|| validate_for_append(&large, limits).unwrap())
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
