//! coremq's network front ends: the Kafka wire protocol, the broker that serves it, and a
//! client for any Kafka-compatible cluster.

pub mod broker;
pub mod client;
pub mod protocol;
