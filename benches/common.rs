//! Inputs shared by the benches.
#![allow(dead_code)]

use bytes::Bytes;
use coremq_engine::{BatchBuilder, Compression, Engine, EngineConfig, Timestamp};

/// A one-shard engine in a temporary directory under `COREMQ_BENCH_DIR` (default: the
/// current directory, so it measures the project's disk rather than a tmpfs).
pub fn engine() -> (tempfile::TempDir, Engine) {
    let parent = std::env::var("COREMQ_BENCH_DIR").unwrap_or(".".into());
    let dir = tempfile::tempdir_in(parent).unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.shards = 1;
    let engine = Engine::start(config).unwrap();
    (dir, engine)
}

/// Quote-like records: a short symbol key and a `value_bytes` payload that compresses the
/// way market data does (some repetition, some noise).
pub fn batch(records: u32, value_bytes: usize, codec: Compression) -> Bytes {
    let mut builder = BatchBuilder::new(codec);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..records {
        let mut value =
            format!("{{\"px\":{}.{},\"qty\":{}}}", 100 + n % 7, n % 100, n % 13).into_bytes();
        while value.len() < value_bytes {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            value.push(b'a' + (state % 16) as u8);
        }
        value.truncate(value_bytes);
        let key = format!("SYM{}", n % 50);
        builder.push(
            Timestamp(1_700_000_000_000 + i64::from(n)),
            Some(key.as_bytes()),
            Some(&value),
            &[],
        );
    }
    builder.build()
}
