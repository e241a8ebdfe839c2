//! Metadata: the brokers, controller and partitions (leader, epoch, replicas, in-sync and
//! offline replicas) as this broker's copy of the cluster metadata has them; topics
//! auto-created when the request allows it and the broker is configured to.

use std::rc::Rc;
use std::sync::Arc;

use super::Context;
use crate::protocol::codec::Uuid;
use crate::protocol::error_code;
use crate::protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use crate::protocol::messages::{MetadataRequest, MetadataResponse};
use coremq_replication::metadata::MetadataImage;
use coremq_replication::topics::Topic;

/// What a client may do, as a bit per Kafka `AclOperation` code, for a broker without an
/// authorizer: every operation Kafka supports on the resource type (KIP-430;
/// `AclEntry.supportedOperations`). READ 3, WRITE 4, CREATE 5, DELETE 6, ALTER 7,
/// DESCRIBE 8, CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12.
pub const TOPIC_OPERATIONS: i32 = bits(&[3, 4, 5, 6, 7, 8, 10, 11]);
pub const CLUSTER_OPERATIONS: i32 = bits(&[5, 7, 8, 9, 10, 11, 12]);
pub const GROUP_OPERATIONS: i32 = bits(&[3, 6, 8]);

const fn bits(codes: &[u8]) -> i32 {
    let mut field = 0;
    let mut n = 0;
    while n < codes.len() {
        field |= 1 << codes[n];
        n += 1;
    }
    field
}

pub async fn handle(
    context: &Rc<Context>,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let topic_operations = request.include_topic_authorized_operations;
    let mut response = topics(context, request, version).await;
    if topic_operations {
        for topic in &mut response.topics {
            if topic.error_code == error_code::NONE {
                topic.topic_authorized_operations = TOPIC_OPERATIONS;
            }
        }
    }
    response
}

async fn topics(context: &Rc<Context>, request: MetadataRequest, version: i16) -> MetadataResponse {
    let config = &context.config;
    let image = context.cluster.image();
    let mut response = MetadataResponse {
        brokers: brokers(context, &image)
            .into_iter()
            .map(|broker| MetadataResponseBroker {
                node_id: broker.id,
                host: broker.host,
                port: i32::from(broker.port),
                rack: broker.rack,
            })
            .collect(),
        cluster_id: Some(config.cluster_id.clone()),
        controller_id: context.cluster.controller().unwrap_or(-1),
        cluster_authorized_operations: if request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS
        } else {
            i32::MIN
        },
        ..MetadataResponse::default()
    };
    // v0 asks for every topic with an empty list; later versions with a null one.
    let requested = match request.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => topics,
        _ => {
            response.topics = context
                .topics()
                .iter()
                .map(|topic| describe(&image, topic))
                .collect();
            return response;
        }
    };
    let may_create =
        config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    for wanted in requested {
        let table = context.topics();
        let found = match &wanted.name {
            Some(name) => table.get(name).cloned(),
            None => table.by_id(&wanted.topic_id.into()).cloned(),
        };
        let topic = match (found, wanted.name) {
            (Some(topic), _) => Some(topic),
            (None, Some(name)) if may_create => match auto_create(context, &name).await {
                Ok(topic) => Some(topic),
                Err(code) => {
                    response.topics.push(missing(Some(name), Uuid::ZERO, code));
                    continue;
                }
            },
            (None, name) => {
                let code = if name.is_some() {
                    error_code::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    error_code::UNKNOWN_TOPIC_ID
                };
                response.topics.push(missing(name, wanted.topic_id, code));
                continue;
            }
        };
        if let Some(topic) = topic {
            response
                .topics
                .push(describe(&context.cluster.image(), &topic));
        }
    }
    response
}

fn missing(name: Option<String>, id: Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic {
        error_code: code,
        name,
        topic_id: id,
        ..MetadataResponseTopic::default()
    }
}

