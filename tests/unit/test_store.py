"""The ObjectStore contract on LocalStore, and the S3 error translation at the boundary."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from pipelines.errors import TerminalError, TransientError
from pipelines.writers.store import LocalStore, S3Store, open_store, translate_s3_error


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(f"file://{tmp_path / 'lake'}")


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob(".tmp-*")]


# --- LocalStore -----------------------------------------------------------------------------


def test_put_then_get_and_missing_is_none(store: LocalStore) -> None:
    assert store.get("a/b/c.parquet") is None
    assert store.put("a/b/c.parquet", b"one") is True
    assert store.get("a/b/c.parquet") == b"one"
    assert (store.root / "a/b/c.parquet").read_bytes() == b"one"
    assert store.put("a/b/c.parquet", b"two") is True  # plain put overwrites
    assert store.get("a/b/c.parquet") == b"two"
    assert leftovers(store.root) == []


def test_if_absent_first_writer_wins(store: LocalStore) -> None:
    assert store.put("m/0.json", b"first", if_absent=True) is True
    assert store.put("m/0.json", b"second", if_absent=True) is False
    assert store.get("m/0.json") == b"first"
    assert leftovers(store.root) == []


def test_if_absent_has_exactly_one_winner_among_concurrent_writers(store: LocalStore) -> None:
    results: dict[int, bool] = {}
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        barrier.wait()
        results[i] = store.put("m/race.json", str(i).encode(), if_absent=True)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1
    assert store.get("m/race.json") == str(winners[0]).encode()
    assert leftovers(store.root) == []


def test_put_is_atomic_the_old_object_stays_until_the_rename(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("t/x", b"old")
    real_replace = os.replace
    seen: list[tuple[bytes | None, bytes]] = []

    def spying_replace(src: Any, dst: Any) -> None:
        # the new bytes are complete in a sibling temp file; readers still see the old ones
        assert Path(src).parent == Path(dst).parent
        seen.append((store.get("t/x"), Path(src).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spying_replace)
    store.put("t/x", b"new" * 1000)
    assert seen == [(b"old", b"new" * 1000)]
    assert store.get("t/x") == b"new" * 1000


def test_a_failed_put_leaves_the_old_object_and_no_temp_file(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("t/x", b"old")

    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(TransientError, match="No space left") as info:
        store.put("t/x", b"new")
    assert isinstance(info.value.__cause__, OSError)
    assert store.get("t/x") == b"old"
    assert leftovers(store.root) == []


def test_list_is_in_key_order_with_sizes_and_prefix(store: LocalStore) -> None:
    for key in ["b/2", "a/10", "a/9", "a/1/x", "ab", "c"]:
        store.put(key, b"x" * len(key))
    (store.root / "a" / ".tmp-partial").write_bytes(b"half")
    assert list(store.list("")) == [
        ("a/1/x", 5),
        ("a/10", 4),
        ("a/9", 3),
        ("ab", 2),
        ("b/2", 3),
        ("c", 1),
    ]
    assert [k for k, _ in store.list("a/")] == ["a/1/x", "a/10", "a/9"]
    assert [k for k, _ in store.list("a")] == ["a/1/x", "a/10", "a/9", "ab"]
    assert list(store.list("zzz")) == []


def test_list_of_a_store_that_does_not_exist_yet_is_empty(tmp_path: Path) -> None:
    assert list(LocalStore(f"file://{tmp_path}/nothing/here").list("")) == []


def test_delete_removes_and_tolerates_absence(store: LocalStore) -> None:
    store.put("d/k", b"1")
    store.delete("d/k")
    assert store.get("d/k") is None
    store.delete("d/k")
    store.delete("never/was")


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/etc/passwd", ".."])
def test_keys_that_escape_the_root_are_terminal(store: LocalStore, key: str) -> None:
    with pytest.raises(TerminalError, match="escapes"):
        store.put(key, b"x")
    with pytest.raises(TerminalError, match="escapes"):
        store.get(key)
    with pytest.raises(TerminalError, match="escapes"):
        store.delete(key)
    assert not (store.root.parent / "outside").exists()


def test_a_symlink_out_of_the_root_is_an_escape(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    store.root.mkdir(parents=True)
    (store.root / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(TerminalError, match="escapes"):
        store.put("link/x", b"x")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_dotdot_inside_the_root_is_allowed(store: LocalStore) -> None:
    store.put("a/../b", b"1")
    assert store.get("b") == b"1"


@pytest.mark.parametrize(
    "url", ["s3://bucket/x", "file://relative/path", "file:relative", "/abs/path", "file://"]
)
def test_local_store_needs_a_file_url_with_an_absolute_path(url: str) -> None:
    with pytest.raises(TerminalError):
        LocalStore(url)


def test_local_store_accepts_localhost(tmp_path: Path) -> None:
    assert LocalStore(f"file://localhost{tmp_path}").root == tmp_path


def test_open_store_by_scheme(tmp_path: Path) -> None:
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    with pytest.raises(TerminalError, match="S3 client"):
        open_store("s3://bucket/prefix")
    with pytest.raises(TerminalError, match="unsupported"):
        open_store("gs://bucket")
    s3 = open_store("s3://bucket/pre/fix/", client=cast(Any, object()))
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix) == ("bucket", "pre/fix")


# --- translate_s3_error ---------------------------------------------------------------------


def client_error(code: str, status: int | None, op: str = "PutObject") -> ClientError:
    response: dict[str, Any] = {"Error": {"Code": code, "Message": "m"}}
    if status is not None:
        response["ResponseMetadata"] = {"HTTPStatusCode": status}
    return ClientError(cast(Any, response), op)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("SlowDown", 503),
        ("InternalError", 500),
        ("ServiceUnavailable", 503),
        ("RequestTimeout", 400),
        ("Throttling", 400),
        ("RequestTimeTooSkewed", 403),
        ("SomethingNew", 502),
        ("TooManyRequests", 429),
        ("503", None),
    ],
)
def test_retryable_s3_errors_are_transient(code: str, status: int | None) -> None:
    err = translate_s3_error(client_error(code, status), "put s3://b/k")
    assert type(err) is TransientError
    assert "put s3://b/k" in str(err)
    assert code in str(err)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("AccessDenied", 403),
        ("NoSuchBucket", 404),
        ("InvalidRequest", 400),
        ("InvalidAccessKeyId", 403),
        ("SignatureDoesNotMatch", 403),
        ("EntityTooLarge", 400),
    ],
)
def test_other_s3_client_errors_are_terminal(code: str, status: int) -> None:
    err = translate_s3_error(client_error(code, status), "get s3://b/k")
    assert type(err) is TerminalError
    assert f"S3 {code} (HTTP {status})" in str(err)


@pytest.mark.parametrize(
    "vendor",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9000"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:9000"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9000"),
    ],
)
def test_connection_failures_are_transient(vendor: Exception) -> None:
    err = translate_s3_error(vendor, "list s3://b/p")
    assert type(err) is TransientError
    assert "unreachable" in str(err)
    assert type(vendor).__name__ in str(err)


def test_unknown_errors_default_to_transient() -> None:
    assert type(translate_s3_error(OSError("reset"), "put")) is TransientError


class FakeS3Client:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def put_object(self, **kw: Any) -> None:
        self.calls.append(kw)
        raise self.error

    def get_object(self, **kw: Any) -> None:
        self.calls.append(kw)
        raise self.error


def test_s3_store_translates_and_keeps_the_cause() -> None:
    vendor = client_error("AccessDenied", 403)
    client = FakeS3Client(vendor)
    s3 = S3Store("s3://bucket/root", cast(Any, client))
    with pytest.raises(TerminalError, match="s3://bucket/root/k") as info:
        s3.put("k", b"x")
    assert info.value.__cause__ is vendor
    assert client.calls[0]["Key"] == "root/k"


def test_s3_store_conditional_put_and_missing_get() -> None:
    s3 = S3Store("s3://bucket", cast(Any, FakeS3Client(client_error("PreconditionFailed", 412))))
    assert s3.put("m.json", b"x", if_absent=True) is False
    with pytest.raises(TerminalError):
        s3.put("m.json", b"x")  # without if_absent a 412 is not "exists"
    s3 = S3Store(
        "s3://bucket", cast(Any, FakeS3Client(client_error("NoSuchKey", 404, "GetObject")))
    )
    assert s3.get("k") is None
    s3 = S3Store("s3://bucket", cast(Any, FakeS3Client(EndpointConnectionError(endpoint_url="u"))))
    with pytest.raises(TransientError):
        s3.get("k")
