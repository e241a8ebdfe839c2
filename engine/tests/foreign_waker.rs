//! A task's waker dropped on another thread while its executor drops the task's handle.
//!
//! glommio-ng 0.12.0's `drop_waker`, on a thread that is not the task's executor, took the
//! reference count to zero and then cloned the waker to send it home ("resurrect" the task
//! so its executor destroys it). Between the two, the executor could see the count at zero
//! in `JoinHandle::drop` and free the task; the foreign thread then incremented and queued
//! freed memory, which the executor later woke and freed again. In coremq this was the glibc
//! "double free or corruption" abort of a shard under `coremq-perf e2e`: cross-shard calls
//! and their replies wake tasks of one shard from another (docs/design.md, "glommio-ng's
//! foreign waker race"). The patched copy in `third_party/glommio-ng` never lets a foreign
//! thread take the count to zero: the last reference is handed to the executor instead.
//!
//! Each round spawns a task that sends its waker to a second thread and completes, so the
//! only reference left is that waker; then both threads let go at about the same moment, the
//! executor by dropping the handle and the other thread by dropping the waker, with a delay
//! that varies from round to round to sweep one across the other. Under AddressSanitizer the
//! published crate fails this test in every run (3 of 3 on the 2-core VM: heap-use-after-free
//! in `drop_waker`'s clone, the task freed by `JoinHandle::drop`). Without a sanitizer the
//! damage stays silent here, so the test command also runs this test under AddressSanitizer.

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::LocalExecutorBuilder;

const ROUNDS: u64 = 200_000;

#[test]
fn dropping_a_waker_on_another_thread_races_no_handle_drop() {
    let (waker_tx, waker_rx) = std::sync::mpsc::sync_channel::<Waker>(1);
    // Round `n` goes from 2n (the waker is on its way) to 2n + 1 (both sides let go).
    let round = Arc::new(AtomicU64::new(0));
    let dropped_all = Arc::new(AtomicBool::new(false));

    let dropper = {
        let round = round.clone();
        let dropped_all = dropped_all.clone();
        std::thread::spawn(move || {
            for n in 0..ROUNDS {
                let waker = waker_rx
                    .recv()
                    .expect("the executor sends a waker each round");
                while round.load(Ordering::Acquire) < 2 * n + 1 {
                    std::hint::spin_loop();
                }
                drop(waker);
            }
            dropped_all.store(true, Ordering::Release);
        })
    };

    let executor = LocalExecutorBuilder::default()
        .name("foreign-waker")
        .spawn(move || async move {
            for n in 0..ROUNDS {
                let waker_tx = waker_tx.clone();
                let ran = Rc::new(Cell::new(false));
                let handle = glommio::spawn_local(poll_fn({
                    let ran = ran.clone();
                    move |cx| {
                        waker_tx
                            .send(cx.waker().clone())
                            .expect("the dropper thread receives each round");
                        ran.set(true);
                        Poll::Ready(n)
                    }
                }))
                .detach();
                // Let the task run to completion (it was queued first, so it runs before
                // this one resumes); its own reference goes with it.
                while !ran.get() {
                    futures_lite::future::yield_now().await;
                }
                futures_lite::future::yield_now().await;
                round.store(2 * n + 1, Ordering::Release);
                // The dropper needs a moment to see the store; a delay that varies from
                // round to round sweeps the handle's drop across the dropper's.
                for _ in 0..n % 512 {
                    std::hint::spin_loop();
                }
                drop(handle);
                round.store(2 * n + 2, Ordering::Release);
            }
            // The last references sent home are freed here once the executor takes them
            // in, so LeakSanitizer also checks that no task is lost on the way.
            while !dropped_all.load(Ordering::Acquire) {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            glommio::timer::sleep(Duration::from_millis(50)).await;
            ROUNDS
        })
        .expect("the executor starts");
    assert_eq!(
        executor.join().expect("the executor thread finishes"),
        ROUNDS
    );
    dropper.join().expect("the dropper thread finishes");
}
