//! Which sealed segments retention deletes (pure): the oldest ones wholly below the log
//! start, then while the log is over `retention.bytes` by at least the segment, then while
//! a segment's newest record is older than `retention.ms`. Always a prefix, oldest first.

use crate::config::LogConfig;
use crate::types::{Offset, Timestamp};

#[derive(Debug, Clone, Copy)]
pub struct SegmentSummary {
    pub next_offset: Offset,
    pub size: u64,
    pub max_timestamp: Option<Timestamp>,
}

/// How many of the oldest sealed segments to delete. `active_bytes` is the active segment's
/// size, which counts toward `retention.bytes` but is never deleted here.
pub fn segments_to_delete(
    sealed: &[SegmentSummary],
    active_bytes: u64,
    config: &LogConfig,
    now: Timestamp,
    log_start: Offset,
) -> usize {
    let mut total: u64 = sealed.iter().map(|segment| segment.size).sum::<u64>() + active_bytes;
    let mut count = 0;
    for segment in sealed {
        let below_start = segment.next_offset <= log_start;
        let over_size = config
            .retention_bytes
            .is_some_and(|limit| total - segment.size >= limit);
        let expired = config.retention_ms.is_some_and(|ms| {
            segment
                .max_timestamp
                .is_some_and(|max| max.0 < now.0.saturating_sub(ms as i64))
        });
        if !(below_start || over_size || expired) {
            break;
        }
        total -= segment.size;
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments() -> Vec<SegmentSummary> {
        (0..5)
            .map(|n| SegmentSummary {
                next_offset: Offset((n + 1) * 100),
                size: 1000,
                max_timestamp: Some(Timestamp(n as i64 * 1000)),
            })
            .collect()
    }

    #[test]
    fn size_retention_keeps_at_least_the_limit() {
        let config = LogConfig {
            retention_bytes: Some(2500),
            retention_ms: None,
            ..Default::default()
        };
        // 5 sealed + 500 active = 5500 bytes; deleting 3 leaves 2500.
        assert_eq!(
            segments_to_delete(&segments(), 500, &config, Timestamp(0), Offset(0)),
            3
        );
    }

    #[test]
    fn time_retention_deletes_expired_prefix() {
        let config = LogConfig {
            retention_ms: Some(2500),
            ..Default::default()
        };
        assert_eq!(
            segments_to_delete(&segments(), 0, &config, Timestamp(5000), Offset(0)),
            3
        );
        let no_limits = LogConfig {
            retention_ms: None,
            ..Default::default()
        };
        assert_eq!(
            segments_to_delete(&segments(), 0, &no_limits, Timestamp(1 << 40), Offset(0)),
            0
        );
    }

    #[test]
    fn segments_below_log_start_go() {
        let config = LogConfig {
            retention_ms: None,
            ..Default::default()
        };
        assert_eq!(
            segments_to_delete(&segments(), 0, &config, Timestamp(0), Offset(250)),
            2
        );
    }
}
