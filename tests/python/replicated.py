"""A replicated topic under faults, driven by confluent-kafka. Three steps, each its own run:

  replicated.py BOOTSTRAP create TOPIC PARTITIONS
      creates TOPIC with replication factor 3 and min.insync.replicas=2 and waits until
      every partition lists three replicas in sync;
  replicated.py BOOTSTRAP produce TOPIC SECONDS OUT
      an idempotent acks=all producer writes numbered values for SECONDS (while the test
      kills and restarts brokers) and writes every acknowledged value with its partition and
      offset to OUT (JSON); SECONDS may be `until:FILE`: until FILE exists;
  replicated.py BOOTSTRAP group TOPIC STOP
      a consumer group member reads and commits until the file STOP exists, reading its
      committed offsets back after each commit: they never go backwards;
  replicated.py BOOTSTRAP verify TOPIC OUT
      reads every partition from the start and checks that each acknowledged value is
      there exactly once, at the partition and offset it was acknowledged with, and that
      kafka-python reads the same; then a
      consumer group reads everything again and commits, and its committed offsets are the
      log ends;
  replicated.py BOOTSTRAP committed TOPIC
      the group's committed offsets are still the log ends (run after its coordinator moved).
"""

import json
import os
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common import bootstrap, wait_for


def create(servers, topic, partitions):
    admin = AdminClient({"bootstrap.servers": servers})
    futures = admin.create_topics(
        [NewTopic(topic, partitions, 3, config={"min.insync.replicas": "2"})]
    )
    futures[topic].result(timeout=30)

    def in_sync():
        listed = admin.list_topics(topic, timeout=5).topics[topic].partitions
        return len(listed) == partitions and all(
            len(p.replicas) == 3 and len(p.isrs) == 3 for p in listed.values()
        )

    wait_for("three in-sync replicas of every partition", in_sync, timeout=30)
    print(f"created {topic}: {partitions} partitions, 3 replicas in sync")


