//! coremq's network front ends: the Kafka wire protocol and the broker that serves it.

pub mod broker;
pub mod protocol;
