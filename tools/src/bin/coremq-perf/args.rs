//! Command-line options. The flag names are the issue's, so scripts can rely on them.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use coremq_engine::Compression;
use coremq_net::mqtt::codec::{Level, QoS};

/// Bytes in the MB of "MB/s", as kafka-producer-perf-test and the OpenMessaging Benchmark
/// count them.
pub const MB: f64 = 1024.0 * 1024.0;

#[derive(Parser, Debug)]
#[command(
    name = "coremq-perf",
    version,
    about = "Load generator and capacity planner for any Kafka-compatible cluster"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Producers only: throughput and acknowledgement latency.
    Produce(Workload),
    /// Consumers only, reading what the topic holds (from --from).
    Consume(Workload),
    /// Producers and consumers together: end-to-end latency from a send timestamp carried
    /// in each record.
    E2e(Workload),
    /// Raises the offered load step by step until p99 end-to-end latency passes the SLO or
    /// throughput stops growing, then sizes a cluster for a target workload.
    Capacity(Capacity),
    /// MQTT publishers and subscribers together: publish rate, acknowledgement latency
    /// (QoS 1 and 2) and end-to-end latency from a send time carried in each payload.
    Mqtt(MqttWorkload),
    /// Idle MQTT clients: connects them, holds them, and reports the broker's memory per
    /// connection when given its process id.
    MqttIdle(MqttIdle),
}

