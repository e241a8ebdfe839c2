//! The server every protocol front end runs on: listeners on the shards, accept and handoff,
//! per-connection bounds, requests handled concurrently and answered in order, the close log,
//! the shutdown drain, and the HTTP admin listener. A protocol (Kafka today, MQTT next) gives
//! only its framing and its handling through [`Protocol`].
//!
//! Each shard runs one [`Server`] per protocol, kept in the runtime's per-shard slot so a
//! connection handed off from another shard finds it.

mod closes;
mod connection;
pub mod http;
mod link;
mod listener;
mod websocket;

use std::cell::RefCell;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coremq_engine::Handle;
use coremq_runtime::net::{TcpListener, TcpStream};
use coremq_runtime::sync::Semaphore;

use closes::CloseLog;
pub use closes::CloseReason;
use connection::ConnectionsByIp;
pub use link::Link;
pub use listener::ListenError;
pub(crate) use listener::{probe, verify};
pub use websocket::{WebSocket, replay as replay_websocket};

/// A protocol served over TCP: how its frames are delimited and what it does with them.
pub trait Protocol: 'static {
    /// One decoded request.
    type Request: 'static;

    /// What the protocol keeps of one connection between its frames (`()` where each request
    /// stands alone).
    type Connection: 'static;

    /// Who connects, for logs and errors ("Kafka clients").
    const CLIENTS: &'static str;

    /// The size of a frame's body from the first bytes of the frame (its prefix), called
    /// with one byte and again with each byte asked for: [`FrameSize::Need`] more prefix
    /// bytes, or the [`FrameSize::Body`] that follows the prefix. An error closes the
    /// connection.
    fn frame_size(prefix: &[u8]) -> Result<FrameSize, String>;

    /// A connection from `peer` opens; `link` lets the protocol send frames of its own and
    /// close it.
    fn open(&self, peer: Option<SocketAddr>, link: Link) -> Rc<Self::Connection>;

    /// Decodes one frame (`prefix` and `body`) of `connection`, in the order frames arrive;
    /// an error closes the connection.
    fn decode(
        &self,
        connection: &Rc<Self::Connection>,
        prefix: &[u8],
        body: Bytes,
    ) -> Result<Incoming<Self::Request>, String>;

    /// Handles `request` from `peer`: the response frame's chunks, or `None` for no answer.
    /// Requests of a connection are handled concurrently; their answers are written in the
    /// order the requests came.
    fn respond(
        self: Rc<Self>,
        connection: Rc<Self::Connection>,
        request: Self::Request,
        peer: Option<SocketAddr>,
    ) -> impl Future<Output = Option<Vec<Bytes>>> + 'static;

    /// A frame over the size limit arrived: what to write before the connection closes.
    fn too_large(&self, connection: &Rc<Self::Connection>) -> Option<Vec<Bytes>>;

    /// The connection stopped reading (the client left, or the server closed it); answers
    /// and pushes still queued are being written.
    fn closed(&self, connection: &Rc<Self::Connection>);
}

/// What the prefix read so far says about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSize {
    /// This many more bytes of prefix are needed.
    Need(usize),
    /// The body after the prefix is this many bytes.
    Body(usize),
}

/// A decoded frame: a request to handle, or an answer already made.
pub enum Incoming<R> {
    Request(R),
    Answered(Vec<Bytes>),
}

/// How connections reach the shards (measured in `benches/accept.rs`; see docs/design.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptMode {
    /// Every shard listens on the port with SO_REUSEPORT and serves what it accepts; the
    /// kernel spreads connections by a hash of their addresses.
    ReusePort,
    /// Shard 0 accepts every connection and hands it to the shard serving the fewest.
    Handoff,
}

impl std::fmt::Display for AcceptMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AcceptMode::ReusePort => "reuseport",
            AcceptMode::Handoff => "handoff",
        })
    }
}

impl std::str::FromStr for AcceptMode {
    type Err = String;

    fn from_str(text: &str) -> Result<AcceptMode, String> {
        match text {
            "reuseport" => Ok(AcceptMode::ReusePort),
            "handoff" => Ok(AcceptMode::Handoff),
            _ => Err(format!(
                "{text:?} is not an accept mode (reuseport, handoff)"
            )),
        }
    }
}

