//! MQTT workloads: publishers and subscribers on client shards, each client a connection of
//! its own speaking MQTT through coremq's codec (`coremq_net::mqtt::codec`), so any MQTT
//! broker can be measured the same way.
//!
//! - Publisher `p` publishes to `PREFIX/{p % topics}` at its share of the offered rate (or as
//!   fast as its connection takes them), the send time in microseconds since the epoch in the
//!   first 8 bytes of each payload. A QoS 0 message counts once written; a QoS 1 or 2 message
//!   once acknowledged (PUBACK, PUBCOMP), with at most `--inflight` unacknowledged, and the
//!   acknowledgement latency runs from the send to that acknowledgement.
//! - Subscriber `s` subscribes to `PREFIX/{s % topics}` (or `PREFIX/#`) at the same QoS,
//!   acknowledges as the QoS asks, and takes the end-to-end latency from the send time.
//!
//! Each connection has a writer task: publishes come to it through a bounded queue (so a
//! publisher waits on a full socket), acknowledgements and DISCONNECT through an unbounded
//! one, and it sends PINGREQ when nothing else went out for half the keep alive.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use coremq_net::mqtt::codec::{
    self, Ack, Connect, Level, Packet, Properties, Publish, QoS, Subscribe, Subscription, kind,
};
use futures_lite::future::or;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use rand::Rng;
use serde_json::{Value, json};

use crate::args::MqttWorkload;
use crate::run::{self, Shape};
use crate::stats::{Stats, percentiles, print_summary};
use crate::workload::{Message, Pacing, Shared, now_us, report_until_done, spawn_shard};

/// Connections of one shard in their CONNECT (and SUBSCRIBE) at once.
const HANDSHAKES: u64 = 64;
/// Publishes queued for one connection's writer.
const QUEUED_PUBLISHES: usize = 64;
/// Bytes a writer gathers before writing them.
const WRITE_BYTES: usize = 16 * 1024;
/// Bytes read at once.
const READ_BYTES: usize = 16 * 1024;
/// A packet from the broker larger than this ends the connection.
const PACKET_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The most `--inflight` may be (packet ids are 16 bits).
const INFLIGHT_MAX: usize = 1024;
/// After publishing, how long a publisher waits for its last acknowledgements.
const ACK_GRACE: Duration = Duration::from_secs(10);

/// Runs the workload, prints the summary and returns it as JSON.
pub fn measure(workload: MqttWorkload) -> Result<Value, String> {
    let summary = execute(&workload, true)?;
    print_summary(&summary);
    Ok(summary)
}

/// What every shard needs to know of the run.
struct Plan {
    workload: MqttWorkload,
    address: SocketAddr,
    /// Messages/s for all publishers together.
    rate: Option<f64>,
    /// Subscribers of each topic.
    fanout: Vec<u64>,
}

impl Plan {
    fn topic(&self, index: usize) -> String {
        format!("{}/{index}", self.workload.topic_prefix)
    }

    fn filter(&self, subscriber: usize) -> String {
        if self.workload.wildcard {
            format!("{}/#", self.workload.topic_prefix)
        } else {
            self.topic(subscriber % self.workload.topics)
        }
    }
}

/// The broker's address from `host:port`.
pub fn resolve(broker: &str) -> Result<SocketAddr, String> {
    broker
        .to_socket_addrs()
        .map_err(|error| format!("broker {broker}: {error}"))?
        .next()
        .ok_or_else(|| format!("broker {broker}: no address"))
}

fn execute(workload: &MqttWorkload, progress: bool) -> Result<Value, String> {
    if workload.topics == 0 {
        return Err("--topics must be at least 1".into());
    }
    if !(1..=INFLIGHT_MAX).contains(&workload.inflight) {
        return Err(format!("--inflight must be 1 to {INFLIGHT_MAX}"));
    }
    let threads = workload
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |cores| cores.get()))
        .max(1);
    let (subscribers, topics) = (workload.subscribers as u64, workload.topics as u64);
    let fanout = (0..topics)
        .map(|topic| match workload.wildcard {
            true => subscribers,
            false => subscribers / topics + u64::from(topic < subscribers % topics),
        })
        .collect();
    let plan = Arc::new(Plan {
        workload: workload.clone(),
        address: resolve(&workload.broker)?,
        rate: workload.rate.records_per_second(workload.payload.mean()),
        fanout,
    });
    let duration = run::duration_of(workload.duration, workload.messages);
    let shape = Shape {
        produce: workload.publishers > 0,
        consume: workload.subscribers > 0,
        records: workload.messages,
        duration,
        warmup: workload.warmup,
        histogram_out: workload.histogram_out.clone(),
    };
    let measured = run::gather(&shape, progress, |shared, started| {
        start(&plan, threads, shared, started)
    })?;
    Ok(summarise(&plan, &shape, threads, &measured))
}

