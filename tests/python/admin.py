"""Admin operations with confluent-kafka's AdminClient and kafka-python's KafkaAdminClient:
create, describe and delete topics; describe, alter and incrementally alter configs; create
partitions; delete records; describe the cluster; list, describe and delete groups; a deleted
topic's commits are deleted with it.

`admin.py HOST:PORT` runs it all; `admin.py HOST:PORT after-restart` checks, after the test
restarted the broker, that the deleted topic's commits stayed deleted and the others stayed."""

import sys

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)
from kafka.admin import ConfigResource as KafkaConfigResource
from kafka.admin import ConfigResourceType, KafkaAdminClient
from kafka.admin import NewTopic as KafkaNewTopic
from kafka.errors import TopicAlreadyExistsError

from common import bootstrap, consume_all, wait_for

BOOTSTRAP = bootstrap()
admin = AdminClient({"bootstrap.servers": BOOTSTRAP})


def error_of(future):
    try:
        future.result(timeout=30)
    except KafkaException as error:
        return error.args[0].code()
    return None


def topic_configs(name):
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    return admin.describe_configs([resource])[resource].result(timeout=30)


def partitions_of(name):
    return len(admin.list_topics(name, timeout=30).topics[name].partitions)


def topics_and_configs():
    created = admin.create_topics(
        [
            NewTopic("admin-a", 3, 1, config={"retention.ms": "3600000"}),
            NewTopic("admin-b", 1, 1),
        ]
    )
    for future in created.values():
        future.result(timeout=30)
    assert error_of(admin.create_topics([NewTopic("admin-a", 1, 1)])["admin-a"]) == (
        KafkaError.TOPIC_ALREADY_EXISTS
    )
    assert error_of(admin.create_topics([NewTopic("bad name!", 1, 1)])["bad name!"]) == (
        KafkaError.TOPIC_EXCEPTION
    )
    assert error_of(admin.create_topics([NewTopic("admin-c", 1, 3)])["admin-c"]) == (
        KafkaError.INVALID_REPLICATION_FACTOR
    )
    assert error_of(
        admin.create_topics([NewTopic("admin-c", 1, 1, config={"retention.ms": "soon"})])[
            "admin-c"
        ]
    ) == KafkaError.INVALID_CONFIG
    topics = admin.list_topics(timeout=30).topics
    assert {"admin-a", "admin-b"} <= set(topics) and "admin-c" not in topics
    assert partitions_of("admin-a") == 3

    configs = topic_configs("admin-a")
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == ConfigResource.Type.TOPIC or not configs[
        "retention.ms"
    ].is_default
    assert configs["cleanup.policy"].value == "delete" and configs["cleanup.policy"].is_default

    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        "admin-a",
        incremental_configs=[
            ConfigEntry("compression.type", "zstd", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
            ConfigEntry(
                "cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND
            ),
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    configs = topic_configs("admin-a")
    assert configs["compression.type"].value == "zstd"
    assert configs["segment.bytes"].value == "1048576"
    assert configs["retention.ms"].is_default
    assert configs["cleanup.policy"].value == "delete,compact"
    bad = ConfigResource(
        ConfigResource.Type.TOPIC,
        "admin-a",
        incremental_configs=[
            ConfigEntry("segment.bytes", "12", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    assert error_of(admin.incremental_alter_configs([bad])[bad]) == KafkaError.INVALID_CONFIG

    # kafka-python: legacy AlterConfigs replaces every override; DescribeConfigs reads back.
    legacy = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    legacy.alter_configs(
        [KafkaConfigResource(ConfigResourceType.TOPIC, "admin-b", configs={"retention.bytes": "1000000"})]
    )
    described = legacy.describe_configs(
        [KafkaConfigResource(ConfigResourceType.TOPIC, "admin-b")]
    )
    assert "1000000" in str(described), described
    legacy.create_topics([KafkaNewTopic("admin-kp", 2, 1)])
    try:
        legacy.create_topics([KafkaNewTopic("admin-kp", 2, 1)])
        raise AssertionError("creating an existing topic succeeded")
    except TopicAlreadyExistsError:
        pass
    legacy.delete_topics(["admin-kp"])
    legacy.close()

    admin.create_partitions([NewPartitions("admin-a", 5)])["admin-a"].result(timeout=30)
    wait_for("five partitions", lambda: partitions_of("admin-a") == 5)
    assert error_of(admin.create_partitions([NewPartitions("admin-a", 2)])["admin-a"]) == (
        KafkaError.INVALID_PARTITIONS
    )

    admin.delete_topics(["admin-b"])["admin-b"].result(timeout=30)
    wait_for("admin-b gone", lambda: "admin-b" not in admin.list_topics(timeout=30).topics)
    assert error_of(admin.delete_topics(["admin-b"])["admin-b"]) == (
        KafkaError.UNKNOWN_TOPIC_OR_PART
    )


def records_and_cluster():
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    for value in range(10):
        # admin-a is compacted by now (cleanup.policy delete,compact): records need keys.
        producer.produce("admin-a", key=str(value), value=str(value), partition=0)
    producer.flush(30)
    deleted = admin.delete_records([TopicPartition("admin-a", 0, 4)])
    result = list(deleted.values())[0].result(timeout=30)
    assert result.low_watermark == 4, result
    consumer = Consumer(
        {"bootstrap.servers": BOOTSTRAP, "group.id": "g-admin", "auto.offset.reset": "earliest"}
    )
    consumer.assign([TopicPartition("admin-a", 0, -2)])
    first = consume_all(consumer, 6)
    assert [m.offset() for m in first] == list(range(4, 10))
    assert [int(m.value()) for m in first] == list(range(4, 10))
    consumer.commit(asynchronous=False)
    consumer.close()

    cluster = admin.describe_cluster().result(timeout=30)
    assert len(cluster.nodes) == 1 and cluster.cluster_id, cluster


def groups():
    listed = admin.list_consumer_groups().result(timeout=30)
    assert "g-admin" in {g.group_id for g in listed.valid}, listed.valid
    described = admin.describe_consumer_groups(["g-admin"])["g-admin"].result(timeout=30)
    assert described.state.name == "EMPTY", described.state
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("g-admin")])
    committed = offsets["g-admin"].result(timeout=30).topic_partitions
    assert [(tp.topic, tp.partition, tp.offset) for tp in committed] == [("admin-a", 0, 10)]
    admin.delete_consumer_groups(["g-admin"])["g-admin"].result(timeout=30)
    listed = admin.list_consumer_groups().result(timeout=30)
    assert "g-admin" not in {g.group_id for g in listed.valid}
    assert error_of(admin.delete_consumer_groups(["g-admin"])["g-admin"]) == (
        KafkaError.GROUP_ID_NOT_FOUND
    )


def committed(group, topic, partitions):
    """The group's committed offsets of `topic`'s partitions, as the admin client reads them."""
    wanted = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, partition) for partition in range(partitions)]
    )
    result = admin.list_consumer_group_offsets([wanted])[group].result(timeout=30)
    return [tp.offset for tp in result.topic_partitions]


