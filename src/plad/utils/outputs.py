"""Output folders: a run is never overwritten unless resumed, and then only with the settings that made it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from plad.utils.errors import ConfigError

STATE_FILE = "trainer_state.json"


SUMMARY_FILE = "train_summary.json"


def saved_checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed_settings(saved_config: Path, settings: dict) -> str:
    """The settings that differ from the run's saved plad_config.yaml, as `key: saved -> now` (at most 6)."""
    import yaml

    try:
        saved = _flat(yaml.safe_load(saved_config.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return ""
    now = _flat(settings)
    diff = [f"{k}: {saved.get(k, '(unset)')!r} -> {v!r}" for k, v in now.items() if saved.get(k, v) != v]
    return "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")


def check_output_dir(
    output_dir: Path, resume: bool, fingerprint: str | None = None, settings: dict | None = None
) -> None:
    """Refuse to overwrite a previous run unless resuming (with the same config when `fingerprint` is given: a
    refusal names the settings that changed when `settings`, the fingerprinted ones, are given); fail early,
    before any model is loaded or file written, also when the folder is not writable."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".plad-write-test-{os.getpid()}"  # per process: a run's processes probe at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir {output_dir} is not writable: {e.strerror or e}") from None
    if resume:
        if fingerprint is None:
            return
        made_with = [p / STATE_FILE for p in saved_checkpoints(output_dir)[-1:]] + [output_dir / SUMMARY_FILE]
        for marker in made_with:
            if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") != fingerprint:
                changed = changed_settings(output_dir / "plad_config.yaml", settings) if settings else ""
                raise ConfigError(
                    f"--resume: the run in {output_dir} ({marker.name}) was made with a different config"
                    + (f" ({changed})" if changed else "")
                    + "; resume with the same settings, or start a new output_dir (nothing was changed)"
                )
        return
    if (output_dir / SUMMARY_FILE).exists() or saved_checkpoints(output_dir):
        raise ConfigError(
            f"output_dir {output_dir} already holds a training run; pass --resume to continue it or choose another "
            "output_dir (nothing was overwritten)"
        )
