//! The operator's controller, run as in a cluster (kube's `Controller`, its watches and
//! requeues) against the in-process fake API server (`support/fake_api.rs`), with the
//! brokers' admin API answered by `FakeBrokers`: a cluster is created, refused a dangerous
//! change, scaled up and down, upgraded broker by broker, and recovers a lost pod.

#[path = "support/chart.rs"]
mod chart;
#[path = "support/fake_api.rs"]
mod fake_api;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coremq_operator::brokers::{BrokerHealth, Brokers, Health};
use coremq_operator::crd::CoremqCluster;
use coremq_operator::reconcile::{self, Context};
use fake_api::FakeApi;
use futures::future::BoxFuture;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NAMESPACE: &str = "streaming";

/// What the brokers report, as the test sets it; drains finish by the next health asked.
struct BrokerState {
    controller: i32,
    replicas: BTreeMap<i32, u64>,
    draining: Vec<i32>,
    under_replicated: u64,
    replication_factor_max: (u64, String),
    /// Every drain and rebalance asked, in order.
    asked: Vec<String>,
}

struct FakeBrokers {
    api: FakeApi,
    state: Mutex<BrokerState>,
}

impl FakeBrokers {
    fn new(api: FakeApi) -> Arc<FakeBrokers> {
        Arc::new(FakeBrokers {
            api,
            state: Mutex::new(BrokerState {
                controller: 0,
                replicas: BTreeMap::new(),
                draining: Vec::new(),
                under_replicated: 0,
                replication_factor_max: (3, "__consumer_offsets".into()),
                asked: Vec::new(),
            }),
        })
    }

    fn asked(&self) -> Vec<String> {
        self.state.lock().unwrap().asked.clone()
    }

    fn set(&self, change: impl FnOnce(&mut BrokerState)) {
        change(&mut self.state.lock().unwrap());
    }
}

impl Brokers for FakeBrokers {
    /// Brokers are the ready pods; each holds 10 replicas until drained.
    fn health<'a>(&'a self, _: &'a CoremqCluster) -> BoxFuture<'a, Result<Health, String>> {
        Box::pin(async move {
            let pods = self.api.objects("pods", NAMESPACE);
            let mut state = self.state.lock().unwrap();
            let reassigning = state.draining.len() as u64;
            for id in std::mem::take(&mut state.draining) {
                state.replicas.insert(id, 0);
            }
            let brokers: Vec<BrokerHealth> = pods
                .iter()
                .map(|pod| {
                    let id: i32 = pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let ready = pod["status"]["conditions"][0]["status"] == "True";
                    BrokerHealth {
                        id,
                        fenced: !ready,
                        replicas: *state.replicas.entry(id).or_insert(10),
                        leaders: 0,
                    }
                })
                .collect();
            if brokers.is_empty() {
                return Err("no broker answers".into());
            }
            Ok(Health {
                node_id: 0,
                controller_id: Some(state.controller),
                brokers,
                partitions: 30,
                under_replicated_partitions: state.under_replicated,
                offline_partitions: 0,
                reassigning_partitions: reassigning,
                replication_factor_max: state.replication_factor_max.0,
                replication_factor_max_topic: Some(state.replication_factor_max.1.clone()),
            })
        })
    }

    fn drain<'a>(&'a self, _: &'a CoremqCluster, id: i32) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap();
            state.asked.push(format!("drain {id}"));
            state.draining.push(id);
            Ok(())
        })
    }

    fn rebalance<'a>(&'a self, _: &'a CoremqCluster) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap();
            state.asked.push("rebalance".into());
            Ok(())
        })
    }
}

/// A fake API server with the operator running against it.
struct Harness {
    api: FakeApi,
    brokers: Arc<FakeBrokers>,
    clusters: Api<CoremqCluster>,
}

impl Harness {
    fn start() -> Harness {
        let api = FakeApi::start();
        let brokers = FakeBrokers::new(api.clone());
        let mut context = Context::new(api.client(), brokers.clone());
        context.waiting = Duration::from_millis(100);
        context.settled = Duration::from_millis(500);
        tokio::spawn(reconcile::run(context));
        Harness {
            clusters: Api::namespaced(api.user_client(), NAMESPACE),
            api,
            brokers,
        }
    }

