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
      the group's committed offsets are still the log ends (run after its coordinator moved);
  replicated.py BOOTSTRAP steady TOPIC READY GO
      a consumer group member joins and gets its partitions, then writes READY and keeps
      polling until the file GO exists (the test kills the group's coordinator meanwhile):
      it was never revoked nor assigned again, and DescribeGroups shows it Stable with the
      same member id and partitions (the new coordinator reloaded the membership);
  replicated.py BOOTSTRAP assigned TOPIC REPLICAS
      creates TOPIC with one partition on the brokers REPLICAS names (`0,1`: an explicit
      replica assignment, the first leading) and min.insync.replicas=2, and waits until they
      are all in sync;
  replicated.py BOOTSTRAP move TOPIC REPLICAS
      moves partition 0 of TOPIC to REPLICAS with kafka-python's
      alter_partition_reassignments and waits until list_partition_reassignments shows the
      move over and the metadata lists exactly REPLICAS, all in sync;
  replicated.py BOOTSTRAP cancel TOPIC REPLICAS GO
      creates GO.ready once connected; once the file GO exists, starts moving partition 0 to REPLICAS (one of which cannot
      catch up: the test stopped it just before), checks that list_partition_reassignments shows the replicas being added and
      removed, cancels the move and waits until the partition is back on its replicas.
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
    seen, duplicates, missing = {}, [], set(acked)
    deadline = time.monotonic() + 60
    while missing and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        value = msg.value().decode()
        if value in seen:
            duplicates.append(f"{value} at {seen[value]} and {[msg.partition(), msg.offset()]}")
        seen[value] = [msg.partition(), msg.offset()]
        missing.discard(value)
    consumer.close()
    lost = [v for v in acked if v not in seen]
    moved = [v for v in acked if v in seen and seen[v] != acked[v]]
    print(f"acknowledged {len(acked)}, read {len(seen)}, duplicates {len(duplicates)}, "
          f"lost {len(lost)}, moved {len(moved)}")
    assert not lost, f"acknowledged but lost: {[(v, acked[v]) for v in lost[:5]]}"
    assert not moved, "at another offset than acknowledged: " + ", ".join(
        f"{v} acknowledged at {acked[v]}, read at {seen[v]}" for v in moved[:5]
    )
    assert not duplicates, f"{len(duplicates)} values read twice: {duplicates[:5]}"

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


def steady(servers, topic, ready, go):
    group_id = "steady-members"
    assigned, revoked = [], []
    member = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
        }
    )
    member.subscribe(
        [topic],
        on_assign=lambda _, partitions: assigned.append(sorted(p.partition for p in partitions)),
        on_revoke=lambda _, partitions: revoked.append(sorted(p.partition for p in partitions)),
        on_lost=lambda _, partitions: revoked.append(("lost", len(partitions))),
    )
    while not assigned:
        member.poll(0.2)
    member_id = member.memberid()
    with open(ready, "w") as out:
        out.write(member_id)
    while not os.path.exists(go):
        member.poll(0.2)
    assert assigned == [[0, 1, 2]] and not revoked, (
        f"the member rebalanced after its coordinator moved: assigned {assigned}, "
        f"revoked {revoked}"
    )
    assert member.memberid() == member_id, f"member id {member_id} became {member.memberid()}"
    admin = AdminClient({"bootstrap.servers": servers})
    described = admin.describe_consumer_groups([group_id])[group_id].result(timeout=30)
    members = [(m.member_id, sorted(tp.partition for tp in m.assignment.topic_partitions))
               for m in described.members]
    assert str(described.state).endswith("STABLE"), f"group state {described.state}"
    assert members == [(member_id, [0, 1, 2])], f"described members {members}"
    member.close()
    print(f"member {member_id} kept its partitions and generation through the coordinator's move")


def replicas_of(text):
    return [int(broker) for broker in text.split(",")]


