//! `capacity`: `e2e` steps of rising offered load until p99 end-to-end latency passes the
//! SLO or the cluster stops keeping up (it delivers under 90% of what is offered, or
//! errors come back), then a search between the last rate that held and the first that
//! failed; the highest rate that held is the sustainable one.
//!
//! One latency spike must not decide: each step runs `--windows` windows (3 by default)
//! and is judged on their medians, and its spread (the lowest and highest p99 and delivered
//! rate) is reported. Each window also measures what could explain a failure: this
//! machine's CPU use (all of it, this process's share, and the time the hypervisor stole)
//! and how late a thread that sleeps 1 ms at a time wakes up. A failing step is then
//! called saturated (the CPUs were busy), a host stall (wake-ups were late or time was
//! stolen while the CPUs had room), or neither (latency rose with CPU to spare: the disk
//! or queueing in the broker). Given a target workload, the answer is how many brokers
//! like the one measured carry it with the headroom asked for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::args::{Capacity, MB, Rate};
use crate::run::{Mode, error_total, execute};
use crate::stats;

/// A step holds when it delivers at least this share of the offered load.
const KEEPS_UP: f64 = 0.9;
/// Machine CPU use (percent) from which a failing step counts as saturated.
const SATURATED_PCT: f64 = 90.0;
/// Wake-up lateness (ms, p99) or stolen time (percent) from which the host counts as
/// stalling.
const STALL_LATE_MS: f64 = 1.0;
const STALL_STEAL_PCT: f64 = 2.0;
/// The search stops once the failing rate is within this factor of the holding one.
const CLOSE_ENOUGH: f64 = 1.05;

pub fn run(capacity: Capacity) -> Result<Value, String> {
    if capacity.step_factor <= 1.0 || capacity.start_rate <= 0.0 {
        return Err("--step-factor must be above 1 and --start-rate above 0".into());
    }
    if !(0.0..1.0).contains(&capacity.headroom) {
        return Err("--headroom is a fraction in 0..1".into());
    }
    if capacity.windows == 0 {
        return Err("--windows must be at least 1".into());
    }
    let mut steps: Vec<Value> = Vec::new();
    let mut held: Option<Value> = None;
    let mut failed: Option<Value> = None;
    let mut rate = capacity.start_rate;
    for _ in 0..capacity.max_steps {
        let step = measure(&capacity, steps.len() + 1, rate)?;
        steps.push(step.clone());
        if step["sustainable"] == true {
            held = Some(step);
            rate *= capacity.step_factor;
        } else {
            failed = Some(step);
            break;
        }
    }
    for _ in 0..capacity.refine {
        let (Some(low), Some(high)) = (
            held.as_ref()
                .and_then(|step| step["offered_records_per_s"].as_f64()),
            failed
                .as_ref()
                .and_then(|step| step["offered_records_per_s"].as_f64()),
        ) else {
            break;
        };
        if high <= low * CLOSE_ENOUGH {
            break;
        }
        let step = measure(&capacity, steps.len() + 1, (low * high).sqrt())?;
        steps.push(step.clone());
        if step["sustainable"] == true {
            held = Some(step);
        } else {
            failed = Some(step);
        }
    }
    let summary = size(&capacity, held, failed, steps);
    print_sizing(&summary);
    Ok(summary)
}

