//! The controller quorum's Raft node: raft-rs's `RawNode` (tikv/raft-rs, sans-IO) holding the
//! metadata log, whose entries are [`Record`]s. This module drives it without I/O: the caller
//! ticks it, steps in the messages other voters sent, proposes records, and calls
//! [`QuorumNode::drain`], which keeps what Raft asks for in the node's in-memory storage and
//! hands back what to store durably (before any of the messages goes out), the messages to
//! send and the records committed, in log order. The same code runs in the broker and in the
//! seeded simulation tests.
//!
//! Messages between voters travel in our own encoding ([`encode_message`]): postcard over a
//! mirror of raft-rs's message, every length bounded by the bytes present. raft-rs's own
//! protobuf decoder (rust-protobuf 2) is never given bytes from the network: it recurses on
//! nested unknown groups without a bound (RUSTSEC-2024-0437).

use raft::eraftpb::{
    ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot, SnapshotMetadata,
};
use raft::{Config, GetEntriesContext, RawNode, StateRole};
use serde::{Deserialize, Serialize};

use crate::leader::BrokerId;
use crate::metadata::{MetadataImage, Record};
use crate::quorum_storage::QuorumStorage;

/// Raft ids are broker ids plus one: raft-rs reserves 0.
pub fn raft_id(broker: BrokerId) -> u64 {
    broker as u64 + 1
}

fn broker_id(raft: u64) -> BrokerId {
    raft as BrokerId - 1
}

/// Timing of the quorum, in ticks of the caller's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumSettings {
    /// A follower that hears no leader for this many ticks (randomized up to twice as many)
    /// stands for election.
    pub election_ticks: usize,
    /// A leader's heartbeat period.
    pub heartbeat_ticks: usize,
    /// This voter's election timeout fixed at this many ticks instead of randomized. raft-rs
    /// draws the random timeout from the thread's RNG, which a seeded simulation cannot
    /// replay; the simulations give each voter its own fixed timeout from the seed instead.
    pub fixed_election_ticks: Option<usize>,
}

impl Default for QuorumSettings {
    fn default() -> QuorumSettings {
        QuorumSettings {
            election_ticks: 10,
            heartbeat_ticks: 2,
            fixed_election_ticks: None,
        }
    }
}

/// What a drain produced. A voter stores `entries` and `hard_state` durably
/// ([`crate::quorum_store::QuorumStore`]) before it sends any of `messages`: a vote or an
/// acknowledged entry must survive a crash.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages to send, each to `(voter, message)`.
    pub messages: Vec<(BrokerId, Message)>,
    /// Records committed since the last drain, with their log index, in order.
    pub committed: Vec<(u64, Record)>,
    /// Entries to store, in order; a later run may replace an earlier one's suffix.
    pub entries: Vec<Entry>,
    /// The hard state to store, if it changed.
    pub hard_state: Option<HardState>,
    /// A snapshot the leader sent: it replaces this voter's log and image (stored before
    /// `entries`, applied before `committed`).
    pub snapshot: Option<Snapshot>,
}

/// This voter's Raft node for the metadata log.
pub struct QuorumNode {
    id: BrokerId,
    raw: RawNode<QuorumStorage>,
}

/// Why a proposal was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader proposes; this is who it is, if known.
    NotLeader(Option<BrokerId>),
    /// Raft refused it (a leadership transfer in progress, or the node is stopping).
    Refused(String),
}

impl QuorumNode {
    /// A voter `id` of a quorum of `voters`, with nothing in its log yet.
    pub fn new(
        id: BrokerId,
        voters: &[BrokerId],
        settings: QuorumSettings,
    ) -> Result<QuorumNode, raft::Error> {
        let voters: Vec<u64> = voters.iter().map(|&voter| raft_id(voter)).collect();
        let conf_state = ConfState::from((voters, vec![]));
        QuorumNode::restart(id, QuorumStorage::new_with_conf_state(conf_state), settings)
    }

