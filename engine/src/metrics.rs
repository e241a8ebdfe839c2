//! Counters and histograms a shard keeps about its logs, for the broker to export.
//! Each shard owns its own (no sharing, no atomics); the engine merges snapshots.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use hdrhistogram::Histogram;

#[derive(Debug)]
pub struct Metrics {
    /// Appended by producers through a leader (replicated batches are counted apart).
    pub bytes_appended: Cell<u64>,
    pub records_appended: Cell<u64>,
    pub batches_appended: Cell<u64>,
    /// Appended as a follower (or a controller voter) copying a leader's batches.
    pub replica_bytes_appended: Cell<u64>,
    pub bytes_read: Cell<u64>,
    pub records_read: Cell<u64>,
    pub cache_hits: Cell<u64>,
    pub cache_misses: Cell<u64>,
    /// Disk reads served from a readahead chunk.
    pub readahead_hits: Cell<u64>,
    /// Retried batches of idempotent producers, answered without storing them again.
    pub duplicate_batches: Cell<u64>,
    pub append_errors: Cell<u64>,
    pub segments: Cell<u64>,
    pub segments_deleted: Cell<u64>,
    pub compactions: Cell<u64>,
    fsync_latency_us: RefCell<Histogram<u64>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            bytes_appended: Cell::default(),
            records_appended: Cell::default(),
            batches_appended: Cell::default(),
            replica_bytes_appended: Cell::default(),
            bytes_read: Cell::default(),
            records_read: Cell::default(),
            cache_hits: Cell::default(),
            cache_misses: Cell::default(),
            readahead_hits: Cell::default(),
            duplicate_batches: Cell::default(),
            append_errors: Cell::default(),
            segments: Cell::default(),
            segments_deleted: Cell::default(),
            compactions: Cell::default(),
            fsync_latency_us: RefCell::new(new_histogram()),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

pub(crate) fn add(cell: &Cell<u64>, amount: u64) {
    cell.set(cell.get() + amount);
}

impl Metrics {
    pub fn record_fsync(&self, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, 60_000_000);
        self.fsync_latency_us
            .borrow_mut()
            .record(micros)
            .expect("clamped into bounds");
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            bytes_appended: self.bytes_appended.get(),
            records_appended: self.records_appended.get(),
            batches_appended: self.batches_appended.get(),
            replica_bytes_appended: self.replica_bytes_appended.get(),
            bytes_read: self.bytes_read.get(),
            records_read: self.records_read.get(),
            cache_hits: self.cache_hits.get(),
            cache_misses: self.cache_misses.get(),
            readahead_hits: self.readahead_hits.get(),
            duplicate_batches: self.duplicate_batches.get(),
            append_errors: self.append_errors.get(),
            segments: self.segments.get(),
            segments_deleted: self.segments_deleted.get(),
            compactions: self.compactions.get(),
            cache_bytes: 0,
            cache_budget_bytes: 0,
            fsync_latency_us: self.fsync_latency_us.borrow().clone(),
        }
    }
}

/// A point-in-time copy of one shard's metrics (or several shards' merged).
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub bytes_appended: u64,
    pub records_appended: u64,
    pub batches_appended: u64,
    pub replica_bytes_appended: u64,
    pub bytes_read: u64,
    pub records_read: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Disk reads served from a readahead chunk.
    pub readahead_hits: u64,
    /// Retried batches of idempotent producers, answered without storing them again.
    pub duplicate_batches: u64,
    pub append_errors: u64,
    /// Segments currently open (sealed and active).
    pub segments: u64,
    pub segments_deleted: u64,
    pub compactions: u64,
    /// Bytes of recent batches held in memory (a gauge, taken with the snapshot).
    pub cache_bytes: u64,
    /// The shards' memory budgets for recent batches, together.
    pub cache_budget_bytes: u64,
    /// fdatasync latency in microseconds.
    pub fsync_latency_us: Histogram<u64>,
}

impl Default for MetricsSnapshot {
    fn default() -> MetricsSnapshot {
        Metrics::default().snapshot()
    }
}

impl MetricsSnapshot {
    /// Fraction of reads served from the tail cache.
    pub fn cache_hit_rate(&self) -> f64 {
        let total = self.cache_hits + self.cache_misses;
        if total == 0 {
            0.0
        } else {
            self.cache_hits as f64 / total as f64
        }
    }

    pub fn merge(&mut self, other: &MetricsSnapshot) {
        self.bytes_appended += other.bytes_appended;
        self.records_appended += other.records_appended;
        self.batches_appended += other.batches_appended;
        self.replica_bytes_appended += other.replica_bytes_appended;
        self.bytes_read += other.bytes_read;
        self.records_read += other.records_read;
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.readahead_hits += other.readahead_hits;
        self.duplicate_batches += other.duplicate_batches;
        self.append_errors += other.append_errors;
        self.segments += other.segments;
        self.segments_deleted += other.segments_deleted;
        self.compactions += other.compactions;
        self.cache_bytes += other.cache_bytes;
        self.cache_budget_bytes += other.cache_budget_bytes;
        self.fsync_latency_us
            .add(&other.fsync_latency_us)
            .expect("same histogram bounds");
    }
}
