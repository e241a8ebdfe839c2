"""Where Kafka client suites found coremq answering unlike Kafka, checked with confluent-kafka:

- a record without a key on a compacted topic fails its delivery with INVALID_RECORD (Kafka's
  LogValidator), while a keyed record in the same topic is stored;
- a transactional producer's init_transactions fails at once with an error naming
  transactions, instead of waiting for its timeout;
- without an authorizer, every operation is authorized on topics, the cluster and groups;
- a group whose last member left keeps its protocol type (it is not a "simple" group);
- every topic config Kafka 4 accepts is accepted and checked, SUBTRACT may empty
  cleanup.policy, and the broker describes its whole configuration with sources;
- ListOffsets finds the record with the largest timestamp (KIP-734);
- OffsetDelete deletes a group's commits, except of topics its members subscribe to;
- ElectLeaders, partition reassignments and DescribeLogDirs answer as a one-broker Kafka
  (kafka-python's admin client, and confluent-kafka's elect_leaders).

`conformance.py HOST:PORT`."""

import time

from confluent_kafka import (
    Consumer,
    ElectionType,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import (
    AclOperation,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    OffsetSpec,
)
from kafka import KafkaAdminClient
from kafka import TopicPartition as KafkaTopicPartition
from kafka.errors import GroupSubscribedToTopicError, InvalidReplicationAssignmentError, NoError

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
                "message.max.bytes", "num.partitions", "log.flush.interval.messages",
                "advertised.listeners", "log.dirs", "listeners", "log.roll.ms",
                "log.cleaner.min.cleanable.ratio", "min.insync.replicas"):
        assert key in described, (key, sorted(described))
        assert described[key].is_read_only, described[key]
    assert described["advertised.listeners"].value == f"PLAINTEXT://{BOOTSTRAP}"
    assert described["log.dirs"].value.endswith("/logs"), described["log.dirs"]
    # The test broker runs with its own data directory: a static setting; the retention
    # is Kafka's default.
    assert described["log.dirs"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    assert described["log.retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert described["log.retention.ms"].is_default


def max_timestamp_offsets(admin):
    create_topic(BOOTSTRAP, "stamped", 1)
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 100})
    for value, timestamp in enumerate([1000, 5000, 3000, 5000, 2000]):
        producer.produce("stamped", value=str(value).encode(), timestamp=timestamp)
    producer.flush(30)
    partition = TopicPartition("stamped", 0)
    found = admin.list_offsets({partition: OffsetSpec.max_timestamp()})[partition]
    found = found.result(timeout=30)
    assert (found.offset, found.timestamp) == (1, 5000), (found.offset, found.timestamp)
    earliest = admin.list_offsets({partition: OffsetSpec.earliest()})[partition]
    assert earliest.result(timeout=30).offset == 0


def offset_delete():
    create_topic(BOOTSTRAP, "unsubscribed", 1)
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": "deleting",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(["stamped"])
    wait_for("an assignment", lambda: consumer.poll(0.2) is None and consumer.assignment())
    consumer.commit(
        offsets=[TopicPartition("stamped", 0, 2), TopicPartition("unsubscribed", 0, 3)],
        asynchronous=False,
    )
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    subscribed = KafkaTopicPartition("stamped", 0)
    other = KafkaTopicPartition("unsubscribed", 0)
    result = admin.delete_group_offsets("deleting", [subscribed, other])
    assert result == {subscribed: GroupSubscribedToTopicError, other: NoError}, result
    left = admin.list_group_offsets("deleting")["deleting"]
    assert set(left) == {subscribed}, left
    consumer.close()
    # Once the member's LeaveGroup is through, nothing subscribes to the topic.
    wait_for(
        "the commit to be deletable once the group is empty",
        lambda: admin.delete_group_offsets("deleting", [subscribed]) == {subscribed: NoError},
        timeout=30,
    )
    assert not admin.list_group_offsets("deleting").get("deleting"), "commits left"
    return admin


def one_broker_replica_apis(admin, confluent_admin):
    elected = admin.elect_leaders(0, {"stamped": [0]}, raise_errors=False)
    codes = [
        (result.topic, partition.partition_id, partition.error_code)
        for result in elected.replica_election_results
        for partition in result.partition_result
    ]
    assert codes == [("stamped", 0, 84)], codes  # ELECTION_NOT_NEEDED
    partition = TopicPartition("stamped", 0)
    confluent = confluent_admin.elect_leaders(ElectionType.PREFERRED, [partition])
    outcome = confluent.result(timeout=30)[partition]
    assert outcome.code() == KafkaError.ELECTION_NOT_NEEDED, outcome

    here = KafkaTopicPartition("stamped", 0)
    elsewhere = KafkaTopicPartition("unsubscribed", 0)
    moved = admin.alter_partition_reassignments({here: [0], elsewhere: [3]})
    assert moved == {here: None, elsewhere: InvalidReplicationAssignmentError}, moved
    assert admin.list_partition_reassignments() == {}

    described = admin.describe_log_dirs(topic_partitions={"stamped": [0]})
    dirs = described[0]["log_dirs"]
    assert len(dirs) == 1 and dirs[0]["log_dir"].endswith("/logs"), dirs
    sizes = {
        (topic["name"], p["partition_index"]): p["partition_size"]
        for topic in dirs[0]["topics"]
        for p in topic["partitions"]
    }
    assert list(sizes) == [("stamped", 0)] and sizes[("stamped", 0)] > 0, sizes
    assert 0 < dirs[0]["usable_bytes"] <= dirs[0]["total_bytes"], dirs[0]


keyless_records_on_a_compacted_topic()
transactions_fail_at_once()
admin = every_operation_is_authorized()
an_emptied_group_keeps_its_protocol_type(admin)
ordinary_kafka_topic_configs(admin)
max_timestamp_offsets(admin)
kafka_python_admin = offset_delete()
one_broker_replica_apis(kafka_python_admin, admin)
print(
    "conformance: keyless records, transactions, authorized operations, emptied groups, configs,"
    " max timestamp, offset delete, replica APIs"
)
