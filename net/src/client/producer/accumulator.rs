//! The record accumulator, as in Kafka's producer: a queue of batches per partition, each
//! record appended to the open batch of the partition the partitioner picks, a batch closed
//! when it is full or has lingered, and the choice of which batches go in the next requests.
//! No I/O: the sender asks it what to send, with the leaders and requests in flight it knows,
//! and gives back what must be sent again.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use coremq_engine::notify::Notify;
use coremq_engine::{BatchBuilder, Timestamp};

use super::partitioner::Partitioner;
use super::{ProducerConfig, ProducerRecord};
use crate::client::Error;
use crate::protocol::error_code;

/// The most a new batch reserves up front (it reserves `batch_size` up to this), so a large
/// `batch_size` does not cost that much memory for every partition with a record waiting.
const BUILDER_CAPACITY_MAX: usize = 1 << 20;

/// Every partition's batches, and the bytes and batches not yet done.
pub(super) struct Accumulator {
    config: ProducerConfig,
    producer_id: i64,
    producer_epoch: i16,
    /// Keep when each record was appended (for batch reports).
    keep_enqueue_times: bool,
    topics: HashMap<Rc<str>, TopicQueues>,
    /// Record bytes buffered or in flight.
    buffered: usize,
    /// Batches open, ready or in flight.
    pending: usize,
}

struct TopicQueues {
    name: Rc<str>,
    partitions: Vec<PartitionQueue>,
    partitioner: Partitioner,
}

#[derive(Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    /// Batches that filled, or came back to be sent again; by sequence when idempotent.
    ready: VecDeque<Batch>,
    next_sequence: i32,
}

/// What a batch carries from its first record to its answer, open or built.
pub(super) struct Contents {
    pub base_sequence: i32,
    /// Estimated bytes (batch and buffer limits), and key and value bytes.
    pub bytes: usize,
    pub payload: usize,
    pub created: Instant,
    /// When each record was handed to `send`, kept only for a batch report.
    pub enqueued: Vec<Instant>,
    outcome: Rc<Outcome>,
}

struct OpenBatch {
    builder: BatchBuilder,
    contents: Contents,
}

/// A built batch, on its way to the broker (and back to its queue when it must be retried).
pub(super) struct Batch {
    pub topic: Rc<str>,
    pub partition: i32,
    pub records: Bytes,
    pub contents: Contents,
    pub attempts: u32,
    pub not_before: Instant,
}

impl Batch {
    /// Gives every record of the batch its result.
    pub fn settle(self, result: Result<i64, Error>) {
        *self.contents.outcome.result.borrow_mut() = Some(result);
        self.contents.outcome.settled.notify_all();
    }
}

/// The result every record of a batch shares.
#[derive(Default)]
struct Outcome {
    result: RefCell<Option<Result<i64, Error>>>,
    settled: Notify,
}

/// Resolves to the record's offset (-1 with acks=0) once its batch is acknowledged.
pub struct Delivery {
    outcome: Rc<Outcome>,
    index: i64,
}

impl Future for Delivery {
    type Output = Result<i64, Error>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        match &*self.outcome.result.borrow() {
            Some(Ok(-1)) => Poll::Ready(Ok(-1)),
            Some(Ok(base)) => Poll::Ready(Ok(base + self.index)),
            Some(Err(error)) => Poll::Ready(Err(error.clone())),
            None => {
                self.outcome.settled.park(context);
                Poll::Pending
            }
        }
    }
}

/// A record appended.
pub(super) struct Appended {
    pub delivery: Delivery,
    /// A batch was opened or filled: the sender has something new to look at.
    pub wake_sender: bool,
}

/// What can be sent now.
#[derive(Default)]
pub(super) struct Drained {
    /// Batches by the leader they go to, each leader's within `max_request_bytes`.
    pub requests: HashMap<i32, Vec<Batch>>,
    /// Batches past the delivery timeout: they fail.
    pub expired: Vec<Batch>,
    /// When a batch that must wait (lingering, backing off, no leader) can go.
    pub next: Option<Instant>,
    /// Topics with a partition whose leader is unknown: their metadata is stale.
    pub leaderless: Vec<Rc<str>>,
}

/// Bytes a record takes in a batch, near enough for batch and buffer limits.
pub(super) fn record_size(record: &ProducerRecord<'_>) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|header| header.key.len() + header.value.as_ref().map_or(0, Bytes::len) + 4)
        .sum();
    record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len) + headers + 16
}

