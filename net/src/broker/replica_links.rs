//! How a broker reaches the leaders of partitions it does not lead, over Kafka's own
//! protocol and the in-repo client, one connection per leader broker and shard, opened again
//! when it breaks: a follower fetches (Fetch with this broker's replica id, and
//! OffsetForLeaderEpoch); the MQTT front end hands a batch to the leader (Produce,
//! [`Links::produce`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coremq_engine::{Offset, TopicPartition};
use coremq_replication::fetcher::{
    EpochAnswer, EpochQuery, FetchPartition, Fetched, LeaderLink, LocalFuture,
};
use coremq_replication::leader::BrokerId;

use crate::client::Connection;
use crate::client::{Error, by_topic, within};
use crate::protocol::api::{RequestBody, ResponseBody};
use crate::protocol::codec::Records;
use crate::protocol::codec::Uuid;
use crate::protocol::error_code;
use crate::protocol::messages::fetch_request::{self, FetchTopic, ReplicaState};
use crate::protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use crate::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use crate::protocol::messages::{FetchRequest, OffsetForLeaderEpochRequest, ProduceRequest};

/// How long connecting to a leader may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a leader may take to answer, beyond a fetch's own wait.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes one replica fetch asks for, all partitions together.
const FETCH_BYTES: i32 = 16 << 20;

/// A leader's error code as Kafka names it, or its number.
fn code_name(code: i16) -> String {
    error_code::name(code).map_or_else(|| format!("error {code}"), str::to_string)
}

/// A shard's connections to leader brokers.
pub struct Links {
    /// The client id the connections present.
    client_id: &'static str,
    connections: RefCell<HashMap<BrokerId, Rc<Connection>>>,
}

impl Links {
    pub fn new(client_id: &'static str) -> Links {
        Links {
            client_id,
            connections: RefCell::default(),
        }
    }

    /// Appends `batch` to `partition` on its leader `leader` (a Produce with `acks`, -1 or 1,
    /// and the leader's wait `timeout`): the batch's base offset once the leader answered
    /// without error.
    pub async fn produce(
        &self,
        leader: BrokerId,
        address: &(String, u16),
        partition: &TopicPartition,
        batch: Bytes,
        acks: i16,
        timeout: Duration,
    ) -> Result<Offset, String> {
        let request = ProduceRequest {
            transactional_id: None,
            acks,
            timeout_ms: timeout.as_millis().min(i32::MAX as u128) as i32,
            topic_data: vec![TopicProduceData {
                name: partition.topic.clone(),
                partition_data: vec![PartitionProduceData {
                    index: partition.partition as i32,
                    records: Some(Records::from(batch)),
                }],
            }],
        };
        let response = self
            .call(
                leader,
                address,
                RequestBody::Produce(request),
                timeout + ANSWER_TIMEOUT,
            )
            .await?;
        let ResponseBody::Produce(response) = response else {
            return Err("not a Produce response".into());
        };
        let answer = response
            .responses
            .iter()
            .filter(|topic| topic.name == partition.topic)
            .flat_map(|topic| &topic.partition_responses)
            .find(|answer| answer.index == partition.partition as i32)
            .ok_or_else(|| format!("broker {leader}: no answer for {partition}"))?;
        match answer.error_code {
            error_code::NONE => u64::try_from(answer.base_offset)
                .map(Offset)
                .map_err(|_| format!("broker {leader}: no offset for {partition}")),
            code => Err(format!(
                "broker {leader} refused the append to {partition}: {}",
                code_name(code)
            )),
        }
    }

    async fn connection(
        &self,
        leader: BrokerId,
        (host, port): &(String, u16),
    ) -> Result<Rc<Connection>, Error> {
        let known = self.connections.borrow().get(&leader).cloned();
        if let Some(connection) = known.filter(|connection| !connection.is_broken()) {
            return Ok(connection);
        }
        let address = (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|error| Error::Io(format!("resolving {host}:{port}: {error}")))?
            .next()
            .ok_or_else(|| Error::Io(format!("{host}:{port} resolves to no address")))?;
        let connection = Connection::open(address, self.client_id, CONNECT_TIMEOUT).await?;
        self.connections
            .borrow_mut()
            .insert(leader, connection.clone());
        Ok(connection)
    }

    /// Sends `body` to `leader`, dropping the connection if it fails.
    async fn call(
        &self,
        leader: BrokerId,
        address: &(String, u16),
        body: RequestBody,
        patience: Duration,
    ) -> Result<ResponseBody, String> {
        let answer = async {
            let connection = self.connection(leader, address).await?;
            within(patience, "the leader's answer", connection.call(body)).await
        }
        .await;
        match answer {
            Ok((_, response)) => Ok(response),
            Err(error) => {
                self.connections.borrow_mut().remove(&leader);
                Err(format!(
                    "broker {leader} at {}:{}: {error}",
                    address.0, address.1
                ))
            }
        }
    }
}

