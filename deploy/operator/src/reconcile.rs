//! The reconciler: brings the objects of one `CoremqCluster` to what its spec says, one safe
//! step per pass, and reports what it sees in the status.
//!
//! Each pass: refuse a dangerous spec (status, event, nothing touched); apply the rendered
//! objects (server-side apply); grow the volumes; when brokers are removed, drain them first
//! and shrink the StatefulSet only once they hold no replica; when brokers were added,
//! rebalance once they are all in session; roll pods whose template is outdated one at a
//! time, highest ordinal first and the controller's leader last, each only while every
//! broker is ready and no partition is under-replicated (the StatefulSet is `OnDelete`, so
//! deleting a pod is the only way it changes; SIGTERM makes the broker hand its leaderships
//! away first). A pass that waits asks to be run again soon.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use crate::brokers::{Brokers, Health};
use crate::checks::{self, Refusal, Running};
use crate::crd::{CoremqCluster, CoremqClusterStatus};
use crate::render::{self, Names, POD_INDEX_LABEL};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "coremq-operator";
/// On the StatefulSet: the brokers the replicas were last spread over.
pub const BALANCED_ANNOTATION: &str = "coremq.io/balanced-brokers";
/// The label the StatefulSet controller puts on each pod: the template revision it runs.
const REVISION_LABEL: &str = "controller-revision-hash";

/// What the reconciler works with.
pub struct Context {
    pub client: Client,
    pub brokers: Arc<dyn Brokers>,
    pub recorder: Recorder,
    /// A pass that waits for something (a pod to get ready, a drain) comes back this soon.
    pub waiting: Duration,
    /// A settled cluster is looked at again this often (its health, for the status).
    pub settled: Duration,
}

impl Context {
    pub fn new(client: Client, brokers: Arc<dyn Brokers>) -> Context {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            brokers,
            waiting: Duration::from_secs(5),
            settled: Duration::from_secs(30),
        }
    }
}

