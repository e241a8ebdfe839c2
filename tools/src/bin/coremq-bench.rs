//! `coremq-bench engine [--json] [--dir DIR] [--gib N] [--cache-bytes N]`: the engine against
//! the raw device in one run, on one disk (`--cache-bytes`: the shard's memory for recent
//! batches, default the engine's; `rolls` takes it too).
//!
//! 1. Writes N GiB (default 2) of 1 KiB records in 1 MiB batches through the engine
//!    (`interval_ms` policy, 4 appends in flight) and the same bytes with plain O_DIRECT io_uring
//!    writes (1 MiB, 4 in flight), in four alternating rounds so drift in the disk's speed
//!    falls on both. Each round ends with an fdatasync.
//! 2. Reads both back from disk (the engine's tail cache dropped; O_DIRECT bypasses the page
//!    cache), alternating twice: engine reads of 1 MiB per call, one call at a time (the
//!    engine reads ahead), raw reads of 1 MiB, 4 in flight.
//! 3. Append latency with `always` (one 1 KiB record per append) against raw 4 KiB write +
//!    fdatasync, one at a time.
//! 4. 100-byte records in batches of 100 on one shard (`interval_ms`), 64 appends in flight.
//!
//! `coremq-bench rolls [--json] [--dir DIR] [--rolls N]`: append latency across segment rolls
//! on one shard. One log rolls every 256 KiB (16 KiB idempotent batches, so each roll also
//! writes a producer snapshot); a neighbour log on the same shard takes 1 KiB appends one at
//! a time. Both use `never`, so the only syncs are the rolls' own. A probe on the shard
//! sleeps 1 ms at a time and records how late it wakes: whatever a roll does on the shard
//! thread itself shows there, apart from the device's own slowdown under the syncs.
//!
//! `coremq-bench loopback [--json] [--gib N]`: the TCP bandwidth of the loopback interface,
//! the ceiling for any broker serving a client on the same host: one thread writes N GiB
//! (default 2) in 1 MiB writes to 127.0.0.1, another reads them in 1 MiB reads. Consume
//! throughput is reported as a ratio of it.
//!
//! The last line printed is one JSON object with the figures.

use std::cell::Cell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coremq_engine::{
    BatchBuilder, BatchHeader, Compression, Durability, Engine, EngineConfig, Handle, Isolation,
    LogConfig, Offset, Timestamp, TopicPartition,
};
use futures_lite::future::block_on;
use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use rand::RngCore;

const MIB: usize = 1 << 20;
/// Appends outstanding at once: 1 MiB batches, and 100-record batches.
const LARGE_IN_FLIGHT: usize = 8;
const SMALL_IN_FLIGHT: usize = 64;
const RAW_IN_FLIGHT: usize = 8;
const LATENCY_SAMPLES: usize = 2000;
/// Read measurements alternate engine and raw this many times and average each.
const READ_ROUNDS: usize = 2;
const WRITE_ROUNDS: usize = 4;

/// The rolls measurement: segment size, batch sizes.
const ROLL_SEGMENT_BYTES: u64 = 256 << 10;
const ROLL_BATCH_BYTES: usize = 16 << 10;
const NEIGHBOUR_RECORD_BYTES: usize = 1024;

enum Bench {
    Engine,
    Rolls,
    Loopback,
}

struct Options {
    bench: Bench,
    json: bool,
    dir: PathBuf,
    gib: u64,
    rolls: u64,
    /// The shard's memory for recent batches (default: the engine's).
    cache_bytes: Option<usize>,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let bench = match args.next().as_deref() {
        Some("engine") => Bench::Engine,
        Some("rolls") => Bench::Rolls,
        Some("loopback") => Bench::Loopback,
        _ => {
            return Err(
                "usage: coremq-bench engine [--json] [--dir DIR] [--gib N]\n       \
                 coremq-bench rolls [--json] [--dir DIR] [--rolls N]\n       \
                 coremq-bench loopback [--json] [--gib N]"
                    .into(),
            );
        }
    };
    let positive = |value: Option<String>, name: &str| {
        value
            .and_then(|v| v.parse().ok())
            .filter(|&v: &u64| v > 0)
            .ok_or(format!("{name} needs a positive integer"))
    };
    let mut options = Options {
        bench,
        json: false,
        dir: PathBuf::from("bench-data"),
        gib: 2,
        rolls: 400,
        cache_bytes: None,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => options.json = true,
            "--dir" => options.dir = args.next().ok_or("--dir needs a value")?.into(),
            "--gib" => options.gib = positive(args.next(), "--gib")?,
            "--rolls" => options.rolls = positive(args.next(), "--rolls")?,
            "--cache-bytes" => {
                options.cache_bytes = Some(positive(args.next(), "--cache-bytes")? as usize)
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let _ = std::fs::remove_dir_all(&options.dir);
    std::fs::create_dir_all(&options.dir).expect("create the bench directory");
    let report = match options.bench {
        Bench::Engine => run(&options.dir, options.gib << 30, options.cache_bytes),
        Bench::Rolls => rolls(&options.dir, options.rolls, options.cache_bytes),
        Bench::Loopback => loopback(options.gib << 30),
    };
    let _ = std::fs::remove_dir_all(&options.dir);
    if !options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializable")
        );
    }
    println!("{report}");
}

