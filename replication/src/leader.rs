//! A partition leader's view of its replicas (Kafka's `Partition` on the leader), as a pure
//! state machine: no I/O and no clock of its own. The driver (the broker, or the simulator)
//! feeds it the leader's log end, the followers' fetches and the time, and carries out what it
//! answers: a new high watermark for the engine's `committed` watermark, and in-sync replica
//! changes to propose to the controller (Kafka's AlterPartition).
//!
//! The high watermark is the smallest log end among the in-sync replicas, the leader's own
//! included, and never goes back. While a change of the in-sync set is in flight, the set it
//! counts is the union of the committed and the proposed one (Kafka's "maximal ISR"): a
//! replica joining counts at once, one leaving counts until the controller has removed it. So
//! a leader cut off from the controller and its followers can neither move its high watermark
//! nor shrink the set to itself: it stops acknowledging `acks=all` writes.

use std::collections::{BTreeMap, BTreeSet};

use coremq_engine::Offset;

/// How long a leader waits for the controller to answer an in-sync replica change before it
/// sends it again.
pub const ALTER_RETRY_MS: u64 = 1_000;

/// A broker's id, Kafka's replica id.
pub type BrokerId = i32;

/// What the leader's replication follows from the topic's configs and the broker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// A follower not caught up for this long leaves the in-sync replicas
    /// (`replica.lag.time.max.ms`).
    pub lag_max_ms: u64,
    /// In-sync replicas an `acks=all` write needs (`min.insync.replicas`).
    pub min_insync: usize,
}

/// Who holds a partition, as the controller decided it (Kafka's PartitionRegistration).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    pub leader: BrokerId,
    pub leader_epoch: i32,
    /// Every replica, the preferred leader first.
    pub replicas: Vec<BrokerId>,
    pub isr: BTreeSet<BrokerId>,
}

/// An in-sync replica set to propose to the controller (Kafka's AlterPartition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrProposal {
    pub leader_epoch: i32,
    pub isr: BTreeSet<BrokerId>,
}

/// Where an `acks=all` write stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckState {
    /// The high watermark has not passed it yet.
    Waiting,
    /// Committed, with at least `min_insync` in-sync replicas.
    Done,
    /// Committed, but the in-sync replicas fell below `min_insync` meanwhile (Kafka's
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    NotEnoughReplicasAfterAppend,
}

/// A follower as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Follower {
    /// Its log end, from its last fetch; unknown until it fetches from this leader.
    log_end: Option<Offset>,
    /// When it was last caught up with the leader's log end (Kafka's `lastCaughtUpTimeMs`).
    caught_up_ms: u64,
    last_fetch_ms: u64,
    /// The leader's log end at its last fetch.
    leader_end_at_last_fetch: Offset,
}

impl Follower {
    /// A follower not heard from yet, at `now_ms` with the leader's log ending at
    /// `log_end`; one `in_sync` counts as caught up now.
    fn new(in_sync: bool, now_ms: u64, log_end: Offset) -> Follower {
        Follower {
            log_end: None,
            caught_up_ms: if in_sync { now_ms } else { 0 },
            last_fetch_ms: now_ms,
            leader_end_at_last_fetch: log_end,
        }
    }
}

/// A leader of one partition for one leader epoch.
#[derive(Debug, Clone)]
pub struct LeaderState {
    id: BrokerId,
    epoch: i32,
    /// The leader's log end when it took over: a follower joins the in-sync replicas only
    /// once it has everything of the leader's own epoch's start.
    epoch_start: Offset,
    log_end: Offset,
    high_watermark: Offset,
    isr: BTreeSet<BrokerId>,
    /// The in-sync set asked of the controller, and when it was last sent.
    proposed: Option<(BTreeSet<BrokerId>, u64)>,
    followers: BTreeMap<BrokerId, Follower>,
    settings: ReplicaSettings,
}

impl LeaderState {
    /// The leader `assignment` elects (this broker), whose log ends at `log_end` with
    /// `high_watermark` known committed. The in-sync followers count as caught up at `now_ms`.
    pub fn new(
        assignment: &Assignment,
        log_end: Offset,
        high_watermark: Offset,
        now_ms: u64,
        settings: ReplicaSettings,
    ) -> LeaderState {
        let Assignment {
            leader: id,
            leader_epoch: epoch,
            replicas,
            isr,
        } = assignment;
        let (id, epoch) = (*id, *epoch);
        let followers = replicas
            .iter()
            .filter(|&&replica| replica != id)
            .map(|&replica| {
                let follower = Follower::new(isr.contains(&replica), now_ms, log_end);
                (replica, follower)
            })
            .collect();
        let mut isr = isr.clone();
        isr.insert(id);
        let mut state = LeaderState {
            id,
            epoch,
            epoch_start: log_end,
            log_end,
            high_watermark: high_watermark.min(log_end),
            isr,
            proposed: None,
            followers,
            settings,
        };
        state.advance_high_watermark();
        state
    }

