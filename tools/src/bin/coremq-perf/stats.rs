//! What a shard measured in one interval (records, bytes, latency histograms, errors by
//! kind), how intervals add up, and how results are printed.

use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::args::MB;

/// Latencies are recorded in microseconds, up to an hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// One shard's measurements over one interval (or, added up, over a run).
#[derive(Debug, Clone)]
pub struct Stats {
    /// Records acknowledged (written, with acks=0), and their key and value bytes.
    pub produced: u64,
    pub produced_bytes: u64,
    /// From `send` to the acknowledgement.
    pub ack: Histogram<u64>,
    pub consumed: u64,
    pub consumed_bytes: u64,
    /// From the send time carried in the record to its arrival at a consumer.
    pub e2e: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub last_produced: Option<Instant>,
    pub last_consumed: Option<Instant>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            produced: 0,
            produced_bytes: 0,
            ack: histogram(),
            consumed: 0,
            consumed_bytes: 0,
            e2e: histogram(),
            errors: BTreeMap::new(),
            last_produced: None,
            last_consumed: None,
        }
    }
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.produced += other.produced;
        self.produced_bytes += other.produced_bytes;
        self.ack.add(&other.ack).expect("same histogram bounds");
        self.consumed += other.consumed;
        self.consumed_bytes += other.consumed_bytes;
        self.e2e.add(&other.e2e).expect("same histogram bounds");
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
        self.last_produced = self.last_produced.max(other.last_produced);
        self.last_consumed = self.last_consumed.max(other.last_consumed);
    }

    pub fn error(&mut self, kind: String, count: u64) {
        *self.errors.entry(kind).or_default() += count;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// One progress line for an interval of `seconds`.
    pub fn progress_line(&self, at_seconds: u64, seconds: f64) -> String {
        let mut line = format!("{at_seconds:>4}s");
        if self.produced > 0 || !self.ack.is_empty() {
            line += &format!(
                "  produced {:>9.0} rec/s {:>8.2} MB/s  ack p50 {} p99 {}",
                self.produced as f64 / seconds,
                self.produced_bytes as f64 / MB / seconds,
                millis(self.ack.value_at_quantile(0.5)),
                millis(self.ack.value_at_quantile(0.99)),
            );
        }
        if self.consumed > 0 || !self.e2e.is_empty() {
            line += &format!(
                "  consumed {:>9.0} rec/s {:>8.2} MB/s",
                self.consumed as f64 / seconds,
                self.consumed_bytes as f64 / MB / seconds,
            );
            if !self.e2e.is_empty() {
                line += &format!(
                    "  e2e p50 {} p99 {}",
                    millis(self.e2e.value_at_quantile(0.5)),
                    millis(self.e2e.value_at_quantile(0.99)),
                );
            }
        }
        line + &format!("  errors {}", self.error_count())
    }
}

fn millis(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// The percentiles a run reports, in milliseconds; `null` when nothing was recorded.
pub fn percentiles(histogram: &Histogram<u64>) -> Value {
    if histogram.is_empty() {
        return Value::Null;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": histogram.len(),
        "p50": ms(histogram.value_at_quantile(0.5)),
        "p90": ms(histogram.value_at_quantile(0.9)),
        "p99": ms(histogram.value_at_quantile(0.99)),
        "p99_9": ms(histogram.value_at_quantile(0.999)),
        "p99_99": ms(histogram.value_at_quantile(0.9999)),
        "max": ms(histogram.max()),
    })
}

/// The lines a person reads at the end of a run, from its JSON summary.
pub fn print_summary(summary: &Value) {
    let number = |key: &str| summary[key].as_f64().unwrap_or(0.0);
    println!(
        "{}: {:.1} s measured",
        summary["mode"].as_str().unwrap_or("run"),
        number("seconds")
    );
    for (role, latency) in [
        ("produced", "ack_latency_ms"),
        ("consumed", "e2e_latency_ms"),
    ] {
        let totals = &summary[role];
        if totals.is_null() {
            continue;
        }
        println!(
            "  {role}: {} records, {:.0} records/s, {:.2} MB/s",
            totals["records"],
            totals["records_per_s"].as_f64().unwrap_or(0.0),
            totals["mb_per_s"].as_f64().unwrap_or(0.0),
        );
        let latency = &summary[latency];
        if !latency.is_null() {
            let name = if role == "produced" {
                "ack latency"
            } else {
                "end-to-end latency"
            };
            println!(
                "  {name} (ms): p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
                latency["p50"],
                latency["p90"],
                latency["p99"],
                latency["p99_9"],
                latency["p99_99"],
                latency["max"],
            );
        }
    }
    println!("  errors: {}", summary["errors"]);
    let idle = summary["idle_consumers"].as_u64().unwrap_or(0);
    if idle > 0 {
        println!(
            "  idle consumers: {idle} (more consumers than the topic's {} partitions)",
            summary["config"]["partitions"]
        );
    }
    if let Some(failure) = summary["failure"].as_str() {
        println!("  failed: {failure}");
    }
}
