"""Process plumbing for the local stack: ports, pid files, start and stop by pid.

Guarantees: every process we start runs in its own session (process group) with its pid
recorded in ``<state>/pids/<name>.pid``; ``stop`` signals that whole group, waits, then
kills it, so nothing it spawned is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class StackError(Exception):
    """The local stack cannot do what was asked; the message says what to do."""


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def ensure_port_free(host: str, port: int, what: str, env_var: str) -> None:
    """Raise a StackError naming the port and how to pick another when it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the servers do: TIME_WAIT leftovers of a stopped server must not count as taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError as err:
            raise StackError(
                f"{what} cannot start: port {host}:{port} is already in use ({err.strerror}). "
                f"Stop whatever listens there (`ss -ltnp | grep :{port}`), run `sluice dev down` "
                f"if it is a stack of ours, or choose another port with {env_var}=<port>."
            ) from err


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (and is not a zombie we reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


class Procs:
    """Pid files and logs of the processes of one stack, under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.pid_dir = state_dir / "pids"
        self.log_dir = state_dir / "logs"

    def pid(self, name: str) -> int | None:
        """The recorded pid of ``name`` if that process still runs."""
        f = self.pid_dir / f"{name}.pid"
        try:
            pid = int(f.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start ``argv`` detached in its own session; stdout+stderr go to its log."""
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log(name), "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        (self.pid_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, name: str, grace: float = 15.0) -> bool:
        """SIGTERM the process group of ``name``, SIGKILL it after ``grace`` seconds.

        Returns True if something was running."""
        f = self.pid_dir / f"{name}.pid"
        pid = self.pid(name)
        if pid is None:
            f.unlink(missing_ok=True)
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while _group_alive(pid) and time.monotonic() < deadline + 5:
                time.sleep(0.1)
        f.unlink(missing_ok=True)
        return True

    def tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a process's log, for error messages."""
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _group_alive(pgid: int) -> bool:
    """True while any live process is in the group (the leader may have gone first)."""
    if pid_alive(pgid):
        return True
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def run_checked(
    argv: Sequence[str],
    what: str,
    hint: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 1800,
) -> None:
    """Run a build/download step to completion; on failure raise with its log tail + hint."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        try:
            rc = subprocess.run(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                timeout=timeout,
                check=False,
            ).returncode
        except FileNotFoundError as err:
            raise StackError(f"{what} failed: {argv[0]} is not installed. {hint}") from err
        except subprocess.TimeoutExpired as err:
            raise StackError(f"{what} timed out after {timeout:.0f}s (log: {log}). {hint}") from err
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise StackError(f"{what} failed (exit {rc}); last lines of {log}:\n{tail}\n{hint}")
