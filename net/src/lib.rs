//! coremq's network front ends. The Kafka wire protocol lands here with the broker; this
//! crate has no code yet and exists so the workspace keeps its dependency order
//! (engine <- replication <- net <- coremq).
