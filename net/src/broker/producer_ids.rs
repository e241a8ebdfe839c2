//! Producer ids for idempotent producers (InitProducerId). Shard 0 hands them out from a
//! block the controller allocated to this broker (a `ProducerIds` record in the metadata
//! log), so no two brokers, and no two runs of one, give the same id. A data directory
//! written before the metadata log has `meta/producer_ids`, the end of the last block it
//! reserved: it is read, never written, and every block starts after it.
//!
//! The next block is fetched in the background, at start and once nine tenths of the
//! current one are handed out (as Kafka's `RPCProducerIdManager` does), so InitProducerId
//! seldom waits for the controller, and not while a failover elects another one. One that
//! finds its block used up while a fetch is under way waits for that fetch: asking for a
//! block beside it would leave one unused.

use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

use coremq_engine::notify::Notify;
use coremq_runtime::sync::Semaphore;

use super::{Context, Error};
use crate::protocol::error_code;
use crate::protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};

const FILE: &str = "producer_ids";
/// How long a background fetch of the next block waits before asking again when no
/// controller answered.
const PREFETCH_RETRY: Duration = Duration::from_millis(200);

/// Shard 0's allocator.
#[derive(Debug)]
pub struct ProducerIds {
    /// Ids below this were handed out before the metadata log.
    legacy_end: i64,
    next: Cell<i64>,
    block_end: Cell<i64>,
    allocating: Semaphore,
    /// How many ids the current block holds.
    block_size: Cell<i64>,
    /// The next block, fetched ahead: (first id, count).
    prefetched: Cell<Option<(i64, i64)>>,
    /// A background fetch is under way.
    prefetching: Cell<bool>,
    /// Notified when a background fetch ends.
    prefetch_ended: Notify,
}

impl ProducerIds {
    /// The end of the last block a data directory written before the metadata log
    /// reserved, as stored in `meta_dir` (0 with none).
    pub fn stored_end(meta_dir: &Path) -> Result<i64, Error> {
        let path = meta_dir.join(FILE);
        let unusable = |reason: String| Error::Metadata {
            path: path.clone(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|end| *end >= 0)
                .ok_or_else(|| unusable(format!("not a producer id: {text:?}"))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(error) => Err(unusable(error.to_string())),
        }
    }

    /// An allocator whose ids are at least `legacy_end` (read by
    /// [`ProducerIds::stored_end`]).
    pub fn new(legacy_end: i64) -> ProducerIds {
        ProducerIds {
            legacy_end,
            next: Cell::new(0),
            block_end: Cell::new(0),
            allocating: Semaphore::new(1),
            block_size: Cell::new(0),
            prefetched: Cell::new(None),
            prefetching: Cell::new(false),
            prefetch_ended: Notify::default(),
        }
    }

    /// Fetches the next block in the background unless one is fetched or being fetched;
    /// asks again while no controller answers (call on shard 0).
    pub fn prefetch(&self) {
        if self.prefetching.get() || self.prefetched.get().is_some() {
            return;
        }
        self.prefetching.set(true);
        coremq_runtime::spawn_local(async {
            let context = Context::current();
            let ids = context
                .producer_ids
                .as_ref()
                .expect("shard 0 allocates producer ids");
            loop {
                let block = context
                    .cluster
                    .allocate_producer_ids(context.config.node_id, ids.legacy_end)
                    .await;
                match block {
                    Ok(block) => {
                        ids.prefetched.set(Some(block));
                        break;
                    }
                    Err(coremq_replication::Error::Stopped) => break,
                    Err(_) => {
                        if context.sleep_unless_stopping(PREFETCH_RETRY).await {
                            break;
                        }
                    }
                }
            }
            ids.prefetching.set(false);
            ids.prefetch_ended.notify_all();
        })
        .detach();
    }

    /// The next id, asking the controller for a block when this one is used up.
    pub async fn allocate(&self, context: &Context) -> Result<i64, coremq_replication::Error> {
        let _allocating = self
            .allocating
            .acquire_permit(1)
            .await
            .map_err(|_| coremq_replication::Error::Stopped)?;
        if self.next.get() >= self.block_end.get() {
            // A block being fetched (at start, or the last one ran out before it came) is
            // waited for: asking for another as well would throw one away.
            while self.prefetching.get() {
                self.prefetch_ended.notified().await;
            }
            let (first, count) = match self.prefetched.take() {
                Some(block) => block,
                None => {
                    context
                        .cluster
                        .allocate_producer_ids(context.config.node_id, self.legacy_end)
                        .await?
                }
            };
            self.next.set(first);
            self.block_end.set(first + count);
            self.block_size.set(count);
        }
        let id = self.next.get();
        self.next.set(id + 1);
        if self.block_end.get() - self.next.get() <= self.block_size.get() / 10 {
            self.prefetch();
        }
        Ok(id)
    }
}

pub async fn init_producer_id(
    context: &Context,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let refuse = |code| InitProducerIdResponse {
        error_code: code,
        producer_id: -1,
        producer_epoch: -1,
        ..InitProducerIdResponse::default()
    };
    if request.transactional_id.is_some() {
        // Transactions are not supported; Kafka's answer for a broker without them.
        return refuse(error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }
    // An idempotent producer gets a fresh id (epoch 0) each time, also when it asks to bump
    // the epoch of its current one (KIP-360): its sequences start again at 0 either way.
    let allocated = context
        .handle
        .on_shard(0, |_| async move {
            let context = Context::current();
            let ids = context
                .producer_ids
                .as_ref()
                .expect("shard 0 allocates producer ids");
            Ok(ids.allocate(&context).await)
        })
        .await
        .unwrap_or(Err(coremq_replication::Error::Stopped));
    match allocated {
        Ok(producer_id) => InitProducerIdResponse {
            error_code: error_code::NONE,
            producer_id,
            producer_epoch: 0,
            ..InitProducerIdResponse::default()
        },
        Err(error) => {
            log::warn!("allocating a producer id: {error}");
            // Retriable: the client asks again once a controller answers.
            refuse(error_code::COORDINATOR_NOT_AVAILABLE)
        }
    }
}