impl Accumulator {
    pub fn new(
        config: ProducerConfig,
        producer_id: i64,
        producer_epoch: i16,
        keep_enqueue_times: bool,
    ) -> Accumulator {
        Accumulator {
            config,
            producer_id,
            producer_epoch,
            keep_enqueue_times,
            topics: HashMap::new(),
            buffered: 0,
            pending: 0,
        }
    }

    /// Record bytes buffered or in flight.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Batches open, ready or in flight.
    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn knows(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Adds a topic of `partitions` partitions (its count when it was first sent to).
    pub fn add_topic(&mut self, name: &str, partitions: usize) {
        let name: Rc<str> = Rc::from(name);
        self.topics
            .entry(name.clone())
            .or_insert_with(|| TopicQueues {
                name,
                partitions: (0..partitions).map(|_| PartitionQueue::default()).collect(),
                partitioner: Partitioner::default(),
            });
    }

    /// The topics records were sent to.
    pub fn topics(&self) -> impl Iterator<Item = &Rc<str>> {
        self.topics.keys()
    }

    /// Appends `record` (of `size`, see [`record_size`]) to its partition's open batch,
    /// closing that batch first if the record would overfill it. The topic must be known.
    pub fn append(&mut self, record: &ProducerRecord<'_>, size: usize) -> Result<Appended, Error> {
        let queues = self
            .topics
            .get_mut(record.topic)
            .expect("the producer adds a topic before its first record");
        let topic = &queues.name;
        let count = queues.partitions.len();
        let partition = queues
            .partitioner
            .choose(record.partition, record.key, count)
            .map_err(|partition| {
                Error::broker(
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("{}-{partition}", record.topic),
                )
            })?;
        let mut wake_sender = false;
        let queue = &mut queues.partitions[partition as usize];
        let full = queue.open.as_ref().is_some_and(|open| {
            !open.builder.is_empty() && open.contents.bytes + size > self.config.batch_size
        });
        if full {
            let open = queue.open.take().expect("checked above");
            queue.ready.push_back(build(topic, partition, open));
            if record.partition.is_none() && record.key.is_none() {
                // The sticky partition's batch filled: the next one goes elsewhere.
                queues.partitioner.batch_filled();
            }
            wake_sender = true;
        }
        let queue = &mut queues.partitions[partition as usize];
        let open = match &mut queue.open {
            Some(open) => open,
            slot @ None => {
                let base_sequence = if self.config.idempotent {
                    queue.next_sequence
                } else {
                    -1
                };
                let capacity = self.config.batch_size.min(BUILDER_CAPACITY_MAX);
                let builder = BatchBuilder::with_capacity(self.config.compression, capacity)
                    .producer(self.producer_id, self.producer_epoch, base_sequence);
                self.pending += 1;
                wake_sender = true;
                slot.insert(OpenBatch {
                    builder,
                    contents: Contents {
                        base_sequence,
                        bytes: 0,
                        payload: 0,
                        created: Instant::now(),
                        enqueued: Vec::new(),
                        outcome: Rc::default(),
                    },
                })
            }
        };
        let index = open.builder.len() as i64;
        open.builder.push(
            record.timestamp.unwrap_or_else(Timestamp::now),
            record.key,
            record.value,
            record.headers,
        );
        let contents = &mut open.contents;
        contents.bytes += size;
        contents.payload += record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len);
        if self.keep_enqueue_times {
            contents.enqueued.push(Instant::now());
        }
        if self.config.idempotent {
            queue.next_sequence = queue.next_sequence.wrapping_add(1);
        }
        self.buffered += size;
        Ok(Appended {
            delivery: Delivery {
                outcome: contents.outcome.clone(),
                index,
            },
            wake_sender,
        })
    }