/// Why a pass failed (it is tried again).
#[derive(Debug)]
pub enum Error {
    Kube(kube::Error),
    Brokers(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Kube(error) => write!(f, "Kubernetes API: {error}"),
            Error::Brokers(reason) => write!(f, "brokers: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<kube::Error> for Error {
    fn from(error: kube::Error) -> Error {
        Error::Kube(error)
    }
}

/// Runs the operator until the process ends: every `CoremqCluster`, in every namespace.
pub async fn run(context: Context) {
    let client = context.client.clone();
    let clusters = Api::<CoremqCluster>::all(client.clone());
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=coremq-operator");
    let pods = watcher::Config::default().labels("app.kubernetes.io/name=coremq");
    let context = Arc::new(context);
    Controller::new(clusters, watcher::Config::default())
        .owns(Api::<StatefulSet>::all(client.clone()), managed.clone())
        .owns(Api::<Service>::all(client.clone()), managed.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), managed)
        .watches(Api::<Pod>::all(client), pods, |pod: Pod| {
            let cluster = pod.labels().get("app.kubernetes.io/instance").cloned()?;
            Some(ObjectRef::new(&cluster).within(&pod.namespace()?))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|outcome| async move {
            match outcome {
                Ok((cluster, _)) => log::debug!("reconciled {cluster}"),
                Err(error) => log::warn!("reconcile: {error}"),
            }
        })
        .await;
}

pub fn error_policy(cluster: Arc<CoremqCluster>, error: &Error, context: Arc<Context>) -> Action {
    log::warn!("{}: {error}", cluster.name_any());
    Action::requeue(context.waiting)
}

/// One pass over `cluster`.
pub async fn reconcile(
    cluster: Arc<CoremqCluster>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    let names = Names::of(&cluster);
    let client = &context.client;
    let sets = Api::<StatefulSet>::namespaced(client.clone(), &names.namespace);
    let existing = sets.get_opt(&names.stateful_set()).await?;
    let running = existing.as_ref().and_then(Running::of);
    let health = match &existing {
        Some(_) => context.brokers.health(&cluster).await.ok(),
        None => None,
    };
    let checked = match &running {
        None => checks::check_spec(&cluster.spec),
        Some(running) => {
            let replication = health.as_ref().and_then(|health| {
                let topic = health.replication_factor_max_topic.clone()?;
                Some((health.replication_factor_max as i32, topic))
            });
            checks::check_change(running, &cluster.spec, replication)
        }
    };
    if let Err(refusal) = checked {
        refuse(&cluster, &context, &refusal, health.as_ref()).await?;
        return Ok(Action::requeue(context.settled));
    }

    let children = render::render(&cluster);
    let namespace = &names.namespace;
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), namespace),
        &children.config_map,
    )
    .await?;
    apply(
        &Api::<Service>::namespaced(client.clone(), namespace),
        &children.headless,
    )
    .await?;
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    for service in &children.clients {
        apply(&services, service).await?;
    }
    remove_stale_services(&services, &cluster, &children.clients).await?;
    let budgets = Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace);
    apply(&budgets, &children.disruption_budget).await?;
    let monitoring = monitor(client, &cluster, children.service_monitor.as_ref()).await;

    let current = running.as_ref().map_or(cluster.spec.brokers, |r| r.brokers);
    let mut waiting: Option<String> = None;
    let mut phase = "Running";

    // Brokers to remove are drained first; the StatefulSet keeps them until they hold
    // nothing.
    let mut replicas = cluster.spec.brokers;
    if cluster.spec.brokers < current {
        let Some(health) = &health else {
            return Err(Error::Brokers("no broker answers: cannot drain".into()));
        };
        let holding: Vec<i32> = (cluster.spec.brokers..current)
            .filter(|&id| health.replicas_of(id) > 0)
            .collect();
        if !holding.is_empty() || health.reassigning_partitions > 0 {
            replicas = current;
            phase = "Scaling";
            for &id in &holding {
                context
                    .brokers
                    .drain(&cluster, id)
                    .await
                    .map_err(Error::Brokers)?;
            }
            waiting = Some(format!("draining brokers {holding:?} before removing them"));
        }
    }

    let mut stateful_set = children.stateful_set.clone();
    let balanced = existing
        .as_ref()
        .and_then(|set| set.annotations().get(BALANCED_ANNOTATION).cloned())
        .and_then(|value| value.parse::<i32>().ok())
        .unwrap_or(current.min(cluster.spec.brokers));
    stateful_set.spec.as_mut().expect("rendered").replicas = Some(replicas);
    if let Some(existing) = &existing {
        // Volume claim templates cannot change; grown volumes are patched one by one.
        let templates = existing
            .spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.clone());
        stateful_set
            .spec
            .as_mut()
            .expect("rendered")
            .volume_claim_templates = templates;
    }
    let mut balanced_now = balanced;
    let all_ready_and_live = |health: &Option<Health>, pods: &[Pod]| {
        health
            .as_ref()
            .is_some_and(|h| h.all_live(cluster.spec.brokers))
            && ready_count(pods, cluster.spec.brokers) == cluster.spec.brokers
    };
    let pods_api = Api::<Pod>::namespaced(client.clone(), namespace);
    let selector = selector_text(&names.cluster);
    let pods = pods_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    if cluster.spec.brokers > balanced && waiting.is_none() {
        phase = "Scaling";
        if all_ready_and_live(&health, &pods) {
            context
                .brokers
                .rebalance(&cluster)
                .await
                .map_err(Error::Brokers)?;
            balanced_now = cluster.spec.brokers;
        } else {
            waiting = Some(format!(
                "waiting for brokers {balanced}..{} to join before spreading replicas",
                cluster.spec.brokers
            ));
        }
    } else if cluster.spec.brokers < balanced && replicas == cluster.spec.brokers {
        balanced_now = cluster.spec.brokers;
    }
    stateful_set
        .annotations_mut()
        .insert(BALANCED_ANNOTATION.into(), balanced_now.to_string());
    let applied = apply(&sets, &stateful_set).await?;
    grow_volumes(client, &cluster, replicas).await?;

    // The rolling upgrade: one outdated pod at a time, while the cluster is whole.
    let update_revision = applied
        .status
        .as_ref()
        .and_then(|status| status.update_revision.clone());
    let outdated: Vec<&Pod> = pods
        .iter()
        .filter(|pod| {
            let revision = pod.labels().get(REVISION_LABEL);
            update_revision.is_some() && revision != update_revision.as_ref()
        })
        .collect();
    if !outdated.is_empty() && waiting.is_none() {
        phase = "Upgrading";
        let whole = ready_count(&pods, replicas) == replicas
            && health
                .as_ref()
                .is_some_and(|h| h.all_live(replicas) && h.settled());
        if whole {
            let leader = health.as_ref().and_then(|h| h.controller_id);
            let next = outdated
                .iter()
                .max_by_key(|pod| (Some(ordinal(pod)) != leader, ordinal(pod)))
                .expect("not empty");
            log::info!(
                "{}: restarting {} for the new template (rolling upgrade)",
                names.cluster,
                next.name_any()
            );
            pods_api
                .delete(&next.name_any(), &DeleteParams::default())
                .await?;
            waiting = Some(format!(
                "restarted {} with the new template",
                next.name_any()
            ));
        } else {
            waiting =
                Some("waiting for every broker ready and in sync before the next restart".into());
        }
    }

    let ready = ready_count(&pods, replicas);
    if phase == "Running" && ready < replicas {
        phase = if existing.is_none()
            || cluster
                .status
                .as_ref()
                .and_then(|s| s.image.clone())
                .is_none()
        {
            "Creating"
        } else {
            "Degraded"
        };
    }
    let previous = cluster.status.clone().unwrap_or_default();
    let image = if phase == "Running" {
        Some(cluster.spec.image.clone())
    } else {
        previous.image.clone()
    };
    let mut conditions = vec![condition(
        &previous,
        "Accepted",
        true,
        "Applied",
        "the spec is applied",
    )];
    let (ready_status, reason, message) = match (&waiting, phase) {
        (_, "Running") => (true, "Running", "every broker is ready".to_string()),
        (Some(waiting), _) => (false, phase, waiting.clone()),
        (None, _) => (false, phase, format!("{ready} of {replicas} brokers ready")),
    };
    conditions.push(condition(
        &previous,
        "Ready",
        ready_status,
        reason,
        &message,
    ));
    if let Some(problem) = monitoring {
        conditions.push(condition(
            &previous,
            "Monitoring",
            false,
            "ServiceMonitorUnavailable",
            &problem,
        ));
    }
    let status = CoremqClusterStatus {
        phase: Some(phase.into()),
        observed_generation: cluster.metadata.generation,
        brokers: cluster.spec.brokers,
        ready_brokers: ready,
        controller_leader: health.as_ref().and_then(|h| h.controller_id),
        under_replicated_partitions: health
            .as_ref()
            .map(|h| h.under_replicated_partitions as i64),
        offline_partitions: health.as_ref().map(|h| h.offline_partitions as i64),
        image,
        conditions,
    };
    patch_status(client, &cluster, &status).await?;
    Ok(Action::requeue(
        if waiting.is_some() || phase != "Running" {
            context.waiting
        } else {
            context.settled
        },
    ))
}

