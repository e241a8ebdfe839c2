#!/usr/bin/env python3
"""Runs coremq's benchmark record on this machine and writes BENCHMARKS.md.

Usage: tools/benchmark-record.py [--out BENCHMARKS.md] [--dir WORK_DIR] [--seconds N]
                                 [--capacity-only]

In one run, on this machine:
  1. physical limits: loopback TCP bandwidth (iperf3), O_DIRECT sequential write and read
     (fio, io_uring, 1 MiB blocks) on the disk that holds WORK_DIR, how late the idle
     machine wakes a sleeping thread (cyclictest, one thread per core), and the engine
     benchmark's ratios (coremq-bench engine);
  2. a release coremq broker with its defaults (fsync `always`), started fresh for each
     measurement, driven by coremq-perf on the same machine: produce 1 KiB records with
     acks=1 and with acks=all, 100-byte records, consume, and end-to-end latency at 10%, 50%
     and 80% of the maximum rate each end-to-end workload reaches (measured first); the rows
     the targets are read from (1 KiB acks=1 produce, end-to-end at 50%) are the median of
     three runs, with their spread;
  3. `coremq-perf capacity` three times, each on a fresh broker, and how far the three
     answers lie apart (with `--capacity-only`, just this, printed instead of written);
  4. a system-wide `perf` profile of the 1 KiB acks=1 run, by process and by symbol.

Installs iperf3, fio, cyclictest and perf with apt-get when they are missing (as root). Needs
about 3 GiB free per produce second in WORK_DIR (each broker's data is removed after its run).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
PERF_TOOL = os.path.join(RELEASE, "coremq-perf")
BROKER = os.path.join(RELEASE, "coremq")
ENGINE_BENCH = os.path.join(RELEASE, "coremq-bench")
KAFKA_PORT = 19092
ADMIN_PORT = 19644
MIB = 1 << 20

# What a run of the record targets on the 2-core development machine (issue 4).
TARGET_LOOPBACK_RATIO = 0.5
TARGET_E2E_P99_MS = 5.0
# The heading of the hand-written section a new record keeps.
ANALYSIS = "## Analysis"


def say(message):
    print(f"== {message}", file=sys.stderr, flush=True)


def run(command, **kwargs):
    """Runs `command`, failing the record when it fails; returns its stdout."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def ensure_tools():
    missing = {tool: package for tool, package in
               [("iperf3", "iperf3"), ("fio", "fio"), ("cyclictest", "rt-tests"),
                ("perf", "linux-perf")]
               if shutil.which(tool) is None}
    if missing:
        say(f"installing {', '.join(missing.values())}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-q"], env=env)
        run(["apt-get", "install", "-y", "-q", *missing.values()], env=env)
    say("building release binaries")
    subprocess.run(["cargo", "build", "--release", "-p", "coremq", "--bin", "coremq",
                    "-p", "coremq-tools", "--bin", "coremq-perf", "--bin", "coremq-bench"],
                   cwd=ROOT, check=True)


def machine():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        memory_kib = int(info.readline().split()[1])
    return (f"{os.cpu_count()} cores ({cpu}), {memory_kib / (1 << 20):.0f} GiB RAM, "
            f"Linux {platform.release()}")


