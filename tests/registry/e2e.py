#!/usr/bin/env python3
"""Signals beside a real Confluent-compatible schema registry, end to end.

Outside producers write to Signals' topic with Python's confluent-kafka
AvroSerializer (registry ids, no hand-kept ids): one with Signals' own
schema (schemas/log_record.avsc), one with a compatible evolution of it (an
extra optional field, registered as a new version). Signals (`signals up`
on the Kafka log, `log.kafka.schema_registry_url` set) must count both,
frame what its collector appends with the registry's id (an outside
AvroDeserializer reads it back), and dead-letter a record framed with the
id of a schema it cannot read, without counting it.

usage: e2e.py SIGNALS_BINARY   with SIGNALS_TEST_KAFKA_BROKERS and
       SIGNALS_TEST_SCHEMA_REGISTRY_URL set (e.g. Karapace on loopback)
Needs: confluent-kafka, fastavro, requests (pip).
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import requests
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA = (ROOT / "schemas/log_record.avsc").read_text()
BROKERS = os.environ["SIGNALS_TEST_KAFKA_BROKERS"]
REGISTRY = os.environ["SIGNALS_TEST_SCHEMA_REGISTRY_URL"].rstrip("/")

passed = failed = 0


def check(what, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what} {detail}")


def evolved_schema():
    """log_record.avsc with Event.referrer (optional, default null) appended:
    a BACKWARD-compatible new version, as an outside team would make it."""
    schema = json.loads(SCHEMA)
    for branch in schema["fields"][1]["type"]:
        if isinstance(branch, dict) and branch.get("name") == "Event":
            branch["fields"].append({"name": "referrer", "type": ["null", "string"], "default": None})
    return json.dumps(schema)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def event(event_id, user, item, now_ms):
    return {
        "accepted_at": now_ms,
        "body": ("signals.v1.Event", {
            "event_id": event_id, "user_id": user, "event_type": "view", "item_id": item,
            "query": None, "event_time": now_ms - 1000, "attributes": {"source": "python"},
        }),
    }


def signals_of(base, user):
    answer = requests.get(f"{base}/v1/users/{user}/signals", timeout=5)
    answer.raise_for_status()
    return answer.json()["signals"]


def main(binary):
    run = uuid.uuid4().hex[:8]
    topic, dlq = f"signals.registry-e2e.{run}", f"signals.registry-e2e.{run}.dlq"
    subject = f"{topic}-value"
    user = f"u-reg-{run}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    registry = SchemaRegistryClient({"url": REGISTRY})
    now = int(time.time() * 1000)

    with tempfile.TemporaryDirectory() as data:
        config = pathlib.Path(data, "signals.toml")
        config.write_text(f"""
