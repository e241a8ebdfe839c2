#!/usr/bin/env python3
"""coremq against mosquitto over MQTT, in one run on one machine.

Starts Debian's `mosquitto` (in memory, as it ships: QoS 1 messages are not written to disk)
and a release `coremq` with its defaults (one shard per core, fsync before a QoS 1 PUBACK),
both listening on loopback, and measures them with the same client, `coremq-perf mqtt`,
alternating between them at every step so both see the same machine:

- fan-in: 1,000 publishers, each on a topic of its own with one subscriber, QoS 0 and QoS 1,
  100-byte payloads;
- fan-out: 1 publisher to 1,000 subscribers of one filter, QoS 0 and QoS 1;
- end-to-end latency at 50% of mosquitto's highest fan-in QoS 0 rate, ROUNDS rounds;
- memory per idle connection with CONNECTIONS clients connected (`coremq-perf mqtt-idle`,
  from the resident memory of a freshly restarted broker before and after; as many as the
  open-file limit allows, which only a process with CAP_SYS_RESOURCE can raise past the
  hard limit).

A broker's highest rate is the most messages per second its subscribers received in a step
of rising offered load that it kept up with: the subscribers received at least 98% of what
was offered, and the end-to-end p99 stayed under --slo-p99-ms. Steps stop for a broker
after two it did not keep up with. Prints every run, then Markdown tables.

    tools/mqtt-bench.py [--seconds 6] [--rounds 3] [--connections 100000]
        [--binary target/release/coremq] [--perf target/release/coremq-perf]
        [--only fan-in-0,fan-in-1,fan-out-0,fan-out-1,latency,memory] [--json FILE]

Runs as root (it raises the open-file limit of both brokers and of the load tool); needs the
`mosquitto` package.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

FILES = 300_000
KEEPS_UP = 0.98


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def raise_files():
    """Raises the open-file limit to FILES, or as far as the hard limit allows (a process
    without CAP_SYS_RESOURCE cannot raise that)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def file_limit():
    """The open-file limit the brokers and the load tool get."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(hard, FILES) if os.geteuid() == 0 and can_raise() else hard


def can_raise():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, max(hard, FILES)))
        return True
    except (ValueError, OSError):
        return False


def wait_listening(port, process, name, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{name} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{name} did not listen on {port} within {timeout} s")


class Brokers:
    """mosquitto and coremq, each on a port of its own."""

    def __init__(self, binary, root):
        self.root = root
        self.processes = {}
        self.ports = {}
        self.commands = {}
        mosquitto_port = free_port()
        config = os.path.join(root, "mosquitto.conf")
        with open(config, "w") as file:
            file.write(
                f"listener {mosquitto_port} 127.0.0.1\n"
                "allow_anonymous true\n"
                "persistence false\n"
                "max_connections -1\n"
                "log_dest none\n"
            )
        self.start("mosquitto", ["mosquitto", "-c", config], mosquitto_port)
        coremq_port = free_port()
        self.start(
            "coremq",
            [
                binary,
                "--data-dir",
                os.path.join(root, "coremq"),
                "--kafka-listener",
                f"127.0.0.1:{free_port()}",
                "--admin-listener",
                f"127.0.0.1:{free_port()}",
                "--mqtt-listener",
                f"127.0.0.1:{coremq_port}",
                "--mqtt-ws-listener",
                "none",
            ],
            coremq_port,
        )

    def start(self, name, command, port):
        self.commands[name] = command
        log = open(os.path.join(self.root, f"{name}.log"), "a")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=raise_files
        )
        self.processes[name] = process
        self.ports[name] = port
        wait_listening(port, process, name)

    def restart(self, name):
        """A fresh process (coremq on its data directory), so memory measured after starts
        from a broker that has not grown with earlier workloads."""
        process = self.processes[name]
        process.terminate()
        process.wait(timeout=30)
        self.start(name, self.commands[name], self.ports[name])
        time.sleep(2)

    def names(self, step):
        """Both brokers, the first one alternating with the step."""
        names = ["mosquitto", "coremq"]
        return names if step % 2 == 0 else names[::-1]

    def stop(self):
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def perf(args, arguments):
    """Runs coremq-perf with `arguments` and --json; its summary."""
    command = [args.perf] + arguments + ["--json"]
    run = subprocess.run(
        command, capture_output=True, text=True, preexec_fn=raise_files, timeout=600
    )
    lines = run.stdout.strip().splitlines()
    try:
        summary = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        sys.exit(f"{' '.join(command)} failed:\n{run.stdout}\n{run.stderr}")
    summary["command"] = " ".join(["coremq-perf"] + arguments)
    return summary


def mqtt_run(args, brokers, name, shape, rate):
    arguments = [
        "mqtt",
        "--broker",
        f"127.0.0.1:{brokers.ports[name]}",
        "--payload",
        "100",
        "--duration",
        f"{args.seconds}s",
        "--warmup",
        "2s",
        "--rate",
        str(rate),
    ] + shape["flags"]
    summary = perf(args, arguments)
    received = (summary.get("consumed") or {}).get("records_per_s", 0.0)
    e2e = summary.get("e2e_latency_ms") or {}
    expected = rate * shape["fanout"]
    summary["kept_up"] = (
        summary.get("failure") is None
        and received >= KEEPS_UP * expected
        and e2e.get("p99", float("inf")) <= args.slo_p99_ms
    )
    print(
        f"  {shape['name']:<10} {name:<9} offered {rate:>8}/s  received {received:>10.0f}/s "
        f"(expected {expected:>9.0f})  e2e p50 {e2e.get('p50')} p99 {e2e.get('p99')} "
        f"p99.9 {e2e.get('p99_9')}  {'kept up' if summary['kept_up'] else 'fell behind'}"
        f"{'  failure: ' + summary['failure'] if summary.get('failure') else ''}",
        flush=True,
    )
    return summary


SHAPES = {
    "fan-in-0": {
        "name": "fan-in q0",
        "flags": ["--publishers", "1000", "--subscribers", "1000", "--topics", "1000"],
        "fanout": 1,
        "qos": 0,
        "start": 10_000,
    },
    "fan-in-1": {
        "name": "fan-in q1",
        "flags": ["--publishers", "1000", "--subscribers", "1000", "--topics", "1000"],
        "fanout": 1,
        "qos": 1,
        "start": 5_000,
    },
    "fan-out-0": {
        "name": "fan-out q0",
        "flags": ["--publishers", "1", "--subscribers", "1000", "--topics", "1"],
        "fanout": 1000,
        "qos": 0,
        "start": 20,
    },
    "fan-out-1": {
        "name": "fan-out q1",
        "flags": ["--publishers", "1", "--subscribers", "1000", "--topics", "1"],
        "fanout": 1000,
        "qos": 1,
        "start": 10,
    },
}


def highest_rate(args, brokers, key):
    """Rising steps for both brokers; each broker's best step it kept up with."""
    shape = dict(SHAPES[key])
    shape["flags"] = shape["flags"] + ["--qos", str(shape["qos"])]
    best = {"mosquitto": None, "coremq": None}
    misses = {"mosquitto": 0, "coremq": 0}
    runs = []
    rate = shape["start"]
    step = 0
    while any(count < 2 for count in misses.values()) and step < args.max_steps:
        for name in brokers.names(step):
            if misses[name] >= 2:
                continue
            summary = mqtt_run(args, brokers, name, shape, int(rate))
            summary["broker"] = name
            runs.append(summary)
            if summary["kept_up"]:
                misses[name] = 0
                received = summary["consumed"]["records_per_s"]
                if best[name] is None or received > best[name]["consumed"]["records_per_s"]:
                    best[name] = summary
            else:
                misses[name] += 1
        rate *= 1.5
        step += 1
    return {"shape": shape, "best": best, "runs": runs}