def loopback_mib_s(seconds):
    server = subprocess.Popen(["iperf3", "-s", "-1", "-p", "5299"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        report = json.loads(run(["iperf3", "-c", "127.0.0.1", "-p", "5299",
                                 "-t", str(seconds), "-J"]))
    finally:
        server.wait(timeout=10)
    return report["end"]["sum_received"]["bits_per_second"] / 8 / MIB


def fio_mib_s(directory, mode, seconds):
    path = os.path.join(directory, "fio.dat")
    report = json.loads(run([
        "fio", "--name=record", f"--filename={path}", "--size=2G", f"--rw={mode}",
        "--bs=1M", "--direct=1", "--ioengine=io_uring", "--iodepth=16",
        f"--runtime={seconds}", "--time_based", "--output-format=json"]))
    side = "write" if mode == "write" else "read"
    return report["jobs"][0][side]["bw_bytes"] / MIB


def wakeup_lateness(work, seconds):
    """How late an idle machine wakes sleeping threads: cyclictest, one thread per core
    waking every 200 us. Returns (the command, wake-ups, the share later than 1 ms, the
    number later than 5 ms, the latest in ms)."""
    command = ["cyclictest", "--smp", "--mlockall", "--interval", "200", "--distance", "0",
               "--duration", str(seconds), "--quiet", "--histogram", "100000"]
    path = os.path.join(work, "cyclictest.json")
    run([*command, f"--json={path}"])
    with open(path) as file:
        threads = json.load(file)["thread"].values()
    os.remove(path)
    wakeups = late_1ms = late_5ms = 0
    latest_us = 0
    for thread in threads:
        # Wake-ups past the histogram's last bucket are in `cycles` only: late ones too.
        wakeups += thread["cycles"]
        within = {limit: sum(count for lateness_us, count in thread["histogram"].items()
                             if int(lateness_us) <= limit) for limit in (1000, 5000)}
        late_1ms += thread["cycles"] - within[1000]
        late_5ms += thread["cycles"] - within[5000]
        latest_us = max(latest_us, thread["max"])
    return " ".join(command), wakeups, late_1ms / wakeups, late_5ms, latest_us / 1000


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port, process, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"the broker exited with {process.returncode} before listening on {port}")
        if listening(port):
            return
        time.sleep(0.1)
    sys.exit(f"the broker did not listen on {port} within {seconds}s")


class Broker:
    """A release broker with its defaults on a fresh data directory, removed on exit."""

    def __init__(self, work):
        # Another process on the port would be measured instead of this broker.
        for port in (KAFKA_PORT, ADMIN_PORT):
            if listening(port):
                sys.exit(f"port {port} is in use; stop what listens there first")
        self.data = os.path.join(work, "broker-data")
        shutil.rmtree(self.data, ignore_errors=True)
        self.log = open(os.path.join(work, "broker.log"), "a")
        self.process = subprocess.Popen(
            [BROKER, "--data-dir", self.data,
             "--kafka-listener", f"127.0.0.1:{KAFKA_PORT}",
             "--admin-listener", f"127.0.0.1:{ADMIN_PORT}", "--mqtt-listener", "none"],
            stdout=self.log, stderr=self.log)
        wait_for_port(KAFKA_PORT, self.process)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.data, ignore_errors=True)


def perf_tool(arguments):
    """Runs coremq-perf; returns (the command as written in the record, its JSON summary)."""
    command = [PERF_TOOL, *arguments, "--bootstrap", f"127.0.0.1:{KAFKA_PORT}", "--json"]
    summary = json.loads(run(command).strip().splitlines()[-1])
    shown = "coremq-perf " + " ".join(arguments)
    return shown, summary


def latency_cells(latency):
    return [f"{latency[key]:.2f}" for key in ("p50", "p99", "p99_9")]


def profile(work, arguments, seconds):
    """A system-wide perf profile of one produce run: by process and DSO, then by symbol."""
    data = os.path.join(work, "perf.data")
    with Broker(work):
        tool = subprocess.Popen(
            [PERF_TOOL, *arguments, "--bootstrap", f"127.0.0.1:{KAFKA_PORT}", "--json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        run(["perf", "record", "-a", "-g", "-F", "499", "-o", data, "--",
             "sleep", str(max(seconds - 5, 3))])
        tool.wait()
    reports = []
    for sort in ("comm,dso", "comm,sym"):
        text = run(["perf", "report", "-i", data, "--no-children", "--sort", sort,
                    "--stdio", "-g", "none", "--percent-limit", "1.5"])
        lines = [line.rstrip() for line in text.splitlines()
                 if line.strip() and not line.startswith("#")]
        reports.append("\n".join(lines[:25]))
    os.remove(data)
    return reports


# The capacity runs: a quote feed of 1 KiB records, one producer and one consumer, sized for
# a million records/s with 30% headroom.
CAPACITY = ["capacity", "--partitions", "2", "--producers", "1", "--consumers", "1",
            "--batch-size", "1048576", "--linger-ms", "1", "--record-size", "1024",
            "--acks", "1", "--slo-p99-ms", "10", "--start-rate", "20000", "--step-factor", "2",
            "--step-duration", "3s", "--windows", "3", "--refine", "3",
            "--target-rate", "1000000", "--target-record-bytes", "1024"]


