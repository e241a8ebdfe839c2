//! Batch compression codecs on quote-like records (zstd is what the engine builds with).

mod common;

use coremq_engine::Compression;
use coremq_engine::compression::{compress, decompress};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn codecs(c: &mut Criterion) {
    let batch = common::batch(640, 100, Compression::None);
    let records = &batch[coremq_engine::batch::BATCH_HEADER_BYTES..];
    let mut group = c.benchmark_group("compression");
    group.throughput(Throughput::Bytes(records.len() as u64));
    for codec in [
        Compression::Zstd,
        Compression::Lz4,
        Compression::Snappy,
        Compression::Gzip,
    ] {
        group.bench_with_input(
            BenchmarkId::new("compress", codec.name()),
            &codec,
            |b, &codec| b.iter(|| compress(codec, records)),
        );
        let compressed = compress(codec, records);
        group.bench_with_input(
            BenchmarkId::new("decompress", codec.name()),
            &codec,
            |b, &codec| b.iter(|| decompress(codec, &compressed, 1 << 20).unwrap()),
        );
    }
    group.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
