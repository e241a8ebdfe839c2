//! Every advertised version of every API, one by one, against the real binary over a
//! socket: each request is built with the generated codecs at that version, and the
//! response, decoded at that version, must say what the request did. Versions just outside
//! a served range are refused the way Kafka refuses them. Invalid topics and partitions get
//! Kafka's error codes.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/wire.rs"]
mod wire;

use std::ops::RangeInclusive;

use broker::Broker;
use bytes::Bytes;
use coremq_engine::batch::BatchHeader;
use coremq_engine::record::decode_records;
use coremq_engine::{BatchBuilder, Compression, Timestamp};
use coremq_net::protocol::api::{self, RequestBody, ResponseBody};
use coremq_net::protocol::codec::{Encoder, Message, Records, Uuid};
use coremq_net::protocol::error_code;
use coremq_net::protocol::frame::decode_response;
use coremq_net::protocol::messages::create_partitions_request::CreatePartitionsTopic;
use coremq_net::protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use coremq_net::protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use coremq_net::protocol::messages::delete_topics_request::DeleteTopicState;
use coremq_net::protocol::messages::describe_configs_request::DescribeConfigsResource;
use coremq_net::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use coremq_net::protocol::messages::join_group_request::JoinGroupRequestProtocol;
use coremq_net::protocol::messages::leave_group_request::MemberIdentity;
use coremq_net::protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use coremq_net::protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use coremq_net::protocol::messages::metadata_request::MetadataRequestTopic;
use coremq_net::protocol::messages::metadata_response::MetadataResponseTopic;
use coremq_net::protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use coremq_net::protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use coremq_net::protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use coremq_net::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use coremq_net::protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use coremq_net::protocol::messages::*;
use wire::Wire;

/// Sends `$body` as API `$variant` at `$version` and returns the typed response.
macro_rules! call {
    ($client:expr, $variant:ident, $version:expr, $body:expr) => {
        match $client.call($version, RequestBody::$variant($body)) {
            ResponseBody::$variant(response) => response,
            other => panic!("{} answered with {other:?}", stringify!($variant)),
        }
    };
}

fn served(key: i16) -> RangeInclusive<i16> {
    let range = api::api(key).unwrap();
    range.min..=range.max
}

/// Version `i` steps into the range, staying at its maximum once past it; iterating `i`
/// over the longest range of several APIs used together covers each of their versions.
fn nth_version(key: i16, i: i16) -> i16 {
    let range = served(key);
    (range.start() + i).min(*range.end())
}

fn start() -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        &[
            "--group-initial-rebalance-delay-ms",
            "0",
            "--auto-create-topics",
            "false",
        ],
    );
    (dir, broker)
}

fn create_topic(client: &mut Wire, name: &str, partitions: i32) {
    let response = call!(
        client,
        CreateTopics,
        7,
        CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: name.into(),
                num_partitions: partitions,
                replication_factor: 1,
                ..CreatableTopic::default()
            }],
            timeout_ms: 30_000,
            ..CreateTopicsRequest::default()
        }
    );
    assert_eq!(response.topics[0].error_code, error_code::NONE);
}

fn metadata(client: &mut Wire, topic: &str) -> MetadataResponseTopic {
    let response = call!(
        client,
        Metadata,
        12,
        MetadataRequest {
            topics: Some(vec![MetadataRequestTopic {
                name: Some(topic.into()),
                ..MetadataRequestTopic::default()
            }]),
            ..MetadataRequest::default()
        }
    );
    response.topics.into_iter().next().unwrap()
}

fn describe_config(client: &mut Wire, version: i16, topic: &str, key: &str) -> Option<String> {
    let response = call!(
        client,
        DescribeConfigs,
        version,
        DescribeConfigsRequest {
            resources: vec![DescribeConfigsResource {
                resource_type: 2,
                resource_name: topic.into(),
                configuration_keys: Some(vec![key.into()]),
            }],
            ..DescribeConfigsRequest::default()
        }
    );
    let result = &response.results[0];
    assert_eq!(result.error_code, error_code::NONE, "{result:?}");
    assert_eq!(result.configs.len(), 1, "{result:?}");
    result.configs[0].value.clone()
}

/// Sets one config of `topic` with IncrementalAlterConfigs at `version`.
fn set_config(client: &mut Wire, version: i16, topic: &str, key: &str, value: &str) {
    let response = call!(
        client,
        IncrementalAlterConfigs,
        version,
        IncrementalAlterConfigsRequest {
            resources: vec![incremental_alter_configs_request::AlterConfigsResource {
                resource_type: 2,
                resource_name: topic.into(),
                configs: vec![incremental_alter_configs_request::AlterableConfig {
                    name: key.into(),
                    config_operation: 0,
                    value: Some(value.into()),
                }],
            }],
            validate_only: false,
        }
    );
    let result = &response.responses[0];
    assert_eq!(
        result.error_code,
        error_code::NONE,
        "v{version}: {result:?}"
    );
}

fn batch(values: &[String], timestamp: i64) -> Records {
    let mut builder = BatchBuilder::new(Compression::None);
    for value in values {
        builder.push(Timestamp(timestamp), None, Some(value.as_bytes()), &[]);
    }
    Records::from(builder.build())
}

/// The values of every record in fetched `records`, in order, with their offsets.
fn values(records: &Records) -> Vec<(u64, String)> {
    let mut bytes = records.to_bytes();
    let mut values = Vec::new();
    while !bytes.is_empty() {
        let size = BatchHeader::parse(&bytes).unwrap().total_bytes();
        let batch = bytes.split_to(size);
        for record in decode_records(&batch, 1 << 20).unwrap() {
            let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
            values.push((record.offset.0, value));
        }
    }
    values
}

/// A request of API `key` at `version` with a v1 header and no body.
fn header_only(key: i16, version: i16, correlation_id: i32) -> Bytes {
    let mut encoder = Encoder::new();
    let header = RequestHeader {
        request_api_key: key,
        request_api_version: version,
        correlation_id,
        client_id: None,
    };
    header.encode(&mut encoder, 1);
    encoder.finish_bytes()
}

