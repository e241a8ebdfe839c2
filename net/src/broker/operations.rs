//! What an operator (`deploy/operator`, or a person with curl) asks of the cluster on the
//! admin listener, in JSON, as the Redpanda operator asks Redpanda's admin API:
//!
//! - `GET /v1/cluster`: the cluster's health: the controller's leader, each broker with the
//!   replicas and leaderships it holds, and the partitions under-replicated, offline or
//!   moving, with the largest replication factor (a cluster cannot shrink below it).
//! - `POST /v1/brokers/{id}/drain`: moves every replica broker `id` holds to the other live
//!   brokers, the least loaded first, before the broker is removed.
//! - `POST /v1/partitions/rebalance`: moves replicas from the brokers holding the most to
//!   those holding the fewest until they differ by one at most, after brokers were added.
//!
//! The plans are pure functions of the metadata image; the moves are reassignments
//! (KIP-455, as AlterPartitionReassignments makes them): the partitions keep serving, and
//! `GET /v1/cluster` shows them moving until they are done.

use std::collections::BTreeMap;

use coremq_replication::leader::BrokerId;
use coremq_replication::metadata::MetadataImage;
use serde::Serialize;

use super::Context;

/// One broker as `GET /v1/cluster` shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct BrokerHealth {
    pub id: BrokerId,
    /// Fenced: the controller has not heard from it within the session timeout.
    pub fenced: bool,
    /// Replicas it holds or is being given.
    pub replicas: u64,
    pub leaders: u64,
}

/// `GET /v1/cluster`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Health {
    /// The broker answering.
    pub node_id: BrokerId,
    /// The broker leading the controller quorum, if one does.
    pub controller_id: Option<BrokerId>,
    pub brokers: Vec<BrokerHealth>,
    pub partitions: u64,
    /// Partitions with a replica out of the in-sync set (moving ones among them).
    pub under_replicated_partitions: u64,
    /// Partitions without a live leader.
    pub offline_partitions: u64,
    /// Partitions with a reassignment in progress.
    pub reassigning_partitions: u64,
    /// The largest replication factor of any topic, and one topic with it.
    pub replication_factor_max: u64,
    pub replication_factor_max_topic: Option<String>,
}

/// One partition to move to `replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    pub topic: String,
    #[serde(skip)]
    pub id: [u8; 16],
    pub partition: u32,
    pub replicas: Vec<BrokerId>,
}

pub fn health(image: &MetadataImage, node_id: BrokerId, controller: Option<BrokerId>) -> Health {
    let mut brokers: BTreeMap<BrokerId, BrokerHealth> = image
        .brokers
        .iter()
        .map(|(&id, info)| {
            let health = BrokerHealth {
                id,
                fenced: info.fenced,
                replicas: 0,
                leaders: 0,
            };
            (id, health)
        })
        .collect();
    let mut health = Health {
        node_id,
        controller_id: controller,
        brokers: Vec::new(),
        partitions: 0,
        under_replicated_partitions: 0,
        offline_partitions: 0,
        reassigning_partitions: 0,
        replication_factor_max: 0,
        replication_factor_max_topic: None,
    };
    let live = |id: BrokerId| image.brokers.get(&id).is_some_and(|info| !info.fenced);
    for topic in image.topics.values() {
        for partition in &topic.partitions {
            let assignment = &partition.assignment;
            health.partitions += 1;
            for replica in &assignment.replicas {
                if let Some(broker) = brokers.get_mut(replica) {
                    broker.replicas += 1;
                }
            }
            if let Some(leader) = brokers.get_mut(&assignment.leader) {
                leader.leaders += 1;
            }
            if assignment.replicas.len() > assignment.isr.len() {
                health.under_replicated_partitions += 1;
            }
            if !live(assignment.leader) {
                health.offline_partitions += 1;
            }
            if partition.reassigning.is_some() {
                health.reassigning_partitions += 1;
            }
            let factor = partition.target().len() as u64;
            if factor > health.replication_factor_max {
                health.replication_factor_max = factor;
                health.replication_factor_max_topic = Some(topic.name.clone());
            }
        }
    }
    health.brokers = brokers.into_values().collect();
    health
}

/// Replicas each live broker holds once the moves in progress end.
fn loads(image: &MetadataImage, excluded: Option<BrokerId>) -> BTreeMap<BrokerId, usize> {
    let mut loads: BTreeMap<BrokerId, usize> = image
        .brokers
        .iter()
        .filter(|(id, info)| !info.fenced && Some(**id) != excluded)
        .map(|(&id, _)| (id, 0))
        .collect();
    for topic in image.topics.values() {
        for partition in &topic.partitions {
            for replica in partition.target() {
                if let Some(load) = loads.get_mut(&replica) {
                    *load += 1;
                }
            }
        }
    }
    loads
}

