//! A lean asynchronous Kafka client on glommio, for any Kafka-compatible broker: the load
//! tool drives clusters with it, and replication and bridges will fetch with it. One
//! client per executor (its types are `Rc`, never shared across threads); a program that
//! wants every core runs one per core.
//!
//! - [`Connection`]: one broker connection, requests pipelined, versions negotiated.
//! - [`Cluster`]: bootstrap, metadata (brokers, partition leaders), a connection per broker,
//!   topic creation.
//! - [`Producer`]: batches per partition, linger, compression, acks, retries, idempotence.
//! - [`Consumer`]: assigned partitions fetched from their leaders.
//! - [`GroupConsumer`]: a consumer whose partitions a consumer group assigns, with
//!   committed offsets.

mod cluster;
mod connection;
mod consumer;
mod group;
mod producer;

use std::time::Duration;

pub use cluster::{Cluster, PartitionMetadata, TopicMetadata};
pub use connection::Connection;
pub use consumer::{Consumer, ConsumerConfig, Fetched, StartOffset};
pub use group::{GroupConfig, GroupConsumer, decode_data};
pub use producer::{
    BatchReport, Delivery, Producer, ProducerConfig, ProducerRecord, murmur2, partition_for_key,
};

use crate::protocol::api::ResponseBody;
use crate::protocol::error_code;

/// What went wrong talking to a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The socket failed or closed.
    Io(String),
    /// The broker sent something this client cannot read.
    Protocol(String),
    /// The broker answered with an error code.
    Broker { code: i16, context: String },
    /// The broker serves no version of a request this client needs.
    Unsupported(String),
    /// No answer within the request timeout.
    Timeout(String),
    /// Settings that cannot work together.
    Config(String),
}

impl Error {
    /// Whether trying again (after refreshing metadata) can succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Io(_) | Error::Timeout(_) => true,
            Error::Broker { code, .. } => error_code::is_retriable(*code),
            Error::Protocol(_) | Error::Unsupported(_) | Error::Config(_) => false,
        }
    }

    /// A short name for counting errors by kind.
    pub fn kind(&self) -> String {
        match self {
            Error::Io(_) => "io".into(),
            Error::Protocol(_) => "protocol".into(),
            Error::Broker { code, .. } => error_code::name(*code)
                .map_or_else(|| format!("error_{code}"), |name| name.to_lowercase()),
            Error::Unsupported(_) => "unsupported".into(),
            Error::Timeout(_) => "timeout".into(),
            Error::Config(_) => "config".into(),
        }
    }

    pub(crate) fn broker(code: i16, context: impl Into<String>) -> Error {
        Error::Broker {
            code,
            context: context.into(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(message) => write!(f, "I/O: {message}"),
            Error::Protocol(message) => write!(f, "protocol: {message}"),
            Error::Broker { code, context } => {
                let name = error_code::name(*code).unwrap_or("UNKNOWN");
                write!(f, "{context}: {name} ({code})")
            }
            Error::Unsupported(message) => write!(f, "unsupported: {message}"),
            Error::Timeout(message) => write!(f, "timed out: {message}"),
            Error::Config(message) => write!(f, "configuration: {message}"),
        }
    }
}

impl std::error::Error for Error {}

/// Settings shared by everything a client does.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT` of one or more brokers to learn the cluster from.
    pub bootstrap: Vec<String>,
    pub client_id: String,
    /// How long a request may wait for its response.
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn new(bootstrap: &str) -> ClientConfig {
        ClientConfig {
            bootstrap: bootstrap
                .split(',')
                .map(|address| address.trim().to_string())
                .filter(|address| !address.is_empty())
                .collect(),
            client_id: "coremq-client".into(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Groups `(topic, item)` pairs by topic, topics in the order first seen: the shape of
/// every request that lists partitions under their topic.
pub(crate) fn by_topic<K: PartialEq, T>(
    items: impl IntoIterator<Item = (K, T)>,
) -> Vec<(K, Vec<T>)> {
    let mut topics: Vec<(K, Vec<T>)> = Vec::new();
    for (topic, item) in items {
        match topics.iter_mut().find(|(known, _)| *known == topic) {
            Some((_, list)) => list.push(item),
            None => topics.push((topic, vec![item])),
        }
    }
    topics
}

/// Runs `work` for at most `timeout`.
pub(crate) async fn within<T>(
    timeout: Duration,
    what: &str,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    futures_lite::future::or(work, async {
        coremq_runtime::sleep(timeout).await;
        Err(Error::Timeout(format!("{what} after {timeout:?}")))
    })
    .await
}

/// The error for a response of another API than the request's.
pub(crate) fn unexpected(response: &ResponseBody) -> Error {
    Error::Protocol(format!(
        "a response of API {} where another was expected",
        response.api_key()
    ))
}
