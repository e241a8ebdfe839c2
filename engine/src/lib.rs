//! coremq's storage engine: an embeddable, shard-per-core segment log that stores Kafka
//! RecordBatch v2 bytes as they come, so a broker serves fetches from stored bytes.
//!
//! Without the `runtime` feature this crate is the pure format layer (batches, records,
//! compression, indexes and the recovery scan): bytes in, values out, no I/O. With it
//! (the default), [`Engine`] runs one glommio executor per shard, each owning its logs.

pub mod batch;
pub mod checkpoint;
pub mod compression;
pub mod epochs;
pub mod error;
pub mod index;
pub mod offset_index;
pub mod producers;
pub mod record;
pub mod recovery;
pub mod retention;
pub mod time_index;
pub mod types;

pub mod config;

#[cfg(feature = "runtime")]
mod cache;
#[cfg(feature = "runtime")]
pub mod compaction;
#[cfg(feature = "runtime")]
pub mod dir_lock;
#[cfg(feature = "runtime")]
pub mod engine;
#[cfg(feature = "runtime")]
pub mod file;
#[cfg(feature = "runtime")]
pub mod log;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
mod mmap;
#[cfg(feature = "runtime")]
pub mod notify;
#[cfg(feature = "runtime")]
mod readahead;
#[cfg(feature = "runtime")]
pub mod segment;
#[cfg(feature = "runtime")]
pub mod storage;

pub use batch::{BatchHeader, TimestampType};
pub use compression::Compression;
pub use config::{CleanupPolicy, Durability, LogConfig};
pub use error::{Error, Result};
pub use record::{BatchBuilder, Header, Record};
pub use types::{Offset, Position, Timestamp, TopicPartition};

#[cfg(feature = "runtime")]
pub use config::EngineConfig;
#[cfg(feature = "runtime")]
pub use engine::{Engine, Handle, Shard, abort_on_panic};
#[cfg(feature = "runtime")]
pub use log::{Ack, AppendInfo, Isolation, LogOffsets, ReadBatches};
#[cfg(feature = "runtime")]
pub use metrics::MetricsSnapshot;
