#!/usr/bin/env python3
"""The nightly batch split into shares, simulated on real Kafka + CQL:
N workers `signals batch run --partitions A-B` as N processes, exactly as the
Helm chart's Indexed Job runs them, against one `signals batch run` over the
same log. Each configuration gets its own keyspace; every run must publish,
`signals batch verify --all` must find no drift (each published version is
exactly the recompute of the log), and the shares' users, events and
records must add up to the single run's. Prints wall time, CPU time and
peak memory per configuration (docs/SCALING.md quotes them).

usage: batch_shares.py --binary target/release/signals --brokers 127.0.0.1:19092 \
           --cql 127.0.0.1:19042 [--events 200000 --users 20000 --partitions 8 --shares 1,2,4]
Needs: confluent-kafka, fastavro (pip). Writes only its own topic and keyspaces.
"""

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import time
import uuid

import fastavro
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CURRENT_SCHEMA_ID = 2


def shares(partitions, n):
    """The chart's split (deploy/helm/signals/templates/_helpers.tpl)."""
    return [f"{i * partitions // n}-{(i + 1) * partitions // n - 1}" for i in range(n)]


def produce(brokers, topic, partitions, events, users, seed=7):
    admin = AdminClient({"bootstrap.servers": brokers})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(30)
    with open(os.path.join(ROOT, "schemas/log_record.avsc")) as f:
        schema = fastavro.parse_schema(json.load(f))
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "enable.idempotence": True,
                         "queue.buffering.max.messages": 500000})
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    kinds = ["view"] * 6 + ["click"] * 2 + ["search", "wishlist_add"]
    for i in range(events):
        # Zipf-like: a few heavy users, a long tail.
        user = f"u-{int(users * rng.random() ** 2)}"
        kind = rng.choice(kinds)
        body = {"event_id": f"e-{i}", "user_id": user, "event_type": kind,
                "item_id": None if kind == "search" else f"listing-{rng.randrange(5000)}",
                "query": f"query {rng.randrange(300)}" if kind == "search" else None,
                "event_time": now - rng.randrange(20 * 86400 * 1000),
                "attributes": {"city": rng.choice(["Paris", "Lyon", "Nice", "Lille"])}}
        if rng.random() < 0.01:  # a re-sent duplicate now and then
            body["event_id"] = f"e-{max(0, i - 1)}"
        out = io.BytesIO()
        out.write(bytes([0]) + CURRENT_SCHEMA_ID.to_bytes(4, "big"))
        fastavro.schemaless_writer(out, schema, {"accepted_at": now, "body": ("signals.v1.Event", body)})
        while True:
            try:
                producer.produce(topic, key=user.encode(), value=out.getvalue())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)


def env_for(args, topic, keyspace):
    env = dict(os.environ)
    env.update({
        "SIGNALS_LOG__BACKEND": "kafka", "SIGNALS_LOG__KAFKA__BROKERS": args.brokers,
        "SIGNALS_LOG__KAFKA__TOPIC": topic, "SIGNALS_LOG__KAFKA__DEAD_LETTER_TOPIC": f"{topic}.dlq",
        "SIGNALS_LOG__KAFKA__PARTITIONS": str(args.partitions),
        "SIGNALS_STORE__BACKEND": "scylla", "SIGNALS_STORE__SCYLLA__NODES": args.cql,
        "SIGNALS_STORE__SCYLLA__KEYSPACE": keyspace, "SIGNALS_CACHE__REDIS_URL": "",
        "SIGNALS_TELEMETRY__LOG_LEVEL": "warn",
    })
    return env


def run_workers(args, env, share_list):
    """Starts every worker at once; returns wall seconds, summaries, and
    summed CPU seconds and the largest peak RSS of the workers."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    workers = []
    for share in share_list:
        command = [args.binary, "batch", "run", "--json"] + (["--partitions", share] if share else [])
        workers.append(subprocess.Popen(["/usr/bin/time", "-f", "%M", *command], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    summaries, peak_kib = [], 0
    for worker in workers:
        out, err = worker.communicate()
        if worker.returncode != 0:
            sys.exit(f"worker failed ({worker.returncode}): {err[-2000:]}")
        summaries.append(json.loads(out))
        peak_kib = max(peak_kib, int(err.strip().splitlines()[-1]))
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, summaries, cpu, peak_kib


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--cql", required=True)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--shares", default="1,2,4")
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    topic = f"signals.sim-{run}"
    t = time.monotonic()
    produce(args.brokers, topic, args.partitions, args.events, args.users)
    print(f"produced {args.events} events of ~{args.users} users into {topic} "
          f"({args.partitions} partitions) in {time.monotonic() - t:.1f}s", file=sys.stderr)
    rows, reference, failures = [], None, 0
    for n in [int(x) for x in args.shares.split(",")]:
        keyspace = f"sim_{run}_{n}"
        env = env_for(args, topic, keyspace)
        subprocess.run([args.binary, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        share_list = [None] if n == 1 else shares(args.partitions, n)
        wall, summaries, cpu, peak = run_workers(args, env, share_list)
        published = [s for s in summaries if s["published"]]
        totals = {k: sum(s[k] for s in summaries) for k in ("users", "events", "records_written")}
        verify = subprocess.run([args.binary, "batch", "verify", "--all", "--json"], env=env,
                                capture_output=True, text=True)
        report = json.loads(verify.stdout) if verify.stdout.strip() else {}
        drift = (verify.returncode, report.get("max_mismatch_rate"), report.get("missing_users"), report.get("extra_users"))
        ok = len(published) == 1 and verify.returncode == 0 and drift[1] == 0 and drift[2] == 0 and drift[3] == 0
        if reference is None:
            reference = totals
        ok = ok and totals == reference
        failures += 0 if ok else 1
        rows.append((n, ", ".join(share_list) if n > 1 else "all", wall, cpu, peak // 1024, totals,
                     report.get("users_compared"), "yes" if ok else f"NO {drift} {totals}"))
    print("| workers | shares | wall s | CPU s (all workers) | peak RSS per worker MiB | users | events | records | verify --all users, drift 0 and sums = single run |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for n, share_text, wall, cpu, peak, totals, compared, ok in rows:
        print(f"| {n} | {share_text} | {wall:.1f} | {cpu:.1f} | {peak} | {totals['users']} | {totals['events']} | "
              f"{totals['records_written']} | {compared}: {ok} |")
    print(f"batch shares simulation: {len(rows) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