    /// Takes the batches that can go at `now`, grouped by leader (`leader_of` a partition,
    /// -1 if unknown), leaving a leader's batches queued while it has `max_in_flight`
    /// requests outstanding (`in_flight`), and takes out those past the delivery timeout.
    /// Open batches go when they lingered long enough, or at once when `flushing`.
    pub fn drain(
        &mut self,
        now: Instant,
        flushing: bool,
        leader_of: impl Fn(&str, i32) -> i32,
        in_flight: &HashMap<i32, usize>,
    ) -> Drained {
        let mut drained = Drained::default();
        let mut request_bytes: HashMap<i32, usize> = HashMap::new();
        let wake_at = |next: &mut Option<Instant>, at: Instant| {
            *next = Some(next.map_or(at, |next| next.min(at)));
        };
        for (name, queues) in self.topics.iter_mut() {
            for (partition, queue) in queues.partitions.iter_mut().enumerate() {
                let partition = partition as i32;
                if let Some(open) = &queue.open
                    && queue.ready.is_empty()
                {
                    let due = open.contents.created + self.config.linger;
                    if due > now && !flushing {
                        wake_at(&mut drained.next, due);
                        continue;
                    }
                    let open = queue.open.take().expect("checked above");
                    queue.ready.push_back(build(name, partition, open));
                }
                let Some(batch) = queue.ready.front() else {
                    continue;
                };
                if now.duration_since(batch.contents.created) >= self.config.delivery_timeout {
                    drained.expired.extend(queue.ready.drain(..));
                    continue;
                }
                if batch.not_before > now {
                    wake_at(&mut drained.next, batch.not_before);
                    continue;
                }
                let leader = leader_of(name, partition);
                if leader < 0 {
                    if !drained.leaderless.contains(name) {
                        drained.leaderless.push(name.clone());
                    }
                    wake_at(&mut drained.next, now + self.config.retry_backoff);
                    continue;
                }
                let outstanding = in_flight.get(&leader).copied().unwrap_or(0);
                let bytes = request_bytes.entry(leader).or_default();
                let size = batch.records.len();
                if outstanding >= self.config.max_in_flight
                    || (*bytes > 0 && *bytes + size > self.config.max_request_bytes)
                {
                    continue;
                }
                *bytes += size;
                let batch = queue.ready.pop_front().expect("checked above");
                drained.requests.entry(leader).or_default().push(batch);
            }
        }
        drained
    }

    /// Queues `batch` to be sent again: first in its partition's queue, or in sequence order
    /// when idempotent (a retried batch must be stored before the ones after it). The batch
    /// comes back if its partition is gone.
    #[must_use]
    pub fn requeue(&mut self, batch: Batch) -> Option<Batch> {
        let Some(queue) = self
            .topics
            .get_mut(&batch.topic)
            .and_then(|queues| queues.partitions.get_mut(batch.partition as usize))
        else {
            return Some(batch);
        };
        let at = if self.config.idempotent {
            queue
                .ready
                .iter()
                .position(|queued| queued.contents.base_sequence > batch.contents.base_sequence)
                .unwrap_or(queue.ready.len())
        } else {
            0
        };
        queue.ready.insert(at, batch);
        None
    }

    /// Forgets a batch that is done (acknowledged or failed): its bytes leave the buffer.
    pub fn release(&mut self, contents: &Contents) {
        self.buffered -= contents.bytes;
        self.pending -= 1;
    }
}

