#!/usr/bin/env python3
"""Failover time of a three-broker coremq cluster, with default settings.

Starts three brokers of the release binary (loopback ports, data under a temporary folder,
one shard each), creates a topic with one partition, three replicas and
min.insync.replicas=2, and runs an idempotent acks=all confluent-kafka producer that sends
a record every millisecond. Then, KILLS times: SIGKILLs the partition's leader and measures
the time from the kill to the first acknowledgement of a record sent after the kill (which
the dead leader cannot have acknowledged; records sent before it and retried are
acknowledged before it or with it, so this is at most a batch late); restarts the
broker and waits until the three replicas are in sync again before the next kill. Also
times when a surviving broker's metadata first names another leader (the cluster's part;
the rest is the client's). Prints each time and the median, p99 and max.

    tools/failover-bench.py [--kills 50] [--binary target/release/coremq] [--broker-args "..."]

Needs confluent-kafka (tools/test-all.sh puts it in target/e2e-venv).
"""

import argparse
import os
import statistics
import tempfile
import threading
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchcluster import Cluster, percentile, wait_for


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--binary", default="target/release/coremq")
    parser.add_argument("--broker-args", default="", help="more flags for every broker")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="coremq-failover-")
    cluster = Cluster(os.path.abspath(args.binary), root, args.broker_args.split())
    finished = False
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

        # One admin client per broker: the leader killed is the one all three name.
        admins = [AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}) for port in cluster.kafka]

        def partition(client=admin):
            listed = client.list_topics("failover", timeout=5).topics["failover"].partitions
            return listed.get(0)

        def agreed_leader():
            try:
                seen = {partition(client).leader for client in admins}
            except Exception:
                return None
            # A tuple: broker 0 is a leader too, not "not yet".
            return (seen.pop(),) if len(seen) == 1 and min(seen) >= 0 else None

        acks = []  # (monotonic time, time sent) of every acknowledgement
        lock = threading.Lock()
        running = True

        def delivered(err, sent):
            if err is None:
                with lock:
                    acks.append((time.monotonic(), sent))

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
                sent = time.monotonic()
                producer.produce(
                    "failover",
                    value=b"x",
                    on_delivery=lambda err, msg, sent=sent: delivered(err, sent),
                )
                producer.poll(0.001)
            producer.flush(60)

        thread = threading.Thread(target=produce)
        thread.start()
        times, elections = [], []
        for kill in range(args.kills):
            wait_for(
                "three in-sync replicas",
                lambda: (p := partition()) is not None and p.leader >= 0 and len(p.isrs) == 3,
            )
            time.sleep(0.5)
            (leader,) = wait_for("a leader every broker names", agreed_leader)
            with lock:
                acks.clear()
            killed_at, killed_clock = time.monotonic(), time.time()
            cluster.kill(leader)
            survivor = admins[(leader + 1) % 3]

            def moved():
                try:
                    now = partition(survivor).leader
                except Exception:
                    return None
                return time.monotonic() if now >= 0 and now != leader else None

            elected_at = wait_for("a new leader in the metadata", moved, 60)

            def first_new_ack():
                with lock:
                    return next((at for at, sent in acks if sent > killed_at), None)

            acked_at = wait_for("an acknowledgement from the new leader", first_new_ack, 120)
            elapsed = acked_at - killed_at
            times.append(elapsed)
            elections.append(elected_at - killed_at)
            print(
                f"kill {kill + 1} at {time.strftime('%H:%M:%S', time.gmtime(killed_clock))}"
                f".{int(killed_clock * 1000) % 1000:03d}: leader {leader}, new leader in the metadata after "
                f"{(elected_at - killed_at) * 1000:.0f} ms, first acknowledgement after "
                f"{elapsed * 1000:.0f} ms",
                flush=True,
            )
            cluster.start(leader)
        running = False
        thread.join()
        for name, values in [("new leader in the metadata", elections), ("failover", times)]:
            print(
                f"{len(values)} kills, {name}: median {statistics.median(values) * 1000:.0f} ms, "
                f"p99 {percentile(values, 0.99) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
            )
        finished = True
    finally:
        cluster.close(failed=not finished)


if __name__ == "__main__":
    main()
