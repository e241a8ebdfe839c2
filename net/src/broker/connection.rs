//! One client connection: frames read in order, each request handled in its own task (so a
//! long-polling fetch does not hold up the requests behind it), responses written in the
//! order the requests came, as the protocol requires.
//!
//! Bounds: at most `connection_requests_in_flight_max` requests read ahead of their
//! responses (then the connection stops reading), request bytes counted against the shard's
//! `shard_request_bytes_max` until handled, frames over `socket_request_max_bytes` refused.
//! A frame that is not a Kafka request closes this connection only, with one log line.
//!
//! Limits on connections (closed with a line in the shard's close log, `closes.rs`): one
//! with no request arriving and none in flight for `connections_max_idle_ms`; one whose
//! request has not arrived whole `request_read_timeout_ms` after its first byte; one past
//! `max_connections` (all shards) or `max_connections_per_ip`, as it arrives.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{AcceptedTcpStream, TcpListener, TcpStream};

use super::closes::CloseReason;
use super::dispatch::{self, Incoming};
use super::{AcceptMode, Context};

/// Open connections by client IP address, all shards together (touched on open and close).
pub(crate) type ConnectionsByIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

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
fn admit(context: &Context, peer: Option<SocketAddr>) -> Result<Option<IpSlot>, Closing> {
    let open: usize = context
        .connections
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .sum();
    let max = context.config.max_connections;
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
    let mut ips = context
        .ips
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let count = ips.entry(ip).or_default();
    let max = context.config.max_connections_per_ip;
    if *count >= max {
        return Err((
            CloseReason::TooManyConnectionsPerIp,
            format!("{count} connections from {ip} are open, max_connections_per_ip is {max}"),
        ));
    }
    *count += 1;
    Ok(Some(IpSlot {
        ips: context.ips.clone(),
        ip,
    }))
}

/// Chunks of one response frame; `None` for a request answered with nothing (acks=0).
type Response = Option<Vec<Bytes>>;

