//! The MQTT front end: MQTT 3.1, 3.1.1 and 5.0 clients on the same log as Kafka clients. A
//! PUBLISH becomes a record of the Kafka topic its MQTT topic maps to (`config.rs`), keyed by
//! the MQTT topic (`records.rs`), appended in batches (`appender.rs`); subscriptions are
//! served by reading those topics (`tail.rs`), so what Kafka producers write reaches MQTT
//! subscribers as well. Sessions (`session.rs`) live on the shard of their connection; a
//! client identifier's home shard (`registry.rs`) knows where, so a new connection with the
//! same identifier takes the session over from any shard.
//!
//! Each shard runs one [`Mqtt`], the [`Protocol`] its MQTT server serves.

mod appender;
pub mod codec;
pub mod config;
mod connection;
pub mod records;
mod registry;
mod retained;
mod session;
mod sessions;
mod shared;
mod tail;
pub mod topic;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use coremq_engine::TopicPartition;

pub use config::{Mapping, MqttConfig, parse_mappings};
pub use retained::RETAINED_TOPIC;
pub use sessions::SESSIONS_TOPIC;

use crate::broker::Context;
use crate::server::{FrameSize, Incoming, Link, Protocol};
use connection::Client;
use session::{Dropped, Options, Outgoing, Session};

/// One subscription in the shard's tree.
#[derive(Debug)]
struct Entry {
    /// The session's key.
    key: u64,
    /// The filter as subscribed (with its `$share` prefix).
    filter: Rc<str>,
    /// A shared subscription's group.
    group: Option<shared::Group>,
    options: Options,
}

/// Counters of one shard, for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub messages_received: u64,
    pub messages_sent: u64,
    /// Messages not delivered, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
}

/// A shard's MQTT state: its sessions and their subscriptions, tails, appender, and the
/// client identifiers whose home it is.
pub(crate) struct Mqtt {
    context: Rc<Context>,
    shard: usize,
    next_key: Cell<u64>,
    sessions: RefCell<HashMap<String, Rc<Session>>>,
    by_key: RefCell<HashMap<u64, Rc<Session>>>,
    tree: RefCell<topic::Tree<Entry>>,
    /// Subscriptions on this shard that may match each Kafka topic.
    topic_refs: RefCell<HashMap<String, usize>>,
    /// Partitions tailed on this shard.
    tails: RefCell<HashSet<TopicPartition>>,
    /// The offset each tail reads next.
    tail_next: RefCell<HashMap<TopicPartition, u64>>,
    appender: Rc<appender::Appender>,
    registry: RefCell<registry::Registry>,
    /// The members of every shared subscription group, on every shard.
    groups: RefCell<shared::Groups>,
    /// Filled on the shard owning the retained messages' partition.
    retained: retained::Retained,
    /// Sessions another broker stored last, by client identifier, on the shard owning their
    /// partition of `__mqtt_sessions`: a client that comes back here resumes them.
    parked: RefCell<HashMap<String, sessions::Parked>>,
    counters: RefCell<Counters>,
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

impl Mqtt {
    pub fn new(context: Rc<Context>, shard: usize) -> Mqtt {
        let appender = appender::Appender::new(context.config.node_id);
        Mqtt {
            context,
            shard,
            next_key: Cell::new(1),
            sessions: RefCell::default(),
            by_key: RefCell::default(),
            tree: RefCell::default(),
            topic_refs: RefCell::default(),
            tails: RefCell::default(),
            tail_next: RefCell::default(),
            appender: Rc::new(appender),
            registry: RefCell::default(),
            groups: RefCell::default(),
            retained: Default::default(),
            parked: RefCell::default(),
            counters: RefCell::default(),
        }
    }

    /// This shard's MQTT state, once started.
    pub fn current() -> Option<Rc<Mqtt>> {
        coremq_runtime::local::<Mqtt>()
    }

    fn config(&self) -> &MqttConfig {
        &self.context.config.mqtt
    }

    fn limits(&self) -> session::Limits {
        let config = self.config();
        session::Limits {
            max_queued_messages: config.max_queued_messages,
            pending_bytes_max: config.pending_bytes_max,
        }
    }

    /// This shard's counters, its sessions (connected or not), and the sessions it keeps
    /// aside that another broker stored last.
    pub fn counters(&self) -> (Counters, usize, usize) {
        (
            self.counters.borrow().clone(),
            self.sessions.borrow().len(),
            self.parked.borrow().len(),
        )
    }

    fn count_dropped(&self, reason: Dropped) {
        *self
            .counters
            .borrow_mut()
            .dropped
            .entry(reason.label())
            .or_default() += 1;
    }

    /// Delivers to one session, counting what was sent and dropped.
    fn offer(&self, session: &Session, outgoing: Outgoing, now_ms: i64) {
        match session.offer(outgoing, &self.limits(), now_ms) {
            Ok(()) => self.counters.borrow_mut().messages_sent += 1,
            Err(reason) => self.count_dropped(reason),
        }
    }

