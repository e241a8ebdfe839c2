//! Runs producers and consumers on client shards (one glommio executor per thread), each
//! with its own connections, and streams what they measure to the main thread once a
//! second.
//!
//! - A producer sends at its share of the offered rate (or as fast as the producer takes
//!   records), with the send time in microseconds since the epoch in the first 8 bytes of
//!   each value; the acknowledgement latency runs from `send` to the batch's answer.
//! - A consumer reads its share of the partitions (or what its consumer group assigns it)
//!   and, in `e2e`, takes the end-to-end latency from that send time.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use coremq_engine::Timestamp;
use coremq_net::client::{
    ClientConfig, Cluster, Consumer, ConsumerConfig, Error, Fetched, GroupConfig, GroupConsumer,
    Producer, ProducerConfig, ProducerRecord, StartOffset,
};
use glommio::{LocalExecutorBuilder, Placement};
use rand::Rng;

use crate::args::Workload;
use crate::stats::Stats;

/// Registered I/O memory per client executor (the memlock limit is shared by all).
const IO_MEMORY: usize = 1 << 20;
/// How often shards report.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What one run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub workload: Workload,
    pub produce: bool,
    pub consume: bool,
    /// Records/s for all producers together.
    pub rate: Option<f64>,
    /// Records for all producers together (or, consuming only, to consume).
    pub records: Option<u64>,
    pub start: StartOffset,
    pub partitions: i32,
}

impl Plan {
    /// Producers this run starts.
    pub fn producers(&self) -> usize {
        if self.produce {
            self.workload.producers
        } else {
            0
        }
    }

    /// Consumers this run starts.
    pub fn consumers(&self) -> usize {
        if self.consume {
            self.workload.consumers
        } else {
            0
        }
    }
}

/// Flags and counters shared by the main thread and every shard.
#[derive(Default)]
pub struct Shared {
    pub stop_producing: AtomicBool,
    pub stop_consuming: AtomicBool,
    /// Records handed to the producers so far by everyone.
    pub offered: AtomicU64,
    /// Records acknowledged, and consumed, so far by everyone.
    pub produced: AtomicU64,
    pub consumed: AtomicU64,
    /// Deliveries the acknowledged records owe the consumers (each record once per
    /// consumer it reaches); the run drains until consumers have them all.
    pub deliveries: AtomicU64,
    pub producers_left: AtomicUsize,
    pub consumers_ready: AtomicUsize,
}

pub enum Message {
    /// Shard `shard`'s measurements for interval `index` (counted from the start).
    Interval {
        shard: usize,
        index: u64,
        stats: Box<Stats>,
    },
    /// A shard is done; its last interval came before.
    Done { shard: usize },
    /// A producer or consumer could not start.
    Failed(String),
}

/// Starts the shards. Producers wait until every consumer has its partitions.
pub fn start(
    plan: &Plan,
    threads: usize,
    shared: &Arc<Shared>,
    started: Instant,
) -> (Vec<JoinHandle<()>>, flume::Receiver<Message>) {
    let (reports, messages) = flume::unbounded();
    let (producers, consumers) = (plan.producers(), plan.consumers());
    shared.producers_left.store(producers, Ordering::SeqCst);
    let mut handles = Vec::new();
    for thread in 0..threads {
        let plan = plan.clone();
        let shared = shared.clone();
        let reports = reports.clone();
        let producers: Vec<usize> = (thread..producers).step_by(threads).collect();
        let consumers: Vec<usize> = (thread..consumers).step_by(threads).collect();
        if producers.is_empty() && consumers.is_empty() {
            continue;
        }
        let shard = handles.len();
        handles.push(spawn_shard(shard, move || async move {
            let work = Work {
                shard,
                producers,
                consumers,
            };
            run_shard(plan, work, shared, reports, started).await;
        }));
    }
    (handles, messages)
}

/// Runs `body` on a client executor of its own, named after `shard`; the thread returned
/// ends when it does.
pub fn spawn_shard<G, F>(shard: usize, body: G) -> JoinHandle<()>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name(&format!("perf-{shard}"))
        .io_memory(IO_MEMORY)
        .spawn(body)
        .expect("client executor starts");
    std::thread::spawn(move || {
        let _ = handle.join();
    })
}

/// One shard's share: the producers and consumers (numbered across the run) it runs.
struct Work {
    shard: usize,
    producers: Vec<usize>,
    consumers: Vec<usize>,
}

async fn run_shard(
    plan: Plan,
    work: Work,
    shared: Arc<Shared>,
    reports: flume::Sender<Message>,
    started: Instant,
) {
    let Work {
        shard,
        producers,
        consumers,
    } = work;
    let stats = Rc::new(RefCell::new(Stats::default()));
    let mut tasks = Vec::new();
    for id in consumers {
        let work = consume(plan.clone(), id, stats.clone(), shared.clone());
        tasks.push(glommio::spawn_local(work));
    }
    for id in producers {
        let work = produce(plan.clone(), id, stats.clone(), shared.clone());
        tasks.push(glommio::spawn_local(work));
    }
    report_until_done(shard, tasks, stats, reports, started).await;
}

