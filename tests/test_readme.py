"""Every command block of README.md's "Quickstart with real models" section runs as written, in order, on a user's
own data (issue 13, item 11).

The blocks are read from README.md itself (so this test fails when the README drifts) and run one command at a time
through the real CLI (`plad.cli.main`, what the `plad` script calls), each in its own process, in a fresh folder.
Only the user's own things are swapped, each named below: their models (hub ids) for the bench's tiny ones, their
endpoint for a loopback server; their data files are written at the README's own paths in the format it gives; and
the README's example sizes (step counts, output lengths) get small values as extra overrides after the README's own
(the last value counts). Before a command runs, every `data/...` and `runs/...` path it reads must exist (written by
an earlier command); after it, what the later commands read must be there.

Each command's process is forked from one that imported plad and its libraries once: a fresh process per command
as a user gets, without paying torch's and transformers' imports (~5-10 s of CPU) ten times over.
"""

from __future__ import annotations

import json
import re
import select
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Bench, read_jsonl, subprocess_env
from servers import ScriptedServer

from plad.utils.io import write_jsonl_atomic

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Quickstart with real models"

# The user's models -> the bench's (tiny Llamas sharing one tokenizer).
MODELS = {"Qwen/Qwen2.5-1.5B": "teacher", "Qwen/Qwen2.5-0.5B": "student"}
# The user's endpoint (a judge, a teacher) -> a loopback OpenAI-compatible server.
ENDPOINTS = {"https://api.openai.com/v1"}
# The README's example sizes -> small ones.
SIZES = {
    "sft": ["--train.max_steps", "3"],
    "distill": ["--train.max_steps", "3"],
    "pairs": ["--teacher.sampling.max_new_tokens", "12", "--student.sampling.max_new_tokens", "12"],
    "eval": ["--generation.max_new_tokens", "12"],
}
# What each command writes that a later command, or the user, reads.
WRITES = {
    "sft": ["config.json", "model.safetensors", "tokenizer.json", "train_summary.json"],
    "distill": ["config.json", "model.safetensors", "tokenizer.json", "train_summary.json"],
    "pairs": ["samples.jsonl", "pairs.jsonl", "summary.json"],
    "eval": ["outputs.jsonl", "results.json"],
    "report": ["report.md", "report.html"],
}


def user_data() -> dict[str, list[dict]]:
    """The user's own task (no built-in task scorer reads it), in the README's formats, at the README's paths."""
    tools = ["grep", "sed", "awk", "curl", "tar", "rsync", "make", "ssh", "find", "sort", "jq", "git"]
    labeled = [
        {"id": f"q{i}", "prompt": f"What does {t} do? Answer:", "target": f" {t} is a command-line tool."}
        for i, t in enumerate(tools)
    ]
    unlabeled = [{"id": f"u{i}", "prompt": f"What is {t} for? Answer:"} for i, t in enumerate(tools[:6])]
    return {
        "data/train.jsonl": labeled[:8],
        "data/unlabeled.jsonl": unlabeled,
        "data/test.jsonl": labeled[8:],
    }


def endpoint_reply(body: dict) -> str:
    """The stand-in endpoint: a verdict for the LLM judge (its pairwise template), an answer for a teacher."""
    text = json.dumps(body.get("messages") or body.get("prompt"))
    return "Comparison: A says more.\nPreferred: A" if "Summary A:" in text else " a command-line tool."


def quickstart_blocks() -> list[list[list[str]]]:
    """The section's ```bash blocks, each as its commands (continuation lines joined, comments dropped)."""
    text = README.read_text()
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end > 0 else len(text)]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)
    assert blocks, f"no ```bash block under {SECTION!r} in {README}"
    return [
        [
            words
            for line in re.sub(r"\\\n", " ", b).splitlines()
            if (words := shlex.split(line, comments=True))
        ]
        for b in blocks
    ]


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def reads(args: list[str]) -> list[str]:
    """The README-layout paths (data/..., runs/...) a command reads: every such argument but its output_dir."""
    out = option(args, "--output_dir")
    return [a for a in args if re.match(r"(data|runs)/", a) and a != out]