/// One step: `--windows` runs at `rate`, judged on their medians.
fn measure(capacity: &Capacity, number: usize, rate: f64) -> Result<Value, String> {
    let mut workload = capacity.workload.clone();
    workload.duration = Some(capacity.step_duration);
    workload.records = None;
    workload.histogram_out = None;
    workload.rate = Rate::RecordsPerSecond(rate);
    let mut windows = Vec::with_capacity(capacity.windows);
    for _ in 0..capacity.windows {
        let probe = WakeProbe::start();
        let cpu_before = CpuTimes::now();
        let summary = execute(&workload, Mode::E2e, false)?;
        let cpu = CpuTimes::now().and_then(|after| after.since(&cpu_before));
        let wake = probe.stop();
        if let Some(failure) = summary["failure"].as_str() {
            // A window whose run failed (the cluster stopped answering) ends the search.
            return Err(format!("step {number} at {rate:.0} records/s: {failure}"));
        }
        windows.push(json!({
            "records_per_s": summary["consumed"]["records_per_s"].as_f64().unwrap_or(0.0),
            "mb_per_s": summary["consumed"]["mb_per_s"].as_f64().unwrap_or(0.0),
            "e2e_p99_ms": summary["e2e_latency_ms"]["p99"].as_f64().unwrap_or(f64::INFINITY),
            "e2e_latency_ms": summary["e2e_latency_ms"],
            "ack_latency_ms": summary["ack_latency_ms"],
            "errors": error_total(&summary),
            "machine_cpu_busy_pct": cpu.as_ref().map(|cpu| cpu.busy_pct),
            "client_cpu_pct": cpu.as_ref().map(|cpu| cpu.process_pct),
            "steal_pct": cpu.as_ref().map(|cpu| cpu.steal_pct),
            "wakeup_late_ms": wake,
        }));
    }
    let column = |key: &str| -> Vec<f64> {
        windows
            .iter()
            .filter_map(|window| window[key].as_f64())
            .collect()
    };
    let late = |key: &str| -> Vec<f64> {
        windows
            .iter()
            .filter_map(|window| window["wakeup_late_ms"][key].as_f64())
            .collect()
    };
    let p99 = spread(column("e2e_p99_ms"));
    let delivered = spread(column("records_per_s"));
    let busy = median(column("machine_cpu_busy_pct"));
    let steal = median(column("steal_pct"));
    let wake_p99 = median(late("p99"));
    let errors: u64 = windows
        .iter()
        .filter_map(|window| window["errors"].as_u64())
        .sum();
    let holds =
        p99.median <= capacity.slo_p99_ms && delivered.median >= KEEPS_UP * rate && errors == 0;
    let limit = (!holds).then(|| diagnose(busy, steal, wake_p99));
    eprintln!(
        "step {number:>2}: offered {rate:>10.0} rec/s  delivered {:>10.0} rec/s  e2e p99 {:>8.2} ms \
         ({:.2}..{:.2} over {} windows)  cpu {}  wake-up p99 {}  errors {errors}  {}",
        delivered.median,
        p99.median,
        p99.min,
        p99.max,
        windows.len(),
        busy.map_or("n/a".into(), |busy| format!("{busy:.0}%")),
        wake_p99.map_or("n/a".into(), |late| format!("{late:.2} ms")),
        match &limit {
            None => "holds".to_string(),
            Some((verdict, _)) => format!("does not hold ({verdict})"),
        }
    );
    Ok(json!({
        "step": number,
        "offered_records_per_s": rate,
        "records_per_s": delivered.median,
        "mb_per_s": median(column("mb_per_s")),
        "e2e_p99_ms": p99.to_json(),
        "delivered_records_per_s": delivered.to_json(),
        "machine_cpu_busy_pct": busy,
        "steal_pct": steal,
        "wakeup_late_p99_ms": wake_p99,
        "errors": errors,
        "sustainable": holds,
        "limit": limit.map(|(verdict, reason)| json!({"verdict": verdict, "reason": reason})),
        "windows": windows,
    }))
}

/// Why a step failed: the CPUs, the host, or neither, with the figures.
fn diagnose(
    busy: Option<f64>,
    steal: Option<f64>,
    wake_p99: Option<f64>,
) -> (&'static str, String) {
    let busy_pct = busy.unwrap_or(0.0);
    let steal_pct = steal.unwrap_or(0.0);
    let late_ms = wake_p99.unwrap_or(0.0);
    if busy_pct >= SATURATED_PCT {
        (
            "saturated",
            format!("the machine's CPUs were {busy_pct:.0}% busy"),
        )
    } else if late_ms >= STALL_LATE_MS || steal_pct >= STALL_STEAL_PCT {
        (
            "host stalled",
            format!(
                "sleeping threads woke {late_ms:.2} ms late at p99 and {steal_pct:.1}% of the \
                 time was stolen, while the CPUs were {busy_pct:.0}% busy"
            ),
        )
    } else {
        (
            "neither",
            format!(
                "latency rose with the CPUs {busy_pct:.0}% busy and the host on time (wake-ups \
                 {late_ms:.2} ms late at p99): the disk, or queueing in the broker"
            ),
        )
    }
}

/// The lowest, median and highest of a step's windows.
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

impl Spread {
    fn to_json(&self) -> Value {
        json!({"min": self.min, "median": self.median, "max": self.max})
    }
}

fn spread(mut values: Vec<f64>) -> Spread {
    values.sort_by(f64::total_cmp);
    Spread {
        min: values.first().copied().unwrap_or(f64::NAN),
        median: median(values.clone()).unwrap_or(f64::NAN),
        max: values.last().copied().unwrap_or(f64::NAN),
    }
}

/// The middle value (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

/// A thread that sleeps 1 ms at a time and records how late it wakes (cyclictest's measure,
/// taken while the load runs): a host that stalls runnable threads shows here.
struct WakeProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Histogram<u64>>,
}

