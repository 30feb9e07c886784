"""The crash tests' failpoints: absent by default; the kill lands on the n-th commit."""

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


CANCELLED_CHILD = """
import asyncio
from pipelines.faust_batch import with_failpoint

async def commit(tp, offset):
    print("committed", tp, flush=True)
    return True

async def main():
    faulty = with_failpoint(commit)
    await faulty(0, 1)
    await faulty(1, 1)
    third = asyncio.ensure_future(faulty(2, 1))  # a rebalance cancels it during the delay
    await asyncio.sleep(0.01)
    third.cancel()
    await asyncio.gather(third, return_exceptions=True)
    print("third cancelled", flush=True)
    await faulty(3, 1)

asyncio.run(main())
"""


def test_kill_lands_on_the_next_commit_when_the_nth_was_cancelled() -> None:
    env = {
        **os.environ,
        "SLUICE_FAILPOINT_COMMIT_DELAY": "0.05",
        "SLUICE_FAILPOINT_KILL_AT_COMMIT": "3",
    }
    done = subprocess.run(
        [sys.executable, "-c", CANCELLED_CHILD], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert done.stdout.split("\n")[:3] == ["committed 0", "committed 1", "third cancelled"]
    assert "committed 3" not in done.stdout
