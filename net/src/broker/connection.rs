//! One client connection: frames read in order, each request handled in its own task (so a
//! long-polling fetch does not hold up the requests behind it), responses written in the
//! order the requests came, as the protocol requires.
//!
//! Bounds: at most `connection_requests_in_flight_max` requests read ahead of their
//! responses (then the connection stops reading), request bytes counted against the shard's
//! `shard_request_bytes_max` until handled, frames over `socket_request_max_bytes` refused.
//! A frame that is not a Kafka request closes this connection only, with one log line.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{AcceptedTcpStream, TcpListener, TcpStream};

use super::dispatch::{self, Incoming};
use super::{AcceptMode, Context};

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
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (queue, responses) = local_channel::new_bounded::<glommio::Task<Response>>(
        context.config.connection_requests_in_flight_max,
    );
    let writer = glommio::spawn_local(write_responses(writer, responses));
    let stop = context.stop_signal();
    loop {
        let next = futures_lite::future::or(
            async { Some(read_frame(context, &mut reader).await) },
            async {
                let _ = stop.recv_async().await;
                None
            },
        )
        .await;
        let (frame, permit) = match next {
            None | Some(Ok(None)) => break,
            Some(Ok(Some(read))) => read,
            Some(Err(reason)) => {
                note_closed(peer, &reason);
                break;
            }
        };
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
                note_closed(peer, &error.to_string());
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

fn note_closed(peer: Option<SocketAddr>, reason: &str) {
    match peer {
        Some(peer) => log::warn!("closing connection from {peer}: {reason}"),
        None => log::warn!("closing connection: {reason}"),
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream. The frame's bytes are reserved
/// against the shard's budget (the permit) and allocated as they arrive, so a size prefix
/// alone cannot make the broker allocate.
async fn read_frame(
    context: &Context,
    reader: &mut (impl futures_lite::AsyncRead + Unpin),
) -> Result<Option<(Bytes, glommio::sync::StaticPermit)>, String> {
    let mut prefix = [0u8; 4];
    match reader.read(&mut prefix[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(error) => return Err(format!("read failed: {error}")),
    }
    reader
        .read_exact(&mut prefix[1..])
        .await
        .map_err(|error| format!("read failed: {error}"))?;
    let size = i32::from_be_bytes(prefix);
    let max = context.config.socket_request_max_bytes;
    if size < 0 || size as usize > max {
        return Err(format!(
            "request size {size} is outside 0..={max} (socket_request_max_bytes)"
        ));
    }
    let size = size as usize;
    let permit = context
        .request_bytes
        .acquire_static_permit(size as u64)
        .await
        .map_err(|_| "shutting down".to_string())?;
    const STEP_BYTES: usize = 1 << 20;
    let mut frame = BytesMut::with_capacity(size.min(STEP_BYTES));
    while frame.len() < size {
        let start = frame.len();
        frame.resize(start + (size - start).min(STEP_BYTES), 0);
        reader
            .read_exact(&mut frame[start..])
            .await
            .map_err(|error| format!("read failed after {start} of {size} bytes: {error}"))?;
    }
    Ok(Some((frame.freeze(), permit)))
}

/// Writes responses in request order, merging a response's small chunks into one write.
async fn write_responses(
    mut writer: impl futures_lite::AsyncWrite + Unpin,
    responses: local_channel::LocalReceiver<glommio::Task<Response>>,
) {
    const MERGE_BYTES_MAX: usize = 64 << 10;
    let mut pending = BytesMut::new();
    while let Some(task) = responses.recv().await {
        let Some(chunks) = task.await else {
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
