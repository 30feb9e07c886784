"""boto3 against the real S3 server of the local stack (versitygw by default)."""

from __future__ import annotations

import hashlib
import os

import pytest
from botocore.exceptions import ClientError

BUCKET = "lake"


def test_put_get_list(s3, unique: str) -> None:  # type: ignore[no-untyped-def]
    keys = [f"{unique}/dt=2026-11-25/hr={h:02d}/part-{h}.bin" for h in range(3)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=BUCKET, Key=key, Body=f"body-{i}".encode())
    assert s3.get_object(Bucket=BUCKET, Key=keys[1])["Body"].read() == b"body-1"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{unique}/")
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(keys)
    hours = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{unique}/dt=2026-11-25/", Delimiter="/")
    assert [p["Prefix"] for p in hours["CommonPrefixes"]] == [
        f"{unique}/dt=2026-11-25/hr={h:02d}/" for h in range(3)
    ]
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=BUCKET, Key=f"{unique}/missing")
    assert info.value.response["Error"]["Code"] in ("NoSuchKey", "404")


def test_multipart_upload_is_invisible_until_complete(s3, unique: str) -> None:  # type: ignore[no-untyped-def]
    key = f"{unique}/big.bin"
    parts_data = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024), b"tail"]
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)
    parts = []
    for n, data in enumerate(parts_data, start=1):
        r = s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=n, Body=data
        )
        parts.append({"ETag": r["ETag"], "PartNumber": n})
    # No partially written object is visible under the final key before completion.
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(b"".join(parts_data)).digest()


def test_aborted_multipart_leaves_nothing(s3, unique: str) -> None:  # type: ignore[no-untyped-def]
    key = f"{unique}/aborted.bin"
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)
    s3.upload_part(
        Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
    )
    s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"])
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
