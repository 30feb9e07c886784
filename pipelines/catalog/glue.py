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

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(**kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in _TRANSIENT_CODES:
                raise TransientError(f"Glue {code} while {what}") from err
            raise
        except BotoCoreError as err:
            raise TransientError(f"Glue unreachable while {what}: {err}") from err

    def _code(self, err: ClientError) -> str:
        return str(err.response.get("Error", {}).get("Code", ""))

    def _ensure_db(self) -> None:
        if self._db_ready:
            return
        try:
            self._call(
                "creating the database", "create_database", DatabaseInput={"Name": self.database}
            )
        except ClientError as err:
            if self._code(err) != "AlreadyExistsException":
                raise TerminalError(
                    f"Glue refused creating database {self.database}: {err}"
                ) from err
        self._db_ready = True

    def sync_table(self, spec: TableSpec, location: str) -> list[str]:
        self._ensure_db()
        what = f"syncing table {spec.name}"
        try:
            table = self._call(what, "get_table", DatabaseName=self.database, Name=spec.name)[
                "Table"
            ]
        except ClientError as err:
            if self._code(err) != "EntityNotFoundException":
                raise TerminalError(f"Glue refused {what}: {err}") from err
            self._call(
                what,
                "create_table",
                DatabaseName=self.database,
                TableInput={
                    "Name": spec.name,
                    "TableType": "EXTERNAL_TABLE",
                    "Parameters": {"EXTERNAL": "TRUE", "classification": "parquet"},
                    "StorageDescriptor": _sd(location.rstrip("/"), table_columns(spec)),
                    "PartitionKeys": [{"Name": k, "Type": "string"} for k in partition_keys(spec)],
                },
            )
            return [n for n, _ in table_columns(spec)]
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
        paginator = self.client.get_paginator("get_partitions")
        for page in paginator.paginate(DatabaseName=self.database, TableName=spec.name):
            for p in page["Partitions"]:
                out.append(
                    PartitionInfo(
                        "/".join(f"{k}={v}" for k, v in zip(keys, p["Values"], strict=True)),
                        p["StorageDescriptor"]["Location"],
                        dict(p.get("Parameters", {})),
                    )
                )
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
