//! CRC-32C, which every batch carries and every read from disk checks.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn crc(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    for size in [4 << 10, 64 << 10, 1 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            b.iter(|| crc32c::crc32c(data))
        });
    }
    group.finish();
}

criterion_group!(benches, crc);
criterion_main!(benches);
