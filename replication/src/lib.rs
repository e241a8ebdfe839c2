//! The partitions and the cluster metadata, between the front ends (the Kafka protocol today,
//! MQTT next) and the engine. Front ends append to and read from a [`Partition`] with a
//! [`Consistency`] and an [`Isolation`], never from the engine's log, and change topics
//! through the [`Cluster`]; the topic table ([`topics`]) with its stored configs lives here.
//!
//! Topics are records in a Raft metadata log ([`node`]), a quorum of one on a single broker
//! and of the `--controller-voters` in a cluster; brokers outside the voters follow its
//! committed records ([`observer`]). Partitions with several replicas are
//! copied from their leader by followers ([`fetcher`]); the high watermark drives the
//! engine's `committed` watermark, and `Consistency::Durable` waits for it.

mod cluster;
pub mod controller;
mod error;
pub mod fetcher;
pub mod follower;
pub mod leader;
pub mod metadata;
pub mod node;
pub mod observer;
mod partition;
pub mod peers;
pub mod quorum;
pub mod quorum_storage;
pub mod quorum_store;
pub mod replica;
pub mod roles;
pub mod topics;

pub use cluster::{Cluster, LogConfigs};
pub use coremq_engine::Isolation;
pub use error::Error;
pub use node::NodeConfig;
pub use partition::{Consistency, Partition};
pub use peers::Transport;
pub use replica::LeaderLinks;