#[derive(Args, Debug, Clone)]
pub struct Workload {
    /// Brokers to learn the cluster from.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    #[arg(long, default_value = "coremq-perf")]
    pub topic: String,
    /// Partitions of the topic, created with this many if missing.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i16,
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Bytes per record value, or a uniform range `MIN..MAX`. At least 8: the first 8 bytes
    /// carry the send time.
    #[arg(long, default_value = "1024")]
    pub record_size: RecordSize,
    /// Distinct keys (0: records without a key, spread by the sticky partitioner).
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
    /// Offered load in all: records/s (`10000`) or bytes/s (`50MB/s`, `512KB/s`);
    /// unlimited by default.
    #[arg(long, default_value = "unlimited")]
    pub rate: Rate,
    /// How long to measure, after the warm-up (`30s`, `500ms`, `2m`).
    #[arg(long, value_parser = parse_duration, conflicts_with = "records")]
    pub duration: Option<Duration>,
    /// Records to produce (or consume) in all, instead of a duration.
    #[arg(long)]
    pub records: Option<u64>,
    /// Load before measuring, left out of the results.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// 0, 1 or all (-1).
    #[arg(long, default_value = "1", value_parser = parse_acks)]
    pub acks: i16,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    /// Bytes of records that fill a batch.
    #[arg(long, default_value_t = 16384)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Produce requests outstanding per connection.
    #[arg(long, default_value_t = 5)]
    pub max_in_flight: usize,
    /// Idempotent producers (sequence numbers); on by default with --acks all.
    #[arg(long)]
    pub no_idempotence: bool,
    /// Where consumers start: earliest or latest (`e2e` always starts at the end).
    #[arg(long, default_value = "earliest", value_parser = ["earliest", "latest"])]
    pub from: String,
    /// Consumers join this consumer group (range assignor, committing every 5 s and when
    /// they leave) instead of splitting the partitions among themselves; they start at the
    /// group's committed offsets, or at --from where it has none.
    #[arg(long)]
    pub group: Option<String>,
    /// Client threads, one glommio executor each (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the results as one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Write the latency histograms, one per second, as an HdrHistogram interval log.
    #[arg(long)]
    pub histogram_out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct Capacity {
    #[command(flatten)]
    pub workload: Workload,
    /// How long each load step runs.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub step_duration: Duration,
    /// The p99 end-to-end latency a sustainable rate must stay under.
    #[arg(long, default_value_t = 10.0)]
    pub slo_p99_ms: f64,
    /// Offered records/s of the first step.
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Each step offers this many times the previous one.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// Steps at most while the load rises (the search after the first failed step adds
    /// `--refine` more).
    #[arg(long, default_value_t = 20)]
    pub max_steps: usize,
    /// Windows of `--step-duration` per step; a step is judged on their medians.
    #[arg(long, default_value_t = 3)]
    pub windows: usize,
    /// Steps that halve (geometrically) the gap between the last rate that held and the
    /// first that failed.
    #[arg(long, default_value_t = 3)]
    pub refine: usize,
    /// The workload to size for: records/s in all.
    #[arg(long)]
    pub target_rate: Option<f64>,
    /// Bytes per record of the target workload (default: --record-size's mean).
    #[arg(long)]
    pub target_record_bytes: Option<f64>,
    /// Client connections of the target workload (producers and consumers).
    #[arg(long)]
    pub target_clients: Option<u64>,
    /// Fraction of each broker's measured capacity left free when sizing.
    #[arg(long, default_value_t = 0.3)]
    pub headroom: f64,
}

#[derive(Args, Debug, Clone)]
pub struct MqttWorkload {
    /// The MQTT broker (host:port).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// Protocol version of every client: 3.1, 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1", value_parser = parse_mqtt_version)]
    pub mqtt_version: Level,
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// QoS of every PUBLISH and subscription: 0, 1 or 2.
    #[arg(long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Bytes per payload, or a uniform range `MIN..MAX`. At least 8: the first 8 bytes
    /// carry the send time.
    #[arg(long, default_value = "100")]
    pub payload: RecordSize,
    /// Topics `PREFIX/0` .. `PREFIX/N-1`: publisher `p` publishes to topic `p % N`,
    /// subscriber `s` subscribes to topic `s % N`.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    #[arg(long, default_value = "coremq-perf")]
    pub topic_prefix: String,
    /// Every subscriber subscribes to `PREFIX/#` instead of its one topic.
    #[arg(long)]
    pub wildcard: bool,
    /// Offered load in all: messages/s (`10000`) or bytes/s (`5MB/s`); unlimited by
    /// default.
    #[arg(long, default_value = "unlimited")]
    pub rate: Rate,
    /// How long to measure, after the warm-up (`30s`, `500ms`, `2m`).
    #[arg(long, value_parser = parse_duration, conflicts_with = "messages")]
    pub duration: Option<Duration>,
    /// Messages to publish in all, instead of a duration.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Load before measuring, left out of the results.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// QoS 1 and 2 messages a publisher has unacknowledged at most.
    #[arg(long, default_value_t = 16)]
    pub inflight: usize,
    /// Keep alive of every client, in seconds (0: none).
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    /// Client threads, one glommio executor each (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the results as one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Write the latency histograms, one per second, as an HdrHistogram interval log.
    #[arg(long)]
    pub histogram_out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct MqttIdle {
    /// The MQTT broker (host:port).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// Protocol version of every client: 3.1, 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1", value_parser = parse_mqtt_version)]
    pub mqtt_version: Level,
    /// Clients to connect (clean session, no keep alive). Beyond 20,000 they connect from
    /// further loopback addresses (127.1.0.1, 127.1.0.2, ...), 20,000 each.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// How long to hold them once all are connected.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub hold: Duration,
    /// The broker's process: its resident memory is read before connecting and while
    /// holding, and the difference reported per connection.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Connecting threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print the results as one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
}

/// Record value sizes: uniform in `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordSize {
    pub min: usize,
    pub max: usize,
}

impl RecordSize {
    pub fn mean(&self) -> f64 {
        (self.min + self.max) as f64 / 2.0
    }
}

impl FromStr for RecordSize {
    type Err = String;

    fn from_str(text: &str) -> Result<RecordSize, String> {
        let number = |text: &str| {
            text.trim()
                .parse::<usize>()
                .map_err(|_| format!("{text:?} is not a byte count"))
        };
        let (min, max) = match text.split_once("..") {
            Some((min, max)) => (number(min)?, number(max)?),
            None => (number(text)?, number(text)?),
        };
        if min < 8 || max < min {
            return Err(format!(
                "record size {text} must be at least 8 bytes, MIN <= MAX"
            ));
        }
        Ok(RecordSize { min, max })
    }
}

/// Offered load in all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Unlimited,
    RecordsPerSecond(f64),
    BytesPerSecond(f64),
}

