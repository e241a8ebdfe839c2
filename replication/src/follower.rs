//! A follower's side of one partition (Kafka's fetcher state for it), as a pure state
//! machine. On a new leader or leader epoch it first finds where its log stops agreeing with
//! the leader's (OffsetForLeaderEpoch, KIP-101 and KIP-279) and truncates there; then it
//! fetches from its log end, appending what the leader sends as it is. The driver sends the
//! requests this answers with and does the truncations and appends.

use coremq_engine::Offset;

use crate::leader::BrokerId;

/// What the follower asks the leader next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Where does `epoch` (the follower's latest) end in the leader's log?
    EpochEnd { epoch: i32 },
    /// Batches from `offset` on.
    Fetch { offset: Offset },
}

/// What the follower does to its log before it goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncate {
    /// Nothing: the log agrees with the leader's as far as it goes.
    Nothing,
    /// Cut the log at this offset.
    To(Offset),
    /// Empty the log and start it at this offset (the leader's log starts past it).
    Restart(Offset),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Finding the divergence point.
    Truncating,
    Fetching,
}

/// A follower of one partition under one leader and leader epoch.
#[derive(Debug, Clone)]
pub struct FollowerState {
    leader: BrokerId,
    leader_epoch: i32,
    phase: Phase,
}

/// What the follower's own log says, for the decisions below.
pub trait LocalLog {
    fn log_end(&self) -> Offset;
    /// The log's latest leader epoch.
    fn latest_epoch(&self) -> Option<i32>;
    /// As [`coremq_engine::epochs::LeaderEpochs::end_offset_for`] on this log.
    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, Offset)>;
    /// Everything below is known committed (the high watermark last learnt).
    fn committed(&self) -> Offset;
}

impl FollowerState {
    pub fn new(leader: BrokerId, leader_epoch: i32) -> FollowerState {
        FollowerState {
            leader,
            leader_epoch,
            phase: Phase::Truncating,
        }
    }

    pub fn leader(&self) -> BrokerId {
        self.leader
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn is_fetching(&self) -> bool {
        self.phase == Phase::Fetching
    }

    /// The request to send next, given the local log; `Truncate` first if the log must be
    /// cut before it (a log with no epochs keeps only what is known committed, Kafka's
    /// truncation to the high watermark).
    pub fn next(&mut self, log: &impl LocalLog) -> (Truncate, Request) {
        match self.phase {
            Phase::Fetching => (
                Truncate::Nothing,
                Request::Fetch {
                    offset: log.log_end(),
                },
            ),
            Phase::Truncating => {
                let epoch = log.latest_epoch();
                match epoch {
                    Some(epoch) => (Truncate::Nothing, Request::EpochEnd { epoch }),
                    None => {
                        self.phase = Phase::Fetching;
                        let committed = log.committed().min(log.log_end());
                        let truncate = if committed < log.log_end() {
                            Truncate::To(committed)
                        } else {
                            Truncate::Nothing
                        };
                        (truncate, Request::Fetch { offset: committed })
                    }
                }
            }
        }
    }

    /// The leader answered where the epoch asked about ends in its log: the largest epoch at
    /// or below it and that epoch's end, or `None` if it knows none. Returns the truncation to
    /// do; once the logs agree the follower fetches (KIP-279: if the leader's epoch is one the
    /// follower does not have, cut at the end of the follower's largest epoch below it and ask
    /// again; each round asks about an older epoch, so it ends).
    pub fn on_epoch_end(&mut self, answer: Option<(i32, Offset)>, log: &impl LocalLog) -> Truncate {
        let log_end = log.log_end();
        let Some((leader_epoch, leader_end)) = answer else {
            // The leader holds nothing of this epoch or any before it: keep what is known
            // committed.
            self.phase = Phase::Fetching;
            let committed = log.committed().min(log_end);
            return cut(committed, log_end);
        };
        match log.end_offset_for_epoch(leader_epoch) {
            Some((follower_epoch, follower_end)) if follower_epoch == leader_epoch => {
                self.phase = Phase::Fetching;
                cut(leader_end.min(follower_end), log_end)
            }
            Some((_, follower_end)) => {
                // The follower never had the leader's epoch (its largest below is older):
                // its log agrees at most up to that epoch's end; cut there and ask again
                // about its latest epoch then, which is older than the last.
                cut(follower_end.min(leader_end), log_end)
            }
            None => {
                // The follower has no epoch that old: the leader's end of it is the bound.
                self.phase = Phase::Fetching;
                cut(leader_end, log_end)
            }
        }
    }

    /// The leader's log does not hold the fetch offset: below its start, the follower starts
    /// again there; past its end, it cuts back to it.
    pub fn on_out_of_range(
        &mut self,
        fetch_offset: Offset,
        leader_log_start: Offset,
        leader_log_end: Offset,
    ) -> Truncate {
        if fetch_offset < leader_log_start {
            Truncate::Restart(leader_log_start)
        } else if fetch_offset > leader_log_end {
            Truncate::To(leader_log_end)
        } else {
            Truncate::Nothing
        }
    }
}

/// A cut at `to`, also at the log end itself: an epoch this replica started as leader at its
/// log end, without writing anything in it, must go before the new leader's batches come
/// (their older epoch would not be recorded after it).
fn cut(to: Offset, log_end: Offset) -> Truncate {
    Truncate::To(to.min(log_end))
}

#[cfg(test)]
mod tests {
    use coremq_engine::epochs::LeaderEpochs;

