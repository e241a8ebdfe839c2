//! The transport between the controller quorum's voters (`coremq_replication::peers`): the
//! controller listener, served by the generic server with its bounds and drain, hands every
//! frame to the metadata node; one connection to each other voter carries this broker's
//! frames, made again whenever it breaks. Frames are a 4-byte big-endian length and the
//! bytes. Nothing is answered on the connection a frame came in on: answers travel on the
//! answering broker's own connection, as Raft messages do.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coremq_replication::Transport;
use coremq_replication::leader::BrokerId;
use coremq_replication::quorum::MESSAGE_BYTES_MAX;
use coremq_runtime::net::TcpStream;
use futures_lite::AsyncWriteExt;

use super::config::{BrokerConfig, Voter};
use crate::server::{FrameSize, Incoming, Limits, Protocol};

/// Frames queued for one voter; more are dropped while it is unreachable or slow (the
/// quorum sends again).
const QUEUED_FRAMES_MAX: usize = 4096;
/// How long a connection attempt to a voter may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause after a failed connection attempt.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// The controller listener's protocol: frames in, handed to the metadata node.
#[derive(Clone)]
pub(crate) struct Inbound {
    frames: flume::Sender<Vec<u8>>,
}

impl Protocol for Inbound {
    type Request = Bytes;

    const CLIENTS: &'static str = "controller voters";

    fn frame_size(prefix: &[u8]) -> Result<FrameSize, String> {
        let Ok(size) = <[u8; 4]>::try_from(prefix) else {
            return Ok(FrameSize::Need(4 - prefix.len()));
        };
        Ok(FrameSize::Body(u32::from_be_bytes(size) as usize))
    }

    fn decode(&self, _prefix: &[u8], body: Bytes) -> Result<Incoming<Bytes>, String> {
        Ok(Incoming::Request(body))
    }

    async fn respond(
        self: Rc<Self>,
        frame: Bytes,
        _peer: Option<SocketAddr>,
    ) -> Option<Vec<Bytes>> {
        let _ = self.frames.send_async(frame.to_vec()).await;
        None
    }
}

/// The controller listener's bounds: frames up to a quorum message's largest, few
/// connections (the voters), kept open while idle.
pub(crate) fn limits(config: &BrokerConfig) -> Limits {
    Limits {
        accept: config.accept,
        frame_bytes_max: MESSAGE_BYTES_MAX,
        shard_frame_bytes_max: 2 * MESSAGE_BYTES_MAX,
        requests_in_flight_max: 64,
        idle: Duration::from_secs(600),
        read_timeout: Duration::from_secs(30),
        connections_max: 1024,
        connections_per_ip_max: 1024,
    }
}

/// The address this voter listens on for the others: the setting, else its own entry in the
/// voters resolved.
pub(crate) fn listener(config: &BrokerConfig) -> Result<SocketAddr, String> {
    if let Some(address) = config.controller_listener {
        return Ok(address);
    }
    let me = config
        .controller_voters
        .iter()
        .find(|voter| voter.id == config.node_id)
        .ok_or_else(|| {
            format!(
                "broker {} is not among the controller voters ({}): every broker of a \
                 cluster is a voter for now (brokers that only follow the metadata are \
                 not supported)",
                config.node_id,
                config
                    .controller_voters
                    .iter()
                    .map(|voter| voter.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })?;
    resolve(&me.host, me.port)
}

/// The inbound protocol with the channel it fills, and the transport the metadata node
/// uses; the senders are started by [`start_links`] on the shard running them.
pub(crate) fn transport() -> (Inbound, Transport, flume::Receiver<(BrokerId, Vec<u8>)>) {
    let (frames, incoming) = flume::unbounded();
    let (outgoing, to_send) = flume::unbounded();
    (
        Inbound { frames },
        Transport { outgoing, incoming },
        to_send,
    )
}

/// Starts, on this shard, a connection to each voter but `me`, and routes `to_send` to them;
/// all end once the metadata node drops its transport.
pub(crate) fn start_links(
    me: BrokerId,
    voters: &[Voter],
    to_send: flume::Receiver<(BrokerId, Vec<u8>)>,
) {
    let mut queues = BTreeMap::new();
    for voter in voters.iter().filter(|voter| voter.id != me) {
        let (queue, queued) = flume::bounded(QUEUED_FRAMES_MAX);
        queues.insert(voter.id, queue);
        coremq_runtime::spawn_local(link(voter.clone(), queued)).detach();
    }
    coremq_runtime::spawn_local(async move {
        while let Ok((to, frame)) = to_send.recv_async().await {
            if let Some(queue) = queues.get(&to) {
                let _ = queue.try_send(frame);
            }
        }
    })
    .detach();
}

/// Sends the frames queued for `voter`, connecting as needed; frames that come while it
/// cannot be reached are dropped.
async fn link(voter: Voter, queued: flume::Receiver<Vec<u8>>) {
    let mut reachable = true;
    while let Ok(first) = queued.recv_async().await {
        let stream = match connect(&voter).await {
            Ok(stream) => stream,
            Err(reason) => {
                if reachable {
                    log::warn!("controller voter {voter}: unreachable: {reason}");
                    reachable = false;
                }
                coremq_runtime::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        if !reachable {
            log::info!("controller voter {voter}: connected");
            reachable = true;
        }
        if let Err(error) = send(stream, first, &queued).await {
            log::warn!("controller voter {voter}: connection lost: {error}");
            reachable = false;
        }
    }
}

async fn connect(voter: &Voter) -> Result<TcpStream, String> {
    let address = resolve(&voter.host, voter.port)?;
    let stream = TcpStream::connect_timeout(address, CONNECT_TIMEOUT)
        .await
        .map_err(|error| format!("connecting to {address}: {error}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Writes `first` and every frame queued after it, until the queue closes or a write fails.
async fn send(
    mut stream: TcpStream,
    first: Vec<u8>,
    queued: &flume::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let mut frame = first;
    loop {
        write_frame(&mut stream, &frame).await?;
        while let Ok(more) = queued.try_recv() {
            write_frame(&mut stream, &more).await?;
        }
        stream.flush().await?;
        match queued.recv_async().await {
            Ok(next) => frame = next,
            Err(_) => return Ok(()),
        }
    }
}

async fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> std::io::Result<()> {
    stream
        .write_all(&(frame.len() as u32).to_be_bytes())
        .await?;
    stream.write_all(frame).await
}

/// `host:port` as an address (a host name is looked up each time: a restarted pod may come
/// back at another address).
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("{host}:{port}: {error}"))?
        .collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| format!("{host} resolves to no address"))
}
