//! Opening a log directory: creating one, finishing interrupted compaction swaps, opening the
//! sealed segments, recovering the active one, and restoring the log start and the
//! idempotent producers' state.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::rc::Rc;

use coremq_runtime::sync::Semaphore;

use crate::cache::TailCache;
use crate::checkpoint;
use crate::config::LogConfig;
use crate::epochs::LeaderEpochs;
use crate::error::{Error, Result};
use crate::metrics::add;
use crate::notify::Notify;
use crate::producers::{ProducerBatch, ProducerState};
use crate::segment::{ActiveSegment, Recovered, SealedSegment};
use crate::storage::{self, Storage};
use crate::types::{Offset, TopicPartition};

use super::{CONFIG_FILE, Inner, Log, PRODUCERS_FILE, Services};

/// Rebuilds idempotent producer state at open: the snapshot taken at the last roll, then
/// the batches the active segment's recovery found after it. A missing or damaged snapshot
/// loses the older producers (their next batch is taken as a fresh start), never data.
fn restore_producers(
    dir: &Path,
    active_base: Offset,
    log_end: Offset,
    recovered: Vec<ProducerBatch>,
) -> ProducerState {
    let path = dir.join(PRODUCERS_FILE);
    let (mut state, up_to) = match std::fs::read(&path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            (ProducerState::default(), Offset(0))
        }
        Err(error) => {
            log::warn!("{}: {error}; producer state starts empty", path.display());
            (ProducerState::default(), Offset(0))
        }
        Ok(bytes) => match ProducerState::decode(&bytes) {
            Ok((state, up_to)) if up_to <= log_end => (state, up_to),
            Ok((_, up_to)) => {
                log::warn!(
                    "{}: covers offsets up to {up_to}, past the log end {log_end}; ignored",
                    path.display()
                );
                (ProducerState::default(), Offset(0))
            }
            Err(error) => {
                log::warn!("{}: {error}; producer state starts empty", path.display());
                (ProducerState::default(), Offset(0))
            }
        },
    };
    if up_to < active_base && !state.is_empty() {
        log::warn!(
            "{}: covers offsets up to {up_to} only; producers of offsets {up_to}..{active_base} are forgotten",
            path.display()
        );
    }
    for batch in recovered {
        if batch.base_offset >= up_to {
            state.record(batch);
        }
    }
    state
}

/// Rebuilds the leader epochs at open: the checkpoint, less what lies past the log end or
/// before its start, plus the epochs the active segment's batches start. Stored again if that
/// changed it, so a later open, which scans only the then active segment, still has them.
async fn restore_epochs(
    dir: &Path,
    storage: &Storage,
    log_start: Offset,
    log_end: Offset,
    recovered: &LeaderEpochs,
) -> Result<LeaderEpochs> {
    let stored = LeaderEpochs::load(dir);
    let mut epochs = stored.clone();
    epochs.truncate_from_end(log_end);
    for entry in recovered.entries() {
        epochs.assign(entry.epoch, entry.start_offset);
    }
    epochs.truncate_from_start(log_start);
    if epochs != stored {
        epochs.store(storage, dir).await?;
    }
    Ok(epochs)
}

impl Log {
    /// Creates a new, empty log directory with `config`.
    pub async fn create(
        dir: &Path,
        topic_partition: TopicPartition,
        config: LogConfig,
        services: Services,
    ) -> Result<Rc<Log>> {
        config.validate()?;
        let files = services.storage.clone();
        let (log_dir, contents) = (dir.to_path_buf(), config.encode());
        storage::blocking(move || {
            std::fs::create_dir_all(&log_dir)
                .map_err(|source| crate::file::classify(&log_dir, "create directory", source))?;
            files.write_atomically_blocking(&log_dir, CONFIG_FILE, contents.as_bytes())?;
            match log_dir.parent() {
                Some(parent) => files.sync_dir_blocking(parent),
                None => Ok(()),
            }
        })
        .await?;
        Log::open(dir, topic_partition, services).await
    }

    /// Opens an existing log directory: finishes interrupted compaction swaps, opens sealed
    /// segments, recovers the last one, and restores the log start offset.
    pub async fn open(
        dir: &Path,
        topic_partition: TopicPartition,
        services: Services,
    ) -> Result<Rc<Log>> {
        let Services {
            metrics,
            cache,
            storage,
        } = services;
        let config_path = dir.join(CONFIG_FILE);
        let config_text = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
            path: config_path.clone(),
            op: "read",
            source,
        })?;
        let config = LogConfig::decode(&config_text)?;
        let swaps_dir = dir.to_path_buf();
        let files = storage.clone();
        let bases =
            storage::blocking(move || crate::compaction::recover_swaps(&files, &swaps_dir)).await?;
        let interval = config.index_interval_bytes;
        let mut sealed = BTreeMap::new();
        let last = bases.last().copied();
        for &base in bases.iter().filter(|&&base| Some(base) != last) {
            let segment = SealedSegment::open(dir, base, interval, storage.clone()).await?;
            sealed.insert(base, segment);
        }
        let (active, recovered) = match last {
            Some(base) => {
                ActiveSegment::recover(dir, base, interval, None, storage.clone()).await?
            }
            None => (
                ActiveSegment::create(dir, Offset(0), interval, storage.clone()).await?,
                Recovered::default(),
            ),
        };
        let first_base = sealed
            .keys()
            .next()
            .copied()
            .unwrap_or(active.base_offset());
        let log_end = active.next_offset();
        let log_start = checkpoint::load(dir)
            .unwrap_or(first_base)
            .clamp(first_base, log_end);
        let producers = restore_producers(
            dir,
            active.base_offset(),
            log_end,
            recovered.producer_batches,
        );
        let epochs = restore_epochs(dir, &storage, log_start, log_end, &recovered.epochs).await?;
        add(&metrics.segments, sealed.len() as u64 + 1);
        let log = Rc::new(Log {
            topic_partition,
            dir: dir.to_path_buf(),
            inner: RefCell::new(Inner {
                config,
                sealed,
                active,
                log_start,
                written: log_end,
                flushed: log_end,
                committed: log_end,
                pending: VecDeque::new(),
                pending_bytes: 0,
                cache: TailCache::new(cache.clone()),
                fenced: None,
                rollbacks: 0,
                last_write_error: None,
                last_write_disk_full: false,
                producers,
                epochs,
            }),
            streams: RefCell::new(VecDeque::new()),
            progress: Notify::default(),
            appended: Notify::default(),
            append_gate: Semaphore::new(1),
            log_start_gate: Semaphore::new(1),
            writer_active: Cell::new(false),
            syncer_active: Cell::new(false),
            closed: Cell::new(false),
            producer_appends: Cell::new(true),
            compacting: Cell::new(false),
            compacted_through: Cell::new(None),
            bytes_appended: Cell::new(0),
            records_appended: Cell::new(0),
            metrics,
            cache,
            storage,
        });
        Log::start_flush_timer(&log);
        Ok(log)
    }
}
