//! What a client knows of a cluster: its brokers, each topic's partitions and their
//! leaders (from Metadata), and one connection per broker, opened on first use and opened
//! again after it breaks.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;

use coremq_engine::notify::Notify;

use super::{ClientConfig, Connection, Error, unexpected, within};
use crate::protocol::api::{RequestBody, ResponseBody};
use crate::protocol::codec::Uuid;
use crate::protocol::error_code;
use crate::protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use crate::protocol::messages::metadata_request::MetadataRequestTopic;
use crate::protocol::messages::{CreateTopicsRequest, MetadataRequest};

/// One partition: its leader's node id (-1 while it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: i32,
    pub leader: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub topic_id: Uuid,
    pub partitions: Vec<PartitionMetadata>,
}

/// `address` is being opened until this is dropped, also when the opening is abandoned.
struct Opening<'a> {
    cluster: &'a Cluster,
    address: SocketAddr,
}

impl<'a> Opening<'a> {
    fn new(cluster: &'a Cluster, address: SocketAddr) -> Opening<'a> {
        cluster.opening.borrow_mut().insert(address);
        Opening { cluster, address }
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.cluster.opening.borrow_mut().remove(&self.address);
        self.cluster.opened.notify_all();
    }
}

/// A cluster seen from one executor.
pub struct Cluster {
    config: ClientConfig,
    brokers: RefCell<HashMap<i32, SocketAddr>>,
    connections: RefCell<HashMap<SocketAddr, Rc<Connection>>>,
    /// Addresses a connection is being opened to: callers wait for that one instead of
    /// opening another (two connections to one broker could reorder an idempotent
    /// producer's batches of one partition).
    opening: RefCell<HashSet<SocketAddr>>,
    /// Woken when an opening ends.
    opened: Notify,
    topics: RefCell<HashMap<String, Rc<TopicMetadata>>>,
}

impl Cluster {
    /// Connects to the first bootstrap broker that answers and learns the brokers.
    pub async fn connect(config: ClientConfig) -> Result<Rc<Cluster>, Error> {
        if config.bootstrap.is_empty() {
            return Err(Error::Io("no bootstrap broker given".into()));
        }
        let cluster = Rc::new(Cluster {
            config,
            brokers: RefCell::default(),
            connections: RefCell::default(),
            opening: RefCell::default(),
            opened: Notify::default(),
            topics: RefCell::default(),
        });
        cluster.refresh(&[]).await?;
        Ok(cluster)
    }

