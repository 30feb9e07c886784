import os

from pipelines.destinations.queue import Breaker
from pipelines.destinations.senders import shard


def test_sharding_is_stable_balanced_and_moves_little_when_an_endpoint_joins() -> None:
    ids = [os.urandom(16) for _ in range(6000)]
    three = ["http://a:4318", "http://b:4318", "http://c:4318"]
    first = [shard(t, three) for t in ids]
    assert first == [shard(t, list(three)) for t in ids]  # any worker, same answer
    counts = [first.count(i) for i in range(3)]
    assert all(1700 < c < 2300 for c in counts), counts
    four = [*three, "http://d:4318"]
    after = [shard(t, four) for t in ids]
    moved = sum(1 for a, b in zip(first, after, strict=True) if a != b)
    assert all(b == 3 for a, b in zip(first, after, strict=True) if a != b)  # only to the new one
    assert 1200 < moved < 1800  # ~1/4 of the traces


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() -> None:
    now = [0.0]
    b = Breaker(failures=3, cooldown=10.0, clock=lambda: now[0])
    b.failure()
    b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    now[0] = 10.0
    assert b.state == "half_open" and b.allow()
    b.failure()  # the trial failed: open again for a whole cooldown
    assert b.state == "open"
    now[0] = 20.0
    b.success()
    assert b.state == "closed" and b.failures == 0
