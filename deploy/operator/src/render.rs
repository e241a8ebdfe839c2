//! What a `CoremqCluster` becomes: pure functions from the resource to the objects the
//! operator applies (a StatefulSet of brokers, its headless Service, a client Service per
//! listener, the brokers' config file in a ConfigMap, a PodDisruptionBudget and a
//! ServiceMonitor). No I/O here: the reconciler applies what this returns, the tests read it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::crd::{AntiAffinity, CoremqCluster, Listener, SeccompKind, ServiceKind, TrafficPolicy};
use crate::settings;

/// The port the controller voters and observers reach each other on.
pub const CONTROLLER_PORT: i32 = 9093;
/// The broker's admin HTTP port: `/metrics`, `/health`, `/ready`.
pub const ADMIN_PORT: i32 = 9644;
/// Where the brokers' volume is mounted, their data directory.
pub const DATA_DIR: &str = "/var/lib/coremq";
/// Where the ConfigMap's config file is mounted.
pub const CONFIG_DIR: &str = "/etc/coremq";
pub const CONFIG_FILE: &str = "coremq.toml";
/// The label Kubernetes gives a StatefulSet's pod: its ordinal, the broker's node id.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Annotations on the StatefulSet recording what the running cluster was made with: the
/// operator compares a new spec with these before it changes anything.
pub const CLUSTER_ID_ANNOTATION: &str = "coremq.io/cluster-id";
pub const VOTERS_ANNOTATION: &str = "coremq.io/controller-voters";
pub const STORAGE_ANNOTATION: &str = "coremq.io/storage-size";
/// On the pod template: a change of the config file rolls the brokers.
pub const CONFIG_HASH_ANNOTATION: &str = "coremq.io/config-hash";

/// The user ids the broker runs as (the image's `coremq` user).
const USER_ID: i64 = 10001;

/// Everything one cluster is made of.
#[derive(Debug, Clone)]
pub struct Children {
    pub config_map: ConfigMap,
    pub headless: Service,
    pub clients: Vec<Service>,
    pub stateful_set: StatefulSet,
    pub disruption_budget: PodDisruptionBudget,
    /// A `monitoring.coreos.com/v1` ServiceMonitor, when monitoring is on.
    pub service_monitor: Option<Value>,
}

/// Names of a cluster's objects.
pub struct Names {
    pub cluster: String,
    pub namespace: String,
}

impl Names {
    pub fn of(cluster: &CoremqCluster) -> Names {
        Names {
            cluster: cluster.name_any(),
            namespace: cluster.namespace().unwrap_or_else(|| "default".into()),
        }
    }

    pub fn stateful_set(&self) -> String {
        self.cluster.clone()
    }

    pub fn headless(&self) -> String {
        format!("{}-brokers", self.cluster)
    }

    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }

    pub fn client(&self, listener: &str) -> String {
        format!("{}-{listener}", self.cluster)
    }

    pub fn pod(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }

    /// The PersistentVolumeClaim of broker `ordinal` (StatefulSet naming).
    pub fn claim(&self, ordinal: i32) -> String {
        format!("data-{}-{ordinal}", self.cluster)
    }

    /// Broker `ordinal`'s DNS name, through the headless Service.
    pub fn host(&self, ordinal: i32, domain: &str) -> String {
        format!(
            "{}.{}.{}.svc.{domain}",
            self.pod(ordinal),
            self.headless(),
            self.namespace
        )
    }
}

/// The labels every object of the cluster carries; pods are selected by these.
pub fn selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "coremq".into()),
        ("app.kubernetes.io/instance".into(), cluster.into()),
        ("app.kubernetes.io/component".into(), "broker".into()),
    ])
}

fn labels(cluster: &str) -> BTreeMap<String, String> {
    let mut labels = selector(cluster);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "coremq-operator".into(),
    );
    labels
}

