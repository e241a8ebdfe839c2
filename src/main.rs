//! The `coremq` binary: a single-node, thread-per-core broker that speaks the Kafka wire
//! protocol. Settings come from flags or `COREMQ_*` environment variables; the defaults make
//! `cargo run --release` a working broker on 127.0.0.1:9092 with data in `./data`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use coremq_net::broker::{Broker, BrokerConfig};
use signal_hook::consts::{SIGINT, SIGTERM};

/// coremq: a thread-per-core, Kafka-compatible message broker.
#[derive(Debug, Parser)]
#[command(version)]
struct Options {
    /// Data directory (logs and topic metadata).
    #[arg(long, env = "COREMQ_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Kafka listener address.
    #[arg(long, env = "COREMQ_KAFKA_LISTENER", default_value = "127.0.0.1:9092")]
    kafka_listener: SocketAddr,
    /// Host name given to clients in Metadata (default: the listener's address).
    #[arg(long, env = "COREMQ_ADVERTISED_HOST")]
    advertised_host: Option<String>,
    /// Port given to clients in Metadata (default: the listener's port).
    #[arg(long, env = "COREMQ_ADVERTISED_PORT")]
    advertised_port: Option<u16>,
    /// This broker's node id.
    #[arg(long, env = "COREMQ_NODE_ID", default_value_t = 0)]
    node_id: i32,
    /// Shards, one executor per core; 0 for one per available core.
    #[arg(long, env = "COREMQ_SHARDS", default_value_t = 0)]
    shards: usize,
    /// Do not pin shards to cores.
    #[arg(long, env = "COREMQ_NO_PIN")]
    no_pin: bool,
    /// Create topics on first use (Metadata requests that allow it).
    #[arg(long, env = "COREMQ_AUTO_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    auto_create_topics: bool,
    /// Partitions of auto-created topics.
    #[arg(long, env = "COREMQ_DEFAULT_PARTITIONS", default_value_t = 1)]
    default_partitions: u32,
    /// Largest request accepted, in bytes.
    #[arg(long, env = "COREMQ_SOCKET_REQUEST_MAX_BYTES", default_value_t = 100 << 20)]
    socket_request_max_bytes: usize,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let options = Options::parse();
    let config = BrokerConfig {
        data_dir: options.data_dir,
        kafka_listener: options.kafka_listener,
        advertised_host: options.advertised_host,
        advertised_port: options.advertised_port,
        node_id: options.node_id,
        shards: options.shards,
        pin_shards: !options.no_pin,
        auto_create_topics: options.auto_create_topics,
        default_partitions: options.default_partitions,
        socket_request_max_bytes: options.socket_request_max_bytes,
        ..BrokerConfig::default()
    };
    let listener = config.kafka_listener;
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(error) => fail(&format!("cannot install signal handlers: {error}")),
    };
    let broker = match Broker::start(config) {
        Ok(broker) => broker,
        Err(error) => fail(&error.to_string()),
    };
    log::info!("coremq listening for Kafka clients on {listener}");
    if let Some(signal) = signals.forever().next() {
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