#[test]
fn api_versions_advertises_exactly_the_served_ranges_and_refuses_the_rest() {
    let (_dir, broker) = start();
    let mut client = Wire::connect(broker.bootstrap());
    let advertised: Vec<(i16, i16, i16)> = api::APIS
        .iter()
        .map(|api| (api.key, api.min, api.max))
        .collect();
    for version in served(ApiVersionsRequest::API_KEY) {
        let response = call!(
            client,
            ApiVersions,
            version,
            ApiVersionsRequest {
                client_software_name: "versions-test".into(),
                client_software_version: "1.0".into(),
            }
        );
        assert_eq!(response.error_code, error_code::NONE);
        let answered: Vec<(i16, i16, i16)> = response
            .api_keys
            .iter()
            .map(|api| (api.api_key, api.min_version, api.max_version))
            .collect();
        assert_eq!(answered, advertised, "ApiVersions v{version}");
    }

    // A newer ApiVersions is answered in v0 with UNSUPPORTED_VERSION and the ranges.
    let too_new = served(ApiVersionsRequest::API_KEY).end() + 1;
    client.send(&header_only(ApiVersionsRequest::API_KEY, too_new, 99));
    let (correlation_id, response) =
        decode_response(ApiVersionsRequest::API_KEY, 0, client.receive().unwrap()).unwrap();
    assert_eq!(correlation_id, 99);
    let ResponseBody::ApiVersions(response) = response else {
        panic!("not ApiVersions: {response:?}");
    };
    assert_eq!(response.error_code, error_code::UNSUPPORTED_VERSION);
    assert_eq!(response.api_keys.len(), advertised.len());

    // Any other API one version below or above its range closes that connection only.
    for api in api::APIS
        .iter()
        .filter(|api| api.key != ApiVersionsRequest::API_KEY)
    {
        for version in [api.min - 1, api.max + 1] {
            let mut outside = Wire::connect(broker.bootstrap());
            outside.send(&header_only(api.key, version, 7));
            assert!(
                outside.receive().is_none(),
                "{} v{version} was answered",
                api.name
            );
        }
    }
    let response = call!(client, ApiVersions, 3, ApiVersionsRequest::default());
    assert_eq!(response.error_code, error_code::NONE);
}

#[test]
fn produce_fetch_and_offset_apis_at_every_version() {
    let (_dir, broker) = start();
    let mut client = Wire::connect(broker.bootstrap());
    create_topic(&mut client, "versions", 2);
    let topic_id = metadata(&mut client, "versions").topic_id;
    assert_ne!(topic_id, Uuid::ZERO);

    // Produce: two records per version to partition 0, timestamps 1000 apart.
    let mut produced = Vec::new();
    for (i, version) in served(ProduceRequest::API_KEY).enumerate() {
        let records: Vec<String> = (0..2).map(|n| format!("v{version}-{n}")).collect();
        let timestamp = 1_000 * (i as i64 + 1);
        let response = call!(
            client,
            Produce,
            version,
            ProduceRequest {
                acks: if version % 2 == 0 { 1 } else { -1 },
                timeout_ms: 30_000,
                topic_data: vec![TopicProduceData {
                    name: "versions".into(),
                    partition_data: vec![PartitionProduceData {
                        index: 0,
                        records: Some(batch(&records, timestamp)),
                    }],
                }],
                ..ProduceRequest::default()
            }
        );
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(partition.error_code, error_code::NONE, "Produce v{version}");
        assert_eq!(partition.base_offset, produced.len() as i64);
        if version >= 5 {
            assert_eq!(partition.log_start_offset, 0);
        }
        produced.extend(records);
    }
    let end = produced.len() as i64;

    // Fetch: by name up to v12, by topic id from v13.
    for version in served(FetchRequest::API_KEY) {
        let by_id = version >= 13;
        let response = call!(
            client,
            Fetch,
            version,
            FetchRequest {
                replica_id: -1,
                max_wait_ms: 0,
                min_bytes: 1,
                max_bytes: 1 << 20,
                session_epoch: -1,
                topics: vec![FetchTopic {
                    topic: if by_id {
                        String::new()
                    } else {
                        "versions".into()
                    },
                    topic_id: if by_id { topic_id } else { Uuid::ZERO },
                    partitions: vec![FetchPartition {
                        partition: 0,
                        fetch_offset: 2,
                        partition_max_bytes: 1 << 20,
                        current_leader_epoch: -1,
                        ..FetchPartition::default()
                    }],
                }],
                ..FetchRequest::default()
            }
        );
        assert_eq!(response.error_code, error_code::NONE);
        let topic = &response.responses[0];
        if by_id {
            assert_eq!(topic.topic_id, topic_id);
        } else {
            assert_eq!(topic.topic, "versions");
        }
        let partition = &topic.partitions[0];
        assert_eq!(partition.error_code, error_code::NONE, "Fetch v{version}");
        assert_eq!(partition.high_watermark, end);
        assert_eq!(partition.last_stable_offset, end);
        let fetched = values(partition.records.as_ref().unwrap());
        // Stored batches are served whole: the first one starts at offset 2.
        let expected: Vec<(u64, String)> = produced
            .iter()
            .cloned()
            .enumerate()
            .skip(2)
            .map(|(offset, value)| (offset as u64, value))
            .collect();
        assert_eq!(fetched, expected, "Fetch v{version}");
    }

    // ListOffsets: earliest, latest, and the first record at or after a timestamp; from v7
    // the record with the largest timestamp (the last version's first record, at 1000 per
    // version), from v8 the local log start, from v9 the last tiered offset (none here).
    let last_produced = (
        end - 2,
        1_000 * served(ProduceRequest::API_KEY).count() as i64,
    );
    for version in served(ListOffsetsRequest::API_KEY) {
        let mut lookups = vec![
            (-2, 0, -1),
            (-1, end, -1),
            (3_000, 4, 3_000),
            (3_500, 6, 4_000),
        ];
        if version >= 7 {
            lookups.push((-3, last_produced.0, last_produced.1));
        }
        if version >= 8 {
            lookups.push((-4, 0, -1));
        }
        if version >= 9 {
            lookups.push((-5, -1, -1));
        }
        for (timestamp, offset, found_timestamp) in lookups {
            let response = call!(
                client,
                ListOffsets,
                version,
                ListOffsetsRequest {
                    replica_id: -1,
                    topics: vec![ListOffsetsTopic {
                        name: "versions".into(),
                        partitions: vec![ListOffsetsPartition {
                            partition_index: 0,
                            current_leader_epoch: -1,
                            timestamp,
                            ..ListOffsetsPartition::default()
                        }],
                    }],
                    ..ListOffsetsRequest::default()
                }
            );
            let partition = &response.topics[0].partitions[0];
            assert_eq!(partition.error_code, error_code::NONE);
            assert_eq!(
                partition.offset, offset,
                "ListOffsets v{version} at {timestamp}"
            );
            if version >= 1 {
                assert_eq!(
                    partition.timestamp, found_timestamp,
                    "ListOffsets v{version} at {timestamp}"
                );
            }
        }
    }

    // OffsetForLeaderEpoch: one epoch, ending at the log end.
    for version in served(OffsetForLeaderEpochRequest::API_KEY) {
        let response = call!(
            client,
            OffsetForLeaderEpoch,
            version,
            OffsetForLeaderEpochRequest {
                replica_id: -1,
                topics: vec![OffsetForLeaderTopic {
                    topic: "versions".into(),
                    partitions: vec![OffsetForLeaderPartition {
                        partition: 0,
                        current_leader_epoch: -1,
                        leader_epoch: 0,
                    }],
                }],
            }
        );
        let partition = &response.topics[0].partitions[0];
        assert_eq!(partition.error_code, error_code::NONE);
        assert_eq!(partition.leader_epoch, 0, "OffsetForLeaderEpoch v{version}");
        assert_eq!(partition.end_offset, end, "OffsetForLeaderEpoch v{version}");
        // An epoch after the partition's: nothing known (Kafka's undefined epoch and
        // offset); a client that believes in a later leader epoch: UNKNOWN_LEADER_EPOCH.
        let ask = |current_leader_epoch, leader_epoch| OffsetForLeaderEpochRequest {
            replica_id: -1,
            topics: vec![OffsetForLeaderTopic {
                topic: "versions".into(),
                partitions: vec![OffsetForLeaderPartition {
                    partition: 0,
                    current_leader_epoch,
                    leader_epoch,
                }],
            }],
        };
        let response = call!(client, OffsetForLeaderEpoch, version, ask(-1, 3));
        let partition = &response.topics[0].partitions[0];
        assert_eq!(
            (
                partition.error_code,
                partition.leader_epoch,
                partition.end_offset
            ),
            (error_code::NONE, -1, -1),
            "OffsetForLeaderEpoch v{version} for a later epoch"
        );
        if version >= 2 {
            let response = call!(client, OffsetForLeaderEpoch, version, ask(1, 0));
            assert_eq!(
                response.topics[0].partitions[0].error_code,
                error_code::UNKNOWN_LEADER_EPOCH,
                "OffsetForLeaderEpoch v{version} from a client ahead"
            );
        }
    }

    // DeleteRecords: partition 1 holds ten records; each version moves its start further.
    let ten: Vec<String> = (0..10).map(|n| n.to_string()).collect();
    let response = call!(
        client,
        Produce,
        9,
        ProduceRequest {
            acks: -1,
            timeout_ms: 30_000,
            topic_data: vec![TopicProduceData {
                name: "versions".into(),
                partition_data: vec![PartitionProduceData {
                    index: 1,
                    records: Some(batch(&ten, 1_000)),
                }],
            }],
            ..ProduceRequest::default()
        }
    );
    assert_eq!(
        response.responses[0].partition_responses[0].error_code,
        error_code::NONE
    );
    for version in served(DeleteRecordsRequest::API_KEY) {
        let before = i64::from(version) + 1;
        let response = call!(
            client,
            DeleteRecords,
            version,
            DeleteRecordsRequest {
                topics: vec![DeleteRecordsTopic {
                    name: "versions".into(),
                    partitions: vec![DeleteRecordsPartition {
                        partition_index: 1,
                        offset: before,
                    }],
                }],
                timeout_ms: 30_000,
            }
        );
        let partition = &response.topics[0].partitions[0];
        assert_eq!(partition.error_code, error_code::NONE);
        assert_eq!(partition.low_watermark, before, "DeleteRecords v{version}");
    }

    // InitProducerId: a new producer id each time, epoch 0.
    let mut ids = Vec::new();
    for version in served(InitProducerIdRequest::API_KEY) {
        let response = call!(
            client,
            InitProducerId,
            version,
            InitProducerIdRequest {
                transactional_id: None,
                transaction_timeout_ms: -1,
                producer_id: -1,
                producer_epoch: -1,
            }
        );
        assert_eq!(response.error_code, error_code::NONE);
        assert!(response.producer_id >= 0);
        assert_eq!(response.producer_epoch, 0);
        assert!(!ids.contains(&response.producer_id));
        ids.push(response.producer_id);
    }
}

