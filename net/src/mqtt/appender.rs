//! Appends MQTT messages to their Kafka partitions in batches. Messages for a partition that
//! arrive while its last batch is being appended wait and go together in the next one (group
//! commit), so a busy partition gets large batches and an idle one no added latency. Order is
//! kept: a partition's messages are appended in the order they were handed over. A partition
//! another broker leads gets its batches over Kafka's Produce, as a client's would.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coremq_engine::record::{BatchBuilder, Header};
use coremq_engine::{Compression, Offset, Timestamp, TopicPartition};
use coremq_replication::leader::BrokerId;
use coremq_replication::{Cluster, Consistency};
use coremq_runtime::sync::Semaphore;

use crate::broker::replica_links::Links;

/// How long an append waits for the in-sync replicas (Kafka's default request timeout).
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Record bytes in one batch at most, below Kafka's default `max.message.bytes`.
const BATCH_RECORD_BYTES_MAX: usize = 900 << 10;

/// One record waiting for its batch.
struct Pending {
    timestamp: Timestamp,
    key: Bytes,
    /// `None`: a tombstone.
    value: Option<Bytes>,
    headers: Vec<Header>,
    durable: bool,
}

/// The answer every message of one batch gets: the batch's base offset once stored (durably,
/// when it asked).
struct Outcome {
    result: RefCell<Option<Result<Offset, String>>>,
    /// Closed once `result` is set (a semaphore without permits: its waiters leave in
    /// O(1), where a flume receiver shared by a batch's messages searches them all).
    done: Semaphore,
}

/// One record handed to the appender: its batch's outcome and its place in the batch.
pub struct Ticket {
    outcome: Rc<Outcome>,
    index: u64,
}

impl Ticket {
    /// Waits for the batch's append; the record's offset.
    pub async fn wait(&self) -> Result<Offset, String> {
        let _ = self.outcome.done.acquire(1).await;
        let base = self
            .outcome
            .result
            .borrow()
            .clone()
            .unwrap_or_else(|| Err("the append was dropped".into()))?;
        Ok(Offset(base.0 + self.index))
    }
}

/// The next batch of one partition: its records and the outcome they will share.
struct Batch {
    records: Vec<Pending>,
    bytes: usize,
    outcome: Rc<Outcome>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            records: Vec::new(),
            bytes: 0,
            outcome: Rc::new(Outcome {
                result: RefCell::new(None),
                done: Semaphore::new(0),
            }),
        }
    }
}

impl Drop for Batch {
    /// Its messages hear the outcome, or, where it was dropped unappended, that it was.
    fn drop(&mut self) {
        self.outcome.done.close();
    }
}

#[derive(Default)]
struct Queue {
    /// Batches not yet appended, the oldest first; a full one is followed by a new one.
    batches: Vec<Batch>,
    appending: Cell<bool>,
}

/// A shard's appenders, one queue per partition it appends MQTT messages to.
pub struct Appender {
    /// This broker.
    me: BrokerId,
    queues: RefCell<HashMap<TopicPartition, Rc<RefCell<Queue>>>>,
    /// Connections to the brokers that lead partitions this one does not.
    leaders: Links,
}

impl Appender {
    /// The appender of broker `me`.
    pub fn new(me: BrokerId) -> Appender {
        Appender {
            me,
            queues: RefCell::default(),
            leaders: Links::new("coremq-mqtt"),
        }
    }

    /// Queues a record for `log`; its ticket for the outcome. `durable`: the batch is appended with
    /// the topic's durability (acks=all), else as soon as it is written.
    pub fn append(
        self: &Rc<Self>,
        cluster: &Cluster,
        log: &TopicPartition,
        key: Bytes,
        value: Option<Bytes>,
        headers: Vec<Header>,
        durable: bool,
    ) -> Ticket {
        let queue = self
            .queues
            .borrow_mut()
            .entry(log.clone())
            .or_default()
            .clone();
        let bytes = key.len()
            + value.as_ref().map_or(0, Bytes::len)
            + headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
            + 16;
        let ticket = {
            let mut queue = queue.borrow_mut();
            let full = queue.batches.last().is_none_or(|batch| {
                batch.bytes + bytes > BATCH_RECORD_BYTES_MAX && !batch.records.is_empty()
            });
            if full {
                queue.batches.push(Batch::new());
            }
            let batch = queue.batches.last_mut().expect("a batch was just made");
            batch.bytes += bytes;
            let index = batch.records.len() as u64;
            batch.records.push(Pending {
                timestamp: Timestamp::now(),
                key,
                value,
                headers,
                durable,
            });
            Ticket {
                outcome: batch.outcome.clone(),
                index,
            }
        };
        let idle = !queue.borrow().appending.replace(true);
        if idle {
            let (cluster, log, appender) = (cluster.clone(), log.clone(), self.clone());
            coremq_runtime::spawn_local(async move {
                appender.drain(&cluster, &log, &queue).await;
            })
            .detach();
        }
        ticket
    }

    /// Appends one batch here if this broker leads `log`, else on its leader (also when
    /// the metadata named this broker but the partition's role here says otherwise).
    /// `durable`: the topic's durability with the in-sync replicas (acks=all), else the
    /// leader's write.
    async fn append_batch(
        &self,
        cluster: &Cluster,
        log: &TopicPartition,
        batch: Bytes,
        durable: bool,
    ) -> Result<Offset, String> {
        let consistency = if durable {
            Consistency::Durable {
                timeout: APPEND_TIMEOUT,
            }
        } else {
            Consistency::Leader
        };
        if cluster
            .leader_of(log)
            .is_none_or(|leader| leader == self.me)
        {
            match cluster.append(log, batch.clone(), consistency).await {
                Ok(info) => return Ok(info.base_offset),
                Err(coremq_engine::Error::NotLeader) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
        let leader = cluster
            .leader_of(log)
            .ok_or_else(|| format!("{log} has no leader"))?;
        let address = crate::broker::metadata::broker(&cluster.image(), leader)
            .map(|broker| (broker.host, broker.port))
            .ok_or_else(|| format!("the leader of {log}, broker {leader}, is unknown"))?;
        let acks = if durable { -1 } else { 1 };
        self.leaders
            .produce(leader, &address, log, batch, acks, APPEND_TIMEOUT)
            .await
    }

    /// Appends the partition's batches one after another until none is left.
    async fn drain(&self, cluster: &Cluster, log: &TopicPartition, queue: &Rc<RefCell<Queue>>) {
        loop {
            let batch = {
                let mut queue = queue.borrow_mut();
                if queue.batches.is_empty() {
                    queue.appending.set(false);
                    break;
                }
                queue.batches.remove(0)
            };
            let durable = batch.records.iter().any(|record| record.durable);
            let mut builder = BatchBuilder::with_capacity(Compression::Zstd, batch.bytes);
            for record in &batch.records {
                builder.push(
                    record.timestamp,
                    Some(&record.key),
                    record.value.as_deref(),
                    &record.headers,
                );
            }
            let result = self
                .append_batch(cluster, log, builder.build(), durable)
                .await;
            *batch.outcome.result.borrow_mut() = Some(result);
            drop(batch);
        }
        let empty = queue.borrow().batches.is_empty() && !queue.borrow().appending.get();
        if empty {
            let mut queues = self.queues.borrow_mut();
            if queues
                .get(log)
                .is_some_and(|current| Rc::ptr_eq(current, queue))
            {
                queues.remove(log);
            }
        }
    }
}
