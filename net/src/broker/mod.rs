//! The Kafka broker: one listener per shard (SO_REUSEPORT, so the kernel spreads
//! connections), or one on shard 0 that hands each connection to the shard serving the
//! fewest; each connection is served on one shard, and requests for partitions another
//! shard owns go there through the cluster layer (`coremq_replication::Cluster`).

mod admin;
pub mod config;
mod configs;
mod dispatch;
mod error;
mod errors;
mod fetch;
mod groups;
mod latency;
pub(crate) mod metadata;
mod metrics;
mod operations;
mod produce;
mod producer_ids;
pub(crate) mod replica_links;
mod replicas;
pub mod topics;
mod voters;

pub use error::Error;

/// The `__consumer_offsets` record layout (its decoders read what is on disk).
pub use groups::offsets as group_offsets;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use coremq_engine::{Engine, EngineConfig, Handle};
use coremq_replication::metadata::Endpoint;
use coremq_replication::peers::Address;
use coremq_replication::topics::TopicTable;
use coremq_replication::{Cluster, LogConfigs, NodeConfig};

use crate::mqtt::{Mqtt, OverWebSocket};
use crate::server::http::{self, Phase, PhaseCell};
use crate::server::{self, FrameSize, Incoming, Limits, Protocol, Server, Shared};

pub use config::{AcceptMode, BrokerConfig};
pub use configs::parse_cleanup_policy;

/// The name of the Kafka listener in the cluster metadata (Kafka's default listener name).
const LISTENER_NAME: &str = "PLAINTEXT";

/// A shard's broker state: reached from connection tasks and from closures the engine runs
/// on the shard. It is the Kafka [`Protocol`] its shard's server serves.
pub(crate) struct Context {
    pub config: Arc<BrokerConfig>,
    pub handle: Handle,
    /// Topics and partitions.
    pub cluster: Cluster,
    /// Dropped on shutdown: the group coordinator's timers stop on the disconnect.
    stop: RefCell<Option<flume::Sender<()>>>,
    stopped: flume::Receiver<()>,
    /// The consumer groups this shard coordinates.
    pub groups: RefCell<groups::Coordinator>,
    /// Shard 0 hands out producer ids.
    pub producer_ids: Option<producer_ids::ProducerIds>,
    /// Requests decoded on this shard, by API key.
    pub requests: RefCell<std::collections::HashMap<i16, u64>>,
    /// How long this shard's handlers took, by API key.
    pub latency: RefCell<std::collections::HashMap<i16, latency::Latency>>,
}

impl Context {
    /// This shard's context (kept in the runtime's per-shard state slot).
    pub fn current() -> Rc<Context> {
        coremq_runtime::local::<Context>().expect("broker context installed on every shard")
    }

    pub fn topics(&self) -> Arc<TopicTable> {
        self.cluster.topics()
    }

    /// Whether the broker is shutting down (its stop signal was given).
    pub fn is_stopping(&self) -> bool {
        self.stop.borrow().is_none()
    }

    /// Sleeps for `period`, or less if the broker stops meanwhile; whether it is stopping.
    pub async fn sleep_unless_stopping(&self, period: Duration) -> bool {
        server::sleep_unless(&self.stopped, period).await
    }
}

impl Protocol for Context {
    type Request = crate::protocol::frame::Request;
    type Connection = ();

    const CLIENTS: &'static str = "Kafka clients";

    /// A big-endian 32-bit size before every request.
    fn frame_size(prefix: &[u8]) -> Result<FrameSize, String> {
        let Ok(size) = <[u8; 4]>::try_from(prefix) else {
            return Ok(FrameSize::Need(4 - prefix.len()));
        };
        let size = i32::from_be_bytes(size);
        usize::try_from(size)
            .map(FrameSize::Body)
            .map_err(|_| format!("request size {size} is negative"))
    }

    fn open(&self, _peer: Option<SocketAddr>, _link: server::Link) -> Rc<()> {
        Rc::new(())
    }