    pub fn epoch(&self) -> i32 {
        self.epoch
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// The in-sync replicas as the controller last committed them.
    pub fn isr(&self) -> &BTreeSet<BrokerId> {
        &self.isr
    }

    /// The change waiting for the controller, if any.
    pub fn proposed(&self) -> Option<&BTreeSet<BrokerId>> {
        self.proposed.as_ref().map(|(isr, _)| isr)
    }

    pub fn settings(&self) -> ReplicaSettings {
        self.settings
    }

    pub fn set_settings(&mut self, settings: ReplicaSettings) {
        self.settings = settings;
    }

    /// Whether an `acks=all` write may be appended now (Kafka refuses it with
    /// NOT_ENOUGH_REPLICAS before appending when the in-sync replicas are too few).
    pub fn has_min_insync(&self) -> bool {
        self.isr.len() >= self.settings.min_insync
    }

    /// Where an `acks=all` write ending at `last_offset` stands.
    pub fn ack_state(&self, last_offset: Offset) -> AckState {
        if self.high_watermark <= last_offset {
            AckState::Waiting
        } else if self.has_min_insync() {
            AckState::Done
        } else {
            AckState::NotEnoughReplicasAfterAppend
        }
    }

    /// The leader's own log grew (or was written) to `log_end`; the new high watermark if it
    /// moved (it does at once when the leader is the only in-sync replica).
    pub fn on_appended(&mut self, log_end: Offset) -> Option<Offset> {
        self.log_end = self.log_end.max(log_end);
        self.advance_high_watermark()
    }

    /// `follower` fetched from `fetch_offset`, which says its log ends there. Returns the
    /// new high watermark if it moved, and an in-sync replica set to propose if the follower
    /// caught up enough to join. `None` if `follower` is not a replica of the partition.
    pub fn on_fetch(
        &mut self,
        follower: BrokerId,
        fetch_offset: Offset,
        now_ms: u64,
    ) -> Option<(Option<Offset>, Option<IsrProposal>)> {
        let log_end = self.log_end;
        let state = self.followers.get_mut(&follower)?;
        // A fetch from an offset past the leader's end is answered with an error, not taken
        // as progress.
        let fetch_offset = fetch_offset.min(log_end);
        if fetch_offset >= log_end {
            state.caught_up_ms = state.caught_up_ms.max(now_ms);
        } else if fetch_offset >= state.leader_end_at_last_fetch {
            state.caught_up_ms = state.caught_up_ms.max(state.last_fetch_ms);
        }
        state.log_end = Some(fetch_offset);
        state.last_fetch_ms = now_ms;
        state.leader_end_at_last_fetch = log_end;
        let moved = self.advance_high_watermark();
        let expand = self.maybe_expand(follower, fetch_offset, now_ms);
        Some((moved, expand))
    }

    /// Time passed: an in-sync follower not caught up for longer than the lag bound is
    /// proposed out of the set (never the leader itself); a proposal unanswered for
    /// `ALTER_RETRY_MS` is sent again (the request or its answer may have been lost).
    pub fn tick(&mut self, now_ms: u64) -> Option<IsrProposal> {
        if let Some((isr, sent_ms)) = &mut self.proposed {
            if now_ms.saturating_sub(*sent_ms) < ALTER_RETRY_MS {
                return None;
            }
            *sent_ms = now_ms;
            return Some(IsrProposal {
                leader_epoch: self.epoch,
                isr: isr.clone(),
            });
        }
        let lagging: Vec<BrokerId> = self
            .isr
            .iter()
            .filter(|&&replica| replica != self.id)
            .filter(|replica| {
                self.followers.get(replica).is_some_and(|follower| {
                    now_ms.saturating_sub(follower.caught_up_ms) > self.settings.lag_max_ms
                })
            })
            .copied()
            .collect();
        if lagging.is_empty() {
            return None;
        }
        let isr: BTreeSet<BrokerId> = self
            .isr
            .iter()
            .filter(|replica| !lagging.contains(replica))
            .copied()
            .collect();
        Some(self.propose(isr, now_ms))
    }

    /// The controller committed a new in-sync set (ours, or one it decided) or new replicas
    /// (a reassignment) for this leader's epoch, at `now_ms`: a replica joining is followed
    /// from now, not caught up; one gone is forgotten. The new high watermark if that moved
    /// it.
    pub fn on_assignment_committed(
        &mut self,
        assignment: &Assignment,
        now_ms: u64,
    ) -> Option<Offset> {
        let replicas = &assignment.replicas;
        self.followers
            .retain(|replica, _| replicas.contains(replica));
        for &replica in replicas.iter().filter(|&&replica| replica != self.id) {
            self.followers
                .entry(replica)
                .or_insert_with(|| Follower::new(false, now_ms, self.log_end));
        }
        self.isr = assignment.isr.clone();
        self.isr.insert(self.id);
        self.proposed = None;
        self.advance_high_watermark()
    }

    /// The controller refused the proposal (or it was lost): the committed set stands, and
    /// the next fetch or tick may propose again.
    pub fn on_isr_rejected(&mut self) {
        self.proposed = None;
    }

    fn propose(&mut self, isr: BTreeSet<BrokerId>, now_ms: u64) -> IsrProposal {
        self.proposed = Some((isr.clone(), now_ms));
        IsrProposal {
            leader_epoch: self.epoch,
            isr,
        }
    }

    /// A follower outside the set joins once it has everything committed and everything of
    /// this epoch's start (Kafka's `isFollowerInSync` for expansion).
    fn maybe_expand(
        &mut self,
        follower: BrokerId,
        log_end: Offset,
        now_ms: u64,
    ) -> Option<IsrProposal> {
        if self.proposed.is_some() || self.isr.contains(&follower) {
            return None;
        }
        if log_end < self.high_watermark || log_end < self.epoch_start {
            return None;
        }
        let mut isr = self.isr.clone();
        isr.insert(follower);
        Some(self.propose(isr, now_ms))
    }

    /// Moves the high watermark to the smallest log end of the counted in-sync replicas, if
    /// that is higher; a follower whose log end is not known yet holds it.
    fn advance_high_watermark(&mut self) -> Option<Offset> {
        let counted = self
            .isr
            .iter()
            .chain(self.proposed.iter().flat_map(|(isr, _)| isr));
        let mut smallest = self.log_end;
        for replica in counted {
            if *replica == self.id {
                continue;
            }
            match self
                .followers
                .get(replica)
                .and_then(|follower| follower.log_end)
            {
                Some(log_end) => smallest = smallest.min(log_end),
                None => return None,
            }
        }
        if smallest > self.high_watermark {
            self.high_watermark = smallest;
            Some(smallest)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: ReplicaSettings = ReplicaSettings {
        lag_max_ms: 30_000,
        min_insync: 2,
    };

    fn set(replicas: &[BrokerId]) -> BTreeSet<BrokerId> {
        replicas.iter().copied().collect()
    }

    /// Broker 1 leads replicas 1, 2, 3 at epoch 5 with in-sync set `isr`.
    fn assignment(isr: &[BrokerId]) -> Assignment {
        Assignment {
            leader: 1,
            leader_epoch: 5,
            replicas: vec![1, 2, 3],
            isr: set(isr),
        }
    }

    fn leader(isr: &[BrokerId], log_end: u64) -> LeaderState {
        LeaderState::new(&assignment(isr), Offset(log_end), Offset(0), 0, SETTINGS)
    }

    #[test]
    fn the_high_watermark_is_the_smallest_in_sync_log_end() {
        let mut state = leader(&[1, 2, 3], 100);
        assert_eq!(state.high_watermark(), Offset(0), "followers not heard yet");
        assert_eq!(state.on_fetch(2, Offset(60), 10), Some((None, None)));
        assert_eq!(
            state.on_fetch(3, Offset(40), 10),
            Some((Some(Offset(40)), None))
        );
        assert_eq!(
            state.on_fetch(3, Offset(80), 20),
            Some((Some(Offset(60)), None))
        );
        assert_eq!(
            state.on_fetch(2, Offset(100), 30),
            Some((Some(Offset(80)), None))
        );
        // Never back, even if a follower's fetch offset goes back (it truncated).
        assert_eq!(state.on_fetch(3, Offset(50), 40), Some((None, None)));
        assert_eq!(state.high_watermark(), Offset(80));
        assert_eq!(state.on_fetch(9, Offset(100), 40), None, "not a replica");
    }

    #[test]
    fn a_sole_in_sync_leader_commits_on_append() {
        let mut state = leader(&[1], 0);
        assert_eq!(state.on_appended(Offset(10)), Some(Offset(10)));
        assert_eq!(
            state.ack_state(Offset(9)),
            AckState::NotEnoughReplicasAfterAppend
        );
        assert!(!state.has_min_insync());
    }

    #[test]
    fn acks_all_waits_for_the_high_watermark_and_min_insync() {
        let mut state = leader(&[1, 2], 0);
        state.on_appended(Offset(10));
        assert_eq!(state.ack_state(Offset(9)), AckState::Waiting);
        state.on_fetch(2, Offset(10), 5);
        assert_eq!(state.ack_state(Offset(9)), AckState::Done);
        assert_eq!(state.ack_state(Offset(10)), AckState::Waiting);
    }

    #[test]
    fn a_lagging_follower_is_proposed_out_and_counts_until_removed() {
        let mut state = leader(&[1, 2, 3], 0);
        state.on_appended(Offset(10));
        state.on_fetch(2, Offset(10), 1_000);
        state.on_fetch(3, Offset(4), 1_000);
        assert_eq!(state.high_watermark(), Offset(4));
        assert_eq!(state.tick(20_000), None, "within the lag bound");
        // Follower 2 keeps up; 3 stops fetching.
        state.on_appended(Offset(20));
        state.on_fetch(2, Offset(20), 31_000);
        let proposal = state.tick(31_001).expect("3 lags");
        assert_eq!(
            proposal,
            IsrProposal {
                leader_epoch: 5,
                isr: set(&[1, 2])
            }
        );
        assert_eq!(state.tick(31_500), None, "one proposal at a time");
        assert_eq!(state.tick(32_001), Some(proposal.clone()), "sent again");
        assert_eq!(state.high_watermark(), Offset(4), "3 counts until removed");
        assert_eq!(
            state.on_assignment_committed(&assignment(&[1, 2]), 32_100),
            Some(Offset(20))
        );
        assert_eq!(state.isr(), &set(&[1, 2]));
    }

    #[test]
    fn replicas_a_reassignment_adds_join_once_caught_up_and_those_removed_stop_counting() {
        let mut state = leader(&[1, 2, 3], 0);
        state.on_appended(Offset(10));
        state.on_fetch(2, Offset(10), 100);
        state.on_fetch(3, Offset(6), 100);
        assert_eq!(state.high_watermark(), Offset(6));
        // Broker 4 is added: a replica, not in sync, so it holds nothing back.
        let moving = Assignment {
            replicas: vec![4, 2, 1, 3],
            ..assignment(&[1, 2, 3])
        };
        assert_eq!(state.on_assignment_committed(&moving, 200), None);
        assert_eq!(state.on_fetch(4, Offset(3), 300), Some((None, None)));
        let joins = state.on_fetch(4, Offset(10), 400).unwrap().1;
        assert_eq!(joins.map(|p| p.isr), Some(set(&[1, 2, 3, 4])));
        // The reassignment ends: 3 leaves, and the high watermark no longer waits for it.
        let moved = Assignment {
            replicas: vec![4, 2, 1],
            isr: set(&[1, 2, 4]),
            ..assignment(&[])
        };
        assert_eq!(state.on_assignment_committed(&moved, 500), Some(Offset(10)));
        assert_eq!(state.on_fetch(3, Offset(10), 600), None, "not a replica");
    }

    #[test]
    fn a_follower_fetching_behind_is_still_caught_up_if_it_reached_the_last_end() {
        let mut state = leader(&[1, 2], 0);
        for step in 1..100u64 {
            // Appends keep coming: each fetch reaches the end as of the previous fetch.
            let previous_end = state.log_end;
            state.on_appended(Offset(step * 10));
            state.on_fetch(2, previous_end, step * 1_000);
            assert_eq!(state.tick(step * 1_000 + 500), None, "step {step}");
        }
    }

    #[test]
    fn a_caught_up_follower_is_proposed_in_and_counts_at_once() {
        let mut state = leader(&[1, 2], 50);
        state.on_fetch(2, Offset(50), 1);
        assert_eq!(state.high_watermark(), Offset(50));
        state.on_appended(Offset(60));
        assert_eq!(
            state.on_fetch(3, Offset(40), 2),
            Some((None, None)),
            "behind the epoch start"
        );
        let (moved, proposal) = state.on_fetch(3, Offset(55), 3).unwrap();
        assert_eq!(moved, None);
        assert_eq!(proposal.unwrap().isr, set(&[1, 2, 3]));
        state.on_fetch(2, Offset(60), 4);
        assert_eq!(
            state.high_watermark(),
            Offset(55),
            "3 counts while proposed"
        );
        state.on_isr_rejected();
        assert!(state.proposed().is_none());
        assert_eq!(state.isr(), &set(&[1, 2]));
    }

    #[test]
    fn an_isolated_leader_cannot_commit_nor_shrink_to_itself() {
        let mut state = leader(&[1, 2, 3], 100);
        state.on_fetch(2, Offset(100), 0);
        state.on_fetch(3, Offset(100), 0);
        state.on_appended(Offset(110));
        // Cut off: no fetches, and the shrink never reaches the controller.
        let proposal = state.tick(60_000).expect("both lag");
        assert_eq!(proposal.isr, set(&[1]));
        for now in (61_000..600_000).step_by(10_000) {
            // It keeps asking, and keeps not being answered.
            assert_eq!(state.tick(now), Some(proposal.clone()));
            assert_eq!(state.on_appended(Offset(120)), None);
        }
        assert_eq!(state.high_watermark(), Offset(100));
        assert_eq!(state.ack_state(Offset(105)), AckState::Waiting);
    }
}