    async fn create(&self, spec: Value) {
        let cluster: CoremqCluster = serde_json::from_value(json!({
            "apiVersion": "coremq.io/v1alpha1",
            "kind": "CoremqCluster",
            "metadata": {"name": "prod", "namespace": NAMESPACE},
            "spec": spec,
        }))
        .unwrap();
        self.clusters
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();
    }

    async fn change(&self, spec: Value) {
        let patch = json!({ "spec": spec });
        self.clusters
            .patch("prod", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    fn status(&self) -> Value {
        self.api
            .object("coremqclusters", NAMESPACE, "prod")
            .map(|cluster| cluster["status"].clone())
            .unwrap_or(Value::Null)
    }

    fn stateful_set(&self) -> Value {
        self.api.object("statefulsets", NAMESPACE, "prod").unwrap()
    }

    /// Waits until `done` holds, at most 20 s.
    async fn until(&self, what: &str, done: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: status {}\nlog {:#?}\nasked {:?}",
                self.status(),
                self.api.log(),
                self.brokers.asked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn running(&self, brokers: i64) {
        self.until(&format!("running with {brokers} brokers"), |h| {
            let status = h.status();
            status["phase"] == "Running"
                && status["readyBrokers"] == brokers
                && status["observedGeneration"]
                    == h.api.object("coremqclusters", NAMESPACE, "prod").unwrap()["metadata"]
                        ["generation"]
        })
        .await;
    }

    fn deletions(&self) -> Vec<String> {
        self.api
            .log()
            .into_iter()
            .filter(|line| line.starts_with("DELETE pods/"))
            .collect()
    }
}

fn spec(brokers: i64) -> Value {
    json!({
        "brokers": brokers,
        "clusterId": "prod-1",
        "image": "coremq:1",
        "storage": {"size": "10Gi"},
        "listeners": {"kafka": {"port": 9092}, "mqtt": {"port": 1883}},
    })
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_gets_its_objects_and_reports_running() {
    let harness = Harness::start();
    harness.create(spec(3)).await;
    harness.running(3).await;
    let set = harness.stateful_set();
    assert_eq!(set["spec"]["replicas"], 3);
    assert_eq!(set["spec"]["updateStrategy"]["type"], "OnDelete");
    for (plural, name) in [
        ("services", "prod-brokers"),
        ("services", "prod-kafka"),
        ("services", "prod-mqtt"),
        ("configmaps", "prod-config"),
        ("poddisruptionbudgets", "prod"),
        ("servicemonitors", "prod"),
        ("persistentvolumeclaims", "data-prod-2"),
    ] {
        let object = harness.api.object(plural, NAMESPACE, name);
        assert!(object.is_some(), "{plural}/{name} missing");
    }
    let status = harness.status();
    assert_eq!(status["controllerLeader"], 0);
    assert_eq!(status["underReplicatedPartitions"], 0);
    assert_eq!(status["image"], "coremq:1");
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "Accepted")["status"], "True");
    assert!(harness.deletions().is_empty(), "{:?}", harness.deletions());
    let log = harness.api.log();
    for watched in [
        "coremqclusters",
        "statefulsets",
        "services",
        "configmaps",
        "pods",
    ] {
        let watch = format!("WATCH {watched} from=");
        assert!(
            log.iter().any(|line| line.starts_with(&watch)),
            "no watch of {watched}: {log:#?}"
        );
    }

    // A listener taken out takes its Service with it.
    harness
        .change(json!({"listeners": {"kafka": {"port": 9092}, "mqtt": null}}))
        .await;
    harness
        .until("the MQTT Service removed", |h| {
            h.api.object("services", NAMESPACE, "prod-mqtt").is_none()
        })
        .await;
    let config = harness
        .api
        .object("configmaps", NAMESPACE, "prod-config")
        .unwrap();
    let file = config["data"]["coremq.toml"].as_str().unwrap();
    assert!(file.contains("mqtt_listener = \"none\""), "{file}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dangerous_change_is_refused_with_an_event_and_the_running_cluster_is_left_as_is() {
    let harness = Harness::start();
    harness.create(spec(3)).await;
    harness.running(3).await;
    let before = harness.stateful_set();

    for (change, reason) in [
        (json!({"storage": {"size": "5Gi"}}), "StorageShrunk"),
        (json!({"clusterId": "other"}), "ClusterIdChanged"),
        (
            json!({"brokers": 4, "controllerVoters": 4}),
            "EvenControllerVoters",
        ),
        (json!({"config": {"cluster_id": "x"}}), "InvalidConfig"),
    ] {
        harness.change(change.clone()).await;
        harness
            .until(&format!("{change} refused"), |h| {
                let status = h.status();
                status["phase"] == "Refused" && condition(&status, "Accepted")["reason"] == reason
            })
            .await;
        let events = harness.api.objects("events", NAMESPACE);
        assert!(
            events.iter().any(|event| event["reason"] == reason
                && event["type"] == "Warning"
                && event["regarding"]["name"] == "prod"),
            "no {reason} event: {events:#?}"
        );
        let after = harness.stateful_set();
        assert_eq!(
            after["spec"], before["spec"],
            "{change} touched the StatefulSet"
        );
        assert_eq!(
            after["metadata"]["annotations"],
            before["metadata"]["annotations"]
        );
        // Put back, the spec is applied again.
        harness.change(spec(3)).await;
        harness
            .change(json!({"controllerVoters": null, "config": null}))
            .await;
        harness.running(3).await;
    }
    assert!(harness.deletions().is_empty(), "{:?}", harness.deletions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_up_spreads_replicas_and_scaling_down_drains_the_brokers_removed_first() {
    let harness = Harness::start();
    harness.create(spec(3)).await;
    harness.running(3).await;
    assert_eq!(harness.brokers.asked(), Vec::<String>::new());

    harness.change(json!({"brokers": 5})).await;
    harness.running(5).await;
    assert_eq!(harness.stateful_set()["spec"]["replicas"], 5);
    assert_eq!(harness.brokers.asked(), ["rebalance"]);

    // Below the largest replication factor: refused.
    harness
        .brokers
        .set(|state| state.replication_factor_max = (4, "quotes".into()));
    harness.change(json!({"brokers": 3})).await;
    harness
        .until("scaling below the replication factor refused", |h| {
            let status = h.status();
            condition(&status, "Accepted")["reason"] == "ScaleBelowReplicationFactor"
        })
        .await;
    let message = condition(&harness.status(), "Accepted")["message"].clone();
    assert!(
        message.as_str().unwrap().contains("\"quotes\""),
        "{message}"
    );
    assert_eq!(harness.stateful_set()["spec"]["replicas"], 5);

    // Allowed: brokers 3 and 4 are drained before the StatefulSet shrinks.
    harness
        .brokers
        .set(|state| state.replication_factor_max = (3, "quotes".into()));
    harness.change(json!({"brokers": 3})).await;
    harness.running(3).await;
    assert_eq!(harness.stateful_set()["spec"]["replicas"], 3);
    let asked = harness.brokers.asked();
    assert!(
        asked.contains(&"drain 3".to_string()) && asked.contains(&"drain 4".to_string()),
        "{asked:?}"
    );
    let log = harness.api.log();
    let shrunk = log
        .iter()
        .position(|line| line.starts_with("APPLY statefulsets") && line.ends_with("replicas=3"))
        .expect("the StatefulSet shrunk");
    let removed = log
        .iter()
        .position(|line| line.starts_with("SCALE-DOWN pods/streaming/prod-4"))
        .expect("pod 4 removed");
    assert!(shrunk < removed, "{log:#?}");
    assert_eq!(
        harness.brokers.state.lock().unwrap().replicas.get(&4),
        Some(&0),
        "broker 4 removed while holding replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_change_rolls_one_broker_at_a_time_the_controller_leader_last() {
    let harness = Harness::start();
    harness.create(spec(3)).await;
    harness.running(3).await;
    harness.brokers.set(|state| {
        state.controller = 1;
        state.under_replicated = 2;
    });

    harness.change(json!({"image": "coremq:2"})).await;
    harness
        .until("upgrading", |h| h.status()["phase"] == "Upgrading")
        .await;
    // Under-replicated partitions hold the roll back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(harness.deletions().is_empty(), "{:?}", harness.deletions());
    harness.brokers.set(|state| state.under_replicated = 0);

    harness
        .until("every broker on the new image", |h| {
            let pods = h.api.objects("pods", NAMESPACE);
            h.status()["image"] == "coremq:2"
                && pods.len() == 3
                && pods
                    .iter()
                    .all(|pod| pod["spec"]["containers"][0]["image"] == "coremq:2")
        })
        .await;
    assert_eq!(
        harness.deletions(),
        [
            "DELETE pods/streaming/prod-2 ready=3",
            "DELETE pods/streaming/prod-0 ready=3",
            "DELETE pods/streaming/prod-1 ready=3",
        ],
        "one at a time, each while all were ready, the controller's leader (1) last"
    );
    harness.running(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pod_is_made_again_the_cluster_degraded_meanwhile_and_nothing_else_restarted() {
    let harness = Harness::start();
    harness.create(spec(3)).await;
    harness.running(3).await;

    harness.api.hold_ready("prod-1", true);
    harness.api.delete("pods", NAMESPACE, "prod-1");
    harness
        .until("degraded with two ready", |h| {
            let status = h.status();
            status["phase"] == "Degraded" && status["readyBrokers"] == 2
        })
        .await;
    assert!(
        harness.api.object("pods", NAMESPACE, "prod-1").is_some(),
        "pod made again"
    );
    harness.api.hold_ready("prod-1", false);
    harness.running(3).await;
    assert!(harness.deletions().is_empty(), "{:?}", harness.deletions());
}

/// The (API group, resource, verb) triples the chart's ClusterRole grants.
fn granted() -> BTreeSet<(String, String, String)> {
    let objects = chart::render(&json!({}));
    let role = objects.iter().find(|o| o["kind"] == "ClusterRole").unwrap();
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    granted.insert((
                        group.as_str().unwrap().to_string(),
                        resource.as_str().unwrap().to_string(),
                        verb.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    granted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_role_grants_exactly_the_calls_the_operator_makes() {
    let harness = Harness::start();
    harness.create(spec(3)).await;
    harness.running(3).await;
    // Refused twice alike (the second event is a series: a patch of the first).
    for _ in 0..2 {
        harness.change(json!({"clusterId": "other"})).await;
        harness
            .until("refused", |h| h.status()["phase"] == "Refused")
            .await;
        harness.change(json!({"clusterId": "prod-1"})).await;
        harness.running(3).await;
    }
    harness
        .change(json!({"brokers": 4, "storage": {"size": "20Gi"}}))
        .await;
    harness.running(4).await;
    let claim = harness
        .api
        .object("persistentvolumeclaims", NAMESPACE, "data-prod-0")
        .unwrap();
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "20Gi");
    harness.change(json!({"image": "coremq:2"})).await;
    harness
        .until("upgraded", |h| h.status()["image"] == "coremq:2")
        .await;
    harness
        .change(json!({"brokers": 3, "monitoring": {"enabled": false},
                       "listeners": {"kafka": {"port": 9092}, "mqtt": null}}))
        .await;
    harness.running(3).await;
    harness
        .until("the ServiceMonitor and MQTT Service removed", |h| {
            h.api.object("servicemonitors", NAMESPACE, "prod").is_none()
                && h.api.object("services", NAMESPACE, "prod-mqtt").is_none()
        })
        .await;

    let calls = harness.api.calls();
    let granted = granted();
    let missing: Vec<_> = calls.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "calls the role does not grant: {missing:?}"
    );
    let unused: Vec<_> = granted.difference(&calls).collect();
    assert!(unused.is_empty(), "granted and never used: {unused:?}");
}
