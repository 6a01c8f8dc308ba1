"""A Node.js client with stubs built from protos/ alone reads the Generate stream."""

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"


@pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="needs node and npm")
async def test_node_client_streams_generate(stack):
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").exists():
        install = await asyncio.to_thread(
            subprocess.run,
            ["npm", "install", "--no-audit", "--no-fund", "--silent"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert install.returncode == 0, install.stderr
    out = await asyncio.to_thread(
        subprocess.run,
        ["node", "generate.js", stack.router_address, "sim-fast", "Hello"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "[summary]" in out.stdout and '"model_id":"sim-fast"' in out.stdout
    messages = int(out.stdout.rsplit("[", 1)[1].split()[0])
    assert messages >= 3