def latency(args, brokers, rate):
    shape = dict(SHAPES["fan-in-0"])
    shape["flags"] = shape["flags"] + ["--qos", "0"]
    results = {"mosquitto": [], "coremq": []}
    for round_ in range(args.rounds):
        for name in brokers.names(round_):
            summary = mqtt_run(args, brokers, name, shape, rate)
            summary["broker"] = name
            results[name].append(summary)
    return results


def memory(args, brokers):
    results = {}
    limit = file_limit()
    if args.connections > limit - 200:
        args.connections = limit - 200
        print(
            f"  the open-file limit here is {limit} and cannot be raised: "
            f"{args.connections} clients instead",
            flush=True,
        )
    for name in ["mosquitto", "coremq"]:
        brokers.restart(name)
        summary = perf(
            args,
            [
                "mqtt-idle",
                "--broker",
                f"127.0.0.1:{brokers.ports[name]}",
                "--connections",
                str(args.connections),
                "--hold",
                "5s",
                "--broker-pid",
                str(brokers.processes[name].pid),
            ],
        )
        per = summary.get("broker_bytes_per_connection")
        print(
            f"  idle      {name:<9} {summary['still_open']} of {args.connections} open, "
            f"{per if per is None else round(per)} bytes per connection",
            flush=True,
        )
        results[name] = summary
    return results


