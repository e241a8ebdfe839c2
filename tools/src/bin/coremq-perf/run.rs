//! One measured run: prepare the topic, start the shards, gather their intervals (progress
//! lines, the histogram log, totals after the warm-up), decide when to stop, summarise.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use coremq_net::client::{ClientConfig, Cluster, StartOffset};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::args::{MB, Workload};
use crate::stats::{Stats, percentiles, print_summary};
use crate::workload::{self, INTERVAL, Message, Plan, Shared};

/// How long a run without a duration or a record count measures.
const DEFAULT_DURATION: Duration = Duration::from_secs(30);
/// After the producers stop, how long consumers may take to catch up.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// After the producers stop, consumers that receive nothing for this long are done (what
/// was not delivered by then, a QoS 0 subscriber may never get).
const DRAIN_IDLE: Duration = Duration::from_secs(3);
/// A consumer-only run that reads nothing for this long ends.
const IDLE_LIMIT: Duration = Duration::from_secs(10);
/// After the duration and the drain, how long the shards may take to stop before the run
/// ends without them (a cluster that stopped answering leaves sends waiting).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A run with nothing acknowledged or consumed for this long ends as failed.
const STALL_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Produce,
    Consume,
    E2e,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::E2e => "e2e",
        }
    }
}

/// Runs `mode` as the options say, prints the summary and returns it as JSON; a run that
/// failed (see [`execute`]) still has its summary, with the failure in it.
pub fn measure(workload: Workload, mode: Mode) -> Result<Value, String> {
    let summary = execute(&workload, mode, true)?;
    print_summary(&summary);
    Ok(summary)
}

/// Why a summary's run did not do what it was asked, if it did not: the run failed or ended
/// without its shards, or counted errors.
pub fn failed(summary: &Value) -> Option<String> {
    if let Some(failure) = summary["failure"].as_str() {
        return Some(failure.to_string());
    }
    let errors = error_total(summary);
    (errors > 0).then(|| format!("{errors} records failed: {}", summary["errors"]))
}

/// The records a summary counts as failed, all kinds together.
pub fn error_total(summary: &Value) -> u64 {
    summary["errors"]
        .as_object()
        .map_or(0, |errors| errors.values().filter_map(Value::as_u64).sum())
}

/// Runs `mode` once and returns its JSON summary; `progress` prints the per-second lines.
pub fn execute(workload: &Workload, mode: Mode, progress: bool) -> Result<Value, String> {
    let threads = workload
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |cores| cores.get()));
    let partitions = prepare_topic(workload)?;
    if partitions != workload.partitions {
        eprintln!(
            "coremq-perf: topic {} exists with {partitions} partitions; --partitions {} \
             does not change it, the run uses {partitions}",
            workload.topic, workload.partitions
        );
    }
    let start = match (mode, workload.from.as_str()) {
        (Mode::E2e, _) | (_, "latest") => StartOffset::Latest,
        _ => StartOffset::Earliest,
    };
    let mean_record_bytes = workload.record_size.mean() + key_bytes(workload);
    let plan = Plan {
        workload: workload.clone(),
        produce: mode != Mode::Consume,
        consume: mode != Mode::Produce,
        rate: workload.rate.records_per_second(mean_record_bytes),
        records: workload.records,
        start,
        partitions,
    };
    let duration = duration_of(workload.duration, workload.records);
    let shape = Shape {
        produce: plan.produce,
        consume: plan.consume,
        records: plan.records,
        duration,
        warmup: workload.warmup,
        histogram_out: workload.histogram_out.clone(),
    };
    let measured = gather(&shape, progress, |shared, started| {
        workload::start(&plan, threads, shared, started)
    })?;
    Ok(summarise(mode, &plan, threads, &measured))
}