/// The moves that take every replica off `broker`: each goes, in its place in the list
/// (the preferred leader's place too), to the live broker holding the fewest replicas
/// that the partition is not on already.
pub fn drain(image: &MetadataImage, broker: BrokerId) -> Result<Vec<Move>, String> {
    if !image.brokers.contains_key(&broker) {
        return Err(format!("broker {broker} is not registered"));
    }
    let mut loads = loads(image, Some(broker));
    let mut moves = Vec::new();
    for (id, topic) in &image.topics {
        for (index, partition) in topic.partitions.iter().enumerate() {
            let mut replicas = partition.target();
            let Some(place) = replicas.iter().position(|&replica| replica == broker) else {
                continue;
            };
            let Some((&to, _)) = loads
                .iter()
                .filter(|(id, _)| !replicas.contains(id))
                .min_by_key(|(id, load)| (**load, **id))
            else {
                return Err(format!(
                    "broker {broker} cannot be drained: {}-{index} is already on every other \
                     live broker",
                    topic.name
                ));
            };
            replicas[place] = to;
            *loads.get_mut(&to).expect("chosen among the loads") += 1;
            moves.push(Move {
                topic: topic.name.clone(),
                id: *id,
                partition: index as u32,
                replicas,
            });
        }
    }
    Ok(moves)
}

/// The moves that spread replicas over the live brokers until the most and the fewest
/// held differ by one at most: one replica at a time from the most loaded broker to the
/// least loaded one, of a partition not moving already and not on the latter.
pub fn rebalance(image: &MetadataImage) -> Vec<Move> {
    let mut loads = loads(image, None);
    let mut targets: BTreeMap<([u8; 16], u32), Vec<BrokerId>> = BTreeMap::new();
    loop {
        let most = loads.iter().max_by_key(|(id, load)| (**load, -**id));
        let fewest = loads.iter().min_by_key(|(id, load)| (**load, **id));
        let (Some((&from, &high)), Some((&to, &low))) = (most, fewest) else {
            break;
        };
        if high <= low + 1 {
            break;
        }
        let candidate = image.topics.iter().find_map(|(id, topic)| {
            topic
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, partition)| partition.reassigning.is_none())
                .find_map(|(index, partition)| {
                    let key = (*id, index as u32);
                    let replicas = targets.get(&key).cloned().unwrap_or(partition.target());
                    (replicas.contains(&from) && !replicas.contains(&to)).then_some((key, replicas))
                })
        });
        let Some((key, mut replicas)) = candidate else {
            break;
        };
        for replica in replicas.iter_mut().filter(|replica| **replica == from) {
            *replica = to;
        }
        targets.insert(key, replicas);
        *loads.get_mut(&from).expect("a live broker") -= 1;
        *loads.get_mut(&to).expect("a live broker") += 1;
    }
    targets
        .into_iter()
        .map(|((id, partition), replicas)| Move {
            topic: image.topics[&id].name.clone(),
            id,
            partition,
            replicas,
        })
        .collect()
}

/// Starts `moves` through the controller; the moves started, or the first failure.
async fn start(context: &Context, moves: Vec<Move>) -> Result<Vec<Move>, String> {
    for step in &moves {
        context
            .cluster
            .reassign(step.id, step.partition, Some(step.replicas.clone()))
            .await
            .map_err(|error| {
                format!(
                    "moving {}-{} to {:?}: {error}",
                    step.topic, step.partition, step.replicas
                )
            })?;
    }
    Ok(moves)
}

