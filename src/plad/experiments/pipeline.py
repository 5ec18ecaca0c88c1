"""`plad run` / `plad demo`: every stage in order, each in its own folder under output_dir, cached by the stage
cache (experiments/cache.py): a finished stage with the same settings and inputs is skipped, an unfinished one
resumes, one made with other settings is refused (or re-run with --force).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from plad.config import (
    DistillConfig,
    ModelSide,
    RunConfig,
    SFTConfig,
    fingerprint,
    result_settings,
    save_yaml,
    to_dict,
)
from plad.core.data import load_examples
from plad.experiments.cache import Run, file_digest, settings, stage_fp
from plad.train.precision import resolve_train
from plad.utils.errors import ConfigError
from plad.utils.io import read_jsonl, write_json_atomic, write_jsonl_atomic

log = logging.getLogger("plad")


def _with_seed(train, seed: int):
    return dataclasses.replace(train, seed=train.seed + seed)


def _reseed_side(side: ModelSide, model: str, seed: int) -> ModelSide:
    """The side with the run's model folder (an endpoint side keeps its own model name) and the run's seed."""
    if side.backend == "openai" and side.model:
        model = side.model
    return dataclasses.replace(
        side, model=model, sampling=dataclasses.replace(side.sampling, seed=side.sampling.seed + seed)
    )


def check_presets(cfg: RunConfig) -> None:
    from plad.benchmark.build import MODEL_PRESETS
    from plad.config import suggest

    for key in ("teacher_preset", "student_preset"):  # checked before any stage runs
        name = getattr(cfg.benchmark, key)
        if name not in MODEL_PRESETS:
            raise ConfigError(f"benchmark.{key}: unknown model preset {name!r}{suggest(name, MODEL_PRESETS)}")


def check_task_prompts(cfg: RunConfig, what: str, path: str, examples: list) -> None:
    """The task scorers of the run read the prompts they will score (before hours of training, not after): the
    judge (run.task) on the test and validation prompts, the pairs' scorer on the distillation prompts."""
    from plad.scoring.samples import SAMPLE_SCORERS
    from plad.scoring.scorers import check_prompts, get_scorer

    if what in ("test", "val") and cfg.task:
        check_prompts(
            get_scorer(cfg.task), examples, path, "task", "set task to '' (ROUGE-L is the headline)"
        )
    scorer = cfg.pairs.scorer
    if what == "distill" and scorer and scorer not in SAMPLE_SCORERS:
        check_prompts(
            get_scorer(scorer),
            examples,
            path,
            "pairs.scorer",
            "use pairs.scorer teacher-logp, or '' (no scores)",
        )


def data_files(cfg: RunConfig) -> dict[str, str]:
    """The run's data files (split -> path), each read and checked: rows, fields, and the prompts its task
    scorers will read."""
    files = {"sft": cfg.sft_file, "distill": cfg.distill_file, "test": cfg.test_file}
    if cfg.val_file:
        files["val"] = cfg.val_file
    for what, path in files.items():
        options = cfg.eval.data if what in ("test", "val") else cfg.distill.data
        check_task_prompts(cfg, what, path, load_examples(path, options, what != "distill", what))
    return files


def check_models(cfg: RunConfig) -> None:
    """The teacher and student folders (or hub ids) the run starts from hold a model config."""
    from plad.core.models import load_model_config

    for key in ("teacher", "student"):
        if name := getattr(cfg, key):
            load_model_config(name, key)


def with_prepared(cfg: RunConfig) -> RunConfig:
    """The run's config with the files and models of a `plad prepare` benchmark (prepared first when missing). Its
    teacher is fine-tuned already: teacher SFT is skipped."""
    from plad.config import PrepareConfig
    from plad.prepare.real import load_prepared, run_prepare

    try:
        manifest = load_prepared(cfg.prepared, cfg.prepared_cache_dir)
    except ConfigError:
        from plad.prepare.real import cache_root
        from plad.utils.lock import folder_lock

        log.info("%s is not prepared yet: preparing it now (one time, cached)", cfg.prepared)
        prepare_cfg = PrepareConfig(name=cfg.prepared, cache_dir=cfg.prepared_cache_dir)
        # one `plad prepare` at a time on a cache, as the command itself does
        with folder_lock(cache_root(prepare_cfg).parent, "prepared_cache_dir"):
            manifest = run_prepare(prepare_cfg)
    files = manifest["files"]
    return dataclasses.replace(
        cfg,
        prepared="",
        sft_file=files["train"],
        val_file=files["val"],
        distill_file=files["unlabeled"],
        test_file=files["test"],
        teacher=manifest["teacher"],
        student=manifest["student"],
        skip_teacher_sft=True,  # the prepared teacher is fine-tuned on the train split already (once, for every seed)
    )


