"""bench.md and the printed summary of `plad bench`, from its summary (what bench.json holds): how it was made,
the main table (mean over seeds with t-intervals), win rate by target length, calibration and data scaling."""

from __future__ import annotations

from plad.reporting.tables import markdown_table


def interval_text(d: dict | None) -> str:
    """`value [low, high]` of a cell across seeds (mean, ci95) or of one evaluation (value, ci95)."""
    return "-" if not d else f"{d.get('mean', d.get('value')):.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"


COLUMNS = (
    ("mean_score", "mean score"),
    ("win_rate_vs_target", "win rate vs target"),
    ("head_to_head", "vs student-sft"),
    ("rouge_l", "ROUGE-L"),
    ("exact_match_squad", "exact match (SQuAD)"),
)


def _columns(summary: dict) -> list[tuple[str, str]]:
    """The table's columns that hold a value for some system (a judge without win rates over targets, e.g.
    ROUGE-L, leaves that column out); the mean score is named by the judge."""
    judge = summary.get("judge") or "task"
    cols = [(k, f"{label} ({judge})" if k == "mean_score" else label) for k, label in COLUMNS]
    if judge == "rouge":
        cols = [c for c in cols if c[0] != "rouge_l"]  # the same numbers twice
    return [c for c in cols if any(row.get(c[0]) for row in summary["table"].values())]


def _prepared_lines(prepared: dict | None) -> list[str]:
    """The provenance of a prepared benchmark in a few lines of markdown (empty when the bench used none)."""
    if not prepared:
        return []
    t, d = prepared.get("teacher_info", {}), prepared.get("data_info", {})
    pruned, heal, tsft = (
        prepared.get("pruned_info", {}),
        prepared.get("heal_info", {}),
        prepared.get("teacher_sft_info", {}),
    )
    release = d.get("release", {})
    lines = [
        "",
        f"Prepared benchmark `{prepared.get('name')}` ({prepared.get('description', '')}):",
        f"- teacher: {t.get('gguf')} from {t.get('wheel')} (sha256 {str(t.get('wheel_sha256'))[:16]}...), "
        f"{t.get('parameters', 0) / 1e6:.1f}M parameters, {t.get('layers')} layers, vocabulary {t.get('vocab')}; "
        f"fine-tuned {tsft.get('steps')} steps (final loss {tsft.get('final_loss', float('nan')):.3f})",
        f"- data: {release.get('origin')} {release.get('version')} ({release.get('codename')}, {release.get('date')}); "
        f"split sizes {d.get('sizes')}; file sha256: "
        + ", ".join(f"{k} {v[:12]}" for k, v in (d.get("files") or {}).items()),
        f"- student: layers {pruned.get('kept_layers')} of the teacher ({pruned.get('parameters', 0) / 1e6:.1f}M "
        f"parameters), healed {heal.get('steps')} steps ({heal.get('objective')} loss): held-out NLL "
        f"{heal.get('heldout_nll_before')} -> {heal.get('heldout_nll_after')}",
    ]
    return lines


def _main_table(summary: dict) -> str:
    """Every system's cells (mean [interval]) and the learning rate chosen per seed."""

    cols = _columns(summary)
    head = ["system", *(label for _, label in cols), "lr per seed"]
    rows = [
        [
            name,
            *(interval_text(row.get(k)) for k, _ in cols),
            ", ".join(f"{float(x):g}" for x in row.get("lr", [])) or "-",
        ]
        for name, row in summary["table"].items()
    ]
    return markdown_table(head, rows)


