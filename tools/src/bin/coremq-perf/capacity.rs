//! `capacity`: `e2e` steps of rising offered load until p99 end-to-end latency passes the
//! SLO or the cluster stops keeping up (it delivers under 90% of what is offered, or
//! errors come back); the last step that held is the highest sustainable rate. Each step
//! also samples this machine's CPU use (all of it, and this process's share), which is
//! the broker's utilisation when it runs here. Given a target workload, the answer is
//! how many brokers like the one measured carry it with the headroom asked for.

use serde_json::{Value, json};

use crate::args::{Capacity, MB, Rate};
use crate::run::{Mode, error_total, execute};

/// A step holds when it delivers at least this share of the offered load.
const KEEPS_UP: f64 = 0.9;

pub fn run(capacity: Capacity) -> Result<Value, String> {
    if capacity.step_factor <= 1.0 || capacity.start_rate <= 0.0 {
        return Err("--step-factor must be above 1 and --start-rate above 0".into());
    }
    if !(0.0..1.0).contains(&capacity.headroom) {
        return Err("--headroom is a fraction in 0..1".into());
    }
    let mut workload = capacity.workload.clone();
    workload.duration = Some(capacity.step_duration);
    workload.records = None;
    workload.histogram_out = None;
    let mut steps = Vec::new();
    let mut best: Option<Value> = None;
    let mut rate = capacity.start_rate;
    for step in 1..=capacity.max_steps {
        workload.rate = Rate::RecordsPerSecond(rate);
        let cpu_before = CpuTimes::now();
        let summary = execute(&workload, Mode::E2e, false)?;
        let cpu = CpuTimes::now().and_then(|after| after.since(&cpu_before));
        let delivered = summary["consumed"]["records_per_s"].as_f64().unwrap_or(0.0);
        let p99 = summary["e2e_latency_ms"]["p99"]
            .as_f64()
            .unwrap_or(f64::INFINITY);
        let errors = error_total(&summary);
        if let Some(failure) = summary["failure"].as_str() {
            // A step whose run failed (the cluster stopped answering) ends the search.
            return Err(format!("step {step} at {rate:.0} records/s: {failure}"));
        }
        let holds = p99 <= capacity.slo_p99_ms && delivered >= KEEPS_UP * rate && errors == 0;
        let result = json!({
            "step": step,
            "offered_records_per_s": rate,
            "records_per_s": delivered,
            "mb_per_s": summary["consumed"]["mb_per_s"],
            "e2e_latency_ms": summary["e2e_latency_ms"],
            "ack_latency_ms": summary["ack_latency_ms"],
            "errors": summary["errors"],
            "machine_cpu_busy_pct": cpu.as_ref().map(|cpu| cpu.busy_pct),
            "client_cpu_pct": cpu.as_ref().map(|cpu| cpu.process_pct),
            "sustainable": holds,
        });
        eprintln!(
            "step {step:>2}: offered {rate:>10.0} rec/s  delivered {delivered:>10.0} rec/s  \
             e2e p99 {p99:>8.2} ms  cpu {}  errors {errors}  {}",
            cpu.as_ref().map_or("n/a".into(), |cpu| format!(
                "{:.0}% (client {:.0}%)",
                cpu.busy_pct, cpu.process_pct
            )),
            if holds { "holds" } else { "does not hold" }
        );
        steps.push(result.clone());
        if !holds {
            break;
        }
        best = Some(result);
        rate *= capacity.step_factor;
    }
    let summary = size(&capacity, best, steps);
    print_sizing(&summary);
    Ok(summary)
}

fn size(capacity: &Capacity, best: Option<Value>, steps: Vec<Value>) -> Value {
    let workload = &capacity.workload;
    let max_records = best
        .as_ref()
        .and_then(|step| step["records_per_s"].as_f64());
    let max_mb = best.as_ref().and_then(|step| step["mb_per_s"].as_f64());
    let p99_at_max = best
        .as_ref()
        .and_then(|step| step["e2e_latency_ms"]["p99"].as_f64());
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
            "capacity: not even the first step held (p99 under {} ms while keeping up); \
             lower --start-rate",
            summary["slo_p99_ms"]
        );
        return;
    };
    println!(
        "capacity: this broker sustains {records:.0} records/s ({:.2} MB/s) with p99 \
         end-to-end latency {} ms (SLO {} ms)",
        summary["max_sustainable_mb_s"].as_f64().unwrap_or(0.0),
        summary["p99_ms_at_max"],
        summary["slo_p99_ms"],
    );
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
    process: u64,
}

/// Utilisation over a step, in percent of the whole machine.
struct CpuUse {
    busy_pct: f64,
    process_pct: f64,
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
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces), from field 3 on.
        let fields: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        let process = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(CpuTimes {
            busy: total - idle,
            total,
            process,
        })
    }

    fn since(&self, before: &Option<CpuTimes>) -> Option<CpuUse> {
        let before = before.as_ref()?;
        let total = self.total.checked_sub(before.total)?.max(1) as f64;
        Some(CpuUse {
            busy_pct: (self.busy.saturating_sub(before.busy)) as f64 / total * 100.0,
            process_pct: (self.process.saturating_sub(before.process)) as f64 / total * 100.0,
        })
    }
}
