//! The client against an in-process broker: bootstrap and metadata, topic creation,
//! negotiated versions, pipelined requests answered in order, timeouts, a broker going
//! away; the producer (partitioning, acks, compression, idempotent retries across a broker
//! restart), the consumer reading back exactly what was produced, and a consumer group
//! sharing partitions, rebalancing and resuming from its commits.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use coremq_engine::{BatchBuilder, BatchHeader, Compression, Timestamp};
use coremq_net::broker::{Broker, BrokerConfig};
use coremq_net::client::{
    ClientConfig, Cluster, Consumer, ConsumerConfig, Error, GroupConfig, GroupConsumer, Producer,
    ProducerConfig, ProducerRecord, StartOffset, partition_for_key,
};
use coremq_net::protocol::api::{RequestBody, ResponseBody};
use coremq_net::protocol::codec::Records;
use coremq_net::protocol::error_code;
use coremq_net::protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use coremq_net::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use coremq_net::protocol::messages::{ListOffsetsRequest, ProduceRequest};

fn broker(dir: &std::path::Path) -> Broker {
    broker_on(dir, "127.0.0.1:0")
}

/// A loopback address on a port nothing listens on now, for a broker that restarts on it.
fn free_listener() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

fn broker_on(dir: &std::path::Path, listener: &str) -> Broker {
    Broker::start(BrokerConfig {
        data_dir: dir.to_path_buf(),
        kafka_listener: listener.parse().unwrap(),
        admin_listener: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        pin_shards: false,
        auto_create_topics: false,
        offsets_topic_partitions: 1,
        group_initial_rebalance_delay_ms: 0,
        mqtt: coremq_net::mqtt::MqttConfig {
            listener: None,
            ..Default::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap()
}

fn run<T: Send + 'static>(test: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    coremq_runtime::run_alone(test)
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
                coremq_runtime::spawn_local(async move {
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

/// Reads every record of `topic` from the start until `expected` came: (partition, offset,
/// key, value) in the order each partition holds them.
async fn consume_all(
    cluster: &Rc<Cluster>,
    topic: &str,
    expected: usize,
) -> Vec<(i32, i64, Option<String>, String)> {
    let consumer = Consumer::new(cluster.clone(), ConsumerConfig::default());
    consumer
        .assign(topic, &[], StartOffset::Earliest)
        .await
        .unwrap();
    let mut records = Vec::new();
    while records.len() < expected {
        for fetched in consumer.poll().await.unwrap() {
            for record in fetched.records(1 << 20).unwrap() {
                let text = |bytes: Option<bytes::Bytes>| {
                    bytes.map(|bytes| String::from_utf8(bytes.to_vec()).unwrap())
                };
                records.push((
                    fetched.partition,
                    record.offset.0 as i64,
                    text(record.key),
                    text(record.value).unwrap(),
                ));
            }
        }
    }
    records
}

/// Runs `test` with a cluster connection to a fresh in-process broker, then stops it.
fn with_cluster(test: impl AsyncFnOnce(Rc<Cluster>) + Send + 'static) {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let bootstrap = broker.kafka_address.to_string();
    run(async move || {
        let cluster = Cluster::connect(ClientConfig::new(&bootstrap))
            .await
            .unwrap();
        test(cluster).await;
    });
    broker.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn the_producer_partitions_batches_and_the_consumer_reads_back_every_record() {
    with_cluster(async |cluster| {
        cluster.create_topic("ticks", 4, 1, &[]).await.unwrap();
        let reported = Rc::new(Cell::new(0usize));
        let counter = reported.clone();
        let config = ProducerConfig {
            batch_size: 4096,
            linger: Duration::from_millis(2),
            ..ProducerConfig::default()
        };
        let producer = Producer::with_reports(
            cluster.clone(),
            config,
            Some(Box::new(move |report| {
                assert!(report.result.is_ok(), "{:?}", report.result);
                counter.set(counter.get() + report.enqueued.len());
            })),
        )
        .await
        .unwrap();
        assert!(producer.producer_id() >= 0, "idempotent by default");
        let mut deliveries = Vec::new();
        for n in 0..5000 {
            let key = format!("k{}", n % 50);
            let value = n.to_string();
            let record = ProducerRecord {
                topic: "ticks",
                key: (n % 2 == 0).then_some(key.as_bytes()),
                value: Some(value.as_bytes()),
                ..ProducerRecord::default()
            };
            deliveries.push(producer.send(record).await.unwrap());
        }
        let mut offsets = Vec::new();
        for delivery in deliveries {
            offsets.push(delivery.await.unwrap());
        }
        assert_eq!(reported.get(), 5000);

        let records = consume_all(&cluster, "ticks", 5000).await;
        assert_eq!(records.len(), 5000);
        let mut by_value = HashMap::new();
        let mut next_offset = [0i64; 4];
        for (partition, offset, key, value) in &records {
            assert_eq!(
                *offset, next_offset[*partition as usize],
                "offsets in order"
            );
            next_offset[*partition as usize] += 1;
            if let Some(key) = key {
                assert_eq!(*partition, partition_for_key(key.as_bytes(), 4), "{key}");
            }
            assert!(
                by_value
                    .insert(value.clone(), (*partition, *offset))
                    .is_none()
            );
        }
        for (n, offset) in offsets.iter().enumerate() {
            assert_eq!(
                by_value[&n.to_string()].1,
                *offset,
                "delivery offset of {n}"
            );
        }
        // Records without a key stick to a partition for a batch, not one each.
        assert!(
            next_offset.iter().all(|&count| count > 0),
            "{next_offset:?}"
        );
    });
}

#[test]
fn acks_zero_and_one_with_compression() {
    with_cluster(async |cluster| {
        for (acks, codec) in [(0, Compression::Zstd), (1, Compression::Lz4)] {
            let topic = format!("acks-{acks}");
            cluster.create_topic(&topic, 1, 1, &[]).await.unwrap();
            let config = ProducerConfig {
                acks,
                idempotent: false,
                compression: codec,
                ..ProducerConfig::default()
            };
            let producer = Producer::new(cluster.clone(), config).await.unwrap();
            let mut last = None;
            for n in 0..1000 {
                let value = format!("{n:0>100}");
                let record = ProducerRecord {
                    topic: &topic,
                    value: Some(value.as_bytes()),
                    ..ProducerRecord::default()
                };
                last = Some(producer.send(record).await.unwrap());
            }
            producer.flush().await;
            let expected = if acks == 0 { -1 } else { 999 };
            assert_eq!(last.unwrap().await.unwrap(), expected);
            let records = consume_all(&cluster, &topic, 1000).await;
            assert_eq!(records.len(), 1000);
            assert_eq!(records[999].3, format!("{:0>100}", 999));

            let consumer = Consumer::new(cluster.clone(), ConsumerConfig::default());
            consumer
                .assign(&topic, &[0], StartOffset::Earliest)
                .await
                .unwrap();
            let fetched = consumer.poll().await.unwrap();
            let header = BatchHeader::parse(&fetched[0].batches[0]).unwrap();
            assert_eq!(header.compression().unwrap(), codec);
        }
    });
}

#[test]
fn idempotent_retries_across_a_broker_restart_store_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let listener = free_listener();
    let broker = broker_on(dir.path(), &listener);
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (go_on, resume) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn({
        let listener = listener.clone();
        move || {
            run(async move || {
                let mut config = ClientConfig::new(&listener);
                config.request_timeout = Duration::from_secs(2);
                let cluster = Cluster::connect(config).await.unwrap();
                cluster.create_topic("orders", 2, 1, &[]).await.unwrap();
                let producer = Producer::new(cluster.clone(), ProducerConfig::default())
                    .await
                    .unwrap();
                let send = async |range: std::ops::Range<u32>| {
                    let mut deliveries = Vec::new();
                    for n in range {
                        let value = n.to_string();
                        let record = ProducerRecord {
                            topic: "orders",
                            key: Some(value.as_bytes()),
                            value: Some(value.as_bytes()),
                            ..ProducerRecord::default()
                        };
                        deliveries.push(producer.send(record).await.unwrap());
                    }
                    deliveries
                };
                for delivery in send(0..1000).await {
                    delivery.await.unwrap();
                }
                stop.send(()).unwrap();
                resume.recv().unwrap();
                // The broker is down: these are retried until it is back.
                let deliveries = send(1000..2000).await;
                for delivery in deliveries {
                    delivery.await.unwrap();
                }
                let records = consume_all(&cluster, "orders", 2000).await;
                let mut values: Vec<u32> = records.iter().map(|r| r.3.parse().unwrap()).collect();
                values.sort();
                assert_eq!(values, (0..2000).collect::<Vec<_>>());
            })
        }
    });
    stopped.recv().unwrap();
    broker.shutdown(Duration::from_secs(5)).unwrap();
    go_on.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let broker = broker_on(dir.path(), &listener);
    client.join().unwrap();
    broker.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn callers_reconnecting_at_once_share_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let listener = free_listener();
    let broker = broker_on(dir.path(), &listener);
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (go_on, resume) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn({
        let listener = listener.clone();
        move || {
            run(async move || {
                let cluster = Cluster::connect(ClientConfig::new(&listener))
                    .await
                    .unwrap();
                let before = cluster.broker(0).await.unwrap();
                stop.send(()).unwrap();
                resume.recv().unwrap();
                until("the connection to the stopped broker breaks", || {
                    before.is_broken()
                })
                .await;
                // Eight callers at once find no connection to the restarted broker: one
                // opens it and the others wait for it (two connections to one broker
                // could reorder an idempotent producer's batches).
                let callers: Vec<_> = (0..8)
                    .map(|_| {
                        let cluster = cluster.clone();
                        coremq_runtime::spawn_local(async move { cluster.broker(0).await.unwrap() })
                    })
                    .collect();
                let mut connections = Vec::new();
                for caller in callers {
                    connections.push(caller.await);
                }
                assert!(!Rc::ptr_eq(&connections[0], &before));
                assert!(
                    connections
                        .iter()
                        .all(|connection| Rc::ptr_eq(connection, &connections[0])),
                    "one connection for all eight"
                );
            })
        }
    });
    stopped.recv().unwrap();
    broker.shutdown(Duration::from_secs(5)).unwrap();
    let broker = broker_on(dir.path(), &listener);
    go_on.send(()).unwrap();
    client.join().unwrap();
    broker.shutdown(Duration::from_secs(5)).unwrap();
}

/// Produces `values` to `topic` and waits for every acknowledgement.
async fn produce_values(cluster: &Rc<Cluster>, topic: &str, values: std::ops::Range<u32>) {
    let producer = Producer::new(cluster.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for n in values {
        let value = n.to_string();
        let record = ProducerRecord {
            topic,
            value: Some(value.as_bytes()),
            ..ProducerRecord::default()
        };
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
}

/// What the members of a test group saw: every value consumed (repeats included) and
/// each member's current assignment.
#[derive(Default)]
struct GroupLog {
    consumed: Vec<String>,
    assignments: BTreeMap<String, Vec<i32>>,
}

/// Runs a group member until `leave` is set: joins, records what it consumes and holds,
/// then leaves the group.
fn spawn_member(
    bootstrap: String,
    name: &'static str,
    log: Rc<RefCell<GroupLog>>,
    leave: Rc<Cell<bool>>,
) -> coremq_runtime::Task<()> {
    coremq_runtime::spawn_local(async move {
        let cluster = Cluster::connect(ClientConfig::new(&bootstrap))
            .await
            .unwrap();
        let consumer_config = ConsumerConfig {
            max_wait: Duration::from_millis(100),
            reset: StartOffset::Earliest,
            ..ConsumerConfig::default()
        };
        let group_config = GroupConfig {
            heartbeat_interval: Duration::from_millis(100),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            auto_commit: Some(Duration::from_millis(200)),
            ..GroupConfig::new("audit")
        };
        let member = GroupConsumer::join(cluster, consumer_config, group_config, &["orders"])
            .await
            .unwrap();
        while !leave.get() {
            let fetched = member.poll().await.unwrap();
            let mut log = log.borrow_mut();
            let held = member.assignment().iter().map(|(_, p)| *p).collect();
            log.assignments.insert(name.to_string(), held);
            for part in fetched {
                for record in part.records(1 << 20).unwrap() {
                    let value = record.value.unwrap();
                    log.consumed
                        .push(String::from_utf8(value.to_vec()).unwrap());
                }
            }
        }
        log.borrow_mut().assignments.remove(name);
        member.leave().await.unwrap();
    })
}

/// Waits (polling every 20 ms, at most 30 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if done() {
            return;
        }
        coremq_runtime::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

#[test]
fn a_group_shares_partitions_rebalances_and_resumes_from_its_commits() {
    with_cluster(async |cluster| {
        let bootstrap = cluster.config().bootstrap.join(",");
        cluster.create_topic("orders", 6, 1, &[]).await.unwrap();
        produce_values(&cluster, "orders", 0..3000).await;

        let log = Rc::new(RefCell::new(GroupLog::default()));
        let leave: Vec<Rc<Cell<bool>>> = (0..3).map(|_| Rc::default()).collect();
        let members: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .zip(&leave)
            .map(|(name, leave)| spawn_member(bootstrap.clone(), name, log.clone(), leave.clone()))
            .collect();
        let split_over = |count: usize| {
            let log = log.borrow();
            let mut held: Vec<i32> = log.assignments.values().flatten().copied().collect();
            held.sort();
            log.assignments.len() == count
                && log
                    .assignments
                    .values()
                    .all(|partitions| partitions.len() == 6 / count)
                && held == (0..6).collect::<Vec<_>>()
        };
        until(
            "three members hold two partitions each and read everything",
            || split_over(3) && log.borrow().consumed.len() >= 3000,
        )
        .await;

        // One member leaves (committing first); the other two take its partitions and
        // go on from the committed offsets.
        leave[0].set(true);
        until("the two left hold three partitions each", || split_over(2)).await;
        produce_values(&cluster, "orders", 3000..3600).await;
        until("the new records are read", || {
            log.borrow().consumed.len() >= 3600
        })
        .await;
        coremq_runtime::sleep(Duration::from_millis(500)).await;
        for flag in &leave {
            flag.set(true);
        }
        for member in members {
            member.await;
        }
        let mut times = vec![0; 3600];
        for value in &log.borrow().consumed {
            times[value.parse::<usize>().unwrap()] += 1;
        }
        let missing = times.iter().filter(|&&n| n == 0).count();
        let again = times.iter().filter(|&&n| n > 1).count();
        assert_eq!(
            (missing, again),
            (0, 0),
            "records missed, records read again"
        );
    });
}
