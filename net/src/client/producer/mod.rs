//! The batching producer, shaped like Kafka's: records go into a batch per partition, a
//! batch is sent when it is full or has lingered long enough, and one Produce request per
//! leader carries a batch of every partition that has one ready.
//!
//! - A batch stays open while its leader has `max_in_flight` requests outstanding, so a
//!   busy connection makes bigger batches instead of more requests.
//! - A record with a key goes to Kafka's partition for it (murmur2); without a key, to a
//!   sticky partition that changes when its batch fills.
//! - Idempotence (the default, with acks=all): one producer id from InitProducerId, a
//!   sequence per partition; a batch retried after a failure is sent again unchanged, so
//!   the broker drops it if it got it the first time.
//! - `send` waits while `buffer_bytes` of records wait for their acknowledgement.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coremq_engine::notify::Notify;
use coremq_engine::{BatchBuilder, Compression, Header, Timestamp};

mod partitioner;

pub use partitioner::{Partitioner, murmur2, partition_for_key};

use super::{Cluster, Connection, Error, TopicMetadata, by_topic, unexpected};
use crate::protocol::api::{RequestBody, ResponseBody};
use crate::protocol::codec::Records;
use crate::protocol::error_code;
use crate::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use crate::protocol::messages::{InitProducerIdRequest, ProduceRequest, ProduceResponse};

/// How a producer batches and acknowledges; the defaults are Kafka's.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// 0: no response; 1: the leader stored it; -1: every in-sync replica did.
    pub acks: i16,
    pub compression: Compression,
    /// Bytes of records (uncompressed) that fill a batch.
    pub batch_size: usize,
    /// How long a batch that is not full waits for more records.
    pub linger: Duration,
    /// Requests outstanding per broker connection.
    pub max_in_flight: usize,
    /// Sequence numbers so that retries store each batch once (needs acks=-1).
    pub idempotent: bool,
    /// Bytes of records waiting to be acknowledged before `send` waits.
    pub buffer_bytes: usize,
    /// Bytes of batches in one Produce request.
    pub max_request_bytes: usize,
    /// Times a failed batch is sent again.
    pub retries: u32,
    pub retry_backoff: Duration,
    /// A batch not acknowledged this long after its first record fails.
    pub delivery_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            acks: -1,
            compression: Compression::None,
            batch_size: 16 * 1024,
            linger: Duration::from_millis(5),
            max_in_flight: 5,
            idempotent: true,
            buffer_bytes: 32 << 20,
            max_request_bytes: 1 << 20,
            retries: u32::MAX,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(120),
        }
    }
}

/// One record to send. `partition` overrides the partitioner; `timestamp` defaults to now.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerRecord<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [Header],
    pub timestamp: Option<Timestamp>,
}

/// What became of one batch: its base offset (-1 with acks=0) or the error, and when each
/// of its records was handed to `send` (for acknowledgement latency).
pub struct BatchReport<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub result: Result<i64, &'a Error>,
    pub enqueued: &'a [Instant],
    /// Key and value bytes of the records.
    pub payload: usize,
}

