"""Static membership (KIP-345) with confluent-kafka (librdkafka): two members with a
`group.instance.id` share a topic. One is closed and started again within the session
timeout: it gets its partitions back and the other member sees no rebalance. Closed for
longer than the session timeout, it is removed and the other member takes everything. When
the last member closes, the group stays non-empty until its session expires, and can be
deleted once it has (on time: a static member leaves no LeaveGroup behind)."""

import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from common import bootstrap, create_topic, wait_for

BOOTSTRAP = bootstrap()
TOPIC = "static"
GROUP = "g-static"
PARTITIONS = 4
SESSION_TIMEOUT_MS = 8000


class Member(threading.Thread):
    """Polls in its own thread and records every assignment change it is told about."""

    def __init__(self, instance):
        super().__init__(name=instance, daemon=True)
        self.assigned = set()
        self.changes = []
        self.stopping = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": BOOTSTRAP,
                "group.id": GROUP,
                "group.instance.id": instance,
                "client.id": instance,
                "partition.assignment.strategy": "range",
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": 300,
                "auto.offset.reset": "earliest",
            }
        )

    def on_assign(self, consumer, partitions):
        self.assigned = {p.partition for p in partitions}
        self.changes.append(("assign", sorted(self.assigned)))

    def on_revoke(self, consumer, partitions):
        self.changes.append(("revoke", sorted(p.partition for p in partitions)))
        self.assigned = set()

    def run(self):
        self.consumer.subscribe([TOPIC], on_assign=self.on_assign, on_revoke=self.on_revoke)
        while not self.stopping.is_set():
            message = self.consumer.poll(0.1)
            assert message is None or message.error() is None, message.error()
        self.consumer.close()

    def stop(self):
        self.stopping.set()
        self.join(30)
        assert not self.is_alive(), f"{self.name} did not stop"


def describe(admin):
    group = admin.describe_consumer_groups([GROUP])[GROUP].result(timeout=30)
    return str(group.state), sorted(
        (m.group_instance_id, m.member_id) for m in group.members
    )


def main():
    admin = create_topic(BOOTSTRAP, TOPIC, PARTITIONS)
    a, b = Member("instance-a"), Member("instance-b")
    a.start()
    b.start()
    wait_for(
        "two static members sharing four partitions",
        lambda: sorted(len(m.assigned) for m in (a, b)) == [2, 2],
    )
    a_partitions = a.assigned
    b_changes = list(b.changes)
    state, members = describe(admin)
    assert "STABLE" in state, state
    assert [instance for instance, _ in members] == ["instance-a", "instance-b"], members
    old_member_id = dict(members)["instance-a"]

    # Restarted within the session timeout: same partitions, a new member id, and the other
    # member is not rebalanced.
    a.stop()
    restarted = Member("instance-a")
    restarted.start()
    wait_for("the restarted member's assignment", lambda: restarted.assigned)
    assert restarted.assigned == a_partitions, (restarted.assigned, a_partitions)
    state, members = describe(admin)
    assert "STABLE" in state, state
    new_member_id = dict(members)["instance-a"]
    assert new_member_id != old_member_id, "the restarted member kept its old member id"
    time.sleep(2)
    assert b.changes == b_changes, f"the other member was rebalanced: {b.changes}"

    # Gone for longer than the session timeout: removed, and its partitions move.
    restarted.stop()
    wait_for(
        "the remaining member to take all four partitions",
        lambda: len(b.assigned) == PARTITIONS,
        timeout=SESSION_TIMEOUT_MS / 1000 + 30,
    )
    state, members = describe(admin)
    assert [instance for instance, _ in members] == ["instance-b"], members
    b.stop()
    closed = time.monotonic()
    deleted = delete_when_expired(admin)
    print(
        f"static membership: kept {sorted(a_partitions)}; the other member saw {b.changes};"
        f" the group was deleted {deleted - closed:.2f} s after its last member closed"
    )
    # The last heartbeat came at most heartbeat.interval.ms before the close; the broker's
    # timers run every 100 ms.
    session = SESSION_TIMEOUT_MS / 1000
    assert session - 0.5 <= deleted - closed <= session + 1.5, deleted - closed


def delete_when_expired(admin):
    """Deletes the group as soon as the broker lets it (or finds it gone); the time it first
    could."""
    deadline = time.monotonic() + SESSION_TIMEOUT_MS / 1000 + 30
    while time.monotonic() < deadline:
        try:
            admin.delete_consumer_groups([GROUP], request_timeout=10)[GROUP].result(timeout=30)
            return time.monotonic()
        except KafkaException as error:
            code = error.args[0].code()
            # With no commits, an emptied group is gone (Dead), as in Kafka.
            if code == KafkaError.GROUP_ID_NOT_FOUND:
                return time.monotonic()
            assert code == KafkaError.NON_EMPTY_GROUP, error
        time.sleep(0.1)
    raise AssertionError("the group never became empty")


main()
