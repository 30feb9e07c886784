"""The Glue catalog (Athena's path) against moto's Glue endpoint, a real HTTP server."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import pytest

from pipelines.catalog.base import FINAL_PARAMETER
from pipelines.catalog.glue import GlueCatalog
from pipelines.errors import TerminalError
from pipelines.table_types import parse_type
from pipelines.tables import Column, load_table
from tests.sinkkit import free_port

REPO = Path(__file__).resolve().parents[2]
SPEC = load_table(REPO / "schemas" / "app_logs.yaml")
LOCATION = "s3://lake/glue/app_logs"


@pytest.fixture(scope="module")
def glue() -> Iterator[object]:
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield boto3.client(
            "glue",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
    finally:
        server.terminate()
        server.wait(10)


def test_glue_tables_partitions_evolution(glue) -> None:  # type: ignore[no-untyped-def]
    catalog = GlueCatalog("sluice", "us-east-1", client=glue)
    assert "event_id" in catalog.sync_table(SPEC, LOCATION)
    table = glue.get_table(DatabaseName="sluice", Name="app_logs")["Table"]
    assert table["TableType"] == "EXTERNAL_TABLE"
    assert [k["Name"] for k in table["PartitionKeys"]] == ["dt", "hr"]
    cols = {c["Name"]: c["Type"] for c in table["StorageDescriptor"]["Columns"]}
    assert (cols["ts"], cols["user_id"], cols["attrs"]) == (
        "timestamp",
        "bigint",
        "map<string,string>",
    )
    assert table["StorageDescriptor"]["Location"] == LOCATION

    paths = ["dt=2026-11-25/hr=05", "dt=2026-11-25/hr=06"]
    catalog.add_partitions(SPEC, LOCATION, paths)
    catalog.add_partitions(SPEC, LOCATION, paths[:1])  # idempotent
    parts = catalog.partitions(SPEC)
    assert [p.path for p in parts] == paths
    assert parts[0].location == f"{LOCATION}/{paths[0]}"

    catalog.set_partition_parameters(SPEC, paths[0], {FINAL_PARAMETER: "true"})
    catalog.set_partition_location(SPEC, paths[1], "s3://lake/glue/rebuilt/hr=06")
    parts = catalog.partitions(SPEC)
    assert parts[0].parameters[FINAL_PARAMETER] == "true"
    assert parts[1].location == "s3://lake/glue/rebuilt/hr=06"

    # A nullable column is added; a type change is refused and nothing changes.
    region = Column("region", parse_type("string"), "string")
    evolved = replace(SPEC, columns=(*SPEC.columns, region))
    assert catalog.sync_table(evolved, LOCATION) == ["region"]
    got = glue.get_table(DatabaseName="sluice", Name="app_logs")["Table"]
    assert got["StorageDescriptor"]["Columns"][-1] == {"Name": "region", "Type": "string"}
    retyped = replace(
        evolved,
        columns=tuple(
            Column(c.name, parse_type("string"), "string") if c.name == "status" else c
            for c in evolved.columns
        ),
    )
    with pytest.raises(TerminalError, match=r"status.*int -> string"):
        catalog.sync_table(retyped, LOCATION)
    assert catalog.sync_table(evolved, LOCATION) == []
