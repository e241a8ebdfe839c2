//! Topics live in the cluster metadata log (`__cluster_metadata-0`): a data directory written
//! before it (topics in `meta/topics.json`) opens unchanged, with its topics' ids, configs and
//! records; topic changes survive restarts; and replaying the metadata at start never touches
//! a log that is settled (a topic deleted and created again keeps only its new records).

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use coremq_engine::{BatchBuilder, Compression, Engine, EngineConfig, Timestamp, TopicPartition};
use coremq_net::broker::{Broker, BrokerConfig};
use coremq_net::client::{ClientConfig, Cluster, Consumer, ConsumerConfig, StartOffset};
use coremq_net::protocol::codec::Uuid;
use coremq_replication::topics::{Topic, TopicId, TopicTable};

fn broker(dir: &Path) -> Broker {
    Broker::start(BrokerConfig {
        data_dir: dir.to_path_buf(),
        kafka_listener: "127.0.0.1:0".parse().unwrap(),
        admin_listener: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        pin_shards: false,
        auto_create_topics: false,
        offsets_topic_partitions: 1,
        mqtt: coremq_net::mqtt::MqttConfig {
            listener: None,
            ..Default::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap()
}

/// Every record value of `topic`'s partitions, by partition.
fn values(broker: &Broker, topic: &str) -> BTreeMap<i32, Vec<String>> {
    let topic = topic.to_string();
    with_cluster(broker, async move |cluster| {
        let metadata = cluster.topic(&topic).await.unwrap();
        let mut values = BTreeMap::new();
        for partition in &metadata.partitions {
            let consumer = Consumer::new(cluster.clone(), ConsumerConfig::default());
            let index = partition.partition;
            consumer
                .assign(&topic, &[index], StartOffset::Earliest)
                .await
                .unwrap();
            let end = latest(&cluster, &topic, index).await;
            let mut read: Vec<String> = Vec::new();
            while (read.len() as i64) < end {
                for fetched in consumer.poll().await.unwrap() {
                    for record in fetched.records(1 << 20).unwrap() {
                        let value = record.value.unwrap();
                        read.push(String::from_utf8(value.to_vec()).unwrap());
                    }
                }
            }
            values.insert(index, read);
        }
        values
    })
}

async fn latest(cluster: &Rc<Cluster>, topic: &str, partition: i32) -> i64 {
    let consumer = Consumer::new(cluster.clone(), ConsumerConfig::default());
    consumer
        .assign(topic, &[partition], StartOffset::Latest)
        .await
        .unwrap();
    consumer.positions()[0].2
}

fn topic_id(broker: &Broker, topic: &str) -> Option<Uuid> {
    let topic = topic.to_string();
    with_cluster(broker, async move |cluster| {
        cluster
            .topic(&topic)
            .await
            .ok()
            .map(|metadata| metadata.topic_id)
    })
}

/// Runs `work` with a client connected to `broker`; what it returns.
fn with_cluster<T: Send + 'static>(
    broker: &Broker,
    work: impl AsyncFnOnce(Rc<Cluster>) -> T + Send + 'static,
) -> T {
    let bootstrap = broker.kafka_address.to_string();
    coremq_runtime::run_alone(async move || {
        let cluster = Cluster::connect(ClientConfig::new(&bootstrap))
            .await
            .unwrap();
        work(cluster).await
    })
}

fn produce(broker: &Broker, topic: &str, values: &[&str]) {
    let (topic, values): (String, Vec<String>) = (
        topic.to_string(),
        values.iter().map(|v| v.to_string()).collect(),
    );
    with_cluster(broker, async move |cluster| {
        use coremq_net::client::{Producer, ProducerConfig, ProducerRecord};
        let producer = Producer::new(cluster, ProducerConfig::default())
            .await
            .unwrap();
        let mut deliveries = Vec::new();
        for value in &values {
            let record = ProducerRecord {
                topic: &topic,
                partition: Some(0),
                key: None,
                value: Some(value.as_bytes()),
                headers: &[],
                timestamp: None,
            };
            deliveries.push(producer.send(record).await.unwrap());
        }
        producer.flush().await;
        for delivery in deliveries {
            delivery.await.unwrap();
        }
    });
}

#[test]
fn a_data_directory_from_before_the_metadata_log_opens_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    // What a broker of the earlier layout left: logs, and their table in meta/topics.json.
    let engine = Engine::start(EngineConfig {
        shards: 2,
        pin_shards: false,
        ..EngineConfig::new(dir.path().join("logs"))
    })
    .unwrap();
    let handle = engine.handle();
    let append = |log: &TopicPartition, values: &[&str]| {
        let mut builder = BatchBuilder::new(Compression::None);
        for value in values {
            builder.push(Timestamp(1), None, Some(value.as_bytes()), &[]);
        }
        futures_lite::future::block_on(handle.append(log, builder.build())).unwrap();
    };
    for (log, values) in [
        ("legacy", 0, &["a", "b", "c"][..]),
        ("legacy", 1, &["d"][..]),
        ("orphan", 0, &["lost"][..]),
    ]
    .map(|(topic, partition, values)| (TopicPartition::new(topic, partition).unwrap(), values))
    {
        futures_lite::future::block_on(handle.create_log(&log, None)).unwrap();
        append(&log, values);
    }
    engine.shutdown().unwrap();
    let id = TopicId([0xab; 16]);
    let table = TopicTable::default().with(Topic {
        name: "legacy".into(),
        id,
        partitions: 2,
        configs: [("retention.ms".to_string(), "3600000".to_string())].into(),
    });
    std::fs::create_dir_all(dir.path().join("meta")).unwrap();
    std::fs::write(dir.path().join("meta/topics.json"), table.encode()).unwrap();

    for run in 0..2 {
        let broker = broker(dir.path());
        assert_eq!(
            topic_id(&broker, "legacy"),
            Some(Uuid::from(id)),
            "run {run}"
        );
        let read = values(&broker, "legacy");
        assert_eq!(read[&0], ["a", "b", "c"], "run {run}");
        assert_eq!(read[&1], ["d"], "run {run}");
        assert_eq!(topic_id(&broker, "orphan"), None, "no topic lists it");
        assert!(
            !dir.path().join("logs/orphan-0").exists(),
            "its log is deleted"
        );
        assert!(
            !dir.path().join("meta/topics.json").exists(),
            "the table moved into the metadata log"
        );
        let conf = std::fs::read_to_string(dir.path().join("logs/legacy-0/log.conf")).unwrap();
        assert!(
            conf.contains("3600000"),
            "the stored config is applied: {conf}"
        );
        broker.shutdown(std::time::Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn topic_changes_survive_restarts_and_a_recreated_topic_keeps_only_its_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    with_cluster(&broker, async |cluster| {
        assert!(cluster.create_topic("kept", 3, 1, &[]).await.unwrap());
        assert!(cluster.create_topic("again", 1, 1, &[]).await.unwrap());
    });
    produce(&broker, "again", &["old"]);
    let first_id = topic_id(&broker, "again").unwrap();
    // Deleted and created again: a restart replays both from the metadata log.
    with_cluster(&broker, async |cluster| {
        use coremq_net::protocol::api::{RequestBody, ResponseBody};
        use coremq_net::protocol::messages::DeleteTopicsRequest;
        use coremq_net::protocol::messages::delete_topics_request::DeleteTopicState;
        let (_, ResponseBody::DeleteTopics(response)) = cluster
            .call_any(RequestBody::DeleteTopics(DeleteTopicsRequest {
                // One of the two, by the version the client and broker agree on.
                topics: vec![DeleteTopicState {
                    name: Some("again".into()),
                    topic_id: Uuid::ZERO,
                }],
                topic_names: vec!["again".into()],
                timeout_ms: 10_000,
            }))
            .await
            .unwrap()
        else {
            panic!("not a DeleteTopics response");
        };
        assert_eq!(response.responses[0].error_code, 0);
        cluster.invalidate("again");
        assert!(cluster.create_topic("again", 1, 1, &[]).await.unwrap());
    });
    produce(&broker, "again", &["new"]);
    let second_id = topic_id(&broker, "again").unwrap();
    assert_ne!(first_id, second_id);
    broker.shutdown(std::time::Duration::from_secs(5)).unwrap();

    let broker = self::broker(dir.path());
    assert_eq!(values(&broker, "again")[&0], ["new"]);
    assert_eq!(topic_id(&broker, "again"), Some(second_id));
    assert_eq!(values(&broker, "kept").len(), 3);
    broker.shutdown(std::time::Duration::from_secs(5)).unwrap();
}

/// A producer id from InitProducerId.
fn producer_id(broker: &Broker) -> i64 {
    use coremq_net::protocol::api::{RequestBody, ResponseBody};
    use coremq_net::protocol::messages::InitProducerIdRequest;
    with_cluster(broker, async move |cluster| {
        let request = InitProducerIdRequest {
            transaction_timeout_ms: 60_000,
            producer_id: -1,
            producer_epoch: -1,
            transactional_id: None,
        };
        let (_, ResponseBody::InitProducerId(response)) = cluster
            .call_any(RequestBody::InitProducerId(request))
            .await
            .unwrap()
        else {
            panic!("not an InitProducerId response");
        };
        assert_eq!(response.error_code, 0);
        response.producer_id
    })
}

#[test]
fn producer_ids_come_from_controller_blocks_after_those_handed_out_before() {
    let dir = tempfile::tempdir().unwrap();
    // A data directory from before the metadata log had reserved ids up to 5000.
    std::fs::create_dir_all(dir.path().join("meta")).unwrap();
    std::fs::write(dir.path().join("meta/producer_ids"), "5000\n").unwrap();
    let broker = broker(dir.path());
    let first = [producer_id(&broker), producer_id(&broker)];
    assert_eq!(first, [5000, 5001]);
    broker.shutdown(std::time::Duration::from_secs(5)).unwrap();
    // A restart gets a new block: the rest of the old one is never handed out again.
    let broker = self::broker(dir.path());
    let again = producer_id(&broker);
    assert_eq!(
        again,
        5000 + coremq_replication::controller::PRODUCER_ID_BLOCK
    );
    broker.shutdown(std::time::Duration::from_secs(5)).unwrap();
}
