"""MQTT scenarios with paho-mqtt 2.x against the broker: `mqtt_paho.py MQTT_HOST:PORT
SCENARIO [KAFKA_HOST:PORT]`. Each scenario asserts what the clients see and exits non-zero
(with the assertion) when the broker misbehaves."""

import queue
import socket
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common import wait_for

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5


class Client:
    """A paho client whose messages, connects and disconnects land in queues."""

    def __init__(self, address, version, client_id=None, clean=True, expiry=None,
                 will=None, properties=None, websocket_path=None):
        self.address = address
        self.version = version
        self.client_id = client_id or f"paho-{uuid.uuid4().hex[:8]}"
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.subacks = queue.Queue()
        kwargs = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2,
                  "client_id": self.client_id, "protocol": version}
        if version != V5:
            kwargs["clean_session"] = clean
        if websocket_path:
            kwargs["transport"] = "websockets"
        self.client = mqtt.Client(**kwargs)
        if websocket_path:
            self.client.ws_set_options(path=websocket_path)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = lambda c, u, f, rc, p: self.connacks.put((f, rc, p))
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(rc)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(codes)
        if will:
            topic, payload, qos, retain, will_properties = will
            self.client.will_set(topic, payload, qos, retain, will_properties)
        self.clean = clean
        self.expiry = expiry
        self.properties = properties

    def connect(self):
        host, port = self.address.split(":")
        kwargs = {}
        if self.version == V5:
            kwargs["clean_start"] = self.clean
            properties = self.properties or Properties(PacketTypes.CONNECT)
            if self.expiry is not None:
                properties.SessionExpiryInterval = self.expiry
            kwargs["properties"] = properties
        self.client.connect(host, int(port), keepalive=30, **kwargs)
        self.client.loop_start()
        flags, rc, properties = self.connacks.get(timeout=10)
        assert not rc.is_failure, f"CONNACK {rc}"
        return flags, properties

    def subscribe(self, topic, qos=1, **options):
        if self.version == V5:
            self.client.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos, **options))
        else:
            self.client.subscribe(topic, qos)
        codes = self.subacks.get(timeout=10)
        assert all(not c.is_failure for c in codes), f"SUBACK {codes}"

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        info = self.client.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"{topic} not acknowledged"

    def message(self, timeout=10):
        return self.messages.get(timeout=timeout)

    def drain(self, wait=2.0):
        """The messages that come until none has for `wait` seconds."""
        messages = []
        while True:
            try:
                messages.append(self.messages.get(timeout=wait))
            except queue.Empty:
                return messages

    def no_message(self, wait=1.0):
        try:
            message = self.messages.get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {message.topic}: {message.payload!r}")

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self):
        """Closes the socket without DISCONNECT (an abnormal disconnect)."""
        self.client.socket().shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()


def queue_while_away(address, version, client_id, prefix, text, count, qos):
    """A persistent session subscribes to `prefix/#` and goes away; then `count` messages
    `text 0`, `text 1`... are published to `prefix/x` at `qos`, each acknowledged."""
    keeper = Client(address, version, client_id=client_id, clean=False, expiry=300)
    keeper.connect()
    keeper.subscribe(f"{prefix}/#", qos=qos)
    keeper.stop()
    publisher = Client(address, version)
    publisher.connect()
    for index in range(count):
        publisher.publish(f"{prefix}/x", f"{text} {index}".encode(), qos=qos)
    publisher.stop()


def will_on_abnormal_disconnect(address):
    """MQTT-3.1.2-8: the will is published when the connection ends without DISCONNECT;
    MQTT-3.1.2-10: a DISCONNECT discards it."""
    for version in (V311, V5):
        watcher = Client(address, version)
        watcher.connect()
        watcher.subscribe("wills/#", qos=1)
        dying = Client(address, version, will=("wills/dying", b"gone", 1, False, None))
        dying.connect()
        dying.drop()
        message = watcher.message()
        assert (message.topic, message.payload) == ("wills/dying", b"gone"), message
        polite = Client(address, version, will=("wills/polite", b"gone", 1, False, None))
        polite.connect()
        polite.stop()
        watcher.no_message()
        watcher.stop()