    fn decode(
        &self,
        _: &Rc<()>,
        _prefix: &[u8],
        body: Bytes,
    ) -> Result<Incoming<Self::Request>, String> {
        dispatch::decode(self, body).map_err(|error| error.to_string())
    }

    async fn respond(
        self: Rc<Self>,
        _: Rc<()>,
        request: Self::Request,
        peer: Option<SocketAddr>,
    ) -> Option<Vec<Bytes>> {
        dispatch::respond(&self, request, peer).await
    }

    fn too_large(&self, _: &Rc<()>) -> Option<Vec<Bytes>> {
        None
    }

    fn closed(&self, _: &Rc<()>) {}
}

/// Starts the controller listener and the links to the other voters when the broker has
/// voters to talk to; the transport its metadata node uses, and the address the voters
/// reach the listener at.
fn start_controller_listener(
    config: &BrokerConfig,
    handle: &Handle,
) -> Result<Option<(coremq_replication::Transport, Address)>, Error> {
    if config.controller_voters.is_empty() {
        return Ok(None);
    }
    let address = voters::listener(config).map_err(|reason| Error::Config { reason })?;
    let shared = Shared::new(voters::limits(config), handle.clone());
    let bound = server::bind::<voters::Inbound>(&shared, address)?;
    let (inbound, transport, outbound) = voters::transport();
    for shard in 0..handle.shard_count() {
        let (inbound, shared) = (inbound.clone(), shared.clone());
        futures_lite::future::block_on(handle.on_shard(shard, move |_| async move {
            Server::start(Rc::new(inbound), shared, shard);
            Ok(())
        }))?;
    }
    let (me, voters) = (config.node_id, config.controller_voters.clone());
    futures_lite::future::block_on(handle.on_shard(0, move |_| async move {
        voters::start_links(me, &voters, outbound);
        Ok(())
    }))?;
    server::check_listeners::<voters::Inbound>(&shared, bound)?;
    Ok(Some((transport, config.controller_address(address))))
}

/// The Kafka server's bounds, from the broker's settings.
fn limits(config: &BrokerConfig) -> Limits {
    Limits {
        accept: config.accept,
        frame_bytes_max: config.socket_request_max_bytes,
        shard_frame_bytes_max: config.shard_request_bytes_max,
        requests_in_flight_max: config.connection_requests_in_flight_max,
        idle: Duration::from_millis(config.connections_max_idle_ms),
        read_timeout: Duration::from_millis(config.request_read_timeout_ms),
        connections_max: config.max_connections,
        connections_per_ip_max: config.max_connections_per_ip,
        keepalive: config.tcp_keepalive,
        websocket: None,
    }
}

