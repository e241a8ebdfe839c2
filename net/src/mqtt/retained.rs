//! Retained messages: the last retained message of each topic, kept in the compacted internal
//! topic `__mqtt_retained` (key: the MQTT topic, value and headers as any MQTT record; an
//! empty payload is a tombstone, MQTT-3.3.1-10) and in memory on the shard that owns its
//! partition, which loads it at start and then follows it: every record stored after, by
//! this broker or another of the cluster, is applied in log order, and a retained PUBLISH is
//! answered once it is applied here. Every shard asks that one for the retained messages
//! matching a new subscription.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coremq_engine::notify::Notify;
use coremq_engine::record::Record;
use coremq_engine::{Offset, TopicPartition};

use super::records::Message;
use super::{Mqtt, topic};

/// The compacted topic that stores retained messages.
pub const RETAINED_TOPIC: &str = "__mqtt_retained";

/// How long the follower waits for new records before it looks whether the broker stops.
const WAIT: Duration = Duration::from_millis(500);

/// The retained messages, on the shard owning [`RETAINED_TOPIC`]'s partition.
#[derive(Default)]
pub(super) struct Retained {
    messages: RefCell<BTreeMap<String, Arc<Message>>>,
    /// The next offset of the partition to apply.
    through: Cell<Offset>,
    /// Whether the partition is followed (this broker holds a replica of it).
    followed: Cell<bool>,
    /// Woken when `through` moves or the following stops.
    applied: Notify,
}

impl Retained {
    /// Applies one stored record: its topic's retained message, or none for a tombstone.
    fn apply(&self, topic: &str, record: &Record) {
        self.set(topic, Message::from_record(record));
    }

    /// Makes `message` its topic's retained message, or clears it (none, or an empty payload).
    fn set(&self, topic: &str, message: Option<Message>) {
        let mut messages = self.messages.borrow_mut();
        match message {
            Some(message) if !message.payload.is_empty() => {
                messages.insert(topic.to_string(), Arc::new(message));
            }
            _ => {
                messages.remove(topic);
            }
        }
    }
}

fn log() -> TopicPartition {
    TopicPartition {
        topic: RETAINED_TOPIC.into(),
        partition: 0,
    }
}

impl Mqtt {
    fn retained_shard(&self) -> usize {
        self.context.cluster.shard_of(&log())
    }

    /// Reads `__mqtt_retained` into memory, if this shard owns it, and starts following it;
    /// how many it holds.
    pub(crate) async fn load_retained(self: &Rc<Self>) -> Result<usize, coremq_engine::Error> {
        if self.retained_shard() != self.shard {
            return Ok(0);
        }
        let log = log();
        // Not here yet (a new cluster's replica comes a little later), or never: followed
        // from its start once it is.
        let end = match self.context.cluster.offsets(&log).await {
            Ok(offsets) => Some(offsets.log_end),
            Err(coremq_engine::Error::UnknownLog { .. }) => None,
            Err(error) => return Err(error),
        };
        for (key, record) in self.read_partition(&log).await? {
            self.retained.apply(&key, &record);
        }
        self.retained.through.set(end.unwrap_or_default());
        self.retained.followed.set(end.is_some());
        coremq_runtime::spawn_local(self.clone().follow_retained()).detach();
        Ok(self.retained.messages.borrow().len())
    }

    /// Applies what `__mqtt_retained` gets after the load, up to the high watermark, until
    /// the broker stops; while this broker holds no replica of it, it looks again now and
    /// then.
    async fn follow_retained(self: Rc<Self>) {
        let retained = &self.retained;
        let from = retained.through.get();
        let apply = |topic: &str, record: &Record| retained.apply(topic, record);
        let progress = |next: Option<Offset>| {
            retained.followed.set(next.is_some());
            if let Some(next) = next {
                retained.through.set(next.max(retained.through.get()));
            }
            retained.applied.notify_all();
        };
        self.follow_log(&log(), from, WAIT, apply, progress).await;
        retained.followed.set(false);
        retained.applied.notify_all();
    }

    /// Stores `message` as its topic's retained message, or clears it for an empty payload;
    /// answers once durable and applied on this broker.
    pub(super) async fn retain(&self, message: Message) -> Result<(), String> {
        let shard = self.retained_shard();
        self.context
            .handle
            .on_shard(shard, move |_| async move {
                let mqtt = Mqtt::current().ok_or(coremq_engine::Error::ShuttingDown)?;
                Ok(mqtt.retain_here(message).await)
            })
            .await
            .map_err(|error| error.to_string())?
    }

    async fn retain_here(&self, message: Message) -> Result<(), String> {
        let key = Bytes::copy_from_slice(message.topic.as_bytes());
        let (value, headers) = if message.payload.is_empty() {
            (None, Vec::new())
        } else {
            (Some(message.payload.clone()), message.headers())
        };
        let ticket = self
            .appender
            .append(&self.context.cluster, &log(), key, value, headers, true);
        let offset = ticket.wait().await?;
        while self.retained.followed.get() {
            if self.retained.through.get() > offset {
                return Ok(());
            }
            self.retained.applied.notified().await;
        }
        if self.context.is_stopping() {
            return Err("the broker is stopping".into());
        }
        // Not followed here (no replica on this broker): this broker's own stores apply.
        let mut stored = message;
        stored.timestamp_ms = super::now_ms();
        let topic = stored.topic.clone();
        self.retained.set(&topic, Some(stored));
        Ok(())
    }

    /// The retained messages whose topics match `filter` (without a `$share` prefix) and
    /// have not expired.
    pub(super) async fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let shard = self.retained_shard();
        let filter = filter.to_string();
        self.context
            .handle
            .on_shard(shard, move |_| async move {
                let Some(mqtt) = Mqtt::current() else {
                    return Ok(Vec::new());
                };
                let now_ms = super::now_ms();
                let mut expired = Vec::new();
                let matching = mqtt
                    .retained
                    .messages
                    .borrow()
                    .iter()
                    .filter(|(name, _)| topic::matches(&filter, name))
                    .filter_map(|(name, message)| match message.expiry_left(now_ms) {
                        Some(_) => Some(message.clone()),
                        None => {
                            expired.push(name.clone());
                            None
                        }
                    })
                    .collect();
                // MQTT-3.3.2-5: an expired retained message is not delivered again.
                let mut retained = mqtt.retained.messages.borrow_mut();
                for name in expired {
                    retained.remove(&name);
                }
                Ok(matching)
            })
            .await
            .unwrap_or_default()
    }
}
