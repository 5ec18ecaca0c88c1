"""Pair generation through an OpenAI-compatible endpoint: rows/s vs concurrency, and the client's own overhead.

Run: .venv/bin/python benchmarks/api_throughput.py [--server llamacpp|transformers|canned] [--prompts 192]
     [--concurrency 1 2 4 8 16] [--clients openai lean] [--preset tiny|teacher] [--max_new_tokens 16]
     [--delay_ms 5] [--repeats 3]
Writes benchmarks/results/api_throughput_<server>_<...>.{json,md}.

The server runs on 127.0.0.1 in its own process:
- llamacpp: llama.cpp's server (`make test-servers` installs it) serving a tiny Llama preset (GGUF written here);
  it answers one request at a time;
- transformers: `transformers serve` with the same model;
- canned: a loopback server that answers every request with the same completion after --delay_ms, many at once
  (a stand-in for a batching GPU server whose requests take that long; it costs almost no CPU itself, so the
  client's own cost is all that is measured).
For each concurrency and each `api.client` (openai: the official client over aiohttp; lean: plad's own), `plad
pairs` samples a teacher and a student row per prompt through the endpoint into a fresh store (2 rows, 2 requests
per prompt). Measured in this process:
- rows/s of plad;
- rows/s of a minimal client (one aiohttp session, the same request bodies under a semaphore, no store, no
  retries, no reply checks): what the server allows at that concurrency, and the fewest CPU seconds a Python
  client can spend per request;
- client CPU / wall: this process's CPU seconds (HTTP client, JSON, the fsync'd store, progress) over wall seconds,
  the share of wall time the client itself spends working; and CPU milliseconds per request.
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
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def build(root: Path, n_prompts: int, preset: str = "tiny", model: bool = True) -> tuple[Path, Path]:
    from plad.benchmark.build import build_model, build_tokenizer
    from plad.benchmark.tasks import generate_splits
    from plad.utils.io import write_jsonl_atomic

    splits = generate_splits("count-summary", {"sft": 200, "distill": n_prompts}, corrupt_frac=0.3, seed=0)
    write_jsonl_atomic(root / "distill.jsonl", splits["distill"])
    if model:
        tok = build_tokenizer([r["prompt"] + r["target"] for r in splits["sft"]], root / "model", 320)
        build_model(preset, tok, root / "model", seed=0)
        gen = json.loads((root / "model" / "generation_config.json").read_text())
        (root / "model" / "generation_config.json").write_text(json.dumps({**gen, "do_sample": True}))
    return root / "model", root / "distill.jsonl"


# --------------------------------------------------------------------------------------------------------------
# The canned server (its own process: `api_throughput.py --serve_canned PORT DELAY_MS`)


def serve_canned(port: int, delay_ms: float) -> None:
    """HTTP/1.1 keep-alive on 127.0.0.1:port: GET -> {"data": []}, POST -> one completion after delay_ms."""

    def reply(max_tokens: int) -> bytes:
        return json.dumps(
            {
                "object": "text_completion",
                "model": "canned",
                "choices": [{"index": 0, "text": " a canned sample", "finish_reason": "length"}],
                "usage": {
                    "prompt_tokens": 24,
                    "completion_tokens": max_tokens,
                    "total_tokens": 24 + max_tokens,
                },
            }
        ).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                if head.startswith(b"POST"):
                    await asyncio.sleep(delay_ms / 1000)
                    payload = reply(int(json.loads(body).get("max_tokens", 16)))
                else:
                    payload = b'{"object": "list", "data": []}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                    % len(payload)
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def canned_server(delay_ms: float, log: Path):
    from servers import _Subprocess, free_port

    class CannedServer(_Subprocess):
        def __init__(self) -> None:
            self.port = free_port()
            self.model = "canned"
            self.base_url = f"http://127.0.0.1:{self.port}/v1"
            cmd = [sys.executable, __file__, "--serve_canned", str(self.port), str(delay_ms)]
            self._start(cmd, log, f"http://127.0.0.1:{self.port}/v1/models", 30)

    return CannedServer()


# --------------------------------------------------------------------------------------------------------------
# The measurement


async def minimal_client(
    base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int
) -> tuple[float, float]:
    """(wall s, CPU s) of the same completions requests from one plain aiohttp session."""
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    url = base_url + "/completions"
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(p: str) -> None:
            body = {"model": model, "prompt": p, "max_tokens": max_tokens, "temperature": 0.5}
            async with sem, session.post(url, data=json.dumps(body).encode(), headers=headers) as r:
                json.loads(await r.read())

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        return time.perf_counter() - t0, time.process_time() - cpu0


def plad_pairs(server, prompts_file: Path, out: Path, c: int, client: str, max_new_tokens: int) -> dict:
    from plad.config import PairsConfig, from_dict
    from plad.generation.pairs import run_pairs

    side = {
        "backend": "openai",
        "model": server.model,
        "api": {"base_url": server.base_url, "api_key_env": "", "concurrency": c, "client": client},
        "sampling": {"max_new_tokens": max_new_tokens, "temperature": 0.5},
    }
    cfg = from_dict(
        PairsConfig,
        {"prompts_file": str(prompts_file), "output_dir": str(out), "teacher": side, "student": side},
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    summary = run_pairs(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    shutil.rmtree(out)
    return {
        "rows": summary["generated_rows_this_run"],
        "wall_s": wall,
        "cpu_s": cpu,
        "retries": sum(u.get("retries", 0) for u in summary["api_usage_this_run"].values()),
    }


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve_canned":
        serve_canned(int(sys.argv[2]), float(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", choices=["llamacpp", "transformers", "canned"], default="llamacpp")
    ap.add_argument("--prompts", type=int, default=192)
    ap.add_argument(
        "--preset",
        default="tiny",
        help="served model: tiny (1 layer, d32) or teacher (4 layers, d128, 0.89M); not for --server canned",
    )
    ap.add_argument("--max_new_tokens", type=int, default=16)
    ap.add_argument("--delay_ms", type=float, default=5.0, help="--server canned: time per request, in ms")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each (concurrency, client), interleaved; medians reported",
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--clients", nargs="+", default=["openai", "lean"], choices=["openai", "lean"])
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    from servers import LlamaCppServer, TransformersServer, write_gguf

    from plad.experiments.provenance import machine
    from plad.utils.io import read_jsonl

    root = Path(tempfile.mkdtemp(prefix="plad-api-bench-"))
    model, prompts_file = build(root, args.prompts, args.preset, model=args.server != "canned")
    import aiohttp  # noqa: F401  imported once up front, so import time is not charged to the first run
    import openai  # noqa: F401

    if args.server == "llamacpp":
        server = LlamaCppServer(write_gguf(model, root / "tiny.gguf", add_bos=True), root / "server.log")
        what = f"{args.preset} Llama preset, float32, llama.cpp server (one request at a time)"
    elif args.server == "transformers":
        server = TransformersServer(model, root / "server.log")
        what = f"{args.preset} Llama preset, float32, transformers serve"
    else:
        server = canned_server(args.delay_ms, root / "server.log")
        what = f"canned replies after {args.delay_ms:g} ms, any number at once"
    texts = [r["prompt"] for r in read_jsonl(prompts_file)] * 2  # a teacher and a student request per prompt
    rows = []
    with server:
        # one unmeasured pass, so that the first concurrency does not pay for warm-up (server caches, imports)
        plad_pairs(server, prompts_file, root / "warm", 8, args.clients[0], args.max_new_tokens)
        for c in args.concurrency:
            runs: dict[str, list[dict]] = {name: [] for name in ["minimal", *args.clients]}
            for _ in range(
                args.repeats
            ):  # interleaved, so that a slow spell of the machine hits every client
                wall, cpu = asyncio.run(
                    minimal_client(server.base_url, server.model, texts, c, args.max_new_tokens)
                )
                runs["minimal"].append({"rows": len(texts), "wall_s": wall, "cpu_s": cpu, "retries": 0})
                for client in args.clients:
                    out = root / f"pairs-c{c}-{client}"
                    runs[client].append(plad_pairs(server, prompts_file, out, c, client, args.max_new_tokens))
            row = {"concurrency": c, "requests": len(texts), "repeats": args.repeats}
            for name, rs in runs.items():
                row[name] = {
                    "rows_per_s": round(median(r["rows"] / r["wall_s"] for r in rs), 1),
                    "rows_per_s_runs": [round(r["rows"] / r["wall_s"], 1) for r in rs],
                    "cpu_ms_per_request": round(median(1000 * r["cpu_s"] / r["rows"] for r in rs), 3),
                    "cpu_over_wall": round(median(r["cpu_s"] / r["wall_s"] for r in rs), 3),
                    "retries": sum(r["retries"] for r in rs),
                }
            for client in args.clients:
                row[client]["vs_minimal"] = round(row[client]["rows_per_s"] / row["minimal"]["rows_per_s"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    shutil.rmtree(root, ignore_errors=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "server": args.server,
        "served": what,
        "prompts": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "command": "python benchmarks/api_throughput.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    if args.server == "canned":
        name = f"api_throughput_canned_{args.delay_ms:g}ms"
    else:
        name = f"api_throughput_{args.server}_{args.preset}_{args.max_new_tokens}"
    (res / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        f"# API pair generation throughput ({args.server} server)",
        "",
        f"{result['date']}, {m['cpu']} ({m['cores']} cores), torch {m.get('torch', '')}; `{result['command']}`",
        f"{args.prompts} prompts x (1 teacher + 1 student row), max_new_tokens {args.max_new_tokens}; served on "
        f"127.0.0.1 in its own process: {what}.",
        "Minimal client: one plain aiohttp session sending the same requests (no store, retries or checks). "
        "CPU: this process's CPU seconds; wall: the run's seconds. "
        f"Medians of {args.repeats} interleaved runs (rows/s of each run in the JSON file).",
        "",
        "| concurrency | api.client | plad rows/s | minimal client rows/s | plad / minimal | client CPU / wall "
        "| client CPU per request | minimal client CPU per request | retries |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mini = r["minimal"]
        for client in args.clients:
            p = r[client]
            lines.append(
                f"| {r['concurrency']} | {client} | {p['rows_per_s']} | {mini['rows_per_s']} | {p['vs_minimal']:.2f} "
                f"| {100 * p['cpu_over_wall']:.1f}% | {p['cpu_ms_per_request']:.2f} ms "
                f"| {mini['cpu_ms_per_request']:.2f} ms | {p['retries']} |"
            )
    (res / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
