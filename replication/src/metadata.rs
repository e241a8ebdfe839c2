//! The cluster metadata as a replicated state machine (KRaft's metadata log): the records the
//! controller commits through Raft, and the image every broker builds by applying them in
//! order. Applying is deterministic and checks each record against the image; a record that
//! does not fit (which the controller never writes) is refused the same way everywhere.
//!
//! Records travel and are stored as postcard-encoded values ([`Record::encode`]); decoding
//! bounds every length by the bytes present.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::leader::{Assignment, BrokerId};

/// A listener a broker serves on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub listener: String,
    pub host: String,
    pub port: u16,
}

/// A partition's state in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub partition: u32,
    /// Every replica, the preferred leader first.
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    /// The leader, or -1 when no eligible replica is alive (offline).
    pub leader: BrokerId,
    pub leader_epoch: i32,
    /// Bumped by every change of the partition (Kafka's partition epoch); an AlterPartition
    /// based on an older one is refused.
    pub partition_epoch: i32,
}

/// One change to the cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A broker started: its endpoints and a number unique to this run of it.
    RegisterBroker {
        id: BrokerId,
        incarnation: u64,
        endpoints: Vec<Endpoint>,
        rack: Option<String>,
    },
    /// A broker's session ended (missed heartbeats, or a controlled shutdown) or began.
    BrokerFence {
        id: BrokerId,
        fenced: bool,
    },
    CreateTopic {
        id: [u8; 16],
        name: String,
        configs: Vec<(String, String)>,
        partitions: Vec<PartitionRecord>,
    },
    /// A partition's leader, epochs, in-sync or assigned replicas changed (a whole new state).
    PartitionChange {
        topic: [u8; 16],
        state: PartitionRecord,
    },
    DeleteTopic {
        id: [u8; 16],
    },
    TopicConfigs {
        id: [u8; 16],
        configs: Vec<(String, String)>,
    },
    /// Producer ids `first..first + count` belong to `broker`.
    ProducerIds {
        broker: BrokerId,
        first: i64,
        count: i64,
    },
    /// A partition's whole new state as a reassignment starts, changes course, completes or
    /// is cancelled (KIP-455): `adding` and `removing` are the replicas it moves in and out
    /// of `state.replicas` (which holds both while it runs); both empty once it ends.
    Reassignment {
        topic: [u8; 16],
        state: PartitionRecord,
        adding: Vec<BrokerId>,
        removing: Vec<BrokerId>,
    },
}

/// The most bytes one encoded record may take.
pub const RECORD_BYTES_MAX: usize = 1 << 20;

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("metadata records serialize")
    }

    /// Decodes one record that fills `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(format!("a record of {} bytes", bytes.len()));
        }
        match postcard::take_from_bytes::<Record>(bytes) {
            Ok((record, [])) => Ok(record),
            Ok((_, rest)) => Err(format!("{} bytes after the record", rest.len())),
            Err(error) => Err(format!("not a metadata record: {error}")),
        }
    }
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub incarnation: u64,
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    pub fenced: bool,
}

/// A reassignment in progress: the replicas being moved in and out of the partition's
/// replicas, which hold both (the target first, in the order asked, then those leaving).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassigning {
    pub adding: Vec<BrokerId>,
    pub removing: Vec<BrokerId>,
}

/// A partition as the image holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub assignment: Assignment,
    pub partition_epoch: i32,
    /// The reassignment in progress, if one is.
    pub reassigning: Option<Reassigning>,
}

impl PartitionState {
    fn from_record(state: &PartitionRecord) -> PartitionState {
        PartitionState {
            assignment: Assignment {
                leader: state.leader,
                leader_epoch: state.leader_epoch,
                replicas: state.replicas.clone(),
                isr: state.isr.iter().copied().collect(),
            },
            partition_epoch: state.partition_epoch,
            reassigning: None,
        }
    }

