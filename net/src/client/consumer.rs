//! The fetching consumer: assigned partitions, each with a position; one Fetch in flight
//! per leader (a long poll); batches handed over as the stored bytes, decoded only when
//! the caller wants records.
//!
//! Fetch sessions are not used (every Fetch names all of its partitions), and only
//! committed-or-not data is read (`read_uncommitted`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coremq_engine::Record;
use coremq_engine::batch;
use coremq_engine::record::decode_records;

use super::{Cluster, Error, by_topic, unexpected};
use crate::protocol::api::{RequestBody, ResponseBody};
use crate::protocol::codec::Uuid;
use crate::protocol::error_code;
use crate::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use crate::protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use crate::protocol::messages::{FetchRequest, FetchResponse, ListOffsetsRequest};

/// Where a consumer starts reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
    /// The first record at or after this timestamp (ms), or the end.
    Timestamp(i64),
    Offset(i64),
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// How long the broker may hold a Fetch waiting for `min_bytes`.
    pub max_wait: Duration,
    pub min_bytes: i32,
    /// Bytes per Fetch response, and per partition in it.
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
    /// Where to go when a position is out of the log's range.
    pub reset: StartOffset,
    /// Largest decompressed batch `Fetched::records` decodes.
    pub decompressed_batch_max_bytes: usize,
}

impl Default for ConsumerConfig {
    fn default() -> ConsumerConfig {
        ConsumerConfig {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 << 20,
            partition_max_bytes: 1 << 20,
            reset: StartOffset::Latest,
            decompressed_batch_max_bytes: 64 << 20,
        }
    }
}

/// Batches fetched from one partition, in offset order. Records below `from` (the
/// position when fetched; a batch can start before it) are not the caller's.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub topic: Rc<str>,
    pub partition: i32,
    pub from: i64,
    pub batches: Vec<Bytes>,
    pub high_watermark: i64,
}

impl Fetched {
    /// The records at or after `from`.
    pub fn records(&self, decompressed_batch_max_bytes: usize) -> Result<Vec<Record>, Error> {
        let mut records = Vec::new();
        for batch in &self.batches {
            let decoded = decode_records(batch, decompressed_batch_max_bytes).map_err(|error| {
                Error::Protocol(format!("{}-{}: {error}", self.topic, self.partition))
            })?;
            records.extend(
                decoded
                    .into_iter()
                    .filter(|record| record.offset.0 as i64 >= self.from),
            );
        }
        Ok(records)
    }
}

type Partition = (Rc<str>, i32);

/// One Fetch's answer, with what it asked for.
struct FetchResult {
    leader: i32,
    asked: Vec<(Partition, i64)>,
    topic_ids: HashMap<Uuid, Rc<str>>,
    response: Result<FetchResponse, Error>,
}

/// A consumer of assigned partitions on one executor.
pub struct Consumer {
    cluster: Rc<Cluster>,
    config: ConsumerConfig,
    positions: RefCell<HashMap<Partition, i64>>,
    /// Leaders with a Fetch outstanding.
    fetching: RefCell<HashSet<i32>>,
    results: (flume::Sender<FetchResult>, flume::Receiver<FetchResult>),
}

impl Consumer {
    pub fn new(cluster: Rc<Cluster>, config: ConsumerConfig) -> Consumer {
        Consumer {
            cluster,
            config,
            positions: RefCell::default(),
            fetching: RefCell::default(),
            results: flume::unbounded(),
        }
    }

    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Adds `partitions` of `topic` (all of them when empty), each starting at `start`.
    pub async fn assign(
        &self,
        topic: &str,
        partitions: &[i32],
        start: StartOffset,
    ) -> Result<(), Error> {
        let metadata = self.cluster.topic(topic).await?;
        let partitions: Vec<i32> = if partitions.is_empty() {
            metadata.partitions.iter().map(|p| p.partition).collect()
        } else {
            partitions.to_vec()
        };
        let topic: Rc<str> = Rc::from(topic);
        for partition in partitions {
            let position = self.offset_for(&topic, partition, start).await?;
            self.positions
                .borrow_mut()
                .insert((topic.clone(), partition), position);
        }
        Ok(())
    }

    /// Drops every assigned partition (a group member's assignment is being replaced).
    pub fn unassign(&self) {
        self.positions.borrow_mut().clear();
    }

    /// The assigned partitions and their positions (the next offset to read).
    pub fn positions(&self) -> Vec<(Rc<str>, i32, i64)> {
        let mut positions: Vec<_> = self
            .positions
            .borrow()
            .iter()
            .map(|((topic, partition), position)| (topic.clone(), *partition, *position))
            .collect();
        positions.sort();
        positions
    }

