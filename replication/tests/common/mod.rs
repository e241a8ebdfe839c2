//! Helpers shared by the replication crate's simulation tests.

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
