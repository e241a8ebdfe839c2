//! Three real `coremq` processes as one cluster (`--controller-voters`, loopback ports, one
//! shard each), driven with kcat and the wire client: one metadata view on every broker,
//! partitions spread over the brokers, producer ids unique cluster-wide, and the loss of
//! the controller: the two left elect another, fence the lost broker and keep serving; the
//! lost broker, restarted, rejoins and leads its partitions again with its records.
//!
//! A topic with one replica per partition goes offline with its broker; a topic with three
//! (min.insync.replicas=2) keeps every acknowledged record through SIGKILLs and SIGSTOPs of
//! its leaders, with confluent-kafka producing and reading (`tests/python/replicated.py`),
//! and its replicas end byte-for-byte identical.
//!
//! A leader cut off from the other brokers (each broker in its own network namespace,
//! `support/netns.rs`) stops acknowledging acks=all writes, the others elect a leader and
//! carry on, and once healed the old leader drops what only it wrote and catches up.
//!
//! Replicas move between brokers (AlterPartitionReassignments from kafka-python) under an
//! idempotent producer without losing a record, a move is listed and cancelled, and a
//! fourth broker outside the voters (an observer) joins and takes a partition. With no
//! controller (two voters of three gone), auto-creation answers LEADER_NOT_AVAILABLE. A
//! consumer group keeps its member, generation and partitions when its coordinator is
//! SIGKILLed (the new coordinator replays the stored membership).
//!
//! MQTT clients of every broker publish to one log: a broker that does not lead the
//! partition hands the batch to its leader, and subscribers on every broker read their own
//! replica.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/kcat.rs"]
mod kcat;
#[path = "support/mosquitto.rs"]
mod mosquitto;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/python.rs"]
mod python;
#[path = "support/raw_mqtt.rs"]
mod raw_mqtt;
#[path = "support/wire.rs"]
mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::{Broker, free_port};
use coremq_net::mqtt::codec::{Level, Packet, Properties, QoS, reason};
use coremq_net::protocol::api::{RequestBody, ResponseBody};
use coremq_net::protocol::error_code;
use coremq_net::protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic,
};
use coremq_net::protocol::messages::{
    CreateTopicsRequest, FindCoordinatorRequest, InitProducerIdRequest,
};
use netns::Network;
use raw_mqtt::Raw;
use serde_json::Value;
use wire::Wire;

const BROKERS: usize = 3;

/// Starts three brokers, each a controller voter, and waits until all are ready. Ports are
/// free when picked but another test may take one before it is bound: then the whole
/// cluster starts again on others.
fn start_cluster(dir: &Path, partitions: u32) -> Vec<Broker> {
    start_cluster_of(dir, partitions).0
}

/// [`start_cluster`], with the `--controller-voters` the brokers were given.
fn start_cluster_of(dir: &Path, partitions: u32) -> (Vec<Broker>, String) {
    let mut failures = Vec::new();
    for attempt in 0..3 {
        let kafka: Vec<u16> = (0..BROKERS).map(|_| free_port()).collect();
        let admin: Vec<u16> = (0..BROKERS).map(|_| free_port()).collect();
        let voters = (0..BROKERS)
            .map(|id| format!("{id}@127.0.0.1:{}", free_port()))
            .collect::<Vec<_>>()
            .join(",");
        let mut brokers: Vec<Broker> = (0..BROKERS)
            .map(|id| {
                let data = dir.join(format!("try{attempt}-broker{id}"));
                let flags = cluster_flags(id, &voters, partitions);
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                Broker::spawn(
                    &data,
                    &format!("127.0.0.1:{}", kafka[id]),
                    admin[id],
                    &flags,
                )
            })
            .collect();
        let started: Result<(), String> = brokers
            .iter_mut()
            .try_for_each(|broker| broker.wait_ready(Duration::from_secs(60)));
        match started {
            Ok(()) => return (brokers, voters),
            Err(failure) => failures.push(failure),
        }
    }
    panic!("the cluster did not start: {failures:#?}");
}

/// The flags of broker `id` in a cluster of `voters`: one shard, `partitions` partitions
/// for topics created on first use.
fn cluster_flags(id: usize, voters: &str, partitions: u32) -> Vec<String> {
    vec![
        "--node-id".to_string(),
        id.to_string(),
        "--controller-voters".into(),
        voters.into(),
        "--shards".into(),
        "1".into(),
        "--default-partitions".into(),
        partitions.to_string(),
    ]
}

/// Starts three brokers, each in its own namespace of `network` on its own address (the
/// same ports on each), and waits until all are ready.
fn start_cluster_in(network: &Network, dir: &Path, partitions: u32) -> Vec<Broker> {
    let voters = (0..BROKERS)
        .map(|id| format!("{id}@{}:9093", network.address(id)))
        .collect::<Vec<_>>()
        .join(",");
    let mut brokers: Vec<Broker> = (0..BROKERS)
        .map(|id| {
            let flags = cluster_flags(id, &voters, partitions);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            Broker::spawn_in(
                &network.netns(id),
                &network.address(id),
                &dir.join(format!("broker{id}")),
                9092,
                9190,
                &flags,
            )
        })
        .collect();
    for id in 0..BROKERS {
        brokers[id]
            .wait_ready(Duration::from_secs(60))
            .unwrap_or_else(|failure| panic!("broker {id} starts: {failure}\n{}", logs(&brokers)));
    }
    brokers
}

fn kcat(broker: &Broker, args: &[&str], input: &str) -> Result<String, String> {
    kcat::run(&broker.bootstrap(), args, input)
}

fn metadata(broker: &Broker) -> Value {
    let listed = kcat(broker, &["-L", "-J"], "").expect("kcat -L answers");
    serde_json::from_str(&listed).expect("kcat -J prints JSON")
}

/// The ids of the brokers Metadata lists.
fn broker_ids(metadata: &Value) -> BTreeSet<i64> {
    metadata["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|broker| broker["id"].as_i64().unwrap())
        .collect()
}

/// The leader of each partition of `topic` (-1: none), in partition order.
fn leaders(metadata: &Value, topic: &str) -> Vec<i64> {
    let Some(found) = metadata["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|listed| listed["topic"] == topic)
    else {
        return Vec::new();
    };
    let mut partitions: Vec<(i64, i64)> = found["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["leader"].as_i64().unwrap(),
            )
        })
        .collect();
    partitions.sort_unstable();
    partitions.into_iter().map(|(_, leader)| leader).collect()
}

/// Polls `condition` on `broker`'s metadata until it holds; the last metadata if it never
/// does within `patience`.
fn await_metadata(
    broker: &Broker,
    patience: Duration,
    condition: impl Fn(&Value) -> bool,
) -> Result<Value, Value> {
    let deadline = Instant::now() + patience;
    loop {
        let seen = metadata(broker);
        if condition(&seen) {
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            return Err(seen);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every payload of `topic`, from every partition, sorted.
fn consume_all(broker: &Broker, topic: &str) -> Vec<String> {
    let consumed = kcat(broker, &["-C", "-t", topic, "-e", "-J", "-q"], "")
        .unwrap_or_else(|error| panic!("kcat consumes {topic}: {error}"));
    let mut payloads: Vec<String> = consumed
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).expect("kcat -J prints JSON");
            record["payload"].as_str().unwrap().to_string()
        })
        .collect();
    payloads.sort();
    payloads
}