/// Says why the spec is not applied, in the status and (once per refusal) in an event.
async fn refuse(
    cluster: &CoremqCluster,
    context: &Context,
    refusal: &Refusal,
    health: Option<&Health>,
) -> Result<(), Error> {
    let previous = cluster.status.clone().unwrap_or_default();
    let message = refusal.to_string();
    let repeated = previous.conditions.iter().any(|condition| {
        condition.type_ == "Accepted" && condition.status == "False" && condition.message == message
    });
    log::warn!("{}: refused: {message}", cluster.name_any());
    if !repeated {
        let event = Event {
            type_: EventType::Warning,
            reason: refusal.reason().into(),
            note: Some(message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        context
            .recorder
            .publish(&event, &cluster.object_ref(&()))
            .await?;
    }
    let mut conditions: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|condition| condition.type_ != "Accepted")
        .cloned()
        .collect();
    conditions.push(condition(
        &previous,
        "Accepted",
        false,
        refusal.reason(),
        &message,
    ));
    let status = CoremqClusterStatus {
        phase: Some("Refused".into()),
        observed_generation: cluster.metadata.generation,
        controller_leader: health
            .and_then(|h| h.controller_id)
            .or(previous.controller_leader),
        under_replicated_partitions: health.map(|h| h.under_replicated_partitions as i64),
        offline_partitions: health.map(|h| h.offline_partitions as i64),
        conditions,
        ..previous
    };
    patch_status(&context.client, cluster, &status).await
}

fn condition(
    previous: &CoremqClusterStatus,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = previous
        .conditions
        .iter()
        .find(|condition| condition.type_ == kind && condition.status == status)
        .map(|condition| condition.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: None,
    }
}

async fn patch_status(
    client: &Client,
    cluster: &CoremqCluster,
    status: &CoremqClusterStatus,
) -> Result<(), Error> {
    let api = Api::<CoremqCluster>::namespaced(client.clone(), &Names::of(cluster).namespace);
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// Server-side apply of `object`, owned by the operator; what the API server stored.
async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + fmt::Debug,
{
    let name = object
        .meta()
        .name
        .clone()
        .expect("rendered objects have names");
    let params = PatchParams::apply(MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(object)).await?)
}

/// Deletes the client Services of listeners the spec no longer has.
async fn remove_stale_services(
    services: &Api<Service>,
    cluster: &CoremqCluster,
    wanted: &[Service],
) -> Result<(), Error> {
    let names = Names::of(cluster);
    let listed = services
        .list(&ListParams::default().labels(&selector_text(&names.cluster)))
        .await?;
    for service in listed.items {
        let name = service.name_any();
        let kept = name == names.headless()
            || wanted
                .iter()
                .any(|w| w.metadata.name.as_ref() == Some(&name));
        if !kept {
            services.delete(&name, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

/// Applies the ServiceMonitor, or deletes it when monitoring is off; why it could not, when
/// the Prometheus operator's resource is not installed.
async fn monitor(
    client: &Client,
    cluster: &CoremqCluster,
    monitor: Option<&serde_json::Value>,
) -> Option<String> {
    let kind = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
    let resource = ApiResource::from_gvk_with_plural(&kind, "servicemonitors");
    let names = Names::of(cluster);
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &names.namespace, &resource);
    let outcome = match monitor {
        Some(object) => {
            let params = PatchParams::apply(MANAGER).force();
            api.patch(&names.stateful_set(), &params, &Patch::Apply(object))
                .await
                .map(drop)
        }
        None => match api
            .delete(&names.stateful_set(), &DeleteParams::default())
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            other => other.map(drop),
        },
    };
    outcome.err().map(|error| {
        format!("the ServiceMonitor could not be applied (is the Prometheus operator installed?): {error}")
    })
}

/// Grows each broker's volume to the spec's size where it is smaller.
async fn grow_volumes(client: &Client, cluster: &CoremqCluster, brokers: i32) -> Result<(), Error> {
    let names = Names::of(cluster);
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &names.namespace);
    let wanted = checks::bytes(&cluster.spec.storage.size);
    for ordinal in 0..brokers {
        let Some(claim) = claims.get_opt(&names.claim(ordinal)).await? else {
            continue;
        };
        let requested = claim
            .spec
            .as_ref()
            .and_then(|spec| spec.resources.as_ref())
            .and_then(|resources| resources.requests.as_ref())
            .and_then(|requests| requests.get("storage"))
            .and_then(|quantity| checks::bytes(&quantity.0));
        if requested < wanted {
            let size = &cluster.spec.storage.size;
            log::info!(
                "{}: growing {} to {size}",
                names.cluster,
                names.claim(ordinal)
            );
            let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
            claims
                .patch(
                    &names.claim(ordinal),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
        }
    }
    Ok(())
}

fn selector_text(cluster: &str) -> String {
    render::selector(cluster)
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A pod's ordinal (its broker id).
fn ordinal(pod: &Pod) -> i32 {
    pod.labels()
        .get(POD_INDEX_LABEL)
        .and_then(|index| index.parse().ok())
        .or_else(|| pod.name_any().rsplit('-').next()?.parse().ok())
        .unwrap_or(-1)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        })
}

/// Ready pods among brokers `0..brokers`.
fn ready_count(pods: &[Pod], brokers: i32) -> i32 {
    let ready: BTreeMap<i32, bool> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .map(|pod| (ordinal(pod), is_ready(pod)))
        .collect();
    (0..brokers)
        .filter(|id| ready.get(id) == Some(&true))
        .count() as i32
}