/// The bounds a server keeps, on each connection and on all of them.
#[derive(Debug, Clone)]
pub struct Limits {
    pub accept: AcceptMode,
    /// Largest frame body; a bigger one closes the connection.
    pub frame_bytes_max: usize,
    /// Frame bytes buffered on a shard, all connections together, until handled.
    pub shard_frame_bytes_max: usize,
    /// Requests read ahead of their responses on one connection.
    pub requests_in_flight_max: usize,
    /// A connection with no request arriving and none in flight this long is closed.
    pub idle: Duration,
    /// A frame must arrive whole this long after its first byte.
    pub read_timeout: Duration,
    /// Open connections, all shards together.
    pub connections_max: usize,
    /// Open connections from one IP address, all shards together.
    pub connections_per_ip_max: usize,
    /// TCP keepalive on accepted connections; `None`: the system's setting (off).
    pub keepalive: Option<Keepalive>,
    /// Connections speak the protocol inside WebSocket binary messages after an HTTP
    /// upgrade (`websocket.rs`), not on the socket itself.
    pub websocket: Option<WebSocket>,
}

/// TCP keepalive: probes after `idle` without traffic, every `interval`, the connection
/// dropped after `count` unanswered (the system's interval and count where `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Option<Duration>,
    pub count: Option<u32>,
}

impl Keepalive {
    fn apply(&self, stream: &TcpStream) -> std::io::Result<()> {
        let mut keepalive = socket2::TcpKeepalive::new().with_time(self.idle);
        if let Some(interval) = self.interval {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(count) = self.count {
            keepalive = keepalive.with_retries(count);
        }
        socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
    }
}

/// What the servers of one protocol on every shard share.
#[derive(Clone)]
pub struct Shared {
    limits: Arc<Limits>,
    /// Open connections by shard: each shard counts its own; the handoff acceptor reads them
    /// all to pick the least loaded.
    connections: Arc<[AtomicUsize]>,
    ips: ConnectionsByIp,
    handle: Handle,
}

impl Shared {
    /// For a server on each of `handle`'s shards.
    pub fn new(limits: Limits, handle: Handle) -> Shared {
        let connections = (0..handle.shard_count())
            .map(|_| AtomicUsize::new(0))
            .collect();
        Shared {
            limits: Arc::new(limits),
            connections,
            ips: ConnectionsByIp::default(),
            handle,
        }
    }
}

/// One protocol's server on one shard.
pub struct Server<P: Protocol> {
    protocol: Rc<P>,
    shared: Shared,
    shard: usize,
    /// Frame bytes buffered on this shard.
    frame_bytes: Rc<Semaphore>,
    closes: CloseLog,
    /// Disconnects when the server stops: the listener and connections end.
    stop: RefCell<Option<flume::Sender<()>>>,
    stopped: flume::Receiver<()>,
}

impl<P: Protocol> Server<P> {
    /// Starts serving `protocol` on this shard (shard `shard`): accepting on the listener
    /// [`bind`] made here, if it made one, else only connections handed off from the
    /// accepting shard.
    pub fn start(protocol: Rc<P>, shared: Shared, shard: usize) -> Rc<Server<P>> {
        let listener = coremq_runtime::remove::<Bound<P>>()
            .and_then(|bound| bound.listener.borrow_mut().take());
        let (stop, stopped) = flume::bounded(1);
        let server = Rc::new(Server {
            protocol,
            frame_bytes: Rc::new(Semaphore::new(shared.limits.shard_frame_bytes_max as u64)),
            shared,
            shard,
            closes: CloseLog::new(),
            stop: RefCell::new(Some(stop)),
            stopped,
        });
        coremq_runtime::install(server.clone());
        coremq_runtime::spawn_local(closes::window_loop(server.clone())).detach();
        if let Some(listener) = listener {
            coremq_runtime::spawn_local(connection::accept_loop(server.clone(), listener)).detach();
        }
        server
    }

    /// This shard's server of protocol `P`, if it started.
    pub fn current() -> Option<Rc<Server<P>>> {
        coremq_runtime::local::<Server<P>>()
    }

    /// Open connections served on this shard.
    pub fn open_connections(&self) -> usize {
        self.shared.connections[self.shard].load(Ordering::Relaxed)
    }

    /// Connections this shard closed since start, by reason.
    pub fn closes(&self) -> Vec<(&'static str, u64)> {
        self.closes.counts()
    }