/// `--controller-voters`: the first `voters` brokers by their DNS names.
pub fn voters(cluster: &CoremqCluster) -> String {
    let names = Names::of(cluster);
    (0..cluster.spec.voters())
        .map(|ordinal| {
            format!(
                "{ordinal}@{}:{CONTROLLER_PORT}",
                names.host(ordinal, &cluster.spec.cluster_domain)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The brokers' config file: what all brokers share (each broker's own identity comes from
/// its environment).
pub fn config_file(cluster: &CoremqCluster) -> String {
    let spec = &cluster.spec;
    let mut table = toml::Table::new();
    let mut set = |key: &str, value: toml::Value| {
        table.insert(key.into(), value);
    };
    set("cluster_id", spec.cluster_id.clone().into());
    set("controller_voters", voters(cluster).into());
    set("data_dir", DATA_DIR.into());
    set("kafka_listener", wildcard(spec.listeners.kafka.port).into());
    set("admin_listener", wildcard(ADMIN_PORT).into());
    let listener = |listener: &Option<Listener>| match listener {
        Some(listener) => wildcard(listener.port),
        None => "none".into(),
    };
    set("mqtt_listener", listener(&spec.listeners.mqtt).into());
    set(
        "mqtt_ws_listener",
        listener(&spec.listeners.mqtt_web_socket).into(),
    );
    if let Some(shards) = shards(cluster) {
        set("shards", i64::from(shards).into());
    }
    if let Some(keepalive) = &spec.tcp_keepalive {
        set(
            "tcp_keepalive_idle_s",
            i64::from(keepalive.idle_seconds).into(),
        );
        set(
            "tcp_keepalive_interval_s",
            i64::from(keepalive.interval_seconds).into(),
        );
        set("tcp_keepalive_count", i64::from(keepalive.count).into());
    }
    for (key, value) in &spec.config {
        if let Some(value) = settings::toml_value(value) {
            set(key, value);
        }
    }
    toml::to_string(&table).expect("a table of scalars serializes")
}

fn wildcard(port: i32) -> String {
    format!("0.0.0.0:{port}")
}

/// Shards per broker: the spec's, else one per whole CPU of the container's limit.
fn shards(cluster: &CoremqCluster) -> Option<i32> {
    if let Some(shards) = cluster.spec.shards {
        return Some(shards);
    }
    let limit = cluster
        .spec
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("cpu")?;
    limit.0.parse::<i32>().ok().filter(|cpus| *cpus > 0)
}

/// A stable hash of the config file (FNV-1a), to roll the brokers when it changes.
fn config_hash(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn metadata(cluster: &CoremqCluster, name: String) -> Value {
    let owner = cluster
        .controller_owner_ref(&())
        .expect("a stored resource has a name and uid");
    json!({
        "name": name,
        "namespace": Names::of(cluster).namespace,
        "labels": labels(&cluster.name_any()),
        "ownerReferences": [owner],
    })
}

/// The objects `cluster` is made of.
pub fn render(cluster: &CoremqCluster) -> Children {
    let names = Names::of(cluster);
    let config = config_file(cluster);
    Children {
        headless: headless(cluster, &names),
        clients: clients(cluster, &names),
        stateful_set: stateful_set(cluster, &names, &config),
        disruption_budget: disruption_budget(cluster, &names),
        service_monitor: cluster
            .spec
            .monitoring
            .enabled
            .then(|| service_monitor(cluster, &names)),
        config_map: typed(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(cluster, names.config_map()),
            "data": {CONFIG_FILE: config},
        })),
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the rendered object matches its type")
}

/// The ports every broker serves, by name.
fn ports(cluster: &CoremqCluster) -> Vec<(&'static str, i32)> {
    let listeners = &cluster.spec.listeners;
    let mut ports = vec![
        ("kafka", listeners.kafka.port),
        ("controller", CONTROLLER_PORT),
        ("admin", ADMIN_PORT),
    ];
    if let Some(mqtt) = &listeners.mqtt {
        ports.push(("mqtt", mqtt.port));
    }
    if let Some(websocket) = &listeners.mqtt_web_socket {
        ports.push(("mqtt-ws", websocket.port));
    }
    ports
}

/// The Service giving each broker its DNS name, published before the broker is ready (the
/// brokers must find each other to become ready).
fn headless(cluster: &CoremqCluster, names: &Names) -> Service {
    let mut metadata = metadata(cluster, names.headless());
    metadata["labels"]["coremq.io/service"] = json!("brokers");
    let ports: Vec<Value> = ports(cluster)
        .into_iter()
        .map(|(name, port)| json!({"name": name, "port": port, "targetPort": name}))
        .collect();
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector(&names.cluster),
            "ports": ports,
        },
    }))
}

