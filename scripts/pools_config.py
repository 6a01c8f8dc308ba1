"""Writes the config of a local system split into pools: `make up POOLS=N`.

    python scripts/pools_config.py --pools 2 --config deploy/local/config.toml --out .run/pools.toml

The models of the config are dealt to N pools in turn (the first pool is the default one),
each pool gets its own scheduler port (50052, then 50152, 50252, ...), and the router's
[router.pools] names them. Prints one line per pool: name, scheduler port, its models.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import tomli_w

SCHEDULER_PORT, POOL_PORT_STEP = 50052, 100


def pool_name(index: int) -> str:
    return "" if index == 0 else f"pool-{index + 1}"


def split(config: dict, pools: int) -> dict:
    """`config` with its models dealt to `pools` pools and the router told where each is."""
    models = config.get("models", [])
    for i, model in enumerate(models):
        name = pool_name(i % pools)
        if name:
            model["pool"] = name
        else:
            model.pop("pool", None)
    router = config.setdefault("router", {})
    router["pools"] = {
        pool_name(k): f"127.0.0.1:{SCHEDULER_PORT + k * POOL_PORT_STEP}" for k in range(1, pools)
    }
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pools", type=int, required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    config = split(tomllib.loads(Path(args.config).read_text()), max(1, args.pools))
    Path(args.out).write_text(tomli_w.dumps(config))
    for k in range(max(1, args.pools)):
        name = pool_name(k)
        models = [m["id"] for m in config.get("models", []) if m.get("pool", "") == name]
        print(f"{name or 'default'} {SCHEDULER_PORT + k * POOL_PORT_STEP} {','.join(models)}")


if __name__ == "__main__":
    main()
