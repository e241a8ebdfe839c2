//! Admin requests: topics (create, delete, add partitions), their configs (describe, alter,
//! incremental alter), DeleteRecords, DescribeCluster and OffsetForLeaderEpoch.

use std::collections::BTreeMap;
use std::rc::Rc;

use coremq_engine::{Offset, TopicPartition};

use super::configs::{self, Described};
use super::groups::{self, OFFSETS_TOPIC};
use super::{BrokerConfig, Context, errors, topics};
use crate::protocol::codec::Uuid;
use crate::protocol::error_code;
use crate::protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use crate::protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use crate::protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use crate::protocol::messages::delete_topics_response::DeletableTopicResult;
use crate::protocol::messages::describe_cluster_response::DescribeClusterBroker;
use crate::protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use crate::protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use crate::protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use crate::protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterRequest, DescribeClusterResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

/// Kafka's `ConfigResource.Type` values.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Most partitions one topic may have: each is a log with its own files.
const PARTITIONS_MAX: i32 = 10_000;

/// A failed item: its error code and message.
type Failure = (i16, String);

fn fail<T>(code: i16, message: impl Into<String>) -> Result<T, Failure> {
    Err((code, message.into()))
}

/// An item's error code and message for its response: NONE and no message on success.
fn answer(outcome: Result<(), Failure>) -> (i16, Option<String>) {
    outcome
        .err()
        .map_or((error_code::NONE, None), |(code, message)| {
            (code, Some(message))
        })
}

fn check_partitions(count: i32) -> Result<u32, Failure> {
    if !(1..=PARTITIONS_MAX).contains(&count) {
        return fail(
            error_code::INVALID_PARTITIONS,
            format!("partition count {count} is outside 1..={PARTITIONS_MAX}"),
        );
    }
    Ok(count as u32)
}

/// Refuses `adding` partitions when the broker would hold more than its limit.
pub fn check_capacity(context: &Context, adding: u32) -> Result<(), Failure> {
    let held: u64 = context
        .topics()
        .iter()
        .map(|topic| u64::from(topic.partitions))
        .sum();
    let max =
        u64::from(context.config.partitions_per_shard_max) * context.handle.shard_count() as u64;
    if held + u64::from(adding) > max {
        return fail(
            error_code::INVALID_PARTITIONS,
            format!(
                "the broker holds {held} partitions; {adding} more would pass its limit of {max} \
                 (partitions_per_shard_max x shards)"
            ),
        );
    }
    Ok(())
}

/// Replica lists asked for explicitly, checked against the cluster as the controller
/// will check them (so `validate_only` answers the same).
fn check_assignment(context: &Context, lists: &[Vec<i32>]) -> Result<(), Failure> {
    context
        .cluster
        .image()
        .check_assignments(lists)
        .map_err(|reason| (error_code::INVALID_REPLICA_ASSIGNMENT, reason))
}

fn broker_failure(error: coremq_replication::Error) -> Failure {
    (errors::cluster_code(&error), error.to_string())
}

fn described_configs(
    config: &BrokerConfig,
    name: &str,
    overrides: &BTreeMap<String, String>,
) -> Vec<CreatableTopicConfigs> {
    configs::describe(config, name, overrides)
        .into_iter()
        .map(|described| CreatableTopicConfigs {
            name: described.name.to_string(),
            value: Some(described.value),
            read_only: false,
            config_source: described.source,
            is_sensitive: false,
        })
        .collect()
}

pub async fn create_topics(
    context: &Rc<Context>,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.clone();
        let mut result = CreatableTopicResult {
            name: name.clone(),
            num_partitions: -1,
            replication_factor: -1,
            ..CreatableTopicResult::default()
        };
        match create_topic(context, topic, request.validate_only).await {
            Ok((id, partitions, replication_factor, overrides)) => {
                result.topic_id = id;
                result.num_partitions = partitions as i32;
                result.replication_factor = replication_factor as i16;
                if version >= 5 {
                    result.configs = Some(described_configs(&context.config, &name, &overrides));
                }
            }
            Err((code, message)) => {
                result.error_code = code;
                result.error_message = Some(message);
            }
        }
        results.push(result);
    }
    CreateTopicsResponse {
        topics: results,
        ..CreateTopicsResponse::default()
    }
}

/// A created topic's id, partitions, replication factor and config overrides.
type Created = (Uuid, u32, u16, BTreeMap<String, String>);

