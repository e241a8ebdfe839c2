//! Recent batches in memory, so readers at or near the head are served without touching the
//! disk. Each log keeps its newest batches in a [`TailCache`]; one [`ShardCache`] budget is
//! shared by every log of a shard. Batches not yet written to the file are always kept (they
//! are pinned); written ones are evicted oldest append first, across the shard's logs, once
//! the shard holds more than its budget: a busy partition uses what idle ones do not, and a
//! partition that stops taking appends gives its memory up as the others write.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use bytes::Bytes;

use crate::log::Log;
use crate::types::Offset;

/// One shard's memory for recent batches, shared by its logs.
#[derive(Debug)]
pub struct ShardCache {
    budget: usize,
    /// Bytes every log of the shard holds in its tail cache.
    used: Cell<usize>,
    /// The cached batches in the order they were appended, across the shard's logs.
    order: RefCell<VecDeque<Cached>>,
}

/// A run of consecutive batches one log appended, evicted together.
#[derive(Debug)]
struct Cached {
    log: Weak<Log>,
    next_offset: Offset,
    bytes: usize,
}

/// Batches a log appends back to back share one entry of the order up to this many bytes,
/// so the order costs one entry per run instead of one per batch (tiny batches would
/// otherwise spend a sizeable part of the budget on bookkeeping), and eviction stays fine
/// grained against any budget worth having.
const RUN_BYTES_MAX: usize = 256 << 10;

impl ShardCache {
    pub fn new(budget: usize) -> Rc<ShardCache> {
        Rc::new(ShardCache {
            budget,
            used: Cell::new(0),
            order: RefCell::default(),
        })
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes the shard's logs hold in memory.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    fn grow(&self, bytes: usize) {
        self.used.set(self.used.get() + bytes);
    }

    fn shrink(&self, bytes: usize) {
        self.used.set(self.used.get() - bytes);
    }

    /// Notes that `log` cached a batch of `bytes` ending before `next_offset`, the newest of
    /// the shard.
    pub(crate) fn appended(&self, log: &Rc<Log>, next_offset: Offset, bytes: usize) {
        let mut order = self.order.borrow_mut();
        if let Some(last) = order.back_mut()
            && last.bytes < RUN_BYTES_MAX
            && std::ptr::eq(last.log.as_ptr(), Rc::as_ptr(log))
        {
            last.next_offset = next_offset;
            last.bytes += bytes;
            return;
        }
        order.push_back(Cached {
            log: Rc::downgrade(log),
            next_offset,
            bytes,
        });
    }

    /// Evicts written batches, oldest append first, until the shard holds no more than its
    /// budget; stops at a batch not written yet (everything after it is newer). Called with
    /// no log borrowed.
    pub(crate) fn enforce(&self) {
        while self.used.get() > self.budget {
            let Some(oldest) = self.order.borrow_mut().pop_front() else {
                return;
            };
            let Some(log) = oldest.log.upgrade() else {
                continue;
            };
            if !log.evict_cached_through(oldest.next_offset) {
                self.order.borrow_mut().push_front(oldest);
                return;
            }
        }
    }

    /// Forgets batches that left the caches another way (a compacted segment swapped in, a
    /// cache dropped, a deleted log), so the order does not grow while under budget.
    pub(crate) fn prune(&self) {
        self.order.borrow_mut().retain(|cached| {
            cached
                .log
                .upgrade()
                .is_some_and(|log| log.caches(cached.next_offset))
        });
    }
}

#[derive(Debug)]
struct Entry {
    base_offset: Offset,
    next_offset: Offset,
    batch: Bytes,
}

/// One log's newest batches, counted against its shard's [`ShardCache`].
#[derive(Debug)]
pub struct TailCache {
    entries: VecDeque<Entry>,
    bytes: usize,
    shard: Rc<ShardCache>,
}

impl TailCache {
    pub fn new(shard: Rc<ShardCache>) -> TailCache {
        TailCache {
            entries: VecDeque::new(),
            bytes: 0,
            shard,
        }
    }

    pub fn push(&mut self, base_offset: Offset, next_offset: Offset, batch: Bytes) {
        debug_assert!(
            self.entries
                .back()
                .is_none_or(|last| last.next_offset <= base_offset)
        );
        self.bytes += batch.len();
        self.shard.grow(batch.len());
        self.entries.push_back(Entry {
            base_offset,
            next_offset,
            batch,
        });
    }

    /// Drops batches that end at or before `offset` (evicted, or rewritten on disk by
    /// compaction).
    pub fn drop_through(&mut self, offset: Offset) {
        while self
            .entries
            .front()
            .is_some_and(|first| first.next_offset <= offset)
        {
            let first = self.entries.pop_front().expect("checked non-empty");
            self.bytes -= first.batch.len();
            self.shard.shrink(first.batch.len());
        }
    }

    /// Whether the batch ending before `next_offset` may still be here (it was not dropped
    /// from the front).
    pub fn holds(&self, next_offset: Offset) -> bool {
        self.entries
            .front()
            .is_some_and(|first| first.next_offset <= next_offset)
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
            self.shard.shrink(last.batch.len());
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.shard.shrink(self.bytes);
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

/// A log that goes (deleted, or its shard stopping) gives its memory back to the shard.
impl Drop for TailCache {
    fn drop(&mut self) {
        self.shard.shrink(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> TailCache {
        let mut cache = TailCache::new(ShardCache::new(1 << 20));
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
    fn the_shard_counts_what_each_cache_holds() {
        let shard = ShardCache::new(1 << 20);
        let mut cache = TailCache::new(shard.clone());
        for n in 0..10u64 {
            cache.push(
                Offset(n * 10),
                Offset(n * 10 + 10),
                Bytes::from(vec![0; 100]),
            );
        }
        assert_eq!(shard.used(), 1000);
        cache.drop_through(Offset(50));
        assert!(!cache.covers(Offset(49)));
        assert!(cache.covers(Offset(50)));
        assert!(cache.holds(Offset(60)) && !cache.holds(Offset(40)));
        cache.truncate_from(Offset(70));
        assert_eq!(cache.read(Offset(50), Offset(1000), 10_000).len(), 2);
        assert_eq!(shard.used(), 200);
        cache.clear();
        assert_eq!(shard.used(), 0);
    }
}
