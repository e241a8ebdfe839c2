//! One client connection: frames read in order, each request handled in its own task unless
//! its handler finishes at once (so a long-polling fetch does not hold up the requests behind
//! it), responses written in the order the requests came, as the protocol requires.
//!
//! Bounds ([`Limits`]): at most `requests_in_flight_max` requests read ahead of their
//! responses (then the connection stops reading), frame bytes counted against the shard's
//! `shard_frame_bytes_max` until handled, frames over `frame_bytes_max` refused. A frame the
//! protocol cannot decode closes this connection only, with one log line.
//!
//! Limits on connections (closed with a line in the shard's close log, `closes.rs`): one
//! with no request arriving and none in flight for `idle`; one whose request has not arrived
//! whole `read_timeout` after its first byte; one past `connections_max` (all shards) or
//! `connections_per_ip_max`, as it arrives. (The broker's settings name them:
//! `connections_max_idle_ms`, `request_read_timeout_ms`, `max_connections`, ...)

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use coremq_engine::notify::Notify;
use coremq_runtime::net::{AcceptedTcpStream, TcpListener, TcpStream};
use coremq_runtime::sync::local_channel;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use super::link::Ends;
use super::{
    AcceptMode, CloseReason, FrameSize, Incoming, Limits, Link, Protocol, Server, websocket,
};

/// Open connections by client IP address, all shards together (touched on open and close).
pub(super) type ConnectionsByIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A connection's place in the per-IP count, given back when it closes.
struct IpSlot {
    ips: ConnectionsByIp,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut ips = self
            .ips
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = ips.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                ips.remove(&self.ip);
            }
        }
    }
}

/// Lets a new connection in, already counted on its shard, or says why not.
fn admit<P: Protocol>(
    server: &Server<P>,
    peer: Option<SocketAddr>,
) -> Result<Option<IpSlot>, Closing> {
    let open: usize = server
        .shared
        .connections
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .sum();
    let max = server.shared.limits.connections_max;
    if open > max {
        return Err((
            CloseReason::TooManyConnections,
            format!("{open} connections are open, over max_connections {max}"),
        ));
    }
    let Some(peer) = peer else {
        return Ok(None);
    };
    let ip = peer.ip();
    let mut ips = server
        .shared
        .ips
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let count = ips.entry(ip).or_default();
    let max = server.shared.limits.connections_per_ip_max;
    if *count >= max {
        return Err((
            CloseReason::TooManyConnectionsPerIp,
            format!("{count} connections from {ip} are open, max_connections_per_ip is {max}"),
        ));
    }
    *count += 1;
    Ok(Some(IpSlot {
        ips: server.shared.ips.clone(),
        ip,
    }))
}

/// Chunks of one response frame; `None` for a request answered with nothing (acks=0).
type Response = Option<Vec<Bytes>>;

/// Requests read whose responses are not written yet (a connection waiting on one, a long
/// poll or a join, is not idle), and a notifier of each one written.
#[derive(Default)]
struct InFlight {
    count: Cell<usize>,
    written: Notify,
}

impl InFlight {
    fn add(&self) {
        self.count.set(self.count.get() + 1);
    }

    fn answered(&self) {
        self.count.set(self.count.get() - 1);
        self.written.notify_all();
    }
}

/// A request's response as the writer gets it: made already (its handler finished when first
/// polled, as a QoS 0 PUBLISH's or most metadata requests' do), or the task making it.
enum Answer {
    Ready(Response),
    Later(coremq_runtime::Task<Response>),
}