async fn create_topic(
    context: &Rc<Context>,
    topic: crate::protocol::messages::create_topics_request::CreatableTopic,
    validate_only: bool,
) -> Result<Created, Failure> {
    topics::validate_name(&topic.name)
        .map_err(|reason| (error_code::INVALID_TOPIC_EXCEPTION, reason))?;
    if context.topics().get(&topic.name).is_some() {
        return fail(
            error_code::TOPIC_ALREADY_EXISTS,
            format!("topic {:?} already exists", topic.name),
        );
    }
    let live = context
        .cluster
        .image()
        .brokers
        .values()
        .filter(|broker| !broker.fenced)
        .count()
        .max(1);
    let replication_factor = match topic.replication_factor {
        -1 => 1,
        factor if factor >= 1 && factor as usize <= live => factor as u16,
        factor => {
            return fail(
                error_code::INVALID_REPLICATION_FACTOR,
                format!("replication factor {factor}: {live} brokers are available"),
            );
        }
    };
    let mut assignments: Vec<(i32, Vec<i32>)> = topic
        .assignments
        .iter()
        .map(|a| (a.partition_index, a.broker_ids.clone()))
        .collect();
    assignments.sort_unstable();
    let assignments: Vec<Vec<i32>> = assignments.into_iter().map(|(_, lists)| lists).collect();
    let partitions = if topic.assignments.is_empty() {
        match topic.num_partitions {
            -1 => context.config.default_partitions,
            count => check_partitions(count)?,
        }
    } else {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return fail(
                error_code::INVALID_REQUEST,
                "with replica assignments, the partition count and replication factor must be -1",
            );
        }
        let mut indexes: Vec<i32> = topic
            .assignments
            .iter()
            .map(|a| a.partition_index)
            .collect();
        indexes.sort_unstable();
        if indexes
            .iter()
            .enumerate()
            .any(|(i, &index)| index != i as i32)
        {
            return fail(
                error_code::INVALID_REPLICA_ASSIGNMENT,
                "assignments must cover partitions 0..n once each",
            );
        }
        check_assignment(context, &assignments)?;
        check_partitions(topic.assignments.len() as i32)?
    };
    let replication_factor = assignments
        .first()
        .map_or(replication_factor, |replicas| replicas.len() as u16);
    let mut overrides = BTreeMap::new();
    for config in topic.configs {
        let Some(value) = config.value else {
            return fail(
                error_code::INVALID_CONFIG,
                format!("config {:?} has a null value", config.name),
            );
        };
        overrides.insert(config.name, value);
    }
    configs::log_config(&context.config, &topic.name, &overrides)
        .map_err(|message| (error_code::INVALID_CONFIG, message))?;
    check_capacity(context, partitions)?;
    if validate_only {
        return Ok((Uuid::ZERO, partitions, replication_factor, overrides));
    }
    match context
        .cluster
        .create_topic(
            topic.name.clone(),
            partitions,
            replication_factor,
            overrides.clone(),
            assignments,
        )
        .await
    {
        Ok(Some(created)) => Ok((created.id.into(), partitions, replication_factor, overrides)),
        Ok(None) => fail(
            error_code::TOPIC_ALREADY_EXISTS,
            format!("topic {:?} already exists", topic.name),
        ),
        Err(error) => Err(broker_failure(error)),
    }
}

pub async fn delete_topics(
    context: &Rc<Context>,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let wanted: Vec<(Option<String>, Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|topic| (topic.name, topic.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|name| (Some(name), Uuid::ZERO))
            .collect()
    };
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let table = context.topics();
        let found = match &name {
            Some(name) => table.get(name).cloned(),
            None => table.by_id(&id.into()).cloned(),
        };
        let outcome = match found {
            None if name.is_none() => fail(error_code::UNKNOWN_TOPIC_ID, "no topic has this id"),
            None => fail(error_code::UNKNOWN_TOPIC_OR_PARTITION, "no such topic"),
            Some(topic) if topic.name == OFFSETS_TOPIC => fail(
                error_code::INVALID_TOPIC_EXCEPTION,
                "the internal topic __consumer_offsets cannot be deleted",
            ),
            Some(topic) => match context.cluster.delete_topic(topic.name.clone()).await {
                Ok(true) => {
                    groups::forget_topic(context, &topic.name).await;
                    Ok(topic)
                }
                Ok(false) => fail(error_code::UNKNOWN_TOPIC_OR_PARTITION, "no such topic"),
                Err(error) => Err(broker_failure(error)),
            },
        };
        responses.push(match outcome {
            Ok(topic) => DeletableTopicResult {
                name: Some(topic.name.clone()),
                topic_id: topic.id.into(),
                ..DeletableTopicResult::default()
            },
            Err((code, message)) => DeletableTopicResult {
                name,
                topic_id: id,
                error_code: code,
                error_message: Some(message),
            },
        });
    }
    DeleteTopicsResponse {
        responses,
        ..DeleteTopicsResponse::default()
    }
}