def retained_messages(address):
    """MQTT-3.3.1-5, MQTT-3.3.1-9, MQTT-3.3.1-10: a retained message reaches a later
    subscriber with RETAIN set, a newer one replaces it, an empty one clears it."""
    publisher = Client(address, V5)
    publisher.connect()
    publisher.publish("rooms/kitchen", b"19", qos=1, retain=True)
    publisher.publish("rooms/kitchen", b"20", qos=1, retain=True)
    publisher.publish("rooms/hall", b"18", qos=1, retain=True)
    reader = Client(address, V311)
    reader.connect()
    reader.subscribe("rooms/+", qos=1)
    got = sorted((reader.message(), reader.message()), key=lambda m: m.topic)
    assert [(m.topic, m.payload, m.retain) for m in got] == [
        ("rooms/hall", b"18", True), ("rooms/kitchen", b"20", True)], got
    # A live message is not retained to a subscriber (MQTT-3.3.1-9, 3.1.1 wording).
    publisher.publish("rooms/hall", b"17", qos=1, retain=True)
    live = reader.message()
    assert (live.payload, live.retain) == (b"17", False), live
    publisher.publish("rooms/hall", b"", qos=1, retain=True)
    assert reader.message().payload == b""
    later = Client(address, V5)
    later.connect()
    later.subscribe("rooms/#", qos=1)
    message = later.message()
    assert (message.topic, message.payload) == ("rooms/kitchen", b"20"), message
    later.no_message()
    # Retain handling 2: none at subscribe.
    quiet = Client(address, V5)
    quiet.connect()
    quiet.subscribe("rooms/#", qos=1, retainHandling=2)
    quiet.no_message()
    for client in (publisher, reader, later, quiet):
        client.stop()


def retained_check(address):
    """After a restart: the retained message published before it is still there."""
    reader = Client(address, V311)
    reader.connect()
    reader.subscribe("rooms/#", qos=1)
    message = reader.message()
    assert (message.topic, message.payload, message.retain) == ("rooms/kitchen", b"20", True)
    reader.no_message()
    reader.stop()


def qos2_exactly_once_across_reconnect(address):
    """A persistent session keeps its subscription and the QoS 2 messages published while it
    was away: they arrive once each, in order, after it comes back (MQTT-3.1.2-5,
    MQTT-4.3.3-x)."""
    for version in (V311, V5):
        name = f"keeper-{version}"
        queue_while_away(address, version, name, f"orders/{version}", "order", 20, qos=2)
        keeper = Client(address, version, client_id=name, clean=False, expiry=300)
        flags, _ = keeper.connect()
        assert flags.session_present, "the session was kept"
        payloads = [keeper.message().payload for _ in range(20)]
        assert payloads == [f"order {i}".encode() for i in range(20)], payloads
        keeper.no_message()
        keeper.stop()
        # A clean start drops it (MQTT-3.1.2-4).
        fresh = Client(address, version, client_id=name, clean=True, expiry=0)
        flags, _ = fresh.connect()
        assert not flags.session_present
        fresh.stop()


def request_response(address):
    """5.0 request/response: the response topic and correlation data reach the responder,
    whose answer reaches the requester with the correlation data (MQTT-3.3.2-15/16)."""
    responder = Client(address, V5)
    responder.connect()
    responder.subscribe("service/requests", qos=1)
    requester = Client(address, V5)
    requester.connect()
    requester.subscribe("service/replies/me", qos=1)
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "service/replies/me"
    properties.CorrelationData = b"\x00\x2a"
    properties.ContentType = "text/plain"
    properties.PayloadFormatIndicator = 1
    properties.UserProperty = [("trace", "abc"), ("trace", "def")]
    properties.MessageExpiryInterval = 120
    requester.publish("service/requests", b"ping", qos=1, properties=properties)
    request = responder.message()
    got = request.properties
    assert got.ResponseTopic == "service/replies/me", got
    assert got.CorrelationData == b"\x00\x2a", got
    assert got.ContentType == "text/plain", got
    assert got.PayloadFormatIndicator == 1, got
    assert got.UserProperty == [("trace", "abc"), ("trace", "def")], got
    assert 100 <= got.MessageExpiryInterval <= 120, got
    reply = Properties(PacketTypes.PUBLISH)
    reply.CorrelationData = got.CorrelationData
    responder.publish(got.ResponseTopic, b"pong", qos=1, properties=reply)
    answer = requester.message()
    assert (answer.payload, answer.properties.CorrelationData) == (b"pong", b"\x00\x2a")
    responder.stop()
    requester.stop()


