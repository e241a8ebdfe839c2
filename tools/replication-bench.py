#!/usr/bin/env python3
"""The cost of replication: acks=all produce to a topic with one replica and to one with
three (min.insync.replicas=2) on the same three-broker cluster, in one run.

Starts three brokers of the release binary (`benchcluster.py`), creates `rf1` and `rf3`
(six partitions each), and runs `coremq-perf produce --acks all` against each for SECONDS,
ROUNDS times, the two topics alternating (rf1, rf3, then rf3, rf1, ...), once at full
speed and once at a fixed RATE. For each run: throughput, acknowledgement latency
percentiles (coremq-perf's hdrhistogram), and the CPU seconds the three broker processes
used per GiB produced (from /proc, over the run). Prints every run and a Markdown table of
the medians over the rounds.

    tools/replication-bench.py [--rounds 3] [--seconds 10] [--rate 20MB/s]
        [--binary target/release/coremq] [--perf target/release/coremq-perf]

Needs confluent-kafka (tools/test-all.sh puts it in target/e2e-venv) to create the topics.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile

from confluent_kafka.admin import AdminClient, NewTopic

from benchcluster import Cluster, wait_for

PARTITIONS = 6
RECORD_BYTES = 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", default="20MB/s", help="the fixed-rate workload's load")
    parser.add_argument("--binary", default="target/release/coremq")
    parser.add_argument("--perf", default="target/release/coremq-perf")
    parser.add_argument("--broker-args", default="", help="more flags for every broker")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="coremq-replication-")
    cluster = Cluster(os.path.abspath(args.binary), root, args.broker_args.split())
    finished = False
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap()})

        def created(name, replicas):
            def attempt():
                try:
                    config = {"min.insync.replicas": "2" if replicas > 1 else "1"}
                    admin.create_topics(
                        [NewTopic(name, PARTITIONS, replicas, config=config)]
                    )[name].result(timeout=10)
                    return True
                except Exception as error:  # the cluster may still be starting
                    return "already exists" in str(error)

            return attempt

        wait_for("topic rf1", created("rf1", 1))
        wait_for("topic rf3", created("rf3", 3))

        def in_sync():
            listed = admin.list_topics("rf3", timeout=5).topics["rf3"].partitions
            return len(listed) == PARTITIONS and all(len(p.isrs) == 3 for p in listed.values())

        wait_for("three in-sync replicas", in_sync)

        def run(topic, rate, seconds):
            before = cluster.cpu_seconds()
            output = subprocess.run(
                [
                    os.path.abspath(args.perf), "produce",
                    "--bootstrap", cluster.bootstrap(),
                    "--topic", topic,
                    "--partitions", str(PARTITIONS),
                    "--acks", "all",
                    "--record-size", str(RECORD_BYTES),
                    "--batch-size", "1048576",
                    "--linger-ms", "5",
                    "--rate", rate,
                    "--duration", f"{seconds}s",
                    "--threads", "1",
                    "--json",
                ],
                capture_output=True,
                text=True,
            )
            if output.returncode != 0:
                raise SystemExit(f"coremq-perf failed on {topic}: {output.stderr[-2000:]}")
            output = output.stdout
            cpu = cluster.cpu_seconds() - before
            summary = json.loads(output.strip().splitlines()[-1])
            # Errors by kind (retried produce errors included): a run with any is no measure.
            assert not summary["errors"], f"{topic}: {summary['errors']}"
            produced = summary["produced"]
            return {
                "mb_per_s": produced["mb_per_s"],
                "ack": summary["ack_latency_ms"],
                "cpu_per_gib": cpu / (produced["bytes"] / 2**30),
            }

        # Connections, caches and the first segments, left out.
        for topic in ("rf1", "rf3"):
            run(topic, "unlimited", 3)

        results = {}
        for round_ in range(args.rounds):
            order = ("rf1", "rf3") if round_ % 2 == 0 else ("rf3", "rf1")
            for workload, rate in (("full speed", "unlimited"), (f"at {args.rate}", args.rate)):
                for topic in order:
                    result = run(topic, rate, args.seconds)
                    results.setdefault((workload, topic), []).append(result)
                    ack = result["ack"]
                    print(
                        f"round {round_ + 1}, {workload}, {topic}: {result['mb_per_s']:.1f} MB/s, "
                        f"ack p50 {ack['p50']:.2f} ms p99 {ack['p99']:.2f} ms "
                        f"p99.9 {ack['p99_9']:.2f} ms, broker CPU {result['cpu_per_gib']:.1f} s/GiB",
                        flush=True,
                    )

        print()
        print(f"| acks=all, {RECORD_BYTES} B records, medians of {args.rounds} | replicas | MB/s "
              "| ack p50 | ack p99 | ack p99.9 | broker CPU-s per GiB |")
        print("|---|---|---|---|---|---|---|")
        for (workload, topic), runs in results.items():
            median = lambda pick: statistics.median(pick(run) for run in runs)  # noqa: E731
            print(
                f"| {workload} | {topic[2:]} | {median(lambda r: r['mb_per_s']):.1f} "
                f"| {median(lambda r: r['ack']['p50']):.2f} ms "
                f"| {median(lambda r: r['ack']['p99']):.2f} ms "
                f"| {median(lambda r: r['ack']['p99_9']):.2f} ms "
                f"| {median(lambda r: r['cpu_per_gib']):.1f} |"
            )
        finished = True
    finally:
        cluster.close(failed=not finished)


if __name__ == "__main__":
    main()
