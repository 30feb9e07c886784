"""Object stores: one small contract, an S3 implementation and a local-directory one.

Guarantees of every ``ObjectStore``:
- ``put`` is atomic: a reader sees the old object, the new one, or none; never a part.
- ``put(..., if_absent=True)`` writes only when no object has the key and returns False
  otherwise (S3 ``If-None-Match: *``; locally an exclusive link). First writer wins.
- Vendor errors leave as ``TransientError`` (worth retrying: 5xx, throttling, timeouts,
  connection failures) or ``TerminalError`` (access denied, no such bucket, bad request),
  with the vendor error as ``__cause__``. Credentials are never part of a message.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

from pipelines.errors import TerminalError, TransientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class ObjectStore(Protocol):
    """Where tables live. Keys are relative to the store's root, '/'-separated."""

    url: str
    """The root, as the user wrote it (s3://bucket/prefix or file:///path)."""

    def put(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        """Store ``data`` under ``key`` atomically; False if ``if_absent`` and it exists."""
        ...

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        ...

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with ``prefix``, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; no error if it is absent."""
        ...


_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
    "503",
    "500",
    "502",
    "504",
}


def translate_s3_error(err: Exception, what: str) -> Exception:
    """Map a botocore error to TransientError / TerminalError (the caller raises it)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ParamValidationError,
        ReadTimeoutError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    if isinstance(
        err, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | BotoConnectionError
    ):
        return TransientError(f"{what}: S3 unreachable ({type(err).__name__})")
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", "?"))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(f"{what}: S3 {code} (HTTP {status})")
        return TerminalError(f"{what}: S3 {code} (HTTP {status})")
    if isinstance(err, NoCredentialsError | ParamValidationError):
        return TerminalError(f"{what}: {type(err).__name__}")
    return TransientError(f"{what}: {type(err).__name__}: {err}")


class S3Store:
    """An S3 bucket and prefix, through an injected boto3 client."""

    def __init__(self, url: str, client: S3Client) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise TerminalError(f"{url!r} is not an s3://bucket/prefix URL")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.client = client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        from botocore.exceptions import ClientError

        try:
            if if_absent:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                )
            else:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
            return True
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if if_absent and code in ("PreconditionFailed", "412"):
                return False
            if if_absent and code == "ConditionalRequestConflict":  # a racing write in flight
                raise TransientError(f"put s3://{self.bucket}/{self._key(key)}: {code}") from err
            raise translate_s3_error(err, f"put s3://{self.bucket}/{self._key(key)}") from err
        except Exception as err:
            raise translate_s3_error(err, f"put s3://{self.bucket}/{self._key(key)}") from err

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise translate_s3_error(err, f"get s3://{self.bucket}/{self._key(key)}") from err
        except Exception as err:
            raise translate_s3_error(err, f"get s3://{self.bucket}/{self._key(key)}") from err

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][strip:], obj["Size"]
        except Exception as err:
            raise translate_s3_error(err, f"list s3://{self.bucket}/{self._key(prefix)}") from err

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as err:
            raise translate_s3_error(err, f"delete s3://{self.bucket}/{self._key(key)}") from err


class LocalStore:
    """A directory (``file:///path``): atomic by write-to-temp then rename."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        # file://host/path names a path on another host; refuse it rather than use /path.
        local = parsed.netloc in ("", "localhost")
        if parsed.scheme != "file" or not local or not parsed.path.startswith("/"):
            raise TerminalError(f"{url!r} is not a file:///absolute/path URL")
        self.url = url
        self.root = Path(parsed.path)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise TerminalError(f"key {key!r} escapes the store root")
        return path

    def put(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                if if_absent:
                    try:
                        os.link(tmp, path)  # fails if path exists: first writer wins
                    except FileExistsError:
                        return False
                else:
                    os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return True
        except OSError as err:
            raise TransientError(f"put {path}: {err.strerror}") from err

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise TransientError(f"get {key}: {err.strerror}") from err

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        root = self.root.resolve()
        if not root.exists():
            return
        found = []
        for dirpath, _, files in os.walk(root):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(root).as_posix()
                if key.startswith(prefix):
                    found.append((key, full.stat().st_size))
        yield from sorted(found)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


def open_store(url: str, client: S3Client | None = None) -> ObjectStore:
    """The store for a warehouse root URL; s3:// needs a boto3 client."""
    scheme = urlparse(url).scheme
    if scheme == "s3":
        if client is None:
            raise TerminalError("an s3:// root needs an S3 client")
        return S3Store(url, client)
    if scheme == "file":
        return LocalStore(url)
    raise TerminalError(f"unsupported warehouse root {url!r}: use s3:// or file://")
