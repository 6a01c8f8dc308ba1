"""Writes the config of a local system whose models run on another engine: `make up
ENGINE=vllm`.

    python scripts/engine_config.py --engine vllm --config deploy/local/config.toml \
        --out .run/config-vllm.toml

Every model on the embedded transformers engine moves to `--engine`, and every embedding
model to its embedding engine (vllm-embedding); a model's `[models.vllm]` table in the config
(if any) holds that engine's arguments. Simulated models stay where they are. Prints the
models moved.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import tomli_w

# the engines whose models can run on another: what each moves to, named by the target
MOVES = {"transformers": "{engine}", "embedding": "{engine}-embedding"}


def move(config: dict, engine: str) -> list[str]:
    """Moves `config`'s transformers and embedding models to `engine`; returns their ids."""
    moved = []
    for model in config.get("models", []):
        target = MOVES.get(model.get("engine", ""))
        if target is not None:
            model["engine"] = target.format(engine=engine)
            moved.append(model["id"])
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True, choices=["vllm"])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    config = tomllib.loads(args.config.read_text())
    moved = move(config, args.engine)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(tomli_w.dumps(config))
    print(" ".join(moved))


if __name__ == "__main__":
    main()