    /// A connection to any broker: a known one, else a bootstrap address.
    async fn any_connection(&self) -> Result<Rc<Connection>, Error> {
        let known: Vec<SocketAddr> = self.brokers.borrow().values().copied().collect();
        let mut last_error = None;
        for address in known {
            match self.connection_to(address).await {
                Ok(connection) => return Ok(connection),
                Err(error) => last_error = Some(error),
            }
        }
        for address in &self.config.bootstrap {
            let resolved = address
                .to_socket_addrs()
                .map_err(|error| Error::Io(format!("resolving {address}: {error}")));
            for address in resolved.into_iter().flatten() {
                match self.connection_to(address).await {
                    Ok(connection) => return Ok(connection),
                    Err(error) => last_error = Some(error),
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Io("no broker address resolves".into())))
    }

    async fn connection_to(&self, address: SocketAddr) -> Result<Rc<Connection>, Error> {
        loop {
            if let Some(connection) = self.connections.borrow().get(&address)
                && !connection.is_broken()
            {
                return Ok(connection.clone());
            }
            if !self.opening.borrow().contains(&address) {
                break;
            }
            let opened = self.opened.notified();
            if self.opening.borrow().contains(&address) {
                opened.await;
            }
        }
        let opening = Opening::new(self, address);
        let opened = within(
            self.config.request_timeout,
            "connecting",
            Connection::open(address, &self.config.client_id, self.config.request_timeout),
        )
        .await;
        drop(opening);
        let connection = opened?;
        self.connections
            .borrow_mut()
            .insert(address, connection.clone());
        Ok(connection)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The connection to broker `node_id`.
    pub async fn broker(&self, node_id: i32) -> Result<Rc<Connection>, Error> {
        let address = self.brokers.borrow().get(&node_id).copied();
        match address {
            Some(address) => self.connection_to(address).await,
            None => Err(Error::broker(
                error_code::LEADER_NOT_AVAILABLE,
                format!("broker {node_id} is not in the metadata"),
            )),
        }
    }

    /// Sends `body` to `connection` within the request timeout.
    pub async fn call(
        &self,
        connection: &Connection,
        body: RequestBody,
    ) -> Result<(i16, ResponseBody), Error> {
        within(
            self.config.request_timeout,
            "waiting for a response",
            connection.call(body),
        )
        .await
    }

    /// Sends `body` to any broker (a request that needs no particular one).
    pub async fn call_any(&self, body: RequestBody) -> Result<(i16, ResponseBody), Error> {
        let connection = self.any_connection().await?;
        self.call(&connection, body).await
    }

    /// Asks for the brokers and `topics` (all topics when empty) and keeps what comes back.
    /// Topics the broker does not know are left out, not created.
    pub async fn refresh(&self, topics: &[String]) -> Result<(), Error> {
        let request = MetadataRequest {
            topics: if topics.is_empty() {
                None
            } else {
                Some(
                    topics
                        .iter()
                        .map(|name| MetadataRequestTopic {
                            name: Some(name.clone()),
                            ..MetadataRequestTopic::default()
                        })
                        .collect(),
                )
            },
            allow_auto_topic_creation: false,
            ..MetadataRequest::default()
        };
        let response = match self.call_any(RequestBody::Metadata(request)).await? {
            (_, ResponseBody::Metadata(response)) => response,
            (_, other) => return Err(unexpected(&other)),
        };
        let mut brokers = self.brokers.borrow_mut();
        brokers.clear();
        for broker in &response.brokers {
            let address = (broker.host.as_str(), broker.port as u16)
                .to_socket_addrs()
                .ok()
                .and_then(|mut addresses| addresses.next());
            if let Some(address) = address {
                brokers.insert(broker.node_id, address);
            }
        }
        let mut known = self.topics.borrow_mut();
        for topic in response.topics {
            let Some(name) = topic.name else { continue };
            if topic.error_code != error_code::NONE {
                known.remove(&name);
                continue;
            }
            let mut partitions: Vec<PartitionMetadata> = topic
                .partitions
                .iter()
                .map(|partition| PartitionMetadata {
                    partition: partition.partition_index,
                    leader: partition.leader_id,
                })
                .collect();
            partitions.sort_by_key(|partition| partition.partition);
            known.insert(
                name.clone(),
                Rc::new(TopicMetadata {
                    name,
                    topic_id: topic.topic_id,
                    partitions,
                }),
            );
        }
        Ok(())
    }

    /// `topic`'s metadata, asked for when not known yet.
    pub async fn topic(&self, topic: &str) -> Result<Rc<TopicMetadata>, Error> {
        if let Some(known) = self.topics.borrow().get(topic) {
            return Ok(known.clone());
        }
        self.refresh(&[topic.to_string()]).await?;
        self.topics.borrow().get(topic).cloned().ok_or_else(|| {
            Error::broker(
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {topic}"),
            )
        })
    }

    /// The connection to the leader of `topic`'s `partition`.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<Rc<Connection>, Error> {
        let metadata = self.topic(topic).await?;
        let leader = metadata
            .partitions
            .iter()
            .find(|known| known.partition == partition)
            .map(|known| known.leader)
            .ok_or_else(|| {
                Error::broker(
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("{topic}-{partition}"),
                )
            })?;
        self.broker(leader).await
    }

    /// Forgets what is known of `topic`, so the next use asks again (after a leader moved).
    pub fn invalidate(&self, topic: &str) {
        self.topics.borrow_mut().remove(topic);
    }

    /// Creates `topic` unless it exists; true when this call created it. `configs` are
    /// topic config overrides.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(&str, &str)],
    ) -> Result<bool, Error> {
        let request = CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: topic.into(),
                num_partitions: partitions,
                replication_factor,
                configs: configs
                    .iter()
                    .map(|(name, value)| CreatableTopicConfig {
                        name: name.to_string(),
                        value: Some(value.to_string()),
                    })
                    .collect(),
                ..CreatableTopic::default()
            }],
            timeout_ms: self.config.request_timeout.as_millis() as i32,
            validate_only: false,
        };
        let result = match self.call_any(RequestBody::CreateTopics(request)).await? {
            (_, ResponseBody::CreateTopics(response)) => response.topics.into_iter().next(),
            (_, other) => return Err(unexpected(&other)),
        };
        let result =
            result.ok_or_else(|| Error::Protocol("CreateTopics answered no topic".into()))?;
        let created = match result.error_code {
            error_code::NONE => true,
            error_code::TOPIC_ALREADY_EXISTS => false,
            code => {
                let message = result.error_message.unwrap_or_default();
                return Err(Error::broker(code, format!("creating {topic}: {message}")));
            }
        };
        self.invalidate(topic);
        Ok(created)
    }
}
