//! A shard's fetcher from one leader broker (Kafka's `ReplicaFetcherThread`): one task
//! for every partition this shard follows from that broker. Each round it lets every
//! partition's [`FollowerState`] say what comes next: partitions still finding where they
//! diverge ask where their latest epoch ends (OffsetForLeaderEpoch) and truncate there;
//! the others fetch from their log end in one Fetch, append the leader's batches as they are
//! and take the leader's high watermark as their committed watermark. The network is behind
//! [`LeaderLink`], which the front end implements with its Kafka client.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coremq_engine::batch::{self, CheckedBatch};
use coremq_engine::log::Log;
use coremq_engine::{Ack, Offset, TopicPartition};

use crate::follower::{LocalLog, Request, Truncate};
use crate::leader::BrokerId;
use crate::replica::{Following, Replicas};

/// How long a fetch waits at the leader for data.
pub const FETCH_WAIT: Duration = Duration::from_millis(500);
/// Bytes a fetch asks for per partition.
pub const FETCH_PARTITION_BYTES: usize = 1 << 20;
/// How long the fetcher waits after the leader could not be reached or refused.
const BACKOFF: Duration = Duration::from_millis(100);

/// One partition in a follower's Fetch.
#[derive(Debug, Clone)]
pub struct FetchPartition {
    pub partition: TopicPartition,
    pub topic_id: [u8; 16],
    pub fetch_offset: Offset,
    pub leader_epoch: i32,
    pub log_start: Offset,
}

/// What the leader answered for one partition.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// Batches from the fetch offset (possibly none) and the leader's watermarks.
    Records {
        batches: Bytes,
        high_watermark: Offset,
    },
    /// The fetch offset is outside the leader's log.
    OutOfRange { log_start: Offset, log_end: Offset },
    /// Refused (not the leader, another epoch, ...): wait for the metadata to move on.
    Refused(String),
}

/// One partition in an OffsetForLeaderEpoch a follower sends.
#[derive(Debug, Clone)]
pub struct EpochQuery {
    pub partition: TopicPartition,
    pub current_leader_epoch: i32,
    pub epoch: i32,
}

/// The leader's answer for one partition: where the epoch asked about ends (the largest
/// epoch at or below it and its end), `Ok(None)` if it knows none, or why it refused.
pub type EpochAnswer = Result<Option<(i32, Offset)>, String>;

pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// How a follower reaches a leader broker: the front end's client.
pub trait LeaderLink {
    /// Fetches `partitions` from broker `leader` at `address` as replica `replica`, waiting
    /// up to `wait` for data; the answers in the order asked.
    fn fetch<'a>(
        &'a self,
        leader: BrokerId,
        address: (String, u16),
        replica: BrokerId,
        partitions: Vec<FetchPartition>,
        wait: Duration,
    ) -> LocalFuture<'a, Result<Vec<Fetched>, String>>;

    /// Asks broker `leader` where epochs end (OffsetForLeaderEpoch); the answers in the
    /// order asked.
    fn epoch_ends<'a>(
        &'a self,
        leader: BrokerId,
        address: (String, u16),
        replica: BrokerId,
        queries: Vec<EpochQuery>,
    ) -> LocalFuture<'a, Result<Vec<EpochAnswer>, String>>;
}

/// The follower's own log as [`crate::follower`] decides from it.
struct View<'a>(&'a Log);

impl LocalLog for View<'_> {
    fn log_end(&self) -> Offset {
        self.0.log_end()
    }

    fn latest_epoch(&self) -> Option<i32> {
        self.0.leader_epochs().latest().map(|entry| entry.epoch)
    }

    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, Offset)> {
        self.0.end_offset_for_epoch(epoch)
    }

    fn committed(&self) -> Offset {
        self.0.offsets().committed
    }
}

async fn truncate(log: &Log, truncate: Truncate) -> coremq_engine::Result<()> {
    match truncate {
        Truncate::Nothing => Ok(()),
        Truncate::To(offset) => log.truncate_to(offset).await.map(|_| ()),
        Truncate::Restart(offset) => log.truncate_fully_and_start_at(offset).await,
    }
}

/// Cuts `following`'s log as its state says; false (and a log line) if that failed.
async fn truncated(following: &Following, cut: Truncate) -> bool {
    match truncate(&following.log, cut).await {
        Ok(()) => true,
        Err(error) => {
            log::warn!("{}: truncating: {error}", following.partition);
            false
        }
    }
}

/// The leader's answers, one per partition asked about; `None` (and a log line) if it
/// could not be reached or answered for other partitions.
fn answered<T>(leader: BrokerId, answers: Result<Vec<T>, String>, asked: usize) -> Option<Vec<T>> {
    match answers {
        Ok(answers) if answers.len() == asked => Some(answers),
        Ok(_) => None,
        Err(error) => {
            log::debug!("replica fetcher: leader {leader}: {error}");
            None
        }
    }
}

