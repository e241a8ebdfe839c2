//! Appends of a 16 KiB batch through the engine handle, for each durability policy.

mod common;

use coremq_engine::{Compression, Durability, LogConfig, TopicPartition};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_lite::future::block_on;

fn append(c: &mut Criterion) {
    let (_dir, engine) = common::engine();
    let handle = engine.handle();
    let batch = common::batch(160, 100, Compression::None);
    let mut group = c.benchmark_group("append_16KiB");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    let policies = [
        ("always", Durability::Always),
        ("interval_ms_1000", Durability::IntervalMs(1000)),
        ("never", Durability::Never),
    ];
    for (name, durability) in policies {
        let log = TopicPartition::new(format!("append-{name}"), 0).unwrap();
        let config = LogConfig {
            durability,
            ..LogConfig::default()
        };
        block_on(handle.create_log(&log, Some(config))).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(name), &log, |b, log| {
            b.iter(|| block_on(handle.append(log, batch.clone())).unwrap())
        });
    }
    group.finish();
    engine.shutdown().unwrap();
}

criterion_group!(benches, append);
criterion_main!(benches);