impl WakeProbe {
    const PERIOD: Duration = Duration::from_millis(1);

    fn start() -> WakeProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut late_us = stats::histogram();
            while !stopping.load(Ordering::Relaxed) {
                let before = Instant::now();
                std::thread::sleep(Self::PERIOD);
                let late = before.elapsed().saturating_sub(Self::PERIOD);
                late_us.saturating_record((late.as_micros() as u64).max(1));
            }
            late_us
        });
        WakeProbe { stop, thread }
    }

    /// Stops the probe: wake-ups, and their lateness in ms (p99, p99.9, max).
    fn stop(self) -> Value {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(late_us) => json!({
                "wakeups": late_us.len(),
                "p99": late_us.value_at_quantile(0.99) as f64 / 1000.0,
                "p99_9": late_us.value_at_quantile(0.999) as f64 / 1000.0,
                "max": late_us.max() as f64 / 1000.0,
            }),
            Err(_) => Value::Null,
        }
    }
}

fn size(
    capacity: &Capacity,
    best: Option<Value>,
    failed: Option<Value>,
    steps: Vec<Value>,
) -> Value {
    let workload = &capacity.workload;
    let max_records = best
        .as_ref()
        .and_then(|step| step["records_per_s"].as_f64());
    let max_mb = best.as_ref().and_then(|step| step["mb_per_s"].as_f64());
    let p99_at_max = best
        .as_ref()
        .and_then(|step| step["e2e_p99_ms"]["median"].as_f64());
    let record_bytes = capacity
        .target_record_bytes
        .unwrap_or_else(|| workload.record_size.mean());
    let usable = 1.0 - capacity.headroom;
    let brokers_needed = match (capacity.target_rate, max_records, max_mb) {
        (Some(target), Some(records), Some(mb)) if records > 0.0 && mb > 0.0 => {
            let by_records = target / (records * usable);
            let by_bytes = target * record_bytes / MB / (mb * usable);
            Some(by_records.max(by_bytes).ceil().max(1.0) as u64)
        }
        _ => None,
    };
    let measured_clients = workload.producers + workload.consumers;
    let mut assumptions = vec![
        format!(
            "Each broker is like the one measured (same machine, disks and settings) and \
             carries its share alone; the measurement used replication factor {}, so a \
             higher factor adds follower traffic that is not counted here.",
            workload.replication_factor
        ),
        format!(
            "Load spreads evenly: enough partitions (this run used {}) for every broker to \
             lead its share, and clients spread over them.",
            workload.partitions
        ),
        format!(
            "{:.0}% of each broker's measured capacity is kept free as headroom for bursts, \
             rebalances and a broker being down.",
            capacity.headroom * 100.0
        ),
        format!(
            "Each step ran {} windows of {} s and was judged on their medians; the search \
             stopped within a factor {CLOSE_ENOUGH} or after {} refining steps, so the true \
             limit lies between the rate that held and the one that failed.",
            capacity.windows,
            capacity.step_duration.as_secs_f64(),
            capacity.refine
        ),
        "A broker's limit is whichever runs out first of records/s and bytes/s at the \
         measured record size; both are checked."
            .to_string(),
        format!(
            "The latency limit is p99 end-to-end under {} ms, measured with {} producers \
             and {} consumers; sustaining a step means delivering {:.0}% of the offered \
             load with no errors.",
            capacity.slo_p99_ms,
            workload.producers,
            workload.consumers,
            KEEPS_UP * 100.0
        ),
    ];
    if let Some(clients) = capacity.target_clients {
        assumptions.push(format!(
            "The target has {clients} client connections against {measured_clients} \
             measured; the cost of many mostly idle connections is not measured, so check \
             the per-broker connection count ({} each) against its limits.",
            brokers_needed.map_or(clients, |brokers| clients.div_ceil(brokers))
        ));
    }
    json!({
        "mode": "capacity",
        "slo_p99_ms": capacity.slo_p99_ms,
        "steps": steps,
        "max_sustainable_records_per_s": max_records,
        "max_sustainable_mb_s": max_mb,
        "p99_ms_at_max": p99_at_max,
        "p99_ms_spread_at_max": best.as_ref().map(|step| step["e2e_p99_ms"].clone()),
        "delivered_spread_at_max": best
            .as_ref()
            .map(|step| step["delivered_records_per_s"].clone()),
        "first_failed_records_per_s": failed
            .as_ref()
            .and_then(|step| step["offered_records_per_s"].as_f64()),
        "limit": failed.as_ref().map(|step| step["limit"].clone()),
        "target": {
            "records_per_s": capacity.target_rate,
            "record_bytes": record_bytes,
            "clients": capacity.target_clients,
        },
        "headroom": capacity.headroom,
        "brokers_needed": brokers_needed,
        "assumptions": assumptions,
    })
}

