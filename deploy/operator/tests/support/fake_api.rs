//! An in-process fake Kubernetes API server for the operator's tests: a `tower` service a
//! `kube::Client` talks to, holding the resources the operator reads and writes (JSON, by
//! kind, namespace and name) with resource versions, lists with label selectors, watches
//! (history from a resource version, then live changes), create, server-side apply (the
//! applied object replaces what its manager owns: the operator is the only one), merge
//! patches, the status subresource and delete.
//!
//! Two controllers of a real cluster are played here too, in the same lock as each change:
//! the StatefulSet controller (pods and volume claims per ordinal, the template's revision
//! in `controller-revision-hash`, pods removed above the replicas and made again when
//! deleted, the `OnDelete` strategy leaving running pods on their revision) and the kubelet
//! (a pod becomes ready shortly after it is made, unless the test holds readiness back).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Resources the fake serves: plural, kind, API group/version.
const KINDS: &[(&str, &str, &str)] = &[
    ("coremqclusters", "CoremqCluster", "coremq.io/v1alpha1"),
    ("statefulsets", "StatefulSet", "apps/v1"),
    ("services", "Service", "v1"),
    ("configmaps", "ConfigMap", "v1"),
    ("pods", "Pod", "v1"),
    ("persistentvolumeclaims", "PersistentVolumeClaim", "v1"),
    ("poddisruptionbudgets", "PodDisruptionBudget", "policy/v1"),
    (
        "servicemonitors",
        "ServiceMonitor",
        "monitoring.coreos.com/v1",
    ),
    ("events", "Event", "events.k8s.io/v1"),
];

type Key = (String, String, String);

/// One change, as a watch reports it.
#[derive(Clone, Debug)]
struct Change {
    version: u64,
    plural: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    version: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// What happened, in order, for the tests to read: `DELETE pods/ns/name ready=N`.
    log: Vec<String>,
    /// Pods the kubelet keeps from becoming ready.
    held: BTreeSet<String>,
    /// Every kind of call made: API group, resource (`pods`, `coremqclusters/status`) and
    /// the RBAC verb it needs.
    calls: BTreeSet<(String, String, String)>,
}

/// The fake API server; cheap to clone.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
}

pub type Body = BoxBody<Bytes, Infallible>;

fn full(value: &Value) -> Body {
    Full::new(Bytes::from(serde_json::to_vec(value).unwrap())).boxed()
}

fn respond(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(value))
        .unwrap()
}