def topic_aliases(address):
    """A client publishes by topic alias (MQTT-3.3.2-12) and every message arrives on its
    topic. (paho-mqtt 2.1 does not resolve aliases it receives, so the server's own aliases
    are checked on a raw connection in tests/mqtt.rs.)"""
    subscriber = Client(address, V5)
    subscriber.connect()
    subscriber.subscribe("alias/#", qos=1)
    publisher = Client(address, V5)
    _, connack = publisher.connect()
    assert connack.TopicAliasMaximum >= 1, connack
    first = Properties(PacketTypes.PUBLISH)
    first.TopicAlias = 1
    publisher.publish("alias/a", b"1", qos=1, properties=first)
    by_alias = Properties(PacketTypes.PUBLISH)
    by_alias.TopicAlias = 1
    publisher.publish("", b"2", qos=1, properties=by_alias)
    publisher.publish("alias/b", b"3", qos=1)
    got = [(m.topic, m.payload) for m in (subscriber.message() for _ in range(3))]
    assert sorted(got) == [("alias/a", b"1"), ("alias/a", b"2"), ("alias/b", b"3")], got
    # An alias over the maximum closes with 0x94 (MQTT-3.3.2-9).
    wrong = Properties(PacketTypes.PUBLISH)
    wrong.TopicAlias = 1000
    publisher.client.publish("alias/c", b"4", 1, False, wrong)
    reason = publisher.disconnects.get(timeout=10)
    assert reason == 0x94, reason
    subscriber.stop()


def oversized_packets(address):
    """A packet over the maximum packet size closes the connection, after DISCONNECT 0x95
    for a 5.0 client (MQTT-3.2.2-x); the CONNACK says the maximum."""
    client = Client(address, V5)
    _, connack = client.connect()
    limit = connack.MaximumPacketSize
    assert limit == 4096, connack
    client.publish("big/ok", b"x" * 100, qos=1)
    client.client.publish("big/no", b"x" * (limit + 10), 1)
    reason = client.disconnects.get(timeout=10)
    assert reason == 0x95, reason
    old = Client(address, V311)
    old.connect()
    old.client.publish("big/no", b"x" * (limit + 10), 1)
    reason = old.disconnects.get(timeout=10)
    assert reason != 0, reason


def subscription_options(address):
    """5.0 subscription options: no-local (MQTT-3.8.3-3), retain as published, subscription
    identifiers (MQTT-3.3.4-3), and overlapping subscriptions delivered once at the highest
    QoS (MQTT-3.3.4-2)."""
    client = Client(address, V5)
    client.connect()
    client.subscribe("opts/self", qos=1, noLocal=True)
    client.publish("opts/self", b"mine", qos=1)
    client.no_message()
    watcher = Client(address, V5)
    watcher.connect()
    identified = Properties(PacketTypes.SUBSCRIBE)
    identified.SubscriptionIdentifier = 7
    watcher.client.subscribe("opts/+", options=mqtt.SubscribeOptions(qos=1), properties=identified)
    watcher.subacks.get(timeout=10)
    watcher.client.subscribe("opts/#", options=mqtt.SubscribeOptions(qos=2, retainAsPublished=True))
    watcher.subacks.get(timeout=10)
    client.publish("opts/x", b"both", qos=2, retain=True)
    message = watcher.message()
    assert message.qos == 2, message.qos
    assert message.retain, "retain as published"
    assert message.properties.SubscriptionIdentifier == [7], message.properties
    watcher.no_message()
    client.stop()
    watcher.stop()


