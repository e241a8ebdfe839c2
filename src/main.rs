//! The `coremq` binary: a thread-per-core broker that speaks the Kafka wire protocol and
//! MQTT. Each setting comes from a flag, else its `COREMQ_*` environment variable, else
//! the TOML file given with `--config`, else the embedded default, so `cargo run --release`
//! is a working broker on 127.0.0.1:9092 with data in `./data`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use coremq_net::broker::config::{Voter, parse_voters};
use coremq_net::broker::{AcceptMode, Broker, BrokerConfig};
use coremq_net::mqtt::{MqttConfig, parse_mappings};
use coremq_net::server::Keepalive;
use serde::Deserialize;
use signal_hook::consts::{SIGINT, SIGTERM};

/// coremq: a thread-per-core, Kafka-compatible message broker.
///
/// Every setting can be given as a flag, as the environment variable shown, or as a key of
/// the TOML file named by --config (the flag's name with underscores: `data_dir = "/var/lib/coremq"`);
/// that is also the order of precedence.
#[derive(Debug, Parser, Deserialize, Default)]
#[command(version)]
#[serde(deny_unknown_fields)]
struct Options {
    /// TOML file with settings (keys as the flags, with underscores).
    #[arg(long, env = "COREMQ_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Data directory (logs and topic metadata) [default: data]
    #[arg(long, env = "COREMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Kafka listener, `ADDRESS:PORT` or `HOST:PORT` (a host name is resolved, and
    /// advertised unless --advertised-host says otherwise) [default: 127.0.0.1:9092]
    #[arg(long, env = "COREMQ_KAFKA_LISTENER")]
    #[serde(default, deserialize_with = "parsed")]
    kafka_listener: Option<Listener>,
    /// How connections reach the shards: `reuseport` (every shard listens, the kernel
    /// spreads connections) or `handoff` (shard 0 accepts and hands each to the shard
    /// serving the fewest) [default: reuseport]
    #[arg(long, env = "COREMQ_ACCEPT")]
    #[serde(default, deserialize_with = "parsed")]
    accept: Option<AcceptMode>,
    /// HTTP admin listener: /metrics, /health, /ready, `ADDRESS:PORT` or `HOST:PORT`
    /// [default: 127.0.0.1:9644]
    #[arg(long, env = "COREMQ_ADMIN_LISTENER")]
    #[serde(default, deserialize_with = "parsed")]
    admin_listener: Option<Listener>,
    /// Host name given to clients in Metadata [default: the listener's address]
    #[arg(long, env = "COREMQ_ADVERTISED_HOST")]
    advertised_host: Option<String>,
    /// Port given to clients in Metadata [default: the listener's port]
    #[arg(long, env = "COREMQ_ADVERTISED_PORT")]
    advertised_port: Option<u16>,
    /// This broker's node id [default: 0]
    #[arg(long, env = "COREMQ_NODE_ID")]
    node_id: Option<i32>,
    /// The controller quorum's voters: `ID@HOST:PORT` separated by commas, host names
    /// allowed (Kafka's controller.quorum.voters); each voter listens for the others at its
    /// entry. A broker not among them observes the quorum (needs --controller-listener)
    /// [default: none, this broker is its own controller]
    #[arg(long, env = "COREMQ_CONTROLLER_VOTERS")]
    #[serde(default, deserialize_with = "parsed")]
    controller_voters: Option<Voters>,
    /// Where this broker listens for the voters, `ADDRESS:PORT` or `HOST:PORT`; an
    /// observer tells the voters this address [default: its entry in --controller-voters]
    #[arg(long, env = "COREMQ_CONTROLLER_LISTENER")]
    #[serde(default, deserialize_with = "parsed")]
    controller_listener: Option<Listener>,
    /// Cluster id reported to clients [default: coremq-cluster]
    #[arg(long, env = "COREMQ_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Shards, one executor per core; 0 for one per available core [default: 0]
    #[arg(long, env = "COREMQ_SHARDS")]
    shards: Option<usize>,
    /// Pin each shard to its core [default: true]
    #[arg(long, env = "COREMQ_PIN_SHARDS")]
    pin_shards: Option<bool>,
    /// Do not pin shards to cores (same as --pin-shards false)
    #[arg(long)]
    #[serde(skip)]
    no_pin: bool,
    /// Create topics on first use (Metadata requests that allow it) [default: true]
    #[arg(long, env = "COREMQ_AUTO_CREATE_TOPICS")]
    auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics and of CreateTopics without a count [default: 1]
    #[arg(long, env = "COREMQ_DEFAULT_PARTITIONS")]
    default_partitions: Option<u32>,
    /// Largest request accepted, in bytes [default: 104857600]
    #[arg(long, env = "COREMQ_SOCKET_REQUEST_MAX_BYTES")]
    socket_request_max_bytes: Option<usize>,
    /// Requests read ahead of their responses per connection [default: 64]
    #[arg(long, env = "COREMQ_CONNECTION_REQUESTS_IN_FLIGHT_MAX")]
    connection_requests_in_flight_max: Option<usize>,
    /// Request bytes buffered per shard [default: 536870912]
    #[arg(long, env = "COREMQ_SHARD_REQUEST_BYTES_MAX")]
    shard_request_bytes_max: Option<usize>,
    /// Memory per shard for recent batches, shared by its partitions [default: an eighth
    /// of the machine's memory split between the shards, at least 16 MiB]
    #[arg(long, env = "COREMQ_CACHE_BYTES")]
    cache_bytes: Option<usize>,
    /// Partitions held per shard, all topics together; creations beyond are refused
    /// [default: 1000]
    #[arg(long, env = "COREMQ_PARTITIONS_PER_SHARD_MAX")]
    partitions_per_shard_max: Option<u32>,
    /// Partitions of __consumer_offsets, fixed when first created [default: 16]
    #[arg(long, env = "COREMQ_OFFSETS_TOPIC_PARTITIONS")]
    offsets_topic_partitions: Option<u32>,
    /// How long a new consumer group waits for more members before its first assignment,
    /// in milliseconds (Kafka's group.initial.rebalance.delay.ms) [default: 3000]
    #[arg(long, env = "COREMQ_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    group_initial_rebalance_delay_ms: Option<u64>,
    /// Segment size of topics that do not set segment.bytes (Kafka's log.segment.bytes)
    /// [default: 1073741824]
    #[arg(long, env = "COREMQ_LOG_SEGMENT_BYTES")]
    log_segment_bytes: Option<u64>,
    /// Largest batch of topics that do not set max.message.bytes (Kafka's
    /// message.max.bytes) [default: 1048588]
    #[arg(long, env = "COREMQ_MESSAGE_MAX_BYTES")]
    message_max_bytes: Option<usize>,
    /// Size retention of topics that do not set retention.bytes, -1 for none (Kafka's
    /// log.retention.bytes) [default: -1]
    #[arg(long, env = "COREMQ_LOG_RETENTION_BYTES", allow_hyphen_values = true)]
    log_retention_bytes: Option<i64>,
    /// Time retention of topics that do not set retention.ms, -1 for none (Kafka's
    /// log.retention.ms) [default: 604800000]
    #[arg(long, env = "COREMQ_LOG_RETENTION_MS", allow_hyphen_values = true)]
    log_retention_ms: Option<i64>,
    /// Cleanup policy of topics that do not set cleanup.policy: delete, compact, both
    /// (comma-separated) or empty (Kafka's log.cleanup.policy) [default: delete]
    #[arg(long, env = "COREMQ_LOG_CLEANUP_POLICY")]
    log_cleanup_policy: Option<String>,
    /// fsync after this many messages for topics that do not set flush.messages (Kafka's
    /// log.flush.interval.messages); 1 (any value under 9223372036854775807) fsyncs
    /// before acks=all is answered [default: 1]
    #[arg(long, env = "COREMQ_LOG_FLUSH_INTERVAL_MESSAGES")]
    log_flush_interval_messages: Option<u64>,
    /// fsync every this many milliseconds for topics that do not set flush.ms (Kafka's
    /// log.flush.interval.ms), when flush messages is 9223372036854775807
    /// [default: 9223372036854775807]
    #[arg(long, env = "COREMQ_LOG_FLUSH_INTERVAL_MS")]
    log_flush_interval_ms: Option<u64>,
    /// How often this broker heartbeats the controller, in milliseconds (Kafka's
    /// broker.heartbeat.interval.ms) [default: 250]
    #[arg(long, env = "COREMQ_BROKER_HEARTBEAT_INTERVAL_MS")]
    broker_heartbeat_interval_ms: Option<u64>,
    /// A broker the controller has not heard from for this long is fenced and its
    /// partitions get other leaders, in milliseconds (Kafka's broker.session.timeout.ms)
    /// [default: 1500]
    #[arg(long, env = "COREMQ_BROKER_SESSION_TIMEOUT_MS")]
    broker_session_timeout_ms: Option<u64>,
    /// A follower not caught up with its leader for this long leaves the in-sync replicas,
    /// in milliseconds (Kafka's replica.lag.time.max.ms) [default: 30000]
    #[arg(long, env = "COREMQ_REPLICA_LAG_TIME_MAX_MS")]
    replica_lag_time_max_ms: Option<u64>,
    /// Shortest session timeout a group member may ask for, in milliseconds (Kafka's
    /// group.min.session.timeout.ms) [default: 6000]
    #[arg(long, env = "COREMQ_GROUP_MIN_SESSION_TIMEOUT_MS")]
    group_min_session_timeout_ms: Option<u64>,
    /// Longest session timeout a group member may ask for, in milliseconds (Kafka's
    /// group.max.session.timeout.ms) [default: 1800000]
    #[arg(long, env = "COREMQ_GROUP_MAX_SESSION_TIMEOUT_MS")]
    group_max_session_timeout_ms: Option<u64>,
    /// Close a connection with no request arriving and none in flight for this long, in
    /// milliseconds (Kafka's connections.max.idle.ms) [default: 600000]
    #[arg(long, env = "COREMQ_CONNECTIONS_MAX_IDLE_MS")]
    connections_max_idle_ms: Option<u64>,
    /// Close a connection whose request has not arrived whole this long after its first
    /// byte, in milliseconds [default: 30000]
    #[arg(long, env = "COREMQ_REQUEST_READ_TIMEOUT_MS")]
    request_read_timeout_ms: Option<u64>,
    /// Connections open at once, all shards together; more are closed as they arrive
    /// (Kafka's max.connections) [default: 2147483647]
    #[arg(long, env = "COREMQ_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Connections open at once from one IP address (Kafka's max.connections.per.ip)
    /// [default: 2147483647]
    #[arg(long, env = "COREMQ_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// TCP keepalive on Kafka and MQTT client connections: seconds without traffic before
    /// the first probe (keep it below a load balancer's idle timeout) [default: off]
    #[arg(long, env = "COREMQ_TCP_KEEPALIVE_IDLE_S")]
    tcp_keepalive_idle_s: Option<u64>,
    /// Seconds between TCP keepalive probes [default: the system's, 75]
    #[arg(long, env = "COREMQ_TCP_KEEPALIVE_INTERVAL_S")]
    tcp_keepalive_interval_s: Option<u64>,
    /// Unanswered TCP keepalive probes before the connection is dropped [default: the
    /// system's, 9]
    #[arg(long, env = "COREMQ_TCP_KEEPALIVE_COUNT")]
    tcp_keepalive_count: Option<u32>,
    /// MQTT listener (3.1, 3.1.1 and 5.0 over TCP), `ADDRESS:PORT` or `HOST:PORT`, or `none`
    /// [default: 127.0.0.1:1883]
    #[arg(long, env = "COREMQ_MQTT_LISTENER")]
    #[serde(default, deserialize_with = "parsed")]
    mqtt_listener: Option<MqttListener>,
    /// MQTT over WebSockets (subprotocol `mqtt`), `ADDRESS:PORT` or `HOST:PORT`, or `none`;
    /// served only with the MQTT listener [default: 127.0.0.1:8083]
    #[arg(long, env = "COREMQ_MQTT_WS_LISTENER")]
    #[serde(default, deserialize_with = "parsed")]
    mqtt_ws_listener: Option<MqttListener>,
    /// The request path of MQTT over WebSockets [default: /mqtt]
    #[arg(long, env = "COREMQ_MQTT_WS_PATH")]
    mqtt_ws_path: Option<String>,
    /// MQTT topic filters to Kafka topics, `FILTER=TOPIC` separated by commas
    /// (`quotes/#=quotes,sensors/+/temp=temperatures`); the first match wins
    /// [default: none]
    #[arg(long, env = "COREMQ_MQTT_TOPIC_MAP")]
    mqtt_topic_map: Option<String>,
    /// The Kafka topic of MQTT topics no mapping matches [default: mqtt]
    #[arg(long, env = "COREMQ_MQTT_DEFAULT_TOPIC")]
    mqtt_default_topic: Option<String>,
    /// Largest MQTT packet accepted, in bytes; announced to 5.0 clients [default: 1048576]
    #[arg(long, env = "COREMQ_MQTT_MAXIMUM_PACKET_SIZE")]
    mqtt_maximum_packet_size: Option<u32>,
    /// QoS 1 and 2 messages an MQTT client may leave unacknowledged, each way
    /// [default: 100]
    #[arg(long, env = "COREMQ_MQTT_RECEIVE_MAXIMUM")]
    mqtt_receive_maximum: Option<u16>,
    /// Messages queued per MQTT session beyond those in flight; more are dropped and
    /// counted [default: 1000]
    #[arg(long, env = "COREMQ_MQTT_MAX_QUEUED_MESSAGES")]
    mqtt_max_queued_messages: Option<usize>,
    /// Topic aliases an MQTT 5.0 client may set [default: 10]
    #[arg(long, env = "COREMQ_MQTT_TOPIC_ALIAS_MAXIMUM")]
    mqtt_topic_alias_maximum: Option<u16>,
    /// An MQTT connection must send CONNECT within this long, in milliseconds
    /// [default: 10000]
    #[arg(long, env = "COREMQ_MQTT_CONNECT_TIMEOUT_MS")]
    mqtt_connect_timeout_ms: Option<u64>,
}

