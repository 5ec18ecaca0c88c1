"""The comparison table of a run: printed (rich) and written as report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plad.data import write_text_atomic


def _ci(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "-"
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"


COLUMNS = (
    "system",
    "mean score",
    "win rate vs target",
    "vs student-sft",
    "exact match",
    "out tokens",
    "calibration (sum / per token)",
)


def _calibration(r: dict) -> str:
    c = r.get("calibration")
    if not c:
        return "-"
    return f"{c['summed']['value']:.3f} / {c['per_token']['value']:.3f}"


def table_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for name, r in results.items():
        tokens = r.get("mean_output_tokens")
        rows.append(
            [
                name,
                _ci(r.get("mean_score")),
                _ci(r.get("win_rate_vs_target")),
                _ci(r.get("head_to_head")),
                f"{r['exact_match']['value']:.3f}",
                "-" if tokens is None else f"{tokens:.1f}",
                _calibration(r),
            ]
        )
    return rows


def print_table(results: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="plad: test set, task scorer as judge (95% bootstrap intervals)")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "system" else "right")
    for row in table_rows(results):
        table.add_row(*row)
    Console(width=140).print(table)


def markdown_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(path: Path, summary: dict[str, Any]) -> None:
    results = summary["results"]
    any_result = next(iter(results.values()))
    pairs = summary.get("pairs") or {}
    parts = [
        "# plad report",
        "",
        f"Test set: {any_result['test_file']} ({any_result['n']} prompts), judge: "
        + (f"`{any_result['scorer']}` task scorer." if any_result["scorer"] else "none (outputs only).")
        + " Win rate over targets: the output against the dataset reference, ties count 1/2. "
        "`vs student-sft`: head-to-head win rate against the initial (SFT) student. Calibration: on held-out "
        "pairs (the teacher's and the SFT student's test outputs, the better by the task scorer), how often the "
        "system's summed / per-token log-prob ranks the better output first. Intervals: 95% bootstrap.",
        "",
        markdown_table(COLUMNS, table_rows(results)),
        "",
    ]
    if pairs:
        parts += [
            "## Pseudo-preference pairs",
            "",
            f"{pairs.get('pairs')} pairs from {pairs.get('prompts')} prompts.",
        ]
        if "mean_chosen_score" in pairs:
            parts.append(
                f"Mean score: teacher {pairs['mean_chosen_score']:.3f}, student {pairs['mean_rejected_score']:.3f}; "
                f"teacher better in {pairs['pairs_teacher_better']:.1%}, tied {pairs['pairs_tied']:.1%}, "
                f"inverted {pairs['pairs_inverted']:.1%} of pairs."
            )
        parts.append("")
    if summary.get("stage_seconds"):
        parts += ["## Time (this invocation)", ""]
        parts += [f"- {k}: {v:.1f} s" for k, v in summary["stage_seconds"].items()]
        parts += [f"- total: {summary['total_seconds']:.1f} s", ""]
    write_text_atomic(path, "\n".join(parts))
