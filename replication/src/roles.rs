//! What one broker must do when the cluster metadata changes (Kafka's `TopicsDelta` local
//! changes): the logs to create and delete, the partitions to lead, follow or stop serving,
//! and the configs to apply, computed from the image before and after, purely. The broker
//! carries them out in order; the simulation checks the same rules.

use std::collections::BTreeMap;

use crate::controller::NO_LEADER;
use crate::leader::{Assignment, BrokerId};
use crate::metadata::MetadataImage;

/// A partition, by topic name and index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionName {
    pub topic: String,
    pub partition: u32,
}

/// One thing a broker does to its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A replica assigned here: its log, with the topic's configs.
    CreateLog {
        partition: PartitionName,
        configs: BTreeMap<String, String>,
    },
    /// A replica no longer here (topic deleted, or reassigned away).
    DeleteLog { partition: PartitionName },
    /// Lead the partition at a new leader epoch (or lead it for the first time).
    Lead {
        partition: PartitionName,
        assignment: Assignment,
    },
    /// Still leading at the same epoch; the controller committed a new in-sync set or new
    /// replicas (a reassignment).
    AssignmentChanged {
        partition: PartitionName,
        assignment: Assignment,
    },
    /// Follow `leader` at `leader_epoch` (truncating first as the follower state says).
    Follow {
        partition: PartitionName,
        leader: BrokerId,
        leader_epoch: i32,
    },
    /// No leader is alive: neither lead nor follow until one is elected.
    Offline { partition: PartitionName },
    /// The topic's config overrides changed.
    Configs {
        topic: String,
        configs: BTreeMap<String, String>,
    },
}

