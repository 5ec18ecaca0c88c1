"""How and where results were made, recorded beside them: the date, the machine (CPU, cores, GPU, torch, Python),
the command line, and for a prepared benchmark where its parts came from."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def provenance(command: str) -> dict:
    """Date, machine and command line of this invocation (`command` when not started from the plad CLI)."""
    from_cli = Path(sys.argv[0]).name in ("plad", "cli.py")
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": " ".join(["plad", *sys.argv[1:]]) if from_cli else command,
    }


def prepared_provenance(run_cfg: Any) -> dict:
    """Where a prepared benchmark's parts came from (`plad prepare`'s manifest without this machine's paths):
    the teacher wheel and GGUF checksums, the data release, options and file checksums, the pruned layers and the
    healing, the teacher's SFT."""
    from plad.prepare.real import load_prepared

    manifest = load_prepared(run_cfg.prepared, run_cfg.prepared_cache_dir)
    paths = {"root", "teacher", "teacher_base", "student", "files"}  # top level: this machine's folders
    return {
        k: {i: x for i, x in v.items() if i not in ("model", "output_dir")} if isinstance(v, dict) else v
        for k, v in manifest.items()
        if k not in paths
    }