def machine():
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        total = int(meminfo.readline().split()[1]) / 1024 / 1024
    version = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    version = version.splitlines()[0] if version else "mosquitto"
    return (
        f"{os.cpu_count()} cores ({model}), {total:.0f} GiB RAM, Linux {platform.release()}; "
        f"{version}; brokers and load tool on the same machine"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--slo-p99-ms", type=float, default=500.0)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--binary", default="target/release/coremq")
    parser.add_argument("--perf", default="target/release/coremq-perf")
    parser.add_argument("--only", default="fan-in-0,fan-in-1,fan-out-0,fan-out-1,latency,memory")
    parser.add_argument("--json", help="write every summary here")
    args = parser.parse_args()
    args.perf = os.path.abspath(args.perf)
    if shutil.which("mosquitto") is None:
        sys.exit("mosquitto is not installed (apt-get install mosquitto)")
    only = args.only.split(",")
    root = tempfile.mkdtemp(prefix="coremq-mqtt-bench-")
    brokers = Brokers(os.path.abspath(args.binary), root)
    results = {"machine": machine()}
    try:
        for key in SHAPES:
            if key in only:
                print(f"{SHAPES[key]['name']}:", flush=True)
                results[key] = highest_rate(args, brokers, key)
        if "latency" in only:
            best = (results.get("fan-in-0") or {}).get("best", {}).get("mosquitto")
            rate = int(best["config"]["offered_messages_per_s"] / 2) if best else 20_000
            print(f"latency at {rate} messages/s:", flush=True)
            results["latency"] = {"rate": rate, "runs": latency(args, brokers, rate)}
        if "memory" in only:
            print(f"memory with {args.connections} idle clients:", flush=True)
            results["memory"] = memory(args, brokers)
    finally:
        brokers.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    report(results)


def report(results):
    print(f"\nMachine: {results['machine']}.\n")
    print("| workload | mosquitto msgs/s | coremq msgs/s | coremq / mosquitto |")
    print("|---|---|---|---|")
    for key in SHAPES:
        if key not in results:
            continue
        best = results[key]["best"]
        rates = {
            name: (summary["consumed"]["records_per_s"] if summary else 0.0)
            for name, summary in best.items()
        }
        ratio = rates["coremq"] / rates["mosquitto"] if rates["mosquitto"] else float("nan")
        print(
            f"| {SHAPES[key]['name']} | {rates['mosquitto']:,.0f} | {rates['coremq']:,.0f} "
            f"| {ratio:.2f} |"
        )
    if "latency" in results:
        rate = results["latency"]["rate"]
        print(f"\nEnd-to-end latency (ms) at {rate:,} messages/s, fan-in QoS 0, medians of rounds:\n")
        print("| broker | p50 | p99 | p99.9 | rounds |")
        print("|---|---|---|---|---|")
        for name, runs in results["latency"]["runs"].items():
            values = [run.get("e2e_latency_ms") or {} for run in runs]

            def median(key):
                present = [value[key] for value in values if key in value]
                return statistics.median(present) if present else float("nan")

            print(
                f"| {name} | {median('p50'):.2f} | {median('p99'):.2f} | "
                f"{median('p99_9'):.2f} | {len(runs)} |"
            )
    if "memory" in results:
        print("\n| broker | idle clients open | resident memory before | after | per connection |")
        print("|---|---|---|---|---|")
        for name, summary in results["memory"].items():
            before = summary.get("broker_rss_before_bytes") or 0
            after = summary.get("broker_rss_after_bytes") or 0
            per = summary.get("broker_bytes_per_connection") or 0
            print(
                f"| {name} | {summary['still_open']:,} | {before / 2**20:.1f} MiB "
                f"| {after / 2**20:.1f} MiB | {per / 1024:.2f} KiB |"
            )


if __name__ == "__main__":
    main()