/// The changes for broker `me` going from `old` to `new`, deletions first, then per
/// partition in topic and index order.
pub fn changes(old: &MetadataImage, new: &MetadataImage, me: BrokerId) -> Vec<Change> {
    let local = |image: &MetadataImage| {
        let mut replicas = BTreeMap::new();
        for (id, topic) in &image.topics {
            for (index, state) in topic.partitions.iter().enumerate() {
                if state.assignment.replicas.contains(&me) {
                    let name = PartitionName {
                        topic: topic.name.clone(),
                        partition: index as u32,
                    };
                    replicas.insert(name, (*id, state.assignment.clone()));
                }
            }
        }
        replicas
    };
    let (before, after) = (local(old), local(new));
    let mut changes = Vec::new();
    for (name, (id, _)) in &before {
        // Gone, or the same name now another topic (deleted and created again).
        let same = after.get(name).is_some_and(|(new_id, _)| new_id == id);
        if !same {
            changes.push(Change::DeleteLog {
                partition: name.clone(),
            });
        }
    }
    for (id, topic) in &new.topics {
        let had_configs = old.topics.get(id).map(|old| &old.configs);
        let hosted = after.values().any(|(topic_id, _)| topic_id == id);
        if hosted && had_configs.is_some_and(|configs| configs != &topic.configs) {
            changes.push(Change::Configs {
                topic: topic.name.clone(),
                configs: topic.configs.clone(),
            });
        }
    }
    for (name, (id, assignment)) in &after {
        let previous = before
            .get(name)
            .filter(|(old_id, _)| old_id == id)
            .map(|(_, assignment)| assignment);
        if previous.is_none() {
            changes.push(Change::CreateLog {
                partition: name.clone(),
                configs: new.topics[id].configs.clone(),
            });
        }
        let partition = name.clone();
        let same_epoch = previous.is_some_and(|old| old.leader_epoch == assignment.leader_epoch);
        let led_before = previous.is_some_and(|old| old.leader == me);
        match assignment.leader {
            leader if leader == me => {
                if same_epoch && led_before {
                    let changed = previous.is_some_and(|old| {
                        old.isr != assignment.isr || old.replicas != assignment.replicas
                    });
                    if changed {
                        changes.push(Change::AssignmentChanged {
                            partition,
                            assignment: assignment.clone(),
                        });
                    }
                } else {
                    changes.push(Change::Lead {
                        partition,
                        assignment: assignment.clone(),
                    });
                }
            }
            NO_LEADER => {
                if !(same_epoch && previous.is_some_and(|old| old.leader == NO_LEADER)) {
                    changes.push(Change::Offline { partition });
                }
            }
            leader => {
                if !(same_epoch && previous.is_some_and(|old| old.leader == leader)) {
                    changes.push(Change::Follow {
                        partition,
                        leader,
                        leader_epoch: assignment.leader_epoch,
                    });
                }
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{PartitionRecord, Record};

    const TOPIC: [u8; 16] = [5; 16];

    fn image_with_brokers() -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in 0..3 {
            image
                .apply(&Record::RegisterBroker {
                    id,
                    incarnation: 1,
                    endpoints: vec![],
                    rack: None,
                })
                .unwrap();
        }
        image
    }

    fn state(
        partition: u32,
        replicas: &[BrokerId],
        leader: BrokerId,
        epoch: i32,
        isr: &[BrokerId],
        partition_epoch: i32,
    ) -> PartitionRecord {
        PartitionRecord {
            partition,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            leader,
            leader_epoch: epoch,
            partition_epoch,
        }
    }

    fn name(partition: u32) -> PartitionName {
        PartitionName {
            topic: "quotes".into(),
            partition,
        }
    }

    fn after(image: &MetadataImage, record: Record) -> MetadataImage {
        let mut next = image.clone();
        next.apply(&record).unwrap();
        next
    }

    /// Three brokers and topic "quotes" with the one partition `state`.
    fn with_partition(state: PartitionRecord) -> MetadataImage {
        after(
            &image_with_brokers(),
            Record::CreateTopic {
                id: TOPIC,
                name: "quotes".into(),
                configs: vec![],
                partitions: vec![state],
            },
        )
    }

    #[test]
    fn creation_leads_or_follows_what_is_assigned_here() {
        let empty = image_with_brokers();
        let created = after(
            &empty,
            Record::CreateTopic {
                id: TOPIC,
                name: "quotes".into(),
                configs: vec![],
                partitions: vec![
                    state(0, &[0, 1], 0, 0, &[0, 1], 0),
                    state(1, &[1, 2], 1, 0, &[1, 2], 0),
                    state(2, &[2, 0], 2, 0, &[2, 0], 0),
                ],
            },
        );
        let changes = changes(&empty, &created, 0);
        assert_eq!(changes.len(), 4, "{changes:?}");
        assert!(
            matches!(&changes[0], Change::CreateLog { partition, .. } if *partition == name(0))
        );
        assert!(matches!(&changes[1], Change::Lead { partition, .. } if *partition == name(0)));
        assert!(
            matches!(&changes[2], Change::CreateLog { partition, .. } if *partition == name(2))
        );
        assert_eq!(
            changes[3],
            Change::Follow {
                partition: name(2),
                leader: 2,
                leader_epoch: 0
            }
        );
    }

    #[test]
    fn leader_and_isr_changes_map_to_roles() {
        let base = with_partition(state(0, &[0, 1, 2], 0, 0, &[0, 1, 2], 0));
        // Only the ISR shrinks: the leader hears of it, a follower does nothing.
        let shrunk = after(
            &base,
            Record::PartitionChange {
                topic: TOPIC,
                state: state(0, &[0, 1, 2], 0, 0, &[0, 1], 1),
            },
        );
        assert!(matches!(
            changes(&base, &shrunk, 0)[..],
            [Change::AssignmentChanged { .. }]
        ));
        assert!(changes(&base, &shrunk, 1).is_empty());
        // A new leader at a new epoch: it leads, the old leader and the others follow it.
        let moved = after(
            &shrunk,
            Record::PartitionChange {
                topic: TOPIC,
                state: state(0, &[0, 1, 2], 1, 1, &[1], 2),
            },
        );
        assert!(matches!(
            changes(&shrunk, &moved, 1)[..],
            [Change::Lead { .. }]
        ));
        let follow = Change::Follow {
            partition: name(0),
            leader: 1,
            leader_epoch: 1,
        };
        assert_eq!(changes(&shrunk, &moved, 0), std::slice::from_ref(&follow));
        assert_eq!(changes(&shrunk, &moved, 2), [follow]);
        // Nobody left: offline everywhere.
        let offline = after(
            &moved,
            Record::PartitionChange {
                topic: TOPIC,
                state: state(0, &[0, 1, 2], NO_LEADER, 2, &[1], 3),
            },
        );
        assert!(matches!(
            changes(&moved, &offline, 0)[..],
            [Change::Offline { .. }]
        ));
    }

    #[test]
    fn deletion_reassignment_and_configs() {
        let base = with_partition(state(0, &[0, 1], 0, 0, &[0, 1], 0));
        let configured = after(
            &base,
            Record::TopicConfigs {
                id: TOPIC,
                configs: vec![("retention.ms".into(), "1000".into())],
            },
        );
        assert!(matches!(
            changes(&base, &configured, 1)[..],
            [Change::Configs { .. }]
        ));
        assert!(changes(&base, &configured, 2).is_empty(), "no replica here");
        // Reassigned from 1 to 2.
        let moved = after(
            &base,
            Record::PartitionChange {
                topic: TOPIC,
                state: state(0, &[0, 2], 0, 0, &[0], 1),
            },
        );
        assert_eq!(
            changes(&base, &moved, 1),
            [Change::DeleteLog { partition: name(0) }]
        );
        assert!(matches!(
            changes(&base, &moved, 2)[..],
            [Change::CreateLog { .. }, Change::Follow { leader: 0, .. }]
        ));
        // The leader, at the same epoch, hears of its new replicas.
        assert!(matches!(
            &changes(&base, &moved, 0)[..],
            [Change::AssignmentChanged { assignment, .. }] if assignment.replicas == [0, 2]
        ));
        let deleted = after(&base, Record::DeleteTopic { id: TOPIC });
        assert_eq!(
            changes(&base, &deleted, 0),
            [Change::DeleteLog { partition: name(0) }]
        );
    }
}
