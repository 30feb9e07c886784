"""Build (once, cached) the OpenTelemetry Collector peer for the trace-router benchmark.

    .venv/bin/python -m bench.otelcol            # build if needed, print the binary's path
    .venv/bin/python -m bench.otelcol --rebuild  # build again from scratch (same cache dir)

Installs the Collector Builder (``go install go.opentelemetry.io/collector/cmd/builder@<v>``)
and builds ``bench/peers/otelcol/builder-config.yaml`` under
``${XDG_CACHE_HOME:-~/.cache}/sluice/otelcol-<dist.version>/``:

    bin/builder                the Collector Builder
    builder-config.yaml        the manifest with output_path pointing at dist/
    dist/                      generated sources (go.mod, main.go, components.go) + binary
    build.log                  builder and go output of the last build
    built.json                 stamp: manifest hash, builder version, build seconds

Nothing is written to the repository. The build is redone when the manifest changes (its
hash is in the stamp). Go's module and build caches (GOMODCACHE, GOCACHE) are the user's
usual ones, so a second build with a different manifest is quick. Runs under ``nice``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "bench" / "peers" / "otelcol" / "builder-config.yaml"
BUILDER_MODULE = "go.opentelemetry.io/collector/cmd/builder"
DEFAULT_BUILDER_VERSION = "v0.148.0"
BUILD_TIMEOUT_S = 3600


def _manifest() -> tuple[dict[str, Any], str, str]:
    """The parsed manifest, its text, and the builder version named in its header."""
    text = MANIFEST.read_text()
    found = re.search(r"^#\s*builder_version:\s*(v\S+)", text, re.MULTILINE)
    return yaml.safe_load(text), text, found.group(1) if found else DEFAULT_BUILDER_VERSION


def cache_dir(version: str | None = None) -> Path:
    if version is None:
        version = str(_manifest()[0]["dist"]["version"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sluice" / f"otelcol-{version}"


def binary_path() -> Path:
    manifest, _, _ = _manifest()
    return cache_dir(str(manifest["dist"]["version"])) / "dist" / str(manifest["dist"]["name"])


def _stamp_key(text: str, builder_version: str) -> str:
    """Hash of the builder version and the manifest's content (comments do not count)."""
    content = json.dumps(yaml.safe_load(text), sort_keys=True)
    return hashlib.sha256(f"{builder_version}\n{content}".encode()).hexdigest()


def built_info() -> dict[str, Any] | None:
    """The stamp of a cached build that matches the current manifest, or None."""
    manifest, text, builder_version = _manifest()
    root = cache_dir(str(manifest["dist"]["version"]))
    try:
        stamp: dict[str, Any] = json.loads((root / "built.json").read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("key") != _stamp_key(text, builder_version) or not binary_path().exists():
        return None
    return stamp


def _go() -> str:
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if not go:
        sys.exit("go not found: the collector build needs a Go toolchain on PATH")
    return go


def _run(argv: list[str], log: Any, env: dict[str, str], cwd: Path) -> None:
    nice = [shutil.which("nice") or "nice", "-n", "10"] if shutil.which("nice") else []
    log.write(f"\n$ {' '.join(argv)}\n".encode())
    log.flush()
    done = subprocess.run(
        nice + argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, timeout=BUILD_TIMEOUT_S
    )
    if done.returncode:
        raise RuntimeError(f"{argv[0]} exited with {done.returncode}; see {log.name}")


def ensure_built(rebuild: bool = False, quiet: bool = False) -> Path:
    """The collector binary, built first if the cache has none for this manifest."""
    manifest, text, builder_version = _manifest()
    version = str(manifest["dist"]["version"])
    root = cache_dir(version)
    binary = binary_path()
    if not rebuild and built_info() is not None:
        return binary

    go = _go()
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PATH"] = f"{Path(go).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["GOBIN"] = str(root / "bin")
    env.setdefault("CGO_ENABLED", "0")
    # The generated module is built with the toolchain at hand (go 1.25+ is enough at 0.159).
    env.setdefault("GOTOOLCHAIN", "local")

    dist = root / "dist"
    if rebuild and dist.exists():
        shutil.rmtree(dist)
    manifest["dist"]["output_path"] = str(dist)
    rendered = root / "builder-config.yaml"
    rendered.write_text(
        f"# rendered by bench/otelcol.py from {MANIFEST.relative_to(REPO)}\n"
        + yaml.safe_dump(manifest, sort_keys=False)
    )
    log_path = root / "build.log"
    started = time.monotonic()

    def say(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    say(f"building the OpenTelemetry Collector {version} in {root} (log: {log_path}) ...")
    with log_path.open("wb") as log:
        builder = root / "bin" / "builder"
        if not builder.exists() or rebuild:
            say(f"  go install {BUILDER_MODULE}@{builder_version}")
            _run([go, "install", f"{BUILDER_MODULE}@{builder_version}"], log, env, root)
        installed_at = time.monotonic()
        say("  builder --config builder-config.yaml (go mod tidy + go build; minutes)")
        _run([str(builder), "--config", str(rendered)], log, env, root)
    finished = time.monotonic()
    if not binary.exists():
        raise RuntimeError(f"the builder finished but {binary} is missing; see {log_path}")
    version_out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    stamp = {
        "key": _stamp_key(text, builder_version),
        "builder": f"{BUILDER_MODULE}@{builder_version}",
        "go": subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip(),
        "binary": str(binary),
        "binary_version": version_out,
        "binary_mib": round(binary.stat().st_size / 2**20, 1),
        "builder_install_seconds": round(installed_at - started, 1),
        "build_seconds": round(finished - installed_at, 1),
        "total_seconds": round(finished - started, 1),
        "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "components": {
            kind: [entry["gomod"] for entry in manifest.get(kind) or []]
            for kind in ("receivers", "processors", "exporters", "connectors", "providers")
        },
    }
    (root / "built.json").write_text(json.dumps(stamp, indent=2) + "\n")
    say(f"  built {binary} in {stamp['total_seconds']:.0f}s ({version_out})")
    return binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.otelcol", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rebuild", action="store_true", help="build again even if cached")
    parser.add_argument("--info", action="store_true", help="print the build stamp as JSON")
    args = parser.parse_args(argv)
    binary = ensure_built(rebuild=args.rebuild)
    if args.info:
        print(json.dumps(built_info(), indent=2))
    else:
        print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