    /// Moves a partition's position.
    pub async fn seek(&self, topic: &str, partition: i32, start: StartOffset) -> Result<(), Error> {
        let topic: Rc<str> = Rc::from(topic);
        let position = self.offset_for(&topic, partition, start).await?;
        self.positions
            .borrow_mut()
            .insert((topic, partition), position);
        Ok(())
    }

    /// Resolves `start` to an offset with ListOffsets at the partition's leader.
    async fn offset_for(
        &self,
        topic: &str,
        partition: i32,
        start: StartOffset,
    ) -> Result<i64, Error> {
        let timestamp = match start {
            StartOffset::Offset(offset) => return Ok(offset),
            StartOffset::Earliest => -2,
            StartOffset::Latest => -1,
            StartOffset::Timestamp(timestamp) => timestamp,
        };
        let request = ListOffsetsRequest {
            replica_id: -1,
            isolation_level: 0,
            topics: vec![ListOffsetsTopic {
                name: topic.into(),
                partitions: vec![ListOffsetsPartition {
                    partition_index: partition,
                    current_leader_epoch: -1,
                    timestamp,
                    max_num_offsets: 1,
                }],
            }],
            timeout_ms: self.cluster.config().request_timeout.as_millis() as i32,
        };
        let leader = self.cluster.leader(topic, partition).await?;
        let (version, response) = self
            .cluster
            .call(&leader, RequestBody::ListOffsets(request))
            .await?;
        let ResponseBody::ListOffsets(response) = response else {
            return Err(unexpected(&response));
        };
        let answer = response
            .topics
            .iter()
            .flat_map(|topic| &topic.partitions)
            .find(|answer| answer.partition_index == partition)
            .ok_or_else(|| Error::Protocol("ListOffsets answered no partition".into()))?;
        if answer.error_code != error_code::NONE {
            self.cluster.invalidate(topic);
            return Err(Error::broker(
                answer.error_code,
                format!("ListOffsets for {topic}-{partition}"),
            ));
        }
        let offset = if version == 0 {
            answer.old_style_offsets.first().copied().unwrap_or(-1)
        } else {
            answer.offset
        };
        match start {
            _ if offset >= 0 => Ok(offset),
            // No record at or after the timestamp: the end.
            StartOffset::Timestamp(_) => {
                Box::pin(self.offset_for(topic, partition, StartOffset::Latest)).await
            }
            _ => Err(Error::Protocol(format!(
                "ListOffsets gave offset {offset} for {topic}-{partition}"
            ))),
        }
    }

    /// Waits for the next Fetch answer and returns the batches it brought (possibly none,
    /// after the long poll's `max_wait`), advancing the positions past them.
    pub async fn poll(&self) -> Result<Vec<Fetched>, Error> {
        self.start_fetches().await?;
        let (_, results) = &self.results;
        let first = results
            .recv_async()
            .await
            .map_err(|_| Error::Io("fetch results closed".into()))?;
        let mut fetched = Vec::new();
        let mut failure = None;
        for result in std::iter::once(first).chain(results.try_iter()) {
            self.fetching.borrow_mut().remove(&result.leader);
            if let Err(error) = self.take(result, &mut fetched).await {
                failure.get_or_insert(error);
            }
        }
        match failure {
            Some(error) if fetched.is_empty() => Err(error),
            _ => Ok(fetched),
        }
    }

    /// Sends a Fetch to every leader of an assigned partition that has none outstanding.
    async fn start_fetches(&self) -> Result<(), Error> {
        let positions = self.positions();
        if positions.is_empty() {
            return Err(Error::Config("no partition is assigned".into()));
        }
        let mut by_leader: HashMap<i32, Vec<(Partition, i64)>> = HashMap::new();
        let mut topic_ids = HashMap::new();
        for (topic, partition, position) in positions {
            let metadata = self.cluster.topic(&topic).await?;
            let leader = metadata
                .partitions
                .get(partition as usize)
                .map_or(-1, |known| known.leader);
            if leader < 0 || self.fetching.borrow().contains(&leader) {
                continue;
            }
            topic_ids.insert(metadata.topic_id, topic.clone());
            by_leader
                .entry(leader)
                .or_default()
                .push(((topic, partition), position));
        }
        for (leader, asked) in by_leader {
            self.fetching.borrow_mut().insert(leader);
            let request = self.fetch_request(&asked, &topic_ids);
            let cluster = self.cluster.clone();
            let sender = self.results.0.clone();
            let topic_ids = topic_ids.clone();
            let timeout = self.config.max_wait;
            coremq_runtime::spawn_local(async move {
                let response = fetch(&cluster, leader, request, timeout).await;
                let _ = sender.send(FetchResult {
                    leader,
                    asked,
                    topic_ids,
                    response,
                });
            })
            .detach();
        }
        Ok(())
    }