/// A broker clients can reach.
pub struct Broker {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// The brokers that are registered and not fenced, at their Kafka listener; this broker
/// alone (as configured) before its registration is in.
pub fn brokers(context: &Context, image: &MetadataImage) -> Vec<Broker> {
    let live: Vec<Broker> = image
        .brokers
        .iter()
        .filter(|(_, info)| !info.fenced)
        .filter_map(|(&id, _)| broker(image, id))
        .collect();
    if !live.is_empty() {
        return live;
    }
    let (host, port) = context.config.advertised();
    vec![Broker {
        id: context.config.node_id,
        host,
        port,
        rack: None,
    }]
}

/// Broker `id` at its Kafka listener, if registered.
pub fn broker(image: &MetadataImage, id: i32) -> Option<Broker> {
    let info = image.brokers.get(&id)?;
    let endpoint = info
        .endpoints
        .iter()
        .find(|endpoint| endpoint.listener == super::LISTENER_NAME)?;
    Some(Broker {
        id,
        host: endpoint.host.clone(),
        port: endpoint.port,
        rack: info.rack.clone(),
    })
}

/// `topic` with each partition's leader, epoch and replicas from `image`; a partition with
/// no leader (or not in the image yet) answers LEADER_NOT_AVAILABLE, which clients retry.
fn describe(image: &MetadataImage, topic: &Arc<Topic>) -> MetadataResponseTopic {
    let id = topic.id.0;
    MetadataResponseTopic {
        error_code: error_code::NONE,
        name: Some(topic.name.clone()),
        topic_id: topic.id.into(),
        is_internal: topic.name == super::groups::OFFSETS_TOPIC,
        partitions: (0..topic.partitions)
            .map(|partition| {
                let mut described = MetadataResponsePartition {
                    error_code: error_code::LEADER_NOT_AVAILABLE,
                    partition_index: partition as i32,
                    leader_id: -1,
                    leader_epoch: -1,
                    ..MetadataResponsePartition::default()
                };
                let Some(state) = image.partition(&id, partition) else {
                    return described;
                };
                let assignment = &state.assignment;
                if assignment.leader >= 0 {
                    described.error_code = error_code::NONE;
                }
                described.leader_id = assignment.leader;
                described.leader_epoch = assignment.leader_epoch;
                described.replica_nodes = assignment.replicas.clone();
                described.isr_nodes = assignment.isr.iter().copied().collect();
                described.offline_replicas = assignment
                    .replicas
                    .iter()
                    .copied()
                    .filter(|&replica| !image.is_live(replica))
                    .collect();
                described
            })
            .collect(),
        ..MetadataResponseTopic::default()
    }
}

/// Creates topic `name` with the default partition count, unless it exists by now.
async fn auto_create(context: &Context, name: &str) -> Result<Arc<Topic>, i16> {
    if super::topics::validate_name(name).is_err() {
        return Err(error_code::INVALID_TOPIC_EXCEPTION);
    }
    if let Err((code, message)) =
        super::admin::check_capacity(context, context.config.default_partitions)
    {
        log::warn!("auto-creating topic {name}: {message}");
        return Err(code);
    }
    let created = context
        .cluster
        .create_topic(
            name.to_string(),
            context.config.default_partitions,
            1,
            Default::default(),
            Vec::new(),
        )
        .await;
    match created {
        Ok(Some(topic)) => Ok(topic),
        Ok(None) => context
            .topics()
            .get(name)
            .cloned()
            .ok_or(error_code::UNKNOWN_TOPIC_OR_PARTITION),
        // No controller right now (one is being elected): Kafka answers a topic it is
        // auto-creating with LEADER_NOT_AVAILABLE, which producers retry; NOT_CONTROLLER
        // fails their deliveries.
        Err(coremq_replication::Error::NotController) => Err(error_code::LEADER_NOT_AVAILABLE),
        Err(error) => {
            log::warn!("auto-creating topic {name}: {error}");
            Err(super::errors::cluster_code(&error))
        }
    }
}
