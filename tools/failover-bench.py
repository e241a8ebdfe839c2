#!/usr/bin/env python3
"""Failover time of a three-broker coremq cluster, with default settings.

Starts three brokers of the release binary (loopback ports, data under a temporary folder,
one shard each), creates a topic with one partition, three replicas and
min.insync.replicas=2, and runs an idempotent acks=all confluent-kafka producer that sends
a record every millisecond. Then, KILLS times: SIGKILLs the partition's leader and measures
the time from the kill to the first acknowledgement of a record the dead leader could not
have acknowledged (its offset past every offset acknowledged before the kill); restarts the
broker and waits until the three replicas are in sync again before the next kill. Prints
each time and the median, p99 and max.

    tools/failover-bench.py [--kills 50] [--binary target/release/coremq]

Needs confluent-kafka (tools/test-all.sh puts it in target/e2e-venv).
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    def __init__(self, binary, root):
        self.binary, self.root = binary, root
        self.kafka = [free_port() for _ in range(3)]
        self.admin = [free_port() for _ in range(3)]
        self.voters = ",".join(f"{i}@127.0.0.1:{free_port()}" for i in range(3))
        self.processes = [None] * 3
        for broker in range(3):
            self.start(broker)

    def start(self, broker):
        log = open(os.path.join(self.root, f"broker{broker}.log"), "a")
        self.processes[broker] = subprocess.Popen(
            [
                self.binary,
                "--node-id", str(broker),
                "--controller-voters", self.voters,
                "--kafka-listener", f"127.0.0.1:{self.kafka[broker]}",
                "--admin-listener", f"127.0.0.1:{self.admin[broker]}",
                "--data-dir", os.path.join(self.root, f"data{broker}"),
                "--shards", "1",
                "--no-pin",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def kill(self, broker):
        self.processes[broker].send_signal(signal.SIGKILL)
        self.processes[broker].wait()

    def stop(self):
        for process in self.processes:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def bootstrap(self):
        return ",".join(f"127.0.0.1:{port}" for port in self.kafka)


def wait_for(what, condition, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--binary", default="target/release/coremq")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="coremq-failover-")
    cluster = Cluster(os.path.abspath(args.binary), root)
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap()})

        def created():
            try:
                admin.create_topics(
                    [NewTopic("failover", 1, 3, config={"min.insync.replicas": "2"})]
                )["failover"].result(timeout=10)
                return True
            except Exception as error:  # the cluster may still be starting
                return "already exists" in str(error)

        wait_for("the topic", created)

        def partition():
            listed = admin.list_topics("failover", timeout=5).topics["failover"].partitions
            return listed.get(0)

        acks = []  # (monotonic time, offset) of every acknowledgement
        lock = threading.Lock()
        running = True

        def delivered(err, msg):
            if err is None:
                with lock:
                    acks.append((time.monotonic(), msg.offset()))

        def produce():
            producer = Producer(
                {
                    "bootstrap.servers": cluster.bootstrap(),
                    "acks": "all",
                    "enable.idempotence": True,
                    "linger.ms": 0,
                    "delivery.timeout.ms": 300000,
                    "topic.metadata.refresh.interval.ms": 1000,
                }
            )
            while running:
                producer.produce("failover", value=b"x", on_delivery=delivered)
                producer.poll(0.001)
            producer.flush(60)

        thread = threading.Thread(target=produce)
        thread.start()
        times = []
        for kill in range(args.kills):
            wait_for(
                "three in-sync replicas",
                lambda: (p := partition()) is not None and p.leader >= 0 and len(p.isrs) == 3,
            )
            time.sleep(0.5)
            leader = partition().leader
            with lock:
                last = max((offset for _, offset in acks), default=-1)
            killed_at = time.monotonic()
            cluster.kill(leader)

            def first_new_ack():
                with lock:
                    return next(
                        (at for at, offset in acks if at > killed_at and offset > last), None
                    )

            acked_at = wait_for("an acknowledgement from the new leader", first_new_ack, 120)
            elapsed = acked_at - killed_at
            times.append(elapsed)
            print(f"kill {kill + 1}: leader {leader}, failover {elapsed * 1000:.0f} ms", flush=True)
            cluster.start(leader)
        running = False
        thread.join()
        print(
            f"{len(times)} kills: median {statistics.median(times) * 1000:.0f} ms, "
            f"p99 {percentile(times, 0.99) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
        )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
