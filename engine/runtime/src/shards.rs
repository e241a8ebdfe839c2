//! The executors and the calls between them. [`Runtime::start`] starts one glommio executor
//! per shard, each running its [`Service`]'s start, then the calls sent to it, then its stop.
//! [`Shards`] is the `Send` handle that sends a call to a shard: a boxed closure over that
//! shard's bounded `flume` channel, answered over a one-shot channel, so the call's future
//! need not be `Send`; a caller already on that shard runs it directly. Each shard runs at
//! most `tasks_max` calls at once; past that it stops taking from its queue and senders wait.

use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::sync::Semaphore;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::Error;
use crate::system::{online_cpus, preflight, raise_memlock};

/// The longest a shard's reactor sleeps (see `ShardMain::run`).
const REACTOR_TICK: Duration = Duration::from_millis(50);

/// A future that runs on one shard (it need not be `Send`).
pub type ShardFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

type Job = Box<dyn FnOnce() -> ShardFuture<'static, ()> + Send>;

enum Message {
    Job(Job),
    Shutdown,
}

thread_local! {
    static CURRENT_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    static STOPPING: Cell<bool> = const { Cell::new(false) };
}

/// The shard running on this thread, if this is a shard thread.
pub fn current_shard() -> Option<usize> {
    CURRENT_SHARD.with(Cell::get)
}

/// Whether this shard has begun to stop (it takes no new calls).
pub fn stopping() -> bool {
    STOPPING.with(Cell::get)
}

/// What a shard does when it starts and when it stops, given by the layer that owns the
/// shards. Both run on the shard's own executor.
pub trait Service: Send + Sync + 'static {
    type Error: From<Error> + Send + 'static;
    /// Opens what the shard owns and installs its state; the shard takes calls after it.
    fn start(&self, shard: usize) -> ShardFuture<'_, Result<(), Self::Error>>;
    /// Closes what the shard owns, once its calls finished (or the grace ran out).
    fn stop(&self, shard: usize) -> ShardFuture<'_, Result<(), Self::Error>>;
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub shards: usize,
    /// Pin each shard's executor to a core (round robin over the online CPUs).
    pub pin: bool,
    /// Memory each executor registers with io_uring for its buffers.
    pub io_memory_bytes: usize,
    /// Calls that may wait in a shard's queue before senders wait.
    pub queue_depth: usize,
    /// Calls one shard runs at once.
    pub tasks_max: u64,
    /// How long a stopping shard waits for its running calls before its service stops.
    pub shutdown_grace: Duration,
    /// Executor threads are named `{name}-{shard}`.
    pub name: String,
}

/// A cloneable, `Send` handle that runs calls on the shards.
#[derive(Clone)]
pub struct Shards {
    senders: Arc<Vec<flume::Sender<Message>>>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("count", &self.senders.len())
            .finish()
    }
}

impl Shards {
    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// Runs `work` on shard `shard` and returns its result: directly if the caller is on
    /// that shard, else over the shard's bounded queue. [`Error::ShuttingDown`] if the shard
    /// stopped before answering.
    pub async fn run_on<T, F, Fut>(&self, shard: usize, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        if current_shard() == Some(shard) && !stopping() {
            return Ok(work().await);
        }
        let (reply, answer) = flume::bounded(1);
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _ = reply.send(work().await);
            })
        });
        self.senders[shard]
            .send_async(Message::Job(job))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.recv_async().await.map_err(|_| Error::ShuttingDown)
    }
}

/// Running shards. Dropping it without [`Runtime::shutdown`] leaves the executors running
/// until every [`Shards`] handle is gone.
pub struct Runtime<S: Service> {
    shards: Shards,
    threads: Vec<ExecutorJoinHandle<()>>,
    stopped: flume::Receiver<Result<(), S::Error>>,
    service: PhantomData<S>,
}