fn print_sizing(summary: &Value) {
    let Some(records) = summary["max_sustainable_records_per_s"].as_f64() else {
        println!(
            "capacity: not even the first step held (p99 under {} ms while keeping up): {} \
             ({}); lower --start-rate",
            summary["slo_p99_ms"],
            summary["limit"]["verdict"].as_str().unwrap_or("?"),
            summary["limit"]["reason"].as_str().unwrap_or("?"),
        );
        return;
    };
    let p99 = &summary["p99_ms_spread_at_max"];
    println!(
        "capacity: this broker sustains {records:.0} records/s ({:.2} MB/s) with p99 \
         end-to-end latency {:.2} ms ({:.2} to {:.2} over the step's windows; SLO {} ms)",
        summary["max_sustainable_mb_s"].as_f64().unwrap_or(0.0),
        p99["median"].as_f64().unwrap_or(f64::NAN),
        p99["min"].as_f64().unwrap_or(f64::NAN),
        p99["max"].as_f64().unwrap_or(f64::NAN),
        summary["slo_p99_ms"],
    );
    match summary["first_failed_records_per_s"].as_f64() {
        Some(failed) => println!(
            "limit: {failed:.0} records/s failed: {} ({})",
            summary["limit"]["verdict"].as_str().unwrap_or("?"),
            summary["limit"]["reason"].as_str().unwrap_or("?"),
        ),
        None => println!("limit: no step failed; raise --max-steps to find it"),
    }
    if let Some(brokers) = summary["brokers_needed"].as_u64() {
        let target = &summary["target"];
        println!(
            "sizing: {} records/s of {} bytes need {brokers} broker(s) like this one, \
             keeping {:.0}% headroom",
            target["records_per_s"],
            target["record_bytes"],
            summary["headroom"].as_f64().unwrap_or(0.0) * 100.0
        );
        println!("assuming:");
        for assumption in summary["assumptions"].as_array().into_iter().flatten() {
            println!("  - {}", assumption.as_str().unwrap_or_default());
        }
    }
}

/// CPU time from `/proc/stat` (the machine) and `/proc/self/stat` (this process), in
/// clock ticks.
struct CpuTimes {
    busy: u64,
    total: u64,
    steal: u64,
    process: u64,
}

/// Utilisation over a step, in percent of the whole machine.
struct CpuUse {
    busy_pct: f64,
    process_pct: f64,
    /// Time the hypervisor ran something else while this machine's CPUs wanted to run.
    steal_pct: f64,
}

impl CpuTimes {
    fn now() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|field| field.parse().ok())
            .collect();
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3)? + ticks.get(4)?;
        let steal = ticks.get(7).copied().unwrap_or(0);
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces), from field 3 on.
        let fields: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        let process = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(CpuTimes {
            busy: total - idle - steal,
            total,
            steal,
            process,
        })
    }

    fn since(&self, before: &Option<CpuTimes>) -> Option<CpuUse> {
        let before = before.as_ref()?;
        let total = self.total.checked_sub(before.total)?.max(1) as f64;
        Some(CpuUse {
            busy_pct: (self.busy.saturating_sub(before.busy)) as f64 / total * 100.0,
            process_pct: (self.process.saturating_sub(before.process)) as f64 / total * 100.0,
            steal_pct: (self.steal.saturating_sub(before.steal)) as f64 / total * 100.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_judged_on_the_median_of_its_windows() {
        assert_eq!(
            median(vec![3.0, 900.0, 2.0]),
            Some(3.0),
            "one spike does not decide"
        );
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
        let spread = spread(vec![5.0, 1.0, 3.0]);
        assert_eq!((spread.min, spread.median, spread.max), (1.0, 3.0, 5.0));
    }

    #[test]
    fn a_failed_step_is_blamed_on_the_cpus_the_host_or_neither() {
        assert_eq!(diagnose(Some(97.0), Some(0.0), Some(8.0)).0, "saturated");
        assert_eq!(diagnose(Some(40.0), Some(0.0), Some(6.5)).0, "host stalled");
        assert_eq!(diagnose(Some(40.0), Some(5.0), Some(0.1)).0, "host stalled");
        assert_eq!(diagnose(Some(40.0), Some(0.0), Some(0.1)).0, "neither");
    }
}
