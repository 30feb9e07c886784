"""The crash tests' failpoints: absent by default, and the kill lands on exactly the n-th commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from pipelines.faust_batch import with_failpoint

CHILD = """
import asyncio
from pipelines.faust_batch import with_failpoint

async def commit(tp, offset):
    print("committed", tp, flush=True)
    return True

async def main():
    faulty = with_failpoint(commit)
    # four partitions commit at once, as after a cut on each
    await asyncio.gather(*(faulty(p, 1) for p in range(4)))

asyncio.run(main())
"""


def test_unset_returns_commit_itself(monkeypatch) -> None:
    monkeypatch.delenv("SLUICE_FAILPOINT_COMMIT_DELAY", raising=False)
    monkeypatch.delenv("SLUICE_FAILPOINT_KILL_AT_COMMIT", raising=False)

    async def commit(tp: object, offset: int) -> bool:
        return True

    assert with_failpoint(commit) is commit


def test_kill_lands_on_the_nth_of_overlapping_commits() -> None:
    env = {
        **os.environ,
        "SLUICE_FAILPOINT_COMMIT_DELAY": "0.05",
        "SLUICE_FAILPOINT_KILL_AT_COMMIT": "3",
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL
    # the first two commits went through; the third and fourth never did
    assert done.stdout.split("\n")[:2] == ["committed 0", "committed 1"]
    assert "committed 2" not in done.stdout and "committed 3" not in done.stdout
