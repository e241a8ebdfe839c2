//! The sparse offset index: one 8-byte entry (relative offset u32 BE, position u32 BE) per
//! `index_interval_bytes` of log, mapping an offset to a file position at or before it.
//!
//! The same bytes are looked up whether they sit in a `Vec` (active segment) or a read-only
//! memory map (sealed segment).

use crate::error::{Error, Result};
use crate::index::{Entries, IndexView, u32_at};
use crate::types::{Offset, Position};

pub const ENTRY_BYTES: usize = 8;

/// The offset index's entries: (offset, position).
#[derive(Debug)]
pub struct OffsetEntries;

impl Entries for OffsetEntries {
    const ENTRY_BYTES: usize = ENTRY_BYTES;
    type Entry = (Offset, Position);

    fn decode(entry: &[u8], base_offset: Offset) -> (Offset, Position) {
        (
            Offset(base_offset.0 + u64::from(u32_at(entry, 0))),
            Position(u64::from(u32_at(entry, 4))),
        )
    }
}

/// A read-only view of encoded offset index entries.
pub type OffsetIndex<'a> = IndexView<'a, OffsetEntries>;

impl OffsetIndex<'_> {
    /// The last indexed batch starting at or before `target`; the segment start if none.
    pub fn lookup(&self, target: Offset) -> (Offset, Position) {
        let after = self.partition_point(|(offset, _)| offset <= target);
        if after == 0 {
            (self.base_offset(), Position(0))
        } else {
            self.entry(after - 1)
        }
    }

    /// Checks the structure of index bytes read from disk against the log file's size:
    /// whole entries, strictly increasing offsets and positions, positions inside the log.
    pub fn check(entries: &[u8], base_offset: Offset, log_bytes: u64) -> Result<()> {
        if !entries.len().is_multiple_of(ENTRY_BYTES) {
            return Err(Error::invalid_batch(format!(
                "offset index of {} bytes is not a whole number of entries",
                entries.len()
            )));
        }
        let index = OffsetIndex::new(entries, base_offset);
        let mut previous: Option<(Offset, Position)> = None;
        for n in 0..index.len() {
            let (offset, position) = index.entry(n);
            if position.0 >= log_bytes.max(1) {
                return Err(Error::invalid_batch(format!(
                    "offset index entry {n} points past the end of the log"
                )));
            }
            if let Some((last_offset, last_position)) = previous
                && (offset <= last_offset || position <= last_position)
            {
                return Err(Error::invalid_batch(format!(
                    "offset index entry {n} is out of order"
                )));
            }
            previous = Some((offset, position));
        }
        Ok(())
    }
}

/// Builds the offset index of a segment as batches are appended.
#[derive(Debug, Clone)]
pub struct OffsetIndexWriter {
    entries: Vec<u8>,
    base_offset: Offset,
    interval_bytes: u64,
    bytes_since_entry: u64,
}

impl OffsetIndexWriter {
    pub fn new(base_offset: Offset, interval_bytes: u64) -> OffsetIndexWriter {
        OffsetIndexWriter {
            entries: Vec::new(),
            base_offset,
            interval_bytes,
            bytes_since_entry: 0,
        }
    }

    /// Records a batch at `position` of `batch_bytes` bytes that starts at `base_offset`.
    /// The first batch of a segment is always indexed, then one every `interval_bytes`.
    pub fn on_batch(&mut self, base_offset: Offset, position: Position, batch_bytes: u64) {
        if self.entries.is_empty() || self.bytes_since_entry >= self.interval_bytes {
            let relative = base_offset.0 - self.base_offset.0;
            assert!(
                relative <= u64::from(u32::MAX),
                "relative offset overflows the index"
            );
            assert!(
                position.0 <= u64::from(u32::MAX),
                "segment position overflows the index"
            );
            self.entries
                .extend_from_slice(&(relative as u32).to_be_bytes());
            self.entries
                .extend_from_slice(&(position.0 as u32).to_be_bytes());
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += batch_bytes;
    }

    /// Drops entries at or after `position` (the log was truncated there).
    pub fn truncate_to(&mut self, position: Position) {
        let keep = self.view().partition_point(|(_, at)| at < position);
        self.entries.truncate(keep * ENTRY_BYTES);
        self.bytes_since_entry = self.interval_bytes;
    }

    pub fn view(&self) -> OffsetIndex<'_> {
        OffsetIndex::new(&self.entries, self.base_offset)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_the_floor_entry() {
        let mut writer = OffsetIndexWriter::new(Offset(100), 4096);
        for n in 0..100u64 {
            writer.on_batch(Offset(100 + n * 10), Position(n * 1000), 1000);
        }
        let index = writer.view();
        assert!(
            index.len() > 10 && index.len() < 30,
            "sparse: {}",
            index.len()
        );
        assert_eq!(index.lookup(Offset(50)), (Offset(100), Position(0)));
        assert_eq!(index.lookup(Offset(100)), (Offset(100), Position(0)));
        for target in [105, 150, 599, 1000, 5000] {
            let (offset, position) = index.lookup(Offset(target));
            assert!(offset.0 <= target);
            assert_eq!(position.0, (offset.0 - 100) * 100);
        }
        OffsetIndex::check(writer.bytes(), Offset(100), 100_000).unwrap();
    }

    #[test]
    fn check_rejects_damaged_indexes() {
        let mut writer = OffsetIndexWriter::new(Offset(0), 0);
        writer.on_batch(Offset(0), Position(0), 10);
        writer.on_batch(Offset(5), Position(10), 10);
        let good = writer.bytes().to_vec();
        assert!(OffsetIndex::check(&good, Offset(0), 20).is_ok());
        assert!(OffsetIndex::check(&good[..7], Offset(0), 20).is_err());
        assert!(OffsetIndex::check(&good, Offset(0), 10).is_err());
        let mut swapped = good[8..].to_vec();
        swapped.extend_from_slice(&good[..8]);
        assert!(OffsetIndex::check(&swapped, Offset(0), 20).is_err());
    }

    #[test]
    fn truncate_drops_entries_past_the_cut() {
        let mut writer = OffsetIndexWriter::new(Offset(0), 0);
        for n in 0..10u64 {
            writer.on_batch(Offset(n), Position(n * 100), 100);
        }
        writer.truncate_to(Position(450));
        assert_eq!(writer.view().len(), 5);
        assert_eq!(writer.view().lookup(Offset(9)), (Offset(4), Position(400)));
    }
}
