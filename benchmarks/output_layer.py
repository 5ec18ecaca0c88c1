"""Time and peak memory of one training step (forward + backward) of plad-rank and kd on a tiny-width Llama with a
real model's vocabulary: the output layer everywhere vs only at the labelled positions (output_logits), and all
labelled rows' logits at once vs a chunk of rows at a time (chunked_rows), both in plad.core.logprobs.

Not a test (pytest does not collect it). Compare plad source trees, e.g. the commit before a change:

    git archive <commit> src | tar -x -C /tmp/plad-before
    OMP_NUM_THREADS=1 python benchmarks/output_layer.py before=/tmp/plad-before/src after=src \
        after-one-chunk=src:one-chunk [--vocab 151936] [--output_len 128] [--record NAME]

Every (repetition, method, tree) runs in its own process, trees interleaved, so that ru_maxrss is that run's peak
(resident memory, CPU); the step time is the median over the steps of a run, then over the runs. A tree named
`NAME=SRC:fallback` runs with gathered_output_layer answering None (the full forward that unknown models take);
`NAME=SRC:one-chunk` with CHUNK_VALUES so large that every batch is one chunk (all (M, V) logits at once).
--record NAME writes benchmarks/results/NAME.{md,json} with the machine, date and command.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

HIDDEN, LAYERS = (
    64,
    2,
)  # a tiny-width body (tied output layer): the output layer dominates, as on a real vocabulary
PAIRS, PROMPT_LEN = 8, 100
VOCAB = 49_152  # SmolLM2's vocabulary; --vocab 151936 is Qwen2's
OUTPUT_LEN = 10


def child(method: str, mode: str, steps: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import plad.core.logprobs
    from plad.config import LossConfig
    from plad.core.methods import METHODS, Frozen, Item, make_batch

    if mode == "fallback":
        plad.core.logprobs.gathered_output_layer = lambda model: None
    elif mode == "one-chunk":
        plad.core.logprobs.CHUNK_VALUES = 1 << 62
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
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
    opts = {argv[i][2:]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    trees = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("--"))
    reps, steps = int(os.environ.get("REPS", "3")), int(os.environ.get("STEPS", "5"))
    sizes = [opts.get("vocab", str(VOCAB)), opts.get("output_len", str(OUTPUT_LEN))]
    runs: dict[tuple[str, str], list[dict]] = {}
    for rep in range(reps):
        for method in ("plad-rank", "kd"):
            for name, path in trees.items():
                src, _, mode = path.partition(":")
                env = dict(os.environ, PYTHONPATH=os.path.abspath(src), OMP_NUM_THREADS="1")
                cmd = [sys.executable, __file__, "--child", method, mode or "-", str(steps), *sizes]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                runs.setdefault((method, name), []).append(json.loads(out.splitlines()[-1]))
                print(f"rep {rep} {method:9s} {name:10s} {out.splitlines()[-1]}", flush=True)
    rows = []
    for (method, name), rs in runs.items():
        rows.append(
            {
                "method": method,
                "tree": name,
                "source": trees[name],
                "step_s": statistics.median(r["step_s"] for r in rs),
                "step_s_range": [min(r["step_s"] for r in rs), max(r["step_s"] for r in rs)],
                "peak_mib": statistics.median(r["peak_mib"] for r in rs),
                "step_mib": statistics.median(r["peak_mib"] - r["base_mib"] for r in rs),
                "labelled": rs[0]["labelled"],
                "positions": rs[0]["positions"],
            }
        )
    head = "| method | tree | step s (median; range of runs) | peak RSS MiB | peak - before step MiB | labelled / positions |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["step_s_range"]
        lines.append(
            f"| {r['method']} | {r['tree']} | {r['step_s']:.3f} ({lo:.3f}-{hi:.3f}) | {r['peak_mib']:.0f} | "
            f"{r['step_mib']:.0f} | {r['labelled']} / {r['positions']} |"
        )
    print("\n".join(lines))
    if "record" in opts:
        record(opts["record"], argv, rows, lines, reps, steps, sizes)


def record(
    name: str, argv: list[str], rows: list[dict], lines: list[str], reps: int, steps: int, sizes: list
) -> None:
    import datetime
    import platform

    import torch

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name)
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()}",
        "torch": torch.__version__,
        "command": "OMP_NUM_THREADS=1 python benchmarks/output_layer.py " + " ".join(argv),
        "model": f"Llama, hidden {HIDDEN}, {LAYERS} layers, tied output layer, vocabulary {sizes[0]}, fp32",
        "batch": f"{PAIRS} pairs (plad-rank: chosen + rejected rows) or outputs (kd), prompts ~{PROMPT_LEN} "
        f"tokens, outputs ~{sizes[1]} tokens",
        "repetitions": reps,
        "steps": steps,
    }
    with open(out + ".json", "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=2)
    with open(out + ".md", "w") as f:
        f.write(f"# One training step vs the output layer's work ({meta['date']})\n\n")
        f.write("".join(f"- {k}: {v}\n" for k, v in meta.items() if k != "date"))
        f.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        VOCAB, OUTPUT_LEN = int(sys.argv[5]), int(sys.argv[6])
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main(sys.argv[1:])