impl Options {
    /// Fills what flags and environment left unset from `file`.
    fn or(self, file: Options) -> Options {
        Options {
            config: self.config,
            data_dir: self.data_dir.or(file.data_dir),
            kafka_listener: self.kafka_listener.or(file.kafka_listener),
            admin_listener: self.admin_listener.or(file.admin_listener),
            accept: self.accept.or(file.accept),
            advertised_host: self.advertised_host.or(file.advertised_host),
            advertised_port: self.advertised_port.or(file.advertised_port),
            node_id: self.node_id.or(file.node_id),
            controller_voters: self.controller_voters.or(file.controller_voters),
            controller_listener: self.controller_listener.or(file.controller_listener),
            cluster_id: self.cluster_id.or(file.cluster_id),
            shards: self.shards.or(file.shards),
            pin_shards: if self.no_pin {
                Some(false)
            } else {
                self.pin_shards.or(file.pin_shards)
            },
            no_pin: self.no_pin,
            auto_create_topics: self.auto_create_topics.or(file.auto_create_topics),
            default_partitions: self.default_partitions.or(file.default_partitions),
            socket_request_max_bytes: self
                .socket_request_max_bytes
                .or(file.socket_request_max_bytes),
            connection_requests_in_flight_max: self
                .connection_requests_in_flight_max
                .or(file.connection_requests_in_flight_max),
            shard_request_bytes_max: self
                .shard_request_bytes_max
                .or(file.shard_request_bytes_max),
            cache_bytes: self.cache_bytes.or(file.cache_bytes),
            partitions_per_shard_max: self
                .partitions_per_shard_max
                .or(file.partitions_per_shard_max),
            offsets_topic_partitions: self
                .offsets_topic_partitions
                .or(file.offsets_topic_partitions),
            group_initial_rebalance_delay_ms: self
                .group_initial_rebalance_delay_ms
                .or(file.group_initial_rebalance_delay_ms),
            log_segment_bytes: self.log_segment_bytes.or(file.log_segment_bytes),
            message_max_bytes: self.message_max_bytes.or(file.message_max_bytes),
            log_retention_bytes: self.log_retention_bytes.or(file.log_retention_bytes),
            log_retention_ms: self.log_retention_ms.or(file.log_retention_ms),
            log_cleanup_policy: self.log_cleanup_policy.or(file.log_cleanup_policy),
            log_flush_interval_messages: self
                .log_flush_interval_messages
                .or(file.log_flush_interval_messages),
            log_flush_interval_ms: self.log_flush_interval_ms.or(file.log_flush_interval_ms),
            broker_heartbeat_interval_ms: self
                .broker_heartbeat_interval_ms
                .or(file.broker_heartbeat_interval_ms),
            broker_session_timeout_ms: self
                .broker_session_timeout_ms
                .or(file.broker_session_timeout_ms),
            replica_lag_time_max_ms: self
                .replica_lag_time_max_ms
                .or(file.replica_lag_time_max_ms),
            group_min_session_timeout_ms: self
                .group_min_session_timeout_ms
                .or(file.group_min_session_timeout_ms),
            group_max_session_timeout_ms: self
                .group_max_session_timeout_ms
                .or(file.group_max_session_timeout_ms),
            connections_max_idle_ms: self
                .connections_max_idle_ms
                .or(file.connections_max_idle_ms),
            request_read_timeout_ms: self
                .request_read_timeout_ms
                .or(file.request_read_timeout_ms),
            max_connections: self.max_connections.or(file.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.or(file.max_connections_per_ip),
            tcp_keepalive_idle_s: self.tcp_keepalive_idle_s.or(file.tcp_keepalive_idle_s),
            tcp_keepalive_interval_s: self
                .tcp_keepalive_interval_s
                .or(file.tcp_keepalive_interval_s),
            tcp_keepalive_count: self.tcp_keepalive_count.or(file.tcp_keepalive_count),
            mqtt_listener: self.mqtt_listener.or(file.mqtt_listener),
            mqtt_ws_listener: self.mqtt_ws_listener.or(file.mqtt_ws_listener),
            mqtt_ws_path: self.mqtt_ws_path.or(file.mqtt_ws_path),
            mqtt_topic_map: self.mqtt_topic_map.or(file.mqtt_topic_map),
            mqtt_default_topic: self.mqtt_default_topic.or(file.mqtt_default_topic),
            mqtt_maximum_packet_size: self
                .mqtt_maximum_packet_size
                .or(file.mqtt_maximum_packet_size),
            mqtt_receive_maximum: self.mqtt_receive_maximum.or(file.mqtt_receive_maximum),
            mqtt_max_queued_messages: self
                .mqtt_max_queued_messages
                .or(file.mqtt_max_queued_messages),
            mqtt_topic_alias_maximum: self
                .mqtt_topic_alias_maximum
                .or(file.mqtt_topic_alias_maximum),
            mqtt_connect_timeout_ms: self
                .mqtt_connect_timeout_ms
                .or(file.mqtt_connect_timeout_ms),
        }
    }

    fn into_config(self) -> Result<BrokerConfig, String> {
        let defaults = BrokerConfig::default();
        let log_cleanup_policy = match &self.log_cleanup_policy {
            None => defaults.log_cleanup_policy,
            Some(text) => coremq_net::broker::parse_cleanup_policy(text)
                .map_err(|error| format!("--log-cleanup-policy: {error}"))?,
        };
        let kafka_host = self.kafka_listener.as_ref().and_then(|l| l.host.clone());
        let tcp_keepalive = match self.tcp_keepalive_idle_s {
            Some(0) => return Err("--tcp-keepalive-idle-s must be at least 1".into()),
            Some(idle) => Some(Keepalive {
                idle: Duration::from_secs(idle),
                interval: self.tcp_keepalive_interval_s.map(Duration::from_secs),
                count: self.tcp_keepalive_count,
            }),
            None if self.tcp_keepalive_interval_s.is_some()
                || self.tcp_keepalive_count.is_some() =>
            {
                return Err("--tcp-keepalive-interval-s and --tcp-keepalive-count need \
                     --tcp-keepalive-idle-s, which turns keepalive on"
                    .into());
            }
            None => None,
        };
        let mqtt_defaults = MqttConfig::default();
        let mqtt = MqttConfig {
            listener: self
                .mqtt_listener
                .map_or(mqtt_defaults.listener, |listener| listener.0),
            websocket_listener: self
                .mqtt_ws_listener
                .map_or(mqtt_defaults.websocket_listener, |listener| listener.0),
            websocket_path: match self.mqtt_ws_path {
                Some(path) if path.starts_with('/') => path,
                Some(path) => return Err(format!("--mqtt-ws-path {path:?} must start with /")),
                None => mqtt_defaults.websocket_path,
            },
            mappings: match &self.mqtt_topic_map {
                None => mqtt_defaults.mappings,
                Some(text) => {
                    parse_mappings(text).map_err(|error| format!("--mqtt-topic-map: {error}"))?
                }
            },
            default_topic: self
                .mqtt_default_topic
                .unwrap_or(mqtt_defaults.default_topic),
            maximum_packet_size: self
                .mqtt_maximum_packet_size
                .unwrap_or(mqtt_defaults.maximum_packet_size),
            receive_maximum: self
                .mqtt_receive_maximum
                .unwrap_or(mqtt_defaults.receive_maximum),
            max_queued_messages: self
                .mqtt_max_queued_messages
                .unwrap_or(mqtt_defaults.max_queued_messages),
            topic_alias_maximum: self
                .mqtt_topic_alias_maximum
                .unwrap_or(mqtt_defaults.topic_alias_maximum),
            connect_timeout_ms: self
                .mqtt_connect_timeout_ms
                .unwrap_or(mqtt_defaults.connect_timeout_ms),
            ..mqtt_defaults
        };
        Ok(BrokerConfig {
            data_dir: self.data_dir.unwrap_or(defaults.data_dir),
            kafka_listener: self
                .kafka_listener
                .map_or(defaults.kafka_listener, |l| l.address),
            accept: self.accept.unwrap_or(defaults.accept),
            admin_listener: self
                .admin_listener
                .map_or(defaults.admin_listener, |l| l.address),
            advertised_host: self.advertised_host.or(kafka_host),
            advertised_port: self.advertised_port,
            node_id: self.node_id.unwrap_or(defaults.node_id),
            controller_voters: self
                .controller_voters
                .map_or(defaults.controller_voters, |v| v.0),
            controller_listener: self.controller_listener.map(|l| l.address),
            cluster_id: self.cluster_id.unwrap_or(defaults.cluster_id),
            shards: self.shards.unwrap_or(defaults.shards),
            pin_shards: self.pin_shards.unwrap_or(defaults.pin_shards),
            auto_create_topics: self
                .auto_create_topics
                .unwrap_or(defaults.auto_create_topics),
            default_partitions: self
                .default_partitions
                .unwrap_or(defaults.default_partitions),
            socket_request_max_bytes: self
                .socket_request_max_bytes
                .unwrap_or(defaults.socket_request_max_bytes),
            connection_requests_in_flight_max: self
                .connection_requests_in_flight_max
                .unwrap_or(defaults.connection_requests_in_flight_max),
            shard_request_bytes_max: self
                .shard_request_bytes_max
                .unwrap_or(defaults.shard_request_bytes_max),
            cache_bytes: self.cache_bytes,
            partitions_per_shard_max: self
                .partitions_per_shard_max
                .unwrap_or(defaults.partitions_per_shard_max),
            offsets_topic_partitions: self
                .offsets_topic_partitions
                .unwrap_or(defaults.offsets_topic_partitions),
            group_initial_rebalance_delay_ms: self
                .group_initial_rebalance_delay_ms
                .unwrap_or(defaults.group_initial_rebalance_delay_ms),
            log_segment_bytes: self.log_segment_bytes.unwrap_or(defaults.log_segment_bytes),
            message_max_bytes: self.message_max_bytes.unwrap_or(defaults.message_max_bytes),
            log_retention_bytes: self
                .log_retention_bytes
                .unwrap_or(defaults.log_retention_bytes),
            log_retention_ms: self.log_retention_ms.unwrap_or(defaults.log_retention_ms),
            log_cleanup_policy,
            log_flush_interval_messages: self
                .log_flush_interval_messages
                .unwrap_or(defaults.log_flush_interval_messages),
            log_flush_interval_ms: self
                .log_flush_interval_ms
                .unwrap_or(defaults.log_flush_interval_ms),
            broker_heartbeat_interval_ms: self
                .broker_heartbeat_interval_ms
                .unwrap_or(defaults.broker_heartbeat_interval_ms),
            broker_session_timeout_ms: self
                .broker_session_timeout_ms
                .unwrap_or(defaults.broker_session_timeout_ms),
            replica_lag_time_max_ms: self
                .replica_lag_time_max_ms
                .unwrap_or(defaults.replica_lag_time_max_ms),
            group_min_session_timeout_ms: self
                .group_min_session_timeout_ms
                .unwrap_or(defaults.group_min_session_timeout_ms),
            group_max_session_timeout_ms: self
                .group_max_session_timeout_ms
                .unwrap_or(defaults.group_max_session_timeout_ms),
            connections_max_idle_ms: self
                .connections_max_idle_ms
                .unwrap_or(defaults.connections_max_idle_ms),
            request_read_timeout_ms: self
                .request_read_timeout_ms
                .unwrap_or(defaults.request_read_timeout_ms),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(defaults.max_connections_per_ip),
            tcp_keepalive,
            mqtt,
        })
    }
}

/// A listener setting: an address, or a host name and port resolved once at startup.
#[derive(Debug, Clone)]
struct Listener {
    address: SocketAddr,
    /// The name, when the setting gave one (`localhost:9092`).
    host: Option<String>,
}

impl std::str::FromStr for Listener {
    type Err = String;

