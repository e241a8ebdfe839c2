"""Produce and consume with confluent-kafka (current librdkafka) and kafka-python (an
independent pure-Python client): every compression codec, keys, headers and null values,
acks 0/1/all, reading from earliest, from latest and from a timestamp; and records of each
client read by the other. Also produces uncompressed records to `recompressed` (topic
`compression.type=zstd`), whose stored batches the calling test inspects."""

import time

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition as KafkaTopicPartition

from common import bootstrap, consume_all, create_topic

BOOTSTRAP = bootstrap()
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
COUNT = 50


def record(index):
    # kafka-python refuses a record with neither key nor value.
    key = None if index % 5 == 0 and index % 7 else f"key-{index}".encode()
    value = None if index % 7 == 0 else (f"value-{index}-" + "x" * (index % 13)).encode()
    headers = [("h1", f"{index}".encode()), ("h2", b"")] if index % 2 else []
    return key, value, headers


def check(messages, topic):
    assert len(messages) == COUNT, f"{topic}: {len(messages)} records"
    for offset, (key, value, headers) in enumerate(messages):
        want = record(offset)
        assert key == want[0], f"{topic}@{offset}: key {key!r} != {want[0]!r}"
        assert value == want[1], f"{topic}@{offset}: value {value!r} != {want[1]!r}"
        assert list(headers or []) == want[2], f"{topic}@{offset}: headers {headers!r}"


def confluent_consumer(group):
    return Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def read_confluent(topic):
    consumer = confluent_consumer(f"read-{topic}")
    consumer.assign([TopicPartition(topic, 0, -2)])
    messages = consume_all(consumer, COUNT)
    consumer.close()
    return [(m.key(), m.value(), m.headers()) for m in messages]


def read_kafka_python(topic):
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest")
    partition = KafkaTopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    out = []
    deadline = time.monotonic() + 60
    while len(out) < COUNT and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            out += [(r.key, r.value, [(k, v) for k, v in r.headers]) for r in records]
    consumer.close()
    return out


def codecs():
    for codec in CODECS:
        topic = f"codec-confluent-{codec}"
        create_topic(BOOTSTRAP, topic, 1)
        producer = Producer(
            {"bootstrap.servers": BOOTSTRAP, "compression.codec": codec, "linger.ms": 20}
        )
        for index in range(COUNT):
            key, value, headers = record(index)
            producer.produce(topic, key=key, value=value, headers=headers, partition=0)
        assert producer.flush(30) == 0
        check(read_confluent(topic), topic)
        check(read_kafka_python(topic), topic)

        topic = f"codec-kafka-python-{codec}"
        create_topic(BOOTSTRAP, topic, 1)
        producer = KafkaProducer(
            bootstrap_servers=BOOTSTRAP,
            compression_type=None if codec == "none" else codec,
            linger_ms=20,
        )
        for index in range(COUNT):
            key, value, headers = record(index)
            producer.send(topic, key=key, value=value, headers=headers, partition=0)
        producer.flush()
        producer.close()
        check(read_kafka_python(topic), topic)
        check(read_confluent(topic), topic)


def acks():
    for acks in ("0", "1", "all"):
        topic = f"acks-{acks}"
        create_topic(BOOTSTRAP, topic, 1)
        delivered = []
        producer = Producer({"bootstrap.servers": BOOTSTRAP, "acks": acks})
        for index in range(COUNT):
            key, value, headers = record(index)
            producer.produce(
                topic,
                key=key,
                value=value,
                headers=headers,
                partition=0,
                on_delivery=lambda error, message: delivered.append((error, message.offset())),
            )
        assert producer.flush(30) == 0
        assert all(error is None for error, _ in delivered), delivered
        if acks != "0":
            assert [offset for _, offset in delivered] == list(range(COUNT)), delivered
        check(read_confluent(topic), topic)


def positions():
    topic = "positions"
    create_topic(BOOTSTRAP, topic, 1)
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    base = int(time.time() * 1000) - 100_000
    for index in range(COUNT):
        producer.produce(topic, value=str(index), partition=0, timestamp=base + index * 1000)
    producer.flush(30)

    consumer = confluent_consumer("positions")
    found = consumer.offsets_for_times([TopicPartition(topic, 0, base + 20_500)], timeout=30)
    assert found[0].offset == 21, found
    consumer.assign(found)
    message = consume_all(consumer, 1)[0]
    assert (message.offset(), int(message.value())) == (21, 21)
    assert message.timestamp()[1] == base + 21_000
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
    assert (low, high) == (0, COUNT)
    consumer.close()

    latest = Consumer(
        {"bootstrap.servers": BOOTSTRAP, "group.id": "latest", "auto.offset.reset": "latest"}
    )
    latest.assign([TopicPartition(topic, 0, -1)])
    assert latest.poll(1.5) is None, "reading from latest returned an old record"
    producer.produce(topic, value="new", partition=0)
    producer.flush(30)
    message = consume_all(latest, 1)[0]
    assert (message.offset(), message.value()) == (COUNT, b"new")
    latest.close()

    # kafka-python: offsets_for_times and the end offset.
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP)
    partition = KafkaTopicPartition(topic, 0)
    found = consumer.offsets_for_times({partition: base + 20_500})
    assert found[partition].offset == 21, found
    assert consumer.end_offsets([partition])[partition] == COUNT + 1
    consumer.close()


def recompressed():
    create_topic(BOOTSTRAP, "recompressed", 1, {"compression.type": "zstd"})
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=20)
    for index in range(COUNT):
        key, value, headers = record(index)
        producer.send("recompressed", key=key, value=value, headers=headers, partition=0)
    producer.flush()
    producer.close()
    check(read_confluent("recompressed"), "recompressed")


codecs()
acks()
positions()
recompressed()
print("clients: codecs, acks, positions and recompression behave with both clients")
