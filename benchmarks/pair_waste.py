"""The share of a pair step's forward that carries no information: padding, and a prompt computed a second time.

A pair batch of B prompts runs either 2B prompt + output rows padded to the longest (train.shared_prompt false:
each prompt twice) or each prompt once and both its outputs after it (a tree attention mask), these groups packed
into rows as long as the longest group, padded at the end (train.shared_prompt true, the default). Wasted share = 1 - (each prompt's tokens once + every output's tokens) /
(the tokens the student's body computes), over 3 epochs of batches drawn at random or grouped by length
(train.group_by_length), with plad's own batch builder (make_batch). Exact: the same on every machine.

Data: the demo task's pairs (count-summary: a target as y+, the next example's as y-; prompts and outputs of similar
length) and pairs shaped like the real benchmark (this machine's Debian package descriptions as prompts, about 100
SmolLM2 tokens; a synopsis of about 10 tokens as y+, the next package's as y-).

Run: .venv/bin/python benchmarks/pair_waste.py   (SmolLM2's tokenizer from runs/trl_compare, fetched when missing)
Writes benchmarks/results/pair_waste.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def wasted_share(items: list, batch_size: int, group: bool, shared: bool, pad_id: int) -> float:
    from plad.config import LossConfig
    from plad.core.methods import make_batch
    from plad.train.batches import BatchStream

    stream = BatchStream(items, batch_size, 0, "main", group, shared)
    useful = computed = 0
    for g in range(3 * stream.per_epoch):
        batch = stream[g]
        main = make_batch(batch, None, pad_id, LossConfig(), None, False, shared)["main"]
        useful += sum(len(it.prompt) + len(it.chosen) + len(it.rejected) for it in batch)
        if shared:
            computed += main["shared_prompt"]["ids"].numel()
        else:
            computed += main["attention_mask"].numel()
    return 1 - useful / computed


def debian_items(work: Path, n: int) -> tuple[list, int, dict]:
    from transformers import AutoTokenizer

    from plad.config import DataOptions
    from plad.train.stages import pair_items

    sys.path.insert(0, str(HERE))
    from trl_compare import debian_rows, smollm2

    folder = smollm2(work)
    rows = debian_rows(n, folder)
    pairs = [{"id": str(i), "prompt": r["prompt"], "chosen": r["target"], "rejected": rows[(i + 1) % len(rows)]["target"]}
             for i, r in enumerate(rows)]  # fmt: skip
    tok = AutoTokenizer.from_pretrained(str(folder))
    items = pair_items(pairs, tok, DataOptions(), "debian", "pairs")
    return items, tok.pad_token_id, _lengths(items)


def demo_items(root: Path) -> tuple[list, int, dict]:
    sys.path.insert(0, str(HERE))
    from padding import build

    tok, _, pairs = build(root)
    return pairs, tok.pad_token_id, _lengths(pairs)


def _lengths(items: list) -> dict:
    import statistics

    return {"pairs": len(items), "prompt_median": statistics.median(len(it.prompt) for it in items),
            "output_median": statistics.median(len(o) for it in items for o in (it.chosen, it.rejected))}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--work", default="runs/trl_compare", help="where SmolLM2's folder is (built when missing)"
    )
    ap.add_argument("--debian_pairs", type=int, default=400)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = {
            "demo": demo_items(Path(tmp)),
            "debian": debian_items(Path(args.work).resolve(), args.debian_pairs),
        }
        share = {
            f"{name} batch {bs} {'grouped' if group else 'random'} {'shared' if shared else 'twice'}":
                round(wasted_share(items, bs, group, shared, pad), 4)
            for name, (items, pad, _) in data.items() for bs in (4, 8, 16) for group in (False, True)
            for shared in (False, True)
        }  # fmt: skip
    result = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/pair_waste.py " + " ".join(sys.argv[1:]),
              "data": {k: v[2] for k, v in data.items()}, "wasted_share": share}  # fmt: skip
    (HERE / "results" / "pair_waste.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Padding and repeated prompts in a pair step's forward ({result['date']})", "",
        f"Command: `{result['command']}`. Share of the tokens the student's body computes that are padding or a "
        "prompt's second copy, over 3 epochs (exact, machine-independent).", "",
    ]  # fmt: skip
    for name, lengths in result["data"].items():
        lines += [f"- {name}: {lengths['pairs']} pairs, prompts of median {lengths['prompt_median']} tokens, "
                  f"outputs of median {lengths['output_median']}"]  # fmt: skip
    lines += ["", "| data | batch | random, prompt twice | random, shared prompt | grouped, prompt twice | grouped, shared prompt |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name in data:
        for bs in (4, 8, 16):
            cells = [
                share[f"{name} batch {bs} {g} {s}"]
                for g in ("random", "grouped")
                for s in ("twice", "shared")
            ]
            lines.append(f"| {name} | {bs} | " + " | ".join(f"{c:.1%}" for c in cells) + " |")
    (HERE / "results" / "pair_waste.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
