//! Committed offsets as records of the internal compacted topic `__consumer_offsets`, in
//! Kafka's own layout: key version 1 (group, topic, partition), value version 3 (offset,
//! leader epoch, metadata, commit timestamp); a null value (tombstone) deletes the key.
//! Compaction keeps the latest commit per key; a restart replays the topic.

use bytes::{Buf, BufMut, Bytes};

/// One partition's committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

const KEY_VERSION: i16 = 1;
const VALUE_VERSION: i16 = 3;

fn put_string(out: &mut Vec<u8>, text: &str) {
    let length = i16::try_from(text.len()).expect("checked by the caller: at most i16::MAX bytes");
    out.put_i16(length);
    out.put_slice(text.as_bytes());
}

/// Longest group id, topic name or metadata string a record can carry.
pub const STRING_BYTES_MAX: usize = i16::MAX as usize;

pub fn encode_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + group.len() + topic.len());
    out.put_i16(KEY_VERSION);
    put_string(&mut out, group);
    put_string(&mut out, topic);
    out.put_i32(partition);
    out
}

pub fn encode_value(committed: &Committed) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + committed.metadata.len());
    out.put_i16(VALUE_VERSION);
    out.put_i64(committed.offset);
    out.put_i32(committed.leader_epoch);
    put_string(&mut out, &committed.metadata);
    out.put_i64(committed.commit_timestamp);
    out
}

/// A string: int16 length, then UTF-8.
fn get_string(bytes: &mut &[u8]) -> Option<String> {
    let length = usize::try_from(bytes.try_get_i16().ok()?).ok()?;
    if bytes.remaining() < length {
        return None;
    }
    let text = String::from_utf8(bytes[..length].to_vec()).ok()?;
    bytes.advance(length);
    Some(text)
}

/// A record's key: `(group, topic, partition)` for an offset commit, `None` for other
/// record kinds (Kafka's group metadata records) or bytes that do not parse.
pub fn decode_key(mut key: &[u8]) -> Option<(String, String, i32)> {
    if !matches!(key.try_get_i16().ok()?, 0 | 1) {
        return None;
    }
    let group = get_string(&mut key)?;
    let topic = get_string(&mut key)?;
    Some((group, topic, key.try_get_i32().ok()?))
}

pub fn decode_value(value: &Bytes) -> Option<Committed> {
    let mut value: &[u8] = value;
    let version = value.try_get_i16().ok()?;
    if !(0..=3).contains(&version) {
        return None;
    }
    let offset = value.try_get_i64().ok()?;
    let leader_epoch = if version >= 3 {
        value.try_get_i32().ok()?
    } else {
        -1
    };
    let metadata = get_string(&mut value)?;
    let commit_timestamp = value.try_get_i64().ok()?;
    if version == 1 {
        value.try_get_i64().ok()?;
    }
    Some(Committed {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp,
    })
}

/// The `__consumer_offsets` partition of `group`: Kafka's `abs(groupId.hashCode) % n`.
pub fn partition_for(group: &str, partitions: u32) -> u32 {
    let hash = group.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Kafka's Utils.abs maps i32::MIN to 0 (`& 0x7fffffff`).
    (hash & i32::MAX) as u32 % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let committed = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: "meta".into(),
            commit_timestamp: 1_700_000_000_000,
        };
        let key = encode_key("group", "topic", 7);
        assert_eq!(decode_key(&key), Some(("group".into(), "topic".into(), 7)));
        let value = Bytes::from(encode_value(&committed));
        assert_eq!(decode_value(&value), Some(committed));
        assert_eq!(decode_key(&key[..key.len() - 1]), None);
        assert_eq!(decode_value(&value.slice(..value.len() - 1)), None);
        // A group metadata key (version 2) is not an offset key.
        assert_eq!(decode_key(&[0, 2, 0, 1, b'g']), None);
    }

    #[test]
    fn groups_map_to_partitions_as_kafka_does() {
        // Java: "my-group".hashCode() == -1_906_497_762; & 0x7fffffff == 240_985_886; % 50 == 36.
        assert_eq!(partition_for("my-group", 50), 36);
        assert_eq!(partition_for("", 16), 0);
        for group in ["a", "consumers", "x".repeat(100).as_str()] {
            assert!(partition_for(group, 16) < 16);
        }
    }
}
