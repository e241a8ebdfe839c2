//! The controller quorum in a seeded simulation: three voters over a simulated network that
//! drops, delays, reorders and duplicates messages (every one encoded and decoded as voters
//! send them), cuts voters off, and crashes and restarts them with what they persisted.
//! Checked after every step: at most one leader per term, and every voter's committed records
//! agree with every other's at each log index. A fourth broker observes the quorum, fetching
//! the committed records from the voters over the same faulty network (frames as brokers
//! encode them): each record it takes is the one committed at its index. At the end the
//! network heals, a new record must commit everywhere, and the observer must hold the whole
//! committed log.
//!
//! Voters take snapshots of their image every few records and drop the entries under them:
//! a restarted voter starts from its snapshot, a voter left behind gets the leader's
//! snapshot (raft-rs's MsgSnapshot), the observer gets a voter's when it asks below what
//! that voter's log holds. Every image (applied records, or a snapshot) must equal the
//! image of the committed log up to its index.
//!
//! `QUORUM_SEED=n` replays one seed; `QUORUM_SEEDS=n` runs seeds 0..n (default 2000).

mod common;

use std::collections::{BTreeMap, HashSet};

use coremq_replication::metadata::{MetadataImage, Record};
use coremq_replication::observer::Observer;
use coremq_replication::peers::{self, Frame};
use coremq_replication::quorum::{QuorumNode, decode_message, encode_message};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOTERS: [i32; 3] = [0, 1, 2];
/// The broker observing the quorum.
const OBSERVER: i32 = 3;
/// Simulated time per step.
const STEP_MS: u64 = 10;
/// Records a voter applies between two snapshots.
const SNAPSHOT_EVERY: u64 = 40;

struct Voter {
    node: Option<QuorumNode>,
    storage: coremq_replication::quorum_storage::QuorumStorage,
    /// The image of what this voter applied (or the snapshot it started from).
    image: MetadataImage,
    /// Records this voter applied since it last (re)started, by log index.
    applied: BTreeMap<u64, Record>,
    /// Their encodings.
    seen: HashSet<Vec<u8>>,
}

struct Sim {
    rng: StdRng,
    voters: Vec<Voter>,
    /// Messages in flight: (delivery step, to, bytes).
    network: Vec<(u64, i32, Vec<u8>)>,
    /// Voters cut off from the others, until the step.
    isolated: BTreeMap<i32, u64>,
    leaders: BTreeMap<u64, i32>,
    /// Every record committed anywhere, by index: what all voters must agree on.
    committed: BTreeMap<u64, Record>,
    step: u64,
    faults: bool,
    observer: Observer,
    /// What the observer took, by index.
    observed: BTreeMap<u64, Record>,
    /// The observer's image.
    observed_image: MetadataImage,
    /// Frames between the observer and the voters in flight: (delivery step, to, bytes).
    frames: Vec<(u64, i32, Vec<u8>)>,
}

impl Voter {
    /// Starts a crashed voter again from what it persisted: its snapshot's image, then the
    /// entries after it.
    fn restart(&mut self, id: i32, settings: coremq_replication::quorum::QuorumSettings) {
        if self.node.is_some() {
            return;
        }
        let node = QuorumNode::restart(id, self.storage.clone(), settings).unwrap();
        self.image = node.restored_image().unwrap().unwrap_or_default();
        self.node = Some(node);
        self.applied.clear();
        self.seen.clear();
    }
}

/// Whether `image` has applied `marker`'s producer ids (markers go up with the index).
fn holds(image: &MetadataImage, marker: &Record) -> bool {
    match marker {
        Record::ProducerIds { first, .. } => image.next_producer_id > *first,
        _ => unreachable!("only markers are proposed"),
    }
}

