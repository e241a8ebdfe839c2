//! coremq's storage engine: an embeddable, shard-per-core segment log that stores Kafka
//! RecordBatch v2 bytes as they come, so a broker serves fetches from stored bytes.
//!
//! Without the `runtime` feature this crate is the pure format layer (batches, records,
//! compression, indexes and the recovery scan): bytes in, values out, no I/O.

pub mod batch;
pub mod compression;
pub mod error;
pub mod record;
pub mod types;

pub use batch::{BatchHeader, TimestampType};
pub use compression::Compression;
pub use error::{Error, Result};
pub use record::{BatchBuilder, Header, Record};
pub use types::{Offset, Position, Timestamp, TopicPartition};
pub mod offset_index;
pub mod recovery;
pub mod time_index;