fn build(topic: &Rc<str>, partition: i32, open: OpenBatch) -> Batch {
    Batch {
        topic: topic.clone(),
        partition,
        records: open.builder.build(),
        not_before: open.contents.created,
        contents: open.contents,
        attempts: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> ProducerConfig {
        ProducerConfig {
            batch_size: 100,
            // Open batches wait for a flush, however slow the test runs.
            linger: Duration::from_secs(3600),
            max_in_flight: 1,
            max_request_bytes: 1 << 20,
            idempotent: true,
            ..ProducerConfig::default()
        }
    }

    fn record(partition: i32, value: &[u8]) -> ProducerRecord<'_> {
        ProducerRecord {
            topic: "quotes",
            partition: Some(partition),
            value: Some(value),
            ..ProducerRecord::default()
        }
    }

    fn append(accumulator: &mut Accumulator, record: &ProducerRecord<'_>) -> Appended {
        accumulator.append(record, record_size(record)).unwrap()
    }

    #[test]
    fn records_fill_a_batch_per_partition_until_it_is_full() {
        let mut accumulator = Accumulator::new(config(), 7, 0, false);
        accumulator.add_topic("quotes", 2);
        // 16 bytes of overhead + 30 of value: two records fit in 100 bytes, a third does not.
        let value = [1u8; 30];
        assert!(append(&mut accumulator, &record(0, &value)).wake_sender);
        assert!(!append(&mut accumulator, &record(0, &value)).wake_sender);
        assert!(append(&mut accumulator, &record(0, &value)).wake_sender);
        assert!(append(&mut accumulator, &record(1, &value)).wake_sender);
        assert_eq!(accumulator.pending(), 3);
        assert_eq!(accumulator.buffered(), 4 * 46);
        // Before the linger ends, only the full batch goes.
        let now = Instant::now();
        let drained = accumulator.drain(now, false, |_, _| 1, &HashMap::new());
        let sent = &drained.requests[&1];
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].partition, sent[0].contents.base_sequence), (0, 0));
        let header = coremq_engine::BatchHeader::parse(&sent[0].records).unwrap();
        assert_eq!(header.records_count, 2);
        assert_eq!(header.producer_id, 7);
        assert!(drained.next.is_some_and(|next| next > now));
        // A flush takes the open batches at once, with the sequences that follow.
        let drained = accumulator.drain(now, true, |_, _| 1, &HashMap::new());
        let mut sent: Vec<(i32, i32)> = drained.requests[&1]
            .iter()
            .map(|batch| (batch.partition, batch.contents.base_sequence))
            .collect();
        sent.sort();
        assert_eq!(sent, vec![(0, 2), (1, 0)]);
        assert!(matches!(
            accumulator.append(&record(2, &value), 46),
            Err(Error::Broker { code, .. }) if code == error_code::UNKNOWN_TOPIC_OR_PARTITION
        ));
    }

    #[test]
    fn a_busy_or_unknown_leader_keeps_its_batches_queued() {
        let mut accumulator = Accumulator::new(config(), 7, 0, false);
        accumulator.add_topic("quotes", 2);
        append(&mut accumulator, &record(0, b"a"));
        append(&mut accumulator, &record(1, b"b"));
        let now = Instant::now();
        let leaders = |_: &str, partition: i32| if partition == 0 { 1 } else { -1 };
        let busy = HashMap::from([(1, 1)]);
        let drained = accumulator.drain(now, true, leaders, &busy);
        assert!(drained.requests.is_empty());
        assert_eq!(drained.leaderless, vec![Rc::from("quotes")]);
        assert_eq!(drained.next, Some(now + config().retry_backoff));
        let drained = accumulator.drain(now, true, leaders, &HashMap::new());
        assert_eq!(drained.requests[&1].len(), 1);
        assert_eq!(drained.requests[&1][0].partition, 0);
    }

    #[test]
    fn retried_batches_go_back_in_sequence_order_and_expire_on_time() {
        let mut accumulator = Accumulator::new(config(), 7, 0, false);
        accumulator.add_topic("quotes", 1);
        // 76 bytes each: every record fills a batch of its own.
        let value = [1u8; 60];
        for _ in 0..3 {
            append(&mut accumulator, &record(0, &value));
        }
        let now = Instant::now();
        // One batch of a partition per drain, in order.
        let drain = |accumulator: &mut Accumulator, at: Instant| {
            accumulator.drain(at, true, |_, _| 1, &HashMap::new())
        };
        // `times` drains, everything they send.
        let drain_times = |accumulator: &mut Accumulator, times: usize| -> Vec<Batch> {
            (0..times)
                .flat_map(|_| drain(accumulator, now).requests.into_values().flatten())
                .collect()
        };
        let mut sent = drain_times(&mut accumulator, 3);
        let sequences = |batches: &[Batch]| -> Vec<i32> {
            batches
                .iter()
                .map(|batch| batch.contents.base_sequence)
                .collect()
        };
        assert_eq!(sequences(&sent), vec![0, 1, 2]);
        // The first comes back, then the second: each retry would go first in the queue,
        // but sequence order puts the first first again.
        let second = sent.remove(1);
        let first = sent.remove(0);
        assert!(accumulator.requeue(first).is_none());
        assert!(accumulator.requeue(second).is_none());
        let again = drain_times(&mut accumulator, 2);
        assert_eq!(sequences(&again), vec![0, 1]);
        // Queued past the delivery timeout, batches expire instead of going.
        for batch in again {
            assert!(accumulator.requeue(batch).is_none());
        }
        let drained = drain(&mut accumulator, now + config().delivery_timeout);
        assert!(drained.requests.is_empty());
        assert_eq!(sequences(&drained.expired), vec![0, 1]);
        for batch in drained.expired.iter().chain(&sent) {
            accumulator.release(&batch.contents);
        }
        assert_eq!((accumulator.pending(), accumulator.buffered()), (0, 0));
    }
}
