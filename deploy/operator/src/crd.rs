//! The `CoremqCluster` custom resource (`coremq.io/v1alpha1`): what a user asks for (the
//! spec, checked by the CRD's OpenAPI schema and CEL rules when it is stored) and what the
//! operator reports (the status).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Controller voters when the spec names none: three, or one below three brokers.
pub const VOTERS_DEFAULT_MAX: i32 = 3;

/// A coremq cluster: brokers in a StatefulSet, with their storage, services, disruption
/// budget and monitoring.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "coremq.io",
    version = "v1alpha1",
    kind = "CoremqCluster",
    namespaced,
    status = "CoremqClusterStatus",
    shortname = "cmq",
    printcolumn = r#"{"name":"Brokers","type":"integer","jsonPath":".spec.brokers"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyBrokers"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.controllerVoters) || self.controllerVoters <= self.brokers")
    .message("controllerVoters cannot exceed brokers"))]
#[serde(rename_all = "camelCase")]
pub struct CoremqClusterSpec {
    /// Brokers in the cluster, one pod each. The first `controllerVoters` of them vote in
    /// the controller quorum; the others follow it (observers).
    #[schemars(range(min = 1, max = 256))]
    pub brokers: i32,

    /// Brokers voting in the controller quorum (Raft): an odd number, fixed once the
    /// cluster runs. Default: three, or one for a cluster of one or two brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self % 2 == 1").message("controllerVoters must be odd"))]
    #[schemars(range(min = 1, max = 9))]
    pub controller_voters: Option<i32>,

    /// The cluster's id (`--cluster-id`): fixed for the cluster's life.
    #[x_kube(validation = Rule::new("self == oldSelf").message("clusterId cannot change"))]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub cluster_id: String,

    /// The broker image (`deploy/Dockerfile`).
    #[schemars(length(min = 1))]
    pub image: String,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Each broker's volume for its data directory.
    pub storage: Storage,

    /// CPU and memory of each broker's container. coremq runs a shard per core it may
    /// use: give whole CPUs, and requests equal to limits for the Guaranteed class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Shards per broker (`--shards`); default: one per CPU of the limit, else per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub shards: Option<i32>,

    #[serde(default)]
    pub listeners: Listeners,

    /// Broker settings, as keys of coremq's config file (`coremq --help`, flags with
    /// underscores): `default_partitions: 6`, `log_retention_ms: 604800000`. The operator
    /// owns the listeners, identities and data directory; they cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "config_schema")]
    pub config: BTreeMap<String, serde_json::Value>,

    /// TCP keepalive on the brokers' client connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,

    #[serde(default)]
    pub monitoring: Monitoring,

    #[serde(default)]
    pub scheduling: Scheduling,

    /// The seccomp profile of the broker containers: coremq needs io_uring, which the
    /// runtimes' default profiles refuse.
    #[serde(default)]
    pub seccomp: Seccomp,

    /// Seconds a broker has to stop after SIGTERM: it hands its leaderships away, lets
    /// requests finish and flushes its logs.
    #[serde(default = "termination_grace_default")]
    #[schemars(range(min = 30, max = 3600))]
    pub termination_grace_period_seconds: i64,

    /// The cluster's DNS domain (the brokers reach each other by their pods' names).
    #[serde(default = "cluster_domain_default")]
    pub cluster_domain: String,
}

fn termination_grace_default() -> i64 {
    60
}

fn cluster_domain_default() -> String {
    "cluster.local".into()
}

/// The schema of `config`: a map of scalars (integers, booleans, strings), which a structural
/// schema can only say as "any value"; the operator refuses the rest.
fn config_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"x-kubernetes-preserve-unknown-fields": true}
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size of each broker's volume (`100Gi`): it may grow (where the storage class allows
    /// expansion), never shrink.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,

    /// Storage class of the volumes; the cluster's default when absent. Fixed once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// The brokers' listeners and how each reaches clients.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listeners {
    #[serde(default = "Listener::kafka")]
    pub kafka: Listener,
    /// MQTT over TCP; absent: no MQTT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<Listener>,
    /// MQTT over WebSockets (path `/mqtt`); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_web_socket: Option<Listener>,
}

