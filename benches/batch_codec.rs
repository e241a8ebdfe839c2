//! RecordBatch v2: building a batch, checking it for append (beside the CRC check alone),
//! decoding its records.

mod common;

use coremq_engine::Compression;
use coremq_engine::batch::{BatchLimits, validate_for_append, verify};
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
    // What the append checks cost beyond the CRC: counting every record (and, for a
    // compressed batch, inflating it first), as Kafka's LogValidator does. Each pair runs
    // side by side on the same batch: CRC and header only, then the full checks.
    let limits = BatchLimits {
        batch_bytes_max: 2 << 20,
        decompressed_bytes_max: 2 << 20,
    };
    for (name, codec, records, value_bytes) in [
        ("1MiB_1KiB_records", Compression::None, 1024, 1000),
        ("1MiB_100B_records", Compression::None, 8192, 100),
        ("zstd_1MiB_100B_records", Compression::Zstd, 8192, 100),
    ] {
        let large = common::batch(records, value_bytes, codec);
        group.throughput(Throughput::Elements(u64::from(records)));
        group.bench_function(format!("crc_only_{name}"), |b| {
            b.iter(|| verify(&large, None).unwrap())
        });
        group.bench_function(format!("validate_{name}"), |b| {
            b.iter(|| validate_for_append(&large, limits).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