/// Reports what `stats` gathered once an interval until every task is done, then what the
/// last interval holds and that the shard is done; a task's error is reported as a failure.
pub async fn report_until_done(
    shard: usize,
    tasks: Vec<glommio::Task<Result<(), String>>>,
    stats: Rc<RefCell<Stats>>,
    reports: flume::Sender<Message>,
    started: Instant,
) {
    let report = {
        let stats = stats.clone();
        let reports = reports.clone();
        move |index: u64| {
            let interval = std::mem::take(&mut *stats.borrow_mut());
            let _ = reports.send(Message::Interval {
                shard,
                index,
                stats: Box::new(interval),
            });
        }
    };
    let ticks = Rc::new(std::cell::Cell::new(0u64));
    let ticker = glommio::spawn_local({
        let ticks = ticks.clone();
        let report = report.clone();
        async move {
            loop {
                let at = started + INTERVAL * (ticks.get() + 1) as u32;
                glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
                report(ticks.get());
                ticks.set(ticks.get() + 1);
            }
        }
    });
    for task in tasks {
        if let Err(error) = task.await {
            let _ = reports.send(Message::Failed(error));
        }
    }
    // Dropping the ticker cancels it; what the current interval holds goes now.
    drop(ticker);
    report(ticks.get());
    let _ = reports.send(Message::Done { shard });
}

/// A cluster connection of its own for producer or consumer `id`; errors name it.
async fn connect(plan: &Plan, role: &str, id: usize) -> Result<Rc<Cluster>, String> {
    let mut config = ClientConfig::new(&plan.workload.bootstrap);
    config.client_id = format!("coremq-perf-{role}-{id}");
    Cluster::connect(config)
        .await
        .map_err(|error| format!("{role} {id}: {error}"))
}

/// One sender's share of a run: how many it sends (of a total, where one is set) and when
/// each is due (at its share of the offered rate, where one is set).
pub struct Pacing {
    began: Instant,
    /// Seconds between two of this sender's records.
    spacing: Option<f64>,
    mine: Option<u64>,
}

impl Pacing {
    /// Sender `id` of `senders`, sharing `total` records and `rate` records/s.
    pub fn new(id: usize, senders: usize, total: Option<u64>, rate: Option<f64>) -> Pacing {
        let senders = senders.max(1) as u64;
        Pacing {
            began: Instant::now(),
            spacing: rate.map(|rate| senders as f64 / rate),
            mine: total.map(|total| total / senders + u64::from((id as u64) < total % senders)),
        }
    }

    /// Whether record number `sent` (from 0) is still this sender's to send.
    pub fn wants(&self, sent: u64) -> bool {
        self.mine.is_none_or(|mine| sent < mine)
    }

    /// Waits until record number `sent` is due.
    pub async fn wait(&self, sent: u64) {
        if let Some(spacing) = self.spacing {
            let due = self.began + Duration::from_secs_f64(spacing * sent as f64);
            let early = due.saturating_duration_since(Instant::now());
            if early > Duration::from_micros(200) {
                glommio::timer::sleep(early).await;
            }
        }
    }
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

async fn produce(
    plan: Plan,
    id: usize,
    stats: Rc<RefCell<Stats>>,
    shared: Arc<Shared>,
) -> Result<(), String> {
    let workload = &plan.workload;
    let cluster = connect(&plan, "producer", id).await?;
    let config = ProducerConfig {
        acks: workload.acks,
        compression: workload.compression,
        batch_size: workload.batch_size,
        linger: Duration::from_millis(workload.linger_ms),
        max_in_flight: workload.max_in_flight,
        idempotent: workload.acks == -1 && !workload.no_idempotence,
        ..ProducerConfig::default()
    };
    let reported = stats.clone();
    let counter = shared.clone();
    let on_batch = Box::new(move |report: &coremq_net::client::BatchReport<'_>| {
        let mut stats = reported.borrow_mut();
        let count = report.enqueued.len() as u64;
        match report.result {
            Ok(_) => {
                let now = Instant::now();
                for enqueued in report.enqueued {
                    let latency = now.duration_since(*enqueued).as_micros() as u64;
                    stats.ack.saturating_record(latency.max(1));
                }
                stats.produced += count;
                stats.produced_bytes += report.payload as u64;
                stats.last_produced = Some(now);
                counter.produced.fetch_add(count, Ordering::Relaxed);
                counter.deliveries.fetch_add(count, Ordering::Relaxed);
            }
            Err(error) => stats.error(error.kind(), count),
        }
    });
    let producer = Producer::with_reports(cluster, config, Some(on_batch))
        .await
        .map_err(|error| format!("producer {id}: {error}"))?;
    while shared.consumers_ready.load(Ordering::SeqCst) < plan.consumers() {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }

