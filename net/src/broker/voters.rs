//! The transport between the controller quorum's voters and observers
//! (`coremq_replication::peers`): the controller listener, served by the generic server with
//! its bounds and drain, hands every frame to the metadata node; one connection to each
//! other voter, and to each observer at the address it gave, carries this broker's frames,
//! made again whenever it breaks. Frames are a 4-byte big-endian length and the
//! bytes. Nothing is answered on the connection a frame came in on: answers travel on the
//! answering broker's own connection, as Raft messages do, so anything read on one is its
//! end. A voter whose port refuses a connection is reported to the metadata node: no
//! process listens there, and its controller need not wait out its session to fence it.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coremq_replication::Transport;
use coremq_replication::leader::BrokerId;
use coremq_replication::quorum::MESSAGE_BYTES_MAX;
use coremq_runtime::net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::config::{BrokerConfig, Voter};
use crate::server::{FrameSize, Incoming, Limits, Link, Protocol};

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
    type Connection = ();

    const CLIENTS: &'static str = "controller voters";

    fn frame_size(prefix: &[u8]) -> Result<FrameSize, String> {
        let Ok(size) = <[u8; 4]>::try_from(prefix) else {
            return Ok(FrameSize::Need(4 - prefix.len()));
        };
        Ok(FrameSize::Body(u32::from_be_bytes(size) as usize))
    }

    fn open(&self, _peer: Option<SocketAddr>, _link: Link) -> Rc<()> {
        Rc::new(())
    }

    fn decode(&self, _: &Rc<()>, _prefix: &[u8], body: Bytes) -> Result<Incoming<Bytes>, String> {
        Ok(Incoming::Request(body))
    }

    async fn respond(
        self: Rc<Self>,
        _: Rc<()>,
        frame: Bytes,
        _peer: Option<SocketAddr>,
    ) -> Option<Vec<Bytes>> {
        let _ = self.frames.send_async(frame.to_vec()).await;
        None
    }

    fn too_large(&self, _: &Rc<()>) -> Option<Vec<Bytes>> {
        None
    }

    fn closed(&self, _: &Rc<()>) {}
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
        keepalive: None,
        websocket: None,
    }
}

/// The address this broker listens on for the voters' frames: the setting, else its own
/// entry in the voters resolved. A broker outside the voters (an observer) must set it.
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
                "broker {} is not among the controller voters ({}): to run it as an observer \
                 (a broker that follows the metadata without voting), give it \
                 --controller-listener, the address the voters reach it at",
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

/// What the links to the other brokers take from and report to the metadata node.
pub(crate) struct Outbound {
    to_send: flume::Receiver<(BrokerId, Vec<u8>)>,
    routes: flume::Receiver<(BrokerId, coremq_replication::peers::Address)>,
    refused: flume::Sender<BrokerId>,
}

/// The inbound protocol with the channel it fills, and the transport the metadata node
/// uses; the senders are started by [`start_links`] on the shard running them.
pub(crate) fn transport() -> (Inbound, Transport, Outbound) {
    let (frames, incoming) = flume::unbounded();
    let (outgoing, to_send) = flume::unbounded();
    let (route, routes) = flume::unbounded();
    let (refusals, refused) = flume::unbounded();
    (
        Inbound { frames },
        Transport {
            outgoing,
            routes: route,
            incoming,
            refused,
        },
        Outbound {
            to_send,
            routes,
            refused: refusals,
        },
    )
}

/// Starts, on this shard, a connection to each voter but `me`, and to each observer the
/// metadata node learns of (again when its address changes), and routes the frames to send
/// to them; all end once the metadata node drops its transport.
pub(crate) fn start_links(me: BrokerId, voters: &[Voter], outbound: Outbound) {
    let Outbound {
        to_send,
        routes,
        refused,
    } = outbound;
    let mut queues = BTreeMap::new();
    let open = move |peer: Voter, queues: &mut BTreeMap<BrokerId, flume::Sender<Vec<u8>>>| {
        let (queue, queued) = flume::bounded(QUEUED_FRAMES_MAX);
        queues.insert(peer.id, queue);
        coremq_runtime::spawn_local(link(peer, queued, refused.clone())).detach();
    };
    for voter in voters.iter().filter(|voter| voter.id != me) {
        open(voter.clone(), &mut queues);
    }
    let fixed: Vec<BrokerId> = voters.iter().map(|voter| voter.id).collect();
    coremq_runtime::spawn_local(async move {
        loop {
            let frame = async { to_send.recv_async().await.map(Ok) };
            let route = async { routes.recv_async().await.map(Err) };
            match futures_lite::future::or(frame, route).await {
                Ok(Ok((to, frame))) => {
                    if let Some(queue) = queues.get(&to) {
                        let _ = queue.try_send(frame);
                    }
                }
                // An observer, at the address it gave (its old link ends with its queue).
                Ok(Err((id, (host, port)))) if !fixed.contains(&id) => {
                    open(Voter { id, host, port }, &mut queues);
                }
                Ok(Err(_)) => {}
                Err(_) => return,
            }
        }
    })
    .detach();
}

/// Sends the frames queued for `voter`, connecting as needed; frames that come while it
/// cannot be reached are dropped. Each refused connection is reported on `refused`.
async fn link(voter: Voter, queued: flume::Receiver<Vec<u8>>, refused: flume::Sender<BrokerId>) {
    let mut reachable = true;
    while let Ok(first) = queued.recv_async().await {
        let stream = match connect(&voter).await {
            Ok(stream) => stream,
            Err(error) => {
                if error.kind() == std::io::ErrorKind::ConnectionRefused {
                    let _ = refused.send(voter.id);
                }
                if reachable {
                    log::warn!("controller voter {voter}: unreachable: {error}");
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

async fn connect(voter: &Voter) -> std::io::Result<TcpStream> {
    let address = resolve(&voter.host, voter.port).map_err(std::io::Error::other)?;
    let stream = TcpStream::connect_timeout(address, CONNECT_TIMEOUT)
        .await
        .map_err(|error| {
            let error = std::io::Error::from(error);
            std::io::Error::new(error.kind(), format!("connecting to {address}: {error}"))
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Writes `first` and every frame queued after it, until the queue closes, a write fails
/// or the voter closes the connection (its process ended: the next frame then finds out
/// whether anything listens there).
async fn send(
    stream: TcpStream,
    first: Vec<u8>,
    queued: &flume::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let closed = async {
        // Nothing is ever sent back on this connection: a read ends only with it.
        let _ = reader.read(&mut [0u8; 1]).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "closed by the voter",
        ))
    };
    let mut closed = std::pin::pin!(closed);
    let mut frame = first;
    loop {
        write_frame(&mut writer, &frame).await?;
        while let Ok(more) = queued.try_recv() {
            write_frame(&mut writer, &more).await?;
        }
        writer.flush().await?;
        let next = async { Ok(queued.recv_async().await.ok()) };
        match futures_lite::future::or(next, closed.as_mut()).await? {
            Some(next) => frame = next,
            None => return Ok(()),
        }
    }
}

async fn write_frame(
    stream: &mut (impl futures_lite::AsyncWrite + Unpin),
    frame: &[u8],
) -> std::io::Result<()> {
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
