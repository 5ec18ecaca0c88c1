"""Time and peak memory of one training step (forward + backward) with the output layer computed everywhere vs
only at the labelled positions (plad.core.logprobs.output_logits), on a tiny-width Llama with SmolLM2's vocabulary.

Not a test (pytest does not collect it). Compare two plad source trees, e.g. the commit before the change:

    git archive <commit> src | tar -x -C /tmp/plad-before
    OMP_NUM_THREADS=1 python benchmarks/output_layer.py before=/tmp/plad-before/src after=src

Every (repetition, method, tree) runs in its own process, trees interleaved, so that ru_maxrss is that run's peak
(resident memory, CPU); the step time is the median over the steps of a run, then over the runs. A tree named
`NAME:fallback` runs with gathered_output_layer answering None (the full forward that unknown models take).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

VOCAB, HIDDEN, LAYERS = 49_152, 64, 2  # SmolLM2's vocabulary (tied output layer), a tiny-width body
PAIRS, PROMPT_LEN, OUTPUT_LEN = 8, 100, 10


def child(method: str, fallback: bool, steps: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from plad.config import LossConfig
    from plad.core.methods import METHODS, Frozen, Item, make_batch

    if fallback:
        import plad.core.logprobs

        plad.core.logprobs.gathered_output_layer = lambda model: None
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).train()
    teacher = LlamaForCausalLM(config).eval().requires_grad_(False) if method == "kd" else None
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    def length(mean: int) -> int:
        return mean + int(torch.randint(-mean // 10, mean // 10 + 1, (1,), generator=g))

    items = [
        Item(ids(length(PROMPT_LEN)), ids(length(OUTPUT_LEN)), ids(length(OUTPUT_LEN))) for _ in range(PAIRS)
    ]
    if method == "kd":  # one output per prompt: the teacher output
        items = [Item(it.prompt, it.chosen) for it in items]
    loss = LossConfig()
    batch = make_batch(items, None, 0, loss)
    frozen = Frozen(teacher=teacher, vocab=VOCAB)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        parts = METHODS[method].loss(model, batch, loss, frozen)
        total = parts.tok_weight * parts.tok_sum / batch["n_tokens"]
        if parts.seq_sum is not None:
            total = total + parts.seq_sum / batch["n_examples"]
        total.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "step_s": statistics.median(times[1:]),
                "base_mib": base_kib / 1024,
                "peak_mib": peak_kib / 1024,
                "rows": len(batch["main"]["input_ids"]),
                "positions": int(batch["main"]["attention_mask"].sum()),
                "labelled": int((batch["main"]["labels"] != -100).sum()),
            }
        )
    )


def main(argv: list[str]) -> None:
    trees = dict(a.split("=", 1) for a in argv if "=" in a)
    reps, steps = int(os.environ.get("REPS", "3")), int(os.environ.get("STEPS", "5"))
    runs: dict[tuple[str, str], list[dict]] = {}
    for rep in range(reps):
        for method in ("plad-rank", "kd"):
            for name, path in trees.items():
                src, _, mode = path.partition(":")
                env = dict(os.environ, PYTHONPATH=os.path.abspath(src), OMP_NUM_THREADS="1")
                cmd = [sys.executable, __file__, "--child", method, mode, str(steps)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                runs.setdefault((method, name), []).append(json.loads(out.splitlines()[-1]))
                print(f"rep {rep} {method:9s} {name:10s} {out.splitlines()[-1]}", flush=True)
    print("\nmethod     tree        step s (median of runs)  peak RSS MiB  peak - before step MiB")
    for (method, name), rs in runs.items():
        step = statistics.median(r["step_s"] for r in rs)
        peak = statistics.median(r["peak_mib"] for r in rs)
        extra = statistics.median(r["peak_mib"] - r["base_mib"] for r in rs)
        print(f"{method:10s} {name:10s}  {step:8.3f}                 {peak:8.0f}      {extra:8.0f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3] == "fallback", int(sys.argv[4]))
    else:
        main(sys.argv[1:])