impl LeaderLink for Links {
    fn fetch<'a>(
        &'a self,
        leader: BrokerId,
        address: (String, u16),
        replica: BrokerId,
        partitions: Vec<FetchPartition>,
        wait: Duration,
    ) -> LocalFuture<'a, Result<Vec<Fetched>, String>> {
        Box::pin(async move {
            let topics = by_topic(partitions.iter().map(|wanted| {
                let partition = fetch_request::FetchPartition {
                    partition: wanted.partition.partition as i32,
                    current_leader_epoch: wanted.leader_epoch,
                    fetch_offset: wanted.fetch_offset.0 as i64,
                    last_fetched_epoch: -1,
                    log_start_offset: wanted.log_start.0 as i64,
                    partition_max_bytes: coremq_replication::fetcher::FETCH_PARTITION_BYTES as i32,
                    ..fetch_request::FetchPartition::default()
                };
                ((wanted.partition.topic.clone(), wanted.topic_id), partition)
            }))
            .into_iter()
            .map(|((topic, id), partitions)| FetchTopic {
                topic,
                topic_id: Uuid(id),
                partitions,
            })
            .collect();
            let request = FetchRequest {
                replica_id: replica,
                replica_state: ReplicaState {
                    replica_id: replica,
                    replica_epoch: -1,
                },
                max_wait_ms: wait.as_millis() as i32,
                min_bytes: 1,
                max_bytes: FETCH_BYTES,
                topics,
                ..FetchRequest::default()
            };
            let response = self
                .call(
                    leader,
                    &address,
                    RequestBody::Fetch(request),
                    wait + ANSWER_TIMEOUT,
                )
                .await?;
            let ResponseBody::Fetch(response) = response else {
                return Err("not a Fetch response".into());
            };
            if response.error_code != error_code::NONE {
                return Err(format!("Fetch refused: error {}", response.error_code));
            }
            let answers = partitions
                .iter()
                .map(|wanted| {
                    let found = response
                        .responses
                        .iter()
                        .filter(|topic| {
                            topic.topic == wanted.partition.topic
                                || topic.topic_id == Uuid(wanted.topic_id)
                        })
                        .flat_map(|topic| &topic.partitions)
                        .find(|data| data.partition_index == wanted.partition.partition as i32);
                    let Some(data) = found else {
                        return Fetched::Refused("not in the answer".into());
                    };
                    match data.error_code {
                        error_code::NONE => Fetched::Records {
                            batches: data
                                .records
                                .as_ref()
                                .map(|records| records.to_bytes())
                                .unwrap_or_default(),
                            high_watermark: Offset(data.high_watermark.max(0) as u64),
                        },
                        error_code::OFFSET_OUT_OF_RANGE => Fetched::OutOfRange {
                            log_start: Offset(data.log_start_offset.max(0) as u64),
                            log_end: Offset(data.high_watermark.max(0) as u64),
                        },
                        code => Fetched::Refused(code_name(code)),
                    }
                })
                .collect();
            Ok(answers)
        })
    }

    fn epoch_ends<'a>(
        &'a self,
        leader: BrokerId,
        address: (String, u16),
        replica: BrokerId,
        queries: Vec<EpochQuery>,
    ) -> LocalFuture<'a, Result<Vec<EpochAnswer>, String>> {
        Box::pin(async move {
            let topics = by_topic(queries.iter().map(|query| {
                let partition = OffsetForLeaderPartition {
                    partition: query.partition.partition as i32,
                    current_leader_epoch: query.current_leader_epoch,
                    leader_epoch: query.epoch,
                };
                (query.partition.topic.clone(), partition)
            }))
            .into_iter()
            .map(|(topic, partitions)| OffsetForLeaderTopic { topic, partitions })
            .collect();
            let request = OffsetForLeaderEpochRequest {
                replica_id: replica,
                topics,
            };
            let response = self
                .call(
                    leader,
                    &address,
                    RequestBody::OffsetForLeaderEpoch(request),
                    ANSWER_TIMEOUT,
                )
                .await?;
            let ResponseBody::OffsetForLeaderEpoch(response) = response else {
                return Err("not an OffsetForLeaderEpoch response".into());
            };
            let answers = queries
                .iter()
                .map(|query| {
                    let found = response
                        .topics
                        .iter()
                        .filter(|topic| topic.topic == query.partition.topic)
                        .flat_map(|topic| &topic.partitions)
                        .find(|end| end.partition == query.partition.partition as i32);
                    match found {
                        None => Err("not in the answer".to_string()),
                        Some(end) if end.error_code != error_code::NONE => {
                            Err(code_name(end.error_code))
                        }
                        Some(end) if end.leader_epoch < 0 || end.end_offset < 0 => Ok(None),
                        Some(end) => Ok(Some((end.leader_epoch, Offset(end.end_offset as u64)))),
                    }
                })
                .collect();
            Ok(answers)
        })
    }
}
