"""Tables of systems and their results: the run table (printed with rich, and in report.md), judges, calibration, and
the bench / sweep table; Markdown tables for bench.md and sweep.md."""

from __future__ import annotations

from typing import Any


def _ci(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "-"
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _columns(results: dict[str, dict], against: str) -> list[tuple[str, Any]]:
    """(header, cell of a system's results) for every column some system has: a judge without win rates over
    targets (ROUGE-L as the headline) leaves that column out; the mean score is named by its judge."""
    judge = next((r.get("judge") for r in results.values() if r.get("judge")), None)
    cols: list[tuple[str, Any]] = [
        (f"mean score ({judge})" if judge else "mean score", lambda r: _ci(r.get("mean_score"))),
        ("win rate vs target", lambda r: _ci(r.get("win_rate_vs_target"))),
        (against, lambda r: _ci(r.get("head_to_head"))),
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


def table_rows(
    results: dict[str, dict], against: str = "vs student-sft"
) -> tuple[list[str], list[list[str]]]:
    """The table's header and one row per system (`against`: the head-to-head column's header)."""
    cols = _columns(results, against)
    return ["system", *(h for h, _ in cols)], [
        [name, *(cell(r) for _, cell in cols)] for name, r in results.items()
    ]


def print_run_table(summary: dict) -> None:
    """The test-set table of `plad run` / `plad demo` (what results.json holds), for people."""
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(summary["results"])
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


def judges_table(results: dict[str, dict]) -> str | None:
    """Markdown: one row per system, one column per judge (win rate over targets, or the metric's mean)."""
    judges: list[str] = []
    for r in results.values():
        judges += [j for j in r.get("judges", {}) if j not in judges]
    if not judges:
        return None

    def cell(entry: dict | None) -> str:
        if not entry:
            return "-"
        m = entry.get("win_rate_vs_target") or entry.get("mean")
        if m["value"] is None:
            return f"- (no verdict in {m.get('no_verdict', 0)})"
        lo, hi = m["ci95"]
        text = f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"
        if entry["kind"] == "pairwise":
            c = m["position_consistency"]
            text += f" (consistency {'-' if c is None else f'{c:.2f}'}, no verdict {m['no_verdict']})"
        return text

    lines = ["| system | " + " | ".join(judges) + " |", "|---|" + "---|" * len(judges)]
    lines += [
        f"| {name} | " + " | ".join(cell(r.get("judges", {}).get(j)) for j in judges) + " |"
        for name, r in results.items()
    ]
    return "\n".join(lines)


def bench_calibration(data: dict) -> dict[str, dict]:
    """bench.json's calibration cells (mean over seeds) in the shape of an eval's results["calibration"]."""
    out = {}
    for name, c in (data.get("calibration") or {}).items():
        if c.get("summed") and c.get("per_token"):
            cells = {k: {"value": c[k]["mean"], "ci95": c[k]["ci95"]} for k in ("summed", "per_token")}
            out[name] = {"calibration": {**cells, "pairs": c["pairs"][0] if c["pairs"] else 0}}
    return out


def calibration_table(results: dict[str, dict]) -> str | None:
    rows = [(n, r["calibration"]) for n, r in results.items() if r.get("calibration")]
    if not rows:
        return None

    def cell(m: dict) -> str:
        return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"

    lines = ["| system | summed log-prob | per-token log-prob | pairs |", "|---|---|---|---|"]
    lines += [f"| {n} | {cell(c['summed'])} | {cell(c['per_token'])} | {c['pairs']} |" for n, c in rows]
    return "\n".join(lines)


def systems_table(rows: dict[str, dict], against: str = "vs student-sft", judge: str = "") -> str:
    """The systems' table; a column that no system has (win rates over targets under a reference metric) is left
    out."""

    def cell(c) -> str:
        return "-" if c is None else f"{c[0]:.3f} [{c[1]:.3f}, {c[2]:.3f}]"

    cols = [
        ("mean_score", f"mean score ({judge})" if judge else "mean score"),
        ("win_rate_vs_target", "win rate vs target"),
        ("head_to_head", against),
    ]
    cols = [(k, label) for k, label in cols if any(r[k] is not None for r in rows.values())] or cols[:1]
    lines = ["| system | " + " | ".join(label for _, label in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {n} | " + " | ".join(cell(r[k]) for k, _ in cols) + " |" for n, r in rows.items()]
    return "\n".join(lines)