def _make_data(d: Path, bench: Any, seed: int) -> dict:
    """The built-in benchmark's splits, generated."""
    from plad.benchmark.tasks import generate_splits

    sizes = {"sft": bench.n_sft, "val": bench.n_val, "distill": bench.n_distill, "test": bench.n_test}
    splits = generate_splits(bench.task, sizes, bench.corrupt_frac, bench.seed + seed)
    for split, rows in splits.items():
        write_jsonl_atomic(d / f"{split}.jsonl", rows)
    return {k: len(v) for k, v in splits.items()}


def _make_models(d: Path, bench: Any, sft_file: str, seed: int) -> dict:
    """The built-in presets: a tokenizer trained on the SFT texts, a teacher and a student from random weights."""
    from plad.benchmark.build import build_model, build_tokenizer
    from plad.utils.io import read_jsonl

    rows = read_jsonl(sft_file)
    texts = [r["prompt"] + r["target"] for r in rows]
    tok = build_tokenizer(texts, d / "tokenizer", bench.vocab_size)
    t = build_model(bench.teacher_preset, tok, d / "teacher", seed=seed)
    s = build_model(bench.student_preset, tok, d / "student", seed=seed + 1)
    return {"teacher_params": t.num_parameters(), "student_params": s.num_parameters(), "vocab": len(tok)}


def _sft(d: Path, model: str, train: Any, cfg: RunConfig, sft_file: str) -> dict:
    from plad.train.stages import run_sft

    sft_cfg = SFTConfig(
        model=model, train_file=sft_file, output_dir=str(d), train=train, resume=True, dtype=cfg.distill.dtype
    )
    sft_cfg.data = cfg.distill.data
    return run_sft(sft_cfg)


def data_stage(run: Run, files: dict[str, str]) -> None:
    """1. data: the user's (or a prepared benchmark's) files by their digests, or the built-in task's splits."""
    cfg = run.cfg
    if cfg.sft_file:
        run.data_fp = fingerprint({k: file_digest(v) for k, v in files.items()})
    else:
        parts = {"benchmark": result_settings(cfg.benchmark), "seed": cfg.seed}
        data_dir, run.data_fp, _ = run.stage("data", parts, _make_data, cfg.benchmark, cfg.seed)
        files = {k: str(data_dir / f"{k}.jsonl") for k in ("sft", "val", "distill", "test")}
    run.files = files


def models_stage(run: Run) -> tuple[str, str, str]:
    """2. models: the user's teacher and student, or the built-in presets (teacher, student, the stage's fp)."""
    from plad.benchmark.build import MODEL_PRESETS

    cfg, bench = run.cfg, run.cfg.benchmark
    teacher, student = cfg.teacher, cfg.student
    if teacher and student:
        return teacher, student, ""
    parts = {
        # The presets' contents, not only their names: a changed architecture must rebuild the models.
        "presets": [MODEL_PRESETS[bench.teacher_preset], MODEL_PRESETS[bench.student_preset]],
        "vocab_size": bench.vocab_size,
        "data": run.data_fp,
        "seed": cfg.seed,
    }
    models_dir, models_fp, model_info = run.stage(
        "models", parts, _make_models, bench, run.files["sft"], cfg.seed
    )
    log.info("models: %s", model_info)
    return teacher or str(models_dir / "teacher"), student or str(models_dir / "student"), models_fp


