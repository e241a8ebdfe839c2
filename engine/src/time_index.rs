//! The sparse time index: 12-byte entries (max timestamp i64 BE, relative offset u32 BE),
//! added when a batch raises the segment's max timestamp and the index interval has passed.
//! Timestamps in the index strictly increase.

use crate::error::{Error, Result};
use crate::index::{Entries, IndexView, u32_at};
use crate::types::{Offset, Timestamp};

pub const ENTRY_BYTES: usize = 12;

/// The time index's entries: (max timestamp, offset).
#[derive(Debug)]
pub struct TimeEntries;

impl Entries for TimeEntries {
    const ENTRY_BYTES: usize = ENTRY_BYTES;
    type Entry = (Timestamp, Offset);

    fn decode(entry: &[u8], base_offset: Offset) -> (Timestamp, Offset) {
        let timestamp = i64::from_be_bytes(entry[..8].try_into().expect("8 bytes"));
        (
            Timestamp(timestamp),
            Offset(base_offset.0 + u64::from(u32_at(entry, 8))),
        )
    }
}

/// A read-only view of encoded time index entries.
pub type TimeIndex<'a> = IndexView<'a, TimeEntries>;

impl TimeIndex<'_> {
    /// An offset from which a forward scan finds the first record with timestamp >= `target`:
    /// the offset of the last entry whose timestamp is below `target`, or the segment start.
    /// Every batch before that entry's batch holds only timestamps below it.
    pub fn lookup(&self, target: Timestamp) -> Offset {
        let below = self.partition_point(|(timestamp, _)| timestamp < target);
        if below == 0 {
            self.base_offset()
        } else {
            self.entry(below - 1).1
        }
    }

    /// Checks index bytes read from disk: whole entries, strictly increasing timestamps,
    /// non-decreasing offsets no later than `last_offset`.
    pub fn check(entries: &[u8], base_offset: Offset, last_offset: Offset) -> Result<()> {
        if !entries.len().is_multiple_of(ENTRY_BYTES) {
            return Err(Error::invalid_batch(
                "time index is not a whole number of entries",
            ));
        }
        let index = TimeIndex::new(entries, base_offset);
        let mut previous: Option<(Timestamp, Offset)> = None;
        for n in 0..index.len() {
            let (timestamp, offset) = index.entry(n);
            if offset > last_offset {
                return Err(Error::invalid_batch(format!(
                    "time index entry {n} is past the log"
                )));
            }
            if let Some((last_timestamp, previous_offset)) = previous
                && (timestamp <= last_timestamp || offset < previous_offset)
            {
                return Err(Error::invalid_batch(format!(
                    "time index entry {n} is out of order"
                )));
            }
            previous = Some((timestamp, offset));
        }
        Ok(())
    }
}

/// Builds the time index of a segment as batches are appended.
#[derive(Debug, Clone)]
pub struct TimeIndexWriter {
    entries: Vec<u8>,
    base_offset: Offset,
    interval_bytes: u64,
    bytes_since_entry: u64,
    max_timestamp: Option<Timestamp>,
    /// Base offset of the batch holding `max_timestamp`.
    max_timestamp_offset: Offset,
}

impl TimeIndexWriter {
    pub fn new(base_offset: Offset, interval_bytes: u64) -> TimeIndexWriter {
        TimeIndexWriter {
            entries: Vec::new(),
            base_offset,
            interval_bytes,
            bytes_since_entry: 0,
            max_timestamp: None,
            max_timestamp_offset: base_offset,
        }
    }

    pub fn on_batch(&mut self, base_offset: Offset, max_timestamp: Timestamp, batch_bytes: u64) {
        let raises_max = self.max_timestamp.is_none_or(|max| max_timestamp > max);
        if raises_max {
            self.max_timestamp = Some(max_timestamp);
            self.max_timestamp_offset = base_offset;
            if self.entries.is_empty() || self.bytes_since_entry >= self.interval_bytes {
                self.push(max_timestamp, base_offset);
                self.bytes_since_entry = 0;
            }
        }
        self.bytes_since_entry += batch_bytes;
    }

    fn push(&mut self, timestamp: Timestamp, offset: Offset) {
        let relative = offset.0 - self.base_offset.0;
        assert!(
            relative <= u64::from(u32::MAX),
            "relative offset overflows the index"
        );
        self.entries.extend_from_slice(&timestamp.0.to_be_bytes());
        self.entries
            .extend_from_slice(&(relative as u32).to_be_bytes());
    }

    /// Adds the segment's max timestamp as the last entry if the interval skipped it, so a
    /// sealed segment's max timestamp is its last entry (as Kafka does on roll).
    pub fn seal(&mut self) {
        let view = self.view();
        let last = (!view.is_empty()).then(|| view.entry(view.len() - 1).0);
        if let Some(max) = self.max_timestamp
            && last.is_none_or(|last| last < max)
        {
            self.push(max, self.max_timestamp_offset);
        }
    }

    /// Drops entries for batches at or after `offset` (their append was rolled back). The
    /// max timestamp falls back to the last remaining entry, which may understate it until
    /// the next batch raises it: time lookups stay correct, only more conservative.
    pub fn truncate_to(&mut self, offset: Offset) {
        let keep = self.view().partition_point(|(_, at)| at < offset);
        self.entries.truncate(keep * ENTRY_BYTES);
        let view = self.view();
        let last = (!view.is_empty()).then(|| view.entry(view.len() - 1));
        self.max_timestamp = last.map(|(timestamp, _)| timestamp);
        self.max_timestamp_offset = last.map_or(self.base_offset, |(_, offset)| offset);
        self.bytes_since_entry = self.interval_bytes;
    }

    /// The largest batch max timestamp seen, if any batch was seen.
    pub fn max_timestamp(&self) -> Option<Timestamp> {
        self.max_timestamp
    }

    pub fn view(&self) -> TimeIndex<'_> {
        TimeIndex::new(&self.entries, self.base_offset)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_starts_before_the_first_later_timestamp() {
        let mut writer = TimeIndexWriter::new(Offset(0), 0);
        for n in 0..10u64 {
            writer.on_batch(Offset(n * 10), Timestamp(1_000 + n as i64 * 100), 100);
        }
        writer.on_batch(Offset(100), Timestamp(1_050), 100);
        let index = writer.view();
        assert_eq!(
            index.len(),
            10,
            "a batch that does not raise the max is not indexed"
        );
        assert_eq!(index.lookup(Timestamp(0)), Offset(0));
        assert_eq!(index.lookup(Timestamp(1_000)), Offset(0));
        assert_eq!(index.lookup(Timestamp(1_250)), Offset(20));
        assert_eq!(index.lookup(Timestamp(99_999)), Offset(90));
        assert_eq!(writer.max_timestamp(), Some(Timestamp(1_900)));
        TimeIndex::check(writer.bytes(), Offset(0), Offset(100)).unwrap();
        assert!(TimeIndex::check(writer.bytes(), Offset(0), Offset(50)).is_err());
    }

    #[test]
    fn seal_indexes_a_skipped_max() {
        let mut writer = TimeIndexWriter::new(Offset(0), 1000);
        writer.on_batch(Offset(0), Timestamp(10), 100);
        writer.on_batch(Offset(5), Timestamp(20), 100);
        assert_eq!(writer.view().len(), 1);
        writer.seal();
        assert_eq!(writer.view().entry(1), (Timestamp(20), Offset(5)));
        writer.truncate_to(Offset(5));
        assert_eq!(writer.max_timestamp(), Some(Timestamp(10)));
    }
}