    /// A voter coming back with what it had persisted (its log, hard state and voters).
    pub fn restart(
        id: BrokerId,
        storage: QuorumStorage,
        settings: QuorumSettings,
    ) -> Result<QuorumNode, raft::Error> {
        // A restarted voter starts from its snapshot's image (`restored_image`) and applies
        // the committed entries after it again.
        let applied = storage
            .snapshot_taken()
            .map_or(0, |snapshot| snapshot.get_metadata().index);
        let config = Config {
            id: raft_id(id),
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            min_election_tick: settings.fixed_election_ticks.unwrap_or(0),
            max_election_tick: settings.fixed_election_ticks.map_or(0, |ticks| ticks + 1),
            applied,
            check_quorum: true,
            pre_vote: true,
            max_inflight_msgs: 256,
            ..Config::default()
        };
        config.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&config, storage, &logger)?;
        Ok(QuorumNode { id, raw })
    }

    pub fn id(&self) -> BrokerId {
        self.id
    }

    /// What this voter persisted, to restart it from after a crash.
    pub fn storage(&self) -> QuorumStorage {
        self.raw.store().clone()
    }

    /// The image of the snapshot this voter restarted from (`None` without one): the image
    /// as of `applied()` before any drain.
    pub fn restored_image(&self) -> Result<Option<MetadataImage>, String> {
        match self.raw.store().snapshot_taken() {
            None => Ok(None),
            Some(snapshot) => MetadataImage::decode(snapshot.get_data()).map(Some),
        }
    }

    /// The last snapshot's index and image, when the log no longer holds index `from` (it
    /// lies in that snapshot).
    pub fn snapshot_for(&self, from: u64) -> Option<(u64, Vec<u8>)> {
        let snapshot = self.raw.store().snapshot_taken()?;
        let index = snapshot.get_metadata().index;
        (from <= index).then(|| (index, snapshot.get_data().to_vec()))
    }

    /// The index of the last snapshot (0 before the first).
    pub fn snapshot_index(&self) -> u64 {
        self.raw
            .store()
            .snapshot_taken()
            .map_or(0, |snapshot| snapshot.get_metadata().index)
    }

    /// Takes a snapshot at the index applied: `image` is the image the caller built from
    /// every committed record handed out. The entries up to it leave memory; a voter that
    /// needs them later gets the snapshot. Returns it, to be stored durably before the
    /// entries it replaces are removed from disk.
    pub fn take_snapshot(&mut self, image: &MetadataImage) -> Result<Snapshot, raft::Error> {
        let index = self.applied();
        let term = self.raw.raft.raft_log.term(index)?;
        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        metadata.index = index;
        metadata.term = term;
        metadata.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        snapshot.data = image.encode().into();
        self.raw.mut_store().compact(snapshot.clone())?;
        Ok(snapshot)
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this voter knows of.
    pub fn leader(&self) -> Option<BrokerId> {
        match self.raw.raft.leader_id {
            0 => None,
            leader => Some(broker_id(leader)),
        }
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Whether this voter leads and has committed an entry of its own term, with every
    /// committed record handed out: its image is then the whole committed metadata, and an
    /// active controller may start from it.
    pub fn leads_caught_up(&self) -> bool {
        let raft = &self.raw.raft;
        let log = &raft.raft_log;
        raft.state == StateRole::Leader
            && log.term(log.committed).ok() == Some(raft.term)
            && log.applied == log.committed
    }

    /// One tick of the caller's clock.
    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// A message another voter sent. Stale or unexpected messages are dropped, as Raft
    /// expects of an unreliable network.
    pub fn step(&mut self, message: Message) {
        let _ = self.raw.step(message);
    }

    /// Proposes `record` for the metadata log, at the index returned; it is applied once a
    /// drain returns it committed (if leadership is lost first, it may never be: while this
    /// voter leads in the same term, the entry at that index is this one).
    pub fn propose(&mut self, record: &Record) -> Result<u64, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader(self.leader()));
        }
        self.raw
            .propose(Vec::new(), record.encode())
            .map_err(|error| ProposeError::Refused(error.to_string()))?;
        Ok(self.raw.raft.raft_log.last_index())
    }

    /// Stands for election now instead of at the election timeout (a quorum of one elects
    /// itself at once).
    pub fn campaign(&mut self) {
        let _ = self.raw.campaign();
    }

    /// Committed records from index `from` on, for an observer (a broker outside the
    /// quorum): at most about `max_bytes` of entries, at least one when there is any. With
    /// them the last index they cover (their no-op entries included; `from - 1` when there
    /// is nothing new) and the commit index. Every voter's log holds the same committed
    /// entries, so any voter may answer.
    pub fn committed_records(&self, from: u64, max_bytes: u64) -> (Vec<(u64, Record)>, u64) {
        let log = &self.raw.raft.raft_log;
        // Below the first index is a snapshot's ([`QuorumNode::snapshot_for`]).
        let from = from.max(log.first_index());
        if from > log.committed {
            return (Vec::new(), from - 1);
        }
        let entries = log
            .slice(
                from,
                log.committed + 1,
                max_bytes,
                GetEntriesContext::empty(false),
            )
            .unwrap_or_default();
        let through = entries.last().map_or(from - 1, |entry| entry.index);
        let mut output = Output::default();
        Self::collect_records(entries, &mut output);
        (output.committed, through)
    }

    /// The commit index: every voter's log agrees up to it.
    pub fn committed(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The index of the last entry handed out as committed.
    pub fn applied(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// Keeps what Raft asks for in the in-memory storage and returns it to be stored durably
    /// ([`Output`]), with the messages to send (after that) and the records now committed.
    pub fn drain(&mut self) -> Output {
        let mut output = Output::default();
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            self.collect_messages(ready.take_messages(), &mut output);
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot().clone();
                self.raw
                    .mut_store()
                    .restore(snapshot.clone())
                    .expect("a snapshot from the leader applies");
                output.snapshot = Some(snapshot);
            }
            Self::collect_records(ready.take_committed_entries(), &mut output);
            if !ready.entries().is_empty() {
                self.raw
                    .mut_store()
                    .wl()
                    .append(ready.entries())
                    .expect("entries follow the log");
                output.entries.extend(ready.entries().iter().cloned());
            }
            if let Some(hard_state) = ready.hs() {
                self.raw.mut_store().wl().set_hardstate(hard_state.clone());
                output.hard_state = Some(hard_state.clone());
            }
            self.collect_messages(ready.take_persisted_messages(), &mut output);
            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                let mut store = self.raw.mut_store().wl();
                store.mut_hard_state().set_commit(commit);
                output.hard_state = Some(store.hard_state().clone());
            }
            self.collect_messages(light.take_messages(), &mut output);
            Self::collect_records(light.take_committed_entries(), &mut output);
            self.raw.advance_apply();
        }
        // A snapshot sent is taken as delivered: if it was lost, the voter refuses the
        // entries after it and gets it again (the network gives no word of a loss).
        let snapshots_to: Vec<u64> = output
            .messages
            .iter()
            .filter(|(_, message)| message.get_msg_type() == MessageType::MsgSnapshot)
            .map(|(_, message)| message.to)
            .collect();
        for to in snapshots_to {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
        output
    }

    fn collect_messages(&self, messages: Vec<Message>, output: &mut Output) {
        output
            .messages
            .extend(messages.into_iter().map(|m| (broker_id(m.to), m)));
    }

    fn collect_records(entries: Vec<Entry>, output: &mut Output) {
        for entry in entries {
            // Empty entries are each new leader's no-op; configuration changes are not used
            // (the voters are fixed at start-up).
            if entry.data.is_empty() || entry.get_entry_type() != EntryType::EntryNormal {
                continue;
            }
            match Record::decode(&entry.data) {
                Ok(record) => output.committed.push((entry.index, record)),
                Err(reason) => log::error!(
                    "metadata log entry {} is not a record ({reason}); skipped on every voter",
                    entry.index
                ),
            }
        }
    }
}

