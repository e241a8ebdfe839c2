//! The `coremq` binary. Until the Kafka front end lands, it runs the embedded engine on
//! `./data` (or the directory given as the first argument): appends quote-sized records
//! through a shard-per-core engine, reads them back, and prints what it measured.

use std::time::Instant;

use coremq_engine::{
    BatchBuilder, BatchHeader, Compression, Engine, EngineConfig, Isolation, Timestamp,
    TopicPartition,
};
use futures_lite::future::block_on;

const BATCHES: u64 = 2_000;
const RECORDS_PER_BATCH: u32 = 100;

fn main() {
    if let Err(error) = run() {
        eprintln!("coremq: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), coremq_engine::Error> {
    let data_dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "data".to_string());
    let engine = Engine::start(EngineConfig::new(&data_dir))?;
    let handle = engine.handle();
    let log = TopicPartition::new("quotes", 0)?;
    block_on(handle.create_log(&log, None))?;
    let start = block_on(handle.offsets(&log))?.log_end;
    println!(
        "coremq engine: {} shards, data in {data_dir}, quotes-0 ends at {start}",
        handle.shard_count()
    );

    let began = Instant::now();
    for batch in 0..BATCHES {
        let mut builder = BatchBuilder::new(Compression::Zstd);
        for n in 0..RECORDS_PER_BATCH {
            let value = format!(
                "{{\"sym\":\"SYM{}\",\"px\":{}.{:02}}}",
                n % 50,
                100 + batch % 9,
                n
            );
            builder.push(Timestamp::now(), Some(b"SYM"), Some(value.as_bytes()), &[]);
        }
        block_on(handle.append(&log, builder.build()))?;
    }
    let elapsed = began.elapsed();
    let records = BATCHES * u64::from(RECORDS_PER_BATCH);
    println!(
        "appended {records} records in {BATCHES} zstd batches (fsync per group commit) in {:.2?}: {:.0} records/s",
        elapsed,
        records as f64 / elapsed.as_secs_f64()
    );

    let mut from = start;
    let mut read_records = 0u64;
    let end = block_on(handle.offsets(&log))?.log_end;
    while from < end {
        let read = block_on(handle.read(&log, from, 1 << 20, Isolation::Written))?;
        for batch in &read.batches {
            let header = BatchHeader::parse(batch)?;
            read_records += u64::from(header.records_count);
            from = header.next_offset();
        }
    }
    assert_eq!(read_records, records, "every appended record reads back");
    let metrics = block_on(handle.metrics())?;
    println!(
        "read back {read_records} records; log now [{}, {}); fsync p99 {} us; cache hit rate {:.2}",
        block_on(handle.offsets(&log))?.log_start,
        end,
        metrics.fsync_latency_us.value_at_quantile(0.99),
        metrics.cache_hit_rate()
    );
    engine.shutdown()
}
