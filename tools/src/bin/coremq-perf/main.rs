//! `coremq-perf`: a load generator and capacity planner for any Kafka-compatible cluster,
//! on coremq's own client (`coremq_net::client`), one client shard per core.
//!
//! `produce`, `consume` and `e2e` print a progress line a second (a progress bar on a
//! terminal) and then throughput, latency percentiles and errors by kind; `--json` adds
//! the same as one JSON object on the last line. `capacity` runs `e2e` steps of rising
//! load and sizes a cluster for a target workload. `mqtt` runs MQTT publishers and
//! subscribers against any MQTT broker; `mqtt-idle` holds idle MQTT clients and reports the
//! broker's memory per connection. See `coremq-perf --help`.

mod args;
mod capacity;
mod idle;
mod mqtt;
mod run;
mod stats;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use run::Mode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (result, json) = match cli.command {
        Command::Produce(workload) => {
            let json = workload.json;
            (run::measure(workload, Mode::Produce), json)
        }
        Command::Consume(workload) => {
            let json = workload.json;
            (run::measure(workload, Mode::Consume), json)
        }
        Command::E2e(workload) => {
            let json = workload.json;
            (run::measure(workload, Mode::E2e), json)
        }
        Command::Capacity(capacity) => {
            let json = capacity.workload.json;
            (capacity::run(capacity), json)
        }
        Command::Mqtt(workload) => {
            let json = workload.json;
            (mqtt::measure(workload), json)
        }
        Command::MqttIdle(idle) => {
            let json = idle.json;
            (idle::run(idle), json)
        }
    };
    match result {
        Ok(summary) => {
            if json {
                println!("{summary}");
            }
            match run::failed(&summary).or_else(|| idle::failed(&summary)) {
                None => ExitCode::SUCCESS,
                Some(failure) => {
                    eprintln!("coremq-perf: {failure}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!("coremq-perf: {error}");
            ExitCode::FAILURE
        }
    }
}
