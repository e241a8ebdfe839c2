//! Retained messages: the last retained message of each topic, kept in the compacted internal
//! topic `__mqtt_retained` (key: the MQTT topic, value and headers as any MQTT record; an
//! empty payload is a tombstone, MQTT-3.3.1-10) and in memory on the shard that owns its
//! partition, which loads it at start. Every shard asks that one for the retained messages
//! matching a new subscription.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use coremq_engine::TopicPartition;

use super::records::Message;
use super::{Mqtt, topic};

/// The compacted topic that stores retained messages.
pub const RETAINED_TOPIC: &str = "__mqtt_retained";

/// The retained messages, on the shard owning [`RETAINED_TOPIC`]'s partition.
#[derive(Debug, Default)]
pub(super) struct Retained {
    messages: BTreeMap<String, Arc<Message>>,
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

    /// Reads `__mqtt_retained` into memory, if this shard owns it; how many it holds.
    pub(crate) async fn load_retained(&self) -> Result<usize, coremq_engine::Error> {
        if self.retained_shard() != self.shard {
            return Ok(0);
        }
        let log = log();
        let mut messages = BTreeMap::new();
        for (key, record) in self.read_partition(&log).await? {
            match Message::from_record(&record) {
                Some(message) if !message.payload.is_empty() => {
                    messages.insert(key, Arc::new(message));
                }
                _ => {
                    messages.remove(&key);
                }
            }
        }
        let count = messages.len();
        self.retained.borrow_mut().messages = messages;
        Ok(count)
    }

    /// Stores `message` as its topic's retained message, or clears it for an empty payload;
    /// answers once durable.
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
            self.retained.borrow_mut().messages.remove(&message.topic);
            (None, Vec::new())
        } else {
            let headers = message.headers();
            let mut stored = message.clone();
            stored.timestamp_ms = super::now_ms();
            self.retained
                .borrow_mut()
                .messages
                .insert(message.topic.clone(), Arc::new(stored));
            (Some(message.payload.clone()), headers)
        };
        let outcome =
            self.appender
                .append(&self.context.cluster, &log(), key, value, headers, true);
        outcome.wait().await
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
                    .borrow()
                    .messages
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
                let mut retained = mqtt.retained.borrow_mut();
                for name in expired {
                    retained.messages.remove(&name);
                }
                Ok(matching)
            })
            .await
            .unwrap_or_default()
    }
}