/// A Service per client listener, as its `expose` says.
fn clients(cluster: &CoremqCluster, names: &Names) -> Vec<Service> {
    let listeners = &cluster.spec.listeners;
    let mut exposed = vec![("kafka", &listeners.kafka)];
    if let Some(mqtt) = &listeners.mqtt {
        exposed.push(("mqtt", mqtt));
    }
    if let Some(websocket) = &listeners.mqtt_web_socket {
        exposed.push(("mqtt-ws", websocket));
    }
    exposed
        .into_iter()
        .map(|(name, listener)| {
            let mut metadata = metadata(cluster, names.client(name));
            if !listener.expose.annotations.is_empty() {
                metadata["annotations"] = json!(listener.expose.annotations);
            }
            let mut spec = json!({
                "type": match listener.expose.kind {
                    ServiceKind::ClusterIP => "ClusterIP",
                    ServiceKind::LoadBalancer => "LoadBalancer",
                },
                "selector": selector(&names.cluster),
                "ports": [{"name": name, "port": listener.port, "targetPort": name}],
            });
            if listener.expose.kind == ServiceKind::LoadBalancer {
                let policy = listener.expose.external_traffic_policy;
                spec["externalTrafficPolicy"] = json!(match policy {
                    Some(TrafficPolicy::Local) => "Local",
                    Some(TrafficPolicy::Cluster) | None => "Cluster",
                });
            }
            typed(json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata,
                "spec": spec,
            }))
        })
        .collect()
}

fn stateful_set(cluster: &CoremqCluster, names: &Names, config: &str) -> StatefulSet {
    let spec = &cluster.spec;
    let mut metadata = metadata(cluster, names.stateful_set());
    metadata["annotations"] = json!({
        CLUSTER_ID_ANNOTATION: spec.cluster_id,
        VOTERS_ANNOTATION: spec.voters().to_string(),
        STORAGE_ANNOTATION: spec.storage.size,
    });
    let env = json!([
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "COREMQ_NODE_ID",
         "valueFrom": {"fieldRef": {"fieldPath": format!("metadata.labels['{POD_INDEX_LABEL}']")}}},
        {"name": "COREMQ_ADVERTISED_HOST",
         "value": format!("$(POD_NAME).{}.$(POD_NAMESPACE).svc.{}", names.headless(),
                          spec.cluster_domain)},
        {"name": "COREMQ_CONTROLLER_LISTENER",
         "value": format!("$(COREMQ_ADVERTISED_HOST):{CONTROLLER_PORT}")},
    ]);
    let container_ports: Vec<Value> = ports(cluster)
        .into_iter()
        .map(|(name, port)| json!({"name": name, "containerPort": port, "protocol": "TCP"}))
        .collect();
    let probe = |path: &str, period: i32, failures: i32| {
        json!({
            "httpGet": {"path": path, "port": "admin"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 3,
        })
    };
    let mut container = json!({
        "name": "broker",
        "image": spec.image,
        "command": ["coremq"],
        "args": ["--config", format!("{CONFIG_DIR}/{CONFIG_FILE}")],
        "env": env,
        "ports": container_ports,
        // Recovery after a crash may take a while: the startup probe allows ten minutes
        // before the liveness probe takes over.
        "startupProbe": probe("/health", 5, 120),
        "livenessProbe": probe("/health", 10, 6),
        "readinessProbe": probe("/ready", 5, 3),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": true},
        ],
    });
    if let Some(policy) = &spec.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    if let Some(resources) = &spec.resources {
        container["resources"] = json!(resources);
    }
    let seccomp = match spec.seccomp.kind {
        SeccompKind::Localhost => {
            json!({"type": "Localhost", "localhostProfile": spec.seccomp.localhost_profile})
        }
        SeccompKind::Unconfined => json!({"type": "Unconfined"}),
    };
    let scheduling = &spec.scheduling;
    let term = json!({
        "labelSelector": {"matchLabels": selector(&names.cluster)},
        "topologyKey": "kubernetes.io/hostname",
    });
    let anti_affinity = match scheduling.anti_affinity {
        AntiAffinity::Required => json!({"requiredDuringSchedulingIgnoredDuringExecution": [term]}),
        AntiAffinity::Preferred => json!({
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }),
    };
    let topology_key = scheduling
        .topology_key
        .clone()
        .unwrap_or_else(|| "topology.kubernetes.io/zone".into());
    let mut pod = json!({
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": USER_ID,
            "runAsGroup": USER_ID,
            "fsGroup": USER_ID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": seccomp,
        },
        "affinity": {"podAntiAffinity": anti_affinity},
        "topologySpreadConstraints": [{
            "maxSkew": 1,
            "topologyKey": topology_key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector(&names.cluster)},
        }],
        "containers": [container],
        "volumes": [{"name": "config", "configMap": {"name": names.config_map()}}],
    });
    if !scheduling.node_selector.is_empty() {
        pod["nodeSelector"] = json!(scheduling.node_selector);
    }
    if !scheduling.tolerations.is_empty() {
        pod["tolerations"] = json!(scheduling.tolerations);
    }
    let mut claim = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size}},
    });
    if let Some(class) = &spec.storage.storage_class_name {
        claim["storageClassName"] = json!(class);
    }
    typed(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata,
        "spec": {
            "serviceName": names.headless(),
            "replicas": spec.brokers,
            // The brokers of a new cluster must start together to elect a controller.
            "podManagementPolicy": "Parallel",
            // The operator rolls the brokers itself, one at a time, checking the cluster
            // between them.
            "updateStrategy": {"type": "OnDelete"},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "selector": {"matchLabels": selector(&names.cluster)},
            "template": {
                "metadata": {
                    "labels": labels(&names.cluster),
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash(config)},
                },
                "spec": pod,
            },
            "volumeClaimTemplates": [{
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "labels": labels(&names.cluster)},
                "spec": claim,
            }],
        },
    }))
}

