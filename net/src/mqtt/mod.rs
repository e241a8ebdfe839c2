//! The MQTT front end: MQTT 3.1, 3.1.1 and 5.0 clients on the same log as Kafka clients.

pub mod codec;
pub mod topic;
