//! What code running on a shard uses from the executor: tasks, timers, shard-local
//! synchronization and sockets. Every layer above the runtime takes them from here, so the
//! executor is named in one crate (and in the engine's file I/O).

/// Tasks on the current shard.
pub use glommio::{Task, spawn_local, yield_if_needed};

/// Sleeps on the current shard's timer.
pub use glommio::timer::sleep;

/// Synchronization between tasks of one shard (not `Send`).
pub mod sync {
    pub use glommio::channels::local_channel;
    pub use glommio::sync::{Permit, Semaphore, StaticPermit};
}

/// TCP on the current shard's io_uring.
pub mod net {
    pub use glommio::net::{AcceptedTcpStream, TcpListener, TcpStream};
}

/// Spawns `work` on the current shard in a task queue of its own that gets `shares` of the
/// shard's time against the default queue's 1000 when both have work: background work that
/// must not crowd out requests.
pub fn spawn_background<T: 'static>(
    name: &str,
    shares: usize,
    work: impl Future<Output = T> + 'static,
) -> Task<T> {
    let queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(shares),
        glommio::Latency::NotImportant,
        name,
    );
    glommio::spawn_local_into(work, queue).expect("the queue was just created")
}

/// Runs `work` to completion on an executor of its own, on a thread of its own (tests and
/// tools that need a shard-like context without a [`crate::Runtime`]).
pub fn run_alone<T: Send + 'static>(work: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || work())
        .expect("an executor thread starts")
        .join()
        .expect("the work completes without a panic")
}