#[test]
fn topic_and_cluster_admin_apis_at_every_version() {
    let (_dir, broker) = start();
    let mut client = Wire::connect(broker.bootstrap());

    // CreateTopics, each version its own topic with a retention override.
    for version in served(CreateTopicsRequest::API_KEY) {
        let name = format!("created-v{version}");
        let response = call!(
            client,
            CreateTopics,
            version,
            CreateTopicsRequest {
                topics: vec![CreatableTopic {
                    name: name.clone(),
                    num_partitions: 1,
                    replication_factor: 1,
                    configs: vec![CreatableTopicConfig {
                        name: "retention.ms".into(),
                        value: Some((60_000 * i64::from(version)).to_string()),
                    }],
                    ..CreatableTopic::default()
                }],
                timeout_ms: 30_000,
                ..CreateTopicsRequest::default()
            }
        );
        let topic = &response.topics[0];
        assert_eq!(topic.name, name);
        assert_eq!(
            topic.error_code,
            error_code::NONE,
            "CreateTopics v{version}"
        );
        if version >= 5 {
            assert_eq!(topic.num_partitions, 1);
            assert_eq!(topic.replication_factor, 1);
        }
        if version >= 7 {
            assert_ne!(topic.topic_id, Uuid::ZERO);
        }
    }
    let created = |i: i16| format!("created-v{}", nth_version(CreateTopicsRequest::API_KEY, i));

    // Metadata: one named topic, the broker and (v1+) the controller, (v2+) the cluster id.
    for version in served(MetadataRequest::API_KEY) {
        let name = created(version % 6);
        let response = call!(
            client,
            Metadata,
            version,
            MetadataRequest {
                topics: Some(vec![MetadataRequestTopic {
                    name: Some(name.clone()),
                    ..MetadataRequestTopic::default()
                }]),
                ..MetadataRequest::default()
            }
        );
        assert_eq!(response.brokers.len(), 1);
        assert_eq!(response.brokers[0].node_id, 0);
        assert_eq!(response.brokers[0].port, i32::from(broker.port));
        if version >= 1 {
            assert_eq!(response.controller_id, 0);
        }
        if version >= 2 {
            assert!(response.cluster_id.is_some());
        }
        let topic = &response.topics[0];
        assert_eq!(topic.error_code, error_code::NONE, "Metadata v{version}");
        assert_eq!(topic.name.as_deref(), Some(name.as_str()));
        assert_eq!(topic.partitions.len(), 1);
        assert_eq!(topic.partitions[0].leader_id, 0);
        if version >= 10 {
            assert_ne!(topic.topic_id, Uuid::ZERO);
        }
    }

    // DescribeConfigs reads the overrides CreateTopics set.
    for version in served(DescribeConfigsRequest::API_KEY) {
        let topic_version = nth_version(CreateTopicsRequest::API_KEY, version);
        let retention = describe_config(&mut client, version, &created(version), "retention.ms");
        assert_eq!(
            retention,
            Some((60_000 * i64::from(topic_version)).to_string()),
            "DescribeConfigs v{version}"
        );
    }

    // AlterConfigs replaces a topic's overrides.
    for version in served(AlterConfigsRequest::API_KEY) {
        let topic = created(version);
        let response = call!(
            client,
            AlterConfigs,
            version,
            AlterConfigsRequest {
                resources: vec![alter_configs_request::AlterConfigsResource {
                    resource_type: 2,
                    resource_name: topic.clone(),
                    configs: vec![alter_configs_request::AlterableConfig {
                        name: "cleanup.policy".into(),
                        value: Some("compact".into()),
                    }],
                }],
                validate_only: false,
            }
        );
        assert_eq!(response.responses[0].error_code, error_code::NONE);
        let policy = describe_config(&mut client, 4, &topic, "cleanup.policy");
        assert_eq!(
            policy.as_deref(),
            Some("compact"),
            "AlterConfigs v{version}"
        );
        let retention = describe_config(&mut client, 4, &topic, "retention.ms");
        assert_eq!(
            retention.as_deref(),
            Some("604800000"),
            "back to the default"
        );
    }

    // IncrementalAlterConfigs sets one key and keeps the others.
    for version in served(IncrementalAlterConfigsRequest::API_KEY) {
        let topic = created(version);
        set_config(&mut client, version, &topic, "segment.bytes", "2097152");
        let segment = describe_config(&mut client, 4, &topic, "segment.bytes");
        assert_eq!(segment.as_deref(), Some("2097152"), "v{version}");
        let policy = describe_config(&mut client, 4, &topic, "cleanup.policy");
        assert_eq!(policy.as_deref(), Some("compact"), "v{version}");
    }

    // CreatePartitions grows a topic to three partitions.
    for version in served(CreatePartitionsRequest::API_KEY) {
        let topic = created(version);
        let response = call!(
            client,
            CreatePartitions,
            version,
            CreatePartitionsRequest {
                topics: vec![CreatePartitionsTopic {
                    name: topic.clone(),
                    count: 3,
                    assignments: None,
                }],
                timeout_ms: 30_000,
                validate_only: false,
            }
        );
        assert_eq!(
            response.results[0].error_code,
            error_code::NONE,
            "CreatePartitions v{version}"
        );
        assert_eq!(metadata(&mut client, &topic).partitions.len(), 3);
    }

    // DescribeCluster names the cluster and its broker.
    for version in served(DescribeClusterRequest::API_KEY) {
        let response = call!(
            client,
            DescribeCluster,
            version,
            DescribeClusterRequest {
                include_cluster_authorized_operations: false,
                endpoint_type: 1,
            }
        );
        assert_eq!(response.error_code, error_code::NONE);
        assert!(!response.cluster_id.is_empty());
        assert_eq!(response.brokers.len(), 1);
        assert_eq!(response.brokers[0].port, i32::from(broker.port));
    }

    // DescribeConfigs of the broker: its settings and topic defaults under Kafka's names,
    // read only, with the source of each (this broker sets the rebalance delay).
    for version in served(DescribeConfigsRequest::API_KEY) {
        let response = call!(
            client,
            DescribeConfigs,
            version,
            DescribeConfigsRequest {
                resources: vec![DescribeConfigsResource {
                    resource_type: 4,
                    resource_name: "0".into(),
                    configuration_keys: None,
                }],
                include_synonyms: false,
                include_documentation: false,
            }
        );
        let result = &response.results[0];
        assert_eq!(result.error_code, error_code::NONE);
        let get = |key: &str| {
            result
                .configs
                .iter()
                .find(|config| config.name == key)
                .unwrap_or_else(|| panic!("broker config {key} missing"))
        };
        for key in [
            "advertised.listeners",
            "log.dirs",
            "num.partitions",
            "log.retention.ms",
            "log.roll.ms",
            "log.cleaner.min.cleanable.ratio",
            "min.insync.replicas",
            "message.max.bytes",
        ] {
            assert!(get(key).read_only, "{key} v{version}");
        }
        assert_eq!(
            get("advertised.listeners").value.as_deref(),
            Some(format!("PLAINTEXT://127.0.0.1:{}", broker.port).as_str())
        );
        assert_eq!(get("log.retention.ms").value.as_deref(), Some("604800000"));
        let delay = get("group.initial.rebalance.delay.ms");
        assert_eq!(delay.value.as_deref(), Some("0"));
        assert_eq!(delay.config_source, 4, "STATIC_BROKER_CONFIG");
        assert_eq!(get("num.partitions").config_source, 5, "DEFAULT_CONFIG");
        assert!(result.configs.len() > 40, "{} keys", result.configs.len());
    }

    // DescribeLogDirs: the one directory, each partition's size; v4 adds the volume's.
    let sized = created(0);
    for version in served(DescribeLogDirsRequest::API_KEY) {
        let response = call!(
            client,
            DescribeLogDirs,
            version,
            DescribeLogDirsRequest {
                topics: Some(vec![describe_log_dirs_request::DescribableLogDirTopic {
                    topic: sized.clone(),
                    partitions: vec![0, 1, 2, 99],
                }]),
            }
        );
        assert_eq!(response.error_code, error_code::NONE);
        assert_eq!(response.results.len(), 1, "DescribeLogDirs v{version}");
        let dir = &response.results[0];
        assert_eq!(dir.error_code, error_code::NONE);
        assert!(dir.log_dir.ends_with("data/logs"), "{}", dir.log_dir);
        let partitions: Vec<i32> = dir.topics[0]
            .partitions
            .iter()
            .map(|p| p.partition_index)
            .collect();
        assert_eq!(partitions, [0, 1, 2], "the missing partition is left out");
        assert!(dir.topics[0].partitions.iter().all(|p| p.offset_lag == 0));
        if version >= 4 {
            assert!(dir.total_bytes > 0 && dir.usable_bytes > 0);
            assert!(dir.usable_bytes <= dir.total_bytes);
        }
        let every = call!(
            client,
            DescribeLogDirs,
            version,
            DescribeLogDirsRequest { topics: None }
        );
        assert!(every.results[0].topics.iter().any(|t| t.name == sized));
    }

    // ElectLeaders: the only replica leads already; null asks for every partition and
    // lists none.
    for version in served(ElectLeadersRequest::API_KEY) {
        let response = call!(
            client,
            ElectLeaders,
            version,
            ElectLeadersRequest {
                election_type: 0,
                topic_partitions: Some(vec![elect_leaders_request::TopicPartitions {
                    topic: sized.clone(),
                    partitions: vec![0, 99],
                }]),
                timeout_ms: 30_000,
            }
        );
        let codes: Vec<i16> = response.replica_election_results[0]
            .partition_result
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(
            codes,
            [
                error_code::ELECTION_NOT_NEEDED,
                error_code::UNKNOWN_TOPIC_OR_PARTITION
            ],
            "ElectLeaders v{version}"
        );
        let every = call!(
            client,
            ElectLeaders,
            version,
            ElectLeadersRequest {
                election_type: 0,
                topic_partitions: None,
                timeout_ms: 30_000,
            }
        );
        assert_eq!(every.error_code, error_code::NONE);
        assert!(every.replica_election_results.is_empty());
    }

    // AlterPartitionReassignments: to where the partition is changes nothing, to a broker
    // not registered or to nothing is refused, a cancellation finds none in progress; none
    // is listed.
    for version in served(AlterPartitionReassignmentsRequest::API_KEY) {
        let reassign = |partition_index: i32, replicas: Option<Vec<i32>>| {
            alter_partition_reassignments_request::ReassignablePartition {
                partition_index,
                replicas,
            }
        };
        let response = call!(
            client,
            AlterPartitionReassignments,
            version,
            AlterPartitionReassignmentsRequest {
                timeout_ms: 30_000,
                topics: vec![alter_partition_reassignments_request::ReassignableTopic {
                    name: sized.clone(),
                    partitions: vec![
                        reassign(0, Some(vec![0])),
                        reassign(1, Some(vec![5])),
                        reassign(2, Some(vec![0, 5])),
                        reassign(0, Some(Vec::new())),
                        reassign(1, None),
                        reassign(99, Some(vec![0])),
                    ],
                }],
            }
        );
        assert_eq!(response.error_code, error_code::NONE);
        let codes: Vec<i16> = response.responses[0]
            .partitions
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(
            codes,
            [
                error_code::NONE,
                error_code::INVALID_REPLICA_ASSIGNMENT,
                error_code::INVALID_REPLICA_ASSIGNMENT,
                error_code::INVALID_REPLICA_ASSIGNMENT,
                error_code::NO_REASSIGNMENT_IN_PROGRESS,
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
            ],
            "AlterPartitionReassignments v{version}"
        );
    }
    for version in served(ListPartitionReassignmentsRequest::API_KEY) {
        let response = call!(
            client,
            ListPartitionReassignments,
            version,
            ListPartitionReassignmentsRequest {
                timeout_ms: 30_000,
                topics: None,
            }
        );
        assert_eq!(response.error_code, error_code::NONE);
        assert!(response.topics.is_empty());
    }

    // DeleteTopics, by name up to v5 and through the topic states from v6.
    for version in served(DeleteTopicsRequest::API_KEY) {
        let topic = created(version - 1);
        let request = if version >= 6 {
            DeleteTopicsRequest {
                topics: vec![DeleteTopicState {
                    name: Some(topic.clone()),
                    topic_id: Uuid::ZERO,
                }],
                timeout_ms: 30_000,
                ..DeleteTopicsRequest::default()
            }
        } else {
            DeleteTopicsRequest {
                topic_names: vec![topic.clone()],
                timeout_ms: 30_000,
                ..DeleteTopicsRequest::default()
            }
        };
        let response = call!(client, DeleteTopics, version, request);
        let result = &response.responses[0];
        assert_eq!(
            result.error_code,
            error_code::NONE,
            "DeleteTopics v{version}"
        );
        assert_eq!(
            metadata(&mut client, &topic).error_code,
            error_code::UNKNOWN_TOPIC_OR_PARTITION
        );
    }
}