    /// Adds a subscription of `session` to the tree and the Kafka topics it may read.
    async fn subscribe(self: &Rc<Self>, session: &Session, filter: &str, options: Options) {
        let Ok(parsed) = topic::parse_filter(filter) else {
            return;
        };
        let group = parsed
            .group
            .map(|group| (group.to_string(), parsed.filter.to_string()));
        if let Some(group) = &group {
            self.share(shared::Change::Join(group.clone(), self.member(session)));
        }
        let entry = Entry {
            key: session.key,
            filter: Rc::from(filter),
            group,
            options,
        };
        self.tree.borrow_mut().insert(parsed.filter, entry);
        let topics: Vec<String> = self
            .config()
            .kafka_topics_for(parsed.filter)
            .into_iter()
            .map(str::to_string)
            .collect();
        for topic in topics {
            *self
                .topic_refs
                .borrow_mut()
                .entry(topic.clone())
                .or_default() += 1;
            self.ensure_tails(&topic).await;
        }
    }

    /// Removes `session`'s subscription `filter` from the tree; whether it had one.
    fn unsubscribe(&self, session: &Session, filter: &str) -> bool {
        let Ok(parsed) = topic::parse_filter(filter) else {
            return false;
        };
        let removed = self.tree.borrow_mut().remove(parsed.filter, |entry| {
            entry.key == session.key && &*entry.filter == filter
        });
        if removed == 0 {
            return false;
        }
        if let Some(group) = parsed.group {
            let group = (group.to_string(), parsed.filter.to_string());
            self.share(shared::Change::Leave(group, self.shard, session.key));
        }
        let mut refs = self.topic_refs.borrow_mut();
        for topic in self.config().kafka_topics_for(parsed.filter) {
            if let Some(count) = refs.get_mut(topic) {
                *count = count.saturating_sub(removed);
                if *count == 0 {
                    refs.remove(topic);
                }
            }
        }
        true
    }

    /// Installs a session on this shard, its subscriptions in the tree.
    async fn install(self: &Rc<Self>, session: Rc<Session>) {
        let subscriptions: Vec<(String, Options)> = session
            .state
            .borrow()
            .subscriptions
            .iter()
            .map(|(filter, options)| (filter.clone(), options.clone()))
            .collect();
        self.sessions
            .borrow_mut()
            .insert(session.client_id.clone(), session.clone());
        self.by_key
            .borrow_mut()
            .insert(session.key, session.clone());
        for (filter, options) in subscriptions {
            self.subscribe(&session, &filter, options).await;
        }
    }

    /// Removes a session from this shard: out of the maps and the tree.
    fn remove(&self, session: &Session) {
        let current = self.sessions.borrow().get(&session.client_id).cloned();
        if current.is_some_and(|current| current.key == session.key) {
            self.sessions.borrow_mut().remove(&session.client_id);
        }
        self.by_key.borrow_mut().remove(&session.key);
        for filter in Mqtt::filters(session) {
            self.unsubscribe(session, &filter);
        }
    }

    /// Tells every shard whether `session`, a member of shared subscription groups, is
    /// connected now.
    fn share_presence(&self, session: &Session) {
        for filter in Mqtt::filters(session) {
            if let Ok(topic::Filter {
                group: Some(group),
                filter,
            }) = topic::parse_filter(&filter)
            {
                let group = (group.to_string(), filter.to_string());
                self.share(shared::Change::Join(group, self.member(session)));
            }
        }
    }