def sft_stage(run: Run, name: str, model: str, train: Any, skip: bool, models_fp: str) -> tuple[str, str]:
    """3. SFT of the teacher or the student (skipped: the model as it is, by its weights)."""
    from plad.core.models import model_identity

    cfg = run.cfg
    if skip:
        return model, stage_fp(run.root, model) or fingerprint({"model": model_identity(model)})
    train = resolve_train(_with_seed(train, cfg.seed), model, cfg.distill.dtype)
    parts = {
        # a user's (or a prepared) model by its weights, so that a folder rewritten in place is new input; the
        # built-in models by the models stage that made them
        "model": model if models_fp else model_identity(model),
        "models": models_fp,
        "data": run.data_fp,
        "train": result_settings(train),
        "opts": result_settings(cfg.distill.data),
        "dtype": cfg.distill.dtype,
    }
    d, fp, _ = run.stage(name, parts, _sft, model, train, cfg, run.files["sft"])
    return str(d), fp


def prepare(cfg: RunConfig, force: bool = False) -> Run:
    """Stages 1-4 of a run: data, models, SFT of teacher and student, pairs. Everything that can be checked is
    checked before anything is written."""
    from plad.core.methods import METHODS
    from plad.core.models import set_threads

    check_presets(cfg)
    root = Path(cfg.output_dir)
    check_eval(cfg, root)
    # the user's data files and models, before anything is written (a prepared benchmark's once it is there)
    files = data_files(cfg) if cfg.sft_file else {}
    check_models(cfg)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "run_config.yaml").exists():  # a run refused below must not relabel the folder's results
        save_yaml(cfg, root / "run_config.yaml")
    set_threads(cfg.threads)
    if cfg.prepared:
        cfg = with_prepared(cfg)
        files = data_files(cfg)
    run = Run(cfg=cfg, root=root, force=force)

    data_stage(run, files)
    teacher, student, models_fp = models_stage(run)
    run.teacher_sft, run.teacher_fp = sft_stage(
        run, "teacher-sft", teacher, cfg.teacher_sft, cfg.skip_teacher_sft, models_fp
    )
    run.student_sft, run.student_fp = sft_stage(
        run, "student-sft", student, cfg.student_sft, cfg.skip_student_sft, models_fp
    )
    # 4. pairs
    run.pairs_cfg = dataclasses.replace(
        cfg.pairs,
        prompts_file=run.files["distill"],
        teacher_logprobs=cfg.pairs.teacher_logprobs
        or any(METHODS[m].needs_teacher_logps for m in cfg.methods),
        teacher=_reseed_side(cfg.pairs.teacher, run.teacher_sft, cfg.seed),
        student=_reseed_side(cfg.pairs.student, run.student_sft, cfg.seed),
        threads=cfg.threads,
    )
    run.pairs_dir, run.pairs_fp, run.pairs_info = pairs_stage(run, "pairs", run.pairs_cfg)
    return run


def pairs_stage(
    run: Run, name: str, pairs_cfg: Any, reuse_from: Path | None = None
) -> tuple[Path, str, dict]:
    """A pairs stage. `reuse_from`: another pairs folder whose stored samples (and teacher log-probs) are copied
    in first; the store is keyed by generation settings, so only what differs is generated."""
    from plad.generation.pairs import SAMPLES, TEACHER_LOGPS, run_pairs

    def pairs(d: Path) -> dict:
        for f in (SAMPLES, TEACHER_LOGPS) if reuse_from else ():
            if (reuse_from / f).is_file() and not (d / f).exists():
                shutil.copyfile(reuse_from / f, d / f)
        return run_pairs(dataclasses.replace(pairs_cfg, output_dir=str(d)))

    parts = {
        "cfg": settings(pairs_cfg),
        "teacher": run.teacher_fp,
        "student": run.student_fp,
        "data": run.data_fp,
    }
    return run.stage(name, parts, pairs)


def distill_stage(
    run: Run,
    method: str,
    name: str | None = None,
    dcfg: DistillConfig | None = None,
    pairs: tuple[Path, str] | None = None,
) -> str:
    """Distil the SFT student with `method` (settings `dcfg`, default the run's) into stage `name`."""
    from plad.core.methods import METHODS
    from plad.train.stages import run_distill

    pairs_dir, pairs_fp = pairs or (run.pairs_dir, run.pairs_fp)
    base = dcfg or run.cfg.distill
    dcfg = dataclasses.replace(
        base,
        method=method,
        model=run.student_sft,
        teacher=run.teacher_sft if METHODS[method].needs_teacher_model else "",
        pairs_file=str(pairs_dir / "pairs.jsonl"),
        train_file=run.files["sft"],
        train=resolve_train(_with_seed(base.train, run.cfg.seed), run.student_sft, base.dtype),
        threads=run.cfg.threads,
        resume=True,
    )

    def distill(d: Path) -> dict:
        return run_distill(dataclasses.replace(dcfg, output_dir=str(d)))

    parts = {"cfg": settings(dcfg), "student": run.student_fp, "pairs": pairs_fp, "data": run.data_fp}
    d, _, _ = run.stage(name or f"distill/{method}", parts, distill)
    return str(d)


