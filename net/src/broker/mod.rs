//! The Kafka broker: one listener per shard (SO_REUSEPORT, so the kernel spreads
//! connections), or one on shard 0 that hands each connection to the shard serving the
//! fewest; each connection is served on one shard, and requests for partitions another
//! shard owns go there through the engine's handle.

mod admin;
mod closes;
pub mod config;
mod configs;
mod connection;
mod dispatch;
mod error;
mod errors;
mod fetch;
mod groups;
mod http;
mod listener;
mod metadata;
mod produce;
mod producer_ids;
mod replicas;
pub mod topics;

pub use error::Error;

/// The `__consumer_offsets` record layout (its decoders read what is on disk).
pub use groups::offsets as group_offsets;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coremq_engine::{Engine, EngineConfig, Handle, TopicPartition};
use glommio::net::TcpListener;
use glommio::sync::Semaphore;

pub use config::{AcceptMode, BrokerConfig};
pub use configs::parse_cleanup_policy;
use topics::{Topic, TopicStore, TopicTable};

/// A shard's broker state: reached from connection tasks and from closures the engine runs
/// on the shard.
pub(crate) struct Context {
    pub config: Arc<BrokerConfig>,
    pub handle: Handle,
    topics: RefCell<Arc<TopicTable>>,
    pub store: TopicStore,
    /// Request bytes buffered on this shard.
    pub request_bytes: Rc<Semaphore>,
    /// Serializes topic changes (used on shard 0 only).
    pub topic_changes: Semaphore,
    /// Dropped on shutdown: listeners and connections stop on the disconnect.
    stop: RefCell<Option<flume::Sender<()>>>,
    stopped: flume::Receiver<()>,
    /// This shard's index.
    pub shard: usize,
    /// Open Kafka connections of every shard, by shard: each shard counts its own; the
    /// handoff acceptor reads them all to pick the least loaded.
    pub connections: Arc<[AtomicUsize]>,
    /// The consumer groups this shard coordinates.
    pub groups: RefCell<groups::Coordinator>,
    /// Shard 0 hands out producer ids.
    pub producer_ids: Option<producer_ids::ProducerIds>,
    /// Requests decoded on this shard, by API key.
    pub requests: RefCell<std::collections::HashMap<i16, u64>>,
    /// Connections this shard closed, by reason, and their rate-limited log.
    pub closes: closes::CloseLog,
    /// Open connections by client IP address, all shards together.
    pub ips: connection::ConnectionsByIp,
}

impl Context {
    /// This shard's context (kept in the runtime's per-shard state slot).
    pub fn current() -> Rc<Context> {
        coremq_runtime::local::<Context>().expect("broker context installed on every shard")
    }

    /// Open Kafka connections served on this shard.
    pub fn open_connections(&self) -> usize {
        self.connections[self.shard].load(Ordering::Relaxed)
    }

    pub fn topics(&self) -> Arc<TopicTable> {
        self.topics.borrow().clone()
    }

    /// Whether the broker is shutting down (its stop signal was given).
    pub fn is_stopping(&self) -> bool {
        self.stop.borrow().is_none()
    }

    pub fn stop_signal(&self) -> flume::Receiver<()> {
        self.stopped.clone()
    }

    /// Sleeps for `period`, or less if the broker stops meanwhile; whether it is stopping.
    pub async fn sleep_unless_stopping(&self, period: Duration) -> bool {
        let stop = self.stop_signal();
        futures_lite::future::or(
            async {
                glommio::timer::sleep(period).await;
                false
            },
            async {
                let _ = stop.recv_async().await;
                true
            },
        )
        .await
    }

    /// Installs `table` on every shard (this one included).
    pub async fn publish(&self, table: TopicTable) {
        let table = Arc::new(table);
        for shard in 0..self.handle.shard_count() {
            let table = table.clone();
            let _ = self
                .handle
                .on_shard(shard, move |_| async move {
                    *Context::current().topics.borrow_mut() = table;
                    Ok(())
                })
                .await;
        }
    }