def commit(group, topic, offsets):
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group})
    partitions = [TopicPartition(topic, p, offset) for p, offset in enumerate(offsets)]
    consumer.commit(offsets=partitions, asynchronous=False)
    consumer.close()


def deleting_a_topic_deletes_its_commits():
    """Kafka deletes the commits of a deleted topic: a topic created again under that name
    starts without them, so a group does not resume at an offset from the old topic."""
    for name in ("admin-gone", "admin-kept"):
        admin.create_topics([NewTopic(name, 2, 1)])[name].result(timeout=30)
    commit("g-gone", "admin-gone", [5, 7])
    commit("g-gone", "admin-kept", [3, 4])
    commit("g-other", "admin-gone", [1, 1])
    assert committed("g-gone", "admin-gone", 2) == [5, 7]
    admin.delete_topics(["admin-gone"])["admin-gone"].result(timeout=30)
    admin.create_topics([NewTopic("admin-gone", 2, 1)])["admin-gone"].result(timeout=30)
    check_forgotten()


def check_forgotten():
    for group in ("g-gone", "g-other"):
        offsets = committed(group, "admin-gone", 2)
        assert offsets == [OFFSET_INVALID, OFFSET_INVALID], (group, offsets)
    assert committed("g-gone", "admin-kept", 2) == [3, 4]


if sys.argv[2:] == ["after-restart"]:
    check_forgotten()
    print("admin: a deleted topic's commits stayed deleted after a restart")
else:
    topics_and_configs()
    records_and_cluster()
    groups()
    deleting_a_topic_deletes_its_commits()
    print("admin: topics, configs, partitions, records, cluster, groups and commits behave")