pub async fn create_partitions(
    context: &Rc<Context>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let outcome = add_partitions(context, &topic, request.validate_only).await;
        let (code, message) = answer(outcome);
        results.push(CreatePartitionsTopicResult {
            name: topic.name,
            error_code: code,
            error_message: message,
        });
    }
    CreatePartitionsResponse {
        results,
        ..CreatePartitionsResponse::default()
    }
}

async fn add_partitions(
    context: &Rc<Context>,
    topic: &crate::protocol::messages::create_partitions_request::CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), Failure> {
    let Some(existing) = context.topics().get(&topic.name).cloned() else {
        return fail(error_code::UNKNOWN_TOPIC_OR_PARTITION, "no such topic");
    };
    if existing.name == OFFSETS_TOPIC {
        return fail(
            error_code::INVALID_TOPIC_EXCEPTION,
            "the partitions of __consumer_offsets are fixed",
        );
    }
    let count = check_partitions(topic.count)?;
    if count <= existing.partitions {
        return fail(
            error_code::INVALID_PARTITIONS,
            format!(
                "topic {} has {} partitions; the new count {count} must be larger",
                topic.name, existing.partitions
            ),
        );
    }
    let assignments: Vec<Vec<i32>> = topic
        .assignments
        .iter()
        .flatten()
        .map(|a| a.broker_ids.clone())
        .collect();
    if topic.assignments.is_some() {
        if assignments.len() as u32 != count - existing.partitions {
            return fail(
                error_code::INVALID_REPLICA_ASSIGNMENT,
                "one assignment per new partition is required",
            );
        }
        check_assignment(context, &assignments)?;
    }
    check_capacity(context, count - existing.partitions)?;
    if validate_only {
        return Ok(());
    }
    context
        .cluster
        .add_partitions(topic.name.clone(), count, assignments)
        .await
        .map_err(broker_failure)
}

/// The broker's own settings under Kafka's names, with Kafka's config types: name, value,
/// type.
fn broker_settings(config: &BrokerConfig) -> Vec<(&'static str, String, i8)> {
    let (host, port) = config.advertised();
    let logs_dir = config.logs_dir();
    let log_dirs = std::path::absolute(&logs_dir).unwrap_or(logs_dir);
    vec![
        ("broker.id", config.node_id.to_string(), configs::TYPE_INT),
        ("node.id", config.node_id.to_string(), configs::TYPE_INT),
        (
            "listeners",
            format!("PLAINTEXT://{}", config.kafka_listener),
            configs::TYPE_LIST,
        ),
        (
            "advertised.listeners",
            format!("PLAINTEXT://{host}:{port}"),
            configs::TYPE_LIST,
        ),
        (
            "listener.security.protocol.map",
            "PLAINTEXT:PLAINTEXT".into(),
            configs::TYPE_LIST,
        ),
        (
            "inter.broker.listener.name",
            "PLAINTEXT".into(),
            configs::TYPE_STRING,
        ),
        (
            "log.dirs",
            log_dirs.display().to_string(),
            configs::TYPE_STRING,
        ),
        (
            "num.partitions",
            config.default_partitions.to_string(),
            configs::TYPE_INT,
        ),
        ("default.replication.factor", "1".into(), configs::TYPE_INT),
        (
            "offsets.topic.replication.factor",
            "1".into(),
            configs::TYPE_SHORT,
        ),
        (
            "auto.create.topics.enable",
            config.auto_create_topics.to_string(),
            configs::TYPE_BOOLEAN,
        ),
        ("delete.topic.enable", "true".into(), configs::TYPE_BOOLEAN),
        ("log.cleaner.enable", "true".into(), configs::TYPE_BOOLEAN),
        (
            "socket.request.max.bytes",
            config.socket_request_max_bytes.to_string(),
            configs::TYPE_INT,
        ),
        (
            "offsets.topic.num.partitions",
            config.offsets_topic_partitions.to_string(),
            configs::TYPE_INT,
        ),
        (
            "group.initial.rebalance.delay.ms",
            config.group_initial_rebalance_delay_ms.to_string(),
            configs::TYPE_INT,
        ),
        (
            "broker.heartbeat.interval.ms",
            config.broker_heartbeat_interval_ms.to_string(),
            configs::TYPE_INT,
        ),
        (
            "broker.session.timeout.ms",
            config.broker_session_timeout_ms.to_string(),
            configs::TYPE_INT,
        ),
        (
            "replica.lag.time.max.ms",
            config.replica_lag_time_max_ms.to_string(),
            configs::TYPE_LONG,
        ),
        (
            "group.min.session.timeout.ms",
            config.group_min_session_timeout_ms.to_string(),
            configs::TYPE_INT,
        ),
        (
            "group.max.session.timeout.ms",
            config.group_max_session_timeout_ms.to_string(),
            configs::TYPE_INT,
        ),
        (
            "connections.max.idle.ms",
            config.connections_max_idle_ms.to_string(),
            configs::TYPE_LONG,
        ),
        (
            "max.connections",
            config.max_connections.to_string(),
            configs::TYPE_INT,
        ),
        (
            "max.connections.per.ip",
            config.max_connections_per_ip.to_string(),
            configs::TYPE_INT,
        ),
    ]
}

