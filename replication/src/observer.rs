//! A broker outside the controller quorum (KRaft's observer): it follows the metadata log
//! by fetching the committed records from the voters ([`crate::peers::Frame::Fetch`]), in
//! order, and learns from their answers which voter leads, so its requests to the
//! controller go there. Pure: the metadata node sends what [`Observer::fetch`] says and
//! hands back what came.
//!
//! The committed prefix of the metadata log is the same on every voter, so any voter may
//! answer; the observer asks the leader it knows, or the voters in turn while it knows none
//! or an answer does not come in time.

use crate::leader::BrokerId;
use crate::metadata::Record;

/// How long an observer waits for a voter's answer before it asks another.
pub const FETCH_TIMEOUT_MS: u64 = 1_000;

/// A snapshot an observer took: its index and the image there (`MetadataImage::encode`).
pub type Taken = (u64, Vec<u8>);

/// An observer's progress through the metadata log.
#[derive(Debug, Clone)]
pub struct Observer {
    voters: Vec<BrokerId>,
    /// The last index applied (records handed out by [`Observer::drain`] included).
    through: u64,
    /// The highest commit index a voter reported.
    committed: u64,
    /// The quorum leader the voters name.
    leader: Option<BrokerId>,
    /// Whether that leader answered a fetch itself: it then knows where this observer
    /// listens, so requests forwarded to it can be answered.
    confirmed: bool,
    /// The voter asked last, and when; `None` once it answered.
    asked: Option<(BrokerId, u64)>,
    /// The voter to ask next while no leader is known.
    next_voter: usize,
    /// Records taken, not yet handed out.
    taken: Vec<(u64, Record)>,
    /// A snapshot taken (before `taken`), not yet handed out.
    image: Option<Taken>,
}

impl Observer {
    /// An observer of the quorum of `voters` with nothing applied yet.
    pub fn new(voters: Vec<BrokerId>) -> Observer {
        Observer {
            voters,
            through: 0,
            committed: 0,
            leader: None,
            confirmed: false,
            asked: None,
            next_voter: 0,
            taken: Vec::new(),
            image: None,
        }
    }

    /// The quorum leader, as the voters last said, once it answered this observer itself
    /// (before that it could not send an answer here).
    pub fn leader(&self) -> Option<BrokerId> {
        self.leader.filter(|_| self.confirmed)
    }

    /// The index of the last record handed out, and of the no-op entries after it.
    pub fn applied(&self) -> u64 {
        self.through
    }

    /// Whether everything a voter reported committed is taken.
    pub fn caught_up(&self) -> bool {
        self.committed > 0 && self.through >= self.committed
    }

    /// At `now_ms`: the voter to ask, and the index to ask from, unless a fetch is still
    /// waiting for its answer.
    pub fn fetch(&mut self, now_ms: u64) -> Option<(BrokerId, u64)> {
        if let Some((_, at)) = self.asked
            && now_ms < at + FETCH_TIMEOUT_MS
        {
            return None;
        }
        let silent = self.asked.map(|(voter, _)| voter);
        let voter = match (self.leader, silent) {
            (Some(leader), None) => leader,
            _ => {
                // No leader known, or the one asked did not answer: the voters in turn,
                // from the one after it.
                if let Some(silent) = silent {
                    (self.leader, self.confirmed) = (None, false);
                    let at = self.voters.iter().position(|&voter| voter == silent);
                    self.next_voter = at.map_or(self.next_voter, |at| at + 1);
                }
                let voter = *self
                    .voters
                    .get(self.next_voter % self.voters.len().max(1))?;
                self.next_voter += 1;
                voter
            }
        };
        self.asked = Some((voter, now_ms));
        Some((voter, self.through + 1))
    }

    /// Voter `from`'s answer: the committed `records` through index `through`, its
    /// `committed` index and the `leader` it knows. Records that do not follow on from
    /// what was taken (an answer to an older fetch) are ignored. Whether there may be more
    /// to fetch at once.
    pub fn on_records(
        &mut self,
        from: BrokerId,
        records: Vec<(u64, Record)>,
        through: u64,
        committed: u64,
        leader: Option<BrokerId>,
    ) -> bool {
        self.answered(from, committed, leader);
        let follows_on = records
            .first()
            .is_none_or(|&(index, _)| index > self.through);
        if !follows_on || through <= self.through {
            return false;
        }
        self.taken.extend(records);
        self.through = through;
        self.through < self.committed
    }

