//! This shard's replicas of the partitions it holds, in the roles the metadata gives them
//! (Kafka's `ReplicaManager`, per shard, without locks): a leader keeps a [`LeaderState`]
//! whose high watermark drives the log's committed watermark, answers `acks=all` once it
//! passes a write, and proposes in-sync replica changes to the controller; a follower keeps
//! a [`FollowerState`] and is fed by the fetcher of its leader ([`crate::fetcher`]).
//!
//! The registry lives on each shard (`coremq_runtime::local`); the metadata node changes
//! roles on the shard owning each partition, and the front ends reach a partition's role
//! through [`crate::Partition`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coremq_engine::log::Log;
use coremq_engine::{Error, Isolation, Offset, Result, TopicPartition};

use crate::controller::Request;
use crate::fetcher::{self, LeaderLink};
use crate::follower::FollowerState;
use crate::leader::{AckState, Assignment, BrokerId, IsrProposal, LeaderState, ReplicaSettings};
use crate::node::Event;

/// Kafka's topic config for the in-sync replicas an `acks=all` write needs.
pub const MIN_INSYNC: &str = "min.insync.replicas";
/// How often leaders check for lagging followers and resend unanswered proposals.
const TICK: Duration = Duration::from_millis(100);
/// How long an `acks=all` wait sleeps between looks at its leadership.
const ACK_POLL: Duration = Duration::from_millis(100);

/// Makes each shard's link to other brokers' leaders (the front end's client).
pub type LeaderLinks = Arc<dyn Fn() -> Rc<dyn LeaderLink> + Send + Sync>;

/// What replication follows from the topic's configs and the broker's.
pub fn settings(configs: &BTreeMap<String, String>, lag_max_ms: u64) -> ReplicaSettings {
    ReplicaSettings {
        lag_max_ms,
        min_insync: configs
            .get(MIN_INSYNC)
            .and_then(|value| value.parse().ok())
            .unwrap_or(1),
    }
}

/// A partition this broker leads, for one leader epoch.
pub struct Leading {
    log: Rc<Log>,
    topic: [u8; 16],
    index: u32,
    state: RefCell<LeaderState>,
    /// Set once another role replaces this one: waits end with [`Error::NotLeader`].
    resigned: Cell<bool>,
}

impl Leading {
    pub fn epoch(&self) -> i32 {
        self.state.borrow().epoch()
    }

    /// The high watermark: what every in-sync replica has.
    pub fn high_watermark(&self) -> Offset {
        self.state.borrow().high_watermark()
    }

    /// Refuses an `acks=all` write before it is stored while the in-sync replicas are
    /// fewer than `min.insync.replicas` (Kafka's NOT_ENOUGH_REPLICAS).
    pub fn check_min_insync(&self) -> Result<()> {
        let state = self.state.borrow();
        if state.has_min_insync() {
            Ok(())
        } else {
            Err(Error::NotEnoughReplicas {
                in_sync: state.isr().len(),
                required: state.settings().min_insync,
                after_append: false,
            })
        }
    }

    /// The leader's log is written up to `written` (an append ending below it was answered):
    /// the high watermark may move (at once where it is the only in-sync replica).
    pub fn appended(&self, written: Offset) {
        let moved = self.state.borrow_mut().on_appended(written);
        if let Some(high_watermark) = moved {
            self.log.set_committed(high_watermark);
        }
    }

