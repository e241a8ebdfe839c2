//! Sequential reads of 1 MiB through the engine handle: from disk (cache dropped) and from
//! the tail cache.

mod common;

use coremq_engine::{
    BatchHeader, Compression, Durability, Isolation, LogConfig, Offset, TopicPartition,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_lite::future::block_on;

fn read(c: &mut Criterion) {
    let (_dir, engine) = common::engine();
    let handle = engine.handle();
    let log = TopicPartition::new("read", 0).unwrap();
    let config = LogConfig {
        durability: Durability::Never,
        ..LogConfig::default()
    };
    block_on(handle.create_log(&log, Some(config))).unwrap();
    let batch = common::batch(160, 100, Compression::None);
    for _ in 0..2048 {
        block_on(handle.append(&log, batch.clone())).unwrap();
    }
    let end = block_on(handle.offsets(&log)).unwrap().log_end;
    let mut group = c.benchmark_group("sequential_read_1MiB");
    group.throughput(Throughput::Bytes(1 << 20));
    let mut from = Offset(0);
    let next = |from: &mut Offset| {
        let read = block_on(handle.read(&log, *from, 1 << 20, Isolation::Written)).unwrap();
        let last = BatchHeader::parse(read.batches.last().unwrap()).unwrap();
        *from = if last.next_offset() >= end {
            Offset(0)
        } else {
            last.next_offset()
        };
        read
    };
    group.bench_function("tail_cache", |b| b.iter(|| next(&mut from)));
    block_on(handle.clear_cache(&log)).unwrap();
    group.bench_function("disk", |b| b.iter(|| next(&mut from)));
    group.finish();
    engine.shutdown().unwrap();
}

criterion_group!(benches, read);
criterion_main!(benches);
