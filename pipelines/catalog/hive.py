"""The Hive Metastore catalog (Thrift API, HMS 3.x), read by Hive, Spark, Trino and Presto.

Tables are EXTERNAL, Parquet, partitioned by ``dt`` (and ``hr``) strings. Every call opens a
short Thrift connection (the metastore drops idle ones), so a worker holds no socket between
cuts. Thrift transport failures are transient; metastore refusals (bad DDL) are terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import urlparse

from hive_metastore_client import HiveMetastoreClient
from thrift.Thrift import TException
from thrift.transport.TTransport import TTransportException
from thrift_files.libraries.thrift_hive_metastore_client.ttypes import (
    AlreadyExistsException,
    Database,
    FieldSchema,
    InvalidOperationException,
    MetaException,
    NoSuchObjectException,
    Partition,
    SerDeInfo,
    StorageDescriptor,
    Table,
)

from pipelines.catalog.base import (
    PartitionInfo,
    compare_columns,
    partition_keys,
    partition_values,
    table_columns,
)
from pipelines.errors import TerminalError, TransientError
from pipelines.tables import TableSpec

T = TypeVar("T")
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_IN = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"


def _sd(location: str, columns: Sequence[tuple[str, str]]) -> Any:
    return StorageDescriptor(
        cols=[FieldSchema(name=n, type=t, comment=None) for n, t in columns],
        location=location,
        inputFormat=PARQUET_IN,
        outputFormat=PARQUET_OUT,
        compressed=False,
        numBuckets=-1,
        serdeInfo=SerDeInfo(
            name=None, serializationLib=PARQUET_SERDE, parameters={"serialization.format": "1"}
        ),
        bucketCols=[],
        sortCols=[],
        parameters={},
    )


class HiveCatalog:
    """``catalog: {type: hive, uri: thrift://host:9083, database: sluice}``."""

    kind = "hive"

    def __init__(self, uri: str, database: str) -> None:
        u = urlparse(uri)
        if u.scheme != "thrift" or not u.hostname or not u.port:
            raise TerminalError(f"catalog.uri {uri!r}: expected thrift://host:port")
        self.host, self.port, self.database = u.hostname, u.port, database
        self._db_ready = False

    @contextmanager
    def _client(self, what: str) -> Iterator[Any]:
        try:
            with HiveMetastoreClient(self.host, self.port) as client:
                yield client
        except TTransportException as err:
            raise TransientError(
                f"Hive Metastore {self.host}:{self.port} unreachable while {what}: {err}"
            ) from err
        except (MetaException, InvalidOperationException) as err:
            raise TerminalError(f"Hive Metastore refused {what}: {err.message}") from err
        except TException as err:
            raise TransientError(f"Hive Metastore error while {what}: {err}") from err

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        with self._client(what) as client:
            if not self._db_ready:
                with suppress(AlreadyExistsException):  # another worker, just now
                    client.create_database_if_not_exists(
                        Database(name=self.database, description="tables written by sluice")
                    )
                self._db_ready = True
            return fn(client)

    def _table(self, client: Any, spec: TableSpec) -> Any | None:
        try:
            return client.get_table(dbname=self.database, tbl_name=spec.name)
        except NoSuchObjectException:
            return None

    def sync_table(self, spec: TableSpec, location: str) -> list[str]:
        def run(client: Any) -> list[str]:
            table = self._table(client, spec)
            if table is None:
                try:
                    client.create_external_table(
                        Table(
                            tableName=spec.name,
                            dbName=self.database,
                            owner="sluice",
                            sd=_sd(location.rstrip("/"), table_columns(spec)),
                            partitionKeys=[
                                FieldSchema(name=k, type="string", comment=None)
                                for k in partition_keys(spec)
                            ],
                            tableType="EXTERNAL_TABLE",
                        )
                    )
                    return [n for n, _ in table_columns(spec)]
                except AlreadyExistsException:  # workers starting together: evolve theirs
                    table = self._table(client, spec)
                    if table is None:
                        raise TransientError(f"table {spec.name} exists and does not") from None
            registered = [(c.name, c.type) for c in table.sd.cols]
            evolution = compare_columns(spec, registered)
            if evolution.problems:
                raise TerminalError(
                    f"table {self.database}.{spec.name}: " + "; ".join(evolution.problems)
                )
            if evolution.added:
                table.sd.cols = [
                    *table.sd.cols,
                    *(FieldSchema(name=n, type=t, comment=None) for n, t in evolution.added),
                ]
                # CASCADE: existing partitions' descriptors get the new columns too.
                client.alter_table_with_cascade(self.database, spec.name, table, True)
            return [n for n, _ in evolution.added]

        return self._call(f"syncing table {spec.name}", run)

    def add_partitions(self, spec: TableSpec, location: str, paths: Sequence[str]) -> None:
        if not paths:
            return

        def run(client: Any) -> None:
            table = client.get_table(dbname=self.database, tbl_name=spec.name)
            for path in paths:
                sd = _sd(
                    f"{location.rstrip('/')}/{path}", [(c.name, c.type) for c in table.sd.cols]
                )
                part = Partition(
                    values=partition_values(spec, path),
                    dbName=self.database,
                    tableName=spec.name,
                    sd=sd,
                    parameters={},
                )
                with suppress(AlreadyExistsException):
                    client.add_partition(part)

        self._call(f"registering partitions of {spec.name}", run)

    def partitions(self, spec: TableSpec) -> list[PartitionInfo]:
        keys = partition_keys(spec)

        def run(client: Any) -> list[PartitionInfo]:
            parts = client.get_partitions(self.database, spec.name, -1)
            return sorted(
                (
                    PartitionInfo(
                        "/".join(f"{k}={v}" for k, v in zip(keys, p.values, strict=True)),
                        p.sd.location,
                        dict(p.parameters or {}),
                    )
                    for p in parts
                ),
                key=lambda i: i.path,
            )

        return self._call(f"listing partitions of {spec.name}", run)

    def _alter(self, spec: TableSpec, path: str, change: Callable[[Any], None], what: str) -> None:
        def run(client: Any) -> None:
            part = client.get_partition(self.database, spec.name, partition_values(spec, path))
            change(part)
            client.alter_partition(self.database, spec.name, part)

        self._call(what, run)

    def set_partition_location(self, spec: TableSpec, path: str, location: str) -> None:
        def change(part: Any) -> None:
            part.sd.location = location.rstrip("/")

        self._alter(spec, path, change, f"moving partition {spec.name}/{path}")

    def set_partition_parameters(
        self, spec: TableSpec, path: str, parameters: Mapping[str, str]
    ) -> None:
        def change(part: Any) -> None:
            part.parameters = {**(part.parameters or {}), **parameters}

        self._alter(spec, path, change, f"marking partition {spec.name}/{path}")
