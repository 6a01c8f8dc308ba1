"""Loads causal LMs for the transformers engine, caching a fast copy of GGUF models.

A GGUF file is dequantized by transformers on every load (~20 s for SmolLM2-135M). The first
load saves the dequantized model and tokenizer as safetensors under the cache directory; later
loads read that copy (~0.5 s). A file lock keeps concurrent workers from converting twice.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.common.catalog import ModelSpec
from services.common.prompt_encoding import COMPLETE_MARKER, converted_folder, resolve_source

log = logging.getLogger(__name__)


def load_causal_lm(spec: ModelSpec, cache_dir: Path, device: str) -> tuple[Any, Any]:
    """Returns (tokenizer, model) on `device`, in eval mode, in the spec's dtype."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_folder(spec, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, spec.dtype))
    model.to(device)
    model.eval()
    return tokenizer, model


def model_folder(spec: ModelSpec, cache_dir: Path) -> Path:
    """The folder of the model's weights in a form every engine loads (safetensors): its
    source, or for a GGUF file the converted copy under `cache_dir`, made on first use."""
    source = resolve_source(spec.source)
    return _cached_copy(spec, source, cache_dir) if spec.gguf_file else source


def _cached_copy(spec: ModelSpec, source: Path, cache_dir: Path) -> Path:
    target = converted_folder(spec, cache_dir)
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / ".lock"):
        if not (target / COMPLETE_MARKER).exists():
            _convert_gguf(spec, source, target)
    return target


def _convert_gguf(spec: ModelSpec, source: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info(
        "converting %s/%s once into %s (later starts load the copy)", source, spec.gguf_file, target
    )
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=spec.gguf_file)
    # transformers refuses to save a model it thinks is still GGUF-quantized; the weights
    # are already dequantized, so drop the marker (see FACTS.md).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / COMPLETE_MARKER).touch()
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