fn run(dir: &Path, total_bytes: u64, cache_bytes: Option<usize>) -> serde_json::Value {
    let batches = Arc::new(build_large_batches(16));
    let count = (total_bytes / MIB as u64) as usize;
    eprintln!("writing {count} MiB through the engine");
    let engine_dir = dir.join("engine");
    let engine = Engine::start(engine_config(&engine_dir, cache_bytes)).expect("engine starts");
    let handle = engine.handle();
    let log = TopicPartition::new("bench", 0).unwrap();
    let config = LogConfig {
        durability: Durability::IntervalMs(1000),
        batch_bytes_max: 2 * MIB,
        pending_bytes_max: 64 * MIB,
        retention_ms: None,
        ..LogConfig::default()
    };
    block_on(handle.create_log(&log, Some(config))).unwrap();
    // Alternating engine and raw writes spreads the disk's drift over both.
    eprintln!(
        "writing {count} MiB through the engine and {count} MiB with raw O_DIRECT io_uring writes, alternating {WRITE_ROUNDS} times"
    );
    let raw_path = dir.join("raw.dat");
    let per_round = count / WRITE_ROUNDS;
    let (mut appended, mut write_seconds, mut raw_write_seconds) = (0, 0.0, 0.0);
    for round in 0..WRITE_ROUNDS {
        let started = Instant::now();
        appended += append_concurrently(&handle, &log, per_round, LARGE_IN_FLIGHT, batches.clone());
        block_on(handle.flush(&log)).unwrap();
        write_seconds += started.elapsed().as_secs_f64();
        raw_write_seconds += raw_write(&raw_path, round * per_round, per_round);
    }
    let count = per_round * WRITE_ROUNDS;
    let write_mb_s = appended as f64 / MIB as f64 / write_seconds;
    let raw_write_mb_s = count as f64 / raw_write_seconds;

    eprintln!("reading both back, alternating engine and raw reads {READ_ROUNDS} times");
    let (mut read_mb_s, mut raw_read_mb_s) = (0.0, 0.0);
    for _ in 0..READ_ROUNDS {
        block_on(handle.clear_cache(&log)).unwrap();
        read_mb_s += engine_read(&handle, &log) / READ_ROUNDS as f64;
        raw_read_mb_s += raw_read(&raw_path, count) / READ_ROUNDS as f64;
    }
    let _ = std::fs::remove_file(&raw_path);

    eprintln!("append latency with durability always");
    let always = TopicPartition::new("always", 0).unwrap();
    let config = LogConfig {
        durability: Durability::Always,
        ..LogConfig::default()
    };
    block_on(handle.create_log(&always, Some(config))).unwrap();
    let record = {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(Timestamp::now(), Some(b"k"), Some(&[7u8; 1024]), &[]);
        builder.build()
    };
    let mut append_always = histogram();
    for _ in 0..LATENCY_SAMPLES {
        let started = Instant::now();
        block_on(handle.append(&always, record.clone())).unwrap();
        append_always.record(micros(started.elapsed())).unwrap();
    }
    let raw_fdatasync = raw_sync_latency(&dir.join("sync.dat"));

    eprintln!("100-byte records in batches of 100");
    let small = TopicPartition::new("quotes", 0).unwrap();
    let config = LogConfig {
        durability: Durability::IntervalMs(1000),
        ..LogConfig::default()
    };
    block_on(handle.create_log(&small, Some(config))).unwrap();
    let small_batches = Arc::new(build_small_batches(256));
    let small_count = 100_000;
    let started = Instant::now();
    append_concurrently(&handle, &small, small_count, SMALL_IN_FLIGHT, small_batches);
    let small_records_per_s = small_count as f64 * 100.0 / started.elapsed().as_secs_f64();
    let metrics = block_on(handle.metrics()).unwrap();
    engine.shutdown().unwrap();

    let write_ratio = write_mb_s / raw_write_mb_s;
    let read_ratio = read_mb_s / raw_read_mb_s;
    serde_json::json!({
        "machine": machine(),
        "bytes": total_bytes,
        "write_mb_s": round(write_mb_s),
        "raw_write_mb_s": round(raw_write_mb_s),
        "write_ratio": round(write_ratio),
        "read_mb_s": round(read_mb_s),
        "raw_read_mb_s": round(raw_read_mb_s),
        "read_ratio": round(read_ratio),
        "append_always_p50_us": append_always.value_at_quantile(0.5),
        "append_always_p99_us": append_always.value_at_quantile(0.99),
        "append_always_p999_us": append_always.value_at_quantile(0.999),
        "raw_fdatasync_p50_us": raw_fdatasync.value_at_quantile(0.5),
        "raw_fdatasync_p99_us": raw_fdatasync.value_at_quantile(0.99),
        "raw_fdatasync_p999_us": raw_fdatasync.value_at_quantile(0.999),
        "append_always_p99_over_raw": round(
            append_always.value_at_quantile(0.99) as f64
                / raw_fdatasync.value_at_quantile(0.99).max(1) as f64
        ),
        "small_records_per_s": small_records_per_s.round(),
        "engine_fsync_p99_us": metrics.fsync_latency_us.value_at_quantile(0.99),
    })
}

