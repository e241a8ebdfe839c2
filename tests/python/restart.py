"""Committed offsets and data survive a broker restart, across two independent clients.

`restart.py HOST:PORT before STATE`: kafka-python produces 300 records (acks=all) and a
kafka-python consumer group commits after consuming some of them; what it consumed and
committed goes to the STATE file. The test restarts the broker, then
`restart.py HOST:PORT after STATE`: confluent-kafka sees the same committed offsets, the group
resumes exactly after them, and a fresh group reads all 300 records."""

import json
import sys

from confluent_kafka import Consumer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTopicPartition

from common import bootstrap, consume_all, create_topic

BOOTSTRAP = bootstrap()
PHASE, STATE = sys.argv[2], sys.argv[3]
TOPIC, GROUP, RECORDS, PARTITIONS = "durable", "g-restart", 300, 3


def before():
    create_topic(BOOTSTRAP, TOPIC, PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    for value in range(RECORDS):
        producer.send(TOPIC, key=f"k{value}".encode(), value=str(value).encode())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        TOPIC,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=10,
    )
    seen = []
    positions = {}
    while len(seen) < RECORDS // 2:
        for partition, records in consumer.poll(timeout_ms=1000).items():
            for record in records:
                seen.append(int(record.value))
                positions[partition.partition] = record.offset + 1
    consumer.commit(
        {
            KafkaTopicPartition(TOPIC, p): OffsetAndMetadata(o, f"meta-{p}", -1)
            for p, o in positions.items()
        }
    )
    consumer.close()
    with open(STATE, "w") as out:
        json.dump({"seen": seen, "positions": positions}, out)
    print(f"before: consumed {len(seen)}, committed {positions}")


def after():
    with open(STATE) as state_file:
        state = json.load(state_file)
    positions = {int(p): o for p, o in state["positions"].items()}
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    committed = consumer.committed(
        [TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=30
    )
    for tp in committed:
        expected = positions.get(tp.partition, -1001)
        assert tp.offset == expected, f"partition {tp.partition}: {tp.offset} != {expected}"
        if tp.partition in positions:
            assert tp.metadata == f"meta-{tp.partition}", tp.metadata
    consumer.subscribe([TOPIC])
    rest = consume_all(consumer, RECORDS - len(state["seen"]))
    values = sorted(int(m.value()) for m in rest)
    expected = sorted(set(range(RECORDS)) - set(state["seen"]))
    assert values == expected, "the group did not resume exactly after its commits"
    assert consumer.poll(2) is None, "more records than were left"
    consumer.close()

    fresh = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": "g-fresh",
            "auto.offset.reset": "earliest",
        }
    )
    fresh.subscribe([TOPIC])
    everything = consume_all(fresh, RECORDS)
    assert sorted(int(m.value()) for m in everything) == list(range(RECORDS))
    fresh.close()
    print(f"after: resumed with {len(rest)} records; all {RECORDS} records still there")


before() if PHASE == "before" else after()
