//! The HTTP admin listener: `/metrics` (Prometheus text format, once the shards serve),
//! `/health` (the process answers) and `/ready` (started and not stopping). It listens
//! before the Kafka listener does, so a client that reached Kafka finds it. It runs on its
//! own thread, off the shards: a scrape asks each shard for its counters through the
//! engine's handle, like any cross-shard request, so the data path takes no locks for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use coremq_engine::{Handle, MetricsSnapshot};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Context;
use crate::protocol::api;

/// What one shard reports for a scrape.
struct ShardCounters {
    connections: u64,
    requests: Vec<(i16, u64)>,
    groups: u64,
    closed: Vec<(&'static str, u64)>,
}

/// Where the broker is in its life, as the admin listener reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Shards are being set up: not ready, and no metrics yet.
    Starting,
    /// Kafka listeners accept: ready.
    Serving,
    /// Shutting down: not ready; metrics still answer.
    Stopping,
}

/// The broker's [`Phase`], shared with the admin thread.
#[derive(Clone)]
pub(crate) struct PhaseCell(Arc<AtomicU8>);

impl PhaseCell {
    pub(crate) fn new() -> PhaseCell {
        PhaseCell(Arc::new(AtomicU8::new(Phase::Starting as u8)))
    }

    pub(crate) fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Release);
    }

    fn get(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Stopping,
        }
    }
}

/// A running admin listener.
pub struct AdminServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Where the admin listener is bound.
    pub fn address(&self) -> String {
        self.server.server_addr().to_string()
    }

    pub fn start(
        address: SocketAddr,
        handle: Handle,
        phase: PhaseCell,
    ) -> Result<AdminServer, String> {
        let server = tiny_http::Server::http(address)
            .map_err(|error| format!("HTTP admin listener on {address}: {error}"))?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("coremq-admin-http".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    let (status, content_type, body) = answer(request.url(), &handle, phase.get());
                    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type)
                        .expect("a static header is valid");
                    let response = tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header);
                    if let Err(error) = request.respond(response) {
                        log::debug!("admin HTTP response not sent: {error}");
                    }
                }
            })
            .map_err(|error| format!("starting the HTTP admin thread: {error}"))?;
        Ok(AdminServer {
            server,
            thread: Some(thread),
        })
    }
}

/// Stops serving and waits for the admin thread.
impl Drop for AdminServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(url: &str, handle: &Handle, phase: Phase) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match url.split('?').next().unwrap_or_default() {
        "/health" => (200, TEXT, "ok\n".into()),
        "/ready" if phase == Phase::Serving => (200, TEXT, "ready\n".into()),
        "/ready" => (503, TEXT, "not ready\n".into()),
        "/metrics" if phase == Phase::Starting => (503, TEXT, "starting\n".into()),
        "/metrics" => match futures_lite::future::block_on(metrics(handle)) {
            Ok(text) => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(error) => (503, TEXT, format!("metrics unavailable: {error}\n")),
        },
        _ => (
            404,
            TEXT,
            "not found: try /metrics, /health or /ready\n".into(),
        ),
    }
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

async fn metrics(handle: &Handle) -> Result<String, coremq_engine::Error> {
    let engine = handle.metrics().await?;
    let mut shards = Vec::with_capacity(handle.shard_count());
    for shard in 0..handle.shard_count() {
        shards.push(
            handle
                .on_shard(shard, |_| async move {
                    let context = Context::current();
                    let requests = context
                        .requests
                        .borrow()
                        .iter()
                        .map(|(key, count)| (*key, *count))
                        .collect();
                    let groups = context.groups.borrow().group_count() as u64;
                    Ok(ShardCounters {
                        connections: context.open_connections() as u64,
                        requests,
                        groups,
                        closed: context.closes.counts(),
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
            "Bytes appended to logs",
            engine.bytes_appended,
        ),
        (
            "records_appended",
            "Records appended to logs",
            engine.records_appended,
        ),
        (
            "batches_appended",
            "Record batches appended to logs",
            engine.batches_appended,
        ),
        ("bytes_read", "Bytes read from logs", engine.bytes_read),
        (
            "records_read",
            "Records read from logs",
            engine.records_read,
        ),
        (
            "cache_hits",
            "Reads served from the tail cache",
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
        "tail_cache_bytes",
        "Bytes held in the logs' tail caches (released once a log is idle for a cleanup pass)",
        engine.tail_cache_bytes as i64,
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
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}
