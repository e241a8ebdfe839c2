//! The sender, as in Kafka's producer: a task that takes what the accumulator says can go,
//! sends one Produce request per leader, and settles each batch from its answer: done with
//! its offset, sent again after a backoff, or failed. The decisions (the request, each
//! batch's answer, whether to retry) are functions of their inputs, tested without I/O.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use coremq_engine::notify::Notify;

use super::accumulator::{Accumulator, Batch};
use super::{BatchReport, OnBatch, ProducerConfig};
use crate::client::{Cluster, Connection, Error, by_topic, unexpected};
use crate::protocol::api::{RequestBody, ResponseBody};
use crate::protocol::codec::Records;
use crate::protocol::error_code;
use crate::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use crate::protocol::messages::{ProduceRequest, ProduceResponse};

/// A producer's state, shared by its handle and its sender task.
pub(super) struct Inner {
    pub cluster: Rc<Cluster>,
    pub config: ProducerConfig,
    pub producer_id: i64,
    pub accumulator: RefCell<Accumulator>,
    /// Requests outstanding per broker node.
    in_flight: RefCell<HashMap<i32, usize>>,
    /// Callers of `flush` waiting: open batches go without lingering.
    pub flushing: Cell<usize>,
    pub closed: Cell<bool>,
    /// Wakes the sender task: a batch to send, or room for one more request.
    pub work: Notify,
    /// Wakes `send` and `flush`: a batch finished.
    pub done: Notify,
    on_batch: Option<OnBatch>,
}

impl Inner {
    pub fn new(
        cluster: Rc<Cluster>,
        config: ProducerConfig,
        (producer_id, producer_epoch): (i64, i16),
        on_batch: Option<OnBatch>,
    ) -> Inner {
        let accumulator = Accumulator::new(
            config.clone(),
            producer_id,
            producer_epoch,
            on_batch.is_some(),
        );
        Inner {
            cluster,
            config,
            producer_id,
            accumulator: RefCell::new(accumulator),
            in_flight: RefCell::default(),
            flushing: Cell::new(0),
            closed: Cell::new(false),
            work: Notify::default(),
            done: Notify::default(),
            on_batch,
        }
    }

    /// Takes what can be sent now, with the leaders the cluster knows; fails the batches
    /// past the delivery timeout. The requests, and when to look again.
    async fn drain(&self) -> (HashMap<i32, Vec<Batch>>, Option<Instant>) {
        let names: Vec<Rc<str>> = self.accumulator.borrow().topics().cloned().collect();
        let mut leaders = HashMap::new();
        for name in names {
            if let Ok(metadata) = self.cluster.topic(&name).await {
                leaders.insert(name, metadata);
            }
        }
        let leader_of = |name: &str, partition: i32| {
            leaders
                .get(name)
                .and_then(|metadata| metadata.partitions.get(partition as usize))
                .map_or(-1, |known| known.leader)
        };
        let flushing = self.flushing.get() > 0 || self.closed.get();
        let drained = self.accumulator.borrow_mut().drain(
            Instant::now(),
            flushing,
            leader_of,
            &self.in_flight.borrow(),
        );
        for name in &drained.leaderless {
            self.cluster.invalidate(name);
        }
        for batch in drained.expired {
            let error = Error::Timeout(format!(
                "{}-{} not acknowledged within {:?}",
                batch.topic, batch.partition, self.config.delivery_timeout
            ));
            self.finish(batch, Err(error));
        }
        (drained.requests, drained.next)
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
            Ok(Some(response)) => {
                for (batch, answer) in answers(batches, &response) {
                    match answer {
                        Ok(offset) => self.finish(batch, Ok(offset)),
                        Err(error) => self.retry_or_fail(batch, error),
                    }
                }
            }
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
        let timeout_ms = self.cluster.config().request_timeout.as_millis() as i32;
        let request = RequestBody::Produce(produce_request(self.config.acks, timeout_ms, batches));
        if self.config.acks == 0 {
            connection.send_only(request).await?;
            return Ok(None);
        }
        match self.cluster.call(connection, request).await? {
            (_, ResponseBody::Produce(response)) => Ok(Some(response)),
            (_, other) => Err(unexpected(&other)),
        }
    }

