"""The AWS Glue Data Catalog (Athena, EMR, Trino/Spark with the Glue metastore), via boto3.

Same table shape as the Hive catalog. Throttling and connection errors are transient;
validation and access errors are terminal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from pipelines.catalog.base import (
    PartitionInfo,
    compare_columns,
    partition_keys,
    partition_values,
    table_columns,
)
from pipelines.catalog.hive import PARQUET_IN, PARQUET_OUT, PARQUET_SERDE
from pipelines.errors import TerminalError, TransientError
from pipelines.tables import TableSpec

_TRANSIENT_CODES = {"ThrottlingException", "InternalServiceException", "OperationTimeoutException"}


def _sd(location: str, columns: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {
        "Columns": [{"Name": n, "Type": t} for n, t in columns],
        "Location": location,
        "InputFormat": PARQUET_IN,
        "OutputFormat": PARQUET_OUT,
        "SerdeInfo": {
            "SerializationLibrary": PARQUET_SERDE,
            "Parameters": {"serialization.format": "1"},
        },
    }


class GlueCatalog:
    """``catalog: {type: glue, database: sluice}``; region and endpoint from the AWS chain."""

    kind = "glue"

    def __init__(self, database: str, region: str, client: Any | None = None) -> None:
        self.database = database
        self.client = client or boto3.client("glue", region_name=region)
        self._db_ready = False

    def _call(self, what: str, method: str, *, absent_ok: str = "", **kwargs: Any) -> Any:
        """One Glue call, its errors translated; returns None when it fails with ``absent_ok``
        (the one error code the caller expects, e.g. ``EntityNotFoundException``)."""
        try:
            return getattr(self.client, method)(**kwargs)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if absent_ok and code == absent_ok:
                return None
            if code in _TRANSIENT_CODES:
                raise TransientError(f"Glue {code} while {what}") from err
            raise TerminalError(f"Glue refused {what}: {err}") from err
        except BotoCoreError as err:
            raise TransientError(f"Glue unreachable while {what}: {err}") from err

    def _ensure_db(self) -> None:
        if not self._db_ready:
            self._call(
                f"creating database {self.database}",
                "create_database",
                absent_ok="AlreadyExistsException",
                DatabaseInput={"Name": self.database},
            )
            self._db_ready = True

    def sync_table(self, spec: TableSpec, location: str) -> list[str]:
        self._ensure_db()
        what = f"syncing table {spec.name}"
        found = self._call(
            what,
            "get_table",
            absent_ok="EntityNotFoundException",
            DatabaseName=self.database,
            Name=spec.name,
        )
        if found is None:
            created = self._call(
                what,
                "create_table",
                absent_ok="AlreadyExistsException",
                DatabaseName=self.database,
                TableInput={
                    "Name": spec.name,
                    "TableType": "EXTERNAL_TABLE",
                    "Parameters": {"EXTERNAL": "TRUE", "classification": "parquet"},
                    "StorageDescriptor": _sd(location.rstrip("/"), table_columns(spec)),
                    "PartitionKeys": [{"Name": k, "Type": "string"} for k in partition_keys(spec)],
                },
            )
            if created is not None:
                return [n for n, _ in table_columns(spec)]
            # Another worker created it just now: evolve that one.
            found = self._call(what, "get_table", DatabaseName=self.database, Name=spec.name)
        table = found["Table"]
        sd = table["StorageDescriptor"]
        evolution = compare_columns(spec, [(c["Name"], c["Type"]) for c in sd["Columns"]])
        if evolution.problems:
            raise TerminalError(
                f"table {self.database}.{spec.name}: " + "; ".join(evolution.problems)
            )
        if evolution.added:
            sd["Columns"] = [*sd["Columns"], *({"Name": n, "Type": t} for n, t in evolution.added)]
            keep = (
                "Name",
                "Description",
                "Owner",
                "Retention",
                "StorageDescriptor",
                "PartitionKeys",
                "TableType",
                "Parameters",
            )
            self._call(
                what,
                "update_table",
                DatabaseName=self.database,
                TableInput={k: table[k] for k in keep if k in table},
            )
        return [n for n, _ in evolution.added]

    def add_partitions(self, spec: TableSpec, location: str, paths: Sequence[str]) -> None:
        if not paths:
            return
        self._ensure_db()
        table = self._call(
            "reading table", "get_table", DatabaseName=self.database, Name=spec.name
        )["Table"]
        cols = [(c["Name"], c["Type"]) for c in table["StorageDescriptor"]["Columns"]]
        for start in range(0, len(paths), 100):
            batch = paths[start : start + 100]
            result = self._call(
                f"registering partitions of {spec.name}",
                "batch_create_partition",
                DatabaseName=self.database,
                TableName=spec.name,
                PartitionInputList=[
                    {
                        "Values": partition_values(spec, p),
                        "StorageDescriptor": _sd(f"{location.rstrip('/')}/{p}", cols),
                        "Parameters": {},
                    }
                    for p in batch
                ],
            )
            failed = [
                e
                for e in result.get("Errors", [])
                if e["ErrorDetail"]["ErrorCode"] != "AlreadyExistsException"
            ]
            if failed:
                raise TransientError(f"Glue did not register {len(failed)} partitions: {failed[0]}")

    def partitions(self, spec: TableSpec) -> list[PartitionInfo]:
        keys = partition_keys(spec)
        out: list[PartitionInfo] = []
        token = ""
        while True:
            page = self._call(
                f"listing partitions of {spec.name}",
                "get_partitions",
                DatabaseName=self.database,
                TableName=spec.name,
                **({"NextToken": token} if token else {}),
            )
            for p in page["Partitions"]:
                out.append(
                    PartitionInfo(
                        "/".join(f"{k}={v}" for k, v in zip(keys, p["Values"], strict=True)),
                        p["StorageDescriptor"]["Location"],
                        dict(p.get("Parameters", {})),
                    )
                )
            token = page.get("NextToken", "")
            if not token:
                return sorted(out, key=lambda i: i.path)

    def _update(
        self, spec: TableSpec, path: str, location: str | None, params: Mapping[str, str]
    ) -> None:
        values = partition_values(spec, path)
        what = f"updating partition {spec.name}/{path}"
        part = self._call(
            what,
            "get_partition",
            DatabaseName=self.database,
            TableName=spec.name,
            PartitionValues=values,
        )["Partition"]
        sd = part["StorageDescriptor"]
        if location is not None:
            sd["Location"] = location.rstrip("/")
        self._call(
            what,
            "update_partition",
            DatabaseName=self.database,
            TableName=spec.name,
            PartitionValueList=values,
            PartitionInput={
                "Values": values,
                "StorageDescriptor": sd,
                "Parameters": {**part.get("Parameters", {}), **params},
            },
        )

    def set_partition_location(self, spec: TableSpec, path: str, location: str) -> None:
        self._update(spec, path, location, {})

    def set_partition_parameters(
        self, spec: TableSpec, path: str, parameters: Mapping[str, str]
    ) -> None:
        self._update(spec, path, None, parameters)