/// DescribeConfigs of the broker resource: its settings and its topic defaults, each with
/// Kafka's source (the default when no setting changed it, the static broker config
/// otherwise). All are read only: coremq's broker settings are static (file, flags,
/// environment), where Kafka lets some change at run time.
fn broker_configs(context: &Context) -> Vec<Described> {
    let unchanged = broker_settings(&BrokerConfig::default());
    let own = broker_settings(&context.config)
        .into_iter()
        .zip(unchanged)
        .map(|((name, value, config_type), (_, default, _))| Described {
            name,
            source: configs::broker_source(&value, &default),
            value,
            config_type,
            documentation: None,
        });
    own.chain(configs::broker_topic_defaults(&context.config))
        .collect()
}

pub async fn describe_configs(
    context: &Rc<Context>,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let found: Result<(Vec<Described>, bool), Failure> = match resource.resource_type {
            RESOURCE_TOPIC => match context.topics().get(&resource.resource_name) {
                Some(topic) => Ok((
                    configs::describe(&context.config, &topic.name, &topic.configs),
                    false,
                )),
                None => fail(error_code::UNKNOWN_TOPIC_OR_PARTITION, "no such topic"),
            },
            RESOURCE_BROKER
                if resource.resource_name.is_empty()
                    || resource.resource_name == context.config.node_id.to_string() =>
            {
                Ok((broker_configs(context), true))
            }
            RESOURCE_BROKER => fail(
                error_code::INVALID_REQUEST,
                format!("this is broker {}", context.config.node_id),
            ),
            other => fail(
                error_code::INVALID_REQUEST,
                format!("config resource type {other} is not supported"),
            ),
        };
        let mut result = DescribeConfigsResult {
            resource_type: resource.resource_type,
            resource_name: resource.resource_name,
            ..DescribeConfigsResult::default()
        };
        match found {
            Ok((described, read_only)) => {
                result.configs = described
                    .into_iter()
                    .filter(|described| {
                        resource
                            .configuration_keys
                            .as_ref()
                            .is_none_or(|keys| keys.iter().any(|key| key == described.name))
                    })
                    .map(|described| DescribeConfigsResourceResult {
                        name: described.name.to_string(),
                        value: Some(described.value),
                        read_only,
                        is_default: described.source == configs::SOURCE_DEFAULT,
                        config_source: if version == 0 { -1 } else { described.source },
                        is_sensitive: false,
                        synonyms: Vec::new(),
                        config_type: described.config_type,
                        documentation: described.documentation.map(str::to_string),
                    })
                    .collect();
            }
            Err((code, message)) => {
                result.error_code = code;
                result.error_message = Some(message);
            }
        }
        results.push(result);
    }
    DescribeConfigsResponse {
        results,
        ..DescribeConfigsResponse::default()
    }
}

/// One resource of an alter: which topic, or why it cannot be altered.
fn alterable_topic(
    context: &Context,
    resource_type: i8,
    name: &str,
) -> Result<BTreeMap<String, String>, Failure> {
    match resource_type {
        RESOURCE_TOPIC => context
            .topics()
            .get(name)
            .map(|topic| topic.configs.clone())
            .ok_or((
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
                "no such topic".to_string(),
            )),
        RESOURCE_BROKER => fail(
            error_code::INVALID_REQUEST,
            "broker configs are static: set them in the TOML file, flags or environment",
        ),
        other => fail(
            error_code::INVALID_REQUEST,
            format!("config resource type {other} is not supported"),
        ),
    }
}