    use super::*;

    /// A log as its epochs and end.
    struct Log {
        epochs: LeaderEpochs,
        end: Offset,
        committed: Offset,
        /// The epoch of each offset's record, for the model test.
        entries: Vec<i32>,
    }

    impl Log {
        fn new(epochs: &[(i32, u64)], end: u64) -> Log {
            let mut cache = LeaderEpochs::default();
            for &(epoch, start) in epochs {
                cache.assign(epoch, Offset(start));
            }
            Log {
                epochs: cache,
                end: Offset(end),
                committed: Offset(0),
                entries: Vec::new(),
            }
        }

        fn truncate(&mut self, truncate: Truncate) {
            match truncate {
                Truncate::Nothing => {}
                Truncate::To(offset) => {
                    self.end = self.end.min(offset);
                    self.epochs.truncate_from_end(self.end);
                    self.entries.truncate(offset.0 as usize);
                }
                Truncate::Restart(offset) => {
                    self.end = offset;
                    self.epochs = LeaderEpochs::default();
                    self.entries.clear();
                }
            }
        }

        fn append(&mut self, epoch: i32) {
            self.epochs.assign(epoch, self.end);
            self.entries.push(epoch);
            self.end = Offset(self.entries.len() as u64);
        }
    }

    impl LocalLog for Log {
        fn log_end(&self) -> Offset {
            self.end
        }
        fn latest_epoch(&self) -> Option<i32> {
            self.epochs.latest().map(|entry| entry.epoch)
        }
        fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, Offset)> {
            self.epochs.end_offset_for(epoch, self.end)
        }
        fn committed(&self) -> Offset {
            self.committed
        }
    }

    /// Runs the exchange until the follower fetches; its fetch offset.
    fn reconcile(follower: &mut Log, leader: &Log) -> Offset {
        let mut state = FollowerState::new(1, 9);
        for _ in 0..10 {
            let (truncate, request) = state.next(follower);
            follower.truncate(truncate);
            match request {
                Request::Fetch { offset } => return offset,
                Request::EpochEnd { epoch } => {
                    let answer = leader.end_offset_for_epoch(epoch);
                    let truncate = state.on_epoch_end(answer, follower);
                    follower.truncate(truncate);
                }
            }
        }
        panic!("no agreement after 10 rounds");
    }

    #[test]
    fn a_follower_behind_in_the_same_epoch_keeps_its_log() {
        let leader = Log::new(&[(0, 0), (2, 50)], 120);
        let mut follower = Log::new(&[(0, 0), (2, 50)], 90);
        assert_eq!(reconcile(&mut follower, &leader), Offset(90));
    }

    #[test]
    fn a_divergent_suffix_of_an_old_leader_is_cut() {
        // The follower led epoch 1 and wrote 50..70 nobody else has; the leader of epoch 2
        // took over at 50.
        let leader = Log::new(&[(0, 0), (2, 50)], 80);
        let mut follower = Log::new(&[(0, 0), (1, 50)], 70);
        assert_eq!(reconcile(&mut follower, &leader), Offset(50));
        assert_eq!(follower.end, Offset(50));
    }

