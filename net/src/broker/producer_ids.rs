//! Producer ids for idempotent producers (InitProducerId). Ids are never reused: shard 0
//! hands them out from a block whose end is written to `meta/producer_ids` before the first
//! id of the block is given, so a restart continues after the block.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use coremq_runtime::sync::Semaphore;

use super::{Context, Error};
use crate::protocol::error_code;
use crate::protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};

/// Ids reserved per write of the file.
const BLOCK: i64 = 1000;
const FILE: &str = "producer_ids";

/// Shard 0's allocator.
#[derive(Debug)]
pub struct ProducerIds {
    dir: PathBuf,
    next: Cell<i64>,
    reserved_end: Cell<i64>,
    allocating: Semaphore,
}

impl ProducerIds {
    /// The end of the last reserved block as stored in `meta_dir` (0 with none).
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

    /// An allocator whose ids start at `reserved_end` (read by [`ProducerIds::stored_end`]).
    pub fn new(meta_dir: PathBuf, reserved_end: i64) -> ProducerIds {
        ProducerIds {
            dir: meta_dir,
            next: Cell::new(reserved_end),
            reserved_end: Cell::new(reserved_end),
            allocating: Semaphore::new(1),
        }
    }

    pub async fn allocate(&self) -> Result<i64, coremq_engine::Error> {
        // One allocation at a time: the next block's end is stored before its first id goes.
        let _allocating = self
            .allocating
            .acquire_permit(1)
            .await
            .map_err(|_| coremq_engine::Error::ShuttingDown)?;
        let id = self.next.get();
        if id >= self.reserved_end.get() {
            let end = id + BLOCK;
            let contents = format!("{end}\n").into_bytes();
            coremq_engine::storage::Storage::default()
                .write_atomically(&self.dir, FILE, contents)
                .await?;
            self.reserved_end.set(end);
        }
        self.next.set(id + 1);
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
            ids.allocate().await
        })
        .await;
    match allocated {
        Ok(producer_id) => InitProducerIdResponse {
            error_code: error_code::NONE,
            producer_id,
            producer_epoch: 0,
            ..InitProducerIdResponse::default()
        },
        Err(error) => {
            log::warn!("allocating a producer id: {error}");
            refuse(error_code::COORDINATOR_NOT_AVAILABLE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_not_reused_after_a_restart() {
        coremq_runtime::run_alone(async || {
            let dir = tempfile::tempdir().unwrap();
            let open = |dir: &Path| {
                ProducerIds::stored_end(dir).map(|end| ProducerIds::new(dir.to_path_buf(), end))
            };
            let ids = open(dir.path()).unwrap();
            let mut first = Vec::new();
            for _ in 0..3 {
                first.push(ids.allocate().await.unwrap());
            }
            assert_eq!(first, vec![0, 1, 2]);
            let reopened = open(dir.path()).unwrap();
            assert_eq!(reopened.allocate().await.unwrap(), BLOCK);
            std::fs::write(dir.path().join(FILE), "garbage").unwrap();
            assert!(open(dir.path()).is_err());
        });
    }
}
