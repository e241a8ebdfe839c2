//! Arbitrary bytes as each small file the engine and the broker read back from disk: the
//! idempotent-producer snapshot, the log-start checkpoint, the leader epoch checkpoint, the
//! controller quorum's hard state and snapshot, a metadata image, a log's config, the topic
//! table, and the keys and values of `__consumer_offsets` records (offset commits and group
//! membership). The first byte picks the decoder; for
//! the checksummed formats its high bit asks for a correct checksum, so the fuzzer gets past
//! it into the fields. Every decoder must refuse bad bytes without a panic, and whatever it
//! accepts must encode to bytes that decode to the same value.
#![no_main]

use bytes::Bytes;
use coremq_engine::LogConfig;
use coremq_engine::checkpoint;
use coremq_engine::epochs::LeaderEpochs;
use coremq_engine::producers::ProducerState;
use coremq_net::broker::group_offsets;
use coremq_replication::metadata::MetadataImage;
use coremq_replication::quorum_store;
use coremq_replication::topics::TopicTable;
use libfuzzer_sys::fuzz_target;

/// `bytes` with its last four bytes replaced by the CRC-32C of the rest, as the writers do.
fn with_crc(bytes: &[u8]) -> Vec<u8> {
    let mut fixed = bytes.to_vec();
    if fixed.len() >= 4 {
        let body = fixed.len() - 4;
        let crc = crc32c::crc32c(&fixed[..body]);
        fixed[body..].copy_from_slice(&crc.to_be_bytes());
    }
    fixed
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let fix_crc = selector & 0x80 != 0;
    let checked = |bytes: &[u8]| {
        if fix_crc {
            with_crc(bytes)
        } else {
            bytes.to_vec()
        }
    };
    match selector % 12 {
        0 => {
            if let Ok((state, up_to)) = ProducerState::decode(&checked(data)) {
                let again = ProducerState::decode(&state.encode(up_to)).expect("re-encoded");
                assert_eq!(again, (state, up_to));
            }
        }
        1 => {
            if let Ok(offset) = checkpoint::decode(&checked(data)) {
                assert_eq!(checkpoint::decode(&checkpoint::encode(offset)), Ok(offset));
            }
        }
        2 => {
            if let Ok(config) = LogConfig::decode(&String::from_utf8_lossy(data)) {
                assert_eq!(
                    LogConfig::decode(&config.encode()).expect("re-encoded"),
                    config
                );
            }
        }
        3 => {
            if let Ok(table) = TopicTable::decode(&String::from_utf8_lossy(data)) {
                let again = TopicTable::decode(&table.encode()).expect("re-encoded");
                assert_eq!(again.len(), table.len());
                for topic in table.iter() {
                    assert_eq!(again.get(&topic.name), Some(topic));
                }
            }
        }
        4 => {
            if let Some((group, topic, partition)) = group_offsets::decode_key(data)
                && group.len() <= group_offsets::STRING_BYTES_MAX
                && topic.len() <= group_offsets::STRING_BYTES_MAX
            {
                let key = group_offsets::encode_key(&group, &topic, partition);
                assert_eq!(
                    group_offsets::decode_key(&key),
                    Some((group, topic, partition))
                );
            }
        }
        5 => {
            if let Ok(epochs) = LeaderEpochs::decode(&checked(data)) {
                assert_eq!(LeaderEpochs::decode(&epochs.encode()), Ok(epochs));
            }
        }
        6 => {
            if let Ok(state) = quorum_store::decode_hard_state(&checked(data)) {
                let bytes = quorum_store::encode_hard_state(&state);
                assert_eq!(quorum_store::decode_hard_state(&bytes), Ok(state));
            }
        }
        7 => {
            if let Some(committed) = group_offsets::decode_value(&Bytes::copy_from_slice(data)) {
                let value = Bytes::from(group_offsets::encode_value(&committed));
                assert_eq!(group_offsets::decode_value(&value), Some(committed));
            }
        }
        10 => {
            if let Ok(snapshot) = quorum_store::decode_snapshot(&checked(data)) {
                let bytes = quorum_store::encode_snapshot(&snapshot);
                assert_eq!(quorum_store::decode_snapshot(&bytes), Ok(snapshot));
            }
        }
        11 => {
            if let Ok(image) = MetadataImage::decode(data) {
                assert_eq!(MetadataImage::decode(&image.encode()), Ok(image));
            }
        }
        8 => {
            if let Some(group) = group_offsets::decode_group_key(data) {
                let key = group_offsets::encode_group_key(&group);
                assert_eq!(group_offsets::decode_group_key(&key), Some(group));
            }
        }
        _ => {
            if let Some(group) = group_offsets::decode_group_value(data) {
                let value = group_offsets::encode_group_value(&group).expect("decoded, so it fits");
                assert_eq!(group_offsets::decode_group_value(&value), Some(group));
            }
        }
    }
});
