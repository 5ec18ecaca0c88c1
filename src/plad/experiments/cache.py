"""The stage cache of `plad run`, `plad bench` and `plad sweep`: a run folder whose stages each live in their own
folder with stage.json, the fingerprint of the stage's settings and of its inputs' fingerprints.

A finished stage with the same fingerprint is skipped; an unfinished one resumes; one made with other settings is
refused (or, with --force, re-run), so stale results are never mixed in. A changed upstream stage changes every
downstream fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plad.config import RunConfig, fingerprint, result_settings
from plad.utils.errors import ConfigError
from plad.utils.io import write_json_atomic

log = logging.getLogger("plad")


class StageDir:
    """A stage's folder and its marker file."""

    def __init__(self, root: Path, name: str, fp: str, force: bool):
        self.name, self.dir, self.fp = name, root / name, fp
        marker = self.dir / "stage.json"
        self.state = json.loads(marker.read_text()) if marker.is_file() else None
        if self.state and self.state["fingerprint"] != fp:
            if not force:
                raise ConfigError(
                    f"stage {name!r} in {self.dir} was run with other settings (or other inputs); pass --force to "
                    "re-run it and the stages after it, or choose another output_dir"
                )
            log.info("%s: settings changed, re-running (--force)", name)
            shutil.rmtree(self.dir)
            self.state = None
        elif self.state is None and self.dir.exists() and any(self.dir.iterdir()):
            if not force:
                raise ConfigError(
                    f"{self.dir} holds files that plad did not mark as a stage; move them or use --force"
                )
            shutil.rmtree(self.dir)

    @property
    def done(self) -> bool:
        return bool(self.state and self.state.get("done"))

    def start(self) -> None:
        write_json_atomic(self.dir / "stage.json", {"fingerprint": self.fp, "done": False})

    def finish(self, info: dict | None = None) -> None:
        write_json_atomic(self.dir / "stage.json", {"fingerprint": self.fp, "done": True, **(info or {})})


def settings(cfg: Any) -> dict:
    """A stage's settings as its fingerprint sees them: everything but the torch thread count, which changes speed,
    not results (so a stage made by a parallel worker with fewer threads counts as done)."""
    d = result_settings(cfg)
    d.pop("threads", None)
    return d


def file_digest(path: str) -> str:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else path


@dataclass
class Run:
    """A run folder's stages: runs each unless done with the same fingerprint, and remembers what it made."""

    cfg: RunConfig
    root: Path
    force: bool
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # sft, distill, test (and val for the built-in data)
    data_fp: str = ""
    teacher_sft: str = ""
    teacher_fp: str = ""
    student_sft: str = ""
    student_fp: str = ""
    pairs_cfg: Any = None
    pairs_dir: Path | None = None
    pairs_fp: str = ""
    pairs_info: dict | None = None
    notes: dict[str, str] = field(default_factory=dict)  # e.g. why an ablation was skipped

    def stage(self, name: str, fp_parts: dict, fn, *args) -> tuple[Path, str, Any]:
        """Run `fn(stage_dir, *args)` unless done with the same fingerprint; returns (dir, fingerprint, info)."""
        fp = fingerprint(fp_parts)
        sd = StageDir(self.root, name, fp, self.force)
        if sd.done:
            log.info("%s: done with the same settings, skipped", name)
            return sd.dir, fp, sd.state.get("info")
        sd.dir.mkdir(parents=True, exist_ok=True)
        sd.start()
        log.info("%s: running", name)
        t0 = time.perf_counter()
        info = fn(sd.dir, *args)
        self.timings[name] = round(time.perf_counter() - t0, 1)
        sd.finish({"info": info, "seconds": self.timings[name]})
        return sd.dir, fp, info

    def seconds_total(self) -> float:
        """Compute time of every finished stage of the run folder, whenever it ran (a re-run that skips
        everything keeps it)."""
        return round(
            sum(json.loads(m.read_text()).get("seconds", 0) for m in self.root.rglob("stage.json")), 1
        )

    def model_fp(self, model: str) -> str:
        from plad.core.models import model_identity

        return stage_fp(self.root, model) or fingerprint({"model": model_identity(model)})


def stage_fp(root: Path, model_dir: str) -> str | None:
    marker = Path(model_dir) / "stage.json"
    if Path(model_dir).is_relative_to(root) and marker.is_file():
        return json.loads(marker.read_text())["fingerprint"]
    return None
