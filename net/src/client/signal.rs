//! A wake-up for tasks of one executor: `wait()` completes once `notify()` is called after
//! it was created. The producer uses it for deliveries, buffer space and its sender task.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub(crate) struct Signal {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Signal {
    /// Wakes every task waiting now.
    pub(crate) fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Wakes the task of `context` at the next `notify()`.
    pub(crate) fn park(&self, context: &Context<'_>) {
        let mut wakers = self.wakers.borrow_mut();
        if !wakers.iter().any(|waker| waker.will_wake(context.waker())) {
            wakers.push(context.waker().clone());
        }
    }

    /// Completes at the next `notify()`.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            generation: self.generation.get(),
        }
    }
}

pub(crate) struct Wait<'a> {
    signal: &'a Signal,
    generation: u64,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.signal.generation.get() != self.generation {
            return Poll::Ready(());
        }
        self.signal.park(context);
        Poll::Pending
    }
}
