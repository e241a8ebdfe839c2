//! The shard runtime: one glommio executor per shard, each running what a [`Service`] puts
//! on it, calls from any thread to a given shard through [`Shards`], one typed per-shard
//! state slot ([`install`], [`local`]) that every layer keeps its shard state in, placement
//! of keys on shards, and the process-wide checks and panic policy a shard-per-core process
//! needs. Glommio stays behind this crate and the engine's file I/O.

mod local;
mod placement;
mod shards;
mod system;
mod task;

pub use local::{install, local, remove};
pub use placement::placement;
pub use shards::{Runtime, RuntimeConfig, Service, ShardFuture, Shards, current_shard, stopping};
pub use system::{MEMLOCK_MIN_BYTES, abort_on_panic};
pub use task::{Task, net, run_alone, sleep, spawn_background, spawn_local, sync, yield_if_needed};

/// Why the runtime could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The system lacks what the shards need (io_uring, locked memory), with the fix.
    System { reason: String },
    /// An executor thread could not start.
    Spawn { shard: usize, reason: String },
    /// The shard is stopping or gone: the call did not run (or its answer was lost).
    ShuttingDown,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::System { reason } => write!(f, "{reason}"),
            Error::Spawn { shard, reason } => {
                write!(
                    f,
                    "starting the executor of shard {shard} (io_uring): {reason}"
                )
            }
            Error::ShuttingDown => write!(f, "the shard is shutting down"),
        }
    }
}

impl std::error::Error for Error {}
