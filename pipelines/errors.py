"""Our own error types. Vendor errors are translated into these at the boundary.

- ``TransientError``: the operation may succeed if retried (S3 5xx, timeouts, broker
  unavailable). Retry loops check for this type, never for message text.
- ``TerminalError``: retrying cannot help (access denied, bad bucket, corrupt input).
- ``ConfigError``: configuration is invalid; carries every problem found, each with the
  key path where it was found.
- ``RecordError``: one input record cannot be written; carries the dead-letter reason.
"""

from __future__ import annotations

from dataclasses import dataclass


class SluiceError(Exception):
    """Base class of every error sluice raises on purpose."""


class TransientError(SluiceError):
    """A failure that may go away if the operation is retried."""


class TerminalError(SluiceError):
    """A failure that retrying will not fix."""


@dataclass(frozen=True)
class Problem:
    """One configuration problem: where (a dotted key path) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ConfigError(SluiceError):
    """Invalid configuration. ``problems`` lists every problem, not just the first."""

    def __init__(self, problems: list[Problem], source: str = "configuration") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class RecordError(SluiceError):
    """A single record cannot be written. ``reason`` is a short machine-readable code
    (``unparseable``, ``schema_violation``, ``oversized``, ``bad_timestamp``,
    ``late``, ``early``, ``bad_partition_value``); ``detail`` is for humans."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")
