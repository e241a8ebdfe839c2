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

use std::rc::Rc;
use std::time::{Duration, Instant};

use coremq_engine::{Compression, Header, Timestamp};

mod accumulator;
mod partitioner;
mod sender;

pub use accumulator::Delivery;
pub use partitioner::{murmur2, partition_for_key};

use super::{Cluster, Error, unexpected};
use crate::protocol::api::{RequestBody, ResponseBody};
use crate::protocol::messages::InitProducerIdRequest;
use accumulator::record_size;
use sender::Inner;

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
        let ids = if config.idempotent {
            init_producer_id(&cluster).await?
        } else {
            (-1, -1)
        };
        let inner = Rc::new(Inner::new(cluster, config, ids, on_batch));
        coremq_runtime::spawn_local(sender::run(inner.clone())).detach();
        Ok(Producer { inner })
    }

    /// Adds `record` to its partition's batch, waiting while the buffer is full. The
    /// returned `Delivery` resolves when the broker acknowledges it; dropping it is fine.
    pub async fn send(&self, record: ProducerRecord<'_>) -> Result<Delivery, Error> {
        let inner = &self.inner;
        let size = record_size(&record);
        loop {
            let room = inner.done.notified();
            let buffered = inner.accumulator.borrow().buffered();
            if buffered == 0 || buffered + size <= inner.config.buffer_bytes {
                break;
            }
            room.await;
        }
        if !inner.accumulator.borrow().knows(record.topic) {
            let metadata = inner.cluster.topic(record.topic).await?;
            let partitions = metadata.partitions.len();
            inner
                .accumulator
                .borrow_mut()
                .add_topic(&metadata.name, partitions);
        }
        let appended = inner.accumulator.borrow_mut().append(&record, size)?;
        if appended.wake_sender {
            inner.work.notify_all();
        }
        Ok(appended.delivery)
    }

    /// Sends every buffered record now and waits until each batch is done.
    pub async fn flush(&self) {
        let inner = &self.inner;
        inner.flushing.set(inner.flushing.get() + 1);
        inner.work.notify_all();
        loop {
            let done = inner.done.notified();
            if inner.accumulator.borrow().pending() == 0 {
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
