//! The runtime end to end: calls land on the shard they name (directly when the caller is
//! already there), each shard's state is its own, a failed start stops every shard and says
//! why, and shutdown runs each shard's stop and returns its failure.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coremq_runtime::{Error, Runtime, RuntimeConfig, Service, ShardFuture};

#[derive(Debug, PartialEq)]
enum TestError {
    Runtime(Error),
    Refused(usize),
}

impl From<Error> for TestError {
    fn from(error: Error) -> TestError {
        TestError::Runtime(error)
    }
}

/// Each shard's state: its id, times ten.
struct Tens(usize);

struct Counting {
    refuse_start_of: Option<usize>,
    refuse_stop_of: Option<usize>,
    stopped: AtomicUsize,
}

impl Service for Counting {
    type Error = TestError;

    fn start(&self, shard: usize) -> ShardFuture<'_, Result<(), TestError>> {
        Box::pin(async move {
            if self.refuse_start_of == Some(shard) {
                return Err(TestError::Refused(shard));
            }
            coremq_runtime::install(Rc::new(Tens(shard * 10)));
            Ok(())
        })
    }

    fn stop(&self, shard: usize) -> ShardFuture<'_, Result<(), TestError>> {
        Box::pin(async move {
            self.stopped.fetch_add(1, Ordering::SeqCst);
            match self.refuse_stop_of {
                Some(refused) if refused == shard => Err(TestError::Refused(shard)),
                _ => Ok(()),
            }
        })
    }
}

fn config(shards: usize) -> RuntimeConfig {
    RuntimeConfig {
        shards,
        pin: false,
        io_memory_bytes: 256 << 10,
        queue_depth: 16,
        tasks_max: 8,
        shutdown_grace: Duration::from_secs(5),
        name: "test-shard".into(),
    }
}

fn service(refuse_start_of: Option<usize>, refuse_stop_of: Option<usize>) -> Arc<Counting> {
    Arc::new(Counting {
        refuse_start_of,
        refuse_stop_of,
        stopped: AtomicUsize::new(0),
    })
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::block_on(future)
}

#[test]
fn calls_run_on_the_shard_they_name_with_its_state() {
    let counting = service(None, None);
    let runtime = Runtime::start(config(3), counting.clone()).unwrap();
    let shards = runtime.shards();
    assert!(coremq_runtime::current_shard().is_none());
    for shard in 0..3 {
        let seen = block_on(shards.run_on(shard, || async {
            let tens = coremq_runtime::local::<Tens>().expect("installed by start");
            (coremq_runtime::current_shard(), tens.0)
        }))
        .unwrap();
        assert_eq!(seen, (Some(shard), shard * 10));
    }
    // From shard 0: to shard 2 over its queue, and to shard 0 itself directly.
    let inner = shards.clone();
    let hops = block_on(shards.run_on(0, move || async move {
        let there = inner
            .run_on(2, || async { coremq_runtime::current_shard() })
            .await
            .unwrap();
        let here = inner
            .run_on(0, || async {
                coremq_runtime::local::<Tens>().map(|tens| tens.0)
            })
            .await
            .unwrap();
        (there, here)
    }))
    .unwrap();
    assert_eq!(hops, (Some(2), Some(0)));
    runtime.shutdown().unwrap();
    assert_eq!(counting.stopped.load(Ordering::SeqCst), 3);
    assert_eq!(
        block_on(shards.run_on(1, || async {})),
        Err(Error::ShuttingDown),
        "a stopped shard takes no call"
    );
}

#[test]
fn a_failed_start_stops_every_shard_and_says_why() {
    let counting = service(Some(1), None);
    let failure = Runtime::start(config(3), counting.clone()).err();
    assert_eq!(failure, Some(TestError::Refused(1)));
    assert_eq!(
        counting.stopped.load(Ordering::SeqCst),
        2,
        "the shards that started are stopped"
    );
}

#[test]
fn shutdown_returns_a_failed_stop() {
    fn shareable<T: Send + Sync>(_: &T) {}
    let runtime = Runtime::start(config(2), service(None, Some(1))).unwrap();
    shareable(&runtime);
    assert_eq!(runtime.shutdown(), Err(TestError::Refused(1)));
}
