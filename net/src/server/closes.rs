//! Connections the server closes: counted by reason for `/metrics`, and logged without
//! flooding the log under attack. Each shard logs at most [`LINES_PER_WINDOW`] lines per
//! [`WINDOW`]; the closes past that are summed up, by reason, in one line when the window
//! ends.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{Protocol, Server};

/// How often a shard sums up the close lines it held back.
pub(crate) const WINDOW: Duration = Duration::from_secs(5);
/// Close lines a shard logs per window before it only counts them.
pub(crate) const LINES_PER_WINDOW: u32 = 10;

/// Why the broker closed a connection (the `reason` label of
/// `coremq_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No request arrived and none was in flight for `connections_max_idle_ms`.
    Idle,
    /// A request did not arrive whole within `request_read_timeout_ms` of its first byte.
    SlowRequest,
    /// Over `max_connections`.
    TooManyConnections,
    /// Over `max_connections_per_ip`.
    TooManyConnectionsPerIp,
    /// A frame that is not a request this broker serves, or of an impossible size.
    BadRequest,
    /// A frame over the largest size the listener accepts.
    TooLarge,
    /// Reading from the socket failed.
    ReadError,
    /// A packet the protocol forbids where it came (MQTT: a second CONNECT, a PUBLISH
    /// before CONNECT, a wildcard in a topic name).
    ProtocolError,
    /// No packet arrived within one and a half keep-alive periods (MQTT-3.1.2-24).
    KeepAlive,
    /// Another connection took the session over with the same client identifier.
    SessionTakenOver,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::SlowRequest => "slow_request",
            CloseReason::TooManyConnections => "max_connections",
            CloseReason::TooManyConnectionsPerIp => "max_connections_per_ip",
            CloseReason::BadRequest => "bad_request",
            CloseReason::TooLarge => "too_large",
            CloseReason::ReadError => "read_error",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::KeepAlive => "keep_alive",
            CloseReason::SessionTakenOver => "session_taken_over",
        }
    }
}

/// One shard's closes: the counts since start and the current log window.
pub(crate) struct CloseLog {
    counts: RefCell<BTreeMap<&'static str, u64>>,
    window_start: Cell<Instant>,
    logged: Cell<u32>,
    held_back: RefCell<BTreeMap<&'static str, u64>>,
}

impl CloseLog {
    pub(crate) fn new() -> CloseLog {
        CloseLog {
            counts: RefCell::default(),
            window_start: Cell::new(Instant::now()),
            logged: Cell::new(0),
            held_back: RefCell::default(),
        }
    }

    /// Counts a close, and logs it unless this window's lines are used up.
    pub(crate) fn note(&self, peer: Option<SocketAddr>, reason: CloseReason, detail: &str) {
        *self.counts.borrow_mut().entry(reason.label()).or_default() += 1;
        if self.window_start.get().elapsed() >= WINDOW {
            self.end_window();
        }
        if self.logged.get() < LINES_PER_WINDOW {
            self.logged.set(self.logged.get() + 1);
            match peer {
                Some(peer) => log::warn!("closing connection from {peer}: {detail}"),
                None => log::warn!("closing connection: {detail}"),
            }
        } else {
            *self
                .held_back
                .borrow_mut()
                .entry(reason.label())
                .or_default() += 1;
        }
    }

    /// Logs the held-back closes of the window that ended, in one line, and starts another.
    pub(crate) fn end_window(&self) {
        let held_back = std::mem::take(&mut *self.held_back.borrow_mut());
        if !held_back.is_empty() {
            let total: u64 = held_back.values().sum();
            let mut by_reason = String::new();
            for (reason, count) in &held_back {
                let _ = write!(by_reason, " {reason}={count}");
            }
            log::warn!(
                "closed {total} more connections in the last {} s without a line each:{by_reason}",
                self.window_start.get().elapsed().as_secs()
            );
        }
        self.window_start.set(Instant::now());
        self.logged.set(0);
    }

    /// Closes since start, by reason.
    pub(crate) fn counts(&self) -> Vec<(&'static str, u64)> {
        self.counts
            .borrow()
            .iter()
            .map(|(reason, count)| (*reason, *count))
            .collect()
    }
}

/// Ends each window of this shard's close log on time, so the summary of a burst is logged
/// even when no close follows it; stops with the server.
pub(super) async fn window_loop<P: Protocol>(server: Rc<Server<P>>) {
    loop {
        let stopped = server.sleep_unless_stopping(WINDOW).await;
        server.closes.end_window();
        if stopped {
            return;
        }
    }
}