def _header(summary: dict) -> list[str]:
    """Date, machine, command, budget and cost; then what the main table's cells are."""
    m = summary["machine"]
    judge = summary.get("judge") or "task"
    return [
        "# plad bench: every method, the same budget",
        "",
        f"Date {summary['date']}; machine: {m['cpu']}, {m['cores']} cores"
        + (f", {m['gpu']}" if m.get("gpu") else "")
        + f", torch {m['torch']}, Python {m['python']}.",
        f"Command: `{summary['command']}`; seeds {summary['seeds']}; {summary['steps']} distillation steps for every "
        f"method from the same SFT student; learning rate chosen per method and seed from {summary['grid_lr']} on the "
        "validation split; compute time per seed (s, sum of its stages): "
        + ", ".join(f"{s:g}" for s in summary["seconds_per_seed"])
        + (
            "; wall time of the invocations that made each seed (s): "
            + ", ".join(f"{s:g}" for s in summary["wall_seconds_per_seed"])
            if all(summary.get("wall_seconds_per_seed") or [None])
            else ""
        )
        + ".",
        *_prepared_lines(summary.get("prepared")),
        "",
        f"Test split, judge `{judge}`. "
        + (
            "One seed: each value with its 95% bootstrap interval over the test prompts (the tables below show "
            "no interval with one seed). "
            if len(summary["seeds"]) == 1
            else "Mean over seeds with a 95% t-interval across seeds. "
        )
        + "`vs student-sft`: "
        "head-to-head win rate against the initial (SFT) student (the higher score wins); ties count 1/2. "
        "`plad-rank-real`: plad-rank on real preference pairs (the same samples ordered by the scorer, ties "
        "dropped) instead of pseudo pairs. `plad-list-kK`: plad-list over K student samples per prompt; "
        "`plad-rank-roundsN`: iterated PLaD, N rounds of fresh student samples.",
        "",
    ]


def _length_section(summary: dict) -> list[str]:
    """Win rate (over targets, or head-to-head) and mean score per target-length bucket."""

    lengths = summary["length_buckets"]
    labels = lengths.get("labels") or [
        f"bucket {b + 1}" for b in range(len(next(iter(lengths["win_rate"].values()), [])))
    ]
    against = "targets" if lengths.get("against", "target") == "target" else "the SFT student (head-to-head)"
    parts = [
        "## Win rate and mean score by target length",
        "",
        "Quantile buckets of the test targets' length in student tokens (inner edges per seed: "
        + "; ".join(", ".join(f"{e:g}" for e in edges) or "-" for edges in lengths["edges_tokens_per_seed"])
        + ").",
        "",
    ]
    for key, what in (("win_rate", f"win rate over {against}"), ("mean_score", "mean score")):
        if lengths.get(key):
            bucket_rows = [[name, *(interval_text(c) for c in cells)] for name, cells in lengths[key].items()]
            parts += [
                f"{what[0].upper()}{what[1:]}:",
                "",
                markdown_table(["system", *labels], bucket_rows),
                "",
            ]
    return parts


def _calibration_section(summary: dict) -> list[str]:
    """How often each system's log-prob ranks the better output of held-out pairs first (none: no section)."""

    calib_rows = [
        [
            name,
            interval_text(c.get("summed")),
            interval_text(c.get("per_token")),
            ", ".join(map(str, c["pairs"])),
        ]
        for name, c in (summary.get("calibration") or {}).items()
    ]
    if not calib_rows:
        return []
    return [
        "## Calibration",
        "",
        "Held-out pairs from the test prompts, the better output (by the judge) chosen: how often each system's "
        "sequence log-prob ranks it first, summed and per token; ties = 1/2.",
        "",
        markdown_table(["system", "summed log-prob", "per-token log-prob", "pairs per seed"], calib_rows),
        "",
    ]


def _scaling_section(summary: dict) -> list[str]:
    """Each method's cells per data fraction."""

    fracs = sorted({f for v in summary["scaling"].values() for f in v}, key=float)
    parts = [
        "## Data scaling",
        "",
        "Each method at its chosen learning rate, trained on the first fraction of its training prompts "
        "(distillation prompts; labeled data for sft), same steps.",
        "",
    ]
    for key, label in COLUMNS[:3]:
        scaling_rows = [
            [name, *(interval_text((v.get(f) or {}).get(key)) for f in fracs)]
            for name, v in summary["scaling"].items()
        ]
        if any(c != "-" for r in scaling_rows for c in r[1:]):
            parts += [f"{label}:", "", markdown_table(["method", *fracs], scaling_rows), ""]
    return parts


def to_markdown(summary: dict) -> str:
    """bench.md: the header, the main table, then the length, calibration and data-scaling sections."""
    parts = [
        *_header(summary),
        _main_table(summary),
        "",
        *_length_section(summary),
        *_calibration_section(summary),
        *_scaling_section(summary),
    ]
    return "\n".join(parts)


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = _columns(summary)[:3]
    table = Table(title="plad bench: test set, mean over seeds [95% t-interval]")
    for c in ("system", *(label for _, label in cols)):
        table.add_column(c, justify="left" if c == "system" else "right")
    for name, row in summary["table"].items():
        table.add_row(name, *(interval_text(row.get(k)) for k, _ in cols))
    Console(width=140).print(table)
