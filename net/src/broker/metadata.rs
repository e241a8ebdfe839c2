//! Metadata: this node as the only broker, leader of every partition; topics auto-created
//! when the request allows it and the broker is configured to.

use std::rc::Rc;
use std::sync::Arc;

use super::Context;
use crate::protocol::codec::Uuid;
use crate::protocol::error_code;
use crate::protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use crate::protocol::messages::{MetadataRequest, MetadataResponse};
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
    let (host, port) = config.advertised();
    let mut response = MetadataResponse {
        brokers: vec![MetadataResponseBroker {
            node_id: config.node_id,
            host,
            port: i32::from(port),
            rack: None,
        }],
        cluster_id: Some(config.cluster_id.clone()),
        controller_id: config.node_id,
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
                .map(|topic| describe(context, topic))
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
            response.topics.push(describe(context, &topic));
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

fn describe(context: &Context, topic: &Arc<Topic>) -> MetadataResponseTopic {
    let node = context.config.node_id;
    MetadataResponseTopic {
        error_code: error_code::NONE,
        name: Some(topic.name.clone()),
        topic_id: topic.id.into(),
        is_internal: topic.name == super::groups::OFFSETS_TOPIC,
        partitions: (0..topic.partitions)
            .map(|partition| MetadataResponsePartition {
                error_code: error_code::NONE,
                partition_index: partition as i32,
                leader_id: node,
                leader_epoch: 0,
                replica_nodes: vec![node],
                isr_nodes: vec![node],
                offline_replicas: Vec::new(),
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
            Default::default(),
        )
        .await;
    match created {
        Ok(Some(topic)) => Ok(topic),
        Ok(None) => context
            .topics()
            .get(name)
            .cloned()
            .ok_or(error_code::UNKNOWN_TOPIC_OR_PARTITION),
        Err(error) => {
            log::warn!("auto-creating topic {name}: {error}");
            Err(super::errors::cluster_code(&error))
        }
    }
}
