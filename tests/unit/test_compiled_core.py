"""The compiled core runs only while it matches its sources, and decides as they do."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import services.scheduler.core as core_package
from services.scheduler.core import compiled_build as compiled_core

ROOT = Path(__file__).resolve().parents[2]


def built(tmp_path: Path, sources: list[Path], python: str | None = None) -> Path:
    manifest = tmp_path / "build" / "manifest.json"
    manifest.parent.mkdir()
    tag = python or sys.implementation.cache_tag
    manifest.write_text(json.dumps({"python": tag, "sources": compiled_core.digests(sources)}))
    return manifest


def sources(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "queue.py", tmp_path / "leases.py"]
    for path in paths:
        path.write_text(f"# {path.name}\n")
    return paths


def test_a_build_is_fresh_only_while_every_source_is_as_it_was_compiled(tmp_path):
    paths = sources(tmp_path)
    assert compiled_core.build_state(tmp_path / "none.json", paths).startswith("not built")
    manifest = built(tmp_path, paths)
    assert compiled_core.build_state(manifest, paths) == "fresh"
    paths[1].write_text("# edited\n")
    state = compiled_core.build_state(manifest, paths)
    assert state.startswith("stale") and "leases.py" in state and "queue.py" not in state


def test_a_build_for_another_python_is_not_used(tmp_path):
    paths = sources(tmp_path)
    manifest = built(tmp_path, paths, python="cpython-39")
    assert compiled_core.build_state(manifest, paths).startswith("built for cpython-39")


def test_the_source_runs_unless_the_build_is_fresh_or_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("SCHEDULER_CORE", raising=False)
    package_path = ["/src/core"]
    stale = built(tmp_path, [])  # compiled from no sources: every real module changed since
    assert compiled_core.activate(package_path, stale).startswith("python: stale")
    monkeypatch.setenv("SCHEDULER_CORE", "python")
    assert compiled_core.activate(package_path, compiled_core.MANIFEST) == (
        "python: SCHEDULER_CORE=python"
    )
    assert package_path == ["/src/core"]


DECIDE = """
import itertools, random, time
ticks = itertools.count()
time.monotonic = lambda: next(ticks) * 1e-3
import services.scheduler.core as package
from bench.scheduler_core import build, decide
core = build(400, 16)
leases, rng, out = core.leases(), random.Random(3), [package.BUILD.split(":")[0]]
for _ in range(300):
    changes = decide(core, leases, rng)
    out += [f"{r.request_id}@{g.worker_id}" for r, g in changes.granted]
    out += [f"revoke:{c.lease_id}" for c in changes.commands]
print(" ".join(out))
"""


def decisions(build: str) -> list[str]:
    env = os.environ | {"PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}
    env.pop("SCHEDULER_CORE", None)
    if build == "python":
        env["SCHEDULER_CORE"] = "python"
    done = subprocess.run(
        [sys.executable, "-c", DECIDE], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(core_package.BUILD != "compiled", reason="the core is not compiled here")
def test_the_compiled_core_grants_and_revokes_exactly_as_its_source_does():
    compiled, source = decisions("compiled"), decisions("python")
    assert compiled[0] == "compiled" and source[0] == "python"
    assert len(compiled) > 250  # a grant for (nearly) every lease that ended
    assert compiled[1:] == source[1:]


def test_the_core_imports_nothing_of_the_scheduler_service_around_it():
    core = Path(compiled_core.__file__).parent
    for path in core.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("services.scheduler"):
                    assert name.startswith("services.scheduler.core"), f"{path.name}: {name}"