    fn from_str(text: &str) -> Result<Listener, String> {
        if let Ok(address) = text.parse() {
            return Ok(Listener {
                address,
                host: None,
            });
        }
        let Some((host, _port)) = text.rsplit_once(':') else {
            return Err(format!("{text:?} is not ADDRESS:PORT or HOST:PORT"));
        };
        let addresses: Vec<SocketAddr> = text
            .to_socket_addrs()
            .map_err(|error| format!("{text:?} is not ADDRESS:PORT or HOST:PORT: {error}"))?
            .collect();
        // Prefer IPv4, as `localhost` usually means 127.0.0.1 to Kafka clients.
        let address = addresses
            .iter()
            .find(|address| address.is_ipv4())
            .or(addresses.first())
            .copied()
            .ok_or_else(|| format!("{host:?} resolves to no address"))?;
        Ok(Listener {
            address,
            host: Some(host.to_string()),
        })
    }
}

/// The `--mqtt-listener` setting: an address, or `none`.
#[derive(Debug, Clone)]
struct MqttListener(Option<SocketAddr>);

impl std::str::FromStr for MqttListener {
    type Err = String;

    fn from_str(text: &str) -> Result<MqttListener, String> {
        if text == "none" {
            return Ok(MqttListener(None));
        }
        text.parse::<Listener>()
            .map(|listener| MqttListener(Some(listener.address)))
    }
}

/// The `--controller-voters` setting.
#[derive(Debug, Clone)]
struct Voters(Vec<Voter>);

impl std::str::FromStr for Voters {
    type Err = String;