    let pacing = Pacing::new(id, workload.producers, plan.records, plan.rate);
    let size = workload.record_size;
    let mut rng = rand::rng();
    let filler: Vec<u8> = (0..size.max + 4096)
        .map(|_| rng.random_range(b'A'..=b'Z'))
        .collect();
    let keys: Vec<String> = (0..workload.keys.min(1 << 20))
        .map(|n| format!("key-{n}"))
        .collect();
    let mut value = Vec::with_capacity(size.max);
    let mut sent = 0u64;
    while !shared.stop_producing.load(Ordering::Relaxed) && pacing.wants(sent) {
        pacing.wait(sent).await;
        let length = rng.random_range(size.min..=size.max);
        let offset = rng.random_range(0..4096);
        let now = now_us();
        value.clear();
        value.extend_from_slice(&now.to_be_bytes());
        value.extend_from_slice(&filler[offset..offset + length - 8]);
        let key = (!keys.is_empty()).then(|| keys[rng.random_range(0..keys.len())].as_bytes());
        let record = ProducerRecord {
            topic: &workload.topic,
            key,
            value: Some(&value),
            timestamp: Some(Timestamp((now / 1000) as i64)),
            ..ProducerRecord::default()
        };
        if let Err(error) = producer.send(record).await {
            stats.borrow_mut().error(error.kind(), 1);
        }
        sent += 1;
        shared.offered.fetch_add(1, Ordering::Relaxed);
        if sent.is_multiple_of(32) {
            futures_lite::future::yield_now().await;
        }
    }
    producer.flush().await;
    shared.producers_left.fetch_sub(1, Ordering::SeqCst);
    Ok(())
}

async fn consume(
    plan: Plan,
    id: usize,
    stats: Rc<RefCell<Stats>>,
    shared: Arc<Shared>,
) -> Result<(), String> {
    let cluster = connect(&plan, "consumer", id).await?;
    let source = Source::open(&plan, id, cluster)
        .await
        .map_err(|error| format!("consumer {id}: {error}"))?;
    shared.consumers_ready.fetch_add(1, Ordering::SeqCst);
    let Some(source) = source else {
        return Ok(());
    };
    let decompressed_max = source.config().decompressed_batch_max_bytes;
    while !shared.stop_consuming.load(Ordering::Relaxed) {
        let fetched = match source.poll().await {
            Ok(fetched) => fetched,
            Err(error) => {
                stats.borrow_mut().error(error.kind(), 1);
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = now_us();
        let mut stats = stats.borrow_mut();
        for part in fetched {
            let records = match part.records(decompressed_max) {
                Ok(records) => records,
                Err(error) => {
                    stats.error(error.kind(), 1);
                    continue;
                }
            };
            for record in &records {
                let key = record.key.as_ref().map_or(0, |key| key.len());
                let value = record.value.as_deref().unwrap_or_default();
                stats.consumed_bytes += (key + value.len()) as u64;
                if plan.produce && value.len() >= 8 {
                    let sent = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
                    stats.e2e.saturating_record(now.saturating_sub(sent).max(1));
                }
            }
            stats.consumed += records.len() as u64;
            stats.last_consumed = Some(Instant::now());
            shared
                .consumed
                .fetch_add(records.len() as u64, Ordering::Relaxed);
        }
    }
    if let Source::Group(member) = source {
        member
            .leave()
            .await
            .map_err(|error| format!("consumer {id} leaving the group: {error}"))?;
    }
    Ok(())
}

/// Where a consumer's partitions come from.
enum Source {
    /// Its share of the partitions, every `consumers`-th from its index.
    Assigned(Consumer),
    /// What its consumer group assigns it.
    Group(Box<GroupConsumer>),
}

impl Source {
    /// The consumer for `id`; `None` when it has no partition to read.
    async fn open(plan: &Plan, id: usize, cluster: Rc<Cluster>) -> Result<Option<Source>, Error> {
        let workload = &plan.workload;
        let config = ConsumerConfig {
            max_wait: Duration::from_millis(100),
            reset: StartOffset::Earliest,
            ..ConsumerConfig::default()
        };
        if let Some(group) = &workload.group {
            let config = ConsumerConfig {
                reset: plan.start,
                ..config
            };
            let member =
                GroupConsumer::join(cluster, config, GroupConfig::new(group), &[&workload.topic])
                    .await?;
            return Ok(Some(Source::Group(Box::new(member))));
        }
        let mine: Vec<i32> = (id as i32..plan.partitions)
            .step_by(workload.consumers)
            .collect();
        if mine.is_empty() {
            return Ok(None);
        }
        let consumer = Consumer::new(cluster, config);
        consumer.assign(&workload.topic, &mine, plan.start).await?;
        Ok(Some(Source::Assigned(consumer)))
    }

    fn config(&self) -> &ConsumerConfig {
        match self {
            Source::Assigned(consumer) => consumer.config(),
            Source::Group(member) => member.config(),
        }
    }

    async fn poll(&self) -> Result<Vec<Fetched>, Error> {
        match self {
            Source::Assigned(consumer) => consumer.poll().await,
            Source::Group(member) => member.poll().await,
        }
    }
}