    /// The replicas a reassignment in progress moves the partition to (the current ones
    /// when none is), in the order asked.
    pub fn target(&self) -> Vec<BrokerId> {
        let removing = self.reassigning.as_ref().map_or(&[][..], |r| &r.removing);
        without(&self.assignment.replicas, removing)
    }

    /// The replicas before the reassignment in progress (the current ones when none is).
    pub fn original(&self) -> Vec<BrokerId> {
        let adding = self.reassigning.as_ref().map_or(&[][..], |r| &r.adding);
        without(&self.assignment.replicas, adding)
    }

    /// The partition's state as a record (its reassignment, if any, left out).
    pub fn to_record(&self, partition: u32) -> PartitionRecord {
        PartitionRecord {
            partition,
            replicas: self.assignment.replicas.clone(),
            isr: self.assignment.isr.iter().copied().collect(),
            leader: self.assignment.leader,
            leader_epoch: self.assignment.leader_epoch,
            partition_epoch: self.partition_epoch,
        }
    }
}

/// A topic as the image holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionState>,
}

/// The cluster metadata as of the last record applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub brokers: BTreeMap<BrokerId, BrokerInfo>,
    pub topics: BTreeMap<[u8; 16], TopicImage>,
    /// Topic names to ids: rebuilt from `topics` when a snapshot is read.
    #[serde(skip)]
    names: BTreeMap<String, [u8; 16]>,
    /// The first producer id not yet given to a broker.
    pub next_producer_id: i64,
}

impl MetadataImage {
    pub fn topic_id(&self, name: &str) -> Option<[u8; 16]> {
        self.names.get(name).copied()
    }

    pub fn partition(&self, topic: &[u8; 16], partition: u32) -> Option<&PartitionState> {
        self.topics.get(topic)?.partitions.get(partition as usize)
    }

    /// Whether `broker` is registered and in session.
    pub fn is_live(&self, broker: BrokerId) -> bool {
        self.brokers.get(&broker).is_some_and(|info| !info.fenced)
    }