    fn retry_or_fail(&self, mut batch: Batch, error: Error) {
        let now = Instant::now();
        if !retries(&self.config, &batch, &error, now) {
            self.finish(batch, Err(error));
            return;
        }
        batch.attempts += 1;
        batch.not_before = now + self.config.retry_backoff;
        self.cluster.invalidate(&batch.topic);
        let gone = self.accumulator.borrow_mut().requeue(batch);
        if let Some(batch) = gone {
            self.finish(batch, Err(error));
        }
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
        self.accumulator.borrow_mut().release(&batch.contents);
        batch.settle(result);
        self.done.notify_all();
    }
}

/// The Produce request that carries `batches`, grouped by topic.
fn produce_request(acks: i16, timeout_ms: i32, batches: &[Batch]) -> ProduceRequest {
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
    ProduceRequest {
        transactional_id: None,
        acks,
        timeout_ms,
        topic_data,
    }
}

/// Each batch with its answer in `response`: its base offset (-1 when an earlier attempt
/// stored it and the broker says so), or the broker's error, or a protocol error when the
/// response has no answer for it.
fn answers(batches: Vec<Batch>, response: &ProduceResponse) -> Vec<(Batch, Result<i64, Error>)> {
    batches
        .into_iter()
        .map(|batch| {
            let answer = response
                .responses
                .iter()
                .filter(|topic| *topic.name == *batch.topic)
                .flat_map(|topic| &topic.partition_responses)
                .find(|partition| partition.index == batch.partition);
            let result = match answer.map(|answer| (answer.error_code, answer.base_offset)) {
                None => Err(Error::Protocol(format!(
                    "no answer for {}-{} in the Produce response",
                    batch.topic, batch.partition
                ))),
                Some((error_code::NONE, base_offset)) => Ok(base_offset),
                // Stored by an earlier attempt whose answer was lost.
                Some((error_code::DUPLICATE_SEQUENCE_NUMBER, _)) => Ok(-1),
                Some((code, _)) => {
                    let context = format!("producing to {}-{}", batch.topic, batch.partition);
                    Err(Error::broker(code, context))
                }
            };
            (batch, result)
        })
        .collect()
}

/// Whether `batch`, failed with `error` at `now`, is sent again: a retriable error (or, when
/// idempotent, an out-of-order sequence: a batch after one that failed is out of order until
/// that one is stored again), attempts left, and time left before the delivery timeout.
fn retries(config: &ProducerConfig, batch: &Batch, error: &Error, now: Instant) -> bool {
    let out_of_order = config.idempotent
        && matches!(error, Error::Broker { code, .. }
            if *code == error_code::OUT_OF_ORDER_SEQUENCE_NUMBER);
    (error.is_retriable() || out_of_order)
        && batch.attempts < config.retries
        && now.duration_since(batch.contents.created) < config.delivery_timeout
}