fn start(
    plan: &Arc<Plan>,
    threads: usize,
    shared: &Arc<Shared>,
    started: Instant,
) -> (Vec<JoinHandle<()>>, flume::Receiver<Message>) {
    let (reports, messages) = flume::unbounded();
    let workload = &plan.workload;
    shared
        .producers_left
        .store(workload.publishers, Ordering::SeqCst);
    let mut handles = Vec::new();
    for thread in 0..threads {
        let publishers: Vec<usize> = (thread..workload.publishers).step_by(threads).collect();
        let subscribers: Vec<usize> = (thread..workload.subscribers).step_by(threads).collect();
        if publishers.is_empty() && subscribers.is_empty() {
            continue;
        }
        let (plan, shared, reports) = (plan.clone(), shared.clone(), reports.clone());
        let shard = handles.len();
        handles.push(spawn_shard(shard, move || async move {
            let stats = Rc::new(RefCell::new(Stats::default()));
            let handshakes = Rc::new(Semaphore::new(HANDSHAKES));
            let mut tasks = Vec::new();
            for id in subscribers {
                let client = Client::new(&plan, &shared, &stats, &handshakes, id);
                tasks.push(glommio::spawn_local(client.subscribe()));
            }
            for id in publishers {
                let client = Client::new(&plan, &shared, &stats, &handshakes, id);
                tasks.push(glommio::spawn_local(client.publish()));
            }
            report_until_done(shard, tasks, stats, reports, started).await;
        }));
    }
    (handles, messages)
}

/// One publisher or subscriber, with what it shares with the others of its shard.
struct Client {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stats: Rc<RefCell<Stats>>,
    handshakes: Rc<Semaphore>,
    id: usize,
}

impl Client {
    fn new(
        plan: &Arc<Plan>,
        shared: &Arc<Shared>,
        stats: &Rc<RefCell<Stats>>,
        handshakes: &Rc<Semaphore>,
        id: usize,
    ) -> Client {
        Client {
            plan: plan.clone(),
            shared: shared.clone(),
            stats: stats.clone(),
            handshakes: handshakes.clone(),
            id,
        }
    }

    fn level(&self) -> Level {
        self.plan.workload.mqtt_version
    }