    /// Waits until the write ending at `last_offset` is committed with enough in-sync
    /// replicas, at most `timeout`.
    pub async fn await_commit(&self, last_offset: Offset, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if self.resigned.get() {
                return Err(Error::NotLeader);
            }
            let state = self.state.borrow().ack_state(last_offset);
            match state {
                AckState::Done => return Ok(()),
                AckState::NotEnoughReplicasAfterAppend => {
                    let state = self.state.borrow();
                    return Err(Error::NotEnoughReplicas {
                        in_sync: state.isr().len(),
                        required: state.settings().min_insync,
                        after_append: true,
                    });
                }
                AckState::Waiting => {}
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Error::TimedOut {
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            self.log
                .wait_readable(last_offset, Isolation::Committed, left.min(ACK_POLL))
                .await;
        }
    }

    /// Follower `replica` fetched from `fetch_offset`: its progress may move the high
    /// watermark and let it join the in-sync replicas. Refused if it is not a replica.
    pub fn fetched(&self, replicas: &Replicas, replica: BrokerId, fetch_offset: Offset) -> bool {
        let now = replicas.now_ms();
        let outcome = self.state.borrow_mut().on_fetch(replica, fetch_offset, now);
        let Some((moved, proposal)) = outcome else {
            return false;
        };
        if let Some(high_watermark) = moved {
            self.log.set_committed(high_watermark);
        }
        if let Some(proposal) = proposal {
            replicas.propose(self, proposal);
        }
        true
    }
}

/// A partition this broker follows.
pub struct Following {
    pub(crate) log: Rc<Log>,
    pub(crate) partition: TopicPartition,
    pub(crate) topic: [u8; 16],
    pub(crate) state: RefCell<FollowerState>,
    /// Set once another role replaces this one: its fetcher lets it go.
    pub(crate) stopped: Cell<bool>,
}

/// This shard's replicas in their roles.
pub struct Replicas {
    me: BrokerId,
    leaders: RefCell<HashMap<TopicPartition, Rc<Leading>>>,
    followers: RefCell<HashMap<TopicPartition, Rc<Following>>>,
    /// The leaders this shard runs a fetcher for.
    fetchers: RefCell<BTreeSet<BrokerId>>,
    ticking: Cell<bool>,
    node: flume::Sender<Event>,
    links: Rc<dyn LeaderLink>,
    lag_max_ms: u64,
    started: Instant,
}

impl Replicas {
    pub(crate) fn install(
        me: BrokerId,
        node: flume::Sender<Event>,
        links: Rc<dyn LeaderLink>,
        lag_max_ms: u64,
    ) {
        coremq_runtime::install(Rc::new(Replicas {
            me,
            leaders: RefCell::default(),
            followers: RefCell::default(),
            fetchers: RefCell::default(),
            ticking: Cell::new(false),
            node,
            links,
            lag_max_ms,
            started: Instant::now(),
        }));
    }

    /// This shard's registry (call on a shard, after [`crate::Cluster::start`]).
    pub fn current() -> Option<Rc<Replicas>> {
        coremq_runtime::local::<Replicas>()
    }

    pub fn me(&self) -> BrokerId {
        self.me
    }

