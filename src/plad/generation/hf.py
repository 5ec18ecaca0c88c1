"""Backend hf: batched sampling from a local Hugging Face causal LM or encoder-decoder (KV cache, left padding).

A row stops at EOS, at the chat template's end-of-turn token (Llama-3's <|eot_id|>, Gemma's <end_of_turn>) and at
the stop strings of `sampling.stop` (transformers' stop_strings); the text leaves out the end token and is cut
where the first stop string starts, as the vllm and openai backends do."""

from __future__ import annotations

from typing import Any

import torch

from plad.config import SamplingConfig, to_dict
from plad.core.batching import pad_rows, stop_ids
from plad.core.models import for_inference, load_model_and_tokenizer, model_identity, position_limit
from plad.generation.backend import Drawn, Emit, Prompt, Rate, Sample, Want
from plad.utils.errors import ModelError
from plad.utils.seeds import derive_seed


class HfBackend:
    """A local transformers model: prompts (token ids) in length-grouped batches (plan_batches), k samples per
    prompt with num_return_sequences, one `generate` call and one emit per batch. Wraps a model already in
    memory (the student being trained) or loads one on first use (`load`)."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, loader: Any = None) -> None:
        self._model, self.tokenizer, self._loader = model, tokenizer, loader

    @classmethod
    def load(cls, model: str, tokenizer_path: str, tokenizer: Any, dtype: str) -> HfBackend:
        """A backend whose weights are read on the first `sample` (a run with nothing left to sample reads none)."""

        def loader() -> Any:
            m, _ = load_model_and_tokenizer(model, tokenizer_path, tok=tokenizer, dtype=dtype)
            return for_inference(m)

        return cls(None, tokenizer, loader)

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._loader()
        return self._model

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
        wanted = want or (lambda i, j: True)
        batches = plan_batches(
            [len(p.ids or []) for p in prompts],
            sampling.batch_size,
            sampling.max_batch_tokens,
            sampling.max_new_tokens,
            k,
        )
        rate = Rate(bar)
        for batch in batches:
            if not any(wanted(i, j) for i in batch for j in range(k)):
                continue
            s = derive_seed(*seed, prompts[batch[0]].id, len(batch))
            results = generate(self.model, self.tokenizer, [prompts[i].ids for i in batch], sampling, k, s)
            drawn = [
                Drawn(i, j, sample, s)
                for i, samples in zip(batch, results, strict=True)
                for j, sample in enumerate(samples)
                if wanted(i, j)
            ]
            emit(drawn)
            rate.update(drawn)
        return {}

    def close(self) -> None:
        self._model = None

    @classmethod
    def identity(cls, side: Any, data: Any) -> dict[str, Any]:
        return {
            "model": model_identity(side.model),
            "dtype": side.dtype,
            "tokenizer": model_identity(side.tokenizer) if side.tokenizer else "",
            "sampling": to_dict(side.sampling),  # batch settings included: they change padding, hence samples
            "max_prompt_tokens": data.max_prompt_tokens,
            "overlong": data.overlong,
        }


def plan_batches(
    lengths: list[int], batch_size: int, max_batch_tokens: int = 0, max_new_tokens: int = 0, samples: int = 1
) -> list[list[int]]:
    """Indices grouped by length (longest first, ties by index) so that padding is small; deterministic.

    With `max_batch_tokens`, a batch also stays under rows x (its longest prompt + max_new_tokens) x samples
    tokens (the padded size of the generation), so batches of long prompts are smaller; a prompt over the budget
    on its own gets a batch of one."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if not max_batch_tokens:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for i in order:
        if batches:
            b = batches[-1]
            longest = lengths[b[0]]  # longest first: the batch's first prompt is its longest
            if (
                len(b) < batch_size
                and (len(b) + 1) * (longest + max_new_tokens) * samples <= max_batch_tokens
            ):
                b.append(i)
                continue
        batches.append([i])
    return batches


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    sampling: SamplingConfig,
    num_samples: int = 1,
    seed: int = 0,
) -> list[list[Sample]]:
    """`num_samples` outputs for each prompt (one batch); returns one list of Samples per prompt."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    input_ids, attention_mask = pad_rows(prompt_ids, tokenizer.pad_token_id, left=True)
    max_new_tokens = sampling.max_new_tokens
    if (limit := position_limit(model.config)) is not None:  # never past the position table (an IndexError)
        if input_ids.shape[1] >= limit:
            raise ModelError(
                f"a prompt of {input_ids.shape[1]} tokens leaves no room for an output in the model's {limit} "
                "positions; lower data.max_prompt_tokens"
            )
        max_new_tokens = min(max_new_tokens, limit - input_ids.shape[1])
    greedy = sampling.temperature == 0
    ends = stop_ids(tokenizer)
    gen_cfg = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else sampling.temperature,
        top_p=None if greedy or sampling.top_p >= 1 else sampling.top_p,
        top_k=None if greedy or sampling.top_k == 0 else sampling.top_k,
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_samples,
        eos_token_id=ends,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=list(sampling.stop) or None,
        use_cache=True,
    )
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        generation_config=gen_cfg,
        synced_gpus=sharded_world(model) > 1,  # every process steps until all are done (FSDP: collectives)
        **({"tokenizer": tokenizer} if sampling.stop else {}),
    )
    model.train(was_training)
    # decoder-only: the prompt comes back in front of the output; encoder-decoder: the decoder start token
    skip = 1 if getattr(model.config, "is_encoder_decoder", False) else input_ids.shape[1]
    new_tokens = out[:, skip:].tolist()
    return [
        [
            to_sample(tokenizer, row, ends, sampling.stop)
            for row in new_tokens[i * num_samples : (i + 1) * num_samples]
        ]
        for i in range(len(prompt_ids))
    ]


def to_sample(tokenizer: Any, row: list[int], ends: list[int], stop: list[str]) -> Sample:
    """A generated row (padding after its end included) as a Sample: cut after the first end token, or after the
    token that completed the first stop string; the text leaves out the end token and the stop string onwards.
    The vllm backend reads its outputs through this too, so both backends mean the same by a stop."""
    end = next((i for i, t in enumerate(row) if t in ends), None)
    body = row if end is None else row[:end]
    text = tokenizer.decode(body, skip_special_tokens=True)
    cuts = [i for s in stop if s and (i := text.find(s)) >= 0]
    if cuts:
        # the fewest tokens whose text holds a stop string: where generation stopped (padding may follow)
        lo, hi = 1, len(body)
        while lo < hi:
            mid = (lo + hi) // 2
            if any(s and s in tokenizer.decode(body[:mid], skip_special_tokens=True) for s in stop):
                hi = mid
            else:
                lo = mid + 1
        return Sample(text=text[: min(cuts)], n_tokens=lo, finish="stop", ids=body[:lo])
    if end is not None:
        return Sample(text=text, n_tokens=end + 1, finish="eos", ids=row[: end + 1])
    return Sample(text=text, n_tokens=len(row), finish="length", ids=row)


def sharded_world(model: Any) -> int:
    """The number of processes whose FSDP2 shards hold `model`'s parameters (every forward of it is a collective
    over them); 1 for a model that is not sharded."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule) or not dist.is_initialized():
        return 1
    return dist.get_world_size()
