//! coremq's network front ends: the server every protocol runs on (listeners, connections,
//! bounds, the HTTP admin), the Kafka wire protocol and the broker that serves it over that
//! server, and a client for any Kafka-compatible cluster.

pub mod broker;
pub mod client;
pub mod mqtt;
pub mod protocol;
pub mod server;