    /// Voter `from`'s answer from a log that no longer holds what was asked: the image as
    /// of `index`, which replaces everything taken before (ignored unless it is ahead).
    /// Whether there may be more to fetch at once.
    pub fn on_snapshot(
        &mut self,
        from: BrokerId,
        index: u64,
        image: Vec<u8>,
        committed: u64,
        leader: Option<BrokerId>,
    ) -> bool {
        self.answered(from, committed, leader);
        if index <= self.through {
            return false;
        }
        self.taken.clear();
        self.image = Some((index, image));
        self.through = index;
        self.through < self.committed
    }

    fn answered(&mut self, from: BrokerId, committed: u64, leader: Option<BrokerId>) {
        if self.asked.is_some_and(|(voter, _)| voter == from) {
            self.asked = None;
        }
        if leader.is_some() && leader != self.leader {
            self.leader = leader;
            self.confirmed = false;
        }
        self.confirmed |= self.leader == Some(from);
        self.committed = self.committed.max(committed);
    }

    /// What was taken since the last drain: a snapshot's image, if one came, then the
    /// records after it in index order.
    pub fn drain(&mut self) -> (Option<Taken>, Vec<(u64, Record)>) {
        (self.image.take(), std::mem::take(&mut self.taken))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(id: BrokerId) -> Record {
        Record::BrokerFence { id, fenced: true }
    }

    #[test]
    fn an_observer_takes_the_committed_records_in_order_from_the_leader() {
        let mut observer = Observer::new(vec![0, 1, 2]);
        assert_eq!(
            observer.fetch(0),
            Some((0, 1)),
            "no leader known: the first voter"
        );
        assert_eq!(observer.fetch(10), None, "one fetch at a time");
        // Voter 0 answers with the first records and names voter 2 the leader.
        let more = observer.on_records(0, vec![(1, fence(5)), (3, fence(6))], 3, 5, Some(2));
        assert!(more, "two more committed");
        assert_eq!(observer.leader(), None, "voter 2 has not answered yet");
        assert_eq!(observer.drain(), (None, vec![(1, fence(5)), (3, fence(6))]));
        assert!(!observer.caught_up());
        assert_eq!(observer.fetch(20), Some((2, 4)), "from the leader now");
        // Nothing new in the answer but an entry without a record (a leader's no-op).
        assert!(!observer.on_records(2, vec![], 5, 5, Some(2)));
        assert_eq!(observer.leader(), Some(2));
        assert!(observer.caught_up());
        assert_eq!(observer.applied(), 5);
        assert_eq!(observer.drain(), (None, vec![]));
        // A late answer to an older fetch changes nothing.
        observer.fetch(30);
        assert!(!observer.on_records(0, vec![(3, fence(6))], 3, 5, Some(2)));
        assert_eq!(observer.drain(), (None, vec![]));
        assert_eq!(observer.applied(), 5);
    }

    #[test]
    fn a_snapshot_replaces_what_was_taken_and_records_follow_it() {
        let mut observer = Observer::new(vec![0]);
        observer.fetch(0);
        observer.on_records(0, vec![(1, fence(5))], 1, 9, Some(0));
        // The voter compacted its log: the image at 6 instead of records 2 to 6.
        observer.fetch(10);
        assert!(observer.on_snapshot(0, 6, b"image".to_vec(), 9, Some(0)));
        assert_eq!(observer.applied(), 6);
        assert_eq!(
            observer.fetch(20),
            Some((0, 7)),
            "records after the snapshot next"
        );
        assert!(!observer.on_records(0, vec![(8, fence(7))], 9, 9, Some(0)));
        assert_eq!(
            observer.drain(),
            (Some((6, b"image".to_vec())), vec![(8, fence(7))])
        );
        // An older snapshot (an answer to an earlier fetch) changes nothing.
        assert!(!observer.on_snapshot(0, 4, b"old".to_vec(), 9, Some(0)));
        assert_eq!(observer.drain(), (None, vec![]));
    }

    #[test]
    fn a_silent_voter_is_given_up_for_the_next() {
        let mut observer = Observer::new(vec![0, 1, 2]);
        observer.fetch(0);
        observer.on_records(0, vec![], 0, 0, Some(1));
        assert_eq!(observer.leader(), None);
        assert_eq!(observer.fetch(100), Some((1, 1)));
        assert_eq!(observer.fetch(100 + FETCH_TIMEOUT_MS - 1), None);
        assert_eq!(observer.fetch(100 + FETCH_TIMEOUT_MS), Some((2, 1)));
        assert_eq!(
            observer.fetch(100 + 2 * FETCH_TIMEOUT_MS),
            Some((0, 1)),
            "in turn"
        );
    }
}
