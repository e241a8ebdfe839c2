//! Which shard owns a key (a log's `topic-partition`): a fixed placement if configured,
//! else CRC-32C of the key modulo the shard count, stable across restarts with the same
//! shard count.

use std::collections::BTreeMap;

pub fn placement(key: &str, shards: usize, fixed: &BTreeMap<String, usize>) -> usize {
    match fixed.get(key) {
        Some(&shard) => shard % shards,
        None => crc32c::crc32c(key.as_bytes()) as usize % shards,
    }
}