fn produce(broker: &Broker, topic: &str, payloads: &[String]) {
    let input: String = payloads
        .iter()
        .map(|payload| format!("{payload}:{payload}\n"))
        .collect();
    kcat(
        broker,
        &["-P", "-t", topic, "-K:", "-X", "acks=all"],
        &input,
    )
    .unwrap_or_else(|error| panic!("kcat produces to {topic}: {error}"));
}

fn init_producer_id(broker: &Broker) -> i64 {
    let mut wire = Wire::connect(broker.bootstrap());
    let request = InitProducerIdRequest {
        transactional_id: None,
        transaction_timeout_ms: 60_000,
        producer_id: -1,
        producer_epoch: -1,
    };
    let ResponseBody::InitProducerId(response) = wire.call(4, RequestBody::InitProducerId(request))
    else {
        panic!("not an InitProducerId response");
    };
    assert_eq!(response.error_code, error_code::NONE);
    response.producer_id
}

/// Produces to `partition` of `topic` on `broker` at Produce v11: the error, the current
/// leader it names (KIP-951) and the endpoints the answer carries.
fn produce_elsewhere(broker: &Broker, topic: &str, partition: i32) -> (i16, i32, Vec<(i32, i32)>) {
    use coremq_net::protocol::codec::Records;
    use coremq_net::protocol::messages::ProduceRequest;
    use coremq_net::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let mut wire = Wire::connect(broker.bootstrap());
    let request = ProduceRequest {
        acks: 1,
        timeout_ms: 5_000,
        topic_data: vec![TopicProduceData {
            name: topic.into(),
            partition_data: vec![PartitionProduceData {
                index: partition,
                records: Some(Records::default()),
            }],
        }],
        ..ProduceRequest::default()
    };
    let ResponseBody::Produce(response) = wire.call(11, RequestBody::Produce(request)) else {
        panic!("not a Produce response");
    };
    let answer = &response.responses[0].partition_responses[0];
    let endpoints = response
        .node_endpoints
        .iter()
        .map(|endpoint| (endpoint.node_id, endpoint.port))
        .collect();
    (
        answer.error_code,
        answer.current_leader.leader_id,
        endpoints,
    )
}

/// The broker coordinating `group`.
fn find_coordinator(broker: &Broker, group: &str) -> i32 {
    coordinator_of(broker, group).expect("a coordinator")
}

/// The broker coordinating `group` as `broker` answers, if it names one.
fn coordinator_of(broker: &Broker, group: &str) -> Option<i32> {
    let mut wire = Wire::connect(broker.bootstrap());
    let request = FindCoordinatorRequest {
        key: group.into(),
        key_type: 0,
        coordinator_keys: Vec::new(),
    };
    let ResponseBody::FindCoordinator(response) =
        wire.call(3, RequestBody::FindCoordinator(request))
    else {
        panic!("not a FindCoordinator response");
    };
    (response.error_code == error_code::NONE).then_some(response.node_id)
}

fn create_topic(broker: &Broker, topic: CreatableTopic) -> (i16, String) {
    let mut wire = Wire::connect(broker.bootstrap());
    let request = CreateTopicsRequest {
        topics: vec![topic],
        timeout_ms: 30_000,
        ..CreateTopicsRequest::default()
    };
    let ResponseBody::CreateTopics(response) = wire.call(7, RequestBody::CreateTopics(request))
    else {
        panic!("not a CreateTopics response");
    };
    let result = &response.topics[0];
    (
        result.error_code,
        result.error_message.clone().unwrap_or_default(),
    )
}

fn logs(brokers: &[Broker]) -> String {
    brokers
        .iter()
        .enumerate()
        .map(|(id, broker)| format!("--- broker {id}:\n{}", broker.log()))
        .collect()
}

/// Waits up to 30 s for `done`, polling each 100 ms; fails naming `what`, with the logs.
fn eventually(brokers: &[Broker], what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}\n{}", logs(brokers));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `broker` keeps aside exactly one session another broker stored.
fn keeps_one_session_aside(broker: &Broker) -> bool {
    broker
        .http_get("/metrics")
        .1
        .contains("coremq_mqtt_sessions_elsewhere 1")
}

#[test]
fn three_brokers_share_one_metadata_view_and_spread_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = start_cluster(dir.path(), 6);
    let all: BTreeSet<i64> = (0..BROKERS as i64).collect();
    for broker in &brokers {
        let seen = metadata(broker);
        assert_eq!(broker_ids(&seen), all, "every broker lists all three");
        assert!(
            all.contains(&seen["controllerid"].as_i64().unwrap()),
            "a voter is the controller: {seen}"
        );
    }
    let payloads: Vec<String> = (0..120).map(|n| format!("record-{n:03}")).collect();
    produce(&brokers[0], "spread", &payloads);
    let placed = leaders(&metadata(&brokers[1]), "spread");
    assert_eq!(placed.len(), 6);
    let leading: BTreeSet<i64> = placed.iter().copied().collect();
    assert_eq!(leading, all, "six partitions are led by all three brokers");
    for broker in &brokers {
        assert_eq!(consume_all(broker, "spread"), payloads);
    }

    // A produce to a broker that does not lead the partition names the leader (KIP-951).
    let (partition, leader) = placed
        .iter()
        .enumerate()
        .find(|&(_, &leader)| leader != 0)
        .map(|(partition, &leader)| (partition as i32, leader as i32))
        .unwrap();
    let hint = produce_elsewhere(&brokers[0], "spread", partition);
    assert_eq!(hint.0, error_code::NOT_LEADER_OR_FOLLOWER);
    assert_eq!(hint.1, leader, "the current leader's id");
    assert_eq!(
        hint.2,
        vec![(leader, brokers[leader as usize].port as i32)],
        "and its endpoint"
    );

    let ids: BTreeSet<i64> = brokers
        .iter()
        .flat_map(|broker| [init_producer_id(broker), init_producer_id(broker)])
        .collect();
    assert_eq!(
        ids.len(),
        2 * BROKERS,
        "producer ids are unique cluster-wide"
    );

    let (code, message) = create_topic(
        &brokers[2],
        CreatableTopic {
            name: "replicated".into(),
            num_partitions: 1,
            replication_factor: 4,
            ..CreatableTopic::default()
        },
    );
    assert_eq!(
        code,
        error_code::INVALID_REPLICATION_FACTOR,
        "more replicas than brokers: {message}"
    );
    // Explicit placement: the replicas asked for, the first leading; a broker named twice
    // or not registered is refused.
    let placed = |name: &str, broker_ids: Vec<i32>| {
        create_topic(
            &brokers[2],
            CreatableTopic {
                name: name.into(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: vec![CreatableReplicaAssignment {
                    partition_index: 0,
                    broker_ids,
                }],
                ..CreatableTopic::default()
            },
        )
    };
    let (code, message) = placed("placed", vec![1, 2]);
    assert_eq!(code, error_code::NONE, "explicit placement: {message}");
    await_metadata(&brokers[0], Duration::from_secs(10), |seen| {
        leaders(seen, "placed") == [1] && in_sync(seen, "placed") == [2]
    })
    .unwrap_or_else(|seen| panic!("placed on brokers 1 and 2: {seen}"));
    for wrong in [vec![1, 1], vec![7]] {
        let (code, message) = placed("misplaced", wrong.clone());
        assert_eq!(
            code,
            error_code::INVALID_REPLICA_ASSIGNMENT,
            "{wrong:?}: {message}"
        );
    }
    assert!(broker_ids(&metadata(&brokers[0])).len() == BROKERS);
    assert!(leaders(&metadata(&brokers[0]), "replicated").is_empty());
}

