"""The comparison table of a run: printed (rich) and written as report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plad.utils.io import write_text_atomic


def _ci(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "-"
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _columns(results: dict[str, dict]) -> list[tuple[str, Any]]:
    """(header, cell of a system's results) for every column some system has: a judge without win rates over
    targets (ROUGE-L as the headline) leaves that column out; the mean score is named by its judge."""
    judge = next((r.get("judge") for r in results.values() if r.get("judge")), None)
    cols: list[tuple[str, Any]] = [
        (f"mean score ({judge})" if judge else "mean score", lambda r: _ci(r.get("mean_score"))),
        ("win rate vs target", lambda r: _ci(r.get("win_rate_vs_target"))),
        ("vs student-sft", lambda r: _ci(r.get("head_to_head"))),
        ("ROUGE-L", lambda r: _ci(r.get("rouge_l"))),
        ("exact match", lambda r: f"{r['exact_match']['value']:.3f}" if r.get("exact_match") else "-"),
        (
            "out tokens",
            lambda r: "-" if r.get("mean_output_tokens") is None else f"{r['mean_output_tokens']:.1f}",
        ),
        ("calibration (sum / per token)", _calibration),
    ]
    if judge == "rouge":
        cols = [c for c in cols if c[0] != "ROUGE-L"]  # the same numbers as the mean score
    return [(h, cell) for h, cell in cols if any(cell(r) != "-" for r in results.values())]


def _calibration(r: dict) -> str:
    c = r.get("calibration")
    if not c:
        return "-"
    return f"{c['summed']['value']:.3f} / {c['per_token']['value']:.3f}"


def table_rows(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """The table's header and one row per system."""
    cols = _columns(results)
    return ["system", *(h for h, _ in cols)], [
        [name, *(cell(r) for _, cell in cols)] for name, r in results.items()
    ]


def print_table(results: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(results)
    table = Table(title="plad: test set (95% bootstrap intervals)")
    for c in header:
        table.add_column(c, justify="left" if c == "system" else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


def markdown_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(path: Path, summary: dict[str, Any]) -> None:
    results = summary["results"]
    any_result = next(iter(results.values()))
    pairs = summary.get("pairs") or {}
    judge = any_result.get("judge")
    judged_by = (
        f"the `{any_result['scorer']}` task scorer" if judge == "task" else f"`{judge}`" if judge else "none"
    )
    parts = [
        "# plad report",
        "",
        f"Test set: {any_result['test_file']} ({any_result['n']} prompts), headline judge: {judged_by}."
        " Win rate over targets (a judge that scores references): the output against the dataset reference, ties "
        "count 1/2. `vs student-sft`: head-to-head win rate against the initial (SFT) student (the higher score "
        "wins). Calibration: on held-out pairs (the best and the worst by the judge of the teacher's test output, "
        "the SFT student's and the reference), how often the system's summed / per-token log-prob ranks the "
        "better output first. Intervals: 95% bootstrap.",
        "",
        markdown_table(*table_rows(results)),
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
