"""benchmarks/gpu_check.py is the one script a lent GPU runs, with minutes of device time: it must work the first
time there. Here it runs on CPU at its tiny size (the same commands, float32) and every command must succeed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_every_command_at_its_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    args = [
        "--tiny",
        "--dtype",
        "float32",
        "--steps",
        "2",
        "--batch",
        "2",
        "--prompts",
        "4",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "gpu_check.json").read_text())
    names = [r["name"] for r in info["runs"]]
    assert names == ["sft-full", "sft-lora", "pairs", "plad-rank-lora", "gkd-lora"]
    assert all(r["rc"] == 0 for r in info["runs"])
    assert all(r["tokens_per_s_median"] > 0 for r in info["runs"] if r["name"] != "pairs")
    assert "| gkd-lora | 0 |" in (out / "gpu_check.md").read_text()