/// Fetches from `leader` for this shard until it follows nothing from it.
pub(crate) async fn run(replicas: Rc<Replicas>, leader: BrokerId) {
    let links = replicas.links();
    let me = replicas.me();
    loop {
        let following = replicas.followed_from(leader);
        if following.is_empty() && replicas.fetcher_ended(leader) {
            return;
        }
        let Some(address) = crate::cluster::broker_address(leader) else {
            coremq_runtime::sleep(BACKOFF).await;
            continue;
        };
        let mut queries = Vec::new();
        let mut fetches = Vec::new();
        for partition in &following {
            let (cut, request) = partition.state.borrow_mut().next(&View(&partition.log));
            if !truncated(partition, cut).await {
                continue;
            }
            match request {
                Request::EpochEnd { epoch } => queries.push((partition.clone(), epoch)),
                Request::Fetch { offset } => fetches.push((partition.clone(), offset)),
            }
        }
        let progressed = if !queries.is_empty() {
            reconcile(&*links, leader, address, me, queries).await
        } else if !fetches.is_empty() {
            fetch(&*links, leader, address, me, fetches).await
        } else {
            false
        };
        if !progressed {
            coremq_runtime::sleep(BACKOFF).await;
        }
    }
}

/// One OffsetForLeaderEpoch round: truncates each partition where the leader says; whether
/// the leader answered.
async fn reconcile(
    links: &dyn LeaderLink,
    leader: BrokerId,
    address: (String, u16),
    me: BrokerId,
    queries: Vec<(Rc<Following>, i32)>,
) -> bool {
    let asked = queries
        .iter()
        .map(|(following, epoch)| EpochQuery {
            partition: following.partition.clone(),
            current_leader_epoch: following.state.borrow().leader_epoch(),
            epoch: *epoch,
        })
        .collect();
    let asked = links.epoch_ends(leader, address, me, asked).await;
    let Some(answers) = answered(leader, asked, queries.len()) else {
        return false;
    };
    let mut progressed = false;
    for ((following, _), answer) in queries.into_iter().zip(answers) {
        if following.stopped.get() {
            continue;
        }
        match answer {
            Ok(end) => {
                let cut = following
                    .state
                    .borrow_mut()
                    .on_epoch_end(end, &View(&following.log));
                progressed |= truncated(&following, cut).await;
            }
            Err(refused) => log::debug!("{}: epoch end refused: {refused}", following.partition),
        }
    }
    progressed
}

/// One Fetch round: appends what the leader sent; whether anything moved.
async fn fetch(
    links: &dyn LeaderLink,
    leader: BrokerId,
    address: (String, u16),
    me: BrokerId,
    fetches: Vec<(Rc<Following>, Offset)>,
) -> bool {
    let asked = fetches
        .iter()
        .map(|(following, offset)| FetchPartition {
            partition: following.partition.clone(),
            topic_id: following.topic,
            fetch_offset: *offset,
            leader_epoch: following.state.borrow().leader_epoch(),
            log_start: following.log.offsets().log_start,
        })
        .collect();
    let asked = links.fetch(leader, address, me, asked, FETCH_WAIT).await;
    let Some(answers) = answered(leader, asked, fetches.len()) else {
        return false;
    };
    let mut progressed = false;
    for ((following, offset), answer) in fetches.into_iter().zip(answers) {
        if following.stopped.get() {
            continue;
        }
        match answer {
            Fetched::Records {
                batches,
                high_watermark,
            } => match append(&following.log, batches).await {
                Ok(()) => {
                    let log_end = following.log.log_end();
                    following.log.set_committed(high_watermark.min(log_end));
                    progressed = true;
                }
                Err(error) => log::warn!("{}: appending: {error}", following.partition),
            },
            Fetched::OutOfRange { log_start, log_end } => {
                let cut = following
                    .state
                    .borrow_mut()
                    .on_out_of_range(offset, log_start, log_end);
                progressed |= truncated(&following, cut).await;
            }
            Fetched::Refused(reason) => {
                log::debug!("{}: fetch refused: {reason}", following.partition);
            }
        }
    }
    progressed
}

/// Appends the leader's batches as they are, each checked first (they come from the
/// network); a cut batch at the end is left for the next fetch.
async fn append(log: &Rc<Log>, batches: Bytes) -> coremq_engine::Result<()> {
    let limits = log.config().batch_limits();
    let frames: Vec<(usize, usize)> = batch::frames(&batches)
        .map(|frame| (frame.position, frame.header.total_bytes()))
        .collect();
    for (position, size) in frames {
        let checked = CheckedBatch::new(batches.slice(position..position + size), limits)?;
        if checked.header().last_offset() < log.log_end() {
            continue;
        }
        log.append_replica(checked, Ack::Policy).await?;
    }
    Ok(())
}
