//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::path::Path;

use bytes::Bytes;
use coremq_engine::{
    BatchBuilder, Compression, Durability, Engine, EngineConfig, Handle, LogConfig, Timestamp,
    TopicPartition,
};

pub fn config(dir: &Path, shards: usize) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shards = shards;
    config.pin_shards = false;
    config.io_memory_bytes = 256 << 10;
    config.cleanup_interval_ms = 3_600_000;
    config
}

/// Starts an engine on `dir`. The lock of an engine this test shut down can outlive it for
/// a moment: a test beside it that forks a process (mount, kill) shares every open file
/// until the child's exec closes them, the lock file among them, so a start that finds the
/// directory locked by this very process tries again for a while.
pub fn start(dir: &Path, shards: usize) -> (Engine, Handle) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let engine = loop {
        match Engine::start(config(dir, shards)) {
            Err(coremq_engine::Error::DataDirLocked {
                holder: Some(holder),
                ..
            }) if holder == std::process::id() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            started => break started.expect("engine starts"),
        }
    };
    let handle = engine.handle();
    (engine, handle)
}

pub fn tp(topic: &str, partition: u32) -> TopicPartition {
    TopicPartition::new(topic, partition).unwrap()
}

pub fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 1024,
        durability: Durability::Never,
        ..LogConfig::default()
    }
}

/// A batch of `count` records whose values encode (`tag`, record number) so tests can
/// check contents byte for byte.
pub fn batch(
    tag: u64,
    count: u32,
    value_bytes: usize,
    timestamp: i64,
    codec: Compression,
) -> Bytes {
    let mut builder = BatchBuilder::new(codec);
    for n in 0..count {
        let mut value = format!("{tag}:{n}:").into_bytes();
        value.resize(value_bytes.max(value.len()), b'x');
        let key = format!("key-{}", (tag + u64::from(n)) % 97);
        builder.push(
            Timestamp(timestamp),
            Some(key.as_bytes()),
            Some(&value),
            &[],
        );
    }
    builder.build()
}

pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::block_on(future)
}