    /// Stops accepting and reading new requests, then waits until this shard's connections
    /// have written the responses of the requests they read and closed, or `deadline`.
    pub async fn drain(&self, deadline: Instant) {
        self.stop.borrow_mut().take();
        while self.open_connections() > 0 && Instant::now() < deadline {
            coremq_runtime::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sleeps for `period`, or less if the server stops meanwhile; whether it is stopping.
    async fn sleep_unless_stopping(&self, period: Duration) -> bool {
        sleep_unless(&self.stopped, period).await
    }
}

/// A listener bound on this shard for protocol `P`, waiting for its server to start.
struct Bound<P> {
    listener: RefCell<Option<TcpListener>>,
    protocol: PhantomData<P>,
}

/// Binds the listeners of protocol `P` on `address`: on every shard with
/// [`AcceptMode::ReusePort`], on shard 0 alone with [`AcceptMode::Handoff`]. Shard 0 binds
/// first and the others bind the address it got, so a port of 0 means one port for all.
/// Fails if another process listens there already (`listener.rs`). The address bound; each
/// shard's [`Server::start`] then accepts on its listener.
pub fn bind<P: Protocol>(shared: &Shared, address: SocketAddr) -> Result<SocketAddr, ListenError> {
    probe(address, P::CLIENTS)?;
    let mut address = address;
    for shard in 0..shared.handle.shard_count() {
        if shard > 0 && shared.limits.accept == AcceptMode::Handoff {
            break;
        }
        let bound =
            futures_lite::future::block_on(shared.handle.on_shard(shard, move |_| async move {
                let cannot_listen = |reason: String| ListenError {
                    what: P::CLIENTS.into(),
                    address,
                    reason,
                };
                let listener = match TcpListener::bind(address) {
                    Ok(listener) => listener,
                    Err(error) => return Ok(Err(cannot_listen(error.to_string()))),
                };
                let bound = match listener.local_addr() {
                    Ok(bound) => bound,
                    Err(error) => {
                        let reason = format!("reading the bound address: {error}");
                        return Ok(Err(cannot_listen(reason)));
                    }
                };
                coremq_runtime::install(Rc::new(Bound::<P> {
                    listener: RefCell::new(Some(listener)),
                    protocol: PhantomData,
                }));
                Ok(Ok(bound))
            }));
        address = bound.unwrap_or_else(|error| {
            Err(ListenError {
                what: P::CLIENTS.into(),
                address,
                reason: error.to_string(),
            })
        })?;
    }
    Ok(address)
}

/// Checks, once every shard's server started, that no other process listens on `address`
/// beside this one's listeners (`listener.rs`).
pub fn check_listeners<P: Protocol>(
    shared: &Shared,
    address: SocketAddr,
) -> Result<(), ListenError> {
    let listeners = match shared.limits.accept {
        AcceptMode::ReusePort => shared.handle.shard_count(),
        AcceptMode::Handoff => 1,
    };
    verify(address, listeners, P::CLIENTS)
}

/// Sleeps for `period`, or less if `stopped` disconnects meanwhile; whether it did.
pub(crate) async fn sleep_unless(stopped: &flume::Receiver<()>, period: Duration) -> bool {
    futures_lite::future::or(
        async {
            coremq_runtime::sleep(period).await;
            false
        },
        async {
            let _ = stopped.recv_async().await;
            true
        },
    )
    .await
}

/// Feeds `bytes` to a new connection of `protocol` as if they came from a socket, frame after
/// frame, each handled (for at most `patience`) before the next, until the bytes run out or
/// the protocol closes the connection; what the connection would have written, answers and
/// pushed frames, in order. For fuzzing a protocol's handling of a whole conversation
/// without sockets.
pub async fn converse<P: Protocol>(
    protocol: Rc<P>,
    mut bytes: &[u8],
    patience: Duration,
) -> Vec<Bytes> {
    let (link, ends) = Link::new();
    let connection = protocol.open(None, link.clone());
    let mut written = Vec::new();
    let pushes = &ends.pushes;
    // What was pushed so far, without waiting for more.
    let drain = async |written: &mut Vec<Bytes>| {
        while let Some(Some(chunks)) = futures_lite::future::poll_once(pushes.recv()).await {
            written.extend(chunks);
        }
    };
    while !link.is_closing() && !bytes.is_empty() {
        let mut prefix_len = 1;
        let size = loop {
            match P::frame_size(&bytes[..prefix_len]) {
                Ok(FrameSize::Body(size)) => break Some(size),
                Ok(FrameSize::Need(more)) if prefix_len + more <= bytes.len().min(8) => {
                    prefix_len += more
                }
                _ => break None,
            }
        };
        let Some(size) = size.filter(|&size| bytes.len() - prefix_len >= size) else {
            break;
        };
        let prefix = &bytes[..prefix_len];
        let body = Bytes::copy_from_slice(&bytes[prefix_len..prefix_len + size]);
        bytes = &bytes[prefix_len + size..];
        match protocol.decode(&connection, prefix, body) {
            Ok(Incoming::Request(request)) => {
                let respond = protocol.clone().respond(connection.clone(), request, None);
                let answer = futures_lite::future::or(respond, async {
                    coremq_runtime::sleep(patience).await;
                    None
                })
                .await;
                drain(&mut written).await;
                written.extend(answer.into_iter().flatten());
            }
            Ok(Incoming::Answered(answer)) => {
                drain(&mut written).await;
                written.extend(answer);
            }
            Err(_) => break,
        }
    }
    link.end();
    protocol.closed(&connection);
    drain(&mut written).await;
    written
}
