//! The client against an in-process broker: bootstrap and metadata, topic creation,
//! negotiated versions, pipelined requests answered in order, timeouts, and a broker going
//! away.

use std::net::TcpListener;
use std::time::Duration;

use coremq_engine::{BatchBuilder, Compression, Timestamp};
use coremq_net::broker::{Broker, BrokerConfig};
use coremq_net::client::{ClientConfig, Cluster, Error};
use coremq_net::protocol::api::{RequestBody, ResponseBody};
use coremq_net::protocol::codec::Records;
use coremq_net::protocol::error_code;
use coremq_net::protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use coremq_net::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use coremq_net::protocol::messages::{ListOffsetsRequest, ProduceRequest};

fn broker(dir: &std::path::Path) -> Broker {
    Broker::start(BrokerConfig {
        data_dir: dir.to_path_buf(),
        kafka_listener: "127.0.0.1:0".parse().unwrap(),
        admin_listener: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        pin_shards: false,
        auto_create_topics: false,
        offsets_topic_partitions: 1,
        ..BrokerConfig::default()
    })
    .unwrap()
}

fn run<T: Send + 'static>(test: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || test())
        .expect("executor starts")
        .join()
        .expect("test body completes")
}

fn produce(topic: &str, partition: i32, values: &[&str]) -> RequestBody {
    let mut builder = BatchBuilder::new(Compression::None);
    for value in values {
        builder.push(Timestamp(1), None, Some(value.as_bytes()), &[]);
    }
    RequestBody::Produce(ProduceRequest {
        acks: 1,
        timeout_ms: 30_000,
        topic_data: vec![TopicProduceData {
            name: topic.into(),
            partition_data: vec![PartitionProduceData {
                index: partition,
                records: Some(Records::from(builder.build())),
            }],
        }],
        ..ProduceRequest::default()
    })
}

fn latest(topic: &str, partition: i32) -> RequestBody {
    RequestBody::ListOffsets(ListOffsetsRequest {
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
    })
}

#[test]
fn bootstrap_metadata_creation_and_pipelined_requests() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let bootstrap = format!("nowhere.invalid:1,{}", broker.kafka_address);
    run(async move || {
        let cluster = Cluster::connect(ClientConfig::new(&bootstrap))
            .await
            .unwrap();
        assert!(cluster.create_topic("quotes", 3, 1, &[]).await.unwrap());
        assert!(!cluster.create_topic("quotes", 3, 1, &[]).await.unwrap());
        let topic = cluster.topic("quotes").await.unwrap();
        assert_eq!(topic.partitions.len(), 3);
        assert!(
            topic
                .partitions
                .iter()
                .all(|partition| partition.leader == 0)
        );
        let missing = cluster.topic("missing").await.unwrap_err();
        assert_eq!(missing.kind(), "unknown_topic_or_partition");

        let leader = cluster.leader("quotes", 1).await.unwrap();
        assert_eq!(
            leader.version(0),
            Some(11),
            "Produce at the highest shared version"
        );

        // Many requests in flight on one connection, answered in the order sent.
        let calls: Vec<_> = (0..50)
            .map(|n| {
                let leader = leader.clone();
                glommio::spawn_local(async move {
                    leader
                        .call(produce("quotes", 1, &[&n.to_string(), "x"]))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut offsets = Vec::new();
        for call in calls {
            let (_, ResponseBody::Produce(response)) = call.await else {
                panic!("not a Produce response");
            };
            let partition = &response.responses[0].partition_responses[0];
            assert_eq!(partition.error_code, error_code::NONE);
            offsets.push(partition.base_offset);
        }
        assert_eq!(offsets, (0..50).map(|n| 2 * n).collect::<Vec<_>>());
        let (_, ResponseBody::ListOffsets(response)) =
            cluster.call(&leader, latest("quotes", 1)).await.unwrap()
        else {
            panic!("not a ListOffsets response");
        };
        assert_eq!(response.topics[0].partitions[0].offset, 100);
    });
    broker.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_silent_broker_times_out_and_a_stopped_one_breaks_the_connection() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_address = silent.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let address = broker.kafka_address.to_string();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (go_on, resume) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        run(async move || {
            let mut config = ClientConfig::new(&silent_address);
            config.request_timeout = Duration::from_millis(300);
            let error = Cluster::connect(config).await.err().unwrap();
            assert!(matches!(error, Error::Timeout(_)), "{error}");
            assert!(error.is_retriable());

            let cluster = Cluster::connect(ClientConfig::new(&address)).await.unwrap();
            cluster.create_topic("going", 1, 1, &[]).await.unwrap();
            let leader = cluster.leader("going", 0).await.unwrap();
            stop.send(()).unwrap();
            resume.recv().unwrap();
            let error = cluster.call(&leader, latest("going", 0)).await.unwrap_err();
            assert!(matches!(error, Error::Io(_)), "{error}");
            assert!(leader.is_broken());
            assert!(cluster.refresh(&[]).await.is_err());
        })
    });
    stopped.recv().unwrap();
    broker.shutdown(Duration::from_secs(5)).unwrap();
    go_on.send(()).unwrap();
    client.join().unwrap();
    drop(silent);
}
