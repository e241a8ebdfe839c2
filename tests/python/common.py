"""Helpers shared by the end-to-end scripts. Each script takes the broker's bootstrap address
as its first argument, drives the broker with real Kafka clients, and exits non-zero (with an
assertion message) when the broker misbehaves."""

import sys
import time


def bootstrap():
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} HOST:PORT [args]")
    return sys.argv[1]


def wait_for(what, condition, timeout=60.0, interval=0.05):
    """Polls `condition` until it returns a true value, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def create_topic(bootstrap_servers, name, partitions, config=None):
    """Creates a topic with confluent-kafka's admin client and waits until it is usable."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    futures = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])
    futures[name].result(timeout=30)
    return admin


def consume_all(consumer, expected, timeout=60.0):
    """Polls a confluent-kafka consumer until `expected` messages came; returns them."""
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < expected:
        assert time.monotonic() < deadline, f"got {len(messages)} of {expected} messages"
        message = consumer.poll(0.5)
        if message is None:
            continue
        assert message.error() is None, f"consumer error: {message.error()}"
        messages.append(message)
    return messages