    fn fetch_request(
        &self,
        asked: &[(Partition, i64)],
        topic_ids: &HashMap<Uuid, Rc<str>>,
    ) -> FetchRequest {
        let partitions = asked.iter().map(|((topic, partition), position)| {
            let fetch = FetchPartition {
                partition: *partition,
                current_leader_epoch: -1,
                fetch_offset: *position,
                last_fetched_epoch: -1,
                log_start_offset: -1,
                partition_max_bytes: self.config.partition_max_bytes,
                ..FetchPartition::default()
            };
            (topic, fetch)
        });
        let topics = by_topic(partitions)
            .into_iter()
            .map(|(topic, partitions)| FetchTopic {
                topic: topic.to_string(),
                topic_id: topic_ids
                    .iter()
                    .find(|(_, name)| *name == topic)
                    .map_or(Uuid::ZERO, |(id, _)| *id),
                partitions,
            })
            .collect();
        FetchRequest {
            replica_id: -1,
            max_wait_ms: self.config.max_wait.as_millis() as i32,
            min_bytes: self.config.min_bytes,
            max_bytes: self.config.max_bytes,
            isolation_level: 0,
            session_id: 0,
            session_epoch: -1,
            topics,
            ..FetchRequest::default()
        }
    }

    /// Takes one Fetch answer: batches for partitions whose position did not move since,
    /// positions reset when out of range, metadata dropped when a leader moved.
    async fn take(&self, result: FetchResult, fetched: &mut Vec<Fetched>) -> Result<(), Error> {
        let response = result.response?;
        if response.error_code != error_code::NONE {
            return Err(Error::broker(response.error_code, "Fetch"));
        }
        let mut failure = None;
        for topic in response.responses {
            let name = if topic.topic.is_empty() {
                result.topic_ids.get(&topic.topic_id).cloned()
            } else {
                Some(Rc::from(topic.topic.as_str()))
            };
            let Some(name) = name else { continue };
            for data in topic.partitions {
                let key = (name.clone(), data.partition_index);
                let Some((_, asked_at)) = result.asked.iter().find(|(asked, _)| *asked == key)
                else {
                    continue;
                };
                if self.positions.borrow().get(&key) != Some(asked_at) {
                    continue;
                }
                match data.error_code {
                    error_code::NONE => {
                        let bytes = data.records.map(|records| records.to_bytes());
                        let batches = self.advance(&key, *asked_at, bytes.unwrap_or_default())?;
                        if !batches.is_empty() {
                            fetched.push(Fetched {
                                topic: name.clone(),
                                partition: data.partition_index,
                                from: *asked_at,
                                batches,
                                high_watermark: data.high_watermark,
                            });
                        }
                    }
                    error_code::OFFSET_OUT_OF_RANGE => {
                        self.seek(&name, data.partition_index, self.config.reset)
                            .await?;
                    }
                    code => {
                        self.cluster.invalidate(&name);
                        let error = Error::broker(
                            code,
                            format!("fetching {name}-{}", data.partition_index),
                        );
                        if !error.is_retriable() {
                            failure.get_or_insert(error);
                        }
                    }
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// The complete batches of `bytes` that reach past `from`; moves the position to the
    /// end of the last one. Control batches (transaction markers) are skipped.
    fn advance(&self, key: &Partition, from: i64, bytes: Bytes) -> Result<Vec<Bytes>, Error> {
        let mut batches = Vec::new();
        let mut next = from;
        for frame in batch::frames(&bytes) {
            let end = frame.header.next_offset().0 as i64;
            if end <= next {
                continue;
            }
            next = end;
            if !frame.header.is_control() {
                batches.push(bytes.slice(frame.position..frame.end()));
            }
        }
        if next == from && !bytes.is_empty() {
            return Err(Error::Protocol(format!(
                "{}-{}: a batch at {from} is larger than the {} bytes asked for",
                key.0, key.1, self.config.partition_max_bytes
            )));
        }
        self.positions.borrow_mut().insert(key.clone(), next);
        Ok(batches)
    }
}

async fn fetch(
    cluster: &Cluster,
    leader: i32,
    request: FetchRequest,
    max_wait: Duration,
) -> Result<FetchResponse, Error> {
    let connection = cluster.broker(leader).await?;
    // The broker may hold the request for `max_wait` before answering.
    let response = super::within(
        cluster.config().request_timeout + max_wait,
        "waiting for a Fetch",
        connection.call(RequestBody::Fetch(request)),
    )
    .await?;
    match response {
        (_, ResponseBody::Fetch(response)) => Ok(response),
        (_, other) => Err(unexpected(&other)),
    }
}