data_dir = "{data}"
[server]
listen = "127.0.0.1:{port}"
[log]
backend = "kafka"
[log.kafka]
brokers = "{BROKERS}"
topic = "{topic}"
dead_letter_topic = "{dlq}"
partitions = 2
schema_registry_url = "{REGISTRY}"
[batch]
schedule = "off"
""")
        process = subprocess.Popen([binary, "--config", str(config), "up"],
                                   stdout=subprocess.DEVNULL, stderr=open(pathlib.Path(data, "signals.log"), "w"))
        try:
            for _ in range(300):
                try:
                    if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if process.poll() is not None:
                    break
                time.sleep(0.2)
            ready = process.poll() is None
            check("signals up registers its schema and gets ready", ready,
                  pathlib.Path(data, "signals.log").read_text()[-3000:] if not ready else "")
            if not ready:
                return
            versions = requests.get(f"{REGISTRY}/subjects/{subject}/versions", timeout=5).json()
            own = registry.get_version(subject, versions[0])
            check(f"subject {subject} holds Signals' schema (id {own.schema_id})", len(versions) == 1)

            producer = Producer({"bootstrap.servers": BROKERS, "enable.idempotence": True})
            same = AvroSerializer(registry, SCHEMA)
            newer = AvroSerializer(registry, evolved_schema())
            context = SerializationContext(topic, MessageField.VALUE)
            first = same(event(f"e1-{run}", user, "listing-1", now), context)
            second_record = event(f"e2-{run}", user, "listing-2", now)
            second_record["body"][1]["referrer"] = "newsletter"
            second = newer(second_record, context)
            producer.produce(topic, key=user.encode(), value=first)
            producer.produce(topic, key=user.encode(), value=second)
            producer.flush(10)
            first_id = int.from_bytes(first[1:5], "big")
            second_id = int.from_bytes(second[1:5], "big")
            check("the Confluent serializer with Signals' schema uses Signals' registry id",
                  first_id == own.schema_id, f"{first_id} != {own.schema_id}")
            check("the evolved schema got a new registry id", second_id != first_id)

            # One more through Signals' own collector.
            posted = requests.post(f"{base}/v1/events", timeout=10, json=[{
                "event_id": f"e3-{run}", "user_id": user, "event_type": "view",
                "item_id": "listing-3", "event_time": now - 500}])
            check("the collector accepts an event", posted.ok and posted.json().get("accepted") == 1, posted.text)

            # A record framed with the id of a schema Signals cannot read.
            other = registry.register_schema(f"registry-e2e-other-{run}-value",
                                             __import__("confluent_kafka.schema_registry", fromlist=["Schema"]).Schema('"string"', "AVRO"))
            producer.produce(topic, key=user.encode(), value=bytes([0]) + other.to_bytes(4, "big") + b"\x06abc")
            producer.flush(10)

            deadline = time.time() + 60
            answer = {}
            while time.time() < deadline:
                answer = signals_of(base, user)
                if answer.get("views_24h") == 3:
                    break
                time.sleep(0.25)
            check("the speed layer counts both outside records and the collector's (views_24h = 3)",
                  answer.get("views_24h") == 3, json.dumps(answer))
            check("recent_views lists all three, newest first",
                  answer.get("recent_views") == ["listing-3", "listing-2", "listing-1"], json.dumps(answer.get("recent_views")))

            # An outside consumer reads every record, Signals' own included.
            consumer = Consumer({"bootstrap.servers": BROKERS, "group.id": f"registry-e2e-{run}",
                                 "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
            consumer.subscribe([topic])
            deserialize = AvroDeserializer(registry)
            read, ids = [], []
            deadline = time.time() + 30
            while len(read) < 4 and time.time() < deadline:
                message = consumer.poll(1.0)
                if message is None or message.error():
                    continue
                ids.append(int.from_bytes(message.value()[1:5], "big"))
                if ids[-1] == other:
                    read.append(None)
                    continue
                read.append(deserialize(message.value(), context))
            consumer.close()
            items = sorted(r["body"]["item_id"] for r in read if r)
            check("an outside AvroDeserializer reads the three events, Signals' own included",
                  items == ["listing-1", "listing-2", "listing-3"], f"{items} ids {ids}")
            check("the collector's record is framed with the registry's id",
                  ids.count(own.schema_id) == 2, f"ids {ids}, Signals' id {own.schema_id}")

            dead = Consumer({"bootstrap.servers": BROKERS, "group.id": f"registry-e2e-dlq-{run}",
                             "auto.offset.reset": "earliest"})
            dead.subscribe([dlq])
            letters = []
            deadline = time.time() + 30
            while not letters and time.time() < deadline:
                message = dead.poll(1.0)
                if message is not None and not message.error():
                    letters.append(dict(message.headers() or []))
            dead.close()
            reason = letters[0].get("signals.reason", b"").decode() if letters else ""
            check("the unreadable record went to the dead-letter topic with its reason",
                  bool(letters) and str(other) in reason, f"{letters}")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                code = "killed"
            check("signals stops cleanly on SIGTERM", code == 0, f"exit {code}")
    print(f"schema registry e2e: {passed} passed, {failed} failed")


if __name__ == "__main__":
    main(sys.argv[1])
    sys.exit(1 if failed else 0)
