"""Compiles the scheduler's core with mypyc into build/core (see its compiled_build module).

    python scripts/build_core.py [--strict]

Does nothing when the build is fresh. Where it cannot compile (no C compiler, a type error)
it says why and leaves no build, so the core runs from source; `--strict` fails instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.scheduler.core.compiled_build import (
    BUILD_DIR,
    GROUP,
    MANIFEST,
    ROOT,
    build_state,
    digests,
    sources,
)

SETUP = """
from setuptools import setup
from mypyc.build import mypycify
setup(
    name={group!r},
    packages=[],
    py_modules=[],
    ext_modules=mypycify(
        {paths!r}, group_name={group!r}, opt_level="3", target_dir={target!r}
    ),
)
"""


def compile_core() -> str | None:
    """Builds into BUILD_DIR; returns None, or why it could not."""
    paths = sources()
    shutil.rmtree(BUILD_DIR, ignore_errors=True)
    with tempfile.TemporaryDirectory() as temp:
        setup = Path(temp) / "setup.py"
        relative = [str(p.relative_to(ROOT)) for p in paths]
        generated = str(Path(temp) / "c")  # mypyc's C sources
        setup.write_text(SETUP.format(group=GROUP, paths=relative, target=generated))
        command = [sys.executable, str(setup), "build_ext", "--build-lib", str(BUILD_DIR)]
        command += ["--build-temp", str(Path(temp) / "obj")]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(BUILD_DIR, ignore_errors=True)
        return (done.stdout + done.stderr).strip()[-3000:]
    manifest = {"python": sys.implementation.cache_tag, "sources": digests(paths)}
    MANIFEST.write_text(json.dumps(manifest, indent=2))
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strict", action="store_true", help="fail where it cannot compile")
    args = parser.parse_args()
    if build_state() == "fresh":
        return 0
    print("==> compiling the scheduler's core with mypyc (build/core)", flush=True)
    error = compile_core()
    if error is None:
        return 0
    print(error, file=sys.stderr)
    print("!! the scheduler's core could not be compiled: it runs from source", file=sys.stderr)
    return 1 if args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
