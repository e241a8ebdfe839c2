//! The checks a person would make before touching a running cluster. The CRD's schema
//! refuses what is malformed when the resource is stored; these refuse what is well formed
//! but dangerous, against what is running: the operator then changes nothing and says why
//! in the resource's status and an event.

use std::fmt;

use k8s_openapi::api::apps::v1::StatefulSet;

use crate::crd::CoremqClusterSpec;
use crate::render::{CLUSTER_ID_ANNOTATION, STORAGE_ANNOTATION, VOTERS_ANNOTATION};
use crate::settings;

/// What the running cluster was made with, from its StatefulSet.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub cluster_id: String,
    pub voters: i32,
    pub brokers: i32,
    pub storage_size: String,
    pub storage_class_name: Option<String>,
}

impl Running {
    /// Reads what the operator wrote on the StatefulSet; `None` for one it did not make.
    pub fn of(stateful_set: &StatefulSet) -> Option<Running> {
        let annotations = stateful_set.metadata.annotations.as_ref()?;
        let spec = stateful_set.spec.as_ref()?;
        let claim = spec.volume_claim_templates.as_ref()?.first()?;
        Some(Running {
            cluster_id: annotations.get(CLUSTER_ID_ANNOTATION)?.clone(),
            voters: annotations.get(VOTERS_ANNOTATION)?.parse().ok()?,
            brokers: spec.replicas.unwrap_or(1),
            storage_size: annotations.get(STORAGE_ANNOTATION)?.clone(),
            storage_class_name: claim.spec.as_ref()?.storage_class_name.clone(),
        })
    }
}

/// Why a spec is not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    EvenVoters {
        voters: i32,
    },
    VotersAboveBrokers {
        voters: i32,
        brokers: i32,
    },
    VotersChanged {
        running: i32,
        wanted: i32,
    },
    ClusterIdChanged {
        running: String,
        wanted: String,
    },
    StorageShrunk {
        running: String,
        wanted: String,
    },
    StorageClassChanged,
    BadStorageSize {
        size: String,
    },
    BelowReplicationFactor {
        brokers: i32,
        factor: i32,
        topic: String,
    },
    Config {
        reason: String,
    },
}

impl Refusal {
    /// The `reason` of the condition and event (CamelCase, as Kubernetes reasons are).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::EvenVoters { .. } => "EvenControllerVoters",
            Refusal::VotersAboveBrokers { .. } => "VotersAboveBrokers",
            Refusal::VotersChanged { .. } => "ControllerVotersChanged",
            Refusal::ClusterIdChanged { .. } => "ClusterIdChanged",
            Refusal::StorageShrunk { .. } => "StorageShrunk",
            Refusal::StorageClassChanged => "StorageClassChanged",
            Refusal::BadStorageSize { .. } => "BadStorageSize",
            Refusal::BelowReplicationFactor { .. } => "ScaleBelowReplicationFactor",
            Refusal::Config { .. } => "InvalidConfig",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::EvenVoters { voters } => write!(
                f,
                "controllerVoters is {voters}: an even quorum tolerates no more failures than \
                 one voter fewer and can split in two halves; use an odd number"
            ),
            Refusal::VotersAboveBrokers { voters, brokers } => write!(
                f,
                "controllerVoters ({voters}) cannot exceed brokers ({brokers})"
            ),
            Refusal::VotersChanged { running, wanted } => write!(
                f,
                "controllerVoters cannot change from {running} to {wanted} on a running \
                 cluster (coremq does not yet change its quorum's voters, KIP-853)"
            ),
            Refusal::ClusterIdChanged { running, wanted } => write!(
                f,
                "clusterId cannot change from {running:?} to {wanted:?}: the brokers' data \
                 belongs to the running cluster"
            ),
            Refusal::StorageShrunk { running, wanted } => write!(
                f,
                "storage.size cannot shrink from {running} to {wanted}: volumes only grow"
            ),
            Refusal::StorageClassChanged => write!(
                f,
                "storage.storageClassName cannot change once the volumes exist"
            ),
            Refusal::BadStorageSize { size } => {
                write!(f, "storage.size {size:?} is not a quantity")
            }
            Refusal::BelowReplicationFactor {
                brokers,
                factor,
                topic,
            } => write!(
                f,
                "brokers cannot go below {factor}, the replication factor of topic {topic:?} \
                 (asked: {brokers})"
            ),
            Refusal::Config { reason } => f.write_str(reason),
        }
    }
}

/// Checks a spec on its own: what the schema cannot say.
pub fn check_spec(spec: &CoremqClusterSpec) -> Result<(), Refusal> {
    let voters = spec.voters();
    if voters % 2 == 0 {
        return Err(Refusal::EvenVoters { voters });
    }
    if voters > spec.brokers {
        return Err(Refusal::VotersAboveBrokers {
            voters,
            brokers: spec.brokers,
        });
    }
    if bytes(&spec.storage.size).is_none() {
        return Err(Refusal::BadStorageSize {
            size: spec.storage.size.clone(),
        });
    }
    for (key, value) in &spec.config {
        settings::check(key, value).map_err(|reason| Refusal::Config { reason })?;
    }
    Ok(())
}