type OnBatch = Box<dyn Fn(&BatchReport<'_>)>;

/// A producer on one executor. Dropping it lets the batches it holds finish in the
/// background; `flush` waits for them.
pub struct Producer {
    inner: Rc<Inner>,
}

struct Inner {
    cluster: Rc<Cluster>,
    config: ProducerConfig,
    producer_id: i64,
    producer_epoch: i16,
    topics: RefCell<HashMap<Rc<str>, TopicQueues>>,
    /// Record bytes buffered or in flight.
    buffered: Cell<usize>,
    /// Batches open, ready or in flight.
    pending: Cell<usize>,
    /// Requests outstanding per broker node.
    in_flight: RefCell<HashMap<i32, usize>>,
    /// Callers of `flush` waiting: open batches go without lingering.
    flushing: Cell<usize>,
    closed: Cell<bool>,
    /// Wakes the sender task: a batch to send, or room for one more request.
    work: Notify,
    /// Wakes `send` and `flush`: a batch finished.
    done: Notify,
    on_batch: Option<OnBatch>,
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
struct Contents {
    base_sequence: i32,
    /// Estimated bytes (batch and buffer limits), and key and value bytes.
    bytes: usize,
    payload: usize,
    created: Instant,
    /// When each record was handed to `send`, kept only for a batch report.
    enqueued: Vec<Instant>,
    outcome: Rc<Outcome>,
}

struct OpenBatch {
    builder: BatchBuilder,
    contents: Contents,
}

/// A built batch, on its way to the broker (and back to `ready` when it must be retried).
struct Batch {
    topic: Rc<str>,
    partition: i32,
    records: Bytes,
    contents: Contents,
    attempts: u32,
    not_before: Instant,
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

impl Producer {
    /// A producer on `cluster`; with idempotence, asks for a producer id first.
    pub async fn new(cluster: Rc<Cluster>, config: ProducerConfig) -> Result<Producer, Error> {
        Producer::with_reports(cluster, config, None).await
    }

    /// Like `new`, with `on_batch` called as each batch is acknowledged or fails.
    pub async fn with_reports(
        cluster: Rc<Cluster>,
        config: ProducerConfig,
        on_batch: Option<OnBatch>,
    ) -> Result<Producer, Error> {
        if ![0, 1, -1].contains(&config.acks) {
            return Err(Error::Config(format!(
                "acks {} is not 0, 1 or -1",
                config.acks
            )));
        }
        if config.idempotent && (config.acks != -1 || config.max_in_flight > 5) {
            return Err(Error::Config(
                "idempotence needs acks=-1 (all) and at most 5 requests in flight".into(),
            ));
        }
        if config.max_in_flight == 0 {
            return Err(Error::Config("max_in_flight must be at least 1".into()));
        }
        let (producer_id, producer_epoch) = if config.idempotent {
            init_producer_id(&cluster).await?
        } else {
            (-1, -1)
        };
        let inner = Rc::new(Inner {
            cluster,
            config,
            producer_id,
            producer_epoch,
            topics: RefCell::default(),
            buffered: Cell::new(0),
            pending: Cell::new(0),
            in_flight: RefCell::default(),
            flushing: Cell::new(0),
            closed: Cell::new(false),
            work: Notify::default(),
            done: Notify::default(),
            on_batch,
        });
        glommio::spawn_local(run_sender(inner.clone())).detach();
        Ok(Producer { inner })
    }

    /// Adds `record` to its partition's batch, waiting while the buffer is full. The
    /// returned `Delivery` resolves when the broker acknowledges it; dropping it is fine.
    pub async fn send(&self, record: ProducerRecord<'_>) -> Result<Delivery, Error> {
        let inner = &self.inner;
        let size = record_size(&record);
        loop {
            let room = inner.done.notified();
            if inner.buffered.get() == 0 || inner.buffered.get() + size <= inner.config.buffer_bytes
            {
                break;
            }
            room.await;
        }
        if !inner.topics.borrow().contains_key(record.topic) {
            let metadata = inner.cluster.topic(record.topic).await?;
            let queues = TopicQueues::new(&metadata);
            inner
                .topics
                .borrow_mut()
                .entry(queues.name.clone())
                .or_insert(queues);
        }
        inner.append(&record, size)
    }

    /// Sends every buffered record now and waits until each batch is done.
    pub async fn flush(&self) {
        let inner = &self.inner;
        inner.flushing.set(inner.flushing.get() + 1);
        inner.work.notify_all();
        loop {
            let done = inner.done.notified();
            if inner.pending.get() == 0 {
                break;
            }
            done.await;
        }
        inner.flushing.set(inner.flushing.get() - 1);
    }

    /// The producer id from InitProducerId (-1 when not idempotent).
    pub fn producer_id(&self) -> i64 {
        self.inner.producer_id
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.inner.closed.set(true);
        self.inner.work.notify_all();
    }
}

async fn init_producer_id(cluster: &Cluster) -> Result<(i64, i16), Error> {
    let request = InitProducerIdRequest {
        transactional_id: None,
        transaction_timeout_ms: i32::MAX,
        producer_id: -1,
        producer_epoch: -1,
    };
    match cluster
        .call_any(RequestBody::InitProducerId(request))
        .await?
    {
        (_, ResponseBody::InitProducerId(response)) if response.error_code == 0 => {
            Ok((response.producer_id, response.producer_epoch))
        }
        (_, ResponseBody::InitProducerId(response)) => {
            Err(Error::broker(response.error_code, "InitProducerId"))
        }
        (_, other) => Err(unexpected(&other)),
    }
}

/// The most a new batch reserves up front (it reserves `batch_size` up to this), so a large
/// `batch_size` does not cost that much memory for every partition with a record waiting.
const BUILDER_CAPACITY_MAX: usize = 1 << 20;

/// Bytes a record takes in a batch, near enough for batch and buffer limits.
fn record_size(record: &ProducerRecord<'_>) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|header| header.key.len() + header.value.as_ref().map_or(0, Bytes::len) + 4)
        .sum();
    record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len) + headers + 16
}

impl TopicQueues {
    fn new(metadata: &TopicMetadata) -> TopicQueues {
        TopicQueues {
            name: Rc::from(metadata.name.as_str()),
            partitions: (0..metadata.partitions.len())
                .map(|_| PartitionQueue::default())
                .collect(),
            partitioner: Partitioner::default(),
        }
    }

    fn choose(&mut self, record: &ProducerRecord<'_>) -> Result<i32, Error> {
        let count = self.partitions.len();
        self.partitioner
            .choose(record.partition, record.key, count)
            .map_err(|partition| {
                Error::broker(
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("{}-{partition}", record.topic),
                )
            })
    }
}

impl Inner {
    fn append(&self, record: &ProducerRecord<'_>, size: usize) -> Result<Delivery, Error> {
        let mut topics = self.topics.borrow_mut();
        let queues = topics
            .get_mut(record.topic)
            .expect("the topic was added by send");
        let topic = queues.name.clone();
        let partition = queues.choose(record)?;
        let queue = &mut queues.partitions[partition as usize];
        let full = queue.open.as_ref().is_some_and(|open| {
            !open.builder.is_empty() && open.contents.bytes + size > self.config.batch_size
        });
        if full {
            let open = queue.open.take().expect("checked above");
            queue.ready.push_back(self.build(&topic, partition, open));
            if record.partition.is_none() && record.key.is_none() {
                // The sticky partition's batch filled: the next one goes elsewhere.
                queues.partitioner.batch_filled();
            }
            self.work.notify_all();
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
                self.pending.set(self.pending.get() + 1);
                self.work.notify_all();
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
        if self.on_batch.is_some() {
            contents.enqueued.push(Instant::now());
        }
        if self.config.idempotent {
            queue.next_sequence = queue.next_sequence.wrapping_add(1);
        }
        self.buffered.set(self.buffered.get() + size);
        Ok(Delivery {
            outcome: contents.outcome.clone(),
            index,
        })
    }

    fn build(&self, topic: &Rc<str>, partition: i32, open: OpenBatch) -> Batch {
        Batch {
            topic: topic.clone(),
            partition,
            records: open.builder.build(),
            not_before: open.contents.created,
            contents: open.contents,
            attempts: 0,
        }
    }

    /// Takes the batches that can go now, grouped by leader, and fails those past the
    /// delivery timeout. Returns them and when to look again for ones that must wait.
    async fn drain(&self) -> (HashMap<i32, Vec<Batch>>, Option<Instant>) {
        let names: Vec<Rc<str>> = self.topics.borrow().keys().cloned().collect();
        let mut leaders = HashMap::new();
        for name in names {
            if let Ok(metadata) = self.cluster.topic(&name).await {
                leaders.insert(name, metadata);
            }
        }
        let now = Instant::now();
        let flushing = self.flushing.get() > 0 || self.closed.get();
        let mut requests: HashMap<i32, Vec<Batch>> = HashMap::new();
        let mut request_bytes: HashMap<i32, usize> = HashMap::new();
        let mut expired = Vec::new();
        let mut next = None::<Instant>;
        let mut wake_at = |at: Instant| next = Some(next.map_or(at, |next| next.min(at)));
        let mut topics = self.topics.borrow_mut();
        for (name, queues) in topics.iter_mut() {
            for (partition, queue) in queues.partitions.iter_mut().enumerate() {
                let partition = partition as i32;
                if let Some(open) = &queue.open
                    && queue.ready.is_empty()
                {
                    let due = open.contents.created + self.config.linger;
                    if due > now && !flushing {
                        wake_at(due);
                        continue;
                    }
                    let open = queue.open.take().expect("checked above");
                    queue.ready.push_back(self.build(name, partition, open));
                }
                let Some(batch) = queue.ready.front() else {
                    continue;
                };
                if now.duration_since(batch.contents.created) >= self.config.delivery_timeout {
                    expired.extend(queue.ready.drain(..));
                    continue;
                }
                if batch.not_before > now {
                    wake_at(batch.not_before);
                    continue;
                }
                let leader = leaders
                    .get(name)
                    .and_then(|metadata| metadata.partitions.get(partition as usize))
                    .map_or(-1, |known| known.leader);
                if leader < 0 {
                    self.cluster.invalidate(name);
                    wake_at(now + self.config.retry_backoff);
                    continue;
                }
                let in_flight = self.in_flight.borrow().get(&leader).copied().unwrap_or(0);
                let bytes = request_bytes.entry(leader).or_default();
                let size = batch.records.len();
                if in_flight >= self.config.max_in_flight
                    || (*bytes > 0 && *bytes + size > self.config.max_request_bytes)
                {
                    continue;
                }
                *bytes += size;
                let batch = queue.ready.pop_front().expect("checked above");
                requests.entry(leader).or_default().push(batch);
            }
        }
        drop(topics);
        for batch in expired {
            let error = Error::Timeout(format!(
                "{}-{} not acknowledged within {:?}",
                batch.topic, batch.partition, self.config.delivery_timeout
            ));
            self.finish(batch, Err(error));
        }
        (requests, next)
    }

    /// Sends one Produce request to `leader` and settles its batches.
    async fn produce(self: Rc<Inner>, leader: i32, batches: Vec<Batch>) {
        let result = match self.cluster.broker(leader).await {
            Ok(connection) => self.request(&connection, &batches).await,
            Err(error) => Err(error),
        };
        if let Some(count) = self.in_flight.borrow_mut().get_mut(&leader) {
            *count -= 1;
        }
        match result {
            Ok(None) => batches
                .into_iter()
                .for_each(|batch| self.finish(batch, Ok(-1))),
            Ok(Some(response)) => self.settle(batches, response),
            Err(error) => {
                for batch in batches {
                    self.retry_or_fail(batch, error.clone());
                }
            }
        }
        self.work.notify_all();
    }

    async fn request(
        &self,
        connection: &Connection,
        batches: &[Batch],
    ) -> Result<Option<ProduceResponse>, Error> {
        let partitions = batches.iter().map(|batch| {
            let data = PartitionProduceData {
                index: batch.partition,
                records: Some(Records::from(batch.records.clone())),
            };
            (&batch.topic, data)
        });
        let topic_data = by_topic(partitions)
            .into_iter()
            .map(|(name, partition_data)| TopicProduceData {
                name: name.to_string(),
                partition_data,
            })
            .collect();
        let request = RequestBody::Produce(ProduceRequest {
            transactional_id: None,
            acks: self.config.acks,
            timeout_ms: self.cluster.config().request_timeout.as_millis() as i32,
            topic_data,
        });
        if self.config.acks == 0 {
            connection.send_only(request).await?;
            return Ok(None);
        }
        match self.cluster.call(connection, request).await? {
            (_, ResponseBody::Produce(response)) => Ok(Some(response)),
            (_, other) => Err(unexpected(&other)),
        }
    }

    fn settle(&self, batches: Vec<Batch>, response: ProduceResponse) {
        for batch in batches {
            let answer = response
                .responses
                .iter()
                .filter(|topic| *topic.name == *batch.topic)
                .flat_map(|topic| &topic.partition_responses)
                .find(|partition| partition.index == batch.partition);
            let Some(answer) = answer else {
                let error = Error::Protocol(format!(
                    "no answer for {}-{} in the Produce response",
                    batch.topic, batch.partition
                ));
                self.finish(batch, Err(error));
                continue;
            };
            match answer.error_code {
                error_code::NONE => self.finish(batch, Ok(answer.base_offset)),
                // Stored by an earlier attempt whose answer was lost.
                error_code::DUPLICATE_SEQUENCE_NUMBER => self.finish(batch, Ok(-1)),
                code => {
                    let context = format!("producing to {}-{}", batch.topic, batch.partition);
                    self.retry_or_fail(batch, Error::broker(code, context));
                }
            }
        }
    }

    fn retry_or_fail(&self, mut batch: Batch, error: Error) {
        // A batch after one that failed is out of order until that one is stored again.
        let out_of_order = self.config.idempotent
            && matches!(&error, Error::Broker { code, .. }
                if *code == error_code::OUT_OF_ORDER_SEQUENCE_NUMBER);
        let retriable = error.is_retriable() || out_of_order;
        let now = Instant::now();
        if !retriable
            || batch.attempts >= self.config.retries
            || now.duration_since(batch.contents.created) >= self.config.delivery_timeout
        {
            self.finish(batch, Err(error));
            return;
        }
        batch.attempts += 1;
        batch.not_before = now + self.config.retry_backoff;
        self.cluster.invalidate(&batch.topic);
        let mut topics = self.topics.borrow_mut();
        let Some(queue) = topics
            .get_mut(&batch.topic)
            .and_then(|queues| queues.partitions.get_mut(batch.partition as usize))
        else {
            drop(topics);
            self.finish(batch, Err(error));
            return;
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
    }

    fn finish(&self, batch: Batch, result: Result<i64, Error>) {
        if let Some(on_batch) = &self.on_batch {
            on_batch(&BatchReport {
                topic: &batch.topic,
                partition: batch.partition,
                result: result.as_ref().copied(),
                enqueued: &batch.contents.enqueued,
                payload: batch.contents.payload,
            });
        }
        let contents = batch.contents;
        *contents.outcome.result.borrow_mut() = Some(result);
        contents.outcome.settled.notify_all();
        self.buffered.set(self.buffered.get() - contents.bytes);
        self.pending.set(self.pending.get() - 1);
        self.done.notify_all();
    }
}

/// The sender task: sends what is ready, then sleeps until more is ready, a request
/// finishes or a linger or backoff runs out. Ends once the producer is dropped and every
/// batch is done.
async fn run_sender(inner: Rc<Inner>) {
    loop {
        let woken = inner.work.notified();
        let (requests, next) = inner.drain().await;
        for (leader, batches) in requests {
            *inner.in_flight.borrow_mut().entry(leader).or_default() += 1;
            glommio::spawn_local(inner.clone().produce(leader, batches)).detach();
        }
        if inner.closed.get() && inner.pending.get() == 0 {
            return;
        }
        match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                futures_lite::future::or(woken, glommio::timer::sleep(wait)).await;
            }
            None => woken.await,
        }
    }
}