/// Creates the topic when missing; returns its partition count.
fn prepare_topic(workload: &Workload) -> Result<i32, String> {
    let config = ClientConfig::new(&workload.bootstrap);
    let topic = workload.topic.clone();
    let (partitions, replication) = (workload.partitions, workload.replication_factor);
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let cluster = Cluster::connect(config).await?;
            cluster
                .create_topic(&topic, partitions, replication, &[])
                .await?;
            Ok(cluster.topic(&topic).await?.partitions.len() as i32)
        })
        .map_err(|error| format!("starting a client executor: {error}"))?
        .join()
        .map_err(|error| format!("client executor: {error}"))?
        .map_err(|error: coremq_net::client::Error| {
            format!("preparing topic {}: {error}", workload.topic)
        })
}

fn key_bytes(workload: &Workload) -> f64 {
    if workload.keys == 0 {
        0.0
    } else {
        format!("key-{}", workload.keys / 2).len() as f64
    }
}

/// How long a run measures: its duration; none when it counts records instead; else
/// [`DEFAULT_DURATION`].
pub fn duration_of(duration: Option<Duration>, records: Option<u64>) -> Option<Duration> {
    match (duration, records) {
        (Some(duration), _) => Some(duration),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_DURATION),
    }
}

/// What gathering needs to know of a run, whatever protocol its shards speak.
pub struct Shape {
    pub produce: bool,
    pub consume: bool,
    /// Records to produce (or, consuming only, to consume) instead of a duration.
    pub records: Option<u64>,
    pub duration: Option<Duration>,
    pub warmup: Duration,
    pub histogram_out: Option<PathBuf>,
}

/// The run's totals after the warm-up, when measuring began, and why it failed, if it did.
pub struct Measured {
    pub totals: Stats,
    pub measure_start: Instant,
    pub failure: Option<String>,
    /// Deliveries owed to consumers that never arrived, over the whole run.
    pub undelivered: u64,
}

impl Measured {
    /// Seconds from the start of measuring to `last`.
    pub fn seconds_to(&self, last: Option<Instant>) -> f64 {
        last.map_or(0.0, |last| {
            last.saturating_duration_since(self.measure_start)
                .as_secs_f64()
        })
    }
}

/// Records, bytes and their rates over `seconds`, as a summary reports them.
pub fn rates(records: u64, bytes: u64, seconds: f64) -> Value {
    let per_second = |amount: f64| {
        if seconds > 0.0 { amount / seconds } else { 0.0 }
    };
    json!({
        "records": records,
        "bytes": bytes,
        "records_per_s": per_second(records as f64),
        "mb_per_s": per_second(bytes as f64 / MB),
    })
}