    fn from_str(text: &str) -> Result<Voters, String> {
        parse_voters(text).map(Voters)
    }
}

/// Reads a TOML string setting through the type's `FromStr`, as its flag does.
fn parsed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

fn read_file(path: &Path) -> Result<Options, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read config file {}: {error}", path.display()))?;
    toml::from_str(&text).map_err(|error| format!("config file {}: {error}", path.display()))
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    coremq_engine::abort_on_panic();
    let options = Options::parse();
    let file = match &options.config {
        Some(path) => read_file(path).unwrap_or_else(|error| fail(&error)),
        None => Options::default(),
    };
    let config = options
        .or(file)
        .into_config()
        .unwrap_or_else(|error| fail(&error));
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(error) => fail(&format!("cannot install signal handlers: {error}")),
    };
    // A signal while starting (waiting for the other controller voters, say) ends the
    // process at once: nothing was served yet.
    let started = Arc::new(AtomicBool::new(false));
    let (signalled, signal) = std::sync::mpsc::channel();
    {
        let started = started.clone();
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                if !started.load(Ordering::SeqCst) {
                    fail(&format!("signal {signal} while starting"));
                }
                let _ = signalled.send(signal);
            }
        });
    }
    let broker = match Broker::start(config) {
        Ok(broker) => broker,
        Err(error) => fail(&error.to_string()),
    };
    started.store(true, Ordering::SeqCst);
    log::info!("{}", broker.summary);
    if let Ok(signal) = signal.recv() {
        log::info!("signal {signal}: finishing in-flight requests, flushing, exiting");
    }
    if let Err(error) = broker.shutdown(Duration::from_secs(10)) {
        fail(&error.to_string());
    }
}

fn fail(message: &str) -> ! {
    eprintln!("coremq: {message}");
    std::process::exit(1);
}
