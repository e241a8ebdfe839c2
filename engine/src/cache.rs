//! The tail cache: the most recent batches of a log, in memory, so readers at the head are
//! served without touching the disk. Batches not yet written to the file are always here
//! (they are pinned); written ones are evicted oldest first beyond the byte budget.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::types::Offset;

#[derive(Debug)]
struct Entry {
    base_offset: Offset,
    next_offset: Offset,
    batch: Bytes,
}

#[derive(Debug, Default)]
pub struct TailCache {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl TailCache {
    pub fn push(&mut self, base_offset: Offset, next_offset: Offset, batch: Bytes) {
        debug_assert!(
            self.entries
                .back()
                .is_none_or(|last| last.next_offset <= base_offset)
        );
        self.bytes += batch.len();
        self.entries.push_back(Entry {
            base_offset,
            next_offset,
            batch,
        });
    }

    /// Evicts written batches (those ending at or before `written`) beyond `budget` bytes.
    pub fn evict(&mut self, budget: usize, written: Offset) {
        while self.bytes > budget {
            match self.entries.front() {
                Some(front) if front.next_offset <= written => {
                    self.bytes -= front.batch.len();
                    self.entries.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Drops batches that end at or before `offset` (compaction rewrote them on disk).
    pub fn drop_through(&mut self, offset: Offset) {
        while self
            .entries
            .front()
            .is_some_and(|first| first.next_offset <= offset)
        {
            let first = self.entries.pop_front().expect("checked non-empty");
            self.bytes -= first.batch.len();
        }
    }

    /// Drops batches at or after `offset` (their append was rolled back).
    pub fn truncate_from(&mut self, offset: Offset) {
        while self
            .entries
            .back()
            .is_some_and(|last| last.next_offset > offset)
        {
            let last = self.entries.pop_back().expect("checked non-empty");
            self.bytes -= last.batch.len();
        }
    }

    /// Bytes of the cached batches.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Whether every batch from `offset` up to the log end is in the cache.
    pub fn covers(&self, offset: Offset) -> bool {
        self.entries
            .front()
            .is_some_and(|first| first.base_offset <= offset)
    }

    /// Whole batches from the one containing `from`, stopping before `upper` and after
    /// `max_bytes` (the first batch is returned whatever its size).
    pub fn read(&self, from: Offset, upper: Offset, max_bytes: usize) -> Vec<Bytes> {
        let start = self
            .entries
            .partition_point(|entry| entry.next_offset <= from);
        let mut batches = Vec::new();
        let mut bytes = 0;
        for entry in self.entries.range(start..) {
            if entry.base_offset >= upper {
                break;
            }
            if !batches.is_empty() && bytes + entry.batch.len() > max_bytes {
                break;
            }
            bytes += entry.batch.len();
            batches.push(entry.batch.clone());
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> TailCache {
        let mut cache = TailCache::default();
        for n in 0..10u64 {
            cache.push(
                Offset(n * 10),
                Offset(n * 10 + 10),
                Bytes::from(vec![n as u8; 100]),
            );
        }
        cache
    }

    #[test]
    fn read_starts_at_the_containing_batch_and_respects_bounds() {
        let cache = cache();
        assert!(cache.covers(Offset(0)));
        let batches = cache.read(Offset(25), Offset(100), 250);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0][0], 2);
        assert_eq!(cache.read(Offset(25), Offset(40), 10_000).len(), 2);
        assert_eq!(
            cache.read(Offset(25), Offset(100), 1).len(),
            1,
            "first batch always"
        );
        assert!(cache.read(Offset(100), Offset(100), 1000).is_empty());
    }

    #[test]
    fn eviction_keeps_unwritten_batches() {
        let mut cache = cache();
        cache.evict(0, Offset(50));
        assert!(!cache.covers(Offset(49)));
        assert!(cache.covers(Offset(50)));
        cache.truncate_from(Offset(70));
        assert_eq!(cache.read(Offset(50), Offset(1000), 10_000).len(), 2);
    }
}