fn marker(value: u64) -> Record {
    Record::ProducerIds {
        broker: 0,
        first: value as i64,
        count: 1,
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let voters = VOTERS
            .iter()
            .map(|&id| {
                let node =
                    QuorumNode::new(id, &VOTERS, common::quorum_settings(id, &mut rng)).unwrap();
                Voter {
                    storage: node.storage(),
                    image: MetadataImage::default(),
                    node: Some(node),
                    applied: BTreeMap::new(),
                    seen: HashSet::new(),
                }
            })
            .collect();
        Sim {
            rng,
            voters,
            network: Vec::new(),
            isolated: BTreeMap::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            step: 0,
            faults: true,
            observer: Observer::new(VOTERS.to_vec()),
            observed: BTreeMap::new(),
            observed_image: MetadataImage::default(),
            frames: Vec::new(),
        }
    }

    /// Sends `frame` from `from` to `to` over the faulty network.
    fn send_frame(&mut self, from: i32, to: i32, frame: &Frame) {
        if self.cut_off(from, to) || (self.faults && self.rng.random_range(0..100) < 5) {
            return;
        }
        let delay = if self.faults {
            self.rng.random_range(0..4)
        } else {
            0
        };
        let bytes = peers::encode(from, frame);
        self.frames.push((self.step + delay, to, bytes));
    }

    /// The observer's part of a step: frames due are delivered (a voter answers a fetch
    /// from its committed log), and the observer fetches when it may.
    fn observe(&mut self, seed: u64) {
        let due = common::take_due(&mut self.frames, self.step, &mut self.rng);
        for (_, to, bytes) in due {
            let (from, frame) = peers::decode(&bytes).expect("frames decode");
            match frame {
                Frame::Fetch { from: index, .. } => {
                    let Some(node) = self.voters[to as usize].node.as_ref() else {
                        continue;
                    };
                    let answer = match node.snapshot_for(index) {
                        Some((index, image)) => Frame::Snapshot {
                            index,
                            image,
                            committed: node.committed(),
                            leader: node.leader(),
                        },
                        None => {
                            let (records, through) = node.committed_records(index, 4096);
                            Frame::Records {
                                records,
                                through,
                                committed: node.committed(),
                                leader: node.leader(),
                            }
                        }
                    };
                    self.send_frame(to, from, &answer);
                }
                Frame::Records {
                    records,
                    through,
                    committed,
                    leader,
                } => {
                    self.observer
                        .on_records(from, records, through, committed, leader);
                    self.observer_drain(seed);
                }
                Frame::Snapshot {
                    index,
                    image,
                    committed,
                    leader,
                } => {
                    self.observer
                        .on_snapshot(from, index, image, committed, leader);
                    self.observer_drain(seed);
                }
                _ => unreachable!("only fetches, records and snapshots travel here"),
            }
        }
        if let Some((voter, index)) = self.observer.fetch(self.step * STEP_MS) {
            let fetch = Frame::Fetch {
                from: index,
                reply_to: ("observer".into(), 9093),
            };
            self.send_frame(OBSERVER, voter, &fetch);
        }
    }

    /// Takes what the observer fetched: a snapshot's image must be the committed log's
    /// there, each record the one committed at its index.
    fn observer_drain(&mut self, seed: u64) {
        let (image, records) = self.observer.drain();
        if let Some((index, image)) = image {
            let image = MetadataImage::decode(&image).expect("a voter's image decodes");
            assert_eq!(
                image,
                self.image_at(index),
                "seed {seed} step {}: the observer got another image at {index}; replay: \
                 QUORUM_SEED={seed} cargo test -p coremq-replication --test quorum",
                self.step
            );
            self.observed_image = image;
        }
        for (index, record) in records {
            match self.committed.get(&index) {
                Some(known) => assert_eq!(
                    known, &record,
                    "seed {seed} step {}: the observer took another record at {index}; \
                     replay: QUORUM_SEED={seed} cargo test -p coremq-replication --test quorum",
                    self.step
                ),
                None => {
                    self.committed.insert(index, record.clone());
                }
            }
            let _ = self.observed_image.apply(&record);
            let previous = self.observed.insert(index, record);
            assert!(previous.is_none(), "seed {seed}: index {index} taken twice");
        }
    }

    /// The image of the committed records up to `index`.
    fn image_at(&self, index: u64) -> MetadataImage {
        let mut image = MetadataImage::default();
        for record in self.committed.range(..=index).map(|(_, record)| record) {
            let _ = image.apply(record);
        }
        image
    }

    fn cut_off(&self, a: i32, b: i32) -> bool {
        let now = self.step;
        let isolated = |id: i32| self.isolated.get(&id).is_some_and(|&until| until > now);
        a != b && (isolated(a) || isolated(b))
    }

    fn run_step(&mut self, seed: u64) {
        self.step += 1;
        let step = self.step;
        if self.faults {
            self.inject_faults();
        }
        // Deliver what is due, in a shuffled order.
        let due = common::take_due(&mut self.network, step, &mut self.rng);
        for (_, to, bytes) in due {
            let message = decode_message(&bytes).expect("voters' messages decode");
            if let Some(node) = self.voters[to as usize].node.as_mut() {
                node.step(message);
            }
        }
        for id in VOTERS {
            if let Some(node) = self.voters[id as usize].node.as_mut() {
                node.tick();
            }
        }
        for id in VOTERS {
            self.drain(id, seed);
        }
        self.observe(seed);
    }

    fn inject_faults(&mut self) {
        let roll = self.rng.random_range(0..1000);
        let id = VOTERS[self.rng.random_range(0..VOTERS.len())];
        if roll == 999 {
            let until = self.step + self.rng.random_range(10..200);
            self.isolated.insert(OBSERVER, until);
        }
        match roll {
            0..=4 => {
                // Crash: what it persisted survives, nothing else.
                let voter = &mut self.voters[id as usize];
                if let Some(node) = voter.node.take() {
                    voter.storage = node.storage();
                }
            }
            5..=14 => {
                let settings = common::quorum_settings(id, &mut self.rng);
                let voter = &mut self.voters[id as usize];
                voter.restart(id, settings);
            }
            15..=19 => {
                let until = self.step + self.rng.random_range(10..200);
                self.isolated.insert(id, until);
            }
            _ => {}
        }
        if roll % 7 == 0 {
            let leader = VOTERS.iter().copied().find(|&id| {
                self.voters[id as usize]
                    .node
                    .as_ref()
                    .is_some_and(QuorumNode::is_leader)
            });
            if let Some(leader) = leader {
                let value = self.step;
                let _ = self.voters[leader as usize]
                    .node
                    .as_mut()
                    .unwrap()
                    .propose(&marker(value));
            }
        }
    }

    fn drain(&mut self, id: i32, seed: u64) {
        let Some(node) = self.voters[id as usize].node.as_mut() else {
            return;
        };
        let output = node.drain();
        if node.is_leader() {
            let term = node.term();
            let previous = self.leaders.insert(term, id);
            assert!(
                previous.is_none_or(|previous| previous == id),
                "seed {seed} step {}: two leaders in term {term} ({previous:?} and {id}); \
                 replay: QUORUM_SEED={seed} cargo test -p coremq-replication --test quorum",
                self.step
            );
        }
        for (to, message) in output.messages {
            if self.cut_off(id, to) {
                continue;
            }
            let bytes = encode_message(&message);
            let (drop, duplicate) = if self.faults {
                (
                    self.rng.random_range(0..100) < 5,
                    self.rng.random_range(0..100) < 3,
                )
            } else {
                (false, false)
            };
            if drop {
                continue;
            }
            let copies = if duplicate { 2 } else { 1 };
            for _ in 0..copies {
                let delay = if self.faults {
                    self.rng.random_range(0..4)
                } else {
                    0
                };
                self.network.push((self.step + delay, to, bytes.clone()));
            }
        }
        let voter = &mut self.voters[id as usize];
        if let Some(snapshot) = &output.snapshot {
            // The leader's snapshot: this voter's image and log start over from it.
            let index = snapshot.get_metadata().index;
            voter.image = MetadataImage::decode(snapshot.get_data()).expect("images decode");
            voter.applied.clear();
            voter.seen.clear();
            let image = voter.image.clone();
            assert_eq!(
                image,
                self.image_at(index),
                "seed {seed} step {}: voter {id} got another image at {index}",
                self.step
            );
        }
        let voter = &mut self.voters[id as usize];
        for (index, record) in output.committed {
            // Each marker is proposed once: applied at two indexes would be a duplicate.
            assert!(
                voter.seen.insert(record.encode()),
                "seed {seed} step {}: voter {id} applied {record:?} twice",
                self.step
            );
            voter.applied.insert(index, record.clone());
            let _ = voter.image.apply(&record);
            match self.committed.get(&index) {
                Some(known) => assert_eq!(
                    known, &record,
                    "seed {seed} step {}: voter {id} committed a different record at {index}; \
                     replay: QUORUM_SEED={seed} cargo test -p coremq-replication --test quorum",
                    self.step
                ),
                None => {
                    self.committed.insert(index, record);
                }
            }
        }
        // Every few records a snapshot, and the entries under it go.
        let voter = &mut self.voters[id as usize];
        let node = voter.node.as_mut().expect("running");
        if node.applied() >= node.snapshot_index() + SNAPSHOT_EVERY {
            let index = node.applied();
            node.take_snapshot(&voter.image)
                .expect("a snapshot at the applied index");
            let image = voter.image.clone();
            assert_eq!(
                image,
                self.image_at(index),
                "seed {seed} step {}: voter {id}'s image at {index} is not the log's",
                self.step
            );
        }
    }

    fn leader(&self) -> Option<i32> {
        VOTERS.iter().copied().find(|&id| {
            self.voters[id as usize]
                .node
                .as_ref()
                .is_some_and(QuorumNode::is_leader)
        })
    }
}

