//! Which partition a record goes to, as Kafka's producer decides: the partition the record
//! names; else Kafka's partition for its key (murmur2, so a coremq producer and a Java one
//! put a key in the same partition); else a sticky partition, kept until its batch fills
//! (KIP-480), so keyless records make full batches instead of one small batch per partition.

/// The partition choice of one topic.
#[derive(Debug, Default)]
pub struct Partitioner {
    /// Where records without a key go, until its batch fills.
    sticky: Option<i32>,
}

impl Partitioner {
    /// The partition for a record naming `partition` (or not) with `key` (or none), among
    /// `count` partitions; the partition itself as the error if it does not exist.
    pub fn choose(
        &mut self,
        partition: Option<i32>,
        key: Option<&[u8]>,
        count: usize,
    ) -> Result<i32, i32> {
        let partition = match (partition, key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => *self
                .sticky
                .get_or_insert_with(|| rand::random_range(0..count) as i32),
        };
        if partition < 0 || partition as usize >= count {
            return Err(partition);
        }
        Ok(partition)
    }

    /// The sticky partition's batch filled: the next keyless record picks a partition again.
    pub fn batch_filled(&mut self) {
        self.sticky = None;
    }
}

/// Kafka's partition for a key: murmur2 of the key bytes, sign bit cleared, modulo the
/// partition count (`Utils.toPositive(Utils.murmur2(key)) % numPartitions`).
pub fn partition_for_key(key: &[u8], partitions: usize) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as usize % partitions) as i32
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (index, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * index);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // The values Kafka's UtilsTest.testMurmur2 expects.
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()), expected, "murmur2({key:?})");
        }
    }

    #[test]
    fn keys_map_to_partitions_like_kafka() {
        assert_eq!(partition_for_key(b"abc", 10), 479470107 % 10);
        assert_eq!(
            partition_for_key(b"21", 7),
            (-973932308i32 & 0x7fff_ffff) % 7
        );
    }

    #[test]
    fn named_then_keyed_then_sticky_until_the_batch_fills() {
        let mut partitioner = Partitioner::default();
        assert_eq!(partitioner.choose(Some(3), Some(b"abc"), 8), Ok(3));
        assert_eq!(partitioner.choose(Some(8), None, 8), Err(8));
        assert_eq!(partitioner.choose(Some(-1), None, 8), Err(-1));
        assert_eq!(
            partitioner.choose(None, Some(b"abc"), 8),
            Ok(partition_for_key(b"abc", 8))
        );
        let sticky = partitioner.choose(None, None, 8).unwrap();
        assert!((0..8).contains(&sticky));
        for _ in 0..100 {
            assert_eq!(partitioner.choose(None, None, 8), Ok(sticky));
        }
        // Keyed records do not move the sticky partition.
        partitioner.choose(None, Some(b"21"), 8).unwrap();
        assert_eq!(partitioner.choose(None, None, 8), Ok(sticky));
        // Once its batch fills, keyless records spread: over many fills, every partition.
        let mut seen = [false; 8];
        for _ in 0..1000 {
            partitioner.batch_filled();
            seen[partitioner.choose(None, None, 8).unwrap() as usize] = true;
        }
        assert!(seen.iter().all(|&seen| seen), "{seen:?}");
    }
}
