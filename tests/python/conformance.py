"""Where Kafka client suites found coremq answering unlike Kafka, checked with confluent-kafka:

- a record without a key on a compacted topic fails its delivery with INVALID_RECORD (Kafka's
  LogValidator), while a keyed record in the same topic is stored;
- a transactional producer's init_transactions fails at once with an error naming
  transactions, instead of waiting for its timeout;
- without an authorizer, every operation is authorized on topics, the cluster and groups;
- a group whose last member left keeps its protocol type (it is not a "simple" group);
- every topic config Kafka 4 accepts is accepted and checked, SUBTRACT may empty
  cleanup.policy, and the broker describes its topic defaults.

`conformance.py HOST:PORT`."""

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import (
    AclOperation,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from common import bootstrap, create_topic, wait_for

BOOTSTRAP = bootstrap()


def keyless_records_on_a_compacted_topic():
    create_topic(BOOTSTRAP, "compacted", 1, {"cleanup.policy": "compact"})
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 0})
    outcomes = {}

    def report(error, message):
        outcomes[message.key()] = error

    producer.produce("compacted", value=b"no key", on_delivery=report)
    producer.flush(30)
    producer.produce("compacted", key=b"k", value=b"keyed", on_delivery=report)
    producer.flush(30)
    keyless = outcomes[None]
    assert keyless is not None, "a keyless record was stored in a compacted topic"
    assert keyless.code() == KafkaError.INVALID_RECORD, keyless
    assert outcomes[b"k"] is None, outcomes[b"k"]


def transactions_fail_at_once():
    producer = Producer(
        {"bootstrap.servers": BOOTSTRAP, "transactional.id": "coremq-txn"}
    )
    began = time.monotonic()
    try:
        producer.init_transactions(30)
    except KafkaException as error:
        took = time.monotonic() - began
        text = str(error.args[0])
        assert took < 5, f"init_transactions took {took:.1f} s: {text}"
        assert "transactions are not supported" in text or "TRANSACTIONAL_ID" in text, text
        return
    raise AssertionError("init_transactions succeeded against a broker without transactions")


def every_operation_is_authorized():
    admin = create_topic(BOOTSTRAP, "described", 1)
    cluster = admin.describe_cluster(include_authorized_operations=True).result(timeout=30)
    assert set(cluster.authorized_operations) == {
        AclOperation.CREATE,
        AclOperation.ALTER,
        AclOperation.DESCRIBE,
        AclOperation.CLUSTER_ACTION,
        AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS,
        AclOperation.IDEMPOTENT_WRITE,
    }, cluster.authorized_operations
    topics = admin.describe_topics(
        TopicCollection(["described"]), include_authorized_operations=True
    )
    topic = topics["described"].result(timeout=30)
    assert set(topic.authorized_operations) == {
        AclOperation.READ,
        AclOperation.WRITE,
        AclOperation.CREATE,
        AclOperation.DELETE,
        AclOperation.ALTER,
        AclOperation.DESCRIBE,
        AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS,
    }, topic.authorized_operations
    return admin


def an_emptied_group_keeps_its_protocol_type(admin):
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": "emptied",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(["described"])
    wait_for("an assignment", lambda: consumer.poll(0.2) is None and consumer.assignment())
    consumer.close()
    groups = admin.describe_consumer_groups(["emptied"], include_authorized_operations=True)
    group = groups["emptied"].result(timeout=30)
    assert set(group.authorized_operations) == {
        AclOperation.READ,
        AclOperation.DELETE,
        AclOperation.DESCRIBE,
    }, group.authorized_operations

    def listed():
        listing = admin.list_consumer_groups().result(timeout=30)
        return [g for g in listing.valid if g.group_id == "emptied" and str(g.state).endswith("EMPTY")]

    emptied = wait_for("the group to be empty", listed)
    assert not emptied[0].is_simple_consumer_group, emptied[0]


def ordinary_kafka_topic_configs(admin):
    configs = {
        "min.insync.replicas": "2",
        "unclean.leader.election.enable": "false",
        "flush.ms": "1000",
        "flush.messages": "9223372036854775807",
        "file.delete.delay.ms": "1000",
        "min.cleanable.dirty.ratio": "0.2",
        "max.compaction.lag.ms": "600000",
        "message.format.version": "2.8",
        "cleanup.policy": "compact,delete",
    }
    admin.create_topics([NewTopic("configured", 1, 1, config=configs)])["configured"].result(
        timeout=30
    )
    resource = ConfigResource(ConfigResource.Type.TOPIC, "configured")
    described = admin.describe_configs([resource])[resource].result(timeout=30)
    for key, value in configs.items():
        assert described[key].value == value, (key, described[key])
    subtract = ConfigResource(
        ConfigResource.Type.TOPIC,
        "configured",
        incremental_configs=[
            ConfigEntry(
                "cleanup.policy",
                "compact,delete",
                incremental_operation=AlterConfigOpType.SUBTRACT,
            )
        ],
    )
    admin.incremental_alter_configs([subtract])[subtract].result(timeout=30)
    described = admin.describe_configs([resource])[resource].result(timeout=30)
    assert described["cleanup.policy"].value == "", described["cleanup.policy"]
    bad = NewTopic("misconfigured", 1, 1, config={"min.insync.replicas": "0"})
    try:
        admin.create_topics([bad])["misconfigured"].result(timeout=30)
        raise AssertionError("min.insync.replicas=0 was accepted")
    except KafkaException as error:
        assert error.args[0].code() == KafkaError.INVALID_CONFIG, error
    broker = ConfigResource(ConfigResource.Type.BROKER, "0")
    described = admin.describe_configs([broker])[broker].result(timeout=30)
    for key in ("log.retention.ms", "log.segment.bytes", "log.cleanup.policy",
                "message.max.bytes", "num.partitions", "log.flush.interval.messages"):
        assert key in described, (key, sorted(described))


keyless_records_on_a_compacted_topic()
transactions_fail_at_once()
admin = every_operation_is_authorized()
an_emptied_group_keeps_its_protocol_type(admin)
ordinary_kafka_topic_configs(admin)
print("conformance: keyless records, transactions, authorized operations, emptied groups, configs")
