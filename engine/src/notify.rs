//! A single-threaded notifier: tasks wait for the next `notify_all`. Used for the write and
//! flush watermarks, and by the Kafka client (deliveries, buffer space, its sender task); a
//! waiter re-checks its condition after every wake-up.
//!
//! A [`Notified`] dropped before the notification (a long-polling fetch that another
//! partition answered first) takes its waker out again: otherwise a notifier that is never
//! notified (an idle partition) would keep one waker, and the task memory it holds, for
//! every wait given up on it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// The key of [`Notify::park`]'s wakers, which stay until the next `notify_all`.
const PARKED: u64 = 0;

#[derive(Debug, Default)]
pub struct Notify {
    epoch: Cell<u64>,
    /// The last key given to a [`Notified`]; keys start at 1.
    last_key: Cell<u64>,
    wakers: RefCell<Vec<(u64, Waker)>>,
}

impl Notify {
    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get() + 1);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// Wakes the task of `context` at the next `notify_all` (for hand-written futures).
    pub fn park(&self, context: &Context<'_>) {
        let mut wakers = self.wakers.borrow_mut();
        if !wakers
            .iter()
            .any(|(key, waker)| *key == PARKED && waker.will_wake(context.waker()))
        {
            wakers.push((PARKED, context.waker().clone()));
        }
    }

    /// Completes at the first `notify_all` after this call.
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            epoch: self.epoch.get(),
            key: None,
        }
    }

    /// Wakers waiting for the next `notify_all`.
    pub fn waiting(&self) -> usize {
        self.wakers.borrow().len()
    }
}

pub struct Notified<'a> {
    notify: &'a Notify,
    epoch: u64,
    /// The key of this future's waker in the notifier, once it waits.
    key: Option<u64>,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.epoch {
            self.key = None;
            return Poll::Ready(());
        }
        let notify = self.notify;
        let mut wakers = notify.wakers.borrow_mut();
        let waiting = self
            .key
            .and_then(|key| wakers.iter_mut().find(|(other, _)| *other == key));
        match waiting {
            Some((_, waker)) => {
                if !waker.will_wake(context.waker()) {
                    *waker = context.waker().clone();
                }
            }
            None => {
                let key = notify.last_key.get() + 1;
                notify.last_key.set(key);
                wakers.push((key, context.waker().clone()));
                drop(wakers);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key
            && self.notify.epoch.get() == self.epoch
        {
            self.notify
                .wakers
                .borrow_mut()
                .retain(|(other, _)| *other != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::Waker;

    use super::*;

    fn poll(future: Pin<&mut Notified<'_>>) -> Poll<()> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_dropped_wait_takes_its_waker_out() {
        let notify = Notify::default();
        for _ in 0..1000 {
            let mut waiting = pin!(notify.notified());
            assert_eq!(poll(waiting.as_mut()), Poll::Pending);
            assert_eq!(poll(waiting.as_mut()), Poll::Pending);
        }
        assert_eq!(notify.waiting(), 0, "wakers of dropped waits stayed");
    }

    #[test]
    fn waits_complete_at_the_next_notification_only() {
        let notify = Notify::default();
        let mut first = pin!(notify.notified());
        let mut second = pin!(notify.notified());
        assert_eq!(poll(first.as_mut()), Poll::Pending);
        assert_eq!(poll(second.as_mut()), Poll::Pending);
        assert_eq!(notify.waiting(), 2);
        notify.notify_all();
        assert_eq!(notify.waiting(), 0);
        assert_eq!(poll(first.as_mut()), Poll::Ready(()));
        assert_eq!(poll(second.as_mut()), Poll::Ready(()));
        let mut later = pin!(notify.notified());
        assert_eq!(poll(later.as_mut()), Poll::Pending);
        notify.park(&Context::from_waker(Waker::noop()));
        assert_eq!(notify.waiting(), 2);
        notify.notify_all();
        assert_eq!(poll(later.as_mut()), Poll::Ready(()));
    }
}
