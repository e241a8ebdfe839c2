//! coremq's Kubernetes operator: a `CoremqCluster` resource reconciled into a StatefulSet of
//! brokers with their services, configuration, disruption budget and monitoring; dangerous
//! changes refused; upgrades rolled one broker at a time.

pub mod brokers;
pub mod checks;
pub mod crd;
pub mod reconcile;
pub mod render;
pub mod settings;

/// The brokers' seccomp profile: the container runtimes' default with io_uring allowed.
pub const SECCOMP_PROFILE: &str = include_str!("../../seccomp/coremq.json");