    /// Every record of `log` from its start, in order, with its key (a compacted internal
    /// topic, read whole at start; records whose keys are not UTF-8 are skipped; none when
    /// this broker holds no replica of it).
    async fn read_partition(
        &self,
        log: &TopicPartition,
    ) -> Result<Vec<(String, coremq_engine::record::Record)>, coremq_engine::Error> {
        let offsets = match self.context.cluster.offsets(log).await {
            Ok(offsets) => offsets,
            // In a cluster, a broker holds no replica of some partitions: nothing to read.
            Err(coremq_engine::Error::UnknownLog { .. }) => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut next = offsets.log_start;
        let mut records = Vec::new();
        while next < offsets.log_end {
            let read = self
                .context
                .cluster
                .read(log, next, 1 << 20, coremq_replication::Isolation::Written)
                .await?;
            if read.batches.is_empty() {
                break;
            }
            for batch in read.batches {
                let header = coremq_engine::batch::BatchHeader::parse(&batch)?;
                for record in coremq_engine::record::decode_records(&batch, 64 << 20)? {
                    let key = record.key.as_ref().map(|key| std::str::from_utf8(key));
                    if let Some(Ok(key)) = key {
                        records.push((key.to_string(), record));
                    }
                }
                let after = header.base_offset.0 + u64::from(header.last_offset_delta) + 1;
                next = coremq_engine::Offset(after);
            }
        }
        Ok(records)
    }

    /// Reads `log` from `from` as its high watermark moves, until the broker stops: each
    /// record with a UTF-8 key goes to `apply` in log order, and after each read `progress`
    /// hears the next offset to read, or `None` while this broker holds no replica of `log`
    /// (it looks again every `wait`, as it looks whether the broker stops).
    async fn follow_log(
        &self,
        log: &TopicPartition,
        from: coremq_engine::Offset,
        wait: std::time::Duration,
        mut apply: impl FnMut(&str, &coremq_engine::record::Record),
        mut progress: impl FnMut(Option<coremq_engine::Offset>),
    ) {
        use coremq_replication::Isolation;
        let cluster = &self.context.cluster;
        let mut next = from;
        while !self.context.is_stopping() {
            let read = match cluster
                .wait_readable(log, next, Isolation::Committed, wait)
                .await
            {
                Ok(false) => continue,
                Ok(true) => cluster.read(log, next, 1 << 20, Isolation::Committed).await,
                Err(error) => Err(error),
            };
            let batches = match read {
                Ok(read) => read.batches,
                Err(coremq_engine::Error::UnknownLog { .. }) => {
                    progress(None);
                    self.context.sleep_unless_stopping(wait).await;
                    continue;
                }
                Err(error) => {
                    log::warn!("MQTT: following {log}: {error}");
                    self.context.sleep_unless_stopping(wait).await;
                    continue;
                }
            };
            for batch in batches {
                let Ok(header) = coremq_engine::batch::BatchHeader::parse(&batch) else {
                    break;
                };
                let records =
                    coremq_engine::record::decode_records(&batch, 64 << 20).unwrap_or_default();
                for record in records.iter().filter(|record| record.offset >= next) {
                    if let Some(Ok(key)) = record.key.as_deref().map(std::str::from_utf8) {
                        apply(key, record);
                    }
                }
                next = next.max(header.next_offset());
            }
            progress(Some(next));
        }
    }

    /// `session` as a member of shared subscription groups, as it is now.
    fn member(&self, session: &Session) -> shared::Member {
        shared::Member {
            shard: self.shard,
            key: session.key,
            connected: session.is_connected(),
        }
    }

    /// The filters `session` subscribes to.
    fn filters(session: &Session) -> Vec<String> {
        session
            .state
            .borrow()
            .subscriptions
            .keys()
            .cloned()
            .collect()
    }

    fn next_key(&self) -> u64 {
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        key
    }
}

impl Protocol for Mqtt {
    type Request = connection::Request;
    type Connection = Client;

    const CLIENTS: &'static str = "MQTT clients";

    /// The fixed header: a type byte, then the remaining length in one to four bytes.
    fn frame_size(prefix: &[u8]) -> Result<FrameSize, String> {
        match codec::remaining_length(prefix) {
            Ok(Some(length)) => Ok(FrameSize::Body(length)),
            Ok(None) => Ok(FrameSize::Need(1)),
            Err(error) => Err(error.to_string()),
        }
    }

    fn open(&self, peer: Option<SocketAddr>, link: Link) -> Rc<Client> {
        let id = self.next_key();
        Rc::new(Client::new(id, peer, link, self.config()))
    }

    fn decode(
        &self,
        client: &Rc<Client>,
        prefix: &[u8],
        body: Bytes,
    ) -> Result<Incoming<Self::Request>, String> {
        client.decode(prefix[0], body)
    }

    async fn respond(
        self: Rc<Self>,
        client: Rc<Client>,
        request: Self::Request,
        _peer: Option<SocketAddr>,
    ) -> Option<Vec<Bytes>> {
        connection::respond(self, client, request).await
    }

    fn too_large(&self, client: &Rc<Client>) -> Option<Vec<Bytes>> {
        client.too_large()
    }

    fn closed(&self, client: &Rc<Client>) {
        connection::closed(client);
    }
}

/// MQTT over WebSockets: the same protocol and shard state behind the WebSocket listener (a
/// type of its own, so each listener has its own server, bounds and counts on every shard).
pub(crate) struct OverWebSocket(pub Rc<Mqtt>);

impl Protocol for OverWebSocket {
    type Request = connection::Request;
    type Connection = Client;

    const CLIENTS: &'static str = "MQTT clients over WebSockets";

    fn frame_size(prefix: &[u8]) -> Result<FrameSize, String> {
        Mqtt::frame_size(prefix)
    }

    fn open(&self, peer: Option<SocketAddr>, link: Link) -> Rc<Client> {
        self.0.open(peer, link)
    }

    fn decode(
        &self,
        client: &Rc<Client>,
        prefix: &[u8],
        body: Bytes,
    ) -> Result<Incoming<Self::Request>, String> {
        self.0.decode(client, prefix, body)
    }

    async fn respond(
        self: Rc<Self>,
        client: Rc<Client>,
        request: Self::Request,
        _peer: Option<SocketAddr>,
    ) -> Option<Vec<Bytes>> {
        connection::respond(self.0.clone(), client, request).await
    }

    fn too_large(&self, client: &Rc<Client>) -> Option<Vec<Bytes>> {
        self.0.too_large(client)
    }

    fn closed(&self, client: &Rc<Client>) {
        self.0.closed(client);
    }
}