/// Creates `name` unless it exists, asking again while no controller answers or too few
/// brokers have registered for `replication` replicas.
fn create_at_start(
    cluster: &Cluster,
    name: &str,
    partitions: u32,
    replication: u16,
    configs: std::collections::BTreeMap<String, String>,
) -> Result<(), Error> {
    let mut waited_for_brokers = false;
    loop {
        let created = futures_lite::future::block_on(cluster.create_topic(
            name.into(),
            partitions,
            replication,
            configs.clone(),
            Vec::new(),
        ));
        match created {
            Ok(_) => return Ok(()),
            Err(coremq_replication::Error::NotController) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(coremq_replication::Error::Controller(
                coremq_replication::controller::ControllerError::NotEnoughBrokers { live, .. },
            )) => {
                if !std::mem::replace(&mut waited_for_brokers, true) {
                    log::info!(
                        "creating {name} with {replication} replicas: waiting for brokers \
                         ({live} registered)"
                    );
                }
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(error) => return Err(Error::step(format!("creating {name}"), error)),
        }
    }
}

/// The MQTT server's bounds, from the broker's settings.
fn mqtt_limits(config: &BrokerConfig) -> Limits {
    Limits {
        // The fixed header takes at least two of the maximum packet size.
        frame_bytes_max: (config.mqtt.maximum_packet_size as usize).saturating_sub(2),
        // Keep alive 0 turns the timeout off (MQTT-3.1.2-24 asks nothing then).
        idle: Duration::from_millis(u64::from(u32::MAX)),
        ..limits(config)
    }
}

/// A running broker.
pub struct Broker {
    /// Where the Kafka listener is bound (its port, when the setting's was 0).
    pub kafka_address: std::net::SocketAddr,
    /// Where the MQTT listener is bound, if there is one.
    pub mqtt_address: Option<std::net::SocketAddr>,
    /// What the startup line says: addresses, data directory, shards, durability, version.
    pub summary: String,
    engine: Engine,
    handle: Handle,
    cluster: Cluster,
    admin: http::AdminServer,
    phase: PhaseCell,
    /// This broker's id, and whether it is one of several controller voters.
    node_id: i32,
    clustered: bool,
}

impl Broker {
    /// Opens the data directory, recovers every log, and starts listening on every shard.
    pub fn start(config: BrokerConfig) -> Result<Broker, Error> {
        if config.shard_request_bytes_max < config.socket_request_max_bytes {
            return Err(Error::Config {
                reason: format!(
                    "shard_request_bytes_max ({}) must be at least socket_request_max_bytes ({})",
                    config.shard_request_bytes_max, config.socket_request_max_bytes
                ),
            });
        }
        if config.broker_heartbeat_interval_ms == 0
            || config.broker_heartbeat_interval_ms >= config.broker_session_timeout_ms
        {
            return Err(Error::Config {
                reason: format!(
                    "broker_heartbeat_interval_ms ({}) must be above 0 and below \
                     broker_session_timeout_ms ({}), or every broker is fenced",
                    config.broker_heartbeat_interval_ms, config.broker_session_timeout_ms
                ),
            });
        }
        if config.kafka_listener.ip().is_unspecified() && config.advertised_host.is_none() {
            // Kafka refuses to advertise the non-routable meta-address too.
            return Err(Error::Config {
                reason: format!(
                    "the Kafka listener {} is a wildcard address, which clients cannot connect \
                     to: set --advertised-host (COREMQ_ADVERTISED_HOST) to the host name or \
                     address clients should use",
                    config.kafka_listener
                ),
            });
        }
        let config = Arc::new(config);
        for dir in [config.logs_dir(), config.meta_dir()] {
            std::fs::create_dir_all(&dir).map_err(|error| Error::Config {
                reason: format!(
                    "data directory {} is unusable: {error}: give the broker a directory \
                     it can create and write (--data-dir or COREMQ_DATA_DIR)",
                    dir.display()
                ),
            })?;
        }
        let shards = if config.shards == 0 {
            std::thread::available_parallelism().map_or(1, |cores| cores.get())
        } else {
            config.shards
        };
        let defaults = EngineConfig::new(config.logs_dir());
        let engine = Engine::start(EngineConfig {
            shards,
            pin_shards: config.pin_shards,
            cache_bytes: config
                .cache_bytes
                .unwrap_or_else(|| EngineConfig::default_cache_bytes(shards)),
            ..defaults
        })
        .map_err(|error| Error::step("storage engine", error))?;
        let handle = engine.handle();
        let log_configs: LogConfigs = {
            let config = config.clone();
            Arc::new(move |name, overrides| configs::log_config(&config, name, overrides))
        };
        let shared = Shared::new(limits(&config), handle.clone());
        let address = server::bind::<Context>(&shared, config.kafka_listener)?;
        let mqtt_shared = Shared::new(mqtt_limits(&config), handle.clone());
        let mqtt_address = match config.mqtt.listener {
            Some(listener) => Some(server::bind::<Mqtt>(&mqtt_shared, listener)?),
            None => None,
        };
        let ws_shared = Shared::new(
            Limits {
                websocket: Some(server::WebSocket {
                    path: config.mqtt.websocket_path.clone(),
                    subprotocol: "mqtt".into(),
                }),
                ..mqtt_limits(&config)
            },
            handle.clone(),
        );
        let ws_address = match (mqtt_address, config.mqtt.websocket_listener) {
            (Some(_), Some(listener)) => Some(server::bind::<OverWebSocket>(&ws_shared, listener)?),
            _ => None,
        };
        // With port 0, the bound port is the one clients are told of.
        let config = if address == config.kafka_listener {
            config
        } else {
            Arc::new(BrokerConfig {
                kafka_listener: address,
                ..(*config).clone()
            })
        };
        let (host, port) = config.advertised();
        let (transport, controller_address) = match start_controller_listener(&config, &handle)? {
            Some((transport, address)) => (Some(transport), Some(address)),
            None => (None, None),
        };
        let voters = if config.controller_voters.is_empty() {
            vec![config.node_id]
        } else {
            config
                .controller_voters
                .iter()
                .map(|voter| voter.id)
                .collect()
        };
        let node = NodeConfig {
            broker_id: config.node_id,
            voters,
            controller_address,
            endpoints: vec![Endpoint {
                listener: LISTENER_NAME.into(),
                host,
                port,
            }],
            rack: None,
            meta_dir: config.meta_dir(),
            heartbeat_ms: config.broker_heartbeat_interval_ms,
            session_timeout_ms: config.broker_session_timeout_ms,
            replica_lag_max_ms: config.replica_lag_time_max_ms,
        };
        let links: coremq_replication::LeaderLinks = Arc::new(|| {
            Rc::new(replica_links::Links::new("coremq-replica"))
                as Rc<dyn coremq_replication::fetcher::LeaderLink>
        });
        let cluster = Cluster::start(handle.clone(), node, log_configs, transport, links)
            .map_err(|error| Error::step("recovering the cluster metadata", error))?;
        let partitions = config.offsets_topic_partitions.max(1);
        let compacted: std::collections::BTreeMap<String, String> =
            [("cleanup.policy".to_string(), "compact".to_string())].into();
        // Every broker asks; the first creates it, with Kafka's replication factor of 3 where
        // the cluster has three brokers (offsets.topic.replication.factor).
        let replication = config.controller_voters.len().clamp(1, 3) as u16;
        create_at_start(
            &cluster,
            groups::OFFSETS_TOPIC,
            partitions,
            replication,
            compacted.clone(),
        )?;
        if config.mqtt.listener.is_some() {
            // The Kafka topics MQTT messages go to, a partition per shard at least.
            let partitions = config.default_partitions.max(shards as u32);
            for topic in config.mqtt.kafka_topics() {
                create_at_start(&cluster, topic, partitions, replication, Default::default())?;
            }
            let retained = crate::mqtt::RETAINED_TOPIC;
            create_at_start(&cluster, retained, 1, replication, compacted.clone())?;
            let sessions = crate::mqtt::SESSIONS_TOPIC;
            create_at_start(
                &cluster,
                sessions,
                partitions,
                replication,
                compacted.clone(),
            )?;
        }
        let phase = PhaseCell::default();
        let metrics: http::Metrics = {
            let handle = handle.clone();
            Box::new(move || {
                futures_lite::future::block_on(metrics::metrics(&handle))
                    .map_err(|error| error.to_string())
            })
        };
        let operations: http::Operations = {
            let handle = handle.clone();
            Box::new(move |method, path| {
                let (method, path) = (method.to_string(), path.to_string());
                let answered = handle.on_shard(0, move |_| async move {
                    Ok(operations::answer(&Context::current(), &method, &path).await)
                });
                futures_lite::future::block_on(answered).unwrap_or_else(|error| {
                    (
                        503,
                        serde_json::json!({"error": error.to_string()}).to_string(),
                    )
                })
            })
        };
        let admin =
            http::AdminServer::start(config.admin_listener, phase.clone(), metrics, operations)
                .map_err(|reason| Error::Admin { reason })?;
        for shard in 0..shards {
            let (config, cluster, shared) = (config.clone(), cluster.clone(), shared.clone());
            let mqtt = mqtt_address.is_some();
            let shard_handle = handle.clone();
            let producer_ids = if shard == 0 {
                Some(producer_ids::ProducerIds::stored_end(&config.meta_dir())?)
            } else {
                None
            };
            futures_lite::future::block_on(handle.on_shard(shard, move |_| async move {
                let (stop, stopped) = flume::bounded(1);
                let context = Rc::new(Context {
                    config,
                    handle: shard_handle,
                    cluster,
                    stop: RefCell::new(Some(stop)),
                    stopped,
                    groups: RefCell::new(groups::Coordinator::default()),
                    producer_ids: producer_ids.map(producer_ids::ProducerIds::new),
                    requests: RefCell::default(),
                    latency: RefCell::default(),
                });
                coremq_runtime::install(context.clone());
                if let Some(ids) = &context.producer_ids {
                    ids.prefetch();
                }
                let loaded = groups::load(&context).await?;
                if loaded > 0 {
                    log::info!("shard {shard}: {loaded} committed offsets recovered");
                }
                coremq_runtime::spawn_local(groups::tick_loop(context.clone())).detach();
                if mqtt {
                    coremq_runtime::install(Rc::new(Mqtt::new(context.clone(), shard)));
                }
                Server::start(context, shared, shard);
                Ok(())
            }))?;
        }
        server::check_listeners::<Context>(&shared, address)?;
        // Every shard's MQTT state exists before any loads: restoring a session registers
        // its client identifier on another shard.
        for shard in 0..shards {
            if mqtt_address.is_none() {
                break;
            }
            let (mqtt_shared, ws_shared) = (mqtt_shared.clone(), ws_shared.clone());
            let websocket = ws_address.is_some();
            futures_lite::future::block_on(handle.on_shard(shard, move |_| async move {
                let front = Mqtt::current().expect("installed above");
                let retained = front.load_retained().await?;
                if retained > 0 {
                    log::info!("shard {shard}: {retained} retained MQTT messages recovered");
                }
                let sessions = front.load_sessions().await?;
                if sessions > 0 {
                    log::info!("shard {shard}: {sessions} MQTT sessions recovered");
                }
                coremq_runtime::spawn_local(front.clone().store_loop()).detach();
                if websocket {
                    Server::start(Rc::new(OverWebSocket(front.clone())), ws_shared, shard);
                }
                Server::start(front, mqtt_shared, shard);
                Ok(())
            }))?;
        }
        if let Some(mqtt_address) = mqtt_address {
            server::check_listeners::<Mqtt>(&mqtt_shared, mqtt_address)?;
        }
        if let Some(ws_address) = ws_address {
            server::check_listeners::<OverWebSocket>(&ws_shared, ws_address)?;
        }
        phase.set(Phase::Serving);
        let (advertised_host, advertised_port) = BrokerConfig {
            kafka_listener: address,
            ..(*config).clone()
        }
        .advertised();
        let data_dir = std::fs::canonicalize(&config.data_dir).unwrap_or(config.data_dir.clone());
        let flush = match configs::durability(
            config.log_flush_interval_messages,
            config.log_flush_interval_ms,
        ) {
            coremq_engine::Durability::Always => {
                "topics fsync before acks=all is answered by default".to_string()
            }
            coremq_engine::Durability::IntervalMs(ms) => {
                format!("topics fsync every {ms} ms by default")
            }
            coremq_engine::Durability::Never => {
                "topics fsync only at segment roll and shutdown by default".to_string()
            }
        };
        let summary = format!(
            "coremq {} serving Kafka clients on {address} (advertised as \
             {advertised_host}:{advertised_port}, accept {}), {}, admin HTTP on {}, data in \
             {}, {shards} shard{}, {flush}",
            env!("CARGO_PKG_VERSION"),
            config.accept,
            match (mqtt_address, ws_address) {
                (Some(mqtt), Some(ws)) => format!(
                    "MQTT clients on {mqtt} and over WebSockets on {ws}{}",
                    config.mqtt.websocket_path
                ),
                (Some(mqtt), None) => format!("MQTT clients on {mqtt}"),
                _ => "no MQTT listener".to_string(),
            },
            admin.address(),
            data_dir.display(),
            if shards == 1 { "" } else { "s" },
        );
        Ok(Broker {
            kafka_address: address,
            mqtt_address,
            summary,
            engine,
            handle,
            cluster,
            admin,
            phase,
            node_id: config.node_id,
            clustered: config.controller_voters.len() > 1 || !config.is_voter(),
        })
    }

    /// Handles one request frame (without its size prefix) on shard 0 as a connection would,
    /// giving up after `timeout` (long polls, joins); the response frame's chunks, or `None`
    /// when there is none or the frame would close the connection. For fuzzing and for
    /// embedding without sockets.
    pub fn handle_frame(
        &self,
        frame: bytes::Bytes,
        timeout: Duration,
    ) -> Option<Vec<bytes::Bytes>> {
        let answer = futures_lite::future::block_on(self.handle.on_shard(0, move |_| async move {
            let context = Context::current();
            let request = match dispatch::decode(&context, frame) {
                Ok(Incoming::Request(request)) => request,
                Ok(Incoming::Answered(answer)) => return Ok(Some(answer)),
                Err(_) => return Ok(None),
            };
            let respond = async { dispatch::respond(&context, request, None).await };
            let expire = async {
                coremq_runtime::sleep(timeout).await;
                None
            };
            Ok(futures_lite::future::or(respond, expire).await)
        }));
        answer.ok().flatten()
    }

    /// Feeds `bytes` to a new MQTT connection on shard 0 as if they came from a socket (see
    /// [`server::converse`]): what the broker would have written back. For fuzzing; empty
    /// without an MQTT listener.
    pub fn mqtt_converse(&self, bytes: bytes::Bytes, patience: Duration) -> Vec<bytes::Bytes> {
        let answer = futures_lite::future::block_on(self.handle.on_shard(0, move |_| async move {
            let Some(front) = Mqtt::current() else {
                return Ok(Vec::new());
            };
            Ok(server::converse(front, &bytes, patience).await)
        }));
        answer.unwrap_or_default()
    }

    /// In a cluster, first hands every leadership to another in-sync replica (controlled
    /// shutdown, within `grace`), so clients move on with a retry; then stops accepting,
    /// lets connections finish the requests they have read (up to what is left of
    /// `grace`), and flushes and closes every log.
    pub fn shutdown(self, grace: Duration) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + grace;
        if self.clustered {
            let me = self.node_id;
            if self.cluster.hand_over(me, grace / 2) {
                log::info!("controlled shutdown: broker {me} leads no partition any more");
            } else {
                log::warn!(
                    "controlled shutdown: broker {me} still leads partitions after {:?} \
                     (no other in-sync replica, or no controller)",
                    grace / 2
                );
            }
        }
        self.phase.set(Phase::Stopping);
        for shard in 0..self.handle.shard_count() {
            let _ =
                futures_lite::future::block_on(self.handle.on_shard(shard, move |_| async move {
                    let context = Context::current();
                    context.stop.borrow_mut().take();
                    context.groups.borrow_mut().unload_members();
                    if let Some(server) = Server::<OverWebSocket>::current() {
                        server.drain(deadline).await;
                    }
                    if let Some(server) = Server::<Mqtt>::current() {
                        server.drain(deadline).await;
                    }
                    if let Some(server) = Server::<Context>::current() {
                        server.drain(deadline).await;
                    }
                    Ok(())
                }));
        }
        drop(self.admin);
        self.cluster.stop();
        for shard in 0..self.handle.shard_count() {
            let _ =
                futures_lite::future::block_on(self.handle.on_shard(shard, move |_| async move {
                    if let Some(server) = Server::<voters::Inbound>::current() {
                        server.drain(deadline).await;
                    }
                    Ok(())
                }));
        }
        self.engine
            .shutdown()
            .map_err(|error| Error::step("flushing logs", error))
    }
}