#[test]
fn losing_the_controller_elects_another_fences_the_lost_broker_and_it_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let mut brokers = start_cluster(dir.path(), 6);
    let payloads: Vec<String> = (0..60).map(|n| format!("before-{n:02}")).collect();
    produce(&brokers[0], "kept", &payloads);
    let before = metadata(&brokers[0]);
    let controller = before["controllerid"].as_i64().unwrap() as usize;
    let placed = leaders(&before, "kept");
    assert!(placed.contains(&(controller as i64)), "{before}");

    brokers[controller].stop_with("-KILL");
    let survivor = &brokers[(controller + 1) % BROKERS];
    let after = await_metadata(survivor, Duration::from_secs(30), |seen| {
        let controller_moved = seen["controllerid"].as_i64().unwrap() != controller as i64;
        let fenced = !broker_ids(seen).contains(&(controller as i64));
        let offline = leaders(seen, "kept")
            .iter()
            .zip(&placed)
            .all(|(&now, &was)| now == if was == controller as i64 { -1 } else { was });
        controller_moved && fenced && offline
    })
    .unwrap_or_else(|seen| {
        panic!(
            "the survivors elect a controller and fence broker {controller}: {seen}\n{}",
            logs(&brokers)
        )
    });
    assert_eq!(broker_ids(&after).len(), BROKERS - 1);

    // The two left create and serve topics on their own.
    let fresh: Vec<String> = (0..30).map(|n| format!("during-{n:02}")).collect();
    produce(survivor, "fresh", &fresh);
    let fresh_leaders: BTreeSet<i64> = leaders(&metadata(survivor), "fresh").into_iter().collect();
    assert!(!fresh_leaders.contains(&(controller as i64)));
    assert!(!fresh_leaders.contains(&-1));
    assert_eq!(consume_all(survivor, "fresh"), fresh);

    brokers[controller].respawn();
    brokers[controller]
        .wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|failure| panic!("the lost broker restarts: {failure}"));
    let survivor = &brokers[(controller + 1) % BROKERS];
    await_metadata(survivor, Duration::from_secs(30), |seen| {
        broker_ids(seen).len() == BROKERS && leaders(seen, "kept") == placed
    })
    .unwrap_or_else(|seen| {
        panic!(
            "broker {controller} rejoins and leads its partitions again: {seen}\n{}",
            logs(&brokers)
        )
    });
    assert_eq!(consume_all(survivor, "kept"), payloads);
}

#[test]
fn two_voters_left_of_three_keep_their_sessions() {
    // The controller is killed: its port refuses every connection the others' Raft
    // messages try, a refusal each 100 ms, which must neither starve their heartbeats nor
    // fence them.
    let dir = tempfile::tempdir().unwrap();
    let mut brokers = start_cluster(dir.path(), 1);
    let controller = metadata(&brokers[0])["controllerid"].as_i64().unwrap() as usize;
    brokers[controller].stop_with("-KILL");
    let left: Vec<usize> = (0..BROKERS).filter(|&id| id != controller).collect();
    let before: Vec<usize> = left.iter().map(|&id| brokers[id].log().len()).collect();
    // Once it is fenced, new topics are placed on the two left only.
    await_metadata(&brokers[left[0]], Duration::from_secs(30), |seen| {
        !broker_ids(seen).contains(&(controller as i64))
    })
    .unwrap_or_else(|seen| panic!("broker {controller} is fenced: {seen}\n{}", logs(&brokers)));
    let payloads: Vec<String> = (0..20).map(|n| format!("two-{n:02}")).collect();
    produce(&brokers[left[0]], "pair", &payloads);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(consume_all(&brokers[left[1]], "pair"), payloads);
    let live: BTreeSet<i64> = left.iter().map(|&id| id as i64).collect();
    assert_eq!(broker_ids(&metadata(&brokers[left[1]])), live);
    for (&id, logged) in left.iter().zip(before) {
        let since = &brokers[id].log()[logged..];
        for other in &left {
            assert!(
                !since.contains(&format!("broker {other} fenced")),
                "broker {other}, in session, was fenced: {}",
                logs(&brokers)
            );
        }
    }
}

/// Starts broker 3 outside `voters` (an observer, following the metadata log) with its data
/// in `data`, and waits until it is ready.
fn start_observer(brokers: &mut Vec<Broker>, voters: &str, data: &Path) {
    let flags = cluster_flags(3, voters, 1);
    let listener = format!("127.0.0.1:{}", free_port());
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    flags.extend(["--controller-listener", &listener]);
    let kafka = format!("127.0.0.1:{}", free_port());
    brokers.push(Broker::spawn(data, &kafka, free_port(), &flags));
    brokers[3]
        .wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|failure| panic!("broker 3 starts: {failure}\n{}", logs(brokers)));
}

#[test]
fn an_observer_joins_takes_a_partition_moved_onto_it_and_is_fenced_once_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut brokers, voters) = start_cluster_of(dir.path(), 1);
    // Broker 3 is not a voter: it follows the metadata log from the voters.
    start_observer(&mut brokers, &voters, &dir.path().join("observer"));
    let all: BTreeSet<i64> = (0..4).collect();
    await_metadata(&brokers[0], Duration::from_secs(10), |seen| {
        broker_ids(seen) == all
    })
    .unwrap_or_else(|seen| panic!("four brokers: {seen}"));
    assert!(brokers[3].log().contains("observing the controller quorum"));
    assert_eq!(
        broker_ids(&metadata(&brokers[3])),
        all,
        "the observer's own view"
    );

    // A partition on voters 0 and 1 moves to the new broker and 1 while a producer runs.
    let bootstrap = bootstrap_of(&brokers);
    succeeded(
        replicated(&[&bootstrap, "assigned", "onto", "0,1"]),
        &brokers,
    );
    let (producer, acked, stop) = produce_until_stopped(dir.path(), &bootstrap, "onto");
    std::thread::sleep(Duration::from_secs(2));
    succeeded(replicated(&[&bootstrap, "move", "onto", "3,1"]), &brokers);
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, "").unwrap();
    succeeded(producer, &brokers);
    succeeded(
        replicated(&[&bootstrap, "verify", "onto", acked.to_str().unwrap()]),
        &brokers,
    );
    await_identical(&[&brokers[3], &brokers[1]], "onto", 1);

    // Killed, the observer is fenced (its controller port refuses) and broker 1 leads;
    // restarted, it is back in session and in sync.
    brokers[3].stop_with("-KILL");
    let voters_only: BTreeSet<i64> = (0..3).collect();
    await_metadata(&brokers[0], Duration::from_secs(10), |seen| {
        broker_ids(seen) == voters_only && leaders(seen, "onto") == [1]
    })
    .unwrap_or_else(|seen| panic!("the observer fenced: {seen}\n{}", logs(&brokers)));
    brokers[3].respawn();
    brokers[3]
        .wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|failure| panic!("the observer restarts: {failure}"));
    await_metadata(&brokers[0], Duration::from_secs(30), |seen| {
        broker_ids(seen) == all && in_sync(seen, "onto") == [2]
    })
    .unwrap_or_else(|seen| panic!("the observer back in sync: {seen}\n{}", logs(&brokers)));
}