# Imports what the commands use, then for each job line on stdin forks a process that runs plad.cli.main(argv) in
# the job's folder and environment, its stdout and stderr in files, and answers with its exit code.
FORKER = r"""
import json, os, sys, traceback
import plad.cli, plad.train.stages, plad.generation.pairs, plad.evaluation.evaluate, plad.reporting.report, plad.endpoint.client
import accelerate, transformers.models.llama.modeling_llama, matplotlib.pyplot
for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            os.chdir(job["cwd"])
            os.environ.update(job["env"])
            sys.argv = ["plad", *job["argv"]]
            rc = plad.cli.main(job["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Plad:
    """`plad ARGS` in a fresh process (forked from a preloaded one) in `cwd`: (exit code, stdout, stderr)."""

    def __init__(self, cwd: Path, logs: Path, env: dict[str, str]) -> None:
        self.cwd, self.logs, self.n = cwd, logs, 0
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / "forker.err").open("w") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", FORKER],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )

    def __call__(self, args: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str, str]:
        self.n += 1
        out, err = self.logs / f"{self.n}.out", self.logs / f"{self.n}.err"
        job = {"argv": args, "cwd": str(self.cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            pytest.fail(f"plad {shlex.join(args)}: no exit code in {timeout} s\n{err.read_text()[-3000:]}")
        return json.loads(line)["rc"], out.read_text(), err.read_text()

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_quickstart_runs_as_written(bench: Bench, tmp_path: Path) -> None:
    blocks = quickstart_blocks()
    work = tmp_path / "user"
    data = user_data()
    named = {a for block in blocks for cmd in block for a in cmd if a.startswith("data/")}
    assert named == set(data), f"the quickstart reads {sorted(named)}; this test writes {sorted(data)}"
    for path, rows in data.items():
        write_jsonl_atomic(work / path, rows)
    models = {hub: str(getattr(bench, which)) for hub, which in MODELS.items()}

    env = dict(subprocess_env(), HF_HUB_OFFLINE="1")  # a model id left unswapped fails instead of downloading
    exported: dict[str, str] = {}
    plad = Plad(work, tmp_path / "logs", env)
    ran: list[str] = []
    last: dict[str, list[str]] = {}  # per subcommand, the arguments of its last run (for `plad pairs ... X`)
    try:
        with ScriptedServer(endpoint_reply) as server:
            for words in (words for block in blocks for words in block):
                shown = shlex.join(words)
                if (
                    words[0] == "export"
                ):  # `export NAME=VALUE` (a key: any value does for the loopback server)
                    name, _, value = words[1].partition("=")
                    exported[name] = value
                    continue
                assert words[0] == "plad", f"the quickstart runs `{shown}`: not a plad command"
                args = words[1:]
                if args[1:2] == ["..."]:  # `plad pairs ... --status`: the same arguments as before, and more
                    assert args[0] in last, f"`{shown}`: no earlier `plad {args[0]}` to repeat"
                    args = [args[0], *last[args[0]], *args[2:]]
                last[args[0]] = args[1:]
                args = [models.get(a, server.base_url if a in ENDPOINTS else a) for a in args]
                missing = [p for p in reads(args) if not (work / p).exists()]
                assert not missing, f"`{shown}` reads {missing}, which no earlier command wrote"
                rc, stdout, stderr = plad([*args, *SIZES.get(args[0], [])], exported)
                assert rc == 0, f"`{shown}` exited with {rc}:\n{stderr[-4000:]}"
                if "--status" in args:  # prints what is stored, writes nothing
                    status = json.loads(stdout)
                    assert status["teacher"]["pending"] == status["student"]["pending"] == 0, status
                out = option(args, "--output_dir")
                for name in [] if "--status" in args else WRITES.get(args[0], []):
                    assert (work / out / name).is_file(), f"`{shown}` wrote no {out}/{name}"
                ran.append(args[0])
            assert server.requests > 0  # the endpoint blocks reached the stand-in
    finally:
        plad.close()

    assert set(ran) >= {"sft", "pairs", "distill", "eval", "report"}
    commands = [cmd for block in blocks for cmd in block if cmd[0] == "plad"]
    # "the distilled student loads with AutoModelForCausalLM.from_pretrained(folder)"
    from transformers import AutoModelForCausalLM

    distilled = next(option(cmd, "--output_dir") for cmd in commands if cmd[1] == "distill")
    AutoModelForCausalLM.from_pretrained(work / distilled)
    # every evaluation judged the user's systems on the user's test prompts
    test_ids = [r["id"] for r in data["data/test.jsonl"]]
    for cmd in (cmd for cmd in commands if cmd[1] == "eval"):
        rows = read_jsonl(work / option(cmd, "--output_dir") / "outputs.jsonl")
        assert [r["id"] for r in rows] == test_ids
