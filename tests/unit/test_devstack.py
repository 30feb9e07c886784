import socket
import sys
from pathlib import Path

import pytest

from pipelines.devstack.components import StackConfig
from pipelines.devstack.procs import Procs, StackError, ensure_port_free, pid_alive, run_checked


def test_taken_port_is_named_with_the_override(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StackError) as info:
            ensure_port_free("127.0.0.1", port, "Kafka", "SLUICE_KAFKA_PORT")
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "SLUICE_KAFKA_PORT" in msg


def test_free_port_passes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ensure_port_free("127.0.0.1", port, "x", "X")


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    # A parent that ignores SIGTERM and a child of its own: both must be gone after stop().
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    pid = procs.start("sleeper", [sys.executable, "-c", script])
    log = procs.log("sleeper")
    for _ in range(100):
        if log.read_text().strip():
            break
        import time

        time.sleep(0.05)
    child = int(log.read_text().split()[0])
    assert procs.pid("sleeper") == pid and pid_alive(child)
    assert procs.stop("sleeper", grace=1.0)
    assert not pid_alive(pid) and not pid_alive(child)
    assert procs.pid("sleeper") is None
    assert not procs.stop("sleeper")


def test_failed_step_reports_log_tail_and_hint(tmp_path: Path) -> None:
    with pytest.raises(StackError) as info:
        run_checked(
            [sys.executable, "-c", "print('boom-detail'); raise SystemExit(3)"],
            "Downloading X",
            "Check the proxy.",
            tmp_path / "x.log",
        )
    msg = str(info.value)
    assert "exit 3" in msg and "boom-detail" in msg and "Check the proxy." in msg


def test_missing_tool_is_named(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="no-such-tool-xyz is not installed"):
        run_checked(["no-such-tool-xyz"], "Building", "Install it.", tmp_path / "y.log")


def test_config_from_env_overrides_and_rejects_bad_values(tmp_path: Path) -> None:
    cfg = StackConfig.from_env(
        {
            "SLUICE_KAFKA_PORT": "40001",
            "SLUICE_S3_SERVER": "moto",
            "SLUICE_STATE_DIR": str(tmp_path),
            "HOME": str(tmp_path),
        }
    )
    assert cfg.bootstrap == "127.0.0.1:40001"
    assert cfg.s3_server == "moto"
    assert cfg.client_env()["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:40001"
    with pytest.raises(StackError, match="SLUICE_S3_SERVER"):
        StackConfig.from_env({"SLUICE_S3_SERVER": "minio"})
    with pytest.raises(StackError, match="SLUICE_S3_PORT"):
        StackConfig.from_env({"SLUICE_S3_PORT": "99999"})


def test_tracing_stores_are_opt_in_and_named_in_the_client_env(tmp_path: Path) -> None:
    base = {"SLUICE_STATE_DIR": str(tmp_path)}
    plain = StackConfig.from_env(base)
    assert plain.components == ("kafka", "s3")
    assert "ZIPKIN_URL" not in plain.client_env()
    full = StackConfig.from_env(
        {**base, "SLUICE_STACK": "jaeger,zipkin", "SLUICE_ZIPKIN_PORT": "40411"}
    )
    assert full.components == ("kafka", "s3", "zipkin", "jaeger")  # kafka and s3 always run
    env = full.client_env()
    assert env["ZIPKIN_URL"] == "http://127.0.0.1:40411"
    assert env["JAEGER_QUERY_URL"] == "http://127.0.0.1:39686"
    with pytest.raises(StackError, match="tempo"):
        StackConfig.from_env({**base, "SLUICE_STACK": "kafka,tempo"})