def shared_subscriptions(address):
    """$share/{group}/{filter} (MQTT 5.0 section 4.8.2, and from 3.1.1 clients): each message
    goes to one member of the group, every member gets a share, and a plain subscription of
    the same filter still gets every message."""
    workers = [Client(address, version) for version in (V5, V5, V311, V311)]
    for worker in workers:
        worker.connect()
        worker.subscribe("$share/workers/jobs/#", qos=1)
    watcher = Client(address, V5)
    watcher.connect()
    watcher.subscribe("jobs/#", qos=1)
    publisher = Client(address, V5)
    publisher.connect()
    count = 400
    for index in range(count):
        publisher.publish(f"jobs/{index % 10}", str(index).encode(), qos=1)
    seen = [m.payload for m in (watcher.message() for _ in range(count))]
    assert sorted(seen) == sorted(str(i).encode() for i in range(count)), "the plain one gets all"
    shares = [[m.payload for m in worker.drain()] for worker in workers]
    everything = [payload for share in shares for payload in share]
    assert len(everything) == count, f"{len(everything)} deliveries for {count} messages"
    assert sorted(everything) == sorted(seen), "each message once"
    assert all(len(share) > count // 10 for share in shares), [len(s) for s in shares]
    # A member that leaves gets nothing more; the others take its share.
    workers[0].stop()
    time.sleep(0.5)
    for index in range(100):
        publisher.publish(f"jobs/{index % 10}", f"late {index}".encode(), qos=1)
    late = [m.payload for worker in workers[1:] for m in worker.drain()]
    assert len(late) == 100, len(late)
    for client in workers[1:] + [watcher, publisher]:
        client.stop()


def durable_before(address):
    """Before a restart: persistent sessions (3.1.1 clean session 0, 5.0 expiry 300)
    subscribe and go away; messages are published for them while they are away."""
    for version in (V311, V5):
        queue_while_away(address, version, f"durable-{version}", f"durable/{version}", "before",
                         10, qos=1)


def durable_after(address):
    """After the restart: each session is still there (session present), gets the messages
    queued before the restart once each and in order, and its subscription still works
    (MQTT-3.1.2-23, MQTT-3.1.2-5 of 3.1.1)."""
    for version in (V311, V5):
        keeper = Client(address, version, client_id=f"durable-{version}", clean=False,
                        expiry=300)
        flags, _ = keeper.connect()
        assert flags.session_present, "the session survived the restart"
        payloads = [keeper.message().payload for _ in range(10)]
        assert payloads == [f"before {i}".encode() for i in range(10)], payloads
        publisher = Client(address, version)
        publisher.connect()
        publisher.publish(f"durable/{version}/x", b"after", qos=1)
        assert keeper.message().payload == b"after"
        keeper.no_message()
        keeper.stop()
        publisher.stop()


CROSS_COUNT = 300


def cross_before(address, bootstrap):
    """Before a broker kill: a persistent MQTT session subscribes and goes away; a
    confluent-kafka producer (acks=all, idempotent) and a paho publisher (QoS 1) each write
    CROSS_COUNT messages, every one acknowledged."""
    from confluent_kafka import Producer

    keeper = Client(address, V5, client_id="cross-keeper", clean=False, expiry=600)
    keeper.connect()
    keeper.subscribe("bridge/#", qos=1)
    keeper.stop()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "partitioner": "murmur2_random"})
    failures = []
    for index in range(CROSS_COUNT):
        producer.produce("mqtt", key=f"bridge/kafka/{index % 5}", value=f"k{index}",
                         headers=[("origin", b"kafka")],
                         on_delivery=lambda err, msg: err and failures.append(err))
    assert producer.flush(30) == 0 and not failures, failures
    publisher = Client(address, V311)
    publisher.connect()
    for index in range(CROSS_COUNT):
        publisher.publish(f"bridge/mqtt/{index % 5}", f"m{index}".encode(), qos=1)
    publisher.stop()


