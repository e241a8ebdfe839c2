//! The broker's `/metrics`: the engine's counters, each shard's connections, requests, groups
//! and closes, and the topic table's size, in OpenMetrics text.

use std::sync::atomic::AtomicU64;

use coremq_engine::{Handle, MetricsSnapshot};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Context;
use crate::mqtt::{Mqtt, OverWebSocket};
use crate::protocol::api;
use crate::server::Server;

/// What one shard reports for a scrape.
struct ShardCounters {
    connections: u64,
    requests: Vec<(i16, u64)>,
    groups: u64,
    closed: Vec<(&'static str, u64)>,
    mqtt: MqttCounters,
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
                        groups,
                        closed: server.map(|server| server.closes()).unwrap_or_default(),
                    })
                })
                .await?,
        );
    }
    let (topics, partitions) = handle
        .on_shard(0, |_| async move {
            let table = Context::current().topics();
            let partitions = table.iter().map(|topic| u64::from(topic.partitions)).sum();
            Ok((table.len() as u64, partitions))
        })
        .await?;
    Ok(render(&engine, &shards, topics, partitions))
}

fn render(
    engine: &MetricsSnapshot,
    shards: &[ShardCounters],
    topics: u64,
    partitions: u64,
) -> String {
    let mut registry = Registry::with_prefix("coremq");
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

    let fsync = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
    for quantile in [0.5, 0.99, 0.999, 1.0] {
        let micros = engine.fsync_latency_us.value_at_quantile(quantile);
        fsync
            .get_or_create(&vec![("quantile".to_string(), quantile.to_string())])
            .set(micros as f64 / 1e6);
    }
    registry.register(
        "fsync_latency_seconds",
        "fdatasync latency quantiles since start",
        fsync,
    );
    render_mqtt(&mut registry, shards);
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
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