def capacity_section(work):
    """Runs `capacity` three times, each on a fresh broker; returns the section's lines."""
    answers = []
    for attempt in range(3):
        say(f"capacity, run {attempt + 1} of 3")
        with Broker(work):
            answers.append(perf_tool([*CAPACITY, "--topic", f"sizing-{attempt}"]))
    out = ["## Capacity, three times\n"]
    out.append("`" + answers[0][0] + "` (each step: 3 windows of 3 s, judged on their "
               "medians; then 3 steps of bisection between the last rate that held and "
               "the first that failed), on a fresh broker each time.\n")
    out.append("| run | sustains records/s | p99 ms at it: median (lowest to highest window) "
               "| first failed at records/s | why it failed | brokers for 1 M/s |")
    out.append("|---|---|---|---|---|---|")
    sustained = []
    for number, (_, summary) in enumerate(answers, 1):
        held = summary["max_sustainable_records_per_s"]
        spread = summary["p99_ms_spread_at_max"]
        failed = summary["first_failed_records_per_s"]
        limit = summary["limit"] or {}
        if held:
            sustained.append(held)
        cells = [
            str(number),
            f"{held:,.0f}" if held else "none held",
            (f"{spread['median']:.2f} ({spread['min']:.2f} to {spread['max']:.2f})"
             if spread else ""),
            f"{failed:,.0f}" if failed else "none failed",
            f"{limit.get('verdict', '')}: {limit.get('reason', '')}" if limit else "",
            str(summary["brokers_needed"]),
        ]
        out.append("| " + " | ".join(cells) + " |")
    if len(sustained) == 3:
        out.append(f"\nThe three answers lie within a factor {max(sustained) / min(sustained):.2f} "
                   f"of each other ({min(sustained):,.0f} to {max(sustained):,.0f} "
                   "records/s).\n")
    else:
        out.append(f"\nOnly {len(sustained)} of the three runs found a rate that held.\n")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    parser.add_argument("--dir", default=os.path.join(ROOT, "target", "benchmark-record"))
    parser.add_argument("--seconds", type=int, default=10,
                        help="measured seconds per coremq-perf run (after a 2 s warm-up)")
    parser.add_argument("--capacity-only", action="store_true",
                        help="run only the three capacity runs and print their section")
    options = parser.parse_args()
    work = os.path.abspath(options.dir)
    os.makedirs(work, exist_ok=True)
    if options.capacity_only:
        print("\n".join(capacity_section(work)))
        return
    ensure_tools()
    seconds = options.seconds
    timing = ["--duration", f"{seconds}s", "--warmup", "2s"]

    say("loopback bandwidth (iperf3)")
    loopback = loopback_mib_s(5)
    say("O_DIRECT disk write and read (fio)")
    disk_write = fio_mib_s(work, "write", 8)
    disk_read = fio_mib_s(work, "read", 8)
    os.remove(os.path.join(work, "fio.dat"))
    say("wake-up lateness of the idle machine (cyclictest)")
    wakeup = wakeup_lateness(work, 20)
    say("engine benchmark (coremq-bench engine)")
    engine_dir = os.path.join(work, "engine")
    engine = json.loads(run([ENGINE_BENCH, "engine", "--json", "--gib", "1",
                             "--dir", engine_dir]).strip().splitlines()[-1])
    shutil.rmtree(engine_dir, ignore_errors=True)

    # The producer settings of the throughput rows: two producers (one per core), 1 MiB
    # batches, linger 5 ms, 5 requests in flight per connection.
    def throughput(batch_size=1048576, linger_ms=5, producers=2):
        return ["--partitions", "6", "--producers", str(producers), "--batch-size",
                str(batch_size), "--linger-ms", str(linger_ms)]

    rows = []

    def median_of(runs, command_line, key):
        """Runs `command_line` `runs` times on a fresh broker each; returns the command and
        the median summary by `key`, with the spread of `key` when there was more than one."""
        results = []
        for _ in range(runs):
            with Broker(work):
                results.append(perf_tool(command_line))
        results.sort(key=lambda result: key(result[1]))
        command, summary = results[len(results) // 2]
        values = [key(result[1]) for result in results]
        spread = f" (median of {runs}: {values[0]:.1f} to {values[-1]:.1f})" if runs > 1 else ""
        return command, summary, spread

    def produce_row(name, topic, extra, runs=1):
        command, summary, spread = median_of(
            runs, ["produce", "--topic", topic, *extra, *timing],
            lambda summary: summary["produced"]["mb_per_s"])
        produced = summary["produced"]
        rows.append([name + spread, f"{produced['records_per_s']:,.0f}",
                     f"{produced['mb_per_s']:.0f}", "ack",
                     *latency_cells(summary["ack_latency_ms"]), f"`{command}`"])
        return summary

    say("produce 1 KiB, acks=1 (3 runs)")
    produce_row("produce 1 KiB, acks=1", "kib-acks1",
                [*throughput(), "--record-size", "1024", "--acks", "1"], runs=3)
    # Each producer has at most 5 requests of one 1 MiB batch in flight, which leaves the
    # cores partly idle with two; four (two per client shard) keep the broker busy, and
    # are what the target is read from.
    say("produce 1 KiB, acks=1, 4 producers (3 runs)")
    kib_acks1 = produce_row("produce 1 KiB, acks=1, 4 producers", "kib-acks1-4",
                            [*throughput(producers=4), "--record-size", "1024", "--acks", "1"],
                            runs=3)
    say("produce 1 KiB, acks=1, 16 KiB batches")
    produce_row("produce 1 KiB, acks=1, 16 KiB batches (Java client default)", "kib-small",
                [*throughput(batch_size=16384), "--record-size", "1024", "--acks", "1"])
    say("produce 1 KiB, acks=all, fsync always")
    produce_row("produce 1 KiB, acks=all, fsync `always` (group commit)", "kib-all",
                [*throughput(), "--record-size", "1024", "--acks", "all"])
    say("produce 100 B, acks=1")
    produce_row("produce 100 B quotes, acks=1", "quotes",
                [*throughput(), "--record-size", "100", "--acks", "1"])

    say("consume 1 KiB records")
    with Broker(work):
        _, filled = perf_tool(["produce", "--topic", "readback", *throughput(),
                               "--record-size", "1024", "--acks", "1", *timing])
        records = filled["produced"]["records"]
        command, summary = perf_tool(["consume", "--topic", "readback",
                                      "--records", str(records), "--warmup", "0s"])
    consumed = summary["consumed"]
    rows.append(["consume 1 KiB (what the row above it wrote)",
                 f"{consumed['records_per_s']:,.0f}", f"{consumed['mb_per_s']:.0f}",
                 "", "", "", "", f"`{command}`"])

    # End to end: producers and consumers together. The maximum is what a workload
    # delivers unlimited; the latency rows offer 10%, 50% and 80% of it (10%: the floor
    # the tail has when the cores are mostly idle). The target rows use one
    # producer and one consumer (a quote feed and its reader) on a partition per shard; the
    # rows after them use one producer and one consumer per core, which adds two more busy
    # threads on the broker's two cores.
    def e2e_rows(label, settings, runs):
        def e2e_row(name, topic, extra, runs=1):
            command, summary, spread = median_of(
                runs, ["e2e", "--topic", topic, *settings, *extra, *timing],
                lambda summary: summary["e2e_latency_ms"]["p99"])
            produced = summary["produced"]
            rows.append([name + spread, f"{produced['records_per_s']:,.0f}",
                         f"{produced['mb_per_s']:.0f}", "e2e",
                         *latency_cells(summary["e2e_latency_ms"]), f"`{command}`"])
            return summary

        say(f"end-to-end maximum, {label}")
        e2e_max = e2e_row(f"end to end 1 KiB, {label}, unlimited (the maximum)",
                          "e2e-max", [])
        max_rate = e2e_max["consumed"]["records_per_s"]
        latencies = {}
        for share in (0.1, 0.5, 0.8):
            rate = int(max_rate * share)
            say(f"end-to-end at {share:.0%} of the maximum ({rate} records/s), {label}")
            summary = e2e_row(f"end to end 1 KiB, {label}, at {share:.0%} of the maximum",
                              f"e2e-{int(share * 100)}", ["--rate", str(rate)],
                              runs=runs if share == 0.5 else 1)
            latencies[share] = summary["e2e_latency_ms"]
        return latencies

    e2e = e2e_rows("1 producer, 1 consumer",
                   ["--partitions", "2", "--producers", "1", "--consumers", "1",
                    "--batch-size", "1048576", "--linger-ms", "1", "--record-size", "1024",
                    "--acks", "1"], runs=3)
    e2e_rows("2 producers, 2 consumers",
             [*throughput(linger_ms=1), "--consumers", "2", "--record-size", "1024",
              "--acks", "1"], runs=1)

    capacity = capacity_section(work)

    say("profile of the 1 KiB acks=1 run")
    by_process, by_symbol = profile(work, ["produce", "--topic", "profiled", *throughput(),
                                           "--record-size", "1024", "--acks", "1",
                                           *timing], seconds + 2)

    ratio = kib_acks1["produced"]["mb_per_s"] / loopback
    e2e_p99 = e2e[0.5]["p99"]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = []
    out.append("# Benchmark record\n")
    out.append(f"Written by `tools/benchmark-record.py` on {when}. Machine: {machine()}. "
               "Broker and load tool on the same machine; a release `coremq` with its "
               "defaults (one shard per core, fsync `always`), started on an empty data "
               "directory for each row. MiB = 2^20 bytes; latencies in ms.\n")
    out.append("## Physical limits (same run)\n")
    out.append("| measure | result |\n|---|---|")
    out.append(f"| loopback TCP, `iperf3 -c 127.0.0.1 -t 5` | {loopback:.0f} MiB/s |")
    out.append(f"| O_DIRECT sequential write, `fio --rw=write --bs=1M --direct=1 "
               f"--ioengine=io_uring --iodepth=16` | {disk_write:.0f} MiB/s |")
    out.append(f"| O_DIRECT sequential read, same with `--rw=read` | {disk_read:.0f} MiB/s |")
    command, wakeups, late_1ms, late_5ms, latest_ms = wakeup
    out.append(f"| wake-up lateness of the idle machine, `{command}` | {wakeups:,} wake-ups: "
               f"{late_1ms:.3%} later than 1 ms, {late_5ms} later than 5 ms, the latest "
               f"{latest_ms:.1f} ms |")
    out.append(f"| engine write / raw write, `coremq-bench engine --gib 1` | "
               f"{engine['write_ratio']:.2f} ({engine['write_mb_s']:.0f} / "
               f"{engine['raw_write_mb_s']:.0f} MB/s) |")
    out.append(f"| engine read / raw read | {engine['read_ratio']:.2f} "
               f"({engine['read_mb_s']:.0f} / {engine['raw_read_mb_s']:.0f} MB/s) |")
    out.append(f"| engine append p99 (`always`) / raw write + fdatasync p99 | "
               f"{engine['append_always_p99_over_raw']:.2f} "
               f"({engine['append_always_p99_us']} / {engine['raw_fdatasync_p99_us']} us) |")
    out.append(f"| engine, 100 B records in batches of 100 | "
               f"{engine['small_records_per_s']:,.0f} records/s |\n")
    out.append("## coremq, single node\n")
    out.append("| run | records/s | MiB/s | latency | p50 | p99 | p99.9 | command |")
    out.append("|---|---|---|---|---|---|---|---|")
    out.extend("| " + " | ".join(row) + " |" for row in rows)
    out.append("")
    out.append("Every command also takes `--bootstrap 127.0.0.1:19092 --json`. `ack` is the "
               "produce acknowledgement latency (from `send` to the answer), `e2e` the time "
               "from the send timestamp carried in each record to its consumption.\n")
    out.append("## Against the targets\n")
    out.append("| target | measured | met |\n|---|---|---|")
    out.append(f"| produce 1 KiB acks=1 (4 producers) / loopback >= {TARGET_LOOPBACK_RATIO} | "
               f"{kib_acks1['produced']['mb_per_s']:.0f} / {loopback:.0f} = {ratio:.2f} | "
               f"{'yes' if ratio >= TARGET_LOOPBACK_RATIO else 'no'} |")
    out.append(f"| end-to-end p99 at 50% of the maximum (1 producer, 1 consumer) "
               f"<= {TARGET_E2E_P99_MS:g} ms | "
               f"{e2e_p99:.2f} ms | {'yes' if e2e_p99 <= TARGET_E2E_P99_MS else 'no'} |\n")
    out.extend(capacity)
    out.append("## Where the time goes (1 KiB acks=1 produce, `perf record -a -g`)\n")
    out.append("By process and binary (samples over the whole machine):\n")
    out.append("```\n" + by_process + "\n```\n")
    out.append("By symbol:\n")
    out.append("```\n" + by_symbol + "\n```\n")
    # The hand-written analysis of the figures is kept from the previous record.
    analysis = ""
    if os.path.exists(options.out):
        with open(options.out) as file:
            previous = file.read()
        if ANALYSIS in previous:
            analysis = previous[previous.index(ANALYSIS):]
    with open(options.out, "w") as file:
        file.write("\n".join(out) + ("\n" + analysis if analysis else ""))
    say(f"wrote {options.out}")


if __name__ == "__main__":
    main()
