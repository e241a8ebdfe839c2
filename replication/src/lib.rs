//! Replication of coremq logs to followers. No code yet; it will drive the engine's
//! `committed` watermark. The crate exists so the workspace keeps its dependency order.
