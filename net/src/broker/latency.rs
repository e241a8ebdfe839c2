//! Latencies as Prometheus histograms: fixed buckets in seconds, a count per bucket and the
//! sum. Each shard keeps one per Kafka API (plain counters on the shard, no locks); a scrape
//! merges them, and turns the engine's fdatasync latencies (an HdrHistogram in
//! microseconds) into the same buckets, so `histogram_quantile` works over any window.

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Bucket upper bounds, seconds: 100 us to 30 s.
pub const BOUNDS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// One latency histogram: observations per bucket (the last beyond every bound) and their
/// sum in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    counts: [u64; BOUNDS.len() + 1],
    sum: f64,
}

impl Latency {
    pub fn observe(&mut self, seconds: f64) {
        let bucket = BOUNDS.partition_point(|bound| *bound < seconds);
        self.counts[bucket] += 1;
        self.sum += seconds;
    }

    pub fn merge(&mut self, other: &Latency) {
        for (count, more) in self.counts.iter_mut().zip(other.counts) {
            *count += more;
        }
        self.sum += other.sum;
    }

    /// The same observations from an HdrHistogram of microseconds.
    pub fn from_micros(histogram: &Histogram<u64>) -> Latency {
        let mut latency = Latency::default();
        let mut below = 0;
        for (bucket, bound) in BOUNDS.iter().enumerate() {
            let upto = histogram.count_between(0, (bound * 1e6) as u64);
            latency.counts[bucket] = upto - below;
            below = upto;
        }
        latency.counts[BOUNDS.len()] = histogram.len() - below;
        latency.sum = histogram.mean() * histogram.len() as f64 / 1e6;
        latency
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// One histogram metric with a series per label set, for a scrape.
#[derive(Debug)]
pub struct Histograms {
    pub name: &'static str,
    pub help: &'static str,
    pub series: Vec<(Vec<(String, String)>, Latency)>,
}

impl Collector for Histograms {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Histogram)?;
        for (labels, latency) in &self.series {
            let buckets: Vec<(f64, u64)> = BOUNDS
                .iter()
                .copied()
                .chain([f64::MAX])
                .zip(latency.counts)
                .collect();
            metric
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(latency.sum, latency.count(), &buckets, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let mut latency = Latency::default();
        latency.observe(0.0001);
        latency.observe(0.0003);
        latency.observe(45.0);
        assert_eq!(latency.counts[0], 1);
        assert_eq!(latency.counts[2], 1);
        assert_eq!(latency.counts[BOUNDS.len()], 1);
        assert_eq!(latency.count(), 3);
        assert!((latency.sum - 45.0004).abs() < 1e-9);
    }

    #[test]
    fn an_hdr_histogram_of_microseconds_becomes_the_same_buckets() {
        let mut hdr = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut direct = Latency::default();
        for micros in [80, 400, 900, 3_000, 70_000, 2_000_000] {
            hdr.record(micros).unwrap();
            direct.observe(micros as f64 / 1e6);
        }
        let converted = Latency::from_micros(&hdr);
        assert_eq!(converted.counts, direct.counts);
        assert!((converted.sum - direct.sum).abs() / direct.sum < 0.01);
    }
}
