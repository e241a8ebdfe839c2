//! A task whose handle is dropped before it completes (glommio cancels it) is freed.
//!
//! glommio-ng 0.12.0's `JoinHandle::cancel` (and the last-reference path of
//! `JoinHandle::drop`) counted a reference for the run that drops the cancelled future, and
//! then called `schedule`, which counts that same reference again: the run gave one back and
//! the task stayed allocated for good. In coremq a long-polling fetch spawned a waiting task
//! per partition and dropped the ones another partition beat: 66,928 tasks (23.9 MB) were
//! still allocated on one shard a minute after a load. The patched copy in
//! `third_party/glommio-ng` counts it once.
//!
//! The test counts the bytes allocated by the process: after a first round (which leaves
//! the timer wheel's grown capacity behind), a round of 10,000 tasks that wait (on nothing,
//! or on a timer) and are cancelled must give back what it took.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use glommio::LocalExecutorBuilder;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TASKS: usize = 10_000;

/// Spawns `TASKS` tasks that wait (on a timer or on nothing), lets them all start waiting,
/// drops their handles and lets the executor run the cancellations: the bytes the round
/// took, and the bytes still held after it.
async fn round(on_timer: bool) -> (isize, isize) {
    let before = LIVE.load(Ordering::Relaxed);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            glommio::spawn_local(async move {
                if on_timer {
                    glommio::timer::sleep(Duration::from_secs(600)).await;
                } else {
                    futures_lite::future::pending::<()>().await;
                }
            })
        })
        .collect();
    glommio::timer::sleep(Duration::from_millis(20)).await;
    let taken = LIVE.load(Ordering::Relaxed) - before;
    drop(tasks);
    glommio::timer::sleep(Duration::from_millis(50)).await;
    (taken, LIVE.load(Ordering::Relaxed) - before)
}

#[test]
fn cancelled_tasks_are_freed() {
    let executor = LocalExecutorBuilder::default()
        .spawn(|| async {
            // The first rounds grow the timer wheel and the run queue, which keep their
            // capacity.
            round(true).await;
            round(false).await;
            for on_timer in [true, false] {
                let (taken, held) = round(on_timer).await;
                assert!(
                    taken > (TASKS * 64) as isize,
                    "the tasks took {taken} bytes"
                );
                assert!(
                    held < taken / 100,
                    "{held} of the {taken} bytes taken by {TASKS} cancelled tasks \
                     (waiting on a timer: {on_timer}) are still held"
                );
            }
        })
        .unwrap();
    executor.join().unwrap();
}
