"""A consumer group of three confluent-kafka (librdkafka) members with the given assignor
(`range`: eager, `cooperative-sticky`: cooperative): one member leaves, one joins, records
keep flowing. Every record is consumed; no record is consumed again after a commit past it
succeeded."""

import collections
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer

from common import bootstrap, create_topic, wait_for

BOOTSTRAP = bootstrap()
STRATEGY = sys.argv[2]
TOPIC = f"group-{STRATEGY}"
GROUP = f"g-{STRATEGY}"
PARTITIONS = 6

lock = threading.Lock()
consumed = collections.Counter()
# Per partition, the offset the last successful commit stored (the next record to read).
committed = collections.defaultdict(int)
# Records consumed at an offset below their partition's committed offset at that moment.
again = []
# Records whose commit was refused, with the member and the error.
refused = []


class Member(threading.Thread):
    def __init__(self, name):
        super().__init__(name=name, daemon=True)
        self.assigned = set()
        self.ever_assigned = set()
        self.count = 0
        self.stopping = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": BOOTSTRAP,
                "group.id": GROUP,
                "client.id": name,
                "partition.assignment.strategy": STRATEGY,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 300,
            }
        )

    def on_assign(self, consumer, partitions):
        if STRATEGY == "cooperative-sticky":
            self.assigned |= {p.partition for p in partitions}
        else:
            self.assigned = {p.partition for p in partitions}
        self.ever_assigned |= {p.partition for p in partitions}

    def on_revoke(self, consumer, partitions):
        self.assigned -= {p.partition for p in partitions}

    def run(self):
        self.consumer.subscribe([TOPIC], on_assign=self.on_assign, on_revoke=self.on_revoke)
        while not self.stopping.is_set():
            message = self.consumer.poll(0.1)
            if message is None:
                continue
            assert message.error() is None, message.error()
            value = int(message.value())
            partition, offset = message.partition(), message.offset()
            with lock:
                consumed[value] += 1
                if offset < committed[partition]:
                    again.append((value, self.name, partition, offset, committed[partition]))
            self.count += 1
            try:
                self.consumer.commit(message=message, asynchronous=False)
            except KafkaException as error:
                # A commit refused during a rebalance: the record may come again.
                with lock:
                    refused.append((value, self.name, error.args[0].name()))
                continue
            with lock:
                committed[partition] = max(committed[partition], offset + 1)
        self.consumer.close()

    def stop(self):
        self.stopping.set()
        self.join(30)
        assert not self.is_alive(), f"{self.name} did not stop"


def produce(producer, values):
    for value in values:
        producer.produce(TOPIC, key=f"key-{value}", value=str(value))
    producer.flush(30)


def main():
    create_topic(BOOTSTRAP, TOPIC, PARTITIONS)
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
    produce(producer, range(0, 600))
    members = [Member(name) for name in ("a", "b", "c")]
    for member in members:
        member.start()
    wait_for(
        "three members sharing six partitions",
        lambda: sorted(len(m.assigned) for m in members) == [2, 2, 2],
    )
    wait_for("the first records", lambda: len(consumed) >= 300)
    produce(producer, range(600, 1200))

    leaving = members.pop()
    leaving.stop()
    wait_for(
        "the two remaining members to take over six partitions",
        lambda: sum(len(m.assigned) for m in members) == PARTITIONS
        and all(m.assigned for m in members),
    )
    produce(producer, range(1200, 1800))

    joining = Member("d")
    joining.start()
    members.append(joining)
    wait_for(
        "the new member to get partitions",
        lambda: len(joining.assigned) == 2
        and sorted(len(m.assigned) for m in members) == [2, 2, 2],
    )
    produce(producer, range(1800, 2400))
    wait_for("every record", lambda: len(consumed) == 2400, timeout=90)
    time.sleep(1)
    for member in members:
        member.stop()

    missing = set(range(2400)) - set(consumed)
    assert not missing, f"records never consumed: {sorted(missing)[:20]}"
    assert not again, f"records consumed again after their commit: {again[:20]}"
    assert joining.count > 0, "the member that joined consumed nothing"
    print(
        f"{STRATEGY}: 2400 records, "
        f"{sum(consumed.values()) - 2400} redelivered after refused commits {refused}, "
        f"per member {[(m.name, m.count) for m in members + [leaving]]}"
    )


main()
