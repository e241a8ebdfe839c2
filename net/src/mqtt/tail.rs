//! Tails: one reader per Kafka partition per shard, started when a subscription on the shard
//! may match what the partition holds and stopped when none does. It reads each batch once
//! (stored records, whoever wrote them: MQTT clients or Kafka producers) and offers every
//! record to the shard's sessions whose subscriptions match its MQTT topic, so a message
//! fanned out to many subscribers is stored once and read once per shard.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use coremq_engine::record::decode_records;
use coremq_engine::{Error, Offset, TopicPartition};
use coremq_replication::Isolation;

use super::Mqtt;
use super::records::Message;
use super::session::{Options, Outgoing, Place};
use super::shared::Group;

/// How long a tail waits for new records before it looks again whether it is still wanted.
const WAIT: Duration = Duration::from_millis(500);

/// Bytes a tail reads at once.
const READ_BYTES_MAX: usize = 1 << 20;

/// Records inflated from one batch at most.
const DECOMPRESSED_BYTES_MAX: usize = 64 << 20;

impl Mqtt {
    /// Starts a tail on every partition of `topic` that has none, each from the partition's
    /// committed end, and returns once they all know where they start (a message stored after
    /// this returns reaches the subscriptions made before).
    pub(super) async fn ensure_tails(self: &Rc<Self>, topic: &str) {
        let Some(table_topic) = self.context.topics().get(topic).cloned() else {
            return;
        };
        for index in 0..table_topic.partitions as i32 {
            let Some(log) = table_topic.log(index) else {
                continue;
            };
            if !self.tails.borrow_mut().insert(log.clone()) {
                continue;
            }
            let start = match self.context.cluster.offsets(&log).await {
                // Where committed records end: a follower's replica may hold more, which a
                // tail (reading committed records only) must not skip.
                Ok(offsets) => offsets.committed,
                Err(error) => {
                    log::debug!("MQTT: not tailing {log}: {error}");
                    self.tails.borrow_mut().remove(&log);
                    continue;
                }
            };
            self.tail_next.borrow_mut().insert(log.clone(), start.0);
            let mqtt = self.clone();
            coremq_runtime::spawn_local(async move { mqtt.tail(log, start).await }).detach();
        }
    }

    /// Whether a subscription on this shard may match what `topic` holds.
    fn wanted(&self, topic: &str) -> bool {
        self.topic_refs
            .borrow()
            .get(topic)
            .is_some_and(|&count| count > 0)
    }

    async fn tail(self: Rc<Self>, log: TopicPartition, start: Offset) {
        let mut next = start;
        while self.wanted(&log.topic) && !self.context.is_stopping() {
            let readable = self
                .context
                .cluster
                .wait_readable(&log, next, Isolation::Committed, WAIT)
                .await;
            match readable {
                Ok(false) => continue,
                Ok(true) => {}
                Err(error) => {
                    log::debug!("MQTT: tail of {log} stops: {error}");
                    break;
                }
            }
            let read = self
                .context
                .cluster
                .read(&log, next, READ_BYTES_MAX, Isolation::Committed)
                .await;
            let batches = match read {
                Ok(read) => read.batches,
                Err(Error::OffsetOutOfRange { log_start, .. }) if next < log_start => {
                    next = log_start;
                    continue;
                }
                Err(error) => {
                    log::debug!("MQTT: tail of {log} stops: {error}");
                    break;
                }
            };
            for batch in batches {
                let Ok(header) = coremq_engine::batch::BatchHeader::parse(&batch) else {
                    break;
                };
                let after = Offset(header.base_offset.0 + u64::from(header.last_offset_delta) + 1);
                if let Ok(records) = decode_records(&batch, DECOMPRESSED_BYTES_MAX) {
                    for record in records.iter().filter(|record| record.offset >= next) {
                        if let Some(message) = Message::from_record(record) {
                            let place = Arc::new(Place {
                                log: log.clone(),
                                offset: record.offset.0,
                            });
                            self.route(Arc::new(message), place);
                        }
                    }
                }
                next = next.max(after);
                self.tail_next.borrow_mut().insert(log.clone(), next.0);
                coremq_runtime::yield_if_needed().await;
            }
        }
        self.tails.borrow_mut().remove(&log);
        self.tail_next.borrow_mut().remove(&log);
    }

    /// Offers `message` (stored at `place`) to every session on
    /// this shard with a matching subscription: once per session, at the highest QoS of its
    /// matching subscriptions (MQTT-3.3.4-2), with every matching subscription's identifier
    /// (MQTT-3.3.4-3), not to the publisher where no-local says so (MQTT-3.8.3-3); and to
    /// the one member of each matching shared subscription group that gets it, if that one
    /// is here (`shared.rs`).
    pub(super) fn route(&self, message: Arc<Message>, place: Arc<Place>) {
        let mut matched: HashMap<u64, Outgoing> = HashMap::new();
        let mut shared: HashMap<Group, Vec<(u64, Options)>> = HashMap::new();
        {
            let tree = self.tree.borrow();
            let sessions = self.by_key.borrow();
            tree.matches(&message.topic, |entry| {
                if let Some(group) = &entry.group {
                    shared
                        .entry(group.clone())
                        .or_default()
                        .push((entry.key, entry.options.clone()));
                    return;
                }
                let Some(session) = sessions.get(&entry.key) else {
                    return;
                };
                if entry.options.no_local
                    && message.client_id.as_deref() == Some(session.client_id.as_str())
                {
                    return;
                }
                let qos = entry.options.qos.min(message.qos);
                let retain = entry.options.retain_as_published && message.retain;
                let outgoing = matched.entry(entry.key).or_insert_with(|| Outgoing {
                    message: message.clone(),
                    qos,
                    retain,
                    subscription_identifiers: Vec::new(),
                    place: Some(place.clone()),
                });
                outgoing.qos = outgoing.qos.max(qos);
                outgoing.retain |= retain;
                if let Some(identifier) = entry.options.identifier {
                    outgoing.subscription_identifiers.push(identifier);
                }
            });
        }
        let now_ms = super::now_ms();
        for (key, outgoing) in matched {
            let session = self.by_key.borrow().get(&key).cloned();
            if let Some(session) = session {
                self.offer(&session, outgoing, now_ms);
            }
        }
        for (group, entries) in shared {
            let chosen = self
                .groups
                .borrow()
                .choose(&group, place.log.partition, place.offset);
            let Some(chosen) = chosen.filter(|member| member.shard == self.shard) else {
                continue;
            };
            let Some((_, options)) = entries.into_iter().find(|(key, _)| *key == chosen.key) else {
                continue;
            };
            let session = self.by_key.borrow().get(&chosen.key).cloned();
            if let Some(session) = session {
                let outgoing = Outgoing {
                    qos: options.qos.min(message.qos),
                    retain: options.retain_as_published && message.retain,
                    subscription_identifiers: options.identifier.into_iter().collect(),
                    message: message.clone(),
                    place: Some(place.clone()),
                };
                self.offer(&session, outgoing, now_ms);
            }
        }
    }
}