def cross_after(address, bootstrap):
    """After the kill: the MQTT session gets every message written on both sides before it,
    once each; a Kafka consumer reads every MQTT message with its topic as key, in order per
    topic, and its QoS in a header."""
    from confluent_kafka import Consumer

    keeper = Client(address, V5, client_id="cross-keeper", clean=False, expiry=600)
    flags, _ = keeper.connect()
    assert flags.session_present
    got = [keeper.message(timeout=20) for _ in range(2 * CROSS_COUNT)]
    payloads = sorted(m.payload.decode() for m in got)
    expected = sorted([f"k{i}" for i in range(CROSS_COUNT)] + [f"m{i}" for i in range(CROSS_COUNT)])
    assert payloads == expected, "every acknowledged message, once"
    kafka_side = [m for m in got if m.payload.startswith(b"k")]
    assert all(m.topic.startswith("bridge/kafka/") for m in kafka_side)
    keeper.no_message()
    keeper.stop()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "cross-check",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["mqtt"])
    records = []
    deadline = time.monotonic() + 60
    while len(records) < 2 * CROSS_COUNT and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            records.append(message)
    consumer.close()
    assert len(records) == 2 * CROSS_COUNT, len(records)
    by_key = {}
    for record in records:
        by_key.setdefault(record.key().decode(), []).append(record)
    for index in range(5):
        mqtt_records = by_key[f"bridge/mqtt/{index}"]
        values = [r.value().decode() for r in mqtt_records]
        assert values == [f"m{i}" for i in range(index, CROSS_COUNT, 5)], values[:5]
        headers = dict(mqtt_records[0].headers())
        assert headers["mqtt.qos"] == b"1", headers


def websockets(address, bootstrap):
    """MQTT over WebSockets (subprotocol mqtt, path /mqtt): clients of both levels publish and
    subscribe through it; the messages are Kafka records as over TCP."""
    from confluent_kafka import Consumer

    for version in (V311, V5):
        subscriber = Client(address, version, websocket_path="/mqtt")
        subscriber.connect()
        subscriber.subscribe(f"web/{version}/#", qos=1)
        publisher = Client(address, version, websocket_path="/mqtt")
        publisher.connect()
        big = b"w" * 200_000
        for index in range(20):
            publisher.publish(f"web/{version}/x", f"ws {index}".encode(), qos=1)
        publisher.publish(f"web/{version}/big", big, qos=1)
        got = [subscriber.message().payload for _ in range(21)]
        assert got[:20] == [f"ws {i}".encode() for i in range(20)], got[:3]
        assert got[20] == big, len(got[20])
        subscriber.stop()
        publisher.stop()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ws-check",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe(["mqtt"])
    keys = set()
    deadline = time.monotonic() + 30
    while len(keys) < 4 and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            keys.add(message.key().decode())
    consumer.close()
    assert keys == {f"web/{v}/{t}" for v in (V311, V5) for t in ("x", "big")}, keys
    # RFC 6455 section 5.5.2: a ping gets a pong of its payload, between the MQTT packets
    # of the same connection (websocket-client; paho sends no pings).
    import websocket
    ws = websocket.create_connection(f"ws://{address}/mqtt", subprotocols=["mqtt"])
    client_id = b"pinger"
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    ws.send_binary(bytes([0x10, len(variable)]) + variable)
    assert ws.recv_data_frame(True)[1].data == b"\x20\x02\x00\x00", "CONNACK"
    for payload in (b"", b"are you there"):
        ws.ping(payload)
        opcode, frame = ws.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_PONG and frame.data == payload, (opcode, frame)
    ws.send_binary(b"\xc0\x00")
    assert ws.recv_data_frame(True)[1].data == b"\xd0\x00", "PINGRESP"
    ws.close()


SCENARIOS = {f.__name__: f for f in (
    will_on_abnormal_disconnect, retained_messages, retained_check,
    qos2_exactly_once_across_reconnect, request_response, topic_aliases,
    oversized_packets, subscription_options, shared_subscriptions, durable_before,
    durable_after, cross_before, cross_after, websockets)}

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} MQTT_HOST:PORT SCENARIO [KAFKA_HOST:PORT]")
    scenario = SCENARIOS[sys.argv[2]]
    arguments = [sys.argv[1], *sys.argv[3:]]
    scenario(*arguments[:scenario.__code__.co_argcount])
    print(f"{sys.argv[2]}: ok")
