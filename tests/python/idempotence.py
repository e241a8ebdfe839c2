"""Idempotent producers retrying through lost responses store every record exactly once,
in order. A proxy between the clients and the broker (which advertises the proxy's port)
closes the connection instead of passing on every fourth Produce response, after the broker
has stored the batch: the producer retries the same batch, which the broker must recognise.

`idempotence.py PROXY_PORT BROKER_PORT`"""

import asyncio
import collections
import struct
import sys
import threading

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaProducer

from common import consume_all, create_topic

PROXY_PORT, BROKER_PORT = int(sys.argv[1]), int(sys.argv[2])
PROXY = f"127.0.0.1:{PROXY_PORT}"
PARTITIONS = 3
PRODUCE_API_KEY = 0


class Chaos:
    def __init__(self):
        self.produce_responses = 0
        self.dropped = 0
        self.enabled = True


chaos = Chaos()


async def read_frame(reader):
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return struct.pack(">i", size) + await reader.readexactly(size)


async def serve(client_reader, client_writer):
    broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", BROKER_PORT)
    produce_ids = set()

    async def requests():
        while True:
            frame = await read_frame(client_reader)
            api_key, _, correlation = struct.unpack(">hhi", frame[4:12])
            if api_key == PRODUCE_API_KEY:
                produce_ids.add(correlation)
            broker_writer.write(frame)
            await broker_writer.drain()

    async def responses():
        while True:
            frame = await read_frame(broker_reader)
            correlation = struct.unpack(">i", frame[4:8])[0]
            if correlation in produce_ids:
                produce_ids.discard(correlation)
                chaos.produce_responses += 1
                if chaos.enabled and chaos.produce_responses % 4 == 0:
                    chaos.dropped += 1
                    return
            client_writer.write(frame)
            await client_writer.drain()

    tasks = [asyncio.ensure_future(requests()), asyncio.ensure_future(responses())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except Exception:
        pass
    for task in tasks:
        task.cancel()
    for writer in (client_writer, broker_writer):
        writer.close()


def run_proxy(ready):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", PROXY_PORT))
    ready.set()
    loop.run_until_complete(server.serve_forever())


def consume(topic, count):
    chaos.enabled = False
    consumer = Consumer(
        {"bootstrap.servers": PROXY, "group.id": f"read-{topic}", "auto.offset.reset": "earliest"}
    )
    consumer.assign([TopicPartition(topic, p, -2) for p in range(PARTITIONS)])
    messages = consume_all(consumer, count, timeout=90)
    assert consumer.poll(2) is None, f"{topic}: more records than produced"
    consumer.close()
    chaos.enabled = True
    by_partition = collections.defaultdict(list)
    for message in messages:
        by_partition[message.partition()].append(int(message.value()))
    values = sorted(v for vs in by_partition.values() for v in vs)
    assert values == list(range(count)), f"{topic}: records lost or stored twice"
    for partition, vs in by_partition.items():
        assert vs == sorted(vs), f"{topic}: partition {partition} out of order"


def confluent(count):
    topic = "idempotent-confluent"
    create_topic(PROXY, topic, PARTITIONS)
    dropped = chaos.dropped
    producer = Producer(
        {
            "bootstrap.servers": PROXY,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.num.messages": 40,
            "retry.backoff.ms": 20,
            "socket.connection.setup.timeout.ms": 5000,
        }
    )
    errors = []
    for value in range(count):
        producer.produce(
            topic,
            key=f"k{value % 17}",
            value=str(value),
            on_delivery=lambda error, _: error and errors.append(error),
        )
        producer.poll(0)
    assert producer.flush(90) == 0, "records left undelivered"
    assert not errors, errors[:5]
    assert chaos.dropped > dropped, "the proxy dropped no response"
    consume(topic, count)
    return chaos.dropped - dropped


def kafka_python(count):
    topic = "idempotent-kafka-python"
    create_topic(PROXY, topic, PARTITIONS)
    dropped = chaos.dropped
    producer = KafkaProducer(
        bootstrap_servers=PROXY,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        batch_size=2000,
        retries=1000,
        retry_backoff_ms=20,
        request_timeout_ms=5000,
    )
    futures = [
        producer.send(topic, key=f"k{value % 17}".encode(), value=str(value).encode())
        for value in range(count)
    ]
    producer.flush(90)
    for future in futures:
        future.get(timeout=90)
    producer.close()
    assert chaos.dropped > dropped, "the proxy dropped no response"
    consume(topic, count)
    return chaos.dropped - dropped


ready = threading.Event()
threading.Thread(target=run_proxy, args=(ready,), daemon=True).start()
ready.wait(10)
print(f"confluent-kafka: 5000 records exactly once; {confluent(5000)} produce responses dropped")
print(f"kafka-python: 2000 records exactly once; {kafka_python(2000)} produce responses dropped")