def _eval_config(cfg: RunConfig, root: Path) -> Any:
    """The run's eval settings: the run's task as scorer; the LLM judge's verdict cache at the run's top, so that
    re-running an eval stage (--force) never deletes verdicts paid for."""
    ecfg = dataclasses.replace(cfg.eval, scorer=cfg.task)
    if not ecfg.llm_judge.cache:
        judge = dataclasses.replace(ecfg.llm_judge, cache=str(root / "llm_verdicts.jsonl"))
        ecfg = dataclasses.replace(ecfg, llm_judge=judge)
    return ecfg


def check_eval(cfg: RunConfig, root: Path) -> None:
    """The judges of every eval stage, checked before the first stage runs (not after hours of training)."""
    from plad.endpoint.client import Endpoint
    from plad.evaluation.judges import check_judges

    ecfg = _eval_config(cfg, root)
    check_judges(ecfg)
    if "llm" in ecfg.judges():
        Endpoint(ecfg.llm_judge.api, ecfg.llm_judge.model, "llm judge").check_reachable()


def eval_stage(
    run: Run, name: str, model: str, split: str = "test", compare_to: str = "", stage: str = ""
) -> dict:
    """Evaluate `model` on a split of the run's data into stage `stage` (default eval/NAME)."""
    from plad.evaluation.evaluate import run_eval

    cfg = run.cfg
    ecfg = dataclasses.replace(
        _eval_config(cfg, run.root),
        model=model,
        test_file=run.files[split],
        name=name,
        compare_to=compare_to,
        seed=cfg.eval.seed + cfg.seed,
        threads=cfg.threads,
        limit=cfg.val_limit if split == "val" and cfg.val_limit else cfg.eval.limit,
    )

    def evaluate(d: Path) -> dict:
        return run_eval(dataclasses.replace(ecfg, output_dir=str(d)))

    _, _, res = run.stage(
        stage or f"eval/{name}",
        {"cfg": settings(ecfg), "model": run.model_fp(model), "data": run.data_fp},
        evaluate,
    )
    return res


def calibration_pairs(run: Run, limit: int = 0) -> Path | None:
    """Held-out pairs for the calibration analysis, one per test prompt (the first `limit`; 0: all), ranked by the
    eval's headline judge: of the teacher's output, the SFT student's output and the reference, the best is chosen
    and the worst rejected (first in that order on equal scores); prompts where all score the same are left out. A
    task scorer scores the reference like any output; under a reference metric (ROUGE-L) the reference scores 1.
    None without a judge."""
    teacher = read_jsonl(run.root / "eval" / "teacher" / "outputs.jsonl")
    student = read_jsonl(run.root / "eval" / "student-sft" / "outputs.jsonl")
    if not teacher or "score" not in teacher[0]:
        return None
    rows = []
    for t, s in list(zip(teacher, student, strict=True))[: limit or None]:
        candidates = [
            ("teacher", t["output"], t["score"]),
            ("student-sft", s["output"], s["score"]),
            # a reference metric's reference scores perfectly against itself
            ("target", t["target"], t.get("target_score", 1.0)),
        ]
        best = max(candidates, key=lambda c: c[2])
        worst = min(candidates, key=lambda c: c[2])
        if best[2] == worst[2]:
            continue
        rows.append(
            {
                "id": t["id"],
                "prompt": t["prompt"],
                "chosen": best[1],
                "rejected": worst[1],
                "chosen_from": best[0],
                "rejected_from": worst[0],
                "scores": {
                    "chosen": best[2],
                    "rejected": worst[2],
                    "scorer": run.cfg.task or "eval headline judge",
                },
            }
        )
    path = run.root / "eval" / "calibration_pairs.jsonl"
    if not path.is_file() or read_jsonl(path) != rows:  # unchanged: left as it is (a re-run touches nothing)
        write_jsonl_atomic(path, rows)
    return path if rows else None