/// Checks and (unless `validate_only`) applies `overrides` to topic `name`.
async fn apply_overrides(
    context: &Rc<Context>,
    name: &str,
    overrides: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), Failure> {
    configs::log_config(&context.config, name, &overrides)
        .map_err(|message| (error_code::INVALID_CONFIG, message))?;
    if validate_only {
        return Ok(());
    }
    context
        .cluster
        .set_topic_configs(name.to_string(), overrides)
        .await
        .map_err(broker_failure)
}

pub async fn alter_configs(
    context: &Rc<Context>,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    use crate::protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let outcome = async {
            alterable_topic(context, resource.resource_type, &resource.resource_name)?;
            // AlterConfigs replaces every override of the resource.
            let mut overrides = BTreeMap::new();
            for config in resource.configs {
                if let Some(value) = config.value {
                    overrides.insert(config.name, value);
                }
            }
            apply_overrides(
                context,
                &resource.resource_name,
                overrides,
                request.validate_only,
            )
            .await
        }
        .await;
        let (code, message) = answer(outcome);
        responses.push(AlterConfigsResourceResponse {
            error_code: code,
            error_message: message,
            resource_type: resource.resource_type,
            resource_name: resource.resource_name,
        });
    }
    AlterConfigsResponse {
        responses,
        ..AlterConfigsResponse::default()
    }
}

/// IncrementalAlterConfigs operations (Kafka's `AlterConfigOp.OpType`).
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

fn apply_operation(
    config: &BrokerConfig,
    overrides: &mut BTreeMap<String, String>,
    name: &str,
    key: &str,
    operation: i8,
    value: Option<String>,
) -> Result<(), Failure> {
    let list = configs::config_type(key) == 7;
    match operation {
        OP_SET => {
            let value = value.ok_or((
                error_code::INVALID_CONFIG,
                format!("SET {key} without a value"),
            ))?;
            overrides.insert(key.to_string(), value);
        }
        OP_DELETE => {
            overrides.remove(key);
        }
        OP_APPEND | OP_SUBTRACT if list => {
            let current = overrides
                .get(key)
                .cloned()
                .unwrap_or_else(|| configs::default_value(config, name, key));
            let mut items: Vec<String> = current
                .split(',')
                .filter(|item| !item.is_empty())
                .map(str::to_string)
                .collect();
            for item in value
                .unwrap_or_default()
                .split(',')
                .filter(|item| !item.is_empty())
            {
                if operation == OP_APPEND {
                    if !items.iter().any(|known| known == item) {
                        items.push(item.to_string());
                    }
                } else {
                    items.retain(|known| known != item);
                }
            }
            overrides.insert(key.to_string(), items.join(","));
        }
        OP_APPEND | OP_SUBTRACT => {
            return fail(
                error_code::INVALID_CONFIG,
                format!("{key} is not a list: APPEND and SUBTRACT do not apply"),
            );
        }
        other => {
            return fail(
                error_code::INVALID_REQUEST,
                format!("unknown config operation {other}"),
            );
        }
    }
    Ok(())
}

pub async fn incremental_alter_configs(
    context: &Rc<Context>,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.clone();
        let outcome = async {
            let mut overrides = alterable_topic(context, resource.resource_type, &name)?;
            for config in resource.configs {
                apply_operation(
                    &context.config,
                    &mut overrides,
                    &name,
                    &config.name,
                    config.config_operation,
                    config.value,
                )?;
            }
            apply_overrides(context, &name, overrides, request.validate_only).await
        }
        .await;
        let (code, message) = answer(outcome);
        responses.push(IncrementalResult {
            error_code: code,
            error_message: message,
            resource_type: resource.resource_type,
            resource_name: resource.resource_name,
        });
    }
    IncrementalAlterConfigsResponse {
        responses,
        ..IncrementalAlterConfigsResponse::default()
    }
}

