//! Committed offsets and group membership as records of the internal compacted topic
//! `__consumer_offsets`, in Kafka's own layout: an offset commit is key version 1 (group,
//! topic, partition) with value version 3 (offset, leader epoch, metadata, commit
//! timestamp); a group's membership is key version 2 (group) with value version 3 (Kafka's
//! `GroupMetadataValue`: protocol type, generation, protocol, leader, state timestamp, and
//! each member's ids, timeouts, subscription and assignment). A null value (tombstone)
//! deletes the key. Compaction keeps the latest record per key; a coordinator replays the
//! partition when it starts or takes it over.

use bytes::{Buf, BufMut, Bytes};

/// One partition's committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

/// A group's membership at one generation, as Kafka's `GroupMetadataValue` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGroup {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp: i64,
    pub members: Vec<StoredMember>,
}

/// One member of a [`StoredGroup`]: its metadata for the chosen protocol (the
/// subscription) and the assignment its leader gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

const KEY_VERSION: i16 = 1;
const VALUE_VERSION: i16 = 3;
const GROUP_KEY_VERSION: i16 = 2;
const GROUP_VALUE_VERSION: i16 = 3;

fn put_string(out: &mut Vec<u8>, text: &str) {
    let length = i16::try_from(text.len()).expect("checked by the caller: at most i16::MAX bytes");
    out.put_i16(length);
    out.put_slice(text.as_bytes());
}

/// A nullable string: length -1 for none.
fn put_nullable(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => put_string(out, text),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = i32::try_from(bytes.len()).expect("checked by the caller: at most i32::MAX");
    out.put_i32(length);
    out.put_slice(bytes);
}

pub fn encode_group_key(group: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + group.len());
    out.put_i16(GROUP_KEY_VERSION);
    put_string(&mut out, group);
    out
}

