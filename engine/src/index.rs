//! What the offset and time indexes share: a read-only view of fixed-size entries relative to
//! a segment's base offset, the same whether the bytes sit in a `Vec` (active segment) or a
//! read-only memory map (sealed segment), and the binary search over it. Each index names its
//! entry layout ([`Entries`]) and adds its own lookup and checks.

use std::marker::PhantomData;

use crate::types::Offset;

/// An index's entry layout: its size and how one entry decodes.
pub trait Entries {
    const ENTRY_BYTES: usize;
    type Entry;
    /// Decodes one entry (exactly `ENTRY_BYTES` bytes) of a segment starting at `base_offset`.
    fn decode(entry: &[u8], base_offset: Offset) -> Self::Entry;
}

/// A read-only view of encoded index entries.
#[derive(Debug)]
pub struct IndexView<'a, E> {
    entries: &'a [u8],
    base_offset: Offset,
    layout: PhantomData<E>,
}

impl<E> Clone for IndexView<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for IndexView<'_, E> {}

impl<'a, E: Entries> IndexView<'a, E> {
    /// Views `entries`, which must already have passed the index's check (or been written by
    /// its writer).
    pub fn new(entries: &'a [u8], base_offset: Offset) -> IndexView<'a, E> {
        debug_assert_eq!(entries.len() % E::ENTRY_BYTES, 0);
        IndexView {
            entries,
            base_offset,
            layout: PhantomData,
        }
    }

    pub fn base_offset(&self) -> Offset {
        self.base_offset
    }

    pub fn len(&self) -> usize {
        self.entries.len() / E::ENTRY_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entry(&self, n: usize) -> E::Entry {
        let at = n * E::ENTRY_BYTES;
        E::decode(&self.entries[at..at + E::ENTRY_BYTES], self.base_offset)
    }

    /// The first entry for which `before` is false (binary search; `before` must hold for a
    /// prefix of the entries and not after it).
    pub fn partition_point(&self, before: impl Fn(E::Entry) -> bool) -> usize {
        partition_point(self.len(), |n| before(self.entry(n)))
    }
}

/// Binary search over `0..count` for the first `n` where `before(n)` is false.
fn partition_point(count: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, count);
    while low < high {
        let middle = low + (high - low) / 2;
        if before(middle) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

/// The u32 at `at` in `bytes`, big-endian.
pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}