impl<S: Service> Runtime<S> {
    /// Checks the system, then starts one executor per shard and waits until each has run
    /// `service.start`; if any fails, stops the others and returns the first failure.
    pub fn start(config: RuntimeConfig, service: Arc<S>) -> Result<Runtime<S>, S::Error> {
        raise_memlock(config.io_memory_bytes as u64 * config.shards as u64);
        preflight()?;
        let cpus = online_cpus();
        let (ready_sender, ready) = flume::unbounded();
        let (stopped_sender, stopped) = flume::unbounded();
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let mut failure = None;
        for id in 0..config.shards {
            let (sender, receiver) = flume::bounded(config.queue_depth);
            let placement = match (&cpus[..], config.pin) {
                ([], _) | (_, false) => Placement::Unbound,
                (cpus, true) => Placement::Fixed(cpus[id % cpus.len()]),
            };
            let shard = ShardMain {
                id,
                service: service.clone(),
                receiver,
                ready: ready_sender.clone(),
                stopped: stopped_sender.clone(),
                tasks_max: config.tasks_max,
                grace: config.shutdown_grace,
            };
            let spawned = LocalExecutorBuilder::new(placement)
                .name(&format!("{}-{id}", config.name))
                .io_memory(config.io_memory_bytes)
                .preempt_timer(Duration::from_millis(2))
                .spawn(move || shard.run());
            match spawned {
                Ok(thread) => {
                    senders.push(sender);
                    threads.push(thread);
                }
                Err(error) => {
                    failure = Some(S::Error::from(Error::Spawn {
                        shard: id,
                        reason: error.to_string(),
                    }));
                    break;
                }
            }
        }
        drop(ready_sender);
        drop(stopped_sender);
        let runtime = Runtime {
            shards: Shards {
                senders: Arc::new(senders),
            },
            threads,
            stopped,
            service: PhantomData,
        };
        for _ in 0..runtime.threads.len() {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    failure.get_or_insert(error);
                }
                Err(_) => {
                    failure.get_or_insert(S::Error::from(Error::ShuttingDown));
                }
            }
        }
        match failure {
            None => Ok(runtime),
            Some(error) => {
                let _ = runtime.shutdown();
                Err(error)
            }
        }
    }

    pub fn shards(&self) -> Shards {
        self.shards.clone()
    }

    /// Stops every shard after its running calls finish (at most the grace), runs each
    /// service's stop, and joins the executors; the first stop failure is returned.
    pub fn shutdown(self) -> Result<(), S::Error> {
        let mut stopping = 0;
        for sender in self.shards.senders.iter() {
            if sender.send(Message::Shutdown).is_ok() {
                stopping += 1;
            }
        }
        let mut result = Ok(());
        for _ in 0..stopping {
            if let Ok(Err(error)) = self.stopped.recv() {
                result = result.and(Err(error));
            }
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        result
    }
}

/// What one executor thread runs.
struct ShardMain<S: Service> {
    id: usize,
    service: Arc<S>,
    receiver: flume::Receiver<Message>,
    ready: flume::Sender<Result<(), S::Error>>,
    stopped: flume::Sender<Result<(), S::Error>>,
    tasks_max: u64,
    grace: Duration,
}

impl<S: Service> ShardMain<S> {
    async fn run(self) {
        CURRENT_SHARD.with(|current| current.set(Some(self.id)));
        // Wakes the reactor at least every `REACTOR_TICK`. Each wake collects the blocking
        // thread's finished work and other threads' wakers; if a notification of either is
        // ever lost (a shard was once found asleep for good in io_uring during an engine's
        // start, its blocking thread idle), the shard goes on a tick later instead of hanging.
        glommio::spawn_local(async {
            while !stopping() {
                glommio::timer::sleep(REACTOR_TICK).await;
            }
        })
        .detach();
        let started = self.service.start(self.id).await;
        let failed = started.is_err();
        let _ = self.ready.send(started);
        if failed {
            STOPPING.with(|stopping| stopping.set(true));
            return;
        }
        let tasks = Rc::new(Semaphore::new(self.tasks_max));
        let shutdown = loop {
            match self.receiver.recv_async().await {
                Ok(Message::Job(job)) => {
                    let Ok(permit) = tasks.acquire_static_permit(1).await else {
                        break false;
                    };
                    let future = job();
                    glommio::spawn_local(async move {
                        future.await;
                        drop(permit);
                    })
                    .detach();
                }
                Ok(Message::Shutdown) => break true,
                Err(_) => break false,
            }
        };
        STOPPING.with(|stopping| stopping.set(true));
        // Running calls finish first, but a call waiting on something that never comes (a
        // client's rebalance, a stuck disk) must not keep the process from exiting.
        let finished = futures_lite::future::or(
            async {
                let _ = tasks.acquire(self.tasks_max).await;
                true
            },
            async {
                glommio::timer::sleep(self.grace).await;
                false
            },
        )
        .await;
        if !finished {
            log::warn!(
                "shard {}: {} calls still running {} s into shutdown; stopping anyway",
                self.id,
                self.tasks_max - tasks.available(),
                self.grace.as_secs()
            );
        }
        let result = self.service.stop(self.id).await;
        // Glommio closes a file dropped while its executor runs on the reactor's next cycle;
        // the files the service's stop dropped would otherwise keep their descriptors open
        // after the executor is gone (an embedded engine started and stopped many times runs
        // out of them). A timer wait is such a cycle.
        glommio::timer::sleep(Duration::from_millis(1)).await;
        if shutdown {
            let _ = self.stopped.send(result);
        }
        CURRENT_SHARD.with(|current| current.set(None));
    }
}
