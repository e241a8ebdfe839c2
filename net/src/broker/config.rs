//! The broker's settings. The `coremq` binary fills them from flags, environment variables
//! and a TOML file; embedded defaults make `cargo run --release` a working single node.

use std::net::SocketAddr;
use std::path::PathBuf;

use coremq_engine::CleanupPolicy;

pub use crate::server::AcceptMode;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Data directory: engine logs under `logs/`, broker metadata under `meta/`.
    pub data_dir: PathBuf,
    /// Kafka listener.
    pub kafka_listener: SocketAddr,
    /// How connections on the Kafka listener reach the shards.
    pub accept: AcceptMode,
    /// HTTP admin listener: `/metrics`, `/health`, `/ready`.
    pub admin_listener: SocketAddr,
    /// Host and port clients are told to connect to (Metadata); the listener's by default.
    pub advertised_host: Option<String>,
    pub advertised_port: Option<u16>,
    /// This broker's node id.
    pub node_id: i32,
    pub cluster_id: String,
    /// Shards (one executor per core); 0 means one per available core.
    pub shards: usize,
    /// Pin each shard to its core.
    pub pin_shards: bool,
    /// Create a topic on first use (Metadata with auto-creation allowed, Produce).
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics without a count.
    pub default_partitions: u32,
    /// Largest request frame accepted; bigger ones close the connection.
    pub socket_request_max_bytes: usize,
    /// Requests read ahead of their responses per connection.
    pub connection_requests_in_flight_max: usize,
    /// Request bytes buffered per shard across its connections.
    pub shard_request_bytes_max: usize,
    /// Memory per shard for recent batches (`None`: the engine's default, from the
    /// machine's memory).
    pub cache_bytes: Option<usize>,
    /// Partitions the broker holds per shard, all topics together (Redpanda's
    /// `topic_partitions_per_shard`): creations beyond it are refused.
    pub partitions_per_shard_max: u32,
    /// Partitions of `__consumer_offsets`, fixed when it is first created.
    pub offsets_topic_partitions: u32,
    /// How long a new group waits for more members before its first assignment
    /// (Kafka's `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay_ms: u64,
    /// Topic defaults (Kafka's broker configs `log.segment.bytes`, `message.max.bytes`,
    /// `log.retention.bytes`, `log.retention.ms` (-1: forever), `log.cleanup.policy`).
    pub log_segment_bytes: u64,
    pub message_max_bytes: usize,
    pub log_retention_bytes: i64,
    pub log_retention_ms: i64,
    pub log_cleanup_policy: CleanupPolicy,
    /// The default fsync policy of topics (Kafka's `log.flush.interval.messages` and
    /// `log.flush.interval.ms`, the defaults of `flush.messages` and `flush.ms`; see
    /// `configs::durability`). coremq's default of 1 message fsyncs before acks=all is
    /// answered; Kafka's (Long.MAX for both) leaves writes to the page cache.
    pub log_flush_interval_messages: u64,
    pub log_flush_interval_ms: u64,
    /// Session timeouts a group member may ask for (Kafka's `group.min.session.timeout.ms`
    /// and `group.max.session.timeout.ms`); others get INVALID_SESSION_TIMEOUT.
    pub group_min_session_timeout_ms: u64,
    pub group_max_session_timeout_ms: u64,
    /// A connection with no request arriving and none in flight for this long is closed
    /// (Kafka's `connections.max.idle.ms`).
    pub connections_max_idle_ms: u64,
    /// A request frame must arrive whole within this long of its first byte, or its
    /// connection is closed (a client sending a byte now and then holds no connection).
    pub request_read_timeout_ms: u64,
    /// Connections open at once, all shards together; more are closed as they arrive
    /// (Kafka's `max.connections`).
    pub max_connections: usize,
    /// Connections open at once from one IP address (Kafka's `max.connections.per.ip`).
    pub max_connections_per_ip: usize,
}

impl Default for BrokerConfig {
    fn default() -> BrokerConfig {
        BrokerConfig {
            data_dir: PathBuf::from("data"),
            kafka_listener: SocketAddr::from(([127, 0, 0, 1], 9092)),
            accept: AcceptMode::ReusePort,
            admin_listener: SocketAddr::from(([127, 0, 0, 1], 9644)),
            advertised_host: None,
            advertised_port: None,
            node_id: 0,
            cluster_id: "coremq-cluster".into(),
            shards: 0,
            pin_shards: true,
            auto_create_topics: true,
            default_partitions: 1,
            socket_request_max_bytes: 100 << 20,
            connection_requests_in_flight_max: 64,
            shard_request_bytes_max: 512 << 20,
            cache_bytes: None,
            partitions_per_shard_max: 1000,
            offsets_topic_partitions: 16,
            group_initial_rebalance_delay_ms: 3000,
            log_segment_bytes: 1 << 30,
            message_max_bytes: 1_048_588,
            log_retention_bytes: -1,
            log_retention_ms: 7 * 24 * 60 * 60 * 1000,
            log_cleanup_policy: CleanupPolicy::Delete,
            log_flush_interval_messages: 1,
            log_flush_interval_ms: i64::MAX as u64,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            connections_max_idle_ms: 600_000,
            request_read_timeout_ms: 30_000,
            max_connections: i32::MAX as usize,
            max_connections_per_ip: i32::MAX as usize,
        }
    }
}

impl BrokerConfig {
    pub fn advertised(&self) -> (String, u16) {
        let host = self
            .advertised_host
            .clone()
            .unwrap_or_else(|| self.kafka_listener.ip().to_string());
        let port = self.advertised_port.unwrap_or(self.kafka_listener.port());
        (host, port)
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    pub fn meta_dir(&self) -> PathBuf {
        self.data_dir.join("meta")
    }
}
