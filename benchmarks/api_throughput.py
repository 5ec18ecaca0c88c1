"""Pair generation through an OpenAI-compatible endpoint: rows/s vs concurrency, and the client's own overhead.

Run: .venv/bin/python benchmarks/api_throughput.py [--server llamacpp|transformers] [--prompts 192]
     [--concurrency 1 2 4 8 16]
Writes benchmarks/results/api_throughput.{json,md}.

A tiny Llama (the test preset) is served on 127.0.0.1 by llama.cpp's server (`make test-servers` installs it) or
by `transformers serve`. For each concurrency, `plad pairs` samples a teacher and a student row per prompt through
the endpoint into a fresh store (2 rows, 2 requests per prompt). Measured in this process:
- rows/s of plad;
- rows/s of a bare client (the same `openai` AsyncOpenAI requests under a semaphore, no store, no retries layer):
  what the server allows at that concurrency;
- client overhead = this process's CPU seconds (plad's client, JSON, fsync'd store, progress) / wall seconds:
  the share of wall time the client itself spends working. The server runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def build(root: Path, n_prompts: int, preset: str = "tiny") -> tuple[Path, Path]:
    from plad.benchmark.build import build_model, build_tokenizer
    from plad.benchmark.tasks import generate_splits
    from plad.data import write_jsonl_atomic

    splits = generate_splits("count-summary", {"sft": 200, "distill": n_prompts}, corrupt_frac=0.3, seed=0)
    write_jsonl_atomic(root / "distill.jsonl", splits["distill"])
    tok = build_tokenizer([r["prompt"] + r["target"] for r in splits["sft"]], root / "model", 320)
    build_model(preset, tok, root / "model", seed=0)
    gen = json.loads((root / "model" / "generation_config.json").read_text())
    (root / "model" / "generation_config.json").write_text(json.dumps({**gen, "do_sample": True}))
    return root / "model", root / "distill.jsonl"


async def bare_client(
    base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int
) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=120)
    sem = asyncio.Semaphore(concurrency)

    async def one(p: str) -> None:
        async with sem:
            await client.completions.create(model=model, prompt=p, max_tokens=max_tokens, temperature=0.5)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - t0
    await client.close()
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", choices=["llamacpp", "transformers"], default="llamacpp")
    ap.add_argument("--prompts", type=int, default=192)
    ap.add_argument(
        "--preset",
        default="tiny",
        help="served model: tiny (1 layer, d32) or teacher (4 layers, d128, 0.89M)",
    )
    ap.add_argument("--max_new_tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    from servers import LlamaCppServer, TransformersServer, write_gguf

    from plad.bench import machine
    from plad.config import PairsConfig, from_dict
    from plad.data import read_jsonl
    from plad.generation.pairs import run_pairs

    root = Path(tempfile.mkdtemp(prefix="plad-api-bench-"))
    model, prompts_file = build(root, args.prompts, args.preset)
    import openai  # imported once up front, so its import time is not charged to the first concurrency

    del openai
    if args.server == "llamacpp":
        server = LlamaCppServer(write_gguf(model, root / "tiny.gguf", add_bos=True), root / "server.log")
    else:
        server = TransformersServer(model, root / "server.log")
    texts = [r["prompt"] for r in read_jsonl(prompts_file)]
    rows = []
    with server:
        for c in args.concurrency:
            side = {
                "backend": "openai",
                "model": server.model,
                "api": {"base_url": server.base_url, "api_key_env": "", "concurrency": c},
                "sampling": {"max_new_tokens": args.max_new_tokens, "temperature": 0.5},
            }
            out = root / f"pairs-c{c}"
            cfg = from_dict(
                PairsConfig,
                {"prompts_file": str(prompts_file), "output_dir": str(out), "teacher": side, "student": side},
            )
            cpu0, t0 = time.process_time(), time.perf_counter()
            summary = run_pairs(cfg)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            n_rows = summary["generated_rows_this_run"]
            cpu0 = time.process_time()
            bare = asyncio.run(bare_client(server.base_url, server.model, texts * 2, c, args.max_new_tokens))
            bare_cpu = time.process_time() - cpu0
            row = {
                "concurrency": c,
                "rows": n_rows,
                "wall_s": round(wall, 2),
                "rows_per_s": round(n_rows / wall, 1),
                "bare_client_rows_per_s": round(2 * len(texts) / bare, 1),
                "client_cpu_s": round(cpu, 2),
                "client_overhead": round(cpu / wall, 3),
                "bare_client_cpu_s": round(bare_cpu, 2),
                "plad_extra_cpu_ms_per_request": round(1000 * (cpu - bare_cpu) / (2 * len(texts)), 2),
                "retries": sum(u.get("retries", 0) for u in summary["api_usage_this_run"].values()),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(out)
    shutil.rmtree(root, ignore_errors=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "server": args.server,
        "model": f"{args.preset} Llama preset, float32",
        "prompts": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "command": "python benchmarks/api_throughput.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    name = f"api_throughput_{args.server}_{args.preset}_{args.max_new_tokens}"
    (res / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        f"# API pair generation throughput ({args.server} server, {args.preset} model)",
        "",
        f"{result['date']}, {m['cpu']} ({m['cores']} cores), torch {m.get('torch', '')}; `{result['command']}`",
        f"{args.prompts} prompts x (1 teacher + 1 student row), max_new_tokens {args.max_new_tokens}, "
        f"{result['model']} served on 127.0.0.1 in its own process.",
        "",
        "| concurrency | plad rows/s | bare client rows/s | plad / bare | client CPU / wall | plad's extra CPU "
        "per request vs bare | retries |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['rows_per_s']} | {r['bare_client_rows_per_s']} | "
            f"{r['rows_per_s'] / r['bare_client_rows_per_s']:.2f} | {100 * r['client_overhead']:.1f}% | "
            f"{r['plad_extra_cpu_ms_per_request']} ms | {r['retries']} |"
        )
    (res / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
