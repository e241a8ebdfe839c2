//! Helpers shared by the replication crate's simulation tests.

/// Runs `run` for each seed of [`seeds`], on as many threads as there are cores (each seed
/// is a whole simulation of its own, replayed alone the same on one thread). A failing seed's
/// panic names the command that replays it.
pub fn run_seeds(prefix: &str, default: u64, run: impl Fn(u64) + Sync) {
    let seeds = seeds(prefix, default);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers.min(seeds.len()) {
            scope.spawn(|| {
                while let Some(&seed) =
                    seeds.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    run(seed);
                }
            });
        }
    });
}

/// The seeds a simulation runs: only `$PREFIX_SEED` if set (to replay one), else
/// `0..$PREFIX_SEEDS`, `0..default` without it.
pub fn seeds(prefix: &str, default: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var(format!("{prefix}_SEED")) {
        return vec![seed.parse().expect("the seed is a number")];
    }
    let count = std::env::var(format!("{prefix}_SEEDS"))
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    (0..count).collect()
}

/// Voter `id`'s quorum settings for a simulation: its own election timeout from the seeded
/// `rng` (raft-rs's randomized one comes from the thread's RNG, which no seed replays), in a
/// range of its own: two voters with the same fixed timeout would stand for election in
/// the same tick, split the vote and do it again forever (a seed found that).
pub fn quorum_settings(
    id: i32,
    rng: &mut rand::rngs::StdRng,
) -> coremq_replication::quorum::QuorumSettings {
    use rand::Rng;
    let first = 10 + 4 * id as usize;
    coremq_replication::quorum::QuorumSettings {
        fixed_election_ticks: Some(rng.random_range(first..first + 4)),
        ..coremq_replication::quorum::QuorumSettings::default()
    }
}

/// Takes the messages of `network` (delivery step, recipient, message) due by `step`, in an
/// order shuffled by `rng`: the simulated network reorders what arrives together.
pub fn take_due<T>(
    network: &mut Vec<(u64, i32, T)>,
    step: u64,
    rng: &mut rand::rngs::StdRng,
) -> Vec<(u64, i32, T)> {
    use rand::Rng;
    let mut due: Vec<_> = network.extract_if(.., |entry| entry.0 <= step).collect();
    for index in (1..due.len()).rev() {
        due.swap(index, rng.random_range(0..=index));
    }
    due
}
