"""Sampling with vLLM's offline engine (backend `vllm`, optional extra: pip install 'plad[vllm]').

Prompts are tokenized by plad exactly as for the hf backend (same truncation) and handed to vLLM as token ids;
each prompt gets its own seed derived from the side's seed, so a resumed run asks for exactly the missing prompts
with the same seeds. vLLM schedules its own batches; rows are stored (append + fsync) per chunk of prompts.
Rows stop where the hf backend's do (EOS, the chat template's end-of-turn token, sampling.stop) and are read back
through the hf backend's `to_sample`, so text, token count and finish mean the same on both.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from plad.config import ModelSide, PairsConfig, to_dict
from plad.core.batching import encode_prompts, stop_ids
from plad.generation.hf import to_sample
from plad.generation.store import store_rows
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


def load_engine(side: ModelSide, seed: int) -> Any:
    vllm = import_vllm()
    kw: dict[str, Any] = {
        "model": side.model,
        "tokenizer": side.tokenizer or side.model,
        "tensor_parallel_size": side.vllm.tensor_parallel_size,
        "gpu_memory_utilization": side.vllm.gpu_memory_utilization,
        "dtype": side.vllm.dtype,
        "seed": seed % (2**31),
    }
    if side.vllm.max_model_len:
        kw["max_model_len"] = side.vllm.max_model_len
    return vllm.LLM(**kw)


def generate_side(
    side: ModelSide,
    name: str,
    examples: list,
    k: int,
    fp: str,
    done: dict,
    path: Path,
    cfg: PairsConfig,
    progress: Any,
    chunk: int = 512,
) -> None:
    """Sample every prompt of this side that misses a row; rows of finished chunks are stored at once."""
    from transformers import AutoTokenizer

    vllm = import_vllm()
    tok = AutoTokenizer.from_pretrained(side.tokenizer or side.model)
    todo = [i for i, ex in enumerate(examples) if any((ex.id, name, j, fp) not in done for j in range(k))]
    prompt_ids = encode_prompts(tok, [examples[i] for i in todo], cfg.data, cfg.prompts_file)
    llm = load_engine(side, side.sampling.seed)
    ends = stop_ids(tok)
    bar = progress(f"pairs {name} (vllm)", len(todo) * k)
    t0, tokens = time.perf_counter(), 0
    for start in range(0, len(todo), chunk):
        part = list(range(start, min(start + chunk, len(todo))))
        seeds = [derive_seed(side.sampling.seed, fp, examples[todo[p]].id) for p in part]
        outs = llm.generate(
            [{"prompt_token_ids": prompt_ids[p]} for p in part],
            [sampling_params(vllm, side.sampling, k, s, ends) for s in seeds],
            use_tqdm=False,
        )
        rows = []
        for p, seed, out in zip(part, seeds, outs, strict=True):
            ex = examples[todo[p]]
            for j, o in enumerate(out.outputs):
                if (ex.id, name, j, fp) in done:
                    continue
                ids = list(o.token_ids)
                # vLLM may also stop at the model's generation_config EOS ids: its last token ended the row
                by_token = o.finish_reason == "stop" and not isinstance(o.stop_reason, str) and ids
                sample = to_sample(tok, ids, ends + ([ids[-1]] if by_token else []), side.sampling.stop)
                rows.append(
                    {
                        "id": ex.id,
                        "side": name,
                        "index": j,
                        "fingerprint": fp,
                        "text": sample.text,
                        "n_tokens": sample.n_tokens,
                        "finish": sample.finish,
                        "model": side.model,
                        "backend": "vllm",
                        "sampling": to_dict(side.sampling),
                        "seed": seed,
                    }
                )
                tokens += sample.n_tokens
        store_rows(path, rows, done, bar, tokens / max(time.perf_counter() - t0, 1e-9))
    bar.close()
    del llm