    /// Runs `change` on shard 0, one topic change at a time; it returns the new table (if
    /// any), which is saved and installed on every shard before the answer.
    async fn change_topics<T, F, Fut>(&self, change: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Context>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(Option<TopicTable>, T), Error>> + 'static,
    {
        let changed = self.handle.on_shard(0, move |_| async move {
            let context = Context::current();
            let _change = context
                .topic_changes
                .acquire_permit(1)
                .await
                .map_err(|_| coremq_engine::Error::ShuttingDown)?;
            let changed = async {
                let (table, answer) = change(context.clone()).await?;
                if let Some(table) = table {
                    context.store.save(&table).await?;
                    context.publish(table).await;
                }
                Ok::<T, Error>(answer)
            };
            Ok(changed.await)
        });
        changed.await?
    }

    /// Creates topic `name` with `partitions` partitions and config `overrides` (checked by
    /// the caller). `Ok(None)` if it already exists.
    pub async fn create_topic(
        &self,
        name: String,
        partitions: u32,
        overrides: std::collections::BTreeMap<String, String>,
    ) -> Result<Option<Arc<Topic>>, Error> {
        self.change_topics(move |context| async move {
            if context.topics().get(&name).is_some() {
                return Ok((None, None));
            }
            let config = topic_log_config(&context.config, &name, &overrides)?;
            for partition in 0..partitions {
                let log = TopicPartition::new(name.clone(), partition)?;
                context
                    .handle
                    .create_log(&log, Some(config.clone()))
                    .await?;
            }
            let topic = Arc::new(Topic {
                name,
                id: topics::new_topic_id(),
                partitions,
                configs: overrides,
            });
            let table = context.topics().with(Topic::clone(&topic));
            Ok((Some(table), Some(topic)))
        })
        .await
    }

    /// Deletes topic `name`: out of the table first (so an interrupted deletion finishes at
    /// the next start), then its logs. `Ok(false)` if there is no such topic.
    pub async fn delete_topic(&self, name: String) -> Result<bool, Error> {
        let deleted = self
            .change_topics(move |context| async move {
                let table = context.topics();
                let Some(topic) = table.get(&name).cloned() else {
                    return Ok((None, None));
                };
                Ok((Some(table.without(&name)), Some(topic)))
            })
            .await?;
        let Some(topic) = deleted else {
            return Ok(false);
        };
        for partition in 0..topic.partitions {
            let log = TopicPartition::new(topic.name.clone(), partition)?;
            self.handle.delete_log(&log).await?;
        }
        Ok(true)
    }

    /// Grows topic `name` to `count` partitions (checked by the caller to be more).
    pub async fn add_partitions(&self, name: String, count: u32) -> Result<(), Error> {
        self.change_topics(move |context| async move {
            let table = context.topics();
            let topic = table
                .get(&name)
                .cloned()
                .ok_or_else(|| Error::UnknownTopic { name: name.clone() })?;
            let config = topic_log_config(&context.config, &name, &topic.configs)?;
            for partition in topic.partitions..count {
                let log = TopicPartition::new(name.clone(), partition)?;
                context
                    .handle
                    .create_log(&log, Some(config.clone()))
                    .await?;
            }
            let grown = Topic {
                partitions: count.max(topic.partitions),
                ..Topic::clone(&topic)
            };
            Ok((Some(table.with(grown)), ()))
        })
        .await
    }

    /// Replaces topic `name`'s config overrides with `overrides` (checked by the caller) and
    /// applies them to every partition's log.
    pub async fn set_topic_configs(
        &self,
        name: String,
        overrides: std::collections::BTreeMap<String, String>,
    ) -> Result<(), Error> {
        self.change_topics(move |context| async move {
            let table = context.topics();
            let Some(topic) = table.get(&name).cloned() else {
                return Ok((None, ()));
            };
            let config = topic_log_config(&context.config, &name, &overrides)?;
            let changed = Topic {
                configs: overrides,
                ..Topic::clone(&topic)
            };
            let table = table.with(changed);
            // The table first: a restart applies its configs to the logs (reconcile).
            context.store.save(&table).await?;
            for partition in 0..topic.partitions {
                let log = TopicPartition::new(name.clone(), partition)?;
                context.handle.set_config(&log, config.clone()).await?;
            }
            Ok((Some(table), ()))
        })
        .await
    }
}

/// A running broker.
pub struct Broker {
    /// Where the Kafka listener is bound (its port, when the setting's was 0).
    pub kafka_address: std::net::SocketAddr,
    /// What the startup line says: addresses, data directory, shards, durability, version.
    pub summary: String,
    engine: Engine,
    handle: Handle,
    admin: http::AdminServer,
    phase: http::PhaseCell,
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
        let store = TopicStore::new(&config.meta_dir());
        let mut table = store.load()?;
        let shards = if config.shards == 0 {
            std::thread::available_parallelism().map_or(1, |cores| cores.get())
        } else {
            config.shards
        };
        let engine = Engine::start(EngineConfig {
            shards,
            pin_shards: config.pin_shards,
            ..EngineConfig::new(config.logs_dir())
        })
        .map_err(|error| Error::step("storage engine", error))?;
        let handle = engine.handle();
        futures_lite::future::block_on(reconcile(&handle, &config, &table))
            .map_err(|error| Error::step("recovering topics", error))?;
        if table.get(groups::OFFSETS_TOPIC).is_none() {
            let (on_shard, store, config) = (handle.clone(), store.clone(), config.clone());
            let created = futures_lite::future::block_on(handle.on_shard(0, move |_| async move {
                Ok(create_offsets_topic(&on_shard, &store, &table, &config).await)
            }));
            table = created
                .map_err(Error::from)
                .and_then(|created| created)
                .map_err(|error| {
                    Error::step(format!("creating {}", groups::OFFSETS_TOPIC), error)
                })?;
        }
        let table = Arc::new(table);
        let phase = http::PhaseCell::new();
        let admin = http::AdminServer::start(config.admin_listener, handle.clone(), phase.clone())
            .map_err(|reason| Error::Admin { reason })?;
        // Shard 0 binds first; the others bind the address it got (a port of 0 means one
        // port for all of them). No other process may share it (listener.rs).
        listener::probe(config.kafka_listener, "Kafka clients")?;
        let mut address = config.kafka_listener;
        let connections: Arc<[AtomicUsize]> = (0..shards).map(|_| AtomicUsize::new(0)).collect();
        let ips = connection::ConnectionsByIp::default();
        for shard in 0..shards {
            let listens = shard == 0 || config.accept == AcceptMode::ReusePort;
            let config = config.clone();
            let table = table.clone();
            let connections = connections.clone();
            let ips = ips.clone();
            let store = store.clone();
            let shard_handle = handle.clone();
            let producer_ids = if shard == 0 {
                let reserved_end = producer_ids::ProducerIds::stored_end(&config.meta_dir())?;
                Some((config.meta_dir(), reserved_end))
            } else {
                None
            };
            let bound =
                futures_lite::future::block_on(handle.on_shard(shard, move |_| async move {
                    let cannot_listen = |reason: String| Error::Listen {
                        what: "Kafka clients".into(),
                        address,
                        reason,
                    };
                    let listener = if listens {
                        match TcpListener::bind(address) {
                            Ok(listener) => Some(listener),
                            Err(error) => return Ok(Err(cannot_listen(error.to_string()))),
                        }
                    } else {
                        None
                    };
                    // With port 0, the bound port is the one clients are told of.
                    let bound = match listener.as_ref().map(TcpListener::local_addr) {
                        Some(Ok(bound)) => bound,
                        Some(Err(error)) => {
                            let reason = format!("reading the bound address: {error}");
                            return Ok(Err(cannot_listen(reason)));
                        }
                        None => address,
                    };
                    let config = if bound == config.kafka_listener {
                        config
                    } else {
                        Arc::new(BrokerConfig {
                            kafka_listener: bound,
                            ..(*config).clone()
                        })
                    };
                    let (stop, stopped) = flume::bounded(1);
                    let context = Rc::new(Context {
                        request_bytes: Rc::new(Semaphore::new(
                            config.shard_request_bytes_max as u64,
                        )),
                        config,
                        handle: shard_handle,
                        topics: RefCell::new(table),
                        store,
                        topic_changes: Semaphore::new(1),
                        stop: RefCell::new(Some(stop)),
                        stopped,
                        shard,
                        connections,
                        groups: RefCell::new(groups::Coordinator::default()),
                        producer_ids: producer_ids.map(|(dir, reserved_end)| {
                            producer_ids::ProducerIds::new(dir, reserved_end)
                        }),
                        requests: RefCell::default(),
                        closes: closes::CloseLog::new(),
                        ips,
                    });
                    coremq_runtime::install(context.clone());
                    let loaded = groups::load(&context).await?;
                    if loaded > 0 {
                        log::info!("shard {shard}: {loaded} committed offsets recovered");
                    }
                    glommio::spawn_local(groups::tick_loop(context.clone())).detach();
                    glommio::spawn_local(closes::window_loop(context.clone())).detach();
                    if let Some(listener) = listener {
                        glommio::spawn_local(connection::accept_loop(context, listener)).detach();
                    }
                    Ok(Ok(bound))
                }))
                .map_err(Error::from)
                .and_then(|bound| bound)?;
            address = bound;
        }
        let listeners = match config.accept {
            AcceptMode::ReusePort => shards,
            AcceptMode::Handoff => 1,
        };
        listener::verify(address, listeners, "Kafka clients")?;
        phase.set(http::Phase::Serving);
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
             {advertised_host}:{advertised_port}, accept {}), admin HTTP on {}, data in {}, \
             {shards} shard{}, {flush}",
            env!("CARGO_PKG_VERSION"),
            config.accept,
            admin.address(),
            data_dir.display(),
            if shards == 1 { "" } else { "s" },
        );
        Ok(Broker {
            kafka_address: address,
            summary,
            engine,
            handle,
            admin,
            phase,
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
                Ok(dispatch::Incoming::Request(request)) => request,
                Ok(dispatch::Incoming::Answered(answer)) => return Ok(Some(answer)),
                Err(_) => return Ok(None),
            };
            let respond = async { dispatch::respond(&context, request, None).await };
            let expire = async {
                glommio::timer::sleep(timeout).await;
                None
            };
            Ok(futures_lite::future::or(respond, expire).await)
        }));
        answer.ok().flatten()
    }

    /// Stops accepting, lets connections finish the requests they have read (up to
    /// `grace`), then flushes and closes every log.
    pub fn shutdown(self, grace: Duration) -> Result<(), Error> {
        self.phase.set(http::Phase::Stopping);
        for shard in 0..self.handle.shard_count() {
            let _ =
                futures_lite::future::block_on(self.handle.on_shard(shard, move |_| async move {
                    let context = Context::current();
                    context.stop.borrow_mut().take();
                    context.groups.borrow_mut().unload_members();
                    let deadline = std::time::Instant::now() + grace;
                    while context.open_connections() > 0 && std::time::Instant::now() < deadline {
                        glommio::timer::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(())
                }));
        }
        drop(self.admin);
        self.engine
            .shutdown()
            .map_err(|error| Error::step("flushing logs", error))
    }
}