#[test]
fn group_apis_at_every_version() {
    let (_dir, broker) = start();
    let mut client = Wire::connect(broker.bootstrap());
    create_topic(&mut client, "versions", 1);
    // Each group also commits an offset of this topic, which keeps the group (with no
    // members) after OffsetDelete took its other commit.
    create_topic(&mut client, "kept", 1);
    let longest = [
        FindCoordinatorRequest::API_KEY,
        JoinGroupRequest::API_KEY,
        SyncGroupRequest::API_KEY,
        HeartbeatRequest::API_KEY,
        LeaveGroupRequest::API_KEY,
        OffsetCommitRequest::API_KEY,
        OffsetFetchRequest::API_KEY,
        DescribeGroupsRequest::API_KEY,
        ListGroupsRequest::API_KEY,
        DeleteGroupsRequest::API_KEY,
    ]
    .iter()
    .map(|&key| served(key).count())
    .max()
    .unwrap() as i16;
    for i in 0..longest {
        let group = format!("group-{i}");
        let version = |key: i16| nth_version(key, i);

        let v = version(FindCoordinatorRequest::API_KEY);
        let request = if v >= 4 {
            FindCoordinatorRequest {
                coordinator_keys: vec![group.clone()],
                ..FindCoordinatorRequest::default()
            }
        } else {
            FindCoordinatorRequest {
                key: group.clone(),
                ..FindCoordinatorRequest::default()
            }
        };
        let response = call!(client, FindCoordinator, v, request);
        let (error, node, port) = match response.coordinators.first() {
            Some(coordinator) if v >= 4 => (
                coordinator.error_code,
                coordinator.node_id,
                coordinator.port,
            ),
            _ => (response.error_code, response.node_id, response.port),
        };
        assert_eq!(error, error_code::NONE, "FindCoordinator v{v}");
        assert_eq!((node, port), (0, i32::from(broker.port)));

        // JoinGroup, with the MEMBER_ID_REQUIRED round trip from v4.
        let v = version(JoinGroupRequest::API_KEY);
        let join = |member_id: String| JoinGroupRequest {
            group_id: group.clone(),
            session_timeout_ms: 30_000,
            rebalance_timeout_ms: 30_000,
            member_id,
            protocol_type: "consumer".into(),
            protocols: vec![JoinGroupRequestProtocol {
                name: "range".into(),
                metadata: Bytes::from_static(b"subscription"),
            }],
            ..JoinGroupRequest::default()
        };
        let mut joined = call!(client, JoinGroup, v, join(String::new()));
        if v >= 4 {
            assert_eq!(joined.error_code, error_code::MEMBER_ID_REQUIRED);
            joined = call!(client, JoinGroup, v, join(joined.member_id));
        }
        assert_eq!(joined.error_code, error_code::NONE, "JoinGroup v{v}");
        assert_eq!(joined.generation_id, 1);
        assert_eq!(joined.leader, joined.member_id);
        assert_eq!(joined.members.len(), 1);
        assert_eq!(
            joined.members[0].metadata,
            Bytes::from_static(b"subscription")
        );
        assert_eq!(joined.protocol_name.as_deref(), Some("range"));
        if v >= 7 {
            assert_eq!(joined.protocol_type.as_deref(), Some("consumer"));
        }
        let member = joined.member_id;

        let v = version(SyncGroupRequest::API_KEY);
        let synced = call!(
            client,
            SyncGroup,
            v,
            SyncGroupRequest {
                group_id: group.clone(),
                generation_id: 1,
                member_id: member.clone(),
                protocol_type: Some("consumer".into()),
                protocol_name: Some("range".into()),
                assignments: vec![SyncGroupRequestAssignment {
                    member_id: member.clone(),
                    assignment: Bytes::from(format!("assignment-{i}")),
                }],
                ..SyncGroupRequest::default()
            }
        );
        assert_eq!(synced.error_code, error_code::NONE, "SyncGroup v{v}");
        assert_eq!(synced.assignment, Bytes::from(format!("assignment-{i}")));

        let v = version(HeartbeatRequest::API_KEY);
        let beat = call!(
            client,
            Heartbeat,
            v,
            HeartbeatRequest {
                group_id: group.clone(),
                generation_id: 1,
                member_id: member.clone(),
                group_instance_id: None,
            }
        );
        assert_eq!(beat.error_code, error_code::NONE, "Heartbeat v{v}");

        let v = version(OffsetCommitRequest::API_KEY);
        let committed = call!(
            client,
            OffsetCommit,
            v,
            OffsetCommitRequest {
                group_id: group.clone(),
                generation_id_or_member_epoch: 1,
                member_id: member.clone(),
                group_instance_id: None,
                retention_time_ms: -1,
                topics: ["versions", "kept"]
                    .into_iter()
                    .map(|name| OffsetCommitRequestTopic {
                        name: name.into(),
                        partitions: vec![OffsetCommitRequestPartition {
                            partition_index: 0,
                            committed_offset: 10 + i64::from(i),
                            committed_leader_epoch: -1,
                            commit_timestamp: -1,
                            committed_metadata: Some(format!("metadata-{i}")),
                        }],
                    })
                    .collect(),
            }
        );
        for topic in &committed.topics {
            assert_eq!(
                topic.partitions[0].error_code,
                error_code::NONE,
                "OffsetCommit v{v}"
            );
        }

        let v = version(OffsetFetchRequest::API_KEY);
        let (offset, metadata) = if v >= 8 {
            let response = call!(
                client,
                OffsetFetch,
                v,
                OffsetFetchRequest {
                    groups: vec![OffsetFetchRequestGroup {
                        group_id: group.clone(),
                        member_id: None,
                        member_epoch: -1,
                        topics: Some(vec![OffsetFetchRequestTopics {
                            name: "versions".into(),
                            partition_indexes: vec![0],
                        }]),
                    }],
                    ..OffsetFetchRequest::default()
                }
            );
            let group = &response.groups[0];
            assert_eq!(group.error_code, error_code::NONE);
            let partition = &group.topics[0].partitions[0];
            assert_eq!(partition.error_code, error_code::NONE);
            (partition.committed_offset, partition.metadata.clone())
        } else {
            let response = call!(
                client,
                OffsetFetch,
                v,
                OffsetFetchRequest {
                    group_id: group.clone(),
                    topics: Some(vec![OffsetFetchRequestTopic {
                        name: "versions".into(),
                        partition_indexes: vec![0],
                    }]),
                    ..OffsetFetchRequest::default()
                }
            );
            assert_eq!(response.error_code, error_code::NONE);
            let partition = &response.topics[0].partitions[0];
            assert_eq!(partition.error_code, error_code::NONE);
            (partition.committed_offset, partition.metadata.clone())
        };
        assert_eq!(offset, 10 + i64::from(i), "OffsetFetch v{v}");
        assert_eq!(metadata, Some(format!("metadata-{i}")));

        let describe = |client: &mut Wire| {
            let v = version(DescribeGroupsRequest::API_KEY);
            let response = call!(
                client,
                DescribeGroups,
                v,
                DescribeGroupsRequest {
                    groups: vec![group.clone()],
                    include_authorized_operations: false,
                }
            );
            response.groups.into_iter().next().unwrap()
        };
        let described = describe(&mut client);
        assert_eq!(described.error_code, error_code::NONE);
        assert_eq!(described.group_state, "Stable");
        assert_eq!(described.protocol_data, "range");
        assert_eq!(described.members.len(), 1);
        assert_eq!(described.members[0].member_id, member);
        assert_eq!(
            described.members[0].member_assignment,
            Bytes::from(format!("assignment-{i}"))
        );

        let v = version(ListGroupsRequest::API_KEY);
        let listed = call!(
            client,
            ListGroups,
            v,
            ListGroupsRequest {
                states_filter: vec!["Stable".into()],
                types_filter: Vec::new(),
            }
        );
        assert_eq!(listed.error_code, error_code::NONE);
        let names: Vec<&str> = listed.groups.iter().map(|g| g.group_id.as_str()).collect();
        assert!(
            names.contains(&group.as_str()),
            "ListGroups v{v}: {names:?}"
        );
        if v >= 4 {
            assert_eq!(names, [group.as_str()], "only Stable groups");
        }
        if v >= 5 {
            for (kind, listed_here) in [("consumer", false), ("Classic", true)] {
                let listed = call!(
                    client,
                    ListGroups,
                    v,
                    ListGroupsRequest {
                        states_filter: Vec::new(),
                        types_filter: vec![kind.into()],
                    }
                );
                let here = listed.groups.iter().any(|g| g.group_id == group);
                assert_eq!(here, listed_here, "ListGroups v{v} of type {kind}");
                assert!(listed.groups.iter().all(|g| g.group_type == "classic"));
            }
        }

        // OffsetDelete: refused while a member's subscription (unreadable here) may cover
        // the topic; missing partitions and groups get their own errors.
        let delete_offsets = |client: &mut Wire, group: &str, partitions: Vec<i32>| {
            call!(
                client,
                OffsetDelete,
                version(OffsetDeleteRequest::API_KEY),
                OffsetDeleteRequest {
                    group_id: group.to_string(),
                    topics: vec![offset_delete_request::OffsetDeleteRequestTopic {
                        name: "versions".into(),
                        partitions: partitions
                            .into_iter()
                            .map(|partition_index| {
                                offset_delete_request::OffsetDeleteRequestPartition {
                                    partition_index,
                                }
                            })
                            .collect(),
                    }],
                }
            )
        };
        let refused = delete_offsets(&mut client, &group, vec![0, 7]);
        assert_eq!(refused.error_code, error_code::NONE);
        let codes: Vec<i16> = refused.topics[0]
            .partitions
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(
            codes,
            [
                error_code::GROUP_SUBSCRIBED_TO_TOPIC,
                error_code::UNKNOWN_TOPIC_OR_PARTITION
            ]
        );
        let missing = delete_offsets(&mut client, "no-such-group", vec![0]);
        assert_eq!(missing.error_code, error_code::GROUP_ID_NOT_FOUND);

        let v = version(LeaveGroupRequest::API_KEY);
        let request = if v >= 3 {
            LeaveGroupRequest {
                group_id: group.clone(),
                members: vec![MemberIdentity {
                    member_id: member.clone(),
                    group_instance_id: None,
                    reason: None,
                }],
                ..LeaveGroupRequest::default()
            }
        } else {
            LeaveGroupRequest {
                group_id: group.clone(),
                member_id: member.clone(),
                ..LeaveGroupRequest::default()
            }
        };
        let left = call!(client, LeaveGroup, v, request);
        assert_eq!(left.error_code, error_code::NONE, "LeaveGroup v{v}");
        if v >= 3 {
            assert_eq!(left.members[0].error_code, error_code::NONE);
        }
        assert_eq!(describe(&mut client).group_state, "Empty");

        // OffsetDelete of an empty group deletes the commit (the other one keeps the group).
        let deleted = delete_offsets(&mut client, &group, vec![0]);
        assert_eq!(deleted.error_code, error_code::NONE);
        assert_eq!(deleted.topics[0].partitions[0].error_code, error_code::NONE);
        let response = call!(
            client,
            OffsetFetch,
            7,
            OffsetFetchRequest {
                group_id: group.clone(),
                topics: Some(vec![OffsetFetchRequestTopic {
                    name: "versions".into(),
                    partition_indexes: vec![0],
                }]),
                ..OffsetFetchRequest::default()
            }
        );
        assert_eq!(response.topics[0].partitions[0].committed_offset, -1);

        let v = version(DeleteGroupsRequest::API_KEY);
        let deleted = call!(
            client,
            DeleteGroups,
            v,
            DeleteGroupsRequest {
                groups_names: vec![group.clone()],
            }
        );
        assert_eq!(
            deleted.results[0].error_code,
            error_code::NONE,
            "DeleteGroups v{v}"
        );
        assert_eq!(describe(&mut client).group_state, "Dead");
    }
}