impl Rate {
    /// Records/s, given the mean record size.
    pub fn records_per_second(&self, mean_record_bytes: f64) -> Option<f64> {
        match *self {
            Rate::Unlimited => None,
            Rate::RecordsPerSecond(rate) => Some(rate),
            Rate::BytesPerSecond(rate) => Some(rate / mean_record_bytes),
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        if text == "unlimited" {
            return Ok(Rate::Unlimited);
        }
        let bad = || format!("rate {text:?} is not records/s (10000) or bytes/s (50MB/s)");
        let rate = if let Some(amount) = text.strip_suffix("/s") {
            let units = [("GB", MB * 1024.0), ("MB", MB), ("KB", 1024.0), ("B", 1.0)];
            let (number, scale) = units
                .iter()
                .find_map(|(unit, scale)| amount.strip_suffix(unit).map(|n| (n, *scale)))
                .ok_or_else(bad)?;
            Rate::BytesPerSecond(number.trim().parse::<f64>().map_err(|_| bad())? * scale)
        } else {
            Rate::RecordsPerSecond(text.parse::<f64>().map_err(|_| bad())?)
        };
        match rate {
            Rate::RecordsPerSecond(value) | Rate::BytesPerSecond(value) if value > 0.0 => Ok(rate),
            _ => Err(bad()),
        }
    }
}

/// `30s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 30s, 500ms or 2m");
    let units = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];
    let (number, scale) = units
        .iter()
        .find_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n, *scale)))
        .unwrap_or((text, 1.0));
    let seconds = number.trim().parse::<f64>().map_err(|_| bad())? * scale;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_acks(text: &str) -> Result<i16, String> {
    match text {
        "0" => Ok(0),
        "1" => Ok(1),
        "all" | "-1" => Ok(-1),
        _ => Err(format!("acks {text:?} is not 0, 1 or all")),
    }
}

fn parse_mqtt_version(text: &str) -> Result<Level, String> {
    match text {
        "3.1" | "3" => Ok(Level::V31),
        "3.1.1" | "4" => Ok(Level::V311),
        "5" | "5.0" => Ok(Level::V5),
        _ => Err(format!("MQTT version {text:?} is not 3.1, 3.1.1 or 5")),
    }
}

fn parse_qos(text: &str) -> Result<QoS, String> {
    text.parse::<u8>()
        .ok()
        .and_then(QoS::from_bits)
        .ok_or_else(|| format!("QoS {text:?} is not 0, 1 or 2"))
}

fn parse_compression(text: &str) -> Result<Compression, String> {
    Compression::from_name(text)
        .ok_or_else(|| format!("compression {text:?} is not none, gzip, snappy, lz4 or zstd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_rates_and_durations_parse() {
        assert_eq!(
            "100..200".parse::<RecordSize>().unwrap(),
            RecordSize { min: 100, max: 200 }
        );
        assert_eq!("1024".parse::<RecordSize>().unwrap().mean(), 1024.0);
        assert!("4".parse::<RecordSize>().is_err());
        assert!("300..200".parse::<RecordSize>().is_err());
        assert_eq!(
            "50MB/s".parse::<Rate>().unwrap(),
            Rate::BytesPerSecond(50.0 * MB)
        );
        assert_eq!(
            "10000".parse::<Rate>().unwrap(),
            Rate::RecordsPerSecond(10000.0)
        );
        assert_eq!("unlimited".parse::<Rate>().unwrap(), Rate::Unlimited);
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        assert_eq!(
            Rate::BytesPerSecond(1000.0).records_per_second(100.0),
            Some(10.0)
        );
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_acks("all").unwrap(), -1);
        assert!(parse_acks("2").is_err());
        assert_eq!(parse_mqtt_version("5").unwrap(), Level::V5);
        assert_eq!(parse_mqtt_version("3.1.1").unwrap(), Level::V311);
        assert!(parse_mqtt_version("6").is_err());
        assert_eq!(parse_qos("2").unwrap(), QoS::ExactlyOnce);
        assert!(parse_qos("3").is_err());
    }
}