/// Answers `method path` under `/v1/`: the status and the JSON body.
pub async fn answer(context: &Context, method: &str, path: &str) -> (u16, String) {
    let image = context.cluster.image();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let outcome = match (method, segments.as_slice()) {
        ("GET", ["v1", "cluster"]) => {
            let health = health(&image, context.config.node_id, context.cluster.controller());
            return (200, json(&health));
        }
        ("POST", ["v1", "brokers", id, "drain"]) => match id.parse::<BrokerId>() {
            Ok(id) => match drain(&image, id) {
                Ok(moves) => start(context, moves).await,
                Err(reason) => return (409, error(&reason)),
            },
            Err(_) => return (400, error(&format!("{id:?} is not a broker id"))),
        },
        ("POST", ["v1", "partitions", "rebalance"]) => start(context, rebalance(&image)).await,
        (
            _,
            ["v1", "cluster"] | ["v1", "brokers", _, "drain"] | ["v1", "partitions", "rebalance"],
        ) => {
            return (405, error(&format!("{method} is not allowed on {path}")));
        }
        _ => return (404, error(&format!("no such operation: {method} {path}"))),
    };
    match outcome {
        Ok(moves) => (202, json(&serde_json::json!({"moves": moves}))),
        Err(reason) => (503, error(&reason)),
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("the answer serializes")
}

fn error(reason: &str) -> String {
    json(&serde_json::json!({ "error": reason }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coremq_replication::leader::Assignment;
    use coremq_replication::metadata::{BrokerInfo, PartitionState, TopicImage};

    fn image(
        brokers: &[(BrokerId, bool)],
        partitions: &[(&str, Vec<BrokerId>, Vec<BrokerId>)],
    ) -> MetadataImage {
        let mut image = MetadataImage::default();
        for &(id, fenced) in brokers {
            image.brokers.insert(
                id,
                BrokerInfo {
                    incarnation: 1,
                    endpoints: Vec::new(),
                    rack: None,
                    fenced,
                },
            );
        }
        for (number, (name, replicas, isr)) in partitions.iter().enumerate() {
            let id = [number as u8 + 1; 16];
            let topic = image.topics.entry(id).or_insert_with(|| TopicImage {
                name: name.to_string(),
                configs: BTreeMap::new(),
                partitions: Vec::new(),
            });
            topic.partitions.push(PartitionState {
                assignment: Assignment {
                    leader: replicas[0],
                    leader_epoch: 0,
                    replicas: replicas.clone(),
                    isr: isr.iter().copied().collect(),
                },
                partition_epoch: 0,
                reassigning: None,
            });
        }
        image
    }

    #[test]
    fn health_counts_under_replicated_and_offline_partitions_and_the_largest_factor() {
        let image = image(
            &[(0, false), (1, false), (2, true)],
            &[
                ("a", vec![0, 1], vec![0, 1]),
                ("b", vec![1, 0, 2], vec![1, 0]),
                ("c", vec![2], vec![2]),
            ],
        );
        let health = health(&image, 0, Some(1));
        assert_eq!(health.partitions, 3);
        assert_eq!(health.under_replicated_partitions, 1);
        assert_eq!(health.offline_partitions, 1);
        assert_eq!(health.replication_factor_max, 3);
        assert_eq!(health.replication_factor_max_topic.as_deref(), Some("b"));
        let replicas: Vec<_> = health
            .brokers
            .iter()
            .map(|b| (b.id, b.replicas, b.leaders))
            .collect();
        assert_eq!(replicas, [(0, 2, 1), (1, 2, 1), (2, 2, 1)]);
        assert!(health.brokers[2].fenced);
    }

    #[test]
    fn a_drained_broker_hands_each_replica_to_the_least_loaded_broker_in_its_place() {
        let image = image(
            &[(0, false), (1, false), (2, false), (3, false)],
            &[
                ("a", vec![3, 0], vec![3, 0]),
                ("b", vec![0, 3], vec![0, 3]),
                ("c", vec![1, 2], vec![1, 2]),
            ],
        );
        let moves = drain(&image, 3).unwrap();
        let targets: Vec<_> = moves
            .iter()
            .map(|m| (m.topic.as_str(), m.replicas.clone()))
            .collect();
        // Loads without broker 3: 0 has two, 1 and 2 one each; the first move goes to 1
        // (fewest, lowest id), the second to 2.
        assert_eq!(targets, [("a", vec![1, 0]), ("b", vec![0, 2])]);
        assert!(drain(&image, 9).unwrap_err().contains("not registered"));
        let full = image_full();
        let refusal = drain(&full, 1).unwrap_err();
        assert!(
            refusal.contains("already on every other live broker"),
            "{refusal}"
        );
    }

    fn image_full() -> MetadataImage {
        image(
            &[(0, false), (1, false), (2, true)],
            &[("a", vec![0, 1], vec![0, 1])],
        )
    }

    #[test]
    fn rebalance_moves_replicas_to_new_brokers_until_loads_differ_by_one_at_most() {
        let image = image(
            &[(0, false), (1, false), (2, false), (3, false)],
            &[
                ("a", vec![0, 1], vec![0, 1]),
                ("b", vec![1, 0], vec![1, 0]),
                ("c", vec![0, 1], vec![0, 1]),
                ("d", vec![1, 0], vec![1, 0]),
            ],
        );
        let moves = rebalance(&image);
        let mut loads: BTreeMap<BrokerId, usize> = BTreeMap::new();
        let moved: BTreeMap<_, _> = moves
            .iter()
            .map(|m| (m.topic.clone(), m.replicas.clone()))
            .collect();
        for topic in image.topics.values() {
            let replicas = moved
                .get(&topic.name)
                .cloned()
                .unwrap_or(topic.partitions[0].target());
            assert_eq!(replicas.len(), 2, "{replicas:?}");
            assert_ne!(replicas[0], replicas[1], "{replicas:?}");
            for replica in replicas {
                *loads.entry(replica).or_default() += 1;
            }
        }
        assert_eq!(loads, BTreeMap::from([(0, 2), (1, 2), (2, 2), (3, 2)]));
        let balanced = image_full();
        assert_eq!(rebalance(&balanced), []);
    }
}