    pub(crate) fn links(&self) -> Rc<dyn LeaderLink> {
        self.links.clone()
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn leader(&self, partition: &TopicPartition) -> Option<Rc<Leading>> {
        self.leaders.borrow().get(partition).cloned()
    }

    /// The partitions this shard follows from `leader`, the stopped ones let go.
    pub(crate) fn followed_from(&self, leader: BrokerId) -> Vec<Rc<Following>> {
        let mut followers = self.followers.borrow_mut();
        followers.retain(|_, following| !following.stopped.get());
        followers
            .values()
            .filter(|following| following.state.borrow().leader() == leader)
            .cloned()
            .collect()
    }

    /// Leads `log` as `assignment` says (its epoch already assigned to the log), with what
    /// the log knows committed as the starting high watermark.
    pub fn lead(
        self: &Rc<Self>,
        log: Rc<Log>,
        topic: [u8; 16],
        index: u32,
        assignment: &Assignment,
        configs: &BTreeMap<String, String>,
    ) {
        let partition = log.topic_partition().clone();
        self.resign(&partition);
        log.set_producer_appends(true);
        let offsets = log.offsets();
        let state = LeaderState::new(
            assignment,
            offsets.high_watermark,
            offsets.committed,
            self.now_ms(),
            settings(configs, self.lag_max_ms),
        );
        log.set_committed(state.high_watermark());
        log::info!(
            "{partition}: leading at epoch {}, in-sync replicas {:?}",
            assignment.leader_epoch,
            assignment.isr
        );
        let leading = Rc::new(Leading {
            log,
            topic,
            index,
            state: RefCell::new(state),
            resigned: Cell::new(false),
        });
        self.leaders.borrow_mut().insert(partition, leading);
        self.start_ticking();
    }

    /// The controller committed new in-sync replicas or replicas for a partition this broker
    /// still leads at the same epoch.
    pub fn assignment_changed(&self, partition: &TopicPartition, assignment: &Assignment) {
        if let Some(leading) = self.leader(partition) {
            let now = self.now_ms();
            let moved = leading
                .state
                .borrow_mut()
                .on_assignment_committed(assignment, now);
            if let Some(high_watermark) = moved {
                leading.log.set_committed(high_watermark);
            }
        }
    }

    /// New topic configs for a partition led here.
    pub fn configs_changed(&self, partition: &TopicPartition, configs: &BTreeMap<String, String>) {
        if let Some(leading) = self.leader(partition) {
            leading
                .state
                .borrow_mut()
                .set_settings(settings(configs, self.lag_max_ms));
        }
    }

    /// Follows `leader` at `leader_epoch` for `log`, starting its fetcher if none runs.
    pub fn follow(
        self: &Rc<Self>,
        log: Rc<Log>,
        topic: [u8; 16],
        leader: BrokerId,
        leader_epoch: i32,
    ) {
        let partition = log.topic_partition().clone();
        self.resign(&partition);
        log.set_producer_appends(false);
        log::info!("{partition}: following broker {leader} at epoch {leader_epoch}");
        let following = Rc::new(Following {
            log,
            partition: partition.clone(),
            topic,
            state: RefCell::new(FollowerState::new(leader, leader_epoch)),
            stopped: Cell::new(false),
        });
        self.followers.borrow_mut().insert(partition, following);
        if self.fetchers.borrow_mut().insert(leader) {
            coremq_runtime::spawn_local(fetcher::run(self.clone(), leader)).detach();
        }
    }

    /// A fetcher ends: it has no partition left to fetch.
    pub(crate) fn fetcher_ended(&self, leader: BrokerId) -> bool {
        if !self.followed_from(leader).is_empty() {
            return false;
        }
        self.fetchers.borrow_mut().remove(&leader);
        true
    }

    /// Neither leads nor follows `partition` any more (another role comes, or none).
    pub fn resign(&self, partition: &TopicPartition) {
        if let Some(leading) = self.leaders.borrow_mut().remove(partition) {
            leading.resigned.set(true);
            leading.log.set_producer_appends(false);
        }
        if let Some(following) = self.followers.borrow_mut().remove(partition) {
            following.stopped.set(true);
        }
    }

    /// Sends `proposal` to the controller; a refusal lets the leader propose again.
    fn propose(&self, leading: &Leading, proposal: IsrProposal) {
        let Some(partition_epoch) = crate::cluster::partition_epoch(&leading.topic, leading.index)
        else {
            return;
        };
        let request = Request::AlterPartition {
            broker: self.me,
            topic: leading.topic,
            partition: leading.index,
            leader_epoch: proposal.leader_epoch,
            partition_epoch,
            isr: proposal.isr.into_iter().collect(),
        };
        let (answer, answered) = flume::bounded(1);
        if self.node.send(Event::Request(request, answer)).is_err() {
            return;
        }
        let partition = leading.log.topic_partition().clone();
        let replicas = Replicas::current();
        coremq_runtime::spawn_local(async move {
            let refused = !matches!(answered.recv_async().await, Ok(Ok(_)));
            if refused && let Some(leading) = replicas.and_then(|r| r.leader(&partition)) {
                leading.state.borrow_mut().on_isr_rejected();
            }
        })
        .detach();
    }

    /// Starts this shard's leader ticks once it leads something.
    fn start_ticking(self: &Rc<Self>) {
        if self.ticking.replace(true) {
            return;
        }
        let replicas = self.clone();
        coremq_runtime::spawn_local(async move {
            while !replicas.node.is_disconnected() {
                coremq_runtime::sleep(TICK).await;
                let now = replicas.now_ms();
                let leaders: Vec<Rc<Leading>> =
                    replicas.leaders.borrow().values().cloned().collect();
                for leading in leaders {
                    let proposal = leading.state.borrow_mut().tick(now);
                    if let Some(proposal) = proposal {
                        replicas.propose(&leading, proposal);
                    }
                }
            }
        })
        .detach();
    }
}
