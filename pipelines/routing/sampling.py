"""Consistent probabilistic sampling by trace id, with no shared state.

Guarantees:
- The decision depends only on (trace id, ratio, seed, status): every span of a trace gets
  the same decision in every worker process, on every run and every Python version (no
  ``hash()``, whose value changes per process).
- Without a seed the 56-bit randomness is the trace id's rightmost 7 bytes, as in W3C
  trace-context level 2, and a span is kept when ``randomness >= (1 - ratio) * 2**56``, the
  rejection threshold of OpenTelemetry's consistent samplers. So unseeded rules nest (a
  trace kept at 10% is also kept at 50%) and agree with OTel's ``proportional`` mode.
- With a ``seed`` the randomness is a keyed BLAKE2b of the trace id: rules with different
  seeds sample independently of each other and of unseeded rules.
- ``keep_errors`` keeps spans whose status is error (2) whatever the randomness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pipelines.errors import Problem

__all__ = ["RANDOMNESS_BITS", "STATUS_ERROR", "Sampler", "parse_sample"]

RANDOMNESS_BITS = 56
_SPACE = 1 << RANDOMNESS_BITS
STATUS_ERROR = 2
SAMPLE_KEYS = ("ratio", "keep_errors", "seed")


class Sampler:
    """One rule's sampling policy; immutable, cheap to call per span."""

    __slots__ = ("_key", "keep_errors", "ratio", "seed", "threshold")

    def __init__(self, ratio: float, keep_errors: bool = False, seed: str | None = None) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        self.keep_errors = keep_errors
        self.seed = seed
        # Rejection threshold: keep iff randomness >= threshold (threshold 0 keeps all).
        self.threshold = round((1.0 - ratio) * _SPACE)
        # A fixed-size key, so seeds of any length are valid BLAKE2b keys.
        self._key = (
            None if seed is None else hashlib.blake2b(seed.encode(), digest_size=32).digest()
        )

    def randomness(self, trace_id: bytes) -> int:
        """The trace's 56-bit randomness under this sampler's seed."""
        if self._key is None:
            return int.from_bytes(trace_id[-7:], "big")
        digest = hashlib.blake2b(trace_id, digest_size=7, key=self._key).digest()
        return int.from_bytes(digest, "big")

    def keeps(self, trace_id: bytes, status_code: int) -> bool:
        """True when the span is kept (sampled in)."""
        if self.keep_errors and status_code == STATUS_ERROR:
            return True
        return self.randomness(trace_id) >= self.threshold

    def explain(self, trace_id: bytes, status_code: int) -> str:
        """One human-readable line: the inputs and the outcome of ``keeps``."""
        policy = f"ratio {self.ratio:g}, seed {self.seed!r}, keep_errors {self.keep_errors}"
        if self.keep_errors and status_code == STATUS_ERROR:
            return f"sampling ({policy}): kept, status is error"
        r = self.randomness(trace_id)
        verdict = "kept" if r >= self.threshold else "sampled out"
        sign = ">=" if r >= self.threshold else "<"
        return (
            f"sampling ({policy}): randomness {r:#016x} {sign} threshold "
            f"{self.threshold:#016x}: {verdict}"
        )

    def __repr__(self) -> str:
        return f"Sampler(ratio={self.ratio}, keep_errors={self.keep_errors}, seed={self.seed!r})"


def parse_sample(raw: object, path: str, problems: list[Problem]) -> Sampler | None:
    """``{ratio: 0.1, keep_errors: true, seed: s}`` → a Sampler; appends problems instead."""
    if not isinstance(raw, Mapping):
        problems.append(Problem(path, "expected a mapping such as {ratio: 0.1}"))
        return None
    ok = True
    for key in raw:
        if key not in SAMPLE_KEYS:
            valid = ", ".join(SAMPLE_KEYS)
            problems.append(Problem(f"{path}.{key}", f"unknown key; valid keys here: {valid}"))
            ok = False
    ratio = raw.get("ratio")
    if ratio is None:
        problems.append(Problem(f"{path}.ratio", "missing; a number in (0, 1] such as 0.1"))
        ok = False
    elif isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
        problems.append(Problem(f"{path}.ratio", f"{ratio!r} is not a number in (0, 1]"))
        ok = False
    keep_errors = raw.get("keep_errors", False)
    if not isinstance(keep_errors, bool):
        problems.append(Problem(f"{path}.keep_errors", f"{keep_errors!r} is not true or false"))
        ok = False
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, str | int)):
        problems.append(Problem(f"{path}.seed", f"{seed!r} is not a string or an integer"))
        ok = False
    if not ok:
        return None
    assert isinstance(ratio, int | float) and isinstance(keep_errors, bool)
    return Sampler(float(ratio), keep_errors, None if seed is None else str(seed))