/// Append latency across `count` segment rolls, on the rolling log and on a neighbour log of
/// the same shard.
fn loopback(total_bytes: u64) -> serde_json::Value {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let address = listener.local_addr().expect("bound address");
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buffer = vec![0u8; MIB];
        let mut read = 0u64;
        while read < total_bytes {
            match stream.read(&mut buffer).expect("read") {
                0 => break,
                n => read += n as u64,
            }
        }
        read
    });
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    let buffer = vec![7u8; MIB];
    let started = Instant::now();
    let mut written = 0u64;
    while written < total_bytes {
        stream.write_all(&buffer).expect("write");
        written += MIB as u64;
    }
    let read = reader.join().expect("reader thread");
    let seconds = started.elapsed().as_secs_f64();
    let mb_s = read as f64 / seconds / 1e6;
    eprintln!("loopback: {read} bytes in {seconds:.2} s, {mb_s:.0} MB/s");
    serde_json::json!({ "loopback_mb_s": mb_s.round() })
}

fn rolls(dir: &Path, count: u64, cache_bytes: Option<usize>) -> serde_json::Value {
    let engine =
        Engine::start(engine_config(&dir.join("engine"), cache_bytes)).expect("engine starts");
    let handle = engine.handle();
    let rolling = TopicPartition::new("rolling", 0).unwrap();
    let neighbour = TopicPartition::new("neighbour", 0).unwrap();
    let never = LogConfig {
        durability: Durability::Never,
        retention_ms: None,
        ..LogConfig::default()
    };
    let small_segments = LogConfig {
        segment_bytes: ROLL_SEGMENT_BYTES,
        ..never.clone()
    };
    block_on(handle.create_log(&rolling, Some(small_segments))).unwrap();
    block_on(handle.create_log(&neighbour, Some(never))).unwrap();
    let appends = count * ROLL_SEGMENT_BYTES / ROLL_BATCH_BYTES as u64;
    eprintln!(
        "{appends} appends of {ROLL_BATCH_BYTES} bytes, a roll every {ROLL_SEGMENT_BYTES} bytes, beside 1 KiB appends to a neighbour log"
    );
    let started = Instant::now();
    let (rolling_latency, neighbour_latency, lateness) = {
        let (handle, rolling, neighbour) = (handle.clone(), rolling.clone(), neighbour.clone());
        on_executor(move || {
            Box::pin(async move {
                let done = Rc::new(Cell::new(false));
                let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
                let probe_task = {
                    let (handle, probing) = (handle.clone(), probing.clone());
                    glommio::spawn_local(async move {
                        handle
                            .on_shard(0, move |_| async move {
                                let mut lateness = histogram();
                                let tick = Duration::from_millis(1);
                                while probing.load(std::sync::atomic::Ordering::Relaxed) {
                                    let started = Instant::now();
                                    glommio::timer::sleep(tick).await;
                                    let late = started.elapsed().saturating_sub(tick);
                                    lateness.record(micros(late)).unwrap();
                                }
                                Ok(lateness)
                            })
                            .await
                            .expect("probe runs")
                    })
                };
                let neighbour_task = {
                    let (handle, done) = (handle.clone(), done.clone());
                    glommio::spawn_local(async move {
                        let mut latency = histogram();
                        let mut value = vec![0u8; NEIGHBOUR_RECORD_BYTES];
                        while !done.get() {
                            rand::rng().fill_bytes(&mut value);
                            let mut builder = BatchBuilder::new(Compression::None);
                            builder.push(Timestamp::now(), Some(b"k"), Some(&value), &[]);
                            let batch = builder.build();
                            let started = Instant::now();
                            handle.append(&neighbour, batch).await.expect("append");
                            latency.record(micros(started.elapsed())).unwrap();
                        }
                        latency
                    })
                };
                let mut latency = histogram();
                let mut value = vec![0u8; ROLL_BATCH_BYTES - 200];
                for sequence in 0..appends {
                    rand::rng().fill_bytes(&mut value);
                    let mut builder =
                        BatchBuilder::new(Compression::None).producer(7, 0, sequence as i32);
                    builder.push(Timestamp::now(), Some(b"k"), Some(&value), &[]);
                    let batch = builder.build();
                    let started = Instant::now();
                    handle.append(&rolling, batch).await.expect("append");
                    latency.record(micros(started.elapsed())).unwrap();
                }
                done.set(true);
                let neighbour = neighbour_task.await;
                probing.store(false, std::sync::atomic::Ordering::Relaxed);
                (latency, neighbour, probe_task.await)
            })
        })
    };
    let seconds = started.elapsed().as_secs_f64();
    let metrics = block_on(handle.metrics()).unwrap();
    engine.shutdown().unwrap();
    let figures = |latency: &Histogram<u64>| {
        serde_json::json!({
            "appends": latency.len(),
            "p50_us": latency.value_at_quantile(0.5),
            "p99_us": latency.value_at_quantile(0.99),
            "p999_us": latency.value_at_quantile(0.999),
            "max_us": latency.max(),
        })
    };
    serde_json::json!({
        "machine": machine(),
        "rolls": metrics.segments.saturating_sub(2),
        "seconds": round(seconds),
        "rolling": figures(&rolling_latency),
        "neighbour": figures(&neighbour_latency),
        "shard_timer_lateness": figures(&lateness),
    })
}