/// `GET /v1/cluster` from `broker`'s admin listener.
fn cluster_health(broker: &Broker) -> Value {
    let (status, body) = broker.http_get("/v1/cluster");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Replicas each unfenced broker holds, by id, from `GET /v1/cluster`.
fn replica_loads(health: &Value) -> BTreeMap<i64, u64> {
    health["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|broker| broker["fenced"] == false)
        .map(|broker| {
            (
                broker["id"].as_i64().unwrap(),
                broker["replicas"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Whether nothing is moving or under-replicated.
fn settled(health: &Value) -> bool {
    health["reassigning_partitions"] == 0 && health["under_replicated_partitions"] == 0
}

#[test]
fn the_admin_api_rebalances_replicas_onto_an_added_broker_and_drains_one_to_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut brokers, voters) = start_cluster_of(dir.path(), 1);
    let (code, message) = create_topic(
        &brokers[0],
        CreatableTopic {
            name: "spread".into(),
            num_partitions: 6,
            replication_factor: 2,
            ..CreatableTopic::default()
        },
    );
    assert_eq!(code, 0, "{message}");
    start_observer(&mut brokers, &voters, &dir.path().join("added"));
    eventually(&brokers, "four live brokers, nothing moving", || {
        let health = cluster_health(&brokers[0]);
        replica_loads(&health).len() == 4 && settled(&health)
    });
    let before = cluster_health(&brokers[0]);
    assert!(
        before["controller_id"].as_i64().is_some_and(|id| id < 3),
        "{before}"
    );
    assert_eq!(replica_loads(&before)[&3], 0, "{before}");
    assert!(
        before["replication_factor_max"].as_u64() >= Some(2),
        "{before}"
    );

    // Rebalanced, the added broker takes replicas until the loads differ by one at most.
    let (status, body) = brokers[0]
        .try_http("POST", "/v1/partitions/rebalance")
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert!(!answer["moves"].as_array().unwrap().is_empty(), "{body}");
    eventually(&brokers, "the replicas spread over four brokers", || {
        let health = cluster_health(&brokers[1]);
        let loads = replica_loads(&health);
        let (low, high) = (loads.values().min(), loads.values().max());
        settled(&health) && loads.len() == 4 && high.zip(low).is_some_and(|(h, l)| h - l <= 1)
    });

    // Drained, it gives every replica up, and the topic still serves.
    let (status, body) = brokers[2].try_http("POST", "/v1/brokers/3/drain").unwrap();
    assert_eq!(status, 202, "{body}");
    eventually(&brokers, "broker 3 holds nothing", || {
        let health = cluster_health(&brokers[0]);
        settled(&health) && replica_loads(&health)[&3] == 0
    });
    let payloads: Vec<String> = (0..20).map(|n| format!("after-drain-{n}")).collect();
    produce(&brokers[0], "spread", &payloads);
    let mut expected = payloads.clone();
    expected.sort();
    assert_eq!(consume_all(&brokers[1], "spread"), expected);

    // A voter cannot be drained where its replicas have nowhere to go; wrong requests are
    // refused with their status.
    brokers[3].stop_with("-TERM");
    eventually(&brokers, "broker 3 fenced", || {
        replica_loads(&cluster_health(&brokers[0])).len() == 3
    });
    let (status, body) = brokers[0].try_http("POST", "/v1/brokers/0/drain").unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("already on every other live broker"),
        "{body}"
    );
    assert_eq!(
        brokers[0].try_http("GET", "/v1/brokers/0/drain").unwrap().0,
        405
    );
    assert_eq!(
        brokers[0]
            .try_http("POST", "/v1/brokers/x/drain")
            .unwrap()
            .0,
        400
    );
    assert_eq!(brokers[0].try_http("GET", "/v1/nothing").unwrap().0, 404);
}

#[test]
fn a_broker_outside_the_voters_without_a_controller_listener_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let voters = format!("0@127.0.0.1:{},1@127.0.0.1:{}", free_port(), free_port());
    let mut broker = Broker::spawn(
        &dir.path().join("data"),
        &format!("127.0.0.1:{}", free_port()),
        free_port(),
        &[
            "--node-id",
            "7",
            "--controller-voters",
            &voters,
            "--shards",
            "1",
        ],
    );
    let failure = broker
        .wait_ready(Duration::from_secs(20))
        .expect_err("a broker that is not a voter does not start");
    assert!(
        failure.contains("not among the controller voters"),
        "{failure}"
    );
}

/// `tests/python/replicated.py` with `args`, started.
fn replicated(args: &[&str]) -> Child {
    Command::new(python::interpreter())
        .arg(python::scripts().join("replicated.py"))
        .args(args)
        .current_dir(python::scripts())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs")
}

/// Waits for `child` and fails the test with its output unless it exits 0.
fn succeeded(child: Child, brokers: &[Broker]) -> String {
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "replicated.py failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        logs(brokers)
    );
    println!("{stdout}");
    stdout
}

/// The in-sync replica count of each partition of `topic`.
fn in_sync(metadata: &Value, topic: &str) -> Vec<usize> {
    metadata["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|listed| listed["topic"] == topic)
        .flat_map(|listed| listed["partitions"].as_array().unwrap())
        .map(|partition| partition["isrs"].as_array().map_or(0, Vec::len))
        .collect()
}

/// The batches of `topic`'s `partition` on `broker`, every segment's in offset order (the
/// zeros after an active segment's last batch left out: their length depends on how the
/// file grew, not on what it holds).
fn stored(broker: &Broker, topic: &str, partition: usize) -> Vec<u8> {
    let dir = broker
        .data_dir
        .join("logs")
        .join(format!("{topic}-{partition}"));
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    segments.sort();
    let mut batches = Vec::new();
    for path in segments {
        let bytes = std::fs::read(path).unwrap();
        let mut at = 0;
        while let Ok(header) = coremq_engine::BatchHeader::parse(&bytes[at..]) {
            if at + header.total_bytes() > bytes.len() {
                break;
            }
            batches.extend_from_slice(&bytes[at..at + header.total_bytes()]);
            at += header.total_bytes();
        }
    }
    batches
}

fn signal(broker: &Broker, name: &str) {
    let status = Command::new("kill")
        .args([name, &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A cluster with `topic`: three partitions, three replicas in sync, min.insync.replicas=2;
/// the brokers and the bootstrap list of all three.
fn replicated_cluster(dir: &Path, topic: &str) -> (Vec<Broker>, String) {
    let brokers = start_cluster(dir, 1);
    let bootstrap = bootstrap_of(&brokers);
    succeeded(replicated(&[&bootstrap, "create", topic, "3"]), &brokers);
    (brokers, bootstrap)
}

/// The bootstrap list of all `brokers`.
fn bootstrap_of(brokers: &[Broker]) -> String {
    brokers
        .iter()
        .map(Broker::bootstrap)
        .collect::<Vec<_>>()
        .join(",")
}

/// `replicated.py produce` to `topic` until the file it is given (the third value) exists;
/// the second is where it writes what was acknowledged.
fn produce_until_stopped(
    dir: &Path,
    bootstrap: &str,
    topic: &str,
) -> (Child, std::path::PathBuf, std::path::PathBuf) {
    let acked = dir.join("acked.json");
    let stop = dir.join("stop");
    let until = format!("until:{}", stop.display());
    let producer = replicated(&[bootstrap, "produce", topic, &until, acked.to_str().unwrap()]);
    (producer, acked, stop)
}

#[test]
fn killed_and_stopped_leaders_lose_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut brokers, bootstrap) = replicated_cluster(dir.path(), "quotes");
    let acked = dir.path().join("acked.json");
    let producer = replicated(&[
        &bootstrap,
        "produce",
        "quotes",
        "24",
        acked.to_str().unwrap(),
    ]);
    // Four faults on the leaders of the partitions in turn: a SIGKILL and a restart, a
    // SIGSTOP for three session timeouts and a SIGCONT, a SIGTERM (a controlled shutdown,
    // which hands the leaderships away first) and a restart, another SIGKILL.
    for (round, fault) in ["-KILL", "-STOP", "-TERM", "-KILL"].into_iter().enumerate() {
        std::thread::sleep(Duration::from_secs(2));
        let seen = metadata(&brokers[(round + 1) % BROKERS]);
        let leader = leaders(&seen, "quotes")[round % 3];
        assert!(leader >= 0, "partition {} has a leader: {seen}", round % 3);
        let victim = leader as usize;
        match fault {
            "-STOP" => {
                signal(&brokers[victim], "-STOP");
                std::thread::sleep(Duration::from_millis(4500));
                signal(&brokers[victim], "-CONT");
            }
            "-TERM" => {
                let status = brokers[victim].stop();
                assert!(status.success(), "{}", brokers[victim].log());
                assert!(
                    brokers[victim]
                        .log()
                        .contains(&format!("broker {victim} leads no partition any more")),
                    "a controlled shutdown: {}",
                    brokers[victim].log()
                );
            }
            _ => {
                brokers[victim].stop_with("-KILL");
                std::thread::sleep(Duration::from_secs(3));
            }
        }
        if !brokers[victim].is_running() {
            brokers[victim].respawn();
            brokers[victim]
                .wait_ready(Duration::from_secs(60))
                .unwrap_or_else(|failure| panic!("broker {victim} restarts: {failure}"));
        }
    }
    succeeded(producer, &brokers);
    await_metadata(&brokers[0], Duration::from_secs(60), |seen| {
        in_sync(seen, "quotes") == [3, 3, 3]
    })
    .unwrap_or_else(|seen| {
        panic!(
            "every replica rejoins the in-sync set: {seen}\n{}",
            logs(&brokers)
        )
    });
    succeeded(
        replicated(&[&bootstrap, "verify", "quotes", acked.to_str().unwrap()]),
        &brokers,
    );
    // The group's coordinator dies: the leader of its `__consumer_offsets` partition moves
    // to a replica, which replays the commits.
    let coordinator = find_coordinator(&brokers[0], "replicated-group") as usize;
    brokers[coordinator].stop_with("-KILL");
    let others: Vec<String> = (0..BROKERS)
        .filter(|&id| id != coordinator)
        .map(|id| brokers[id].bootstrap())
        .collect();
    succeeded(
        replicated(&[&others.join(","), "committed", "quotes"]),
        &brokers,
    );
    brokers[coordinator].respawn();
    brokers[coordinator]
        .wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|failure| panic!("broker {coordinator} restarts: {failure}"));
    await_identical(&brokers.iter().collect::<Vec<_>>(), "quotes", 3);
}

#[test]
fn a_group_keeps_its_members_when_its_coordinator_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut brokers, bootstrap) = replicated_cluster(dir.path(), "steady");
    let ready = dir.path().join("ready");
    let go = dir.path().join("go");
    let member = replicated(&[
        &bootstrap,
        "steady",
        "steady",
        ready.to_str().unwrap(),
        go.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "the member never got its partitions"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The coordinator dies: another broker leads the group's `__consumer_offsets`
    // partition and must answer the member's heartbeats from the membership it replays.
    let coordinator = find_coordinator(&brokers[0], "steady-members") as usize;
    brokers[coordinator].stop_with("-KILL");
    let survivor = &brokers[(coordinator + 1) % BROKERS];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now_coordinating = coordinator_of(survivor, "steady-members");
        if now_coordinating.is_some_and(|id| id as usize != coordinator) {
            break;
        }
        assert!(Instant::now() < deadline, "the coordinator never moved");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Past the member's session timeout: had the new coordinator not known the member, its
    // heartbeats would have been refused and it would have joined again by now.
    std::thread::sleep(Duration::from_secs(12));
    std::fs::write(&go, b"").unwrap();
    succeeded(member, &brokers);
    brokers[coordinator].respawn();
    brokers[coordinator]
        .wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|failure| panic!("broker {coordinator} restarts: {failure}"));
}

/// Waits until every broker holds the same batches of each of `topic`'s `partitions` (a
/// follower may still be a fetch behind); fails the test after 30 s.
fn await_identical(brokers: &[&Broker], topic: &str, partitions: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for partition in 0..partitions {
        while !identical(brokers, topic, partition) {
            assert!(
                Instant::now() < deadline,
                "the replicas of {topic}-{partition} differ"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Whether every broker holds the same batches of `topic`'s `partition`, and some.
fn identical(brokers: &[&Broker], topic: &str, partition: usize) -> bool {
    let copies: Vec<Vec<u8>> = brokers
        .iter()
        .map(|&broker| stored(broker, topic, partition))
        .collect();
    !copies[0].is_empty() && copies.iter().all(|copy| copy == &copies[0])
}

/// Faults the test injects; `COREMQ_FAULTS` sets how many (100 by default), and
/// `COREMQ_FAULT_SEED` replays one schedule.
fn fault_schedule() -> (usize, u64) {
    let count = std::env::var("COREMQ_FAULTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(100);
    let seed = std::env::var("COREMQ_FAULT_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(rand::random);
    (count, seed)
}

#[test]
fn a_hundred_random_faults_lose_no_acknowledged_record_and_no_commit() {
    use rand::{Rng, SeedableRng};
    let (count, seed) = fault_schedule();
    println!("{count} faults, COREMQ_FAULT_SEED={seed}");
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (mut brokers, bootstrap) = replicated_cluster(dir.path(), "ticks");
    let (producer, acked, stop) = produce_until_stopped(dir.path(), &bootstrap, "ticks");
    let member = replicated(&[&bootstrap, "group", "ticks", stop.to_str().unwrap()]);
    for fault in 0..count {
        let seen = await_metadata(&brokers[fault % BROKERS], Duration::from_secs(60), |seen| {
            in_sync(seen, "ticks") == [3, 3, 3]
                && leaders(seen, "ticks").iter().all(|&leader| leader >= 0)
        })
        .unwrap_or_else(|seen| {
            panic!(
                "seed {seed}, fault {fault}: every replica back in sync: {seen}\n{}",
                logs(&brokers)
            )
        });
        std::thread::sleep(Duration::from_millis(random.random_range(0..1000)));
        // Leaders first: most faults hit the leader of a partition.
        let victim = if random.random_bool(0.8) {
            leaders(&seen, "ticks")[random.random_range(0..3)] as usize
        } else {
            random.random_range(0..BROKERS)
        };
        match random.random_range(0..3) {
            0 => {
                brokers[victim].stop_with("-KILL");
                std::thread::sleep(Duration::from_millis(random.random_range(0..1500)));
            }
            1 => {
                signal(&brokers[victim], "-STOP");
                std::thread::sleep(Duration::from_millis(random.random_range(200..3000)));
                signal(&brokers[victim], "-CONT");
            }
            _ => {
                let status = brokers[victim].stop();
                assert!(status.success(), "seed {seed}: {}", brokers[victim].log());
            }
        }
        if !brokers[victim].is_running() {
            brokers[victim].respawn();
            brokers[victim]
                .wait_ready(Duration::from_secs(60))
                .unwrap_or_else(|failure| {
                    panic!("seed {seed}, fault {fault}: broker {victim} restarts: {failure}")
                });
        }
    }
    std::fs::write(&stop, b"").unwrap();
    succeeded(producer, &brokers);
    succeeded(member, &brokers);
    await_metadata(&brokers[0], Duration::from_secs(60), |seen| {
        in_sync(seen, "ticks") == [3, 3, 3]
    })
    .unwrap_or_else(|seen| panic!("seed {seed}: every replica rejoins: {seen}"));
    succeeded(
        replicated(&[&bootstrap, "verify", "ticks", acked.to_str().unwrap()]),
        &brokers,
    );
    println!("seed {seed}: checking the replicas");
    await_identical(&brokers.iter().collect::<Vec<_>>(), "ticks", 3);
}

/// Produces one record, `value`, to partition 0 of `topic` on `broker` with `acks`, the
/// leader waiting at most `timeout_ms` for the in-sync replicas: the error code and the
/// offset.
fn produce_one(
    broker: &Broker,
    topic: &str,
    acks: i16,
    timeout_ms: i32,
    value: &str,
) -> (i16, i64) {
    use coremq_engine::{BatchBuilder, Compression, Timestamp};
    use coremq_net::protocol::codec::Records;
    use coremq_net::protocol::messages::ProduceRequest;
    use coremq_net::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let mut batch = BatchBuilder::new(Compression::None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    batch.push(
        Timestamp(now.as_millis() as i64),
        None,
        Some(value.as_bytes()),
        &[],
    );
    let request = ProduceRequest {
        acks,
        timeout_ms,
        topic_data: vec![TopicProduceData {
            name: topic.into(),
            partition_data: vec![PartitionProduceData {
                index: 0,
                records: Some(Records::new(vec![batch.build()])),
            }],
        }],
        ..ProduceRequest::default()
    };
    let mut wire = Wire::connect(broker.bootstrap());
    let ResponseBody::Produce(response) = wire.call(11, RequestBody::Produce(request)) else {
        panic!("not a Produce response");
    };
    let answer = &response.responses[0].partition_responses[0];
    (answer.error_code, answer.base_offset)
}

#[test]
fn a_leader_cut_off_from_the_others_stops_acknowledging_and_truncates_once_healed() {
    let network = Network::create(BROKERS).unwrap_or_else(|failure| {
        panic!("this test creates network namespaces: it needs root, ip and nft: {failure}")
    });
    let dir = tempfile::tempdir().unwrap();
    let brokers = start_cluster_in(&network, dir.path(), 1);
    let bootstrap = bootstrap_of(&brokers);
    succeeded(replicated(&[&bootstrap, "create", "cut", "1"]), &brokers);
    let (producer, acked, stop) = produce_until_stopped(dir.path(), &bootstrap, "cut");
    std::thread::sleep(Duration::from_secs(2));
    let old = leaders(&metadata(&brokers[0]), "cut")[0];
    assert!(old >= 0, "the partition has a leader");
    let old = old as usize;
    network.isolate(old);
    println!("broker {old}, the leader, cut off from the others");

    // After its session timeout (1.5 s) at the latest, the cut-off leader acknowledges no
    // acks=all write; an acks=1 write it still takes alone, as a Kafka leader does.
    std::thread::sleep(Duration::from_millis(1500));
    for n in 0..4 {
        let (code, _) = produce_one(&brokers[old], "cut", -1, 1000, &format!("cut-all-{n}"));
        assert!(
            [
                error_code::REQUEST_TIMED_OUT,
                error_code::NOT_ENOUGH_REPLICAS,
                error_code::NOT_ENOUGH_REPLICAS_AFTER_APPEND
            ]
            .contains(&code),
            "the cut-off leader answered an acks=all write with {code}"
        );
        let (code, _) = produce_one(&brokers[old], "cut", 1, 1000, &format!("cut-one-{n}"));
        assert_eq!(code, error_code::NONE, "the cut-off leader takes acks=1");
    }

    // The others fence it, elect a leader and acknowledge acks=all writes without it.
    let survivor = (old + 1) % BROKERS;
    let after = await_metadata(&brokers[survivor], Duration::from_secs(30), |seen| {
        let leader = leaders(seen, "cut")[0];
        leader >= 0 && leader != old as i64 && !broker_ids(seen).contains(&(old as i64))
    })
    .unwrap_or_else(|seen| {
        panic!(
            "the majority elects a leader and fences broker {old}: {seen}\n{}",
            logs(&brokers)
        )
    });
    let new = leaders(&after, "cut")[0] as usize;
    let (code, _) = produce_one(&brokers[new], "cut", -1, 10_000, "majority");
    assert_eq!(
        code,
        error_code::NONE,
        "the new leader acknowledges acks=all"
    );

    network.heal();
    println!("healed: broker {old} rejoins");
    await_metadata(&brokers[survivor], Duration::from_secs(60), |seen| {
        in_sync(seen, "cut") == [3] && broker_ids(seen).len() == BROKERS
    })
    .unwrap_or_else(|seen| {
        panic!(
            "broker {old} rejoins the in-sync replicas: {seen}\n{}",
            logs(&brokers)
        )
    });
    std::fs::write(&stop, b"").unwrap();
    succeeded(producer, &brokers);
    succeeded(
        replicated(&[&bootstrap, "verify", "cut", acked.to_str().unwrap()]),
        &brokers,
    );
    // What only the cut-off leader wrote is gone from every replica: it truncated.
    await_identical(&brokers.iter().collect::<Vec<_>>(), "cut", 1);
    let kept = consume_all(&brokers[old], "cut");
    assert!(kept.iter().any(|value| value == "majority"));
    let diverged: Vec<&String> = kept
        .iter()
        .filter(|value| value.starts_with("cut-"))
        .collect();
    assert!(
        diverged.is_empty(),
        "written only by the cut-off leader, still there: {diverged:?}"
    );
}

#[test]
fn a_partition_moved_twice_while_producing_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = start_cluster(dir.path(), 1);
    let bootstrap = bootstrap_of(&brokers);
    // Broker `a` is not the controller: the test stops it at the end, and a stopped
    // controller would answer nothing.
    let controller = metadata(&brokers[0])["controllerid"].as_i64().unwrap() as usize;
    let a = (0..BROKERS).find(|&id| id != controller).unwrap();
    let others: Vec<usize> = (0..BROKERS).filter(|&id| id != a).collect();
    let (s, b) = (others[0], others[1]);
    let list = |ids: &[usize]| {
        ids.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    succeeded(
        replicated(&[&bootstrap, "assigned", "moving", &list(&[s, a])]),
        &brokers,
    );
    let (producer, acked, stop) = produce_until_stopped(dir.path(), &bootstrap, "moving");
    // Away from its leader `s` (broker `b` copies the log and takes over), then onto `s`
    // again, whose copy was deleted: it copies everything anew.
    std::thread::sleep(Duration::from_secs(2));
    succeeded(
        replicated(&[&bootstrap, "move", "moving", &list(&[b, a])]),
        &brokers,
    );
    std::thread::sleep(Duration::from_secs(1));
    succeeded(
        replicated(&[&bootstrap, "move", "moving", &list(&[s, b])]),
        &brokers,
    );
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, "").unwrap();
    succeeded(producer, &brokers);
    succeeded(
        replicated(&[&bootstrap, "verify", "moving", acked.to_str().unwrap()]),
        &brokers,
    );
    let copy = |broker: &Broker| broker.data_dir.join("logs").join("moving-0");
    assert!(
        !copy(&brokers[a]).exists(),
        "the replica moved away is deleted"
    );
    await_identical(&[&brokers[s], &brokers[b]], "moving", 1);

    // A move that cannot end (broker `a`, added, is stopped) is listed, then cancelled.
    // The canceller knows only the brokers that answer (kafka-python may ask any broker it
    // knows for metadata, and a stopped one never answers).
    let go = dir.path().join("go");
    let answering = format!("{},{}", brokers[s].bootstrap(), brokers[b].bootstrap());
    let canceller = replicated(&[
        &answering,
        "cancel",
        "moving",
        &list(&[s, b, a]),
        go.to_str().unwrap(),
    ]);
    let ready = dir.path().join("go.ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the canceller never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&brokers[a], "-STOP");
    std::fs::write(&go, "").unwrap();
    // (A failure leaves broker `a` stopped: the test's end kills it anyway.)
    succeeded(canceller, &brokers);
    signal(&brokers[a], "-CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while copy(&brokers[a]).exists() {
        assert!(
            Instant::now() < deadline,
            "broker {a} keeps the replica of a cancelled move: {}",
            brokers[a].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The error code broker `broker` answers a Metadata request (v12, auto-creation allowed)
/// for `topic` with.
fn auto_create(broker: &Broker, topic: &str) -> i16 {
    use coremq_net::protocol::messages::MetadataRequest;
    use coremq_net::protocol::messages::metadata_request::MetadataRequestTopic;
    let mut wire = Wire::connect(broker.bootstrap());
    let request = MetadataRequest {
        topics: Some(vec![MetadataRequestTopic {
            name: Some(topic.into()),
            ..MetadataRequestTopic::default()
        }]),
        allow_auto_topic_creation: true,
        ..MetadataRequest::default()
    };
    let ResponseBody::Metadata(response) = wire.call(12, RequestBody::Metadata(request)) else {
        panic!("not a Metadata response");
    };
    response.topics[0].error_code
}

#[test]
fn a_topic_auto_created_while_no_controller_is_elected_gets_leader_not_available() {
    let dir = tempfile::tempdir().unwrap();
    let mut brokers = start_cluster(dir.path(), 1);
    // Two of the three voters gone: no majority, so no controller until one returns.
    brokers[1].stop_with("-KILL");
    brokers[2].stop_with("-KILL");
    let code = auto_create(&brokers[0], "later");
    assert_eq!(
        code,
        error_code::LEADER_NOT_AVAILABLE,
        "a retriable error, as Kafka answers (librdkafka fails deliveries on NOT_CONTROLLER)"
    );
    brokers[1].respawn();
    brokers[1]
        .wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|failure| panic!("broker 1 restarts: {failure}"));
    // (Its leader may be broker 2: a creation the old controller decided before it lost
    // its majority commits once there is one again, and broker 2 was in session then.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let code = auto_create(&brokers[0], "later");
        if code == error_code::NONE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the topic is created once a controller is elected: code {code}\n{}",
            logs(&brokers)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// MQTT across the cluster: clients of each broker publish at QoS 1 to a Kafka topic whose
/// one partition one broker leads (the other two hand their batches to it over Produce), and
/// a subscriber on every broker gets every message once, from its own replica; the Kafka
/// topic holds each once. A retained message set on one broker and replaced on another is
/// the one every broker hands new subscribers, and cleared on a third, none does.
#[test]
fn mqtt_messages_published_on_any_broker_reach_subscribers_on_every_broker_once() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = start_cluster(dir.path(), 1);
    await_metadata(&brokers[0], Duration::from_secs(60), |seen| {
        in_sync(seen, "mqtt") == [3] && leaders(seen, "mqtt").iter().all(|&l| l >= 0)
    })
    .unwrap_or_else(|seen| panic!("the MQTT topic has three replicas in sync: {seen}"));
    let subscribers: Vec<mosquitto::Subscriber> = brokers
        .iter()
        .map(|broker| mosquitto::Subscriber::start(broker, &["-q", "1", "-t", "cluster/#", "-v"]))
        .collect();
    let mut expected = Vec::new();
    for (id, broker) in brokers.iter().enumerate() {
        for n in 0..3 {
            let (topic, payload) = (format!("cluster/b{id}"), format!("m{id}-{n}"));
            mosquitto::publish(broker, &["-q", "1", "-t", &topic, "-m", &payload]);
            expected.push(format!("{topic} {payload}"));
        }
    }
    expected.sort();
    for (id, subscriber) in subscribers.iter().enumerate() {
        let mut got = subscriber.messages(expected.len());
        got.sort();
        assert_eq!(
            got,
            expected,
            "the subscriber on broker {id}\n{}",
            logs(&brokers)
        );
    }
    let stored = kcat(
        &brokers[0],
        &["-C", "-t", "mqtt", "-o", "beginning", "-e", "-f", "%k %s\n"],
        "",
    )
    .expect("kcat reads the MQTT topic");
    let mut stored: Vec<&str> = stored.lines().collect();
    stored.sort();
    assert_eq!(stored, expected, "the Kafka topic holds each message once");
    drop(subscribers);

    mosquitto::publish(
        &brokers[1],
        &["-q", "1", "-r", "-t", "cluster/state", "-m", "on"],
    );
    mosquitto::publish(
        &brokers[2],
        &["-q", "1", "-r", "-t", "cluster/state", "-m", "off"],
    );
    let retained_everywhere = |expected: Option<&str>| {
        for (id, broker) in brokers.iter().enumerate() {
            // A follower applies it once its replica learns the new high watermark.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let got = mosquitto::retained(broker, "cluster/state");
                if got.as_deref() == expected {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "broker {id} retains {got:?}, not {expected:?}\n{}",
                    logs(&brokers)
                );
            }
        }
    };
    retained_everywhere(Some("cluster/state off"));
    mosquitto::publish(&brokers[0], &["-q", "1", "-r", "-t", "cluster/state", "-n"]);
    retained_everywhere(None);
}

/// A persistent MQTT session outlives its broker: a client subscribed at QoS 1 through one
/// broker, which is then killed, comes back through another and resumes its session there
/// (its subscription, and the messages published while it was away, from the positions its
/// first broker stored).
#[test]
fn mqtt_a_persistent_session_resumes_on_another_broker_after_its_broker_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut brokers = start_cluster(dir.path(), 1);
    await_metadata(&brokers[0], Duration::from_secs(60), |seen| {
        ["mqtt", "__mqtt_sessions"]
            .iter()
            .all(|topic| in_sync(seen, topic) == [3])
    })
    .unwrap_or_else(|seen| panic!("the MQTT topics have three replicas in sync: {seen}"));
    let session = ["-i", "roamer", "-c", "-q", "1", "-t", "roam/#", "-v"];
    drop(mosquitto::Subscriber::start(&brokers[0], &session));
    // Broker 2 keeps the session aside once its replica of the record is committed.
    eventually(
        &brokers,
        "broker 2 learns the session broker 0 stored",
        || keeps_one_session_aside(&brokers[2]),
    );
    // Its first record there is the one stored at connect; the one with the subscription
    // came before the SUBACK, so it is in broker 2's replica already and committed there
    // with the next fetch answer (each within half a second).
    std::thread::sleep(Duration::from_millis(1500));
    brokers[0].stop_with("-KILL");
    await_metadata(&brokers[1], Duration::from_secs(60), |seen| {
        ["mqtt", "__mqtt_sessions"].iter().all(|topic| {
            let led = leaders(seen, topic);
            !led.is_empty() && led.iter().all(|&leader| leader == 1 || leader == 2)
        })
    })
    .unwrap_or_else(|seen| panic!("brokers 1 and 2 lead the MQTT topics: {seen}"));
    let mut expected = Vec::new();
    for n in 0..3 {
        let payload = format!("while-away-{n}");
        mosquitto::publish(&brokers[1], &["-q", "1", "-t", "roam/x", "-m", &payload]);
        expected.push(format!("roam/x {payload}"));
    }
    let resumed = mosquitto::Subscriber::start(&brokers[2], &session);
    assert!(
        brokers[2]
            .log()
            .contains("resumes the session another broker stored"),
        "broker 2 resumed it: {}",
        logs(&brokers)
    );
    let got = resumed.messages(expected.len());
    assert_eq!(got, expected, "the resumed session\n{}", logs(&brokers));
}

/// MQTT-3.1.4-3 across the cluster: a client identifier connected through one broker and
/// then through another is taken over there, the first connection getting DISCONNECT 0x8E
/// and closed. A persistent session resumed through another broker is given up by the one
/// that held it, which so never ends it when its expiry there passes: the client resumes it
/// later through a third broker.
#[test]
fn mqtt_3_1_4_3_a_client_id_connected_through_another_broker_takes_the_session_over() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = start_cluster(dir.path(), 1);
    await_metadata(&brokers[0], Duration::from_secs(60), |seen| {
        ["mqtt", "__mqtt_sessions"]
            .iter()
            .all(|topic| in_sync(seen, topic) == [3])
    })
    .unwrap_or_else(|seen| panic!("the MQTT topics have three replicas in sync: {seen}"));
    let (mut first, _) = Raw::connect(&brokers[0], Level::V5, "twin", Properties::default());
    let second = mosquitto::Subscriber::start(
        &brokers[1],
        &["-V", "5", "-i", "twin", "-q", "1", "-t", "twin/#", "-v"],
    );
    match first.receive() {
        Some(Packet::Disconnect(disconnect)) => {
            assert_eq!(disconnect.code, reason::SESSION_TAKEN_OVER)
        }
        other => panic!("expected DISCONNECT, got {other:?}\n{}", logs(&brokers)),
    }
    assert!(first.closed(), "broker 0 closes the connection taken over");
    mosquitto::publish(&brokers[2], &["-q", "1", "-t", "twin/x", "-m", "one"]);
    assert_eq!(second.messages(1), ["twin/x one"], "{}", logs(&brokers));
    drop(second);

    // A session that expires on broker 0 four seconds after its connection ends...
    let expiring = Properties {
        session_expiry_interval: Some(4),
        ..Properties::default()
    };
    let (mut away, _) = Raw::connect(&brokers[0], Level::V5, "wanderer", expiring);
    away.subscribe("wander/#", QoS::AtLeastOnce);
    drop(away);
    eventually(
        &brokers,
        "broker 1 learns the session broker 0 stored",
        || keeps_one_session_aside(&brokers[1]),
    );
    // ... is resumed through broker 1 for an hour, and left again.
    let session = [
        "-V", "5", "-i", "wanderer", "-c", "-x", "3600", "-q", "1", "-t", "wander/#", "-v",
    ];
    drop(mosquitto::Subscriber::start(&brokers[1], &session));
    eventually(&brokers, "broker 0 gives its session up", || {
        brokers[0]
            .log()
            .contains("\"wanderer\" connected through broker 1")
    });
    // Past the expiry broker 0 had, a message comes while the client is away, and it
    // resumes through broker 2.
    std::thread::sleep(Duration::from_secs(5));
    mosquitto::publish(&brokers[2], &["-q", "1", "-t", "wander/x", "-m", "later"]);
    let resumed = mosquitto::Subscriber::start(&brokers[2], &session);
    assert_eq!(
        resumed.messages(1),
        ["wander/x later"],
        "{}",
        logs(&brokers)
    );
}