def partition_zero(servers, topic):
    """Partition 0 of `topic` as the broker asked lists it (None while it knows no such
    topic: the metadata reaches each broker in its own time)."""
    admin = AdminClient({"bootstrap.servers": servers})
    return admin.list_topics(topic, timeout=5).topics[topic].partitions.get(0)


def assigned(servers, topic, replicas):
    admin = AdminClient({"bootstrap.servers": servers})
    new = NewTopic(
        topic, num_partitions=1, replica_assignment=[replicas], config={"min.insync.replicas": "2"}
    )
    admin.create_topics([new])[topic].result(timeout=30)

    def placed():
        listed = partition_zero(servers, topic)
        return listed and listed.replicas == replicas and sorted(listed.isrs) == sorted(replicas)

    wait_for(f"replicas {replicas} in sync", placed, timeout=30)
    print(f"created {topic} on brokers {replicas}")


def reassignments(admin, topic):
    from kafka import TopicPartition as KafkaPartition

    return admin.list_partition_reassignments([KafkaPartition(topic, 0)])


def move(servers, topic, replicas):
    from kafka import TopicPartition as KafkaPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=servers.split(","))
    before = partition_zero(servers, topic).replicas
    started = time.monotonic()
    answer = admin.alter_partition_reassignments({KafkaPartition(topic, 0): replicas})
    assert answer == {KafkaPartition(topic, 0): None}, f"the move was refused: {answer}"

    def moved():
        if reassignments(admin, topic):
            return False
        listed = partition_zero(servers, topic)
        return listed and listed.replicas == replicas and sorted(listed.isrs) == sorted(replicas)

    wait_for(f"the move to {replicas}", moved, timeout=60, interval=0.2)
    admin.close()
    print(f"moved {topic}-0 from {before} to {replicas} in {time.monotonic() - started:.1f} s")


def cancel(servers, topic, replicas, go):
    from kafka import TopicPartition as KafkaPartition
    from kafka.admin import KafkaAdminClient
    from kafka.errors import NoReassignmentInProgressError

    admin = KafkaAdminClient(bootstrap_servers=servers.split(","))
    tp = KafkaPartition(topic, 0)
    before = partition_zero(servers, topic).replicas
    # Connected to the controller (asked through it) before the test stops a broker.
    assert reassignments(admin, topic) == {}, "nothing in progress yet"
    open(go + ".ready", "w").close()
    wait_for("the go", lambda: os.path.exists(go), timeout=60, interval=0.01)
    assert admin.alter_partition_reassignments({tp: replicas}) == {tp: None}
    ongoing = reassignments(admin, topic)
    adding = [b for b in replicas if b not in before]
    removing = [b for b in before if b not in replicas]
    expected = {
        "replicas": replicas + removing,
        "adding_replicas": adding,
        "removing_replicas": removing,
    }
    assert ongoing == {tp: expected}, f"in progress: {ongoing}, expected {expected}"
    listed = partition_zero(servers, topic)
    assert listed.replicas == replicas + removing, f"the metadata lists {listed.replicas}"
    assert admin.alter_partition_reassignments({tp: None}) == {tp: None}
    assert reassignments(admin, topic) == {}, "nothing in progress after the cancellation"
    again = admin.alter_partition_reassignments({tp: None})
    assert again == {tp: NoReassignmentInProgressError}, f"a second cancellation: {again}"
    wait_for(
        f"the replicas back on {before}",
        lambda: getattr(partition_zero(servers, topic), "replicas", None) == before,
        timeout=30,
    )
    admin.close()
    print(f"the move of {topic}-0 to {replicas} was listed as {ongoing[tp]}, then cancelled")


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
    elif step == "steady":
        steady(servers, topic, sys.argv[4], sys.argv[5])
    elif step == "assigned":
        assigned(servers, topic, replicas_of(sys.argv[4]))
    elif step == "move":
        move(servers, topic, replicas_of(sys.argv[4]))
    elif step == "cancel":
        cancel(servers, topic, replicas_of(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(f"unknown step {step}")


if __name__ == "__main__":
    main()
