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
    /// The controller quorum's voters (KRaft's `controller.quorum.voters`); empty, this
    /// broker is a quorum of one. A broker not among them observes the quorum.
    pub controller_voters: Vec<Voter>,
    /// Where this broker listens for the voters' frames; its own voter entry's address when
    /// unset (an observer must set it).
    pub controller_listener: Option<SocketAddr>,
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
    /// How often this broker heartbeats the controller, and how long the controller waits
    /// for a heartbeat before it fences the broker and moves its partitions' leadership
    /// (Kafka's `broker.heartbeat.interval.ms` and `broker.session.timeout.ms`).
    pub broker_heartbeat_interval_ms: u64,
    pub broker_session_timeout_ms: u64,
    /// A follower not caught up with its leader for this long leaves the in-sync replicas
    /// (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
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
    /// TCP keepalive on the Kafka and MQTT clients' connections (off by default).
    pub tcp_keepalive: Option<crate::server::Keepalive>,
    /// The MQTT front end.
    pub mqtt: crate::mqtt::MqttConfig,
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
            controller_voters: Vec::new(),
            controller_listener: None,
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
            broker_heartbeat_interval_ms: 250,
            broker_session_timeout_ms: 1500,
            replica_lag_time_max_ms: 30_000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            connections_max_idle_ms: 600_000,
            request_read_timeout_ms: 30_000,
            max_connections: i32::MAX as usize,
            max_connections_per_ip: i32::MAX as usize,
            tcp_keepalive: None,
            mqtt: crate::mqtt::MqttConfig::default(),
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

    /// Where the voters reach this broker's controller listener: its address, with the
    /// advertised host in place of an unspecified one (0.0.0.0).
    pub fn controller_address(&self, listener: SocketAddr) -> (String, u16) {
        let host = if listener.ip().is_unspecified() {
            self.advertised().0
        } else {
            listener.ip().to_string()
        };
        (host, listener.port())
    }

    /// Whether this broker is one of the controller voters (or its own quorum of one).
    pub fn is_voter(&self) -> bool {
        self.controller_voters.is_empty()
            || self
                .controller_voters
                .iter()
                .any(|voter| voter.id == self.node_id)
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    pub fn meta_dir(&self) -> PathBuf {
        self.data_dir.join("meta")
    }
}

/// A controller quorum voter: `id@host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Voter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.id, self.host, self.port)
    }
}

impl std::str::FromStr for Voter {
    type Err = String;

    fn from_str(text: &str) -> Result<Voter, String> {
        let malformed = || format!("{text:?} is not a voter, ID@HOST:PORT");
        let (id, address) = text.split_once('@').ok_or_else(malformed)?;
        let (host, port) = address.rsplit_once(':').ok_or_else(malformed)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match (id.parse::<i32>(), port.parse::<u16>()) {
            (Ok(id), Ok(port)) if id >= 0 && !host.is_empty() => Ok(Voter {
                id,
                host: host.to_string(),
                port,
            }),
            _ => Err(malformed()),
        }
    }
}

/// Voters separated by commas, each id once.
pub fn parse_voters(text: &str) -> Result<Vec<Voter>, String> {
    let voters = text
        .split(',')
        .map(|voter| voter.trim().parse())
        .collect::<Result<Vec<Voter>, String>>()?;
    let mut ids: Vec<i32> = voters.iter().map(|voter| voter.id).collect();
    ids.sort_unstable();
    if let Some(twice) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("voter {} is named twice", twice[0]));
    }
    Ok(voters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse_as_kraft_writes_them() {
        let voters = parse_voters("0@broker-0.coremq:9093, 1@127.0.0.1:9094,2@[::1]:9095").unwrap();
        assert_eq!(
            voters,
            [
                Voter {
                    id: 0,
                    host: "broker-0.coremq".into(),
                    port: 9093
                },
                Voter {
                    id: 1,
                    host: "127.0.0.1".into(),
                    port: 9094
                },
                Voter {
                    id: 2,
                    host: "::1".into(),
                    port: 9095
                },
            ]
        );
        for bad in [
            "",
            "0@host",
            "host:1",
            "-1@h:1",
            "x@h:1",
            "0@:1",
            "0@h:70000",
        ] {
            assert!(parse_voters(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_voters("0@a:1,0@b:2").unwrap_err().contains("twice"));
    }
}
