"""DuckDB over the local stack's S3 server (the demo's and the tests' reader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.devstack.components import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY


def duckdb_over_s3(endpoint: str) -> Any:
    """A DuckDB connection with httpfs loaded (from its PyPI wheel, by path: the wheel has no
    platform directory for ``LOAD httpfs``) and a secret for ``endpoint`` (``host:port``)."""
    import duckdb
    import duckdb_extension_httpfs

    ext = (
        Path(duckdb_extension_httpfs.__file__).parent
        / "extensions"
        / f"v{duckdb.__version__}"
        / "httpfs.duckdb_extension"
    )
    con = duckdb.connect()
    con.execute(f"LOAD '{ext}'")
    con.execute(
        f"CREATE SECRET local (TYPE S3, KEY_ID '{LOCAL_ACCESS_KEY}', "
        f"SECRET '{LOCAL_SECRET_KEY}', REGION 'us-east-1', "
        f"ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)"
    )
    con.execute("SET TimeZone='UTC'")
    return con
