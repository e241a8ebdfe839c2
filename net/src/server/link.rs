//! What a protocol holds of its connection besides answering requests: frames of its own to
//! send (MQTT's deliveries), a way to close the connection (a protocol violation, a session
//! taken over), and its idle limit (MQTT's keep alive).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coremq_engine::notify::Notify;
use coremq_runtime::sync::local_channel::{self, LocalReceiver, LocalSender};

use super::CloseReason;

/// One connection's link, shared by the server's loop and the protocol's handlers.
#[derive(Clone)]
pub struct Link {
    inner: Rc<Inner>,
}

struct Inner {
    pushes: LocalSender<Vec<Bytes>>,
    /// Bytes pushed and not written yet.
    pushed_bytes: Cell<usize>,
    closing: RefCell<Option<(CloseReason, String)>>,
    /// Disconnected when the protocol closes the connection.
    close: RefCell<Option<flume::Sender<()>>>,
    idle: Cell<Option<Duration>>,
    /// Notified when `idle` changes (waited on by every read of a frame's first byte, so a
    /// wait costs no allocation).
    idle_changes: Notify,
}

/// The server's ends of a link.
pub(super) struct Ends {
    pub pushes: LocalReceiver<Vec<Bytes>>,
    pub closed: flume::Receiver<()>,
}

impl Link {
    pub(super) fn new() -> (Link, Ends) {
        let (sender, pushes) = local_channel::new_unbounded();
        let (close, closed) = flume::bounded(1);
        let link = Link {
            inner: Rc::new(Inner {
                pushes: sender,
                pushed_bytes: Cell::new(0),
                closing: RefCell::new(None),
                close: RefCell::new(Some(close)),
                idle: Cell::new(None),
                idle_changes: Notify::default(),
            }),
        };
        (link, Ends { pushes, closed })
    }

    /// Sends a frame of the protocol's own, between responses (never inside one). The
    /// protocol bounds what it pushes by [`Link::pushed_bytes`].
    pub fn push(&self, chunks: Vec<Bytes>) {
        if self.is_closing() {
            return;
        }
        let bytes: usize = chunks.iter().map(Bytes::len).sum();
        if self.inner.pushes.try_send(chunks).is_ok() {
            self.inner
                .pushed_bytes
                .set(self.inner.pushed_bytes.get() + bytes);
        }
    }

    /// Bytes pushed and not yet written to the socket.
    pub fn pushed_bytes(&self) -> usize {
        self.inner.pushed_bytes.get()
    }

    pub(super) fn written(&self, bytes: usize) {
        let left = self.inner.pushed_bytes.get().saturating_sub(bytes);
        self.inner.pushed_bytes.set(left);
    }

    /// Closes the connection once what was answered and pushed before is written: no more
    /// requests are read. Counted and logged as the server's closes are, unless an earlier
    /// close (or [`Link::end`]) came first.
    pub fn close(&self, reason: CloseReason, detail: String) {
        if !self.is_closing() {
            *self.inner.closing.borrow_mut() = Some((reason, detail));
        }
        self.end();
    }

    /// Closes the connection as [`Link::close`] does, without counting it (the client asked).
    pub fn end(&self) {
        self.inner.close.borrow_mut().take();
    }

    pub fn is_closing(&self) -> bool {
        self.inner.close.borrow().is_none()
    }

    pub(super) fn closing(&self) -> Option<(CloseReason, String)> {
        self.inner.closing.borrow().clone()
    }

    /// Replaces the server's idle limit for this connection: with `Some`, it is closed when
    /// no frame arrives for that long, whether or not requests are in flight.
    pub fn set_idle(&self, idle: Option<Duration>) {
        self.inner.idle.set(idle);
        self.inner.idle_changes.notify_all();
    }

    /// Waits until the idle limit changes.
    pub(super) async fn idle_changed(&self) {
        self.inner.idle_changes.notified().await;
    }

    pub(super) fn idle(&self) -> Option<Duration> {
        self.inner.idle.get()
    }
}