/// At most one broker down by choice (drains, node upgrades) at a time.
fn disruption_budget(cluster: &CoremqCluster, names: &Names) -> PodDisruptionBudget {
    typed(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(cluster, names.stateful_set()),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(&names.cluster)},
        },
    }))
}

fn service_monitor(cluster: &CoremqCluster, names: &Names) -> Value {
    let monitoring = &cluster.spec.monitoring;
    let mut metadata = metadata(cluster, names.stateful_set());
    for (key, value) in &monitoring.labels {
        metadata["labels"][key] = json!(value);
    }
    let mut selected = selector(&names.cluster);
    selected.insert("coremq.io/service".into(), "brokers".into());
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selected},
            "endpoints": [{
                "port": "admin",
                "path": "/metrics",
                "interval": monitoring.interval,
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(spec: Value) -> CoremqCluster {
        let mut cluster: CoremqCluster = serde_json::from_value(json!({
            "apiVersion": "coremq.io/v1alpha1",
            "kind": "CoremqCluster",
            "metadata": {"name": "prod", "namespace": "streaming", "uid": "7f3c"},
            "spec": spec,
        }))
        .unwrap();
        cluster.meta_mut().uid = Some("7f3c".into());
        cluster
    }

    fn four_brokers() -> CoremqCluster {
        cluster(json!({
            "brokers": 4,
            "clusterId": "prod-1",
            "image": "registry.example/coremq:0.1.0",
            "storage": {"size": "100Gi", "storageClassName": "fast"},
            "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
            "listeners": {
                "kafka": {"port": 9092},
                "mqtt": {"port": 1883, "expose": {"type": "LoadBalancer",
                                                   "externalTrafficPolicy": "Local"}},
            },
            "config": {"default_partitions": 6, "auto_create_topics": false},
            "tcpKeepalive": {"idleSeconds": 60, "intervalSeconds": 10, "count": 6},
        }))
    }

    #[test]
    fn the_first_voters_brokers_vote_by_their_pod_dns_names() {
        assert_eq!(
            voters(&four_brokers()),
            "0@prod-0.prod-brokers.streaming.svc.cluster.local:9093,\
             1@prod-1.prod-brokers.streaming.svc.cluster.local:9093,\
             2@prod-2.prod-brokers.streaming.svc.cluster.local:9093"
        );
    }

    #[test]
    fn the_config_file_holds_the_shared_settings_and_the_users() {
        let file: toml::Table = toml::from_str(&config_file(&four_brokers())).unwrap();
        assert_eq!(file["cluster_id"].as_str(), Some("prod-1"));
        assert_eq!(file["data_dir"].as_str(), Some(DATA_DIR));
        assert_eq!(file["kafka_listener"].as_str(), Some("0.0.0.0:9092"));
        assert_eq!(file["mqtt_listener"].as_str(), Some("0.0.0.0:1883"));
        assert_eq!(file["mqtt_ws_listener"].as_str(), Some("none"));
        assert_eq!(file["shards"].as_integer(), Some(2));
        assert_eq!(file["default_partitions"].as_integer(), Some(6));
        assert_eq!(file["auto_create_topics"].as_bool(), Some(false));
        assert_eq!(file["tcp_keepalive_idle_s"].as_integer(), Some(60));
        assert!(
            file["controller_voters"]
                .as_str()
                .unwrap()
                .starts_with("0@prod-0.")
        );
    }

    #[test]
    fn the_stateful_set_is_rolled_by_the_operator_and_each_pod_knows_who_it_is() {
        let children = render(&four_brokers());
        let set = children.stateful_set;
        let spec = set.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.service_name.as_deref(), Some("prod-brokers"));
        let strategy = spec.update_strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("OnDelete"));
        let annotations = set.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[VOTERS_ANNOTATION], "3");
        assert_eq!(annotations[CLUSTER_ID_ANNOTATION], "prod-1");
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
        let container = &pod.containers[0];
        let env: BTreeMap<_, _> = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|var| (var.name.as_str(), var))
            .collect();
        let node_id = env["COREMQ_NODE_ID"].value_from.as_ref().unwrap();
        assert_eq!(
            node_id.field_ref.as_ref().unwrap().field_path,
            "metadata.labels['apps.kubernetes.io/pod-index']"
        );
        assert_eq!(
            env["COREMQ_ADVERTISED_HOST"].value.as_deref(),
            Some("$(POD_NAME).prod-brokers.$(POD_NAMESPACE).svc.cluster.local")
        );
        let readiness = container.readiness_probe.as_ref().unwrap();
        assert_eq!(
            readiness.http_get.as_ref().unwrap().path.as_deref(),
            Some("/ready")
        );
        let seccomp = pod
            .security_context
            .as_ref()
            .unwrap()
            .seccomp_profile
            .as_ref();
        assert_eq!(seccomp.unwrap().type_, "Localhost");
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let claim = claim.spec.as_ref().unwrap();
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
        let owner = &set.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("CoremqCluster", Some(true))
        );
    }

    #[test]
    fn a_config_change_changes_the_pod_template_and_nothing_else_does() {
        let hash = |cluster: &CoremqCluster| {
            let set = render(cluster).stateful_set;
            let template = set.spec.unwrap().template.metadata.unwrap();
            template.annotations.unwrap()[CONFIG_HASH_ANNOTATION].clone()
        };
        let before = four_brokers();
        let mut changed = four_brokers();
        changed
            .spec
            .config
            .insert("default_partitions".into(), json!(12));
        let mut same = four_brokers();
        same.spec.monitoring.interval = "10s".into();
        assert_ne!(hash(&before), hash(&changed));
        assert_eq!(hash(&before), hash(&same));
    }

    #[test]
    fn each_listener_gets_its_client_service_and_the_headless_one_publishes_unready_pods() {
        let children = render(&four_brokers());
        let headless = children.headless.spec.unwrap();
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(headless.publish_not_ready_addresses, Some(true));
        let names: Vec<_> = children
            .clients
            .iter()
            .map(|service| service.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["prod-kafka", "prod-mqtt"]);
        let mqtt = children.clients[1].spec.as_ref().unwrap();
        assert_eq!(mqtt.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(mqtt.external_traffic_policy.as_deref(), Some("Local"));
        let kafka = children.clients[0].spec.as_ref().unwrap();
        assert_eq!(kafka.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(kafka.external_traffic_policy, None);
        let monitor = children.service_monitor.unwrap();
        assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");
        let budget = children.disruption_budget.spec.unwrap();
        assert_eq!(
            budget.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
        );
    }
}
