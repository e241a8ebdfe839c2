//! Crash test: a child process (this test binary, re-executed) appends with the `always`
//! policy from several threads and prints each acknowledged append; the parent SIGKILLs it
//! at random moments, 50 times, reopens the log and checks that every acknowledged batch is
//! there byte for byte and that offsets run on without gaps.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{batch, block_on, tp};
use coremq_engine::batch::set_base_offset;
use coremq_engine::{BatchHeader, Compression, Durability, Engine, Isolation, LogConfig, Offset};
use rand::Rng;

const CHILD_DIR: &str = "COREMQ_CRASH_CHILD_DIR";
const CHILD_RUN: &str = "COREMQ_CRASH_CHILD_RUN";
const KILLS: u64 = 50;
const WRITERS: u64 = 4;

fn log_config() -> LogConfig {
    LogConfig {
        durability: Durability::Always,
        segment_bytes: 256 << 10,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

/// The batch a child appends for `tag`: deterministic, so the parent can rebuild it.
fn tagged_batch(tag: u64) -> Bytes {
    let codec = if tag.is_multiple_of(2) {
        Compression::None
    } else {
        Compression::Zstd
    };
    batch(
        tag,
        1 + (tag % 5) as u32,
        40 + (tag % 300) as usize,
        tag as i64,
        codec,
    )
}

fn run_child(dir: &str, run: u64) -> ! {
    let engine = Engine::start(common::config(dir.as_ref(), 1)).expect("child engine starts");
    let handle = engine.handle();
    let log = tp("crash", 0);
    block_on(handle.create_log(&log, Some(log_config()))).expect("child creates the log");
    let (acks, acked) = mpsc::channel::<String>();
    for writer in 0..WRITERS {
        let handle = handle.clone();
        let acks = acks.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            for seq in 0.. {
                let tag = run * 10_000_000 + writer * 1_000_000 + seq;
                let info = block_on(handle.append(&log, tagged_batch(tag))).expect("append");
                acks.send(format!("ack {tag} {}", info.base_offset.0))
                    .unwrap();
            }
        });
    }
    let stdout = std::io::stdout();
    for line in acked {
        let mut out = stdout.lock();
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }
    unreachable!("writers never stop");
}

#[test]
fn sigkill_never_loses_an_acknowledged_append() {
    if let (Ok(dir), Ok(run)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_RUN)) {
        run_child(&dir, run.parse().unwrap());
    }
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let mut rng = rand::rng();
    let mut acknowledged: BTreeMap<u64, u64> = BTreeMap::new();
    let log = tp("crash", 0);
    for run in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_never_loses_an_acknowledged_append",
                "--nocapture",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_RUN, run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ack ") {
                    let _ = lines.send(line);
                }
            }
        });
        // Wait for the first acknowledgement, then kill at a random moment after it.
        let started = Instant::now();
        let first = received
            .recv_timeout(Duration::from_secs(30))
            .expect("child acknowledges");
        let mut acks = vec![first];
        std::thread::sleep(Duration::from_millis(rng.random_range(0..120)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        acks.extend(received.try_iter());
        assert!(started.elapsed() < Duration::from_secs(60));
        for line in acks {
            let mut fields = line.split(' ').skip(1).map(|f| f.parse::<u64>().unwrap());
            let (tag, base) = (fields.next().unwrap(), fields.next().unwrap());
            acknowledged.insert(base, tag);
        }
        verify(dir.path(), &log, &acknowledged);
    }
    assert!(
        acknowledged.len() as u64 > KILLS,
        "the children acknowledged appends"
    );
}

/// Reopens the log: every acknowledged batch is there byte for byte, offsets are contiguous.
fn verify(dir: &std::path::Path, log: &coremq_engine::TopicPartition, acked: &BTreeMap<u64, u64>) {
    let engine = Engine::start(common::config(dir, 1)).expect("reopen after SIGKILL");
    let handle = engine.handle();
    let mut stored: BTreeMap<u64, Bytes> = BTreeMap::new();
    let mut from = Offset(0);
    loop {
        let read = block_on(handle.read(log, from, 1 << 20, Isolation::Written)).unwrap();
        if read.batches.is_empty() {
            break;
        }
        for batch in read.batches {
            let header = BatchHeader::parse(&batch).unwrap();
            assert_eq!(header.base_offset, from, "offsets run on without gaps");
            from = header.next_offset();
            stored.insert(header.base_offset.0, batch);
        }
    }
    assert_eq!(block_on(handle.offsets(log)).unwrap().log_end, from);
    for (&base, &tag) in acked {
        let batch = stored
            .get(&base)
            .unwrap_or_else(|| panic!("acknowledged offset {base} lost"));
        let mut expected = tagged_batch(tag).to_vec();
        set_base_offset(&mut expected, Offset(base));
        assert_eq!(
            &batch[..],
            &expected[..],
            "batch at {base} differs from what was acked"
        );
    }
    engine.shutdown().unwrap();
}