/// Accepts connections until the server stops: each is served here, or, in
/// [`AcceptMode::Handoff`], on the shard with the fewest open connections.
pub(super) async fn accept_loop<P: Protocol>(server: Rc<Server<P>>, listener: TcpListener) {
    let stop = server.stopped.clone();
    loop {
        let accepted =
            futures_lite::future::or(async { Some(listener.shared_accept().await) }, async {
                let _ = stop.recv_async().await;
                None
            })
            .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                let shard = match server.shared.limits.accept {
                    AcceptMode::ReusePort => server.shard,
                    AcceptMode::Handoff => least_loaded(&server.shared.connections),
                };
                // Counted from here, so the next accept sees it even before it arrives.
                server.shared.connections[shard].fetch_add(1, Ordering::Relaxed);
                if shard == server.shard {
                    spawn_connection(server.clone(), stream);
                } else {
                    hand_off(&server, shard, stream);
                }
            }
            Some(Err(error)) => {
                log::warn!("accept failed: {error}");
                coremq_runtime::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// The shard with the fewest open connections (the first of equals).
fn least_loaded(connections: &[AtomicUsize]) -> usize {
    (0..connections.len())
        .min_by_key(|&shard| connections[shard].load(Ordering::Relaxed))
        .expect("at least one shard")
}

/// Serves an accepted connection, already counted on this shard, in a task of its own.
fn spawn_connection<P: Protocol>(server: Rc<Server<P>>, stream: AcceptedTcpStream) {
    coremq_runtime::spawn_local(async move {
        serve(&server, stream.bind_to_executor()).await;
        server.shared.connections[server.shard].fetch_sub(1, Ordering::Relaxed);
    })
    .detach();
}

/// Sends an accepted connection, counted on `shard`, to that shard to be served there. If
/// that shard is stopping, the connection is dropped, which closes it.
fn hand_off<P: Protocol>(server: &Server<P>, shard: usize, stream: AcceptedTcpStream) {
    let handle = server.shared.handle.clone();
    let connections = server.shared.connections.clone();
    coremq_runtime::spawn_local(async move {
        let served = handle
            .on_shard(shard, move |_| async move {
                let server = Server::<P>::current().ok_or(coremq_engine::Error::ShuttingDown)?;
                spawn_connection(server, stream);
                Ok(())
            })
            .await;
        if served.is_err() {
            connections[shard].fetch_sub(1, Ordering::Relaxed);
        }
    })
    .detach();
}

async fn serve<P: Protocol>(server: &Rc<Server<P>>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    if let Some(Err(error)) = (server.shared.limits.keepalive).map(|k| k.apply(&stream)) {
        log::debug!("TCP keepalive not set: {error}");
    }
    let peer = stream.peer_addr().ok();
    let _ip_slot = match admit(server, peer) {
        Ok(slot) => slot,
        Err((reason, detail)) => {
            server.closes.note(peer, reason, &detail);
            return;
        }
    };
    let limits = &server.shared.limits;
    let (link, ends) = Link::new();
    let Some(websocket) = &limits.websocket else {
        return serve_stream(server, stream, peer, link, ends).await;
    };
    let mut stream = stream;
    // Boxed: the upgrade's state (its buffers, the timer racing it) would otherwise stay part
    // of every connection's future for as long as the connection lives.
    let accepted = within(
        limits.read_timeout,
        Box::pin(websocket::accept(&mut stream, websocket)),
    )
    .await;
    match accepted {
        Some(Ok(leftover)) => {
            let stream = websocket::Stream::new(stream, leftover, Some(link.clone()));
            serve_stream(server, stream, peer, link, ends).await;
        }
        Some(Err(reason)) => server.closes.note(peer, CloseReason::BadRequest, &reason),
        None => server.closes.note(
            peer,
            CloseReason::SlowRequest,
            &format!(
                "the WebSocket upgrade did not arrive within {} ms (request_read_timeout_ms)",
                limits.read_timeout.as_millis()
            ),
        ),
    }
}

/// Serves a connection (its bytes, or a WebSocket's payloads) admitted from `peer`.
async fn serve_stream<P: Protocol>(
    server: &Rc<Server<P>>,
    stream: impl futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
    peer: Option<SocketAddr>,
    link: Link,
    ends: Ends,
) {
    let limits = &server.shared.limits;
    let connection = server.protocol.open(peer, link.clone());
    let (mut reader, writer) = futures_lite::io::split(stream);
    // Unbounded, so an idle connection holds no queue; `in_flight` bounds it instead.
    let (queue, responses) = local_channel::new_unbounded::<Answer>();
    let in_flight = Rc::new(InFlight::default());
    let writer = coremq_runtime::spawn_local(write_responses(
        writer,
        responses,
        ends.pushes,
        link.clone(),
        in_flight.clone(),
    ));
    // The idle limit is watched by a task of its own (one timer, armed again only when it
    // fires early), not by a timer per frame: making and dropping one per frame cost about
    // 2% of a broker's CPU with 2,000 connections.
    let waiting = Rc::new(Cell::new(None));
    let watchdog = coremq_runtime::spawn_local(watch_idle(
        link.clone(),
        limits.idle,
        waiting.clone(),
        in_flight.clone(),
    ));
    let stop = server.stopped.clone();
    // Made once: each frame waits on the same future, so the server's stop channel keeps one
    // waiter per connection rather than gaining and losing one per frame (a flume receiver
    // dropped while waiting searches every waiter of its channel).
    let stopping = futures_lite::future::or(stop.recv_async(), ends.closed.recv_async());
    futures_lite::pin!(stopping);
    let mut ahead = ReadAhead::default();
    // Whether the server ends the connection while the client may still be sending.
    let mut linger = false;
    'frames: while !link.is_closing() {
        // At most `requests_in_flight_max` requests are read ahead of their responses.
        while in_flight.count.get() >= limits.requests_in_flight_max {
            let stopped = futures_lite::future::or(
                async {
                    in_flight.written.notified().await;
                    false
                },
                async {
                    stopping.as_mut().await.ok();
                    true
                },
            )
            .await;
            if stopped {
                break 'frames;
            }
        }
        let next = futures_lite::future::or(
            async { Some(read_frame(server, &mut reader, &mut ahead, &waiting).await) },
            async {
                stopping.as_mut().await.ok();
                None
            },
        )
        .await;
        let (frame, permit) = match next {
            None | Some(Ok(None)) => break,
            Some(Ok(Some(read))) => read,
            Some(Err((reason, detail))) => {
                server.closes.note(peer, reason, &detail);
                linger = true;
                if reason == CloseReason::TooLarge
                    && let Some(answer) = server.protocol.too_large(&connection)
                {
                    let _ = queue.send(Answer::Ready(Some(answer))).await;
                    in_flight.add();
                }
                break;
            }
        };
        in_flight.add();
        let request = match server
            .protocol
            .decode(&connection, &frame.prefix, frame.body)
        {
            Ok(Incoming::Request(request)) => request,
            Ok(Incoming::Answered(answer)) => {
                if queue.send(Answer::Ready(Some(answer))).await.is_err() {
                    break;
                }
                continue;
            }
            Err(error) => {
                server.closes.note(peer, CloseReason::BadRequest, &error);
                linger = true;
                break;
            }
        };
        let mut respond = Box::pin(server.protocol.clone().respond(
            connection.clone(),
            request,
            peer,
        ));
        // A handler that finishes at once needs no task of its own, and one with nothing to
        // answer (a QoS 0 PUBLISH) not even the writer.
        let answer = match futures_lite::future::poll_once(respond.as_mut()).await {
            Some(None) => {
                drop(permit);
                in_flight.answered();
                continue;
            }
            Some(response) => {
                drop(permit);
                Answer::Ready(response)
            }
            None => Answer::Later(coremq_runtime::spawn_local(async move {
                let response = respond.await;
                drop(permit);
                response
            })),
        };
        if queue.send(answer).await.is_err() {
            break;
        }
    }
    if let Some((reason, detail)) = link.closing() {
        server.closes.note(peer, reason, &detail);
        linger = true;
    }
    link.end();
    server.protocol.closed(&connection);
    drop(watchdog);
    drop(queue);
    let _ = writer.await;
    if linger {
        // Closing a socket with unread bytes in it resets the connection, and the client may
        // lose the last answer (MQTT's DISCONNECT with its reason). What it still sends is
        // read and dropped until it closes, for a moment at most.
        let drain = async {
            // On the heap: an array here would make every connection's future this large.
            let mut discard = vec![0u8; 16 << 10];
            while let Ok(1..) = reader.read(&mut discard).await {}
        };
        within(LINGER, drain).await;
    }
}

/// How long a connection the server ends is drained before its socket closes.
const LINGER: Duration = Duration::from_secs(1);

/// Why a connection is being closed, and the line to log.
type Closing = (CloseReason, String);

/// One frame as read: the prefix that delimits it and its body.
struct Frame {
    prefix: Vec<u8>,
    body: Bytes,
}

/// Most prefix bytes a protocol may ask for (MQTT's is 5, Kafka's 4).
const PREFIX_BYTES_MAX: usize = 8;

/// Bytes a connection reads ahead at most.
const READ_AHEAD_BYTES: usize = 4 << 10;

/// Bytes read from a connection beyond its current frame, so small frames sent back to back
/// cost one read for many rather than two or three each. A frame's body is copied out (it
/// does not pin the chunk). Empty and freed while the connection waits for its next frame,
/// so an idle connection holds none: that wait reads one byte, and the chunk is read only
/// once data has arrived.
#[derive(Default)]
struct ReadAhead {
    bytes: BytesMut,
}

impl ReadAhead {
    /// Reads what the socket holds now, up to [`READ_AHEAD_BYTES`], without waiting.
    async fn top_up(
        &mut self,
        reader: &mut (impl futures_lite::AsyncRead + Unpin),
    ) -> std::io::Result<()> {
        let mut chunk = BytesMut::zeroed(READ_AHEAD_BYTES);
        // A read that would wait is dropped: readiness-based reads lose nothing so.
        match futures_lite::future::poll_once(reader.read(&mut chunk)).await {
            Some(Ok(read)) => {
                chunk.truncate(read);
                self.bytes = chunk;
                Ok(())
            }
            Some(Err(error)) => Err(error),
            None => Ok(()),
        }
    }

    /// Fills `out` from what was read ahead, then from `reader`.
    async fn read_exact(
        &mut self,
        reader: &mut (impl futures_lite::AsyncRead + Unpin),
        out: &mut [u8],
    ) -> std::io::Result<()> {
        let from_ahead = out.len().min(self.bytes.len());
        out[..from_ahead].copy_from_slice(&self.bytes[..from_ahead]);
        self.bytes.advance(from_ahead);
        if from_ahead < out.len() {
            reader.read_exact(&mut out[from_ahead..]).await?;
        }
        Ok(())
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream. The body's bytes are reserved
/// against the shard's budget (the permit) and allocated as they arrive, so a size prefix
/// alone cannot make the server allocate. Waiting for a frame's first byte with nothing in
/// flight is bounded by `idle`; the rest of the frame must arrive within `read_timeout` (of
/// the first byte for the prefix, of the budget's grant for the body, since waiting for the
/// budget is not the client's doing).
async fn read_frame<P: Protocol>(
    server: &Server<P>,
    reader: &mut (impl futures_lite::AsyncRead + Unpin),
    ahead: &mut ReadAhead,
    waiting: &Cell<Option<Instant>>,
) -> Result<Option<(Frame, coremq_runtime::sync::StaticPermit)>, Closing> {
    let limits: &Limits = &server.shared.limits;
    let read_timeout = limits.read_timeout;
    let read_failed =
        |error: std::io::Error| (CloseReason::ReadError, format!("read failed: {error}"));
    let mut prefix = vec![0u8; 1];
    if let Some(&first) = ahead.bytes.first() {
        prefix[0] = first;
        ahead.bytes.advance(1);
    } else {
        ahead.bytes = BytesMut::new();
        // Until the first byte comes, the idle limit runs (`watch_idle`).
        waiting.set(Some(Instant::now()));
        let first = reader.read(&mut prefix[..1]).await;
        waiting.set(None);
        match first {
            Ok(0) => return Ok(None),
            Ok(_) => ahead.top_up(reader).await.map_err(read_failed)?,
            Err(error) => return Err(read_failed(error)),
        }
    }
    let slow = |what: &str| {
        (
            CloseReason::SlowRequest,
            format!(
                "{what} did not arrive within {} ms (request_read_timeout_ms)",
                read_timeout.as_millis()
            ),
        )
    };
    let rest_of_prefix = async {
        loop {
            match P::frame_size(&prefix).map_err(|reason| (CloseReason::BadRequest, reason))? {
                FrameSize::Body(size) => return Ok(size),
                FrameSize::Need(more) => {
                    let start = prefix.len();
                    if more == 0 || start + more > PREFIX_BYTES_MAX {
                        return Err((
                            CloseReason::BadRequest,
                            format!("a frame prefix of more than {PREFIX_BYTES_MAX} bytes"),
                        ));
                    }
                    prefix.resize(start + more, 0);
                    ahead
                        .read_exact(reader, &mut prefix[start..])
                        .await
                        .map_err(read_failed)?;
                }
            }
        }
    };
    let size = within(read_timeout, rest_of_prefix)
        .await
        .ok_or_else(|| slow("the request size"))??;
    let max = limits.frame_bytes_max;
    if size > max {
        return Err((
            CloseReason::TooLarge,
            format!("a frame of {size} bytes is over the listener's limit of {max}"),
        ));
    }
    let permit = server
        .frame_bytes
        .acquire_static_permit(size as u64)
        .await
        .map_err(|_| (CloseReason::ReadError, "shutting down".to_string()))?;
    const STEP_BYTES: usize = 1 << 20;
    let body = async {
        let mut frame = BytesMut::with_capacity(size.min(STEP_BYTES));
        let from_ahead = size.min(ahead.bytes.len());
        frame.extend_from_slice(&ahead.bytes[..from_ahead]);
        ahead.bytes.advance(from_ahead);
        while frame.len() < size {
            let start = frame.len();
            frame.resize(start + (size - start).min(STEP_BYTES), 0);
            reader
                .read_exact(&mut frame[start..])
                .await
                .map_err(|error| {
                    (
                        CloseReason::ReadError,
                        format!("read failed after {start} of {size} bytes: {error}"),
                    )
                })?;
        }
        Ok(frame)
    };
    let body = within(read_timeout, body)
        .await
        .ok_or_else(|| slow(&format!("a request of {size} bytes")))??;
    let frame = Frame {
        prefix,
        body: body.freeze(),
    };
    Ok(Some((frame, permit)))
}

/// Closes the connection through `link` once a frame's first byte has been awaited (since
/// `waiting` says) for its idle limit: the protocol's (MQTT's keep alive) when set, else
/// `idle` (`connections_max_idle_ms`) while no request is in flight; waiting on a request in
/// flight is not idling, and starts a new window. The limit may change while it waits (MQTT
/// sets it once CONNECT is read); the wait goes on from the same moment.
async fn watch_idle(
    link: Link,
    idle: Duration,
    waiting: Rc<Cell<Option<Instant>>>,
    in_flight: Rc<InFlight>,
) {
    loop {
        let limit = link.idle().unwrap_or(idle);
        let now = Instant::now();
        let due = waiting.get().map_or(now + limit, |since| since + limit);
        if now >= due {
            if link.idle().is_some() {
                let detail = format!("no packet for {} ms (keep alive)", limit.as_millis());
                link.close(CloseReason::KeepAlive, detail);
                return;
            }
            if in_flight.count.get() == 0 {
                let detail = format!(
                    "idle for {} ms (connections_max_idle_ms)",
                    limit.as_millis()
                );
                link.close(CloseReason::Idle, detail);
                return;
            }
            waiting.set(Some(now));
            continue;
        }
        futures_lite::future::or(coremq_runtime::sleep(due - now), async {
            link.idle_changed().await;
        })
        .await;
    }
}

/// `work`'s output, or `None` when it takes longer than `limit`.
async fn within<T>(limit: Duration, work: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        coremq_runtime::sleep(limit).await;
        None
    })
    .await
}

/// Writes responses and pushed frames (`write_all`), then ends the stream's write side, so
/// the client sees the end even while the server still drains what it sends.
async fn write_responses(
    mut writer: impl futures_lite::AsyncWrite + Unpin,
    responses: local_channel::LocalReceiver<Answer>,
    pushes: local_channel::LocalReceiver<Vec<Bytes>>,
    link: Link,
    in_flight: Rc<InFlight>,
) {
    write_all(&mut writer, responses, pushes, link, in_flight).await;
    let _ = writer.close().await;
}

/// Writes responses in request order, merging a response's small chunks into one write, and
/// the frames the protocol pushes between them.
async fn write_all(
    writer: &mut (impl futures_lite::AsyncWrite + Unpin),
    responses: local_channel::LocalReceiver<Answer>,
    pushes: local_channel::LocalReceiver<Vec<Bytes>>,
    link: Link,
    in_flight: Rc<InFlight>,
) {
    const MERGE_BYTES_MAX: usize = 64 << 10;
    let mut pending = BytesMut::new();
    let mut current: Option<coremq_runtime::Task<Response>> = None;
    let mut responses_open = true;
    loop {
        enum Next {
            Response(Response),
            Push(Vec<Bytes>),
            Done,
        }
        let next = futures_lite::future::or(
            async {
                if let Some(task) = current.as_mut() {
                    let response = task.await;
                    current = None;
                    return Next::Response(response);
                }
                if responses_open {
                    match responses.recv().await {
                        Some(Answer::Ready(response)) => return Next::Response(response),
                        Some(Answer::Later(task)) => {
                            let response = current.insert(task).await;
                            current = None;
                            return Next::Response(response);
                        }
                        None => responses_open = false,
                    }
                }
                // Every answer is written: what was pushed before the end still goes.
                match futures_lite::future::poll_once(pushes.recv()).await {
                    Some(Some(chunks)) => Next::Push(chunks),
                    _ => Next::Done,
                }
            },
            async {
                match pushes.recv().await {
                    Some(chunks) => Next::Push(chunks),
                    None => std::future::pending().await,
                }
            },
        )
        .await;
        let chunks = match next {
            Next::Done => return,
            Next::Response(response) => {
                in_flight.answered();
                let Some(chunks) = response else {
                    continue;
                };
                chunks
            }
            Next::Push(chunks) => {
                link.written(chunks.iter().map(Bytes::len).sum());
                chunks
            }
        };
        for chunk in chunks {
            if chunk.len() >= MERGE_BYTES_MAX {
                if !pending.is_empty() && writer.write_all(&pending.split()).await.is_err() {
                    return;
                }
                if writer.write_all(&chunk).await.is_err() {
                    return;
                }
            } else {
                pending.extend_from_slice(&chunk);
            }
        }
        if !pending.is_empty() && writer.write_all(&pending.split()).await.is_err() {
            return;
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}