impl Default for Listeners {
    fn default() -> Listeners {
        Listeners {
            kafka: Listener::kafka(),
            mqtt: None,
            mqtt_web_socket: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// The port the brokers listen on, and the client Service's.
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    #[serde(default)]
    pub expose: Expose,
}

impl Listener {
    fn kafka() -> Listener {
        Listener {
            port: 9092,
            expose: Expose::default(),
        }
    }
}

/// How a listener's client Service reaches clients.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Expose {
    #[serde(default, rename = "type")]
    pub kind: ServiceKind,
    /// For a LoadBalancer: `Local` keeps the client's address and skips the second hop
    /// between nodes, but only nodes running a broker take traffic; `Cluster` (Kubernetes'
    /// default) spreads it over every node at the cost of a hop and the client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
    /// Annotations of the Service (a cloud's load balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceKind {
    #[default]
    ClusterIP,
    LoadBalancer,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

/// TCP keepalive of accepted connections (`--tcp-keepalive-*`): probes after `idle`
/// seconds without traffic, every `interval` seconds, the connection dropped after `count`
/// unanswered. Keep `idle` below the load balancer's idle timeout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    #[schemars(range(min = 1, max = 32767))]
    pub idle_seconds: i32,
    #[schemars(range(min = 1, max = 32767))]
    pub interval_seconds: i32,
    #[schemars(range(min = 1, max = 127))]
    pub count: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// A ServiceMonitor (Prometheus operator) for the brokers' `/metrics`.
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Scrape interval (`30s`).
    #[serde(default = "interval_default")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub interval: String,
    /// Labels of the ServiceMonitor, for the Prometheus that selects it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Default for Monitoring {
    fn default() -> Monitoring {
        Monitoring {
            enabled: enabled_default(),
            interval: interval_default(),
            labels: BTreeMap::new(),
        }
    }
}

fn enabled_default() -> bool {
    true
}

fn interval_default() -> String {
    "30s".into()
}

/// Where brokers may run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// `required`: never two brokers on one node (pods wait for a free node); `preferred`
    /// (default): spread where the nodes allow.
    #[serde(default)]
    pub anti_affinity: AntiAffinity,
    /// The node label brokers are spread over, at most one apart
    /// (`topology.kubernetes.io/zone` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AntiAffinity {
    Required,
    #[default]
    Preferred,
}

/// The seccomp profile of the broker containers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    /// `Localhost`: the profile at `localhostProfile` on each node (the runtime's default
    /// allowlist plus io_uring: `deploy/seccomp/coremq.json`, installed by the chart);
    /// `Unconfined`: none.
    #[serde(default = "seccomp_kind_default", rename = "type")]
    pub kind: SeccompKind,
    #[serde(default = "localhost_profile_default")]
    pub localhost_profile: String,
}

impl Default for Seccomp {
    fn default() -> Seccomp {
        Seccomp {
            kind: seccomp_kind_default(),
            localhost_profile: localhost_profile_default(),
        }
    }
}

fn seccomp_kind_default() -> SeccompKind {
    SeccompKind::Localhost
}

fn localhost_profile_default() -> String {
    "coremq/coremq.json".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SeccompKind {
    Localhost,
    Unconfined,
}

/// What the operator last saw of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoremqClusterStatus {
    /// `Creating`, `Running`, `Upgrading`, `Scaling`, `Degraded` or `Refused` (a change
    /// was not applied: the `Accepted` condition says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub brokers: i32,
    #[serde(default)]
    pub ready_brokers: i32,
    /// The broker leading the controller quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_leader: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub under_replicated_partitions: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_partitions: Option<i64>,
    /// The image every broker runs once an upgrade is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl CoremqClusterSpec {
    /// The controller voters: the spec's, else three (one below three brokers).
    pub fn voters(&self) -> i32 {
        self.controller_voters
            .unwrap_or(if self.brokers < VOTERS_DEFAULT_MAX {
                1
            } else {
                VOTERS_DEFAULT_MAX
            })
    }
}
