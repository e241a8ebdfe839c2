//! A broker for fuzz targets that drive requests through `Broker::handle_frame`: one shard,
//! a temporary data directory, loopback listeners on free ports (Kafka, MQTT, admin), room
//! for 64 partitions.

use coremq_net::broker::{Broker, BrokerConfig};
use coremq_net::mqtt::MqttConfig;

/// Starts the broker with the shared settings, adjusted by `adjust`.
pub fn start(adjust: impl FnOnce(&mut BrokerConfig)) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = BrokerConfig {
        data_dir: dir.path().join("data"),
        kafka_listener: "127.0.0.1:0".parse().unwrap(),
        admin_listener: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        pin_shards: false,
        partitions_per_shard_max: 64,
        mqtt: MqttConfig {
            listener: Some("127.0.0.1:0".parse().unwrap()),
            websocket_listener: None,
            ..MqttConfig::default()
        },
        ..BrokerConfig::default()
    };
    adjust(&mut config);
    let broker = Broker::start(config).expect("the broker starts");
    (dir, broker)
}
