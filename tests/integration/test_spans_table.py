"""The spans table: span messages → Parquet on S3 through the warehouse sink, exactly once."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.test_traces import sdk_trace
from tests.sinkkit import (
    REPO,
    create_topic,
    produce,
    read_table,
    start_worker,
    stop_worker,
    wait_committed,
)
from tests.spankit import request

BUCKET = "lake"


def _deployment(tmp: Path, topic: str, group: str, env: dict[str, str], root: str) -> Path:
    schemas = tmp / "schemas"
    schemas.mkdir()
    contract = yaml.safe_load((REPO / "schemas" / "spans.yaml").read_text())
    contract["topics"] = [topic]
    (schemas / "spans.yaml").write_text(yaml.safe_dump(contract))
    config = {
        "kafka": {"bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"], "session_timeout": "6s"},
        "s3": {"endpoint_url": env["AWS_ENDPOINT_URL_S3"]},
        "warehouse": {
            "root": root,
            "schemas_dir": str(schemas),
            "group_id": group,
            "tables": ["spans"],
            "rotation": {"max_age": "2s"},
        },
        "metrics": {"port": 0},
    }
    path = tmp / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_span_messages_become_one_row_per_span(
    stack_env, bootstrap, s3, unique, tmp_path, subprocess_env
) -> None:
    topic, group = f"{unique}.spans", f"{unique}-g"
    await create_topic(bootstrap, topic, 2)
    rng = random.Random(9)
    messages = [request(["search", "auth"][i % 2], 20, rng)[0] for i in range(30)]
    sdk, sdk_trace_id = sdk_trace("checkout", 4)
    messages.append(sdk)
    messages.append(b"\x08\x96\x01 not a request")
    sent = await produce(bootstrap, topic, ((i % 2, v) for i, v in enumerate(messages)))
    config = _deployment(tmp_path, topic, group, stack_env, f"s3://{BUCKET}/{unique}")
    worker = start_worker(config, tmp_path / "worker.log", subprocess_env)
    try:
        ends = {p: 1 + max(o for q, o in sent if q == p) for p in range(2)}
        await wait_committed(bootstrap, group, topic, ends, 90, [worker])
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]

    table, keys = read_table(s3, BUCKET, f"{unique}/spans/")
    expected = {}
    for (p, o), value in sent.items():
        if value is None or value.startswith(b"\x08\x96"):
            continue
        req = ExportTraceServiceRequest.FromString(value)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    expected[(p, o, span.span_id)] = span
    rows = table.to_pylist()
    got = {(r["_partition"], r["_offset"], r["span_id"]): r for r in rows}
    assert len(rows) == len(got) == len(expected) == 30 * 20 + 5  # exactly once
    assert set(got) == set(expected)
    for key, span in expected.items():
        row = got[key]
        assert row["trace_id"] == span.trace_id and row["name"] == span.name
        assert row["duration_ns"] == span.end_time_unix_nano - span.start_time_unix_nano
        start = datetime.fromtimestamp(span.start_time_unix_nano / 1e9, UTC)
        assert (row["dt"], row["hr"]) == (f"{start:%Y-%m-%d}", f"{start:%H}")
    checkout = [r for r in rows if r["trace_id"].hex() == sdk_trace_id]
    assert {r["service_name"] for r in checkout} == {"checkout"} and len(checkout) == 5
    assert all(k.startswith(f"{unique}/spans/dt=") for k in keys)