pub async fn delete_records(
    context: &Rc<Context>,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let table = context.topics();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let known = table.get(&topic.name).cloned();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let internal = known.as_deref().filter(|known| known.name != OFFSETS_TOPIC);
            let outcome =
                match errors::led_partition_log(context, internal, partition.partition_index) {
                    Err(code) => Err(code),
                    Ok(log) => delete_below(context, &log, partition.offset).await,
                };
            partitions.push(DeleteRecordsPartitionResult {
                partition_index: partition.partition_index,
                low_watermark: *outcome.as_ref().unwrap_or(&-1),
                error_code: outcome.err().unwrap_or(error_code::NONE),
            });
        }
        topics.push(DeleteRecordsTopicResult {
            name: topic.name,
            partitions,
        });
    }
    DeleteRecordsResponse {
        topics,
        ..DeleteRecordsResponse::default()
    }
}

/// Moves `log`'s start to `offset` (-1: the high watermark); the new low watermark.
async fn delete_below(context: &Context, log: &TopicPartition, offset: i64) -> Result<i64, i16> {
    let offset = match offset {
        -1 => {
            context
                .cluster
                .offsets(log)
                .await
                .map_err(|error| errors::code(&error))?
                .high_watermark
        }
        offset if offset >= 0 => Offset(offset as u64),
        _ => return Err(error_code::OFFSET_OUT_OF_RANGE),
    };
    let start = context
        .cluster
        .delete_records(log, offset)
        .await
        .map_err(|error| errors::code(&error))?;
    Ok(start.0 as i64)
}

/// DescribeCluster `endpoint_type`: brokers (1) are served here; controllers (2) are not.
const ENDPOINT_BROKERS: i8 = 1;

pub fn describe_cluster(
    context: &Context,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let config = &context.config;
    if request.endpoint_type != ENDPOINT_BROKERS {
        return DescribeClusterResponse {
            error_code: error_code::MISMATCHED_ENDPOINT_TYPE,
            error_message: Some("this endpoint serves brokers, not controllers".into()),
            endpoint_type: ENDPOINT_BROKERS,
            ..DescribeClusterResponse::default()
        };
    }
    let image = context.cluster.image();
    DescribeClusterResponse {
        cluster_authorized_operations: if request.include_cluster_authorized_operations {
            super::metadata::CLUSTER_OPERATIONS
        } else {
            i32::MIN
        },
        endpoint_type: ENDPOINT_BROKERS,
        cluster_id: config.cluster_id.clone(),
        controller_id: context.cluster.controller().unwrap_or(-1),
        brokers: super::metadata::brokers(context, &image)
            .into_iter()
            .map(|broker| DescribeClusterBroker {
                broker_id: broker.id,
                host: broker.host,
                port: i32::from(broker.port),
                rack: broker.rack,
            })
            .collect(),
        ..DescribeClusterResponse::default()
    }
}

pub async fn offset_for_leader_epoch(
    context: &Rc<Context>,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let table = context.topics();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let known = table.get(&topic.topic).cloned();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let mut answer = EpochEndOffset {
                partition: partition.partition,
                leader_epoch: -1,
                end_offset: -1,
                ..EpochEndOffset::default()
            };
            let log =
                match errors::led_partition_log(context, known.as_deref(), partition.partition) {
                    Ok(log) => log,
                    Err(code) => {
                        answer.error_code = code;
                        partitions.push(answer);
                        continue;
                    }
                };
            let requested = partition.leader_epoch;
            let found = context
                .cluster
                .on_partition(&log, move |log| async move {
                    Ok((log.leader_epoch(), log.end_offset_for_epoch(requested)))
                })
                .await;
            match found {
                Err(error) => answer.error_code = errors::code(&error),
                // The client's view of the leader epoch, when it gives one, must be ours.
                Ok((current, _))
                    if partition.current_leader_epoch >= 0
                        && partition.current_leader_epoch > current.unwrap_or(-1) =>
                {
                    answer.error_code = error_code::UNKNOWN_LEADER_EPOCH;
                }
                Ok((current, _))
                    if partition.current_leader_epoch >= 0
                        && partition.current_leader_epoch < current.unwrap_or(-1) =>
                {
                    answer.error_code = error_code::FENCED_LEADER_EPOCH;
                }
                Ok((_, Some((epoch, end_offset)))) => {
                    answer.leader_epoch = epoch;
                    answer.end_offset = end_offset.0 as i64;
                }
                // An epoch this log knows nothing at or above: Kafka's undefined epoch and
                // offset.
                Ok((_, None)) => {}
            }
            partitions.push(answer);
        }
        topics.push(OffsetForLeaderTopicResult {
            topic: topic.topic,
            partitions,
        });
    }
    OffsetForLeaderEpochResponse {
        topics,
        ..OffsetForLeaderEpochResponse::default()
    }
}