    #[test]
    fn kip_279_a_follower_missing_the_leaders_epoch_asks_again() {
        // KIP-279's case: the follower has epochs 1 and 3, the leader (now at 4) 1 and 2;
        // the leader answers epoch 3 with (2, 150), an epoch the follower lacks.
        let leader = Log::new(&[(1, 0), (2, 100), (4, 150)], 160);
        let mut follower = Log::new(&[(1, 0), (3, 110)], 130);
        assert_eq!(reconcile(&mut follower, &leader), Offset(100));
    }

    #[test]
    fn a_leader_with_older_epochs_only_cuts_to_its_end_of_them() {
        // The follower led epoch 4 from 30 on; the leader of epoch 5 had epoch 0 up to 40.
        let leader = Log::new(&[(0, 0), (5, 40)], 45);
        let mut follower = Log::new(&[(0, 0), (4, 30)], 60);
        assert_eq!(reconcile(&mut follower, &leader), Offset(30));
    }

    #[test]
    fn without_epochs_the_follower_keeps_what_is_committed() {
        let leader = Log::new(&[(0, 0)], 40);
        let mut follower = Log::new(&[], 25);
        follower.committed = Offset(20);
        assert_eq!(reconcile(&mut follower, &leader), Offset(20));
        assert_eq!(follower.end, Offset(20));
    }

    #[test]
    fn a_leader_knowing_no_such_epoch_leaves_the_committed_part() {
        let leader = Log::new(&[(5, 100)], 140);
        let mut follower = Log::new(&[(3, 0)], 120);
        follower.committed = Offset(100);
        assert_eq!(reconcile(&mut follower, &leader), Offset(100));
    }

    /// Random histories of three replicas under changing leaders (any replica may take over,
    /// as with unclean elections, which is the hardest case for truncation): after a follower
    /// reconciles with the leader and copies what it lacks, its log is the leader's, record
    /// for record, and it cut exactly where the two diverged (nothing they agree on is
    /// fetched again). Seeded; every seed of the range runs.
    #[test]
    fn reconciled_followers_hold_exactly_the_leaders_log() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut logs: Vec<Log> = (0..3).map(|_| Log::new(&[], 0)).collect();
            let (mut leader, mut epoch) = (0usize, 0i32);
            logs[leader].epochs.assign(epoch, Offset(0));
            for step in 0..200 {
                match rng.random_range(0..10) {
                    0..=4 => {
                        for _ in 0..rng.random_range(1..5) {
                            logs[leader].append(epoch);
                        }
                    }
                    5..=7 => {
                        let follower = (leader + rng.random_range(1..3)) % 3;
                        let (leader_log, follower_log) = if leader < follower {
                            let (low, high) = logs.split_at_mut(follower);
                            (&low[leader], &mut high[0])
                        } else {
                            let (low, high) = logs.split_at_mut(leader);
                            (&high[0], &mut low[follower])
                        };
                        let agreeing = follower_log
                            .entries
                            .iter()
                            .zip(&leader_log.entries)
                            .take_while(|(a, b)| a == b)
                            .count() as u64;
                        let from = reconcile(follower_log, leader_log);
                        assert_eq!(
                            from,
                            Offset(agreeing),
                            "seed {seed} step {step}: cut at the divergence, not below"
                        );
                        assert!(from <= leader_log.end, "seed {seed} step {step}");
                        assert_eq!(
                            follower_log.entries[..],
                            leader_log.entries[..from.0 as usize],
                            "seed {seed} step {step}: the follower kept a divergent record"
                        );
                        for &record in &leader_log.entries[from.0 as usize..] {
                            follower_log.append(record);
                        }
                        assert_eq!(follower_log.entries, leader_log.entries);
                    }
                    _ => {
                        leader = rng.random_range(0..3);
                        epoch += 1;
                        let end = logs[leader].end;
                        logs[leader].epochs.assign(epoch, end);
                    }
                }
            }
        }
    }

    #[test]
    fn out_of_range_restarts_below_the_start_and_cuts_past_the_end() {
        let mut state = FollowerState::new(1, 3);
        assert_eq!(
            state.on_out_of_range(Offset(5), Offset(10), Offset(20)),
            Truncate::Restart(Offset(10))
        );
        assert_eq!(
            state.on_out_of_range(Offset(25), Offset(10), Offset(20)),
            Truncate::To(Offset(20))
        );
    }
}
