"""Backend vllm: sampling with vLLM's offline engine (optional extra: pip install 'plad[vllm]').

Prompts are tokenized by plad exactly as for the hf backend (same truncation, fitted to the model's positions) and
handed to vLLM as token ids; each prompt gets its own seed derived from the call's seed key, so a resumed run asks
for exactly the missing prompts with the same seeds. vLLM schedules its own batches; rows are emitted (stored, for
pairs) per chunk of prompts.
Rows stop where the hf backend's do (EOS, the chat template's end-of-turn token, sampling.stop) and are read back
through the hf backend's `to_sample`, so text, token count and finish mean the same on both.
"""

from __future__ import annotations

import logging
from typing import Any

from plad.config import SamplingConfig, VllmOptions
from plad.core.batching import stop_ids
from plad.generation.backend import Drawn, Emit, Prompt, Rate, Want, without_batch_settings
from plad.generation.hf import to_sample
from plad.utils.errors import ConfigError
from plad.utils.seeds import derive_seed

log = logging.getLogger("plad")


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(
            f"backend vllm needs the vLLM package, which is not installed ({e}); install it with "
            "pip install 'plad[vllm]' (Linux with an NVIDIA GPU), or use backend hf"
        ) from None
    return vllm


def sampling_params(vllm: Any, sampling: Any, k: int, seed: int, ends: list[int] | None = None) -> Any:
    """vLLM's SamplingParams for `sampling`; `ends` (EOS and the chat template's end-of-turn token) become
    stop_token_ids, sampling.stop vLLM's stop strings (left out of its text, as plad's `to_sample` does)."""
    kw: dict[str, Any] = {
        "n": k,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
    }
    if sampling.top_k:
        kw["top_k"] = sampling.top_k
    if ends:
        kw["stop_token_ids"] = list(ends)
    if sampling.stop:
        kw["stop"] = list(sampling.stop)
    return vllm.SamplingParams(**kw)


def load_engine(model: str, tokenizer: str, opts: VllmOptions, seed: int) -> Any:
    vllm = import_vllm()
    kw: dict[str, Any] = {
        "model": model,
        "tokenizer": tokenizer or model,
        "tensor_parallel_size": opts.tensor_parallel_size,
        "gpu_memory_utilization": opts.gpu_memory_utilization,
        "dtype": opts.dtype,
        "seed": seed % (2**31),
    }
    if opts.max_model_len:
        kw["max_model_len"] = opts.max_model_len
    return vllm.LLM(**kw)


class VllmBackend:
    """vLLM's offline engine, started on the first `sample` (seeded with the first call's sampling seed); prompts
    go in as plad's token ids, each with its own seed; rows are emitted per chunk of prompts."""

    name = "vllm"

    def __init__(
        self, model: str, tokenizer_path: str, tokenizer: Any, opts: VllmOptions, chunk: int = 512
    ) -> None:
        import_vllm()  # before any other side samples: a missing vLLM must not cost the teacher's samples first
        self.model, self.tokenizer_path, self.tokenizer, self.opts = model, tokenizer_path, tokenizer, opts
        self.chunk, self.llm = chunk, None

    def sample(
        self,
        prompts: list[Prompt],
        sampling: SamplingConfig,
        k: int,
        seed: tuple,
        emit: Emit,
        want: Want | None = None,
        bar: Any = None,
    ) -> dict[str, Any]:
        vllm = import_vllm()
        wanted = want or (lambda i, j: True)
        todo = [i for i in range(len(prompts)) if any(wanted(i, j) for j in range(k))]
        if not todo:
            return {}
        if self.llm is None:
            self.llm = load_engine(self.model, self.tokenizer_path, self.opts, sampling.seed)
        ends = stop_ids(self.tokenizer)
        rate = Rate(bar)
        for start in range(0, len(todo), self.chunk):
            part = todo[start : start + self.chunk]
            seeds = [derive_seed(*seed, prompts[i].id) for i in part]
            outs = self.llm.generate(
                [{"prompt_token_ids": prompts[i].ids} for i in part],
                [sampling_params(vllm, sampling, k, s, ends) for s in seeds],
                use_tqdm=False,
            )
            drawn = []
            for i, s, out in zip(part, seeds, outs, strict=True):
                for j, o in enumerate(out.outputs):
                    if not wanted(i, j):
                        continue
                    ids = list(o.token_ids)
                    # vLLM may also stop at the model's generation_config EOS ids: its last token ended the row
                    by_token = o.finish_reason == "stop" and not isinstance(o.stop_reason, str) and ids
                    sample = to_sample(
                        self.tokenizer, ids, ends + ([ids[-1]] if by_token else []), sampling.stop
                    )
                    drawn.append(Drawn(i, j, sample, s, {"backend": "vllm"}))
            emit(drawn)
            rate.update(drawn)
        return {}

    def close(self) -> None:
        self.llm = None

    @classmethod
    def identity(cls, side: Any, data: Any) -> dict[str, Any]:
        from plad.generation.hf import HfBackend

        # vLLM batches by itself: batch settings do not change its samples
        return {
            **HfBackend.identity(side, data),
            "sampling": without_batch_settings(side.sampling),
            "backend": "vllm",
            "dtype": side.vllm.dtype,
        }