/// raft-rs's message, mirrored for our encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WireMessage {
    msg_type: i32,
    to: u64,
    from: u64,
    term: u64,
    log_term: u64,
    index: u64,
    entries: Vec<WireEntry>,
    commit: u64,
    commit_term: u64,
    snapshot: Option<WireSnapshot>,
    request_snapshot: u64,
    reject: bool,
    reject_hint: u64,
    context: Vec<u8>,
    priority: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WireEntry {
    entry_type: i32,
    term: u64,
    index: u64,
    data: Vec<u8>,
    context: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WireSnapshot {
    data: Vec<u8>,
    index: u64,
    term: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
}

/// The most bytes one encoded message may take.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// `message` in the encoding voters send each other.
pub fn encode_message(message: &Message) -> Vec<u8> {
    let snapshot = message
        .snapshot
        .as_ref()
        .filter(|s| !s.data.is_empty() || s.get_metadata().index > 0);
    let wire = WireMessage {
        msg_type: message.get_msg_type() as i32,
        to: message.to,
        from: message.from,
        term: message.term,
        log_term: message.log_term,
        index: message.index,
        entries: message
            .entries
            .iter()
            .map(|entry| WireEntry {
                entry_type: entry.get_entry_type() as i32,
                term: entry.term,
                index: entry.index,
                data: entry.data.to_vec(),
                context: entry.context.to_vec(),
            })
            .collect(),
        commit: message.commit,
        commit_term: message.commit_term,
        snapshot: snapshot.map(|snapshot| {
            let metadata = snapshot.get_metadata();
            let conf_state = metadata.get_conf_state();
            WireSnapshot {
                data: snapshot.data.to_vec(),
                index: metadata.index,
                term: metadata.term,
                voters: conf_state.voters.clone(),
                learners: conf_state.learners.clone(),
            }
        }),
        request_snapshot: message.request_snapshot,
        reject: message.reject,
        reject_hint: message.reject_hint,
        context: message.context.to_vec(),
        priority: message.priority,
    };
    postcard::to_stdvec(&wire).expect("messages serialize")
}

/// Decodes a message another voter sent; the reason if the bytes are not one.
pub fn decode_message(bytes: &[u8]) -> Result<Message, String> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(format!("a message of {} bytes", bytes.len()));
    }
    let wire = match postcard::take_from_bytes::<WireMessage>(bytes) {
        Ok((wire, [])) => wire,
        Ok((_, rest)) => return Err(format!("{} bytes after the message", rest.len())),
        Err(error) => return Err(format!("not a quorum message: {error}")),
    };
    let msg_type = <MessageType as protobuf::ProtobufEnum>::from_i32(wire.msg_type)
        .ok_or_else(|| format!("unknown message type {}", wire.msg_type))?;
    let mut message = Message::default();
    message.set_msg_type(msg_type);
    message.to = wire.to;
    message.from = wire.from;
    message.term = wire.term;
    message.log_term = wire.log_term;
    message.index = wire.index;
    for entry in wire.entries {
        let entry_type = <EntryType as protobuf::ProtobufEnum>::from_i32(entry.entry_type)
            .ok_or_else(|| format!("unknown entry type {}", entry.entry_type))?;
        let mut decoded = Entry::default();
        decoded.set_entry_type(entry_type);
        decoded.term = entry.term;
        decoded.index = entry.index;
        decoded.data = entry.data.into();
        decoded.context = entry.context.into();
        message.entries.push(decoded);
    }
    message.commit = wire.commit;
    message.commit_term = wire.commit_term;
    if let Some(snapshot) = wire.snapshot {
        let mut metadata = SnapshotMetadata {
            index: snapshot.index,
            term: snapshot.term,
            ..SnapshotMetadata::default()
        };
        metadata.set_conf_state(ConfState::from((snapshot.voters, snapshot.learners)));
        let mut decoded = Snapshot {
            data: snapshot.data.into(),
            ..Snapshot::default()
        };
        decoded.set_metadata(metadata);
        message.set_snapshot(decoded);
    }
    message.request_snapshot = wire.request_snapshot;
    message.reject = wire.reject;
    message.reject_hint = wire.reject_hint;
    message.context = wire.context.into();
    message.priority = wire.priority;
    Ok(message)
}

/// The hard state a voter persisted (tests and diagnostics).
pub fn hard_state(node: &QuorumNode) -> HardState {
    node.raw.store().rl().hard_state().clone()
}