/// The group's record value; `None` if a string in it is longer than a record can carry
/// (then the membership is not stored, and members join again after a move).
pub fn encode_group_value(group: &StoredGroup) -> Option<Vec<u8>> {
    let fits = |text: &str| text.len() <= STRING_BYTES_MAX;
    let fits_all = fits(&group.protocol_type)
        && group.protocol.as_deref().is_none_or(fits)
        && group.leader.as_deref().is_none_or(fits)
        && group.members.iter().all(|member| {
            fits(&member.member_id)
                && member.instance_id.as_deref().is_none_or(fits)
                && fits(&member.client_id)
                && fits(&member.client_host)
                && member.subscription.len() <= i32::MAX as usize
                && member.assignment.len() <= i32::MAX as usize
        });
    let count = i32::try_from(group.members.len()).ok()?;
    if !fits_all {
        return None;
    }
    let mut out = Vec::new();
    out.put_i16(GROUP_VALUE_VERSION);
    put_string(&mut out, &group.protocol_type);
    out.put_i32(group.generation);
    put_nullable(&mut out, group.protocol.as_deref());
    put_nullable(&mut out, group.leader.as_deref());
    out.put_i64(group.state_timestamp);
    out.put_i32(count);
    for member in &group.members {
        put_string(&mut out, &member.member_id);
        put_nullable(&mut out, member.instance_id.as_deref());
        put_string(&mut out, &member.client_id);
        put_string(&mut out, &member.client_host);
        out.put_i32(member.rebalance_timeout_ms);
        out.put_i32(member.session_timeout_ms);
        put_bytes(&mut out, &member.subscription);
        put_bytes(&mut out, &member.assignment);
    }
    Some(out)
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

/// A nullable string: `Some(None)` for length -1.
fn get_nullable(bytes: &mut &[u8]) -> Option<Option<String>> {
    let mut peek = *bytes;
    if peek.try_get_i16().ok()? == -1 {
        *bytes = peek;
        return Some(None);
    }
    get_string(bytes).map(Some)
}

/// Bytes: int32 length, checked against what is there before anything is taken.
fn get_bytes(bytes: &mut &[u8]) -> Option<Bytes> {
    let length = usize::try_from(bytes.try_get_i32().ok()?).ok()?;
    if bytes.remaining() < length {
        return None;
    }
    let taken = Bytes::copy_from_slice(&bytes[..length]);
    bytes.advance(length);
    Some(taken)
}

/// A group metadata record's key (version 2): the group id.
pub fn decode_group_key(mut key: &[u8]) -> Option<String> {
    if key.try_get_i16().ok()? != GROUP_KEY_VERSION {
        return None;
    }
    let group = get_string(&mut key)?;
    key.is_empty().then_some(group)
}

/// A group metadata value of versions 0 to 3 (4 is Kafka's flexible encoding, which coremq
/// does not write). The member count is trusted only as far as members are present.
pub fn decode_group_value(mut value: &[u8]) -> Option<StoredGroup> {
    let version = value.try_get_i16().ok()?;
    if !(0..=GROUP_VALUE_VERSION).contains(&version) {
        return None;
    }
    let protocol_type = get_string(&mut value)?;
    let generation = value.try_get_i32().ok()?;
    let protocol = get_nullable(&mut value)?;
    let leader = get_nullable(&mut value)?;
    let state_timestamp = if version >= 2 {
        value.try_get_i64().ok()?
    } else {
        -1
    };
    let count = usize::try_from(value.try_get_i32().ok()?).ok()?;
    let mut members = Vec::new();
    for _ in 0..count {
        let member_id = get_string(&mut value)?;
        let instance_id = if version >= 3 {
            get_nullable(&mut value)?
        } else {
            None
        };
        let client_id = get_string(&mut value)?;
        let client_host = get_string(&mut value)?;
        let session_or_rebalance = value.try_get_i32().ok()?;
        let (rebalance_timeout_ms, session_timeout_ms) = if version >= 1 {
            (session_or_rebalance, value.try_get_i32().ok()?)
        } else {
            (session_or_rebalance, session_or_rebalance)
        };
        members.push(StoredMember {
            member_id,
            instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription: get_bytes(&mut value)?,
            assignment: get_bytes(&mut value)?,
        });
    }
    value.is_empty().then_some(StoredGroup {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp,
        members,
    })
}

/// A record's key: `(group, topic, partition)` for an offset commit, `None` for other
/// record kinds (group metadata records, [`decode_group_key`]) or bytes that do not parse.
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

    fn stored_group() -> StoredGroup {
        StoredGroup {
            protocol_type: "consumer".into(),
            generation: 4,
            protocol: Some("range".into()),
            leader: Some("a-1".into()),
            state_timestamp: 1_700_000_000_000,
            members: vec![
                StoredMember {
                    member_id: "a-1".into(),
                    instance_id: None,
                    client_id: "a".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 30_000,
                    session_timeout_ms: 10_000,
                    subscription: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"assigned"),
                },
                StoredMember {
                    member_id: "b-2".into(),
                    instance_id: Some("b".into()),
                    client_id: "b".into(),
                    client_host: "/127.0.0.2".into(),
                    rebalance_timeout_ms: 60_000,
                    session_timeout_ms: 45_000,
                    subscription: Bytes::new(),
                    assignment: Bytes::new(),
                },
            ],
        }
    }

    #[test]
    fn group_records_round_trip_and_refuse_what_is_not_there() {
        let group = stored_group();
        let key = encode_group_key("g");
        assert_eq!(decode_group_key(&key), Some("g".into()));
        // A group key is not an offset key, nor the reverse.
        assert_eq!(decode_key(&key), None);
        assert_eq!(decode_group_key(&encode_key("g", "t", 0)), None);
        let value = encode_group_value(&group).expect("fits");
        assert_eq!(decode_group_value(&value), Some(group.clone()));
        for cut in 0..value.len() {
            assert_eq!(decode_group_value(&value[..cut]), None, "cut at {cut}");
        }
        // A member count far beyond the bytes present: refused, nothing allocated for it.
        let mut claims = value.clone();
        let count_at = 2 + 2 + 8 + 4 + 2 + 5 + 2 + 3 + 8;
        claims[count_at..count_at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(decode_group_value(&claims), None);
        let empty = StoredGroup {
            members: Vec::new(),
            protocol: None,
            leader: None,
            ..group
        };
        let value = encode_group_value(&empty).expect("fits");
        assert_eq!(decode_group_value(&value), Some(empty));
    }

    #[test]
    fn a_group_too_long_to_store_is_not_encoded() {
        let mut group = stored_group();
        group.members[0].client_id = "x".repeat(STRING_BYTES_MAX + 1);
        assert_eq!(encode_group_value(&group), None);
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