/// Reads the whole log from disk, 1 MiB per call; returns MB/s.
fn engine_read(handle: &Handle, log: &TopicPartition) -> f64 {
    let started = Instant::now();
    let mut read_bytes = 0usize;
    let mut from = Offset(0);
    let end = block_on(handle.offsets(log)).unwrap().log_end;
    while from < end {
        let read = block_on(handle.read(log, from, MIB, Isolation::Written)).unwrap();
        read_bytes += read.bytes();
        from = BatchHeader::parse(read.batches.last().unwrap())
            .unwrap()
            .next_offset();
    }
    read_bytes as f64 / MIB as f64 / started.elapsed().as_secs_f64()
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores, {model}")
}

fn engine_config(dir: &Path, cache_bytes: Option<usize>) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shards = 1;
    if let Some(cache_bytes) = cache_bytes {
        config.cache_bytes = cache_bytes;
    }
    config
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn micros(elapsed: Duration) -> u64 {
    (elapsed.as_micros() as u64).clamp(1, 60_000_000)
}

/// 1 MiB batches of 1 KiB incompressible records (codec none, so engine and raw bytes match).
fn build_large_batches(count: usize) -> Vec<Bytes> {
    let mut rng = rand::rng();
    let mut value = vec![0u8; 1000];
    (0..count)
        .map(|_| {
            let mut builder = BatchBuilder::new(Compression::None);
            while builder.records_bytes() + 1100 < MIB - 100 {
                rng.fill_bytes(&mut value);
                builder.push(Timestamp::now(), Some(b"key"), Some(&value), &[]);
            }
            builder.build()
        })
        .collect()
}

/// Batches of 100 quote-sized (100-byte) records, zstd-compressed as the engine builds them.
fn build_small_batches(count: usize) -> Vec<Bytes> {
    let mut rng = rand::rng();
    (0..count)
        .map(|batch| {
            let mut builder = BatchBuilder::new(Compression::Zstd);
            for n in 0..100 {
                let mut value = format!(
                    "{{\"s\":\"SYM{}\",\"px\":{}.{:02},\"q\":",
                    n % 40,
                    100 + batch % 50,
                    n
                )
                .into_bytes();
                while value.len() < 100 {
                    value.push(b'0' + (rng.next_u32() % 10) as u8);
                }
                builder.push(Timestamp::now(), Some(b"SYM"), Some(&value), &[]);
            }
            builder.build()
        })
        .collect()
}

