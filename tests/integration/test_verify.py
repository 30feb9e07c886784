"""`sluice verify` against a table the real sink wrote: passes, then finds a duplicated
object, a deleted object and a gap."""

from __future__ import annotations

import pytest
import yaml

from tests.sinkkit import (
    app_log,
    create_topic,
    encode,
    produce,
    run_verify,
    start_worker,
    stop_worker,
    wait_committed,
    write_deployment,
)

BUCKET = "lake"
pytestmark = pytest.mark.timeout(300)


async def test_verify_passes_then_finds_duplicates_missing_objects_and_gaps(
    bootstrap, stack_env, s3, unique, tmp_path, subprocess_env
) -> None:
    topic, group = f"{unique}.logs", f"{unique}-g"
    await create_topic(bootstrap, topic, 2)
    values = [(i % 2, encode(app_log(i))) for i in range(3000)]
    values[100] = (0, b"{not json")  # dead-lettered: accounted for, not a gap
    await produce(bootstrap, topic, values)
    config = write_deployment(
        tmp_path,
        topic,
        bootstrap,
        stack_env["AWS_ENDPOINT_URL_S3"],
        f"s3://{BUCKET}/{unique}",
        group,
        rotation={"max_rows": 500, "max_age": "1s"},
        late_data={"max_past": "36500d", "max_future": "1h", "policy": "write"},
    )
    worker = start_worker(config, tmp_path / "worker.log", subprocess_env)
    try:
        await wait_committed(bootstrap, group, topic, {0: 1500, 1: 1500}, 120, [worker])
    finally:
        assert stop_worker(worker) == 0

    ok = run_verify(config, subprocess_env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "rows 2999, dead-lettered 1" in ok.stdout
    assert f"{topic}[0]: offsets 0-1499" in ok.stdout

    # A group that never committed (not the one writing the table): refused, not "OK".
    doc = yaml.safe_load(config.read_text())
    doc["warehouse"]["group_id"] = f"{unique}-nobody"
    stranger = tmp_path / "stranger.yaml"
    stranger.write_text(yaml.safe_dump(doc))
    refused = run_verify(stranger, subprocess_env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"group {unique}-nobody has committed nothing on {topic}" in refused.stderr

    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{unique}/app_logs/")["Contents"]
    objects = sorted(o["Key"] for o in listed if o["Key"].endswith(".parquet"))
    victim = objects[0]
    copy = victim.rsplit("/", 1)[0] + "/copy.parquet"
    s3.copy_object(Bucket=BUCKET, Key=copy, CopySource={"Bucket": BUCKET, "Key": victim})
    doubled = run_verify(config, subprocess_env)
    assert doubled.returncode == 1
    assert "DUPLICATE" in doubled.stdout and copy.split("/", 1)[1] in doubled.stdout
    assert f"UNREFERENCED OBJECT: {copy.split('/', 1)[1]}" in doubled.stdout
    s3.delete_object(Bucket=BUCKET, Key=copy)

    s3.delete_object(Bucket=BUCKET, Key=victim)
    gone = run_verify(config, subprocess_env)
    assert gone.returncode == 1
    assert f"MISSING OBJECT: {victim.split('/', 1)[1]}" in gone.stdout
    assert "GAP:" in gone.stdout

    # Without the manifest either, only the gap remains to show it.
    manifests = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{unique}/_sluice/app_logs/manifests/")
    name = victim.split("/", 1)[1]
    for m in manifests["Contents"]:
        if name in s3.get_object(Bucket=BUCKET, Key=m["Key"])["Body"].read().decode():
            s3.delete_object(Bucket=BUCKET, Key=m["Key"])
    gap = run_verify(config, subprocess_env)
    assert gap.returncode == 1
    assert "GAP:" in gap.stdout and "MISSING OBJECT" not in gap.stdout