def calibration_stage(run: Run, name: str, model: str, pairs: Path) -> dict:
    """How often `model`'s sequence log-prob ranks the better output of each held-out pair first."""
    from plad.core.models import for_inference, load_model_and_tokenizer
    from plad.evaluation.calibration import calibration, load_calibration_pairs

    def measure(d: Path) -> dict:
        m, tok = load_model_and_tokenizer(model, dtype=run.cfg.eval.dtype)
        res = calibration(
            for_inference(m), tok, load_calibration_pairs(str(pairs)), run.cfg.eval.data, str(pairs),
            run.cfg.eval.generation.batch_size, run.cfg.eval.bootstrap_samples, run.cfg.eval.seed + run.cfg.seed,
        )  # fmt: skip
        write_json_atomic(d / "calibration.json", res)
        return res

    # eval.scorer as it was when it defaulted to count-summary: calibration never reads it (eval stages use run.task),
    # and stages finished before the default became empty keep their fingerprints
    eval_settings = {**result_settings(run.cfg.eval), "scorer": run.cfg.eval.scorer or "count-summary"}
    parts = {"model": run.model_fp(model), "pairs": file_digest(str(pairs)), "eval": eval_settings}
    _, _, res = run.stage(f"calibration/{name}", parts, measure)
    return res


def fraction_key(fraction: str) -> str:
    """A data fraction as stage names and results files spell it: 0.1, 0.25, 1 (1 and 1.0 are one point)."""
    return f"{float(fraction):g}"


def fraction_stage(
    run: Run, method: str, fraction: str, dcfg: DistillConfig, compare_to: str
) -> tuple[str, dict]:
    """Data scaling: distil with `method` (settings `dcfg`) on the first `fraction` of its training prompts into
    stage scaling/METHOD/frac-F, evaluate it on the test split against `compare_to` into scaling-eval/METHOD/frac-F.
    Returns (model folder, eval results)."""
    key = fraction_key(fraction)
    dcfg = dataclasses.replace(dcfg, data_fraction=float(fraction))
    model = distill_stage(run, method, name=f"scaling/{method}/frac-{key}", dcfg=dcfg)
    res = eval_stage(
        run, f"{method}@{key}", model, compare_to=compare_to, stage=f"scaling-eval/{method}/frac-{key}"
    )
    return model, res


def run_pipeline(cfg: RunConfig, *, force: bool = False) -> dict:
    """`plad run` / `plad demo`: every stage in order (finished ones with the same settings are reused; `force`
    re-runs those whose settings changed instead of refusing). Returns what results.json holds."""
    t_run = time.perf_counter()
    run = prepare(cfg, force)

    # 5. distillation, one folder per method ----------------------------------------------------------------------
    systems: dict[str, str] = {"teacher": run.teacher_sft, "student-sft": run.student_sft}
    for method in cfg.methods:
        systems[method] = distill_stage(run, method)

    # 6. evaluation ----------------------------------------------------------------------------------------------
    results: dict[str, dict] = {}
    baseline_outputs = str(run.root / "eval" / "student-sft" / "outputs.jsonl")
    order = ["student-sft"] + [
        n for n in systems if n != "student-sft"
    ]  # its outputs: the head-to-head baseline
    for name in order:
        compare_to = "" if name == "student-sft" else baseline_outputs
        results[name] = eval_stage(run, name, systems[name], compare_to=compare_to)
    pairs = calibration_pairs(run)
    for name in [n for n in order if n != "teacher"] if pairs else []:
        results[name]["calibration"] = calibration_stage(run, name, systems[name], pairs)

    # 7. report ---------------------------------------------------------------------------------------------------
    from plad.reporting.report import write_report

    total = round(time.perf_counter() - t_run, 1)
    summary = {
        "config": to_dict(cfg),
        "results": results,
        "pairs": run.pairs_info,
        "stage_seconds": run.timings,
        "total_seconds": total,
    }
    save_yaml(cfg, run.root / "run_config.yaml")  # every stage now matches this config
    write_json_atomic(run.root / "results.json", summary)
    write_report([str(run.root / "results.json")], str(run.root))  # report.md, report.html and the plots
    log.info("report: %s (total %.1f s this invocation)", run.root / "report.md", total)
    return summary