/// Appends `count` batches with `in_flight` appends outstanding, from a client executor on
/// its own thread (as a producer connection would); each batch is a fresh buffer, as one
/// read off a socket is. Returns the bytes appended.
fn append_concurrently(
    handle: &Handle,
    log: &TopicPartition,
    count: usize,
    in_flight: usize,
    batches: Arc<Vec<Bytes>>,
) -> u64 {
    let (handle, log) = (handle.clone(), log.clone());
    on_executor(move || {
        Box::pin(async move {
            let bytes = Rc::new(Cell::new(0u64));
            let total = bytes.clone();
            spread(count, in_flight, move |n| {
                let (handle, log, bytes) = (handle.clone(), log.clone(), bytes.clone());
                let batch = Bytes::copy_from_slice(&batches[n % batches.len()]);
                async move {
                    bytes.set(bytes.get() + batch.len() as u64);
                    handle.append(&log, batch).await.expect("append");
                }
            })
            .await;
            total.get()
        })
    })
}

/// Runs `work(n)` for every `n` in `0..count` on `workers` concurrent tasks of the current
/// executor, each taking the next `n` when it finishes one.
async fn spread<F, Fut>(count: usize, workers: usize, work: F)
where
    F: Fn(usize) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let next = Rc::new(Cell::new(0usize));
    let work = Rc::new(work);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (next, work) = (next.clone(), work.clone());
            glommio::spawn_local(async move {
                while next.get() < count {
                    let n = next.get();
                    next.set(n + 1);
                    work(n).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

fn on_executor<T: Send + 'static>(
    work: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(MIB)
        .spawn(work)
        .expect("executor starts")
        .join()
        .expect("executor finishes")
}

/// Writes `count` MiB starting at MiB `first` of the file, and syncs; returns the seconds.
fn raw_write(path: &Path, first: usize, count: usize) -> f64 {
    let path = path.to_path_buf();
    on_executor(move || {
        Box::pin(async move {
            let mut options = OpenOptions::new();
            let file = Rc::new(
                options
                    .create(true)
                    .write(true)
                    .read(true)
                    .dma_open(&path)
                    .await
                    .unwrap(),
            );
            let mut template = vec![0u8; MIB];
            rand::rng().fill_bytes(&mut template);
            let template = Rc::new(template);
            let started = Instant::now();
            let writer = file.clone();
            spread(count, RAW_IN_FLIGHT, move |n| {
                let (file, template) = (writer.clone(), template.clone());
                async move {
                    let mut buffer = file.alloc_dma_buffer(MIB);
                    buffer.as_bytes_mut().copy_from_slice(&template);
                    file.write_at(buffer, ((first + n) * MIB) as u64)
                        .await
                        .unwrap();
                }
            })
            .await;
            file.fdatasync().await.unwrap();
            started.elapsed().as_secs_f64()
        })
    })
}

fn raw_read(path: &Path, count: usize) -> f64 {
    let path = path.to_path_buf();
    on_executor(move || {
        Box::pin(async move {
            let file = Rc::new(DmaFile::open(&path).await.unwrap());
            let started = Instant::now();
            spread(count, RAW_IN_FLIGHT, move |n| {
                let file = file.clone();
                async move {
                    let read = file.read_at_aligned((n * MIB) as u64, MIB).await.unwrap();
                    assert_eq!(read.len(), MIB);
                }
            })
            .await;
            count as f64 / started.elapsed().as_secs_f64()
        })
    })
}

fn raw_sync_latency(path: &Path) -> Histogram<u64> {
    let path = path.to_path_buf();
    on_executor(move || {
        Box::pin(async move {
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .read(true)
                .dma_open(&path)
                .await
                .unwrap();
            let mut latency = histogram();
            for n in 0..LATENCY_SAMPLES {
                let started = Instant::now();
                let mut buffer = file.alloc_dma_buffer(4096);
                buffer.as_bytes_mut().fill(n as u8);
                file.write_at(buffer, (n * 4096) as u64).await.unwrap();
                file.fdatasync().await.unwrap();
                latency.record(micros(started.elapsed())).unwrap();
            }
            drop(file);
            let _ = std::fs::remove_file(&path);
            latency
        })
    })
}