fn failure(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    respond(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let object = target.as_object_mut().unwrap();
            for (key, value) in fields {
                if value.is_null() {
                    object.remove(key);
                } else {
                    merge(object.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn labels_match(object: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|term| !term.is_empty())
        .all(|term| {
            let (key, value) = term.split_once('=').unwrap_or((term, ""));
            object["metadata"]["labels"][key].as_str() == Some(value)
        })
}

fn kind_of(plural: &str) -> Option<(&'static str, &'static str)> {
    KINDS
        .iter()
        .find(|(name, _, _)| *name == plural)
        .map(|(_, kind, api_version)| (*kind, *api_version))
}

/// A FNV-1a hash, for revisions.
fn hash(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{:08x}", hash as u32)
}

impl State {
    fn now() -> String {
        "2026-12-03T12:00:00Z".into()
    }

    /// Stores `object` at a new version and tells the watches.
    fn store(
        &mut self,
        plural: &str,
        namespace: &str,
        mut object: Value,
        changes: &broadcast::Sender<Change>,
    ) -> Value {
        let (kind, api_version) = kind_of(plural).unwrap();
        self.version += 1;
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let key = (plural.to_string(), namespace.to_string(), name);
        let existed = self.objects.contains_key(&key);
        if !existed {
            self.uid += 1;
            object["metadata"]["uid"] = json!(format!("uid-{}", self.uid));
            object["metadata"]["creationTimestamp"] = json!(Self::now());
            if object["metadata"]["generation"].is_null() {
                object["metadata"]["generation"] = json!(1);
            }
        }
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind);
        self.objects.insert(key, object.clone());
        let change = Change {
            version: self.version,
            plural: plural.into(),
            namespace: namespace.into(),
            kind: if existed { "MODIFIED" } else { "ADDED" },
            object: object.clone(),
        };
        self.history.push(change.clone());
        let _ = changes.send(change);
        object
    }

    fn remove(
        &mut self,
        plural: &str,
        namespace: &str,
        name: &str,
        changes: &broadcast::Sender<Change>,
    ) -> Option<Value> {
        let key = (plural.to_string(), namespace.to_string(), name.to_string());
        let mut object = self.objects.remove(&key)?;
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let change = Change {
            version: self.version,
            plural: plural.into(),
            namespace: namespace.into(),
            kind: "DELETED",
            object: object.clone(),
        };
        self.history.push(change.clone());
        let _ = changes.send(change);
        Some(object)
    }

    fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(plural.to_string(), namespace.to_string(), name.to_string()))
    }

    fn ready_pods(&self, namespace: &str) -> usize {
        self.objects
            .iter()
            .filter(|((plural, ns, _), pod)| plural == "pods" && ns == namespace && pod_ready(pod))
            .count()
    }

    /// The StatefulSet controller's pass over every StatefulSet.
    fn reconcile_stateful_sets(&mut self, changes: &broadcast::Sender<Change>) {
        let sets: Vec<(String, Value)> = self
            .objects
            .iter()
            .filter(|((plural, _, _), _)| plural == "statefulsets")
            .map(|((_, ns, _), set)| (ns.clone(), set.clone()))
            .collect();
        for (namespace, mut set) in sets {
            let name = set["metadata"]["name"].as_str().unwrap().to_string();
            let replicas = set["spec"]["replicas"].as_i64().unwrap_or(1);
            let template = set["spec"]["template"].clone();
            let revision = format!("{name}-{}", hash(&template.to_string()));
            for ordinal in 0..replicas {
                let pod_name = format!("{name}-{ordinal}");
                if self.get("pods", &namespace, &pod_name).is_none() {
                    let mut pod = json!({
                        "metadata": template["metadata"].clone(),
                        "spec": template["spec"].clone(),
                        "status": {"phase": "Pending",
                                   "conditions": [{"type": "Ready", "status": "False"}]},
                    });
                    pod["metadata"]["name"] = json!(pod_name);
                    pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"] =
                        json!(ordinal.to_string());
                    pod["metadata"]["labels"]["controller-revision-hash"] = json!(revision);
                    pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] =
                        json!(pod_name);
                    self.log.push(format!(
                        "CREATE pods/{namespace}/{pod_name} revision={revision}"
                    ));
                    self.store("pods", &namespace, pod, changes);
                }
                for claim_template in set["spec"]["volumeClaimTemplates"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    let claim_name = format!(
                        "{}-{pod_name}",
                        claim_template["metadata"]["name"].as_str().unwrap()
                    );
                    if self
                        .get("persistentvolumeclaims", &namespace, &claim_name)
                        .is_none()
                    {
                        let claim = json!({
                            "metadata": {"name": claim_name},
                            "spec": claim_template["spec"].clone(),
                        });
                        self.store("persistentvolumeclaims", &namespace, claim, changes);
                    }
                }
            }
            let extra: Vec<String> = self
                .objects
                .iter()
                .filter(|((plural, ns, pod), _)| {
                    plural == "pods"
                        && *ns == namespace
                        && pod
                            .strip_prefix(&format!("{name}-"))
                            .and_then(|o| o.parse::<i64>().ok())
                            .is_some_and(|o| o >= replicas)
                })
                .map(|((_, _, pod), _)| pod.clone())
                .collect();
            for pod in extra {
                self.log.push(format!("SCALE-DOWN pods/{namespace}/{pod}"));
                self.remove("pods", &namespace, &pod, changes);
            }
            let ready = self
                .objects
                .iter()
                .filter(|((plural, ns, pod_name), pod)| {
                    plural == "pods"
                        && *ns == namespace
                        && pod_name.starts_with(&format!("{name}-"))
                        && pod_ready(pod)
                })
                .count();
            let status = json!({
                "replicas": replicas, "readyReplicas": ready, "updateRevision": revision,
                "currentRevision": revision,
                "observedGeneration": set["metadata"]["generation"].clone(),
            });
            if set["status"] != status {
                set["status"] = status;
                self.store("statefulsets", &namespace, set, changes);
            }
        }
    }
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

impl FakeApi {
    /// A fake with nothing stored, its kubelet started.
    pub fn start() -> FakeApi {
        let (changes, _) = broadcast::channel(4096);
        let fake = FakeApi {
            state: Arc::new(Mutex::new(State::default())),
            changes,
        };
        let kubelet = fake.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(30)).await;
                kubelet.kubelet_pass();
            }
        });
        fake
    }

    /// A `kube::Client` talking to this fake, for the operator: its calls are recorded.
    pub fn client(&self) -> kube::Client {
        self.client_as(true)
    }

    /// A `kube::Client` for the test itself (a person with kubectl): calls not recorded.
    pub fn user_client(&self) -> kube::Client {
        self.client_as(false)
    }

    fn client_as(&self, recorded: bool) -> kube::Client {
        let fake = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.handle(request, recorded).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Marks every pod made and not held ready (its broker answers its readiness probe).
    fn kubelet_pass(&self) {
        let mut state = self.state.lock().unwrap();
        let waiting: Vec<(String, Value)> = state
            .objects
            .iter()
            .filter(|((plural, _, name), pod)| {
                plural == "pods" && !pod_ready(pod) && !state.held.contains(name)
            })
            .map(|((_, ns, _), pod)| (ns.clone(), pod.clone()))
            .collect();
        for (namespace, mut pod) in waiting {
            pod["status"] = json!({"phase": "Running",
                                    "conditions": [{"type": "Ready", "status": "True"}]});
            state.store("pods", &namespace, pod, &self.changes);
        }
        state.reconcile_stateful_sets(&self.changes);
    }

    /// Keeps pod `name` from becoming ready (`true`), or lets it (`false`); a held pod that
    /// is ready becomes unready, as when its broker stops answering `/ready`.
    pub fn hold_ready(&self, name: &str, held: bool) {
        let mut state = self.state.lock().unwrap();
        if held {
            state.held.insert(name.into());
            let found: Vec<(String, Value)> = state
                .objects
                .iter()
                .filter(|((plural, _, pod), _)| plural == "pods" && pod == name)
                .map(|((_, ns, _), pod)| (ns.clone(), pod.clone()))
                .collect();
            for (namespace, mut pod) in found {
                pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
                state.store("pods", &namespace, pod, &self.changes);
            }
        } else {
            state.held.remove(name);
        }
    }

    /// Deletes an object as a person with kubectl would.
    pub fn delete(&self, plural: &str, namespace: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        state
            .log
            .push(format!("EXTERNAL-DELETE {plural}/{namespace}/{name}"));
        state.remove(plural, namespace, name, &self.changes);
        state.reconcile_stateful_sets(&self.changes);
    }

    pub fn object(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .get(plural, namespace, name)
            .cloned()
    }

    /// Every object of `plural` in `namespace`.
    pub fn objects(&self, plural: &str, namespace: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .iter()
            .filter(|((p, ns, _), _)| p == plural && ns == namespace)
            .map(|(_, object)| object.clone())
            .collect()
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// The calls made so far: (API group, resource, verb).
    pub fn calls(&self) -> BTreeSet<(String, String, String)> {
        self.state.lock().unwrap().calls.clone()
    }

    async fn handle(&self, request: Request<kube::client::Body>, recorded: bool) -> Response<Body> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let content_type = request
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let query: BTreeMap<String, String> =
            form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let rest = match segments.as_slice() {
            ["api", "v1", rest @ ..] => rest,
            ["apis", _, _, rest @ ..] => rest,
            _ => return failure(StatusCode::NOT_FOUND, "NotFound", format!("no route {uri}")),
        };
        let (namespace, plural, name, subresource) = match rest {
            ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
            ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
            [plural] => (None, *plural, None, None),
            _ => return failure(StatusCode::NOT_FOUND, "NotFound", format!("no route {uri}")),
        };
        if kind_of(plural).is_none() {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource {plural}"),
            );
        }
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        if recorded {
            let group = if segments[0] == "api" {
                ""
            } else {
                segments[1]
            };
            let resource = match subresource {
                Some(sub) => format!("{plural}/{sub}"),
                None => plural.to_string(),
            };
            let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
            let mut verbs = vec![match (&method, name) {
                (&Method::GET, None) if watching => "watch",
                (&Method::GET, None) => "list",
                (&Method::GET, Some(_)) => "get",
                (&Method::POST, _) => "create",
                (&Method::PUT, _) => "update",
                (&Method::PATCH, _) => "patch",
                (&Method::DELETE, _) => "delete",
                _ => "other",
            }];
            let mut state = self.state.lock().unwrap();
            let absent = name.is_none_or(|name| {
                state
                    .get(plural, namespace.unwrap_or("default"), name)
                    .is_none()
            });
            // Applying an object that does not exist creates it: that needs `create` too.
            if method == Method::PATCH
                && absent
                && content_type.starts_with("application/apply-patch")
            {
                verbs.push("create");
            }
            for verb in verbs {
                state
                    .calls
                    .insert((group.to_string(), resource.clone(), verb.to_string()));
            }
        }
        match (method, name) {
            (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                let from: u64 = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let timeout: u64 = query
                    .get("timeoutSeconds")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(290);
                self.watch(
                    plural,
                    namespace,
                    &selector,
                    from,
                    Duration::from_secs(timeout.min(5)),
                )
            }
            (Method::GET, None) => {
                let state = self.state.lock().unwrap();
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|((p, ns, _), object)| {
                        p == plural
                            && namespace.is_none_or(|n| n == ns)
                            && labels_match(object, &selector)
                    })
                    .map(|(_, object)| object.clone())
                    .collect();
                let (kind, api_version) = kind_of(plural).unwrap();
                respond(
                    StatusCode::OK,
                    &json!({
                        "apiVersion": api_version, "kind": format!("{kind}List"),
                        "metadata": {"resourceVersion": state.version.to_string()},
                        "items": items,
                    }),
                )
            }
            (Method::GET, Some(name)) => {
                let state = self.state.lock().unwrap();
                match state.get(plural, namespace.unwrap_or_default(), name) {
                    Some(object) => respond(StatusCode::OK, object),
                    None => failure(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{plural} \"{name}\" not found"),
                    ),
                }
            }
            (Method::POST, None) => {
                let object: Value = serde_json::from_slice(&body).unwrap();
                let namespace = namespace.unwrap_or("default");
                let mut state = self.state.lock().unwrap();
                let name = object["metadata"]["name"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        format!(
                            "{}{}",
                            object["metadata"]["generateName"].as_str().unwrap_or("x-"),
                            state.version
                        )
                    });
                if state.get(plural, namespace, &name).is_some() {
                    return failure(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{plural} \"{name}\" already exists"),
                    );
                }
                let mut object = object;
                object["metadata"]["name"] = json!(name);
                let stored = state.store(plural, namespace, object, &self.changes);
                state.reconcile_stateful_sets(&self.changes);
                respond(StatusCode::CREATED, &stored)
            }
            (Method::PATCH, Some(name)) => {
                let patch: Value = serde_json::from_slice(&body).unwrap();
                let namespace = namespace.unwrap_or("default");
                let mut state = self.state.lock().unwrap();
                let existing = state.get(plural, namespace, name).cloned();
                let updated = if content_type.starts_with("application/apply-patch") {
                    let mut applied = patch;
                    if let Some(existing) = &existing {
                        for field in ["uid", "creationTimestamp", "generation"] {
                            applied["metadata"][field] = existing["metadata"][field].clone();
                        }
                        if applied.get("status").is_none()
                            && let Some(status) = existing.get("status")
                        {
                            applied["status"] = status.clone();
                        }
                        if applied["spec"] != existing["spec"] {
                            let generation =
                                existing["metadata"]["generation"].as_i64().unwrap_or(1);
                            applied["metadata"]["generation"] = json!(generation + 1);
                        }
                    }
                    applied
                } else {
                    let Some(mut existing) = existing else {
                        return failure(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            format!("{plural} \"{name}\" not found"),
                        );
                    };
                    let before = existing["spec"].clone();
                    if subresource == Some("status") {
                        merge(&mut existing["status"], &patch["status"]);
                    } else {
                        merge(&mut existing, &patch);
                        if existing["spec"] != before {
                            let generation =
                                existing["metadata"]["generation"].as_i64().unwrap_or(1);
                            existing["metadata"]["generation"] = json!(generation + 1);
                        }
                    }
                    existing
                };
                if plural == "statefulsets" {
                    let replicas = &updated["spec"]["replicas"];
                    state.log.push(format!(
                        "APPLY statefulsets/{namespace}/{name} replicas={replicas}"
                    ));
                }
                let stored = state.store(plural, namespace, updated, &self.changes);
                state.reconcile_stateful_sets(&self.changes);
                let stored = state
                    .get(plural, namespace, name)
                    .cloned()
                    .unwrap_or(stored);
                respond(StatusCode::OK, &stored)
            }
            (Method::PUT, Some(name)) => {
                let object: Value = serde_json::from_slice(&body).unwrap();
                let namespace = namespace.unwrap_or("default");
                let mut state = self.state.lock().unwrap();
                let Some(existing) = state.get(plural, namespace, name).cloned() else {
                    return failure(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{plural} \"{name}\" not found"),
                    );
                };
                let given = object["metadata"]["resourceVersion"].as_str();
                if given.is_some() && given != existing["metadata"]["resourceVersion"].as_str() {
                    return failure(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("{plural} \"{name}\": the object has been modified"),
                    );
                }
                let mut object = object;
                for field in ["uid", "creationTimestamp", "generation"] {
                    object["metadata"][field] = existing["metadata"][field].clone();
                }
                if object["spec"] != existing["spec"] {
                    let generation = existing["metadata"]["generation"].as_i64().unwrap_or(1);
                    object["metadata"]["generation"] = json!(generation + 1);
                }
                let stored = state.store(plural, namespace, object, &self.changes);
                state.reconcile_stateful_sets(&self.changes);
                respond(StatusCode::OK, &stored)
            }
            (Method::DELETE, Some(name)) => {
                let namespace = namespace.unwrap_or("default");
                let mut state = self.state.lock().unwrap();
                let ready = state.ready_pods(namespace);
                match state.remove(plural, namespace, name, &self.changes) {
                    Some(object) => {
                        state
                            .log
                            .push(format!("DELETE {plural}/{namespace}/{name} ready={ready}"));
                        state.reconcile_stateful_sets(&self.changes);
                        respond(StatusCode::OK, &object)
                    }
                    None => failure(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{plural} \"{name}\" not found"),
                    ),
                }
            }
            (method, _) => failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} {uri}"),
            ),
        }
    }

    /// A watch: the changes after `from`, then live ones, one JSON line each, until
    /// `timeout` (the client watches again from the last version it saw).
    fn watch(
        &self,
        plural: &str,
        namespace: Option<&str>,
        selector: &str,
        from: u64,
        timeout: Duration,
    ) -> Response<Body> {
        let wanted = {
            let (plural, namespace, selector) = (
                plural.to_string(),
                namespace.map(str::to_string),
                selector.to_string(),
            );
            move |change: &Change| {
                change.plural == plural
                    && namespace.as_ref().is_none_or(|n| *n == change.namespace)
                    && labels_match(&change.object, &selector)
            }
        };
        let (past, live) = {
            let mut state = self.state.lock().unwrap();
            state.log.push(format!("WATCH {plural} from={from}"));
            let past: Vec<Change> = state
                .history
                .iter()
                .filter(|c| c.version > from)
                .cloned()
                .collect();
            (past, self.changes.subscribe())
        };
        let last = past.last().map_or(from, |change| change.version);
        let live = tokio_stream_of(live, last);
        let events = futures::stream::iter(past)
            .chain(live)
            .filter(move |change| futures::future::ready(wanted(change)))
            .map(|change| {
                let mut line =
                    serde_json::to_vec(&json!({"type": change.kind, "object": change.object}))
                        .unwrap();
                line.push(b'\n');
                Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
            });
        let events = futures::stream::StreamExt::take_until(events, tokio::time::sleep(timeout));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(events)))
            .unwrap()
    }
}

/// The live changes after version `after`, from a broadcast receiver.
fn tokio_stream_of(
    receiver: broadcast::Receiver<Change>,
    after: u64,
) -> impl futures::Stream<Item = Change> + Send {
    futures::stream::unfold(receiver, move |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(change) if change.version > after => return Some((change, receiver)),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