    /// Why replica lists asked for explicitly (one per partition) are refused, if they are:
    /// each names at least one broker, none twice, each registered and in session, and
    /// every list is as long as the first (Kafka's manual assignment checks).
    pub fn check_assignments(&self, lists: &[Vec<BrokerId>]) -> Result<(), String> {
        for replicas in lists {
            if replicas.is_empty() {
                return Err("a replica list is empty".into());
            }
            if replicas.len() != lists[0].len() {
                return Err(format!(
                    "partitions with {} and {} replicas: every partition of a topic has as many",
                    lists[0].len(),
                    replicas.len()
                ));
            }
            for (at, replica) in replicas.iter().enumerate() {
                if replicas[..at].contains(replica) {
                    return Err(format!("broker {replica} is named twice"));
                }
                match self.brokers.get(replica) {
                    None => return Err(format!("broker {replica} is not registered")),
                    Some(info) if info.fenced => {
                        return Err(format!("broker {replica} is fenced (not in session)"));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The whole image as a snapshot's payload (postcard), which [`MetadataImage::decode`]
    /// reads back.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("metadata images serialize")
    }

    /// Reads an image [`MetadataImage::encode`] wrote, refusing one that is not whole or
    /// does not hold together as `apply` keeps an image: topic names unique, every
    /// partition's replicas registered and distinct, its in-sync replicas and leader among
    /// them, a move's replicas among them and not both added and removed.
    pub fn decode(bytes: &[u8]) -> Result<MetadataImage, String> {
        let mut image = match postcard::take_from_bytes::<MetadataImage>(bytes) {
            Ok((image, [])) => image,
            Ok((_, rest)) => return Err(format!("{} bytes after the image", rest.len())),
            Err(error) => return Err(format!("not a metadata image: {error}")),
        };
        for (id, topic) in &image.topics {
            if image.names.insert(topic.name.clone(), *id).is_some() {
                return Err(format!("topic name {} twice", topic.name));
            }
            for (index, state) in topic.partitions.iter().enumerate() {
                image.check_partition(&state.to_record(index as u32))?;
                if let Some(moving) = &state.reassigning {
                    let replicas = &state.assignment.replicas;
                    let among = |broker: &BrokerId| replicas.contains(broker);
                    let both = moving.adding.iter().any(|b| moving.removing.contains(b));
                    if !moving.adding.iter().all(among)
                        || !moving.removing.iter().all(among)
                        || both
                    {
                        return Err(format!(
                            "{}-{index}: a move outside its replicas",
                            topic.name
                        ));
                    }
                }
            }
        }
        Ok(image)
    }

    /// Applies `record`, or refuses it (leaving the image as it was) if it does not fit.
    pub fn apply(&mut self, record: &Record) -> Result<(), String> {
        match record {
            Record::RegisterBroker {
                id,
                incarnation,
                endpoints,
                rack,
            } => {
                if *id < 0 {
                    return Err(format!("broker id {id}"));
                }
                let fenced = self.brokers.get(id).is_none_or(|old| old.fenced);
                self.brokers.insert(
                    *id,
                    BrokerInfo {
                        incarnation: *incarnation,
                        endpoints: endpoints.clone(),
                        rack: rack.clone(),
                        fenced,
                    },
                );
            }
            Record::BrokerFence { id, fenced } => {
                let broker = self
                    .brokers
                    .get_mut(id)
                    .ok_or_else(|| format!("unknown broker {id}"))?;
                broker.fenced = *fenced;
            }
            Record::CreateTopic {
                id,
                name,
                configs,
                partitions,
            } => {
                if self.topics.contains_key(id) || self.names.contains_key(name) {
                    return Err(format!("topic {name} exists"));
                }
                for (index, state) in partitions.iter().enumerate() {
                    if state.partition as usize != index {
                        return Err(format!("topic {name}: partition {index} out of order"));
                    }
                    self.check_partition(state)?;
                }
                self.names.insert(name.clone(), *id);
                self.topics.insert(
                    *id,
                    TopicImage {
                        name: name.clone(),
                        configs: configs.iter().cloned().collect(),
                        partitions: partitions.iter().map(PartitionState::from_record).collect(),
                    },
                );
            }
            Record::PartitionChange { topic, state } => {
                self.check_partition(state)?;
                let image = self
                    .topics
                    .get_mut(topic)
                    .ok_or_else(|| "unknown topic".to_string())?;
                let index = state.partition as usize;
                match index.cmp(&image.partitions.len()) {
                    std::cmp::Ordering::Less => {
                        let old = &image.partitions[index];
                        check_epochs(old, state)?;
                        // A reassignment in progress stays: only its own records move
                        // replicas meanwhile.
                        let reassigning = old.reassigning.clone();
                        if reassigning.is_some() && state.replicas != old.assignment.replicas {
                            return Err(format!(
                                "partition {index}: replicas change during a reassignment"
                            ));
                        }
                        image.partitions[index] = PartitionState {
                            reassigning,
                            ..PartitionState::from_record(state)
                        };
                    }
                    // A new partition (CreatePartitions) comes next in order.
                    std::cmp::Ordering::Equal => {
                        image.partitions.push(PartitionState::from_record(state));
                    }
                    std::cmp::Ordering::Greater => {
                        return Err(format!("partition {index} leaves a gap"));
                    }
                }
            }
            Record::Reassignment {
                topic,
                state,
                adding,
                removing,
            } => {
                self.check_partition(state)?;
                let moved = |replica: &BrokerId| state.replicas.contains(replica);
                let overlap = adding.iter().any(|replica| removing.contains(replica));
                if !adding.iter().all(moved) || !removing.iter().all(moved) || overlap {
                    return Err("reassigned replicas are not among the replicas".into());
                }
                let image = self
                    .topics
                    .get_mut(topic)
                    .ok_or_else(|| "unknown topic".to_string())?;
                let index = state.partition as usize;
                let old = image
                    .partitions
                    .get(index)
                    .ok_or_else(|| format!("unknown partition {index}"))?;
                check_epochs(old, state)?;
                let ends = adding.is_empty() && removing.is_empty();
                image.partitions[index] = PartitionState {
                    reassigning: (!ends).then(|| Reassigning {
                        adding: adding.clone(),
                        removing: removing.clone(),
                    }),
                    ..PartitionState::from_record(state)
                };
            }
            Record::DeleteTopic { id } => {
                let topic = self
                    .topics
                    .remove(id)
                    .ok_or_else(|| "unknown topic".to_string())?;
                self.names.remove(&topic.name);
            }
            Record::TopicConfigs { id, configs } => {
                let topic = self
                    .topics
                    .get_mut(id)
                    .ok_or_else(|| "unknown topic".to_string())?;
                topic.configs = configs.iter().cloned().collect();
            }
            Record::ProducerIds {
                broker: _,
                first,
                count,
            } => {
                if *first < self.next_producer_id || *count <= 0 {
                    return Err(format!(
                        "producer ids from {first} (next is {})",
                        self.next_producer_id
                    ));
                }
                self.next_producer_id = first.checked_add(*count).ok_or("producer ids run out")?;
            }
        }
        Ok(())
    }

    /// A partition state names registered replicas, once each; its ISR and leader are among
    /// them.
    fn check_partition(&self, state: &PartitionRecord) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for replica in &state.replicas {
            if !seen.insert(*replica) || !self.brokers.contains_key(replica) {
                return Err(format!("replica {replica} unknown or repeated"));
            }
        }
        if state.isr.iter().any(|member| !seen.contains(member)) {
            return Err("an in-sync replica is not a replica".into());
        }
        if state.leader != -1 && !state.isr.contains(&state.leader) {
            return Err(format!("leader {} is not in sync", state.leader));
        }
        Ok(())
    }
}

/// The brokers of `these` not in `those`, in order.
pub fn without(these: &[BrokerId], those: &[BrokerId]) -> Vec<BrokerId> {
    let kept = these.iter().filter(|broker| !those.contains(broker));
    kept.copied().collect()
}

/// A partition's new state moves its partition epoch on and its leader epoch not back.
fn check_epochs(old: &PartitionState, state: &PartitionRecord) -> Result<(), String> {
    if state.partition_epoch <= old.partition_epoch
        || state.leader_epoch < old.assignment.leader_epoch
    {
        return Err(format!(
            "partition {}: epochs go back (partition {} after {}, leader {} after {})",
            state.partition,
            state.partition_epoch,
            old.partition_epoch,
            state.leader_epoch,
            old.assignment.leader_epoch
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(id: BrokerId) -> Record {
        Record::RegisterBroker {
            id,
            incarnation: 7,
            endpoints: vec![Endpoint {
                listener: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092 + id as u16,
            }],
            rack: None,
        }
    }

    fn partition(index: u32, leader: BrokerId, epoch: i32, isr: &[BrokerId]) -> PartitionRecord {
        PartitionRecord {
            partition: index,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            leader,
            leader_epoch: epoch,
            partition_epoch: epoch,
        }
    }

    #[test]
    fn an_image_survives_its_encoding_and_a_broken_one_is_refused() {
        let mut image = MetadataImage::default();
        for id in 1..=3 {
            image.apply(&register(id)).unwrap();
        }
        image
            .apply(&Record::BrokerFence {
                id: 2,
                fenced: false,
            })
            .unwrap();
        image
            .apply(&Record::CreateTopic {
                id: [1; 16],
                name: "quotes".into(),
                configs: vec![("min.insync.replicas".into(), "2".into())],
                partitions: vec![partition(0, 1, 0, &[1, 2]), partition(1, 2, 0, &[1, 2])],
            })
            .unwrap();
        image
            .apply(&Record::Reassignment {
                topic: [1; 16],
                state: PartitionRecord {
                    replicas: vec![3, 1, 2],
                    partition_epoch: 1,
                    ..partition(1, 2, 0, &[1, 2])
                },
                adding: vec![3],
                removing: vec![2],
            })
            .unwrap_or_else(|reason| panic!("{reason}"));
        image
            .apply(&Record::ProducerIds {
                broker: 1,
                first: 0,
                count: 1000,
            })
            .unwrap();
        let bytes = image.encode();
        let read = MetadataImage::decode(&bytes).unwrap();
        assert_eq!(read, image);
        assert_eq!(read.topic_id("quotes"), Some([1; 16]));
        for cut in 0..bytes.len() {
            assert!(
                MetadataImage::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut broken = image.clone();
        broken.topics.get_mut(&[1; 16]).unwrap().partitions[0]
            .assignment
            .replicas
            .push(9);
        let reason = MetadataImage::decode(&broken.encode()).unwrap_err();
        assert!(reason.contains("replica 9"), "{reason}");
        let mut twice = image.clone();
        let mut copy = twice.topics[&[1; 16]].clone();
        copy.partitions.clear();
        twice.topics.insert([2; 16], copy);
        assert!(
            MetadataImage::decode(&twice.encode()).is_err(),
            "one name, two topics"
        );
    }

    #[test]
    fn records_build_the_image_and_refuse_what_does_not_fit() {
        let mut image = MetadataImage::default();
        for id in 1..=3 {
            image.apply(&register(id)).unwrap();
            image
                .apply(&Record::BrokerFence { id, fenced: false })
                .unwrap();
        }
        let create = Record::CreateTopic {
            id: [1; 16],
            name: "quotes".into(),
            configs: vec![("min.insync.replicas".into(), "2".into())],
            partitions: vec![
                partition(0, 1, 0, &[1, 2, 3]),
                partition(1, 2, 0, &[1, 2, 3]),
            ],
        };
        image.apply(&create).unwrap();
        assert!(image.apply(&create).is_err(), "exists");
        let change = Record::PartitionChange {
            topic: [1; 16],
            state: partition(0, 2, 1, &[2, 3]),
        };
        image.apply(&change).unwrap();
        assert!(image.apply(&change).is_err(), "epochs must move on");
        let state = image.partition(&[1; 16], 0).unwrap();
        assert_eq!(
            (state.assignment.leader, state.assignment.leader_epoch),
            (2, 1)
        );
        let bad_leader = Record::PartitionChange {
            topic: [1; 16],
            state: partition(0, 1, 2, &[2, 3]),
        };
        assert!(image.apply(&bad_leader).is_err(), "leader out of sync");
        let before = image.clone();
        let unknown = Record::PartitionChange {
            topic: [1; 16],
            state: PartitionRecord {
                replicas: vec![1, 9],
                ..partition(1, 1, 1, &[1])
            },
        };
        assert!(image.apply(&unknown).is_err());
        assert_eq!(image, before, "a refused record changes nothing");
        image
            .apply(&Record::ProducerIds {
                broker: 1,
                first: 0,
                count: 1000,
            })
            .unwrap();
        assert!(
            image
                .apply(&Record::ProducerIds {
                    broker: 2,
                    first: 0,
                    count: 1000,
                })
                .is_err(),
            "blocks never overlap"
        );
        image.apply(&Record::DeleteTopic { id: [1; 16] }).unwrap();
        assert_eq!(image.topic_id("quotes"), None);
    }

    #[test]
    fn records_round_trip_and_bad_bytes_are_refused() {
        let records = [
            register(4),
            Record::BrokerFence {
                id: 4,
                fenced: true,
            },
            Record::CreateTopic {
                id: [9; 16],
                name: "t".into(),
                configs: vec![],
                partitions: vec![partition(0, 1, 0, &[1])],
            },
        ];
        for record in &records {
            let bytes = record.encode();
            assert_eq!(&Record::decode(&bytes).unwrap(), record);
            assert!(Record::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Record::decode(&longer).is_err());
        }
        // A name claiming far more bytes than are present.
        let mut lying = register(1).encode();
        lying[3] = 0xff;
        assert!(Record::decode(&lying).is_err());
    }
}