/// The sender task: sends what is ready, then sleeps until more is ready, a request
/// finishes or a linger or backoff runs out. Ends once the producer is dropped and every
/// batch is done.
pub(super) async fn run(inner: Rc<Inner>) {
    loop {
        let woken = inner.work.notified();
        let (requests, next) = inner.drain().await;
        for (leader, batches) in requests {
            *inner.in_flight.borrow_mut().entry(leader).or_default() += 1;
            coremq_runtime::spawn_local(inner.clone().produce(leader, batches)).detach();
        }
        if inner.closed.get() && inner.accumulator.borrow().pending() == 0 {
            return;
        }
        match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                futures_lite::future::or(woken, coremq_runtime::sleep(wait)).await;
            }
            None => woken.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::client::producer::ProducerRecord;
    use crate::client::producer::accumulator::record_size;
    use crate::protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };

    /// Three batches: quotes-0, quotes-1 and orders-0, built by an accumulator.
    fn batches(config: &ProducerConfig) -> Vec<Batch> {
        let mut accumulator = Accumulator::new(config.clone(), 3, 0, false);
        accumulator.add_topic("quotes", 2);
        accumulator.add_topic("orders", 1);
        for (topic, partition) in [("quotes", 0), ("quotes", 1), ("orders", 0)] {
            let record = ProducerRecord {
                topic,
                partition: Some(partition),
                value: Some(b"v"),
                ..ProducerRecord::default()
            };
            accumulator.append(&record, record_size(&record)).unwrap();
        }
        let drained = accumulator.drain(Instant::now(), true, |_, _| 0, &HashMap::new());
        let mut batches: Vec<Batch> = drained.requests.into_values().flatten().collect();
        batches.sort_by_key(|batch| (batch.topic.clone(), batch.partition));
        batches
    }

    fn answer(index: i32, error_code: i16, base_offset: i64) -> PartitionProduceResponse {
        PartitionProduceResponse {
            index,
            error_code,
            base_offset,
            ..PartitionProduceResponse::default()
        }
    }

    #[test]
    fn the_request_carries_each_batch_under_its_topic() {
        let config = ProducerConfig::default();
        let batches = batches(&config);
        let request = produce_request(-1, 30_000, &batches);
        assert_eq!((request.acks, request.timeout_ms), (-1, 30_000));
        let mut sent: Vec<(String, i32, usize)> = request
            .topic_data
            .iter()
            .flat_map(|topic| {
                topic.partition_data.iter().map(|partition| {
                    let records = partition.records.as_ref().unwrap();
                    (topic.name.clone(), partition.index, records.len())
                })
            })
            .collect();
        sent.sort();
        let expected: Vec<(String, i32, usize)> = batches
            .iter()
            .map(|batch| {
                (
                    batch.topic.to_string(),
                    batch.partition,
                    batch.records.len(),
                )
            })
            .collect();
        assert_eq!(sent, expected);
        assert_eq!(request.topic_data.len(), 2);
    }

    #[test]
    fn each_batch_is_settled_from_its_own_answer() {
        let config = ProducerConfig::default();
        let response = ProduceResponse {
            responses: vec![
                TopicProduceResponse {
                    name: "quotes".into(),
                    partition_responses: vec![
                        answer(1, error_code::NOT_LEADER_OR_FOLLOWER, -1),
                        answer(0, error_code::NONE, 42),
                    ],
                },
                TopicProduceResponse {
                    name: "elsewhere".into(),
                    partition_responses: vec![answer(0, error_code::NONE, 7)],
                },
            ],
            ..ProduceResponse::default()
        };
        let settled = answers(batches(&config), &response);
        let results: Vec<(String, i32, Result<i64, Option<i16>>)> = settled
            .iter()
            .map(|(batch, result)| {
                let code = result.as_ref().map_err(|error| match error {
                    Error::Broker { code, .. } => Some(*code),
                    _ => None,
                });
                (batch.topic.to_string(), batch.partition, code.copied())
            })
            .collect();
        assert_eq!(
            results,
            vec![
                // No answer for orders-0 (the one for another topic is not it).
                ("orders".to_string(), 0, Err(None)),
                ("quotes".to_string(), 0, Ok(42)),
                (
                    "quotes".to_string(),
                    1,
                    Err(Some(error_code::NOT_LEADER_OR_FOLLOWER))
                ),
            ]
        );
        let duplicate = ProduceResponse {
            responses: vec![TopicProduceResponse {
                name: "orders".into(),
                partition_responses: vec![answer(0, error_code::DUPLICATE_SEQUENCE_NUMBER, 5)],
            }],
            ..ProduceResponse::default()
        };
        let settled = answers(batches(&config), &duplicate);
        assert!(matches!(settled[0].1, Ok(-1)));
    }

    #[test]
    fn only_retriable_failures_with_attempts_and_time_left_are_retried() {
        let config = ProducerConfig {
            retries: 2,
            delivery_timeout: Duration::from_secs(60),
            ..ProducerConfig::default()
        };
        let mut batch = batches(&config).remove(0);
        let now = batch.contents.created;
        let moved = Error::broker(error_code::NOT_LEADER_OR_FOLLOWER, "moved");
        let too_large = Error::broker(error_code::MESSAGE_TOO_LARGE, "too large");
        let out_of_order = Error::broker(error_code::OUT_OF_ORDER_SEQUENCE_NUMBER, "gap");
        assert!(retries(&config, &batch, &moved, now));
        assert!(!retries(&config, &batch, &too_large, now));
        assert!(retries(&config, &batch, &out_of_order, now));
        let plain = ProducerConfig {
            idempotent: false,
            ..config.clone()
        };
        assert!(!retries(&plain, &batch, &out_of_order, now));
        let late = now + config.delivery_timeout;
        assert!(!retries(&config, &batch, &moved, late));
        batch.attempts = 2;
        assert!(!retries(&config, &batch, &moved, now));
    }
}