/// Invalid topic names, missing partitions and the internal topic get the error codes
/// Kafka answers with, per topic or partition, and the connection stays open.
#[test]
fn invalid_topics_and_partitions_get_the_protocols_error_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--auto-create-topics", "true"]);
    let mut client = Wire::connect(broker.bootstrap());
    create_topic(&mut client, "one", 1);

    let long = "x".repeat(250);
    let invalid = ["bad name!", "", ".", "..", "a/b", long.as_str()];
    let topic = |name: &str, partitions: i32| CreatableTopic {
        name: name.into(),
        num_partitions: partitions,
        replication_factor: 1,
        ..CreatableTopic::default()
    };
    let response = call!(
        client,
        CreateTopics,
        7,
        CreateTopicsRequest {
            topics: invalid
                .iter()
                .map(|name| topic(name, 1))
                .chain([topic("no-partitions", 0), topic("one", 1)])
                .collect(),
            timeout_ms: 30_000,
            ..CreateTopicsRequest::default()
        }
    );
    let code_of = |name: &str| {
        let result = response.topics.iter().find(|topic| topic.name == name);
        result
            .unwrap_or_else(|| panic!("{name:?} answered"))
            .error_code
    };
    for name in invalid {
        assert_eq!(
            code_of(name),
            error_code::INVALID_TOPIC_EXCEPTION,
            "{name:?}"
        );
    }
    assert_eq!(code_of("no-partitions"), error_code::INVALID_PARTITIONS);
    assert_eq!(code_of("one"), error_code::TOPIC_ALREADY_EXISTS);

    // Auto-creation refuses an invalid name the same way.
    assert_eq!(
        metadata(&mut client, "bad name!").error_code,
        error_code::INVALID_TOPIC_EXCEPTION
    );

    let produce = |topic: &str, partition: i32| ProduceRequest {
        acks: -1,
        timeout_ms: 30_000,
        topic_data: vec![TopicProduceData {
            name: topic.into(),
            partition_data: vec![PartitionProduceData {
                index: partition,
                records: Some(batch(&["v".to_string()], 1_000)),
            }],
        }],
        ..ProduceRequest::default()
    };
    for (topic, partition, code) in [
        ("one", 1, error_code::UNKNOWN_TOPIC_OR_PARTITION),
        ("one", -1, error_code::UNKNOWN_TOPIC_OR_PARTITION),
        ("missing", 0, error_code::UNKNOWN_TOPIC_OR_PARTITION),
        ("bad name!", 0, error_code::UNKNOWN_TOPIC_OR_PARTITION),
        ("__consumer_offsets", 0, error_code::INVALID_TOPIC_EXCEPTION),
    ] {
        let response = call!(client, Produce, 9, produce(topic, partition));
        let answer = &response.responses[0].partition_responses[0];
        assert_eq!(answer.error_code, code, "Produce to {topic}-{partition}");
    }

    let response = call!(
        client,
        Fetch,
        12,
        FetchRequest {
            replica_id: -1,
            max_bytes: 1 << 20,
            session_epoch: -1,
            topics: vec![FetchTopic {
                topic: "one".into(),
                partitions: vec![FetchPartition {
                    partition: 3,
                    partition_max_bytes: 1 << 20,
                    current_leader_epoch: -1,
                    ..FetchPartition::default()
                }],
                ..FetchTopic::default()
            }],
            ..FetchRequest::default()
        }
    );
    assert_eq!(
        response.responses[0].partitions[0].error_code,
        error_code::UNKNOWN_TOPIC_OR_PARTITION
    );

    assert_eq!(
        latest_offset(&mut client, "one", 3).error_code,
        error_code::UNKNOWN_TOPIC_OR_PARTITION
    );

    let response = call!(
        client,
        DeleteRecords,
        2,
        DeleteRecordsRequest {
            topics: vec![DeleteRecordsTopic {
                name: "one".into(),
                partitions: vec![DeleteRecordsPartition {
                    partition_index: 3,
                    offset: 0,
                }],
            }],
            timeout_ms: 30_000,
        }
    );
    assert_eq!(
        response.topics[0].partitions[0].error_code,
        error_code::UNKNOWN_TOPIC_OR_PARTITION
    );

    let grow = |name: &str, count: i32| CreatePartitionsTopic {
        name: name.into(),
        count,
        assignments: None,
    };
    let response = call!(
        client,
        CreatePartitions,
        3,
        CreatePartitionsRequest {
            topics: vec![
                grow("one", 1),
                grow("missing", 2),
                grow("__consumer_offsets", 99)
            ],
            timeout_ms: 30_000,
            validate_only: false,
        }
    );
    let codes: Vec<i16> = response.results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        [
            error_code::INVALID_PARTITIONS,
            error_code::UNKNOWN_TOPIC_OR_PARTITION,
            error_code::INVALID_TOPIC_EXCEPTION,
        ]
    );
}

