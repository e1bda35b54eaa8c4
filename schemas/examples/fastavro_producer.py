"""Write Signals log records from Python with fastavro (pip install fastavro).

A record on the log is the Confluent wire format: 0x00, the schema id as 4
bytes big-endian, then the Avro binary datum written with that schema. The ids
are in schemas/versions; write the current one. The partitioning key (Kafka
message key) is the user id for events and user deletions, and the first
event id for a retraction.

    python3 schemas/examples/fastavro_producer.py > records.hex

prints one framed record per line, in hex; schemas/testdata/fastavro.hex is
its output, and the Rust tests decode it.
"""

import io
import json
import os
import struct

import fastavro

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "..")


def load(path):
    with open(os.path.join(SCHEMAS, path)) as f:
        return fastavro.parse_schema(json.load(f))


CURRENT_ID = 2
CURRENT = load("log_record.avsc")
V1 = load("history/log_record.v1.avsc")


def frame(schema_id, schema, record):
    """One framed record: header, then the schemaless Avro datum."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return b"\x00" + struct.pack(">I", schema_id) + buf.getvalue()


def event(**fields):
    # The body union takes (branch name, value); fields with defaults
    # (item_id, query, attributes) may be left out.
    return ("signals.v1.Event", fields)


RECORDS = [
    frame(CURRENT_ID, CURRENT, {
        "accepted_at": 1795428000500,
        "body": event(event_id="e-1", user_id="u-42", event_type="view",
                      item_id="listing-9", event_time=1795428000123,
                      attributes={"city": "Paris"}),
    }),
    frame(CURRENT_ID, CURRENT, {
        "accepted_at": 1795428000600,
        "body": event(event_id="e-2", user_id="u-42", event_type="search",
                      query="lofts", event_time=1795428000200),
    }),
    frame(CURRENT_ID, CURRENT, {
        "accepted_at": 1795428000700,
        "body": ("signals.v1.Retraction", {"event_ids": ["e-1"], "reason": "bot"}),
    }),
    frame(CURRENT_ID, CURRENT, {
        "accepted_at": 1795428000800,
        "body": ("signals.v1.UserDeletion", {"user_id": "u-42", "reason": ""}),
    }),
    # An old producer, still on schema id 1 (no attributes).
    frame(1, V1, {
        "accepted_at": 1795428000900,
        "body": event(event_id="e-3", user_id="u-7", event_type="click",
                      item_id="listing-3", query=None, event_time=1795428000300),
    }),
]

if __name__ == "__main__":
    for record in RECORDS:
        print(record.hex())