def produce(servers, topic, seconds, out):
    acked, errors = {}, []

    def delivered(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            acked[msg.value().decode()] = [msg.partition(), msg.offset()]

    producer = Producer(
        {
            "bootstrap.servers": servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "delivery.timeout.ms": 120000,
        }
    )
    started, sent = time.monotonic(), 0

    def going():
        if isinstance(seconds, str):
            return not os.path.exists(seconds)
        return time.monotonic() - started < seconds

    while going():
        producer.produce(topic, key=b"k%d" % (sent % 31), value=b"v%07d" % sent, on_delivery=delivered)
        sent += 1
        producer.poll(0)
        time.sleep(0.002)
    left = producer.flush(120)
    assert left == 0, f"{left} messages never delivered"
    assert not errors, f"{len(errors)} deliveries failed, first: {errors[0]}"
    assert len(acked) == sent, f"sent {sent}, acknowledged {len(acked)}"
    with open(out, "w") as file:
        json.dump(acked, file)
    print(f"produced {sent}, all acknowledged")


def verify(servers, topic, out):
    with open(out) as file:
        acked = json.load(file)
    consumer = Consumer(
        {"bootstrap.servers": servers, "group.id": "replicated-reader", "enable.auto.commit": False}
    )
    partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    # The topic may hold records of other writers too: read until every acknowledged value
    # is seen, or the deadline.
    seen, duplicates, missing = {}, 0, set(acked)
    deadline = time.monotonic() + 60
    while missing and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        value = msg.value().decode()
        if value in seen:
            duplicates += 1
        seen[value] = [msg.partition(), msg.offset()]
        missing.discard(value)
    consumer.close()
    lost = [v for v in acked if v not in seen]
    moved = [v for v in acked if v in seen and seen[v] != acked[v]]
    print(f"acknowledged {len(acked)}, read {len(seen)}, duplicates {duplicates}, "
          f"lost {len(lost)}, moved {len(moved)}")
    assert not lost, f"acknowledged but lost: {lost[:5]}"
    assert not moved, f"at another offset than acknowledged: {moved[:5]}"
    assert duplicates == 0, f"{duplicates} values read twice"

    # kafka-python (an independent client) reads the same.
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KafkaPartition

    reader = KafkaConsumer(
        bootstrap_servers=servers.split(","), enable_auto_commit=False, consumer_timeout_ms=10000
    )
    reader.assign([KafkaPartition(topic, p) for p in range(partitions)])
    reader.seek_to_beginning()
    again = {}
    for record in reader:
        again[record.value.decode()] = [record.partition, record.offset]
        if len(again) >= len(seen):
            break
    reader.close()
    assert again == seen, f"kafka-python read {len(again)} records, confluent-kafka {len(seen)}"
    print(f"kafka-python read the same {len(again)} records at the same offsets")

    group = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": "replicated-group",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    group.subscribe([topic])
    read = 0
    deadline = time.monotonic() + 60
    while read < len(seen) and time.monotonic() < deadline:
        msg = group.poll(0.5)
        if msg is not None and not msg.error():
            read += 1
    group.commit(asynchronous=False)
    ends = [group.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    committed = group.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    group.close()
    assert read == len(seen), f"the group read {read} of {len(seen)}"
    assert [c.offset for c in committed] == ends, f"committed {committed}, log ends {ends}"
    print(f"a group read all {read} and committed the log ends {ends}")


def group(servers, topic, stop):
    member = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": "replicated-members",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 10000,
        }
    )
    member.subscribe([topic])
    highest, read, commits, checks = {}, 0, 0, 0
    while not os.path.exists(stop):
        messages = member.consume(500, timeout=0.5)
        read += sum(1 for msg in messages if not msg.error())
        if not messages:
            continue
        try:
            member.commit(asynchronous=False)
            commits += 1
            assigned = member.assignment()
            for tp in member.committed(assigned, timeout=5):
                if tp.offset < 0:
                    continue
                key = tp.partition
                assert tp.offset >= highest.get(key, -1), (
                    f"the committed offset of partition {key} went back from "
                    f"{highest[key]} to {tp.offset}"
                )
                highest[key] = tp.offset
                checks += 1
        except AssertionError:
            raise
        except Exception as error:  # a coordinator or leader is moving: later
            print(f"commit or read back failed, retried later: {error}")
    member.close()
    assert commits > 0 and checks > 0, f"{commits} commits, {checks} read back"
    print(f"group member read {read}, committed {commits} times, {checks} offsets read back, "
          f"none went backwards")


def committed(servers, topic):
    group = Consumer({"bootstrap.servers": servers, "group.id": "replicated-group"})
    partitions = len(group.list_topics(topic, timeout=10).topics[topic].partitions)
    wanted = [TopicPartition(topic, p) for p in range(partitions)]

    def read():
        try:
            ends = [
                group.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                for p in range(partitions)
            ]
            return ends, [c.offset for c in group.committed(wanted, timeout=5)]
        except Exception as error:  # leaders and the coordinator are moving
            print(f"not readable yet: {error}")
            return None

    ends, offsets = wait_for("the committed offsets", read, timeout=60, interval=0.5)
    group.close()
    assert offsets == ends, f"committed {offsets} after the coordinator moved, log ends {ends}"
    print(f"the group's commits survived its coordinator: {offsets}")


def main():
    servers = bootstrap()
    step, topic = sys.argv[2], sys.argv[3]
    if step == "create":
        create(servers, topic, int(sys.argv[4]))
    elif step == "produce":
        seconds = sys.argv[4]
        seconds = seconds[len("until:"):] if seconds.startswith("until:") else float(seconds)
        produce(servers, topic, seconds, sys.argv[5])
    elif step == "group":
        group(servers, topic, sys.argv[4])
    elif step == "verify":
        verify(servers, topic, sys.argv[4])
    elif step == "committed":
        committed(servers, topic)
    else:
        sys.exit(f"unknown step {step}")


if __name__ == "__main__":
    main()