    /// Connects as `client_id` and waits for the CONNACK; then subscribes to `filter`, if
    /// given, and waits for the SUBACK.
    async fn open(
        &self,
        client_id: String,
        filter: Option<String>,
    ) -> Result<(Frames, WriteHalf<TcpStream>), String> {
        let _handshake = self
            .handshakes
            .acquire_permit(1)
            .await
            .map_err(|error| error.to_string())?;
        let stream = TcpStream::connect(self.plan.address)
            .await
            .map_err(|error| format!("connecting to {}: {error}", self.plan.address))?;
        let _ = stream.set_nodelay(true);
        let (read, mut write) = futures_lite::io::split(stream);
        let level = self.level();
        let mut frames = Frames::new(read, level);
        let connect = Packet::Connect(Box::new(Connect {
            level,
            clean_start: true,
            keep_alive: self.plan.workload.keep_alive,
            client_id,
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }));
        write_packet(&mut write, &connect, level).await?;
        match frames.next().await? {
            Some(Packet::ConnAck(ack)) if ack.code == 0 => {}
            Some(Packet::ConnAck(ack)) => {
                return Err(format!(
                    "the broker refused CONNECT: code {:#04x}",
                    ack.code
                ));
            }
            other => return Err(unexpected("a CONNACK", other.as_ref())),
        }
        let Some(filter) = filter else {
            return Ok((frames, write));
        };
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscriptions: vec![Subscription {
                filter: filter.clone(),
                qos: self.plan.workload.qos,
                ..Subscription::default()
            }],
            properties: Properties::default(),
        });
        write_packet(&mut write, &subscribe, level).await?;
        match frames.next().await? {
            Some(Packet::SubAck(ack)) if ack.codes.first().is_some_and(|code| *code <= 2) => {
                Ok((frames, write))
            }
            Some(Packet::SubAck(ack)) => Err(format!(
                "the broker refused the subscription to {filter}: code {:?}",
                ack.codes
            )),
            other => Err(unexpected("a SUBACK", other.as_ref())),
        }
    }

    /// Starts the writer of a connection; `publish` is the topic a publisher publishes to.
    fn writer(&self, write: WriteHalf<TcpStream>, publish: Option<String>) -> Writer {
        let (publishes, queued) = flume::bounded(QUEUED_PUBLISHES);
        let (controls, control_queue) = flume::unbounded();
        let workload = &self.plan.workload;
        let output = Output {
            write,
            level: self.level(),
            templates: publish.map(|topic| Templates::new(topic, workload.qos, self.level())),
            buffer: BytesMut::with_capacity(WRITE_BYTES),
        };
        let ping = (workload.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(workload.keep_alive) * 500));
        let task = glommio::spawn_local(output.run(queued, control_queue, ping));
        Writer {
            publishes,
            controls,
            task,
        }
    }

    async fn publish(self) -> Result<(), String> {
        let name = format!("publisher {}", self.id);
        let result = self
            .publishing()
            .await
            .map_err(|error| format!("{name}: {error}"));
        self.shared.producers_left.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn publishing(&self) -> Result<(), String> {
        let workload = &self.plan.workload;
        let (frames, write) = self
            .open(format!("coremq-perf-pub-{}", self.id), None)
            .await?;
        let topic = self.id % workload.topics;
        let writer = self.writer(write, Some(self.plan.topic(topic)));
        let acks = Rc::new(Acks {
            window: Semaphore::new(workload.inflight as u64),
            sent: RefCell::default(),
            fanout: self.plan.fanout[topic],
        });
        while self.shared.consumers_ready.load(Ordering::SeqCst) < workload.subscribers {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let reader = glommio::spawn_local(read_acks(
            frames,
            writer.controls.clone(),
            acks.clone(),
            self.stats.clone(),
            self.shared.clone(),
        ));

        let pacing = Pacing::new(
            self.id,
            workload.publishers,
            workload.messages,
            self.plan.rate,
        );
        let size = workload.payload;
        let qos = workload.qos;
        let mut rng = rand::rng();
        let mut sent = 0u64;
        let mut packet_id = 0u16;
        while !self.shared.stop_producing.load(Ordering::Relaxed) && pacing.wants(sent) {
            pacing.wait(sent).await;
            let length = rng.random_range(size.min..=size.max);
            if qos != QoS::AtMostOnce {
                acks.window
                    .acquire(1)
                    .await
                    .map_err(|error| error.to_string())?;
                packet_id = acks.next_id(packet_id);
                acks.sent
                    .borrow_mut()
                    .push_back((packet_id, Instant::now(), length));
            }
            let out = Outgoing {
                packet_id,
                sent_us: now_us(),
                length,
            };
            if writer.publishes.send_async(out).await.is_err() {
                break;
            }
            if qos == QoS::AtMostOnce {
                let mut stats = self.stats.borrow_mut();
                stats.produced += 1;
                stats.produced_bytes += length as u64;
                stats.last_produced = Some(Instant::now());
                self.shared.produced.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .deliveries
                    .fetch_add(acks.fanout, Ordering::Relaxed);
            }
            sent += 1;
            self.shared.offered.fetch_add(1, Ordering::Relaxed);
            if sent.is_multiple_of(32) {
                futures_lite::future::yield_now().await;
            }
        }
        if qos != QoS::AtMostOnce {
            let all = workload.inflight as u64;
            let acknowledged = async { acks.window.acquire(all).await.is_ok() };
            let late = async {
                glommio::timer::sleep(ACK_GRACE).await;
                false
            };
            if !or(acknowledged, late).await {
                let missing = acks.sent.borrow().len() as u64;
                self.stats
                    .borrow_mut()
                    .error("unacknowledged_at_end".into(), missing);
            }
        }
        writer.finish().await?;
        reader.await
    }

    async fn subscribe(self) -> Result<(), String> {
        self.subscribing()
            .await
            .map_err(|error| format!("subscriber {}: {error}", self.id))
    }

    async fn subscribing(&self) -> Result<(), String> {
        let (mut frames, write) = self
            .open(
                format!("coremq-perf-sub-{}", self.id),
                Some(self.plan.filter(self.id)),
            )
            .await?;
        let writer = self.writer(write, None);
        self.shared.consumers_ready.fetch_add(1, Ordering::SeqCst);
        // Asks the broker to end the connection once the run stops consuming; the broker's
        // closing it ends the loop below.
        let stopper = glommio::spawn_local({
            let (shared, controls) = (self.shared.clone(), writer.controls.clone());
            async move {
                while !shared.stop_consuming.load(Ordering::Relaxed) {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
                let _ = controls.send(Control::Disconnect);
            }
        });
        let level = self.level();
        loop {
            let packet = match frames.next().await? {
                Some(packet) => packet,
                None if self.shared.stop_consuming.load(Ordering::Relaxed) => break,
                None => return Err("the broker closed the connection".into()),
            };
            match packet {
                Packet::Publish(publish) => {
                    let now = now_us();
                    let mut stats = self.stats.borrow_mut();
                    if let Some(sent) = publish.payload.get(..8) {
                        let sent = u64::from_be_bytes(sent.try_into().expect("8 bytes"));
                        stats.e2e.saturating_record(now.saturating_sub(sent).max(1));
                    }
                    stats.consumed += 1;
                    stats.consumed_bytes += publish.payload.len() as u64;
                    stats.last_consumed = Some(Instant::now());
                    self.shared.consumed.fetch_add(1, Ordering::Relaxed);
                    let answer = match publish.qos {
                        QoS::AtMostOnce => None,
                        QoS::AtLeastOnce => Some(kind::PUBACK),
                        QoS::ExactlyOnce => Some(kind::PUBREC),
                    };
                    if let Some(kind) = answer {
                        let _ = writer.controls.send(Control::Ack(kind, publish.packet_id));
                    }
                }
                Packet::PubRel(ack) => {
                    let _ = writer
                        .controls
                        .send(Control::Ack(kind::PUBCOMP, ack.packet_id));
                }
                Packet::PingResp => {}
                Packet::Disconnect(disconnect) => {
                    return Err(disconnected(&disconnect, level));
                }
                other => return Err(unexpected("a PUBLISH", Some(&other))),
            }
        }
        drop(stopper);
        writer.finish().await
    }
}

/// A publisher's unacknowledged messages and the window they take.
struct Acks {
    window: Semaphore,
    /// Packet id, send time and payload bytes, oldest first.
    sent: RefCell<VecDeque<(u16, Instant, usize)>>,
    /// Subscribers each message reaches.
    fanout: u64,
}

impl Acks {
    /// The packet id after `last` that is not in flight (0 is no packet id).
    fn next_id(&self, mut last: u16) -> u16 {
        let sent = self.sent.borrow();
        loop {
            last = last.checked_add(1).unwrap_or(1);
            if !sent.iter().any(|(id, ..)| *id == last) {
                return last;
            }
        }
    }

    /// Takes `packet_id` out of flight: its send time and payload bytes.
    fn complete(&self, packet_id: u16) -> Option<(Instant, usize)> {
        let mut sent = self.sent.borrow_mut();
        let at = sent.iter().position(|(id, ..)| *id == packet_id)?;
        let (_, sent_at, length) = sent.remove(at)?;
        self.window.signal(1);
        Some((sent_at, length))
    }
}

/// Reads a publisher's acknowledgements until the broker closes the connection.
async fn read_acks(
    mut frames: Frames,
    controls: flume::Sender<Control>,
    acks: Rc<Acks>,
    stats: Rc<RefCell<Stats>>,
    shared: Arc<Shared>,
) -> Result<(), String> {
    let level = frames.level;
    while let Some(packet) = frames.next().await? {
        let acknowledged = match packet {
            Packet::PubAck(ack) | Packet::PubComp(ack) => ack,
            Packet::PubRec(ack) => {
                if ack.code >= 0x80 {
                    acks.complete(ack.packet_id);
                    stats
                        .borrow_mut()
                        .error(format!("pubrec_{:#04x}", ack.code), 1);
                } else {
                    let _ = controls.send(Control::Ack(kind::PUBREL, ack.packet_id));
                }
                continue;
            }
            Packet::PingResp => continue,
            Packet::Disconnect(disconnect) => return Err(disconnected(&disconnect, level)),
            other => return Err(unexpected("an acknowledgement", Some(&other))),
        };
        let Some((sent_at, length)) = acks.complete(acknowledged.packet_id) else {
            return Err(format!(
                "an acknowledgement of packet {}, which is not in flight",
                acknowledged.packet_id
            ));
        };
        let mut stats = stats.borrow_mut();
        // 0x10: no matching subscribers, which is still a success.
        if acknowledged.code >= 0x80 {
            stats.error(format!("puback_{:#04x}", acknowledged.code), 1);
            continue;
        }
        let now = Instant::now();
        let latency = now.duration_since(sent_at).as_micros() as u64;
        stats.ack.saturating_record(latency.max(1));
        stats.produced += 1;
        stats.produced_bytes += length as u64;
        stats.last_produced = Some(now);
        shared.produced.fetch_add(1, Ordering::Relaxed);
        shared.deliveries.fetch_add(acks.fanout, Ordering::Relaxed);
    }
    Ok(())
}

fn disconnected(disconnect: &codec::Disconnect, level: Level) -> String {
    match level {
        Level::V5 => format!(
            "the broker sent DISCONNECT, reason {:#04x} {}",
            disconnect.code,
            disconnect.properties.reason_string.as_deref().unwrap_or("")
        ),
        _ => "the broker sent DISCONNECT".into(),
    }
}

fn unexpected(wanted: &str, got: Option<&Packet>) -> String {
    match got {
        Some(packet) => format!("expected {wanted}, the broker sent {}", packet.name()),
        None => format!("expected {wanted}, the broker closed the connection"),
    }
}

async fn write_packet(
    write: &mut WriteHalf<TcpStream>,
    packet: &Packet,
    level: Level,
) -> Result<(), String> {
    let mut bytes = BytesMut::new();
    codec::encode(packet, level, &mut bytes).map_err(|error| error.to_string())?;
    write
        .write_all(&bytes)
        .await
        .map_err(|error| format!("writing {}: {error}", packet.name()))
}

/// Packets read off a connection.
struct Frames {
    read: ReadHalf<TcpStream>,
    level: Level,
    buffer: BytesMut,
    chunk: Box<[u8]>,
}

impl Frames {
    fn new(read: ReadHalf<TcpStream>, level: Level) -> Frames {
        Frames {
            read,
            level,
            buffer: BytesMut::new(),
            chunk: vec![0; READ_BYTES].into_boxed_slice(),
        }
    }

    /// The next packet; `None` once the broker closed the connection between packets.
    async fn next(&mut self) -> Result<Option<Packet>, String> {
        loop {
            if let Some(packet) = self.parse()? {
                return Ok(Some(packet));
            }
            let read = self
                .read
                .read(&mut self.chunk)
                .await
                .map_err(|error| format!("reading: {error}"))?;
            if read == 0 {
                return match self.buffer.is_empty() {
                    true => Ok(None),
                    false => Err("the broker closed the connection within a packet".into()),
                };
            }
            self.buffer.extend_from_slice(&self.chunk[..read]);
        }
    }

    fn parse(&mut self) -> Result<Option<Packet>, String> {
        let malformed = |error: codec::DecodeError| format!("a malformed packet: {error}");
        let Some(length) = codec::remaining_length(&self.buffer).map_err(malformed)? else {
            return Ok(None);
        };
        if length > PACKET_BYTES_MAX {
            return Err(format!("a packet of {length} bytes"));
        }
        let header = 1
            + self.buffer[1..]
                .iter()
                .position(|byte| byte & 0x80 == 0)
                .expect("a complete remaining length")
            + 1;
        if self.buffer.len() < header + length {
            return Ok(None);
        }
        let mut frame = self.buffer.split_to(header + length);
        let body = frame.split_off(header).freeze();
        codec::decode(frame[0], body, self.level)
            .map(Some)
            .map_err(malformed)
    }
}

/// A PUBLISH for the writer to send.
struct Outgoing {
    packet_id: u16,
    sent_us: u64,
    length: usize,
}

/// What else a writer sends.
enum Control {
    /// PUBACK, PUBREC, PUBREL or PUBCOMP of a packet id.
    Ack(u8, u16),
    /// DISCONNECT, after which the writer ends.
    Disconnect,
}

/// The queues of a connection's writer, and the task.
struct Writer {
    publishes: flume::Sender<Outgoing>,
    controls: flume::Sender<Control>,
    task: glommio::Task<Result<(), String>>,
}

impl Writer {
    /// Sends DISCONNECT after everything queued and waits for the writer to end.
    async fn finish(self) -> Result<(), String> {
        let _ = self.controls.send(Control::Disconnect);
        drop(self.publishes);
        self.task.await
    }
}

/// The writing half of a connection.
struct Output {
    write: WriteHalf<TcpStream>,
    level: Level,
    templates: Option<Templates>,
    buffer: BytesMut,
}

impl Output {
    async fn run(
        mut self,
        publishes: flume::Receiver<Outgoing>,
        controls: flume::Receiver<Control>,
        ping: Option<Duration>,
    ) -> Result<(), String> {
        let mut publishing = true;
        loop {
            let first = async {
                match publishing {
                    true => match publishes.recv_async().await {
                        Ok(publish) => Next::Publish(publish),
                        Err(_) => Next::PublishesEnded,
                    },
                    false => std::future::pending().await,
                }
            };
            let control = async {
                match controls.recv_async().await {
                    Ok(control) => Next::Control(control),
                    Err(_) => Next::Control(Control::Disconnect),
                }
            };
            let idle = async {
                match ping {
                    Some(period) => glommio::timer::sleep(period).await,
                    None => std::future::pending().await,
                }
                Next::Ping
            };
            let mut ending = false;
            match or(control, or(first, idle)).await {
                Next::Publish(publish) => self.publish(&publish),
                Next::Control(control) => ending |= self.control(control, &publishes)?,
                Next::PublishesEnded => {
                    publishing = false;
                    continue;
                }
                Next::Ping => self.packet(&Packet::PingReq)?,
            }
            // What else is queued goes in the same write.
            while !ending && self.buffer.len() < WRITE_BYTES {
                if let Ok(control) = controls.try_recv() {
                    ending |= self.control(control, &publishes)?;
                } else if let Ok(publish) = publishes.try_recv() {
                    self.publish(&publish);
                } else {
                    break;
                }
            }
            self.write
                .write_all(&self.buffer)
                .await
                .map_err(|error| format!("writing: {error}"))?;
            self.buffer.clear();
            if ending {
                let _ = self.write.close().await;
                return Ok(());
            }
        }
    }

    fn publish(&mut self, publish: &Outgoing) {
        let templates = self.templates.as_mut().expect("a publisher's writer");
        templates.write(publish, &mut self.buffer);
    }

    /// Encodes `control`; true when it ends the connection (after the publishes queued).
    fn control(
        &mut self,
        control: Control,
        publishes: &flume::Receiver<Outgoing>,
    ) -> Result<bool, String> {
        match control {
            Control::Ack(kind, packet_id) => {
                let ack = Ack {
                    packet_id,
                    ..Ack::default()
                };
                let packet = match kind {
                    kind::PUBACK => Packet::PubAck(ack),
                    kind::PUBREC => Packet::PubRec(ack),
                    kind::PUBREL => Packet::PubRel(ack),
                    _ => Packet::PubComp(ack),
                };
                self.packet(&packet)?;
                Ok(false)
            }
            Control::Disconnect => {
                for publish in publishes.try_iter() {
                    self.publish(&publish);
                }
                self.packet(&Packet::Disconnect(codec::Disconnect::default()))?;
                Ok(true)
            }
        }
    }

    fn packet(&mut self, packet: &Packet) -> Result<(), String> {
        codec::encode(packet, self.level, &mut self.buffer).map_err(|error| error.to_string())
    }
}

/// What a writer waits for.
enum Next {
    Publish(Outgoing),
    PublishesEnded,
    Control(Control),
    Ping,
}

/// A publisher's PUBLISH packets, encoded once per payload length: each message changes
/// only its packet id and the send time in the payload's first 8 bytes.
struct Templates {
    topic: String,
    qos: QoS,
    level: Level,
    filler: Vec<u8>,
    by_length: HashMap<usize, Template>,
}

struct Template {
    bytes: Vec<u8>,
    payload_at: usize,
}

impl Templates {
    fn new(topic: String, qos: QoS, level: Level) -> Templates {
        let mut rng = rand::rng();
        Templates {
            topic,
            qos,
            level,
            filler: (0..64).map(|_| rng.random_range(b'A'..=b'Z')).collect(),
            by_length: HashMap::new(),
        }
    }

    fn write(&mut self, publish: &Outgoing, out: &mut BytesMut) {
        let template = match self.by_length.get_mut(&publish.length) {
            Some(template) => template,
            None => {
                let payload: Bytes = (0..publish.length)
                    .map(|at| self.filler[at % self.filler.len()])
                    .collect();
                let packet = Packet::Publish(Publish {
                    qos: self.qos,
                    topic: self.topic.clone(),
                    packet_id: u16::from(self.qos != QoS::AtMostOnce),
                    payload,
                    ..Publish::default()
                });
                let mut bytes = BytesMut::new();
                codec::encode(&packet, self.level, &mut bytes).expect("a PUBLISH within limits");
                let payload_at = bytes.len() - publish.length;
                self.by_length.entry(publish.length).or_insert(Template {
                    bytes: bytes.to_vec(),
                    payload_at,
                })
            }
        };
        let at = template.payload_at;
        template.bytes[at..at + 8].copy_from_slice(&publish.sent_us.to_be_bytes());
        if self.qos != QoS::AtMostOnce {
            // The packet id comes right before the properties (5.0: none, one byte) and the
            // payload.
            let id_at = at - 2 - usize::from(self.level == Level::V5);
            template.bytes[id_at..id_at + 2].copy_from_slice(&publish.packet_id.to_be_bytes());
        }
        out.extend_from_slice(&template.bytes);
    }
}

fn summarise(plan: &Plan, shape: &Shape, threads: usize, measured: &run::Measured) -> Value {
    let totals = &measured.totals;
    let workload = &plan.workload;
    let mut errors = totals.errors.clone();
    // QoS 0 may lose messages; QoS 1 and 2 may not.
    if workload.qos != QoS::AtMostOnce && measured.undelivered > 0 {
        *errors.entry("undelivered".into()).or_default() += measured.undelivered;
    }
    let produced_seconds = measured.seconds_to(totals.last_produced);
    let consumed_seconds = measured.seconds_to(totals.last_consumed);
    json!({
        "mode": "mqtt",
        "failure": measured.failure,
        "seconds": produced_seconds.max(consumed_seconds),
        "produced": if shape.produce {
            run::rates(totals.produced, totals.produced_bytes, produced_seconds)
        } else {
            Value::Null
        },
        "consumed": if shape.consume {
            run::rates(totals.consumed, totals.consumed_bytes, consumed_seconds)
        } else {
            Value::Null
        },
        "undelivered": measured.undelivered,
        "ack_latency_ms": percentiles(&totals.ack),
        "e2e_latency_ms": if shape.produce { percentiles(&totals.e2e) } else { Value::Null },
        "errors": errors,
        "config": {
            "broker": workload.broker,
            "mqtt_version": match workload.mqtt_version {
                Level::V31 => "3.1",
                Level::V311 => "3.1.1",
                Level::V5 => "5",
            },
            "publishers": workload.publishers,
            "subscribers": workload.subscribers,
            "qos": workload.qos as u8,
            "payload": format!("{}..{}", workload.payload.min, workload.payload.max),
            "topics": workload.topics,
            "wildcard": workload.wildcard,
            "offered_messages_per_s": plan.rate,
            "inflight": workload.inflight,
            "keep_alive_s": workload.keep_alive,
            "threads": threads,
            "warmup_s": workload.warmup.as_secs_f64(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A patched template decodes to the message it stands for.
    #[test]
    fn templates_patch_the_packet_id_and_send_time() {
        for level in [Level::V31, Level::V311, Level::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut templates = Templates::new("t/7".into(), qos, level);
                for (packet_id, length) in [(513, 100), (65535, 300), (2, 100)] {
                    let publish = Outgoing {
                        packet_id,
                        sent_us: 0x0102_0304_0506_0708,
                        length,
                    };
                    let mut out = BytesMut::new();
                    templates.write(&publish, &mut out);
                    let header = if length < 128 { 2 } else { 3 };
                    let body = Bytes::copy_from_slice(&out[header..]);
                    let Packet::Publish(decoded) = codec::decode(out[0], body, level).unwrap()
                    else {
                        panic!("not a PUBLISH");
                    };
                    assert_eq!(decoded.topic, "t/7");
                    assert_eq!(decoded.qos, qos);
                    let expected_id = if qos == QoS::AtMostOnce { 0 } else { packet_id };
                    assert_eq!(decoded.packet_id, expected_id);
                    assert_eq!(decoded.payload.len(), length);
                    assert_eq!(decoded.payload[..8], publish.sent_us.to_be_bytes());
                }
            }
        }
    }
}