/// Produce checks every batch before storing any: a bad CRC, magic, record count, size or a
/// cut batch fails its partition with Kafka's code and stores nothing of it.
#[test]
fn produce_refuses_bad_batches_and_stores_none_of_their_partition() {
    let (_dir, broker) = start();
    let mut client = Wire::connect(broker.bootstrap());
    create_topic(&mut client, "checked", 1);
    let good = batch(&["good".to_string()], 1_000).to_bytes();
    // RecordBatch v2 fields: magic at 16, CRC at 17..21 over 21.., record count at 57..61.
    let with = |edit: &dyn Fn(&mut Vec<u8>), fix_crc: bool| {
        let mut bytes = good.to_vec();
        edit(&mut bytes);
        if fix_crc {
            let crc = crc32c::crc32c(&bytes[21..]);
            bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        bytes
    };
    let last = good.len() - 1;
    // Claims `count` records (and offsets) whatever it holds.
    let claiming = |bytes: &[u8], count: i32| {
        let mut bytes = bytes.to_vec();
        bytes[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        bytes[57..61].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes
    };
    let two = batch(&["one".to_string(), "two".to_string()], 1_000).to_bytes();
    let cases: [(&str, Vec<u8>, i16); 7] = [
        // Once accepted: each moved the log end by 2^31-1, and the second crashed a shard.
        (
            "2^31-1 records claimed, one present",
            claiming(&good, i32::MAX),
            error_code::INVALID_RECORD,
        ),
        (
            "one record claimed, two present",
            claiming(&two, 1),
            error_code::INVALID_RECORD,
        ),
        (
            "flipped value byte",
            with(&|b| b[last] ^= 1, false),
            error_code::CORRUPT_MESSAGE,
        ),
        (
            "magic 1",
            with(&|b| b[16] = 1, false),
            error_code::INVALID_RECORD,
        ),
        (
            "record count 2 of 1",
            with(&|b| b[57..61].copy_from_slice(&2i32.to_be_bytes()), true),
            error_code::INVALID_RECORD,
        ),
        (
            "cut short",
            good[..good.len() - 3].to_vec(),
            error_code::CORRUPT_MESSAGE,
        ),
        (
            "over max.message.bytes",
            batch(&["x".repeat(2_000)], 1_000).to_bytes().to_vec(),
            error_code::MESSAGE_TOO_LARGE,
        ),
    ];
    set_config(&mut client, 1, "checked", "max.message.bytes", "1000");
    for (what, bad, code) in cases {
        // The good batch first: it must not be stored either.
        let mut records = good.to_vec();
        records.extend_from_slice(&bad);
        let response = call!(
            client,
            Produce,
            9,
            ProduceRequest {
                acks: -1,
                timeout_ms: 30_000,
                topic_data: vec![TopicProduceData {
                    name: "checked".into(),
                    partition_data: vec![PartitionProduceData {
                        index: 0,
                        records: Some(Records::from(Bytes::from(records))),
                    }],
                }],
                ..ProduceRequest::default()
            }
        );
        let answer = &response.responses[0].partition_responses[0];
        assert_eq!(answer.error_code, code, "{what}: {answer:?}");
    }
    let end = latest_offset(&mut client, "checked", 0);
    assert_eq!(
        (end.error_code, end.offset),
        (error_code::NONE, 0),
        "nothing stored from a partition with a bad batch"
    );
}

/// ListOffsets (v6) for the latest offset of `topic`'s `partition`.
fn latest_offset(client: &mut Wire, topic: &str, partition: i32) -> ListOffsetsPartitionResponse {
    let response = call!(
        client,
        ListOffsets,
        6,
        ListOffsetsRequest {
            replica_id: -1,
            topics: vec![ListOffsetsTopic {
                name: topic.into(),
                partitions: vec![ListOffsetsPartition {
                    partition_index: partition,
                    current_leader_epoch: -1,
                    timestamp: -1,
                    ..ListOffsetsPartition::default()
                }],
            }],
            ..ListOffsetsRequest::default()
        }
    );
    response
        .topics
        .into_iter()
        .next()
        .unwrap()
        .partitions
        .remove(0)
}
