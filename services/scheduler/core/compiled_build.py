"""Which build of the scheduler's core runs: the modules compiled with mypyc, or their source.
It lives in the core package, imports nothing of the service around it, and is itself never
compiled (the core's `__init__` imports it, from source, before the path is set).

`scripts/build_core.py` (`make core`) compiles every module of `services.scheduler.core` with
mypyc into `build/core/` and writes a manifest of the sources it compiled (their SHA-256). The
core package calls `activate` before any of its modules is imported: the compiled modules are
put first on the package's path only if the manifest matches the sources now, so an edited
module never runs as its stale compiled self; otherwise the source runs (same behaviour,
about twice as slow per decision: docs/architecture.md). `SCHEDULER_CORE=python` forces the
source.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SOURCE_DIR = Path(__file__).resolve().parent
BUILD_DIR = ROOT / "build" / "core"
MANIFEST = BUILD_DIR / "manifest.json"
GROUP = "scheduler_core"  # mypyc's shared library: build/core/scheduler_core__mypyc.*.so


def sources() -> list[Path]:
    """The modules compiled: every module of the core package but its __init__ and this."""
    skipped = ("__init__.py", Path(__file__).name)
    return sorted(p for p in SOURCE_DIR.glob("*.py") if p.name not in skipped)


def digests(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def build_state(manifest: Path = MANIFEST, paths: list[Path] | None = None) -> str:
    """'fresh' if the build in the manifest's folder was compiled from the sources as they
    are now (and this Python); else why not."""
    try:
        built = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return "not built (make core)"
    if built.get("python") != sys.implementation.cache_tag:
        return f"built for {built.get('python')}, not {sys.implementation.cache_tag}"
    changed = sorted(
        name
        for name, digest in digests(paths or sources()).items()
        if built.get("sources", {}).get(name) != digest
    )
    if changed:
        return f"stale: {', '.join(changed)} changed since (make core)"
    return "fresh"


def activate(package_path: list[str], manifest: Path = MANIFEST) -> str:
    """Puts the compiled modules first on the core package's path when they are fresh.
    Returns what runs: 'compiled', or 'python: <why>'."""
    if os.environ.get("SCHEDULER_CORE", "").lower() == "python":
        return "python: SCHEDULER_CORE=python"
    state = build_state(manifest)
    if state != "fresh":
        return f"python: {state}"
    build_dir = manifest.parent
    if str(build_dir) not in sys.path:
        sys.path.append(str(build_dir))  # where mypyc's shared library is imported from
    package_path.insert(0, str(build_dir / "services" / "scheduler" / "core"))
    return "compiled"