fn run(seed: u64) {
    let mut sim = Sim::new(seed);
    for _ in 0..3_000 {
        sim.run_step(seed);
    }
    // Heal: every voter up, no faults; a leader emerges and a new record commits everywhere.
    sim.faults = false;
    sim.isolated.clear();
    for id in VOTERS {
        let settings = common::quorum_settings(id, &mut sim.rng);
        let voter = &mut sim.voters[id as usize];
        voter.restart(id, settings);
    }
    // A proposal can be lost with a leadership change: propose a new final marker every 200
    // steps until one is applied everywhere.
    let finals: Vec<Record> = (0..10).map(|n| marker((u64::MAX >> 2) + n)).collect();
    let mut last = None;
    for step in 0..2_000 {
        sim.run_step(seed);
        if step % 200 == 0
            && let Some(leader) = sim.leader()
        {
            let record = finals[step / 200].clone();
            if sim.voters[leader as usize]
                .node
                .as_mut()
                .unwrap()
                .propose(&record)
                .is_ok()
            {
                last.get_or_insert(record);
            }
        }
        let applied = finals
            .iter()
            .find(|record| sim.voters.iter().all(|voter| holds(&voter.image, record)));
        if let Some(record) = applied {
            last = Some(record.clone());
            break;
        }
    }
    let last = last.unwrap_or_else(|| panic!("seed {seed}: no leader to propose to after healing"));
    // The observer catches up with everything committed.
    for _ in 0..1_000 {
        if holds(&sim.observed_image, &last) {
            break;
        }
        sim.run_step(seed);
    }
    let expected = sim.image_at(u64::MAX);
    assert_eq!(
        sim.observed_image, expected,
        "seed {seed}: the observer holds another image; replay: QUORUM_SEED={seed} cargo test \
         -p coremq-replication --test quorum"
    );
    for (id, voter) in sim.voters.iter().enumerate() {
        assert!(
            holds(&voter.image, &last),
            "seed {seed}: voter {id} never applied the record proposed after healing; \
             replay: QUORUM_SEED={seed} cargo test -p coremq-replication --test quorum"
        );
        // Replayed or restored from a snapshot, a voter's image is the whole log's.
        assert_eq!(
            voter.image, expected,
            "seed {seed}: voter {id} holds a different image"
        );
    }
    if std::env::var("QUORUM_STATS").is_ok() {
        eprintln!(
            "seed {seed}: {} terms with a leader, {} records committed",
            sim.leaders.len(),
            sim.committed.len()
        );
    }
    assert!(
        sim.committed.len() > 5,
        "seed {seed}: only {} records committed",
        sim.committed.len()
    );
}

#[test]
fn the_metadata_log_stays_consistent_under_faults() {
    common::run_seeds("QUORUM", 2000, run);
}