/// Accepts connections until the broker stops: each is served here, or, in
/// [`AcceptMode::Handoff`], on the shard with the fewest open connections.
pub(crate) async fn accept_loop(context: Rc<Context>, listener: TcpListener) {
    let stop = context.stop_signal();
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
                let shard = match context.config.accept {
                    AcceptMode::ReusePort => context.shard,
                    AcceptMode::Handoff => least_loaded(&context.connections),
                };
                // Counted from here, so the next accept sees it even before it arrives.
                context.connections[shard].fetch_add(1, Ordering::Relaxed);
                if shard == context.shard {
                    spawn_connection(context.clone(), stream);
                } else {
                    hand_off(&context, shard, stream);
                }
            }
            Some(Err(error)) => {
                log::warn!("accept failed: {error}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
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
fn spawn_connection(context: Rc<Context>, stream: AcceptedTcpStream) {
    glommio::spawn_local(async move {
        serve(&context, stream.bind_to_executor()).await;
        context.connections[context.shard].fetch_sub(1, Ordering::Relaxed);
    })
    .detach();
}

/// Sends an accepted connection, counted on `shard`, to that shard to be served there. If
/// that shard is stopping, the connection is dropped, which closes it.
fn hand_off(context: &Context, shard: usize, stream: AcceptedTcpStream) {
    let handle = context.handle.clone();
    let connections = context.connections.clone();
    glommio::spawn_local(async move {
        let served = handle
            .on_shard(shard, move |_| async move {
                spawn_connection(Context::current(), stream);
                Ok(())
            })
            .await;
        if served.is_err() {
            connections[shard].fetch_sub(1, Ordering::Relaxed);
        }
    })
    .detach();
}

async fn serve(context: &Rc<Context>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let _ip_slot = match admit(context, peer) {
        Ok(slot) => slot,
        Err((reason, detail)) => {
            context.closes.note(peer, reason, &detail);
            return;
        }
    };
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (queue, responses) = local_channel::new_bounded::<glommio::Task<Response>>(
        context.config.connection_requests_in_flight_max,
    );
    // Requests read whose responses are not written yet: a connection waiting on one (a
    // long poll, a join) is not idle.
    let in_flight = Rc::new(Cell::new(0usize));
    let writer = glommio::spawn_local(write_responses(writer, responses, in_flight.clone()));
    let stop = context.stop_signal();
    loop {
        let next = futures_lite::future::or(
            async { Some(read_frame(context, &mut reader, &in_flight).await) },
            async {
                let _ = stop.recv_async().await;
                None
            },
        )
        .await;
        let (frame, permit) = match next {
            None | Some(Ok(None)) => break,
            Some(Ok(Some(read))) => read,
            Some(Err((reason, detail))) => {
                context.closes.note(peer, reason, &detail);
                break;
            }
        };
        in_flight.set(in_flight.get() + 1);
        let request = match dispatch::decode(context, frame) {
            Ok(Incoming::Request(request)) => request,
            Ok(Incoming::Answered(answer)) => {
                if queue
                    .send(glommio::spawn_local(async move { Some(answer) }))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            Err(error) => {
                context
                    .closes
                    .note(peer, CloseReason::BadRequest, &error.to_string());
                break;
            }
        };
        let context = context.clone();
        let task = glommio::spawn_local(async move {
            let response = dispatch::respond(&context, request, peer).await;
            drop(permit);
            response
        });
        if queue.send(task).await.is_err() {
            break;
        }
    }
    drop(queue);
    let _ = writer.await;
}

/// Why a connection is being closed, and the line to log.
type Closing = (CloseReason, String);

/// Reads one frame; `Ok(None)` at a clean end of stream. The frame's bytes are reserved
/// against the shard's budget (the permit) and allocated as they arrive, so a size prefix
/// alone cannot make the broker allocate. Waiting for a frame's first byte with nothing in
/// flight is bounded by `connections_max_idle_ms`; the rest of the frame must arrive within
/// `request_read_timeout_ms` (of the first byte for the size prefix, of the budget's grant
/// for the body, since waiting for the budget is not the client's doing).
async fn read_frame(
    context: &Context,
    reader: &mut (impl futures_lite::AsyncRead + Unpin),
    in_flight: &Cell<usize>,
) -> Result<Option<(Bytes, glommio::sync::StaticPermit)>, Closing> {
    let idle = Duration::from_millis(context.config.connections_max_idle_ms);
    let read_timeout = Duration::from_millis(context.config.request_read_timeout_ms);
    let read_failed =
        |error: std::io::Error| (CloseReason::ReadError, format!("read failed: {error}"));
    let mut prefix = [0u8; 4];
    loop {
        // Readiness-based reads leave unread bytes in the socket, so giving up on this
        // read after the idle time and starting another loses nothing.
        let first = within(idle, reader.read(&mut prefix[..1])).await;
        match first {
            Some(Ok(0)) => return Ok(None),
            Some(Ok(_)) => break,
            Some(Err(error)) => return Err(read_failed(error)),
            None if in_flight.get() == 0 => {
                return Err((
                    CloseReason::Idle,
                    format!("idle for {} ms (connections_max_idle_ms)", idle.as_millis()),
                ));
            }
            None => {}
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
    within(read_timeout, reader.read_exact(&mut prefix[1..]))
        .await
        .ok_or_else(|| slow("the request size"))?
        .map_err(read_failed)?;
    let size = i32::from_be_bytes(prefix);
    let max = context.config.socket_request_max_bytes;
    if size < 0 || size as usize > max {
        return Err((
            CloseReason::BadRequest,
            format!("request size {size} is outside 0..={max} (socket_request_max_bytes)"),
        ));
    }
    let size = size as usize;
    let permit = context
        .request_bytes
        .acquire_static_permit(size as u64)
        .await
        .map_err(|_| (CloseReason::ReadError, "shutting down".to_string()))?;
    const STEP_BYTES: usize = 1 << 20;
    let body = async {
        let mut frame = BytesMut::with_capacity(size.min(STEP_BYTES));
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
    let frame = within(read_timeout, body)
        .await
        .ok_or_else(|| slow(&format!("a request of {size} bytes")))??;
    Ok(Some((frame.freeze(), permit)))
}

/// `work`'s output, or `None` when it takes longer than `limit`.
async fn within<T>(limit: Duration, work: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// Writes responses in request order, merging a response's small chunks into one write.
async fn write_responses(
    mut writer: impl futures_lite::AsyncWrite + Unpin,
    responses: local_channel::LocalReceiver<glommio::Task<Response>>,
    in_flight: Rc<Cell<usize>>,
) {
    const MERGE_BYTES_MAX: usize = 64 << 10;
    let mut pending = BytesMut::new();
    while let Some(task) = responses.recv().await {
        let response = task.await;
        in_flight.set(in_flight.get() - 1);
        let Some(chunks) = response else {
            continue;
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
