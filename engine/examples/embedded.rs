//! The README's embedded-engine example, compiled by `cargo test --all-targets`.
use coremq_engine::{BatchBuilder, Compression, Engine, EngineConfig, Isolation, Offset};
use coremq_engine::{Timestamp, TopicPartition, record::decode_records};
use futures_lite::future::block_on;

fn main() -> Result<(), coremq_engine::Error> {
    let dir = std::env::temp_dir().join("coremq-example");
    let engine = Engine::start(EngineConfig::new(&dir))?; // one shard per core
    let handle = engine.handle(); // Clone + Send: use it from any thread
    let quotes = TopicPartition::new("quotes", 0)?;
    block_on(handle.create_log(&quotes, None))?; // defaults: fsync per group commit
    let mut batch = BatchBuilder::new(Compression::Zstd);
    batch.push(Timestamp::now(), Some(b"EURUSD"), Some(b"1.0842"), &[]);
    let appended = block_on(handle.append(&quotes, batch.build()))?;
    let read = block_on(handle.read(&quotes, Offset(0), 1 << 20, Isolation::Written))?;
    let records = decode_records(&read.batches[0], 1 << 20)?;
    println!("{} -> {:?}", appended.base_offset, records[0].value);
    engine.shutdown()
}
