"""Catalogs by name (``catalog.type``): hive, glue, none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipelines.catalog.base import Catalog, PartitionInfo
from pipelines.errors import TerminalError
from pipelines.settings import Settings
from pipelines.tables import TableSpec


class NoCatalog:
    """``type: none``: objects and ``_SUCCESS`` markers only; nothing is registered."""

    kind = "none"

    def sync_table(self, spec: TableSpec, location: str) -> list[str]:
        return []

    def add_partitions(self, spec: TableSpec, location: str, paths: Sequence[str]) -> None:
        return None

    def partitions(self, spec: TableSpec) -> list[PartitionInfo]:
        return []

    def set_partition_location(self, spec: TableSpec, path: str, location: str) -> None:
        raise TerminalError(f"{spec.name}: catalog type none has no partition locations to move")

    def set_partition_parameters(
        self, spec: TableSpec, path: str, parameters: Mapping[str, str]
    ) -> None:
        return None


def open_catalog(settings: Settings) -> Catalog:
    c = settings.catalog
    if c.type == "hive":
        from pipelines.catalog.hive import HiveCatalog

        return HiveCatalog(c.uri, c.database)
    if c.type == "glue":
        from pipelines.catalog.glue import GlueCatalog

        return GlueCatalog(c.database, settings.s3.region)
    return NoCatalog()


def table_location(settings: Settings, spec: TableSpec) -> str:
    """Where the engines read ``spec``: the warehouse root with the catalog's URI scheme."""
    root = settings.warehouse.root.rstrip("/")
    if not root.startswith("s3://"):
        return f"{root}/{spec.name}"
    scheme = settings.catalog.location_scheme or (
        "s3" if settings.catalog.type == "glue" else "s3a"
    )
    return f"{scheme}://{root.removeprefix('s3://')}/{spec.name}"