/// Starts the shards (`start` returns their threads and the channel of their reports) and
/// gathers their intervals until they are all done.
pub fn gather(
    plan: &Shape,
    progress: bool,
    start: impl FnOnce(&Arc<Shared>, Instant) -> (Vec<JoinHandle<()>>, flume::Receiver<Message>),
) -> Result<Measured, String> {
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let (handles, messages) = start(&shared, started);
    let shards = handles.len();
    let warmup_intervals = plan.warmup.as_secs_f64().ceil() as u32;
    let measure_start = started + INTERVAL * warmup_intervals;
    let end_at = plan.duration.map(|duration| measure_start + duration);
    let bar = progress_bar(progress, plan.duration, plan.warmup, plan.records);

    let mut histogram_file = match &plan.histogram_out {
        Some(path) => {
            Some(BufWriter::new(File::create(path).map_err(|error| {
                format!("creating {}: {error}", path.display())
            })?))
        }
        None => None,
    };
    let mut serializer = V2DeflateSerializer::new();
    let mut histogram_log = match histogram_file.as_mut() {
        Some(file) => Some(
            IntervalLogWriterBuilder::new()
                .add_comment("coremq-perf latencies in microseconds: ack and e2e")
                .with_start_time(SystemTime::now())
                .with_base_time(SystemTime::now())
                .with_max_value_divisor(1000.0)
                .begin_log_with(file, &mut serializer)
                .map_err(|error| format!("writing the histogram log: {error}"))?,
        ),
        None => None,
    };

    let mut pending: BTreeMap<u64, Stats> = BTreeMap::new();
    // Per shard: the next interval it will report, or None once it is done.
    let mut next_from: Vec<Option<u64>> = vec![Some(0); shards];
    let mut totals = Stats::default();
    let mut done = 0;
    let mut failure = None;
    let mut producers_stopped = None::<Instant>;
    let mut last_progress = (Instant::now(), 0u64);
    // Acknowledged plus consumed records, and when that last grew.
    let mut last_activity = (Instant::now(), 0u64);
    let give_up_at = end_at.map(|end| end + DRAIN_GRACE + STOP_GRACE);
    let mut abandoned = false;
    while done < shards {
        let now = Instant::now();
        let activity =
            shared.produced.load(Ordering::Relaxed) + shared.consumed.load(Ordering::Relaxed);
        if activity != last_activity.1 {
            last_activity = (now, activity);
        }
        let stalled = now.duration_since(last_activity.0) > STALL_LIMIT;
        if give_up_at.is_some_and(|at| now >= at) || (stalled && give_up_at.is_none()) {
            let waiting = shards - done;
            failure.get_or_insert(if stalled {
                format!(
                    "nothing was acknowledged or consumed for {} s; ended with {waiting} of \
                     {shards} client shards still waiting on the cluster",
                    STALL_LIMIT.as_secs()
                )
            } else {
                format!(
                    "the run did not end within {} s after its duration; ended with \
                     {waiting} of {shards} client shards still waiting on the cluster",
                    (DRAIN_GRACE + STOP_GRACE).as_secs()
                )
            });
            abandoned = true;
            break;
        }
        if end_at.is_some_and(|end| now >= end) || failure.is_some() {
            shared.stop_producing.store(true, Ordering::SeqCst);
            if !plan.produce || failure.is_some() {
                shared.stop_consuming.store(true, Ordering::SeqCst);
            }
        }
        let consumed = shared.consumed.load(Ordering::Relaxed);
        if consumed != last_progress.1 {
            last_progress = (now, consumed);
        }
        if plan.produce
            && producers_stopped.is_none()
            && shared.producers_left.load(Ordering::SeqCst) == 0
        {
            producers_stopped = Some(now);
        }
        let drained = match producers_stopped {
            Some(at) => {
                consumed >= shared.deliveries.load(Ordering::Relaxed)
                    || now.duration_since(at) > DRAIN_GRACE
                    || now.duration_since(last_progress.0.max(at)) > DRAIN_IDLE
            }
            None => {
                !plan.produce
                    && (plan.records.is_some_and(|records| consumed >= records)
                        || now.duration_since(last_progress.0) > IDLE_LIMIT)
            }
        };
        if plan.consume && drained {
            shared.stop_consuming.store(true, Ordering::SeqCst);
        }
        match messages.recv_timeout(Duration::from_millis(20)) {
            Ok(Message::Interval {
                shard,
                index,
                stats,
            }) => {
                pending.entry(index).or_default().add(&stats);
                next_from[shard] = Some(index + 1);
            }
            Ok(Message::Done { shard }) => {
                next_from[shard] = None;
                done += 1;
            }
            Ok(Message::Failed(error)) => {
                failure.get_or_insert(error);
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => break,
        }
        // Intervals every running shard has reported.
        let complete_below = next_from
            .iter()
            .flatten()
            .min()
            .copied()
            .unwrap_or(u64::MAX);
        while let Some(entry) = pending.first_entry() {
            if *entry.key() >= complete_below {
                break;
            }
            let (index, stats) = entry.remove_entry();
            let line = stats.progress_line(index + 1, INTERVAL.as_secs_f64());
            match &bar {
                Some(bar) => {
                    bar.set_message(line);
                    bar.set_position(match plan.records {
                        Some(_) => shared.produced.load(Ordering::Relaxed).max(consumed),
                        None => index + 1,
                    });
                }
                None if progress => eprintln!("{line}"),
                None => {}
            }
            if let Some(log) = histogram_log.as_mut() {
                let start = INTERVAL * index as u32;
                for (tag, histogram) in [("ack", &stats.ack), ("e2e", &stats.e2e)] {
                    if !histogram.is_empty() {
                        log.write_histogram(histogram, start, INTERVAL, Tag::new(tag))
                            .map_err(|error| format!("writing the histogram log: {error}"))?;
                    }
                }
            }
            if index >= u64::from(warmup_intervals) {
                totals.add(&stats);
            }
        }
    }
    if abandoned {
        // What the shards reported stays counted; their threads end with the process.
        for (index, stats) in std::mem::take(&mut pending) {
            if index >= u64::from(warmup_intervals) {
                totals.add(&stats);
            }
        }
        let unacknowledged = shared
            .offered
            .load(Ordering::Relaxed)
            .saturating_sub(shared.produced.load(Ordering::Relaxed) + totals.error_count());
        if unacknowledged > 0 {
            totals.error("unacknowledged_at_end".to_string(), unacknowledged);
        }
    } else {
        for handle in handles {
            let _ = handle.join();
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    drop(histogram_log);
    if let Some(mut file) = histogram_file {
        file.flush()
            .map_err(|error| format!("writing the histogram log: {error}"))?;
    }
    let undelivered = match plan.produce && plan.consume {
        true => shared
            .deliveries
            .load(Ordering::Relaxed)
            .saturating_sub(shared.consumed.load(Ordering::Relaxed)),
        false => 0,
    };
    Ok(Measured {
        totals,
        measure_start,
        failure,
        undelivered,
    })
}

/// A progress bar on a terminal (over seconds, or records when counting them).
fn progress_bar(
    progress: bool,
    duration: Option<Duration>,
    warmup: Duration,
    records: Option<u64>,
) -> Option<ProgressBar> {
    if !progress || !std::io::stderr().is_terminal() {
        return None;
    }
    let (length, unit) = match (duration, records) {
        (Some(duration), _) => ((duration + warmup).as_secs().max(1), "s"),
        (None, Some(records)) => (records, " records"),
        (None, None) => (1, ""),
    };
    let bar = ProgressBar::new(length);
    let template = format!("{{bar:30}} {{pos}}/{{len}}{unit} {{msg}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    Some(bar)
}

fn summarise(mode: Mode, plan: &Plan, threads: usize, measured: &Measured) -> Value {
    let totals = &measured.totals;
    let produced_seconds = measured.seconds_to(totals.last_produced);
    let consumed_seconds = measured.seconds_to(totals.last_consumed);
    let workload = &plan.workload;
    let mut failure = measured.failure.clone();
    if let (Mode::Consume, Some(records)) = (mode, plan.records)
        && totals.consumed < records
        && failure.is_none()
    {
        failure = Some(format!(
            "asked for {records} records but found {} within {} s of the last one",
            totals.consumed,
            IDLE_LIMIT.as_secs()
        ));
    }
    // Without a group, consumers split the partitions: those beyond the count get none.
    let idle_consumers = match workload.group {
        Some(_) => 0,
        None => plan
            .consumers()
            .saturating_sub(plan.partitions.max(0) as usize),
    };
    json!({
        "mode": mode.name(),
        "failure": failure,
        "idle_consumers": idle_consumers,
        "seconds": produced_seconds.max(consumed_seconds),
        "produced": if plan.produce {
            rates(totals.produced, totals.produced_bytes, produced_seconds)
        } else {
            Value::Null
        },
        "consumed": if plan.consume {
            rates(totals.consumed, totals.consumed_bytes, consumed_seconds)
        } else {
            Value::Null
        },
        "ack_latency_ms": percentiles(&totals.ack),
        "e2e_latency_ms": if mode == Mode::E2e { percentiles(&totals.e2e) } else { Value::Null },
        "errors": totals.errors,
        "config": {
            "bootstrap": workload.bootstrap,
            "topic": workload.topic,
            "partitions": plan.partitions,
            "producers": plan.producers(),
            "consumers": plan.consumers(),
            "group": workload.group,
            "record_size": format!("{}..{}", workload.record_size.min, workload.record_size.max),
            "keys": workload.keys,
            "offered_records_per_s": plan.rate,
            "acks": workload.acks,
            "compression": workload.compression.name(),
            "batch_size": workload.batch_size,
            "linger_ms": workload.linger_ms,
            "max_in_flight": workload.max_in_flight,
            "threads": threads,
            "warmup_s": workload.warmup.as_secs_f64(),
        },
    })
}
