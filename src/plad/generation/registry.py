"""The generation backends by name (a config's `backend`), opened from the settings of a model side."""

from __future__ import annotations

from typing import Any

from plad.config import ApiConfig, ModelSide, VllmOptions
from plad.generation.backend import Backend

BACKENDS = {
    "hf": "a local transformers model (generation/hf.py)",
    "vllm": "vLLM's offline engine (generation/vllm.py; pip install 'plad[vllm]')",
    "openai": "an OpenAI-compatible endpoint (generation/openai.py)",
}


def backend_class(kind: str) -> Any:
    """The class of backend `kind` (its `identity` says what changes its samples)."""
    if kind == "openai":
        from plad.generation.openai import OpenAIBackend

        return OpenAIBackend
    if kind == "vllm":
        from plad.generation.vllm import VllmBackend

        return VllmBackend
    if kind != "hf":
        raise ValueError(f"unknown backend {kind!r}; known: {', '.join(BACKENDS)}")
    from plad.generation.hf import HfBackend

    return HfBackend


def open_backend(
    kind: str,
    model: str,
    what: str,
    tokenizer: Any = None,
    tokenizer_path: str = "",
    dtype: str = "float32",
    api: ApiConfig | None = None,
    vllm: VllmOptions | None = None,
) -> Backend:
    """The backend `kind` for `model` (a folder or hub id; an endpoint's model name for openai). Local backends take
    the tokenizer the caller encoded the prompts with; nothing heavy is loaded until the first `sample`."""
    cls = backend_class(kind)
    if kind == "openai":
        return cls(api or ApiConfig(), model, what)
    if kind == "vllm":
        return cls(model, tokenizer_path, tokenizer, vllm or VllmOptions())
    return cls.load(model, tokenizer_path, tokenizer, dtype)


def side_backend(side: ModelSide, what: str, tokenizer: Any = None) -> Backend:
    """The backend of a pairs side (teacher or student)."""
    return open_backend(
        side.backend, side.model, what, tokenizer, side.tokenizer, side.dtype, side.api, side.vllm
    )