/// Checks a spec against the running cluster. `replication` is the largest replication
/// factor among the cluster's topics, with one such topic, when the brokers could say.
pub fn check_change(
    running: &Running,
    spec: &CoremqClusterSpec,
    replication: Option<(i32, String)>,
) -> Result<(), Refusal> {
    check_spec(spec)?;
    if spec.cluster_id != running.cluster_id {
        return Err(Refusal::ClusterIdChanged {
            running: running.cluster_id.clone(),
            wanted: spec.cluster_id.clone(),
        });
    }
    if spec.voters() != running.voters {
        return Err(Refusal::VotersChanged {
            running: running.voters,
            wanted: spec.voters(),
        });
    }
    let shrunk = match (bytes(&running.storage_size), bytes(&spec.storage.size)) {
        (Some(running), Some(wanted)) => wanted < running,
        _ => false,
    };
    if shrunk {
        return Err(Refusal::StorageShrunk {
            running: running.storage_size.clone(),
            wanted: spec.storage.size.clone(),
        });
    }
    if spec.storage.storage_class_name != running.storage_class_name {
        return Err(Refusal::StorageClassChanged);
    }
    let below = replication.filter(|(factor, _)| spec.brokers < *factor);
    if spec.brokers < running.brokers
        && let Some((factor, topic)) = below
    {
        return Err(Refusal::BelowReplicationFactor {
            brokers: spec.brokers,
            factor,
            topic,
        });
    }
    Ok(())
}

/// The bytes a Kubernetes quantity (`100Gi`, `1.5T`, `500M`, `1e9`) stands for.
pub fn bytes(quantity: &str) -> Option<u128> {
    const SUFFIXES: &[(&str, u128)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (number, unit) = SUFFIXES
        .iter()
        .find_map(|(suffix, unit)| quantity.strip_suffix(suffix).map(|number| (number, *unit)))
        .unwrap_or((quantity, 1));
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > 9 {
        return None;
    }
    let scale = 10u128.pow(fraction.len() as u32);
    let whole: u128 = whole.parse().ok()?;
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    whole
        .checked_mul(unit)?
        .checked_add(fraction.checked_mul(unit)? / scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CoremqClusterSpec, Storage};

    fn spec(brokers: i32) -> CoremqClusterSpec {
        serde_json::from_value(serde_json::json!({
            "brokers": brokers,
            "clusterId": "prod",
            "image": "coremq:1",
            "storage": {"size": "100Gi"},
        }))
        .unwrap()
    }

    fn running() -> Running {
        Running {
            cluster_id: "prod".into(),
            voters: 3,
            brokers: 5,
            storage_size: "100Gi".into(),
            storage_class_name: None,
        }
    }

    #[test]
    fn quantities_are_read_in_bytes() {
        assert_eq!(bytes("100Gi"), Some(100 << 30));
        assert_eq!(bytes("1.5Ki"), Some(1536));
        assert_eq!(bytes("500M"), Some(500_000_000));
        assert_eq!(bytes("12"), Some(12));
        assert_eq!(bytes("Gi"), None);
        assert_eq!(bytes("-1Gi"), None);
        assert_eq!(bytes("1.2.3"), None);
        assert!(bytes("100Gi") > bytes("100G"));
    }

    #[test]
    fn a_spec_with_an_even_quorum_or_voters_beyond_brokers_is_refused() {
        let mut even = spec(4);
        even.controller_voters = Some(4);
        assert_eq!(check_spec(&even), Err(Refusal::EvenVoters { voters: 4 }));
        let mut beyond = spec(1);
        beyond.controller_voters = Some(3);
        assert!(matches!(
            check_spec(&beyond),
            Err(Refusal::VotersAboveBrokers { .. })
        ));
        assert_eq!(spec(2).voters(), 1);
        assert_eq!(spec(5).voters(), 3);
        assert_eq!(check_spec(&spec(5)), Ok(()));
    }

    #[test]
    fn dangerous_changes_to_a_running_cluster_are_refused_with_their_reason() {
        let running = running();
        let mut renamed = spec(5);
        renamed.cluster_id = "other".into();
        assert_eq!(
            check_change(&running, &renamed, None).unwrap_err().reason(),
            "ClusterIdChanged"
        );
        let mut shrunk = spec(5);
        shrunk.storage = Storage {
            size: "50Gi".into(),
            storage_class_name: None,
        };
        let refusal = check_change(&running, &shrunk, None).unwrap_err();
        assert_eq!(refusal.reason(), "StorageShrunk");
        assert!(
            refusal.to_string().contains("from 100Gi to 50Gi"),
            "{refusal}"
        );
        let mut grown = spec(5);
        grown.storage.size = "200Gi".into();
        assert_eq!(check_change(&running, &grown, None), Ok(()));
        let mut reclassed = spec(5);
        reclassed.storage.storage_class_name = Some("fast".into());
        assert_eq!(
            check_change(&running, &reclassed, None),
            Err(Refusal::StorageClassChanged)
        );
        let mut revoted = spec(5);
        revoted.controller_voters = Some(5);
        assert_eq!(
            check_change(&running, &revoted, None).unwrap_err().reason(),
            "ControllerVotersChanged"
        );
    }

    #[test]
    fn scaling_down_stops_at_the_largest_replication_factor() {
        let running = running();
        let topic = Some((4, "quotes".to_string()));
        let refusal = check_change(&running, &spec(3), topic.clone()).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::BelowReplicationFactor {
                brokers: 3,
                factor: 4,
                topic: "quotes".into()
            }
        );
        assert_eq!(check_change(&running, &spec(4), topic.clone()), Ok(()));
        // Scaling up is never refused for replication.
        let small = Running {
            brokers: 3,
            ..running
        };
        assert_eq!(check_change(&small, &spec(3), topic), Ok(()));
    }
}