/// A topic's log settings (see `configs::log_config`).
fn topic_log_config(
    config: &BrokerConfig,
    name: &str,
    overrides: &std::collections::BTreeMap<String, String>,
) -> Result<coremq_engine::LogConfig, Error> {
    configs::log_config(config, name, overrides).map_err(|reason| Error::TopicConfig {
        topic: name.to_string(),
        reason,
    })
}

/// Creates `__consumer_offsets` (compacted) and adds it to the table.
async fn create_offsets_topic(
    handle: &Handle,
    store: &TopicStore,
    table: &TopicTable,
    config: &BrokerConfig,
) -> Result<TopicTable, Error> {
    let partitions = config.offsets_topic_partitions.max(1);
    for partition in 0..partitions {
        let log = TopicPartition::new(groups::OFFSETS_TOPIC, partition)?;
        handle
            .create_log(&log, Some(groups::offsets_log_config()))
            .await?;
    }
    let table = table.with(Topic {
        name: groups::OFFSETS_TOPIC.into(),
        id: topics::new_topic_id(),
        partitions,
        configs: [("cleanup.policy".to_string(), "compact".to_string())].into(),
    });
    store.save(&table).await?;
    Ok(table)
}

/// Makes the logs match the topic table: deletes logs of topics (or partitions) it does not
/// list, left by an interrupted change, and creates missing ones.
async fn reconcile(
    handle: &Handle,
    broker: &BrokerConfig,
    table: &TopicTable,
) -> Result<(), Error> {
    let logs = handle.list_logs().await?;
    for log in &logs {
        let known = table
            .get(&log.topic)
            .is_some_and(|topic| log.partition < topic.partitions);
        if !known {
            log::warn!("deleting log {log}: no topic lists it (an interrupted change)");
            handle.delete_log(log).await?;
        }
    }
    for topic in table.iter() {
        let config = topic_log_config(broker, &topic.name, &topic.configs)?;
        for partition in 0..topic.partitions {
            let log = TopicPartition::new(topic.name.clone(), partition)?;
            if !logs.contains(&log) {
                handle.create_log(&log, Some(config.clone())).await?;
            } else if handle.config(&log).await? != config {
                handle.set_config(&log, config.clone()).await?;
            }
        }
    }
    Ok(())
}
