//! The broker's `/metrics`: the engine's counters, each shard's connections, requests, groups
//! and closes, and the topic table's size, in OpenMetrics text.

use std::collections::BTreeMap;

use coremq_engine::{Handle, MetricsSnapshot};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::Context;
use super::latency::{Histograms, Latency};
use crate::mqtt::{Mqtt, OverWebSocket};
use crate::protocol::api;
use crate::server::Server;
use coremq_engine::TopicPartition;

/// What one shard reports for a scrape.
struct ShardCounters {
    connections: u64,
    requests: Vec<(i16, u64)>,
    latency: Vec<(i16, Latency)>,
    groups: u64,
    closed: Vec<(&'static str, u64)>,
    mqtt: MqttCounters,
    partitions: Vec<PartitionStats>,
    /// Consumer group lag: group, topic, partition, committed offset, messages behind the
    /// high watermark (where this broker holds a replica of the partition).
    lags: Vec<(String, String, i32, i64, i64)>,
}

/// One partition replica of this shard.
struct PartitionStats {
    topic: String,
    partition: i32,
    leader: bool,
    log_end: u64,
    high_watermark: u64,
    size_bytes: u64,
    bytes_appended: u64,
    records_appended: u64,
}

/// The whole cluster's health as this broker's metadata says, and whether it leads the
/// controller quorum.
struct ClusterFacts {
    topics: u64,
    partitions: u64,
    health: super::operations::Health,
}

/// Collects what shard `context`'s replicas and groups report.
async fn shard_partitions(
    context: &Context,
) -> (Vec<PartitionStats>, Vec<(String, String, i32, i64, i64)>) {
    let me = context.config.node_id;
    let mut partitions = Vec::new();
    if let Some(shard) = coremq_engine::Shard::current() {
        for log in shard.logs() {
            let name = log.topic_partition().clone();
            let offsets = log.offsets();
            let (bytes_appended, records_appended) = log.appended();
            partitions.push(PartitionStats {
                leader: context.cluster.leader_of(&name) == Some(me),
                topic: name.topic.to_string(),
                partition: name.partition as i32,
                log_end: offsets.log_end.0,
                high_watermark: offsets.committed.0,
                size_bytes: offsets.size_bytes,
                bytes_appended,
                records_appended,
            });
        }
    }
    let committed = context.groups.borrow().committed();
    let mut lags = Vec::with_capacity(committed.len());
    for (group, topic, partition, offset) in committed {
        let Ok(name) = TopicPartition::new(&topic, partition as u32) else {
            continue;
        };
        if let Ok(offsets) = context.cluster.offsets(&name).await {
            let behind = (offsets.committed.0 as i64 - offset).max(0);
            lags.push((group, topic, partition, offset, behind));
        }
    }
    (partitions, lags)
}

/// What one shard's MQTT front end reports.
#[derive(Default)]
struct MqttCounters {
    connections: u64,
    closed: Vec<(&'static str, u64)>,
    sessions: u64,
    /// Sessions another broker stored last, resumable through this one.
    elsewhere: u64,
    counters: crate::mqtt::Counters,
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric: Counter = Counter::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let metric: Gauge = Gauge::default();
    metric.set(value);
    registry.register(name, help, metric);
}

pub(super) async fn metrics(handle: &Handle) -> Result<String, coremq_engine::Error> {
    let engine = handle.metrics().await?;
    let mut shards = Vec::with_capacity(handle.shard_count());
    for shard in 0..handle.shard_count() {
        shards.push(
            handle
                .on_shard(shard, |_| async move {
                    let context = Context::current();
                    let server = Server::<Context>::current();
                    let requests = context
                        .requests
                        .borrow()
                        .iter()
                        .map(|(key, count)| (*key, *count))
                        .collect();
                    let latency = context
                        .latency
                        .borrow()
                        .iter()
                        .map(|(key, latency)| (*key, latency.clone()))
                        .collect();
                    let (partitions, lags) = shard_partitions(&context).await;
                    let groups = context.groups.borrow().group_count() as u64;
                    let mut mqtt = MqttCounters::default();
                    if let Some(server) = Server::<Mqtt>::current() {
                        mqtt.connections = server.open_connections() as u64;
                        mqtt.closed = server.closes();
                    }
                    if let Some(server) = Server::<OverWebSocket>::current() {
                        mqtt.connections += server.open_connections() as u64;
                        mqtt.closed.extend(server.closes());
                    }
                    if let Some(front) = Mqtt::current() {
                        let (counters, sessions, elsewhere) = front.counters();
                        mqtt.counters = counters;
                        mqtt.sessions = sessions as u64;
                        mqtt.elsewhere = elsewhere as u64;
                    }
                    Ok(ShardCounters {
                        mqtt,
                        connections: server
                            .as_ref()
                            .map_or(0, |server| server.open_connections())
                            as u64,
                        requests,
                        latency,
                        groups,
                        closed: server.map(|server| server.closes()).unwrap_or_default(),
                        partitions,
                        lags,
                    })
                })
                .await?,
        );
    }
    let cluster = handle
        .on_shard(0, |_| async move {
            let context = Context::current();
            let table = context.topics();
            let partitions = table.iter().map(|topic| u64::from(topic.partitions)).sum();
            let image = context.cluster.image();
            let health = super::operations::health(
                &image,
                context.config.node_id,
                context.cluster.controller(),
            );
            Ok(ClusterFacts {
                topics: table.len() as u64,
                partitions,
                health,
            })
        })
        .await?;
    Ok(render(&engine, &shards, &cluster))
}

fn render(engine: &MetricsSnapshot, shards: &[ShardCounters], cluster: &ClusterFacts) -> String {
    let mut registry = Registry::with_prefix("coremq");
    let (topics, partitions) = (cluster.topics, cluster.partitions);
    let counters = [
        (
            "bytes_appended",
            "Bytes producers appended to logs",
            engine.bytes_appended,
        ),
        (
            "records_appended",
            "Records producers appended to logs",
            engine.records_appended,
        ),
        (
            "batches_appended",
            "Record batches producers appended to logs",
            engine.batches_appended,
        ),
        (
            "replica_bytes_appended",
            "Bytes appended copying a leader's batches (followers, controller voters)",
            engine.replica_bytes_appended,
        ),
        ("bytes_read", "Bytes read from logs", engine.bytes_read),
        (
            "records_read",
            "Records read from logs",
            engine.records_read,
        ),
        (
            "cache_hits",
            "Reads served from memory (the shard caches of recent batches)",
            engine.cache_hits,
        ),
        (
            "cache_misses",
            "Reads that went to the segment files",
            engine.cache_misses,
        ),
        (
            "readahead_hits",
            "Disk reads served by readahead",
            engine.readahead_hits,
        ),
        (
            "duplicate_batches",
            "Retried batches of idempotent producers answered without storing them again",
            engine.duplicate_batches,
        ),
        ("append_errors", "Appends that failed", engine.append_errors),
        (
            "segments_deleted",
            "Segments deleted by retention",
            engine.segments_deleted,
        ),
        ("compactions", "Compaction passes", engine.compactions),
    ];
    for (name, help, value) in counters {
        counter(&mut registry, name, help, value);
    }
    gauge(
        &mut registry,
        "segments",
        "Open segments",
        engine.segments as i64,
    );
    gauge(
        &mut registry,
        "cache_bytes",
        "Bytes of recent batches held in memory, all shards",
        engine.cache_bytes as i64,
    );
    gauge(
        &mut registry,
        "cache_budget_bytes",
        "Memory the shards may hold recent batches in, all together",
        engine.cache_budget_bytes as i64,
    );
    gauge(&mut registry, "topics", "Topics", topics as i64);
    gauge(&mut registry, "partitions", "Partitions", partitions as i64);
    let connections = Family::<Vec<(String, String)>, Gauge>::default();
    for (shard, counters) in shards.iter().enumerate() {
        connections
            .get_or_create(&vec![("shard".to_string(), shard.to_string())])
            .set(counters.connections as i64);
    }
    registry.register(
        "connections",
        "Open Kafka connections, by shard",
        connections,
    );
    let groups = shards.iter().map(|shard| shard.groups).sum::<u64>();
    gauge(
        &mut registry,
        "groups",
        "Consumer groups coordinated",
        groups as i64,
    );

    let requests = Family::<Vec<(String, String)>, Counter>::default();
    for shard in shards {
        for (key, count) in &shard.requests {
            let name =
                api::api(*key).map_or("unknown", |range| range.name.trim_end_matches("Request"));
            requests
                .get_or_create(&vec![("api".to_string(), name.to_string())])
                .inc_by(*count);
        }
    }
    registry.register("requests", "Kafka requests handled, by API", requests);

    let closed = Family::<Vec<(String, String)>, Counter>::default();
    for shard in shards {
        for (reason, count) in &shard.closed {
            closed
                .get_or_create(&vec![("reason".to_string(), reason.to_string())])
                .inc_by(*count);
        }
    }
    registry.register(
        "connections_closed",
        "Kafka connections the broker closed, by reason",
        closed,
    );

    registry.register_collector(Box::new(Histograms {
        name: "fsync_latency_seconds",
        help: "fdatasync latency of the logs' group commits",
        series: vec![(Vec::new(), Latency::from_micros(&engine.fsync_latency_us))],
    }));
    let mut by_api: BTreeMap<&'static str, Latency> = BTreeMap::new();
    for shard in shards {
        for (key, latency) in &shard.latency {
            let name =
                api::api(*key).map_or("unknown", |range| range.name.trim_end_matches("Request"));
            by_api.entry(name).or_default().merge(latency);
        }
    }
    registry.register_collector(Box::new(Histograms {
        name: "request_latency_seconds",
        help: "Time to handle a Kafka request and encode its response (a Produce includes \
               its replication and fsync wait, a Fetch its long poll), by API",
        series: by_api
            .into_iter()
            .map(|(name, latency)| (vec![("api".to_string(), name.to_string())], latency))
            .collect(),
    }));
    render_partitions(&mut registry, shards);
    render_cluster(&mut registry, &cluster.health);
    registry.register(
        "build",
        "The broker's version",
        Info::new(vec![(
            "version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )]),
    );
    render_mqtt(&mut registry, shards);
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

type Labels = Vec<(String, String)>;

fn partition_labels(topic: &str, partition: i32) -> Labels {
    vec![
        ("topic".to_string(), topic.to_string()),
        ("partition".to_string(), partition.to_string()),
    ]
}

/// Per partition (those this broker leads: throughput and offsets; every replica: size) and
/// per topic, and consumer group lag.
fn render_partitions(registry: &mut Registry, shards: &[ShardCounters]) {
    let bytes = Family::<Labels, Counter>::default();
    let records = Family::<Labels, Counter>::default();
    let log_end = Family::<Labels, Gauge>::default();
    let high_watermark = Family::<Labels, Gauge>::default();
    let size = Family::<Labels, Gauge>::default();
    let topic_bytes = Family::<Labels, Counter>::default();
    let topic_records = Family::<Labels, Counter>::default();
    for partition in shards.iter().flat_map(|shard| &shard.partitions) {
        let labels = partition_labels(&partition.topic, partition.partition);
        size.get_or_create(&labels).set(partition.size_bytes as i64);
        if !partition.leader {
            continue;
        }
        bytes
            .get_or_create(&labels)
            .inc_by(partition.bytes_appended);
        records
            .get_or_create(&labels)
            .inc_by(partition.records_appended);
        log_end.get_or_create(&labels).set(partition.log_end as i64);
        high_watermark
            .get_or_create(&labels)
            .set(partition.high_watermark as i64);
        let topic = vec![("topic".to_string(), partition.topic.clone())];
        topic_bytes
            .get_or_create(&topic)
            .inc_by(partition.bytes_appended);
        topic_records
            .get_or_create(&topic)
            .inc_by(partition.records_appended);
    }
    registry.register(
        "partition_bytes_appended",
        "Bytes producers appended to partitions this broker leads, since it started leading",
        bytes,
    );
    registry.register(
        "partition_records_appended",
        "Records producers appended to partitions this broker leads",
        records,
    );
    registry.register(
        "partition_log_end_offset",
        "Next offset of partitions this broker leads",
        log_end,
    );
    registry.register(
        "partition_high_watermark",
        "High watermark (committed end) of partitions this broker leads",
        high_watermark,
    );
    registry.register(
        "partition_size_bytes",
        "Bytes of every partition replica on this broker",
        size,
    );
    registry.register(
        "topic_bytes_appended",
        "Bytes producers appended to each topic's partitions this broker leads",
        topic_bytes,
    );
    registry.register(
        "topic_records_appended",
        "Records producers appended to each topic's partitions this broker leads",
        topic_records,
    );
    let committed = Family::<Labels, Gauge>::default();
    let lag = Family::<Labels, Gauge>::default();
    for (group, topic, partition, offset, behind) in shards.iter().flat_map(|shard| &shard.lags) {
        let mut labels = partition_labels(topic, *partition);
        labels.insert(0, ("group".to_string(), group.clone()));
        committed.get_or_create(&labels).set(*offset);
        lag.get_or_create(&labels).set(*behind);
    }
    registry.register(
        "consumer_group_committed_offset",
        "Offsets consumer groups this broker coordinates committed",
        committed,
    );
    registry.register(
        "consumer_group_lag",
        "Records between a group's committed offset and the partition's high watermark \
         (groups this broker coordinates, partitions it holds a replica of)",
        lag,
    );
}

/// The cluster as this broker's metadata says: partitions under-replicated, offline and
/// moving, brokers by state, and the controller quorum's leader.
fn render_cluster(registry: &mut Registry, health: &super::operations::Health) {
    gauge(
        registry,
        "under_replicated_partitions",
        "Partitions with a replica out of the in-sync set, in the whole cluster",
        health.under_replicated_partitions as i64,
    );
    gauge(
        registry,
        "offline_partitions",
        "Partitions without a live leader, in the whole cluster",
        health.offline_partitions as i64,
    );
    gauge(
        registry,
        "reassigning_partitions",
        "Partitions with a reassignment in progress",
        health.reassigning_partitions as i64,
    );
    let brokers = Family::<Labels, Gauge>::default();
    for state in ["live", "fenced"] {
        let count = health
            .brokers
            .iter()
            .filter(|broker| broker.fenced == (state == "fenced"))
            .count();
        brokers
            .get_or_create(&vec![("state".to_string(), state.to_string())])
            .set(count as i64);
    }
    registry.register("brokers", "Registered brokers, live or fenced", brokers);
    gauge(
        registry,
        "controller_leader",
        "The broker leading the controller quorum (-1: none elected)",
        i64::from(health.controller_id.unwrap_or(-1)),
    );
    gauge(
        registry,
        "controller_active",
        "1 on the broker leading the controller quorum, else 0",
        i64::from(health.controller_id == Some(health.node_id)),
    );
}

fn render_mqtt(registry: &mut Registry, shards: &[ShardCounters]) {
    let connections = Family::<Vec<(String, String)>, Gauge>::default();
    for (shard, counters) in shards.iter().enumerate() {
        connections
            .get_or_create(&vec![("shard".to_string(), shard.to_string())])
            .set(counters.mqtt.connections as i64);
    }
    registry.register(
        "mqtt_connections",
        "Open MQTT connections (TCP and WebSockets), by shard",
        connections,
    );
    let sessions = shards.iter().map(|shard| shard.mqtt.sessions).sum::<u64>();
    gauge(
        registry,
        "mqtt_sessions",
        "MQTT sessions, connected or not",
        sessions as i64,
    );
    let elsewhere = shards.iter().map(|shard| shard.mqtt.elsewhere).sum::<u64>();
    gauge(
        registry,
        "mqtt_sessions_elsewhere",
        "Persistent MQTT sessions another broker of the cluster stored last, which their \
         clients can resume through this one",
        elsewhere as i64,
    );
    let received = shards
        .iter()
        .map(|shard| shard.mqtt.counters.messages_received)
        .sum::<u64>();
    counter(
        registry,
        "mqtt_messages_received",
        "Messages MQTT clients published (wills included)",
        received,
    );
    let sent = shards
        .iter()
        .map(|shard| shard.mqtt.counters.messages_sent)
        .sum::<u64>();
    counter(
        registry,
        "mqtt_messages_sent",
        "Messages sent or queued to MQTT subscribers",
        sent,
    );
    let dropped = Family::<Vec<(String, String)>, Counter>::default();
    let closed = Family::<Vec<(String, String)>, Counter>::default();
    for shard in shards {
        for (reason, count) in &shard.mqtt.counters.dropped {
            dropped
                .get_or_create(&vec![("reason".to_string(), reason.to_string())])
                .inc_by(*count);
        }
        for (reason, count) in &shard.mqtt.closed {
            closed
                .get_or_create(&vec![("reason".to_string(), reason.to_string())])
                .inc_by(*count);
        }
    }
    registry.register(
        "mqtt_messages_dropped",
        "Messages not delivered to an MQTT subscriber, by reason",
        dropped,
    );
    registry.register(
        "mqtt_connections_closed",
        "MQTT connections the broker closed, by reason",
        closed,
    );
}
