"""`plad report`: Markdown + self-contained HTML report with PNG plots from `plad bench`, `plad sweep`, `plad run` or
`plad eval` results."""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Any

from plad.reporting.plots import (
    plot_calibration,
    plot_eval_length_buckets,
    plot_length_buckets,
    plot_scaling,
    plot_training,
    plot_win_rates,
)
from plad.reporting.results import load_results, merge_evals, system_rows
from plad.reporting.tables import (
    bench_calibration,
    calibration_table,
    judges_table,
    markdown_table,
    systems_table,
    table_rows,
)
from plad.utils.errors import ConfigError
from plad.utils.io import write_text_atomic

log = logging.getLogger("plad")


def write_report(paths: list[str], output_dir: str, title: str = "plad report") -> dict:
    """Markdown and self-contained HTML (plots embedded) from one or more results files."""
    if not paths:
        raise ConfigError(
            "plad report: give at least one results file (bench.json, sweep.json or results.json)"
        )
    results = merge_evals([load_results(p) for p in paths])  # every input checked before anything is written
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output_dir {out} cannot be created: {e.strerror}") from None
    md, figures = [f"# {title}", ""], []
    for i, res in enumerate(results):
        sub = out if len(results) == 1 else out / f"{i}-{res['path'].parent.name}"
        sub.mkdir(parents=True, exist_ok=True)
        rows = system_rows(res)
        data = res["data"]
        if res["kind"] == "eval":
            evals = data["results"]
            first = next(iter(evals.values()))
            md += [f"## plad eval: {', '.join(evals)}", ""]
            md += [f"Test set {first['test_file']} ({first['n']} prompts); headline judge per system: "
                   + ", ".join(f"{n} `{r.get('judge') or '-'}`" for n, r in evals.items()) + ".", ""]  # fmt: skip
        else:
            md += [f"## {res['path']}", ""]
        if res["kind"] in ("bench", "sweep"):
            m = data["machine"]
            interval = (
                f"Intervals: {data['interval']}."
                if "interval" in data
                else (
                    "One seed: the main table's intervals are 95% bootstrap intervals over the test prompts; the "
                    "others have no width."
                    if len(data.get("seeds", [])) == 1
                    else "Mean over seeds with 95% t-intervals."
                )
            )
            md += [
                f"`{data['command']}` on {data['date']}; {m['cpu']}, {m['cores']} cores; seeds {data['seeds']}. "
                + interval,
                "",
            ]
        judge = data.get("judge") or ""
        md += [systems_table(rows, "head-to-head" if res["kind"] == "eval" else "vs student-sft", judge), ""]
        made = [plot_win_rates(rows, sub, f"{title}: {res['path'].parent.name}", judge)]
        if res["kind"] == "bench":
            made.append(plot_length_buckets(data, sub))
            calibrated = bench_calibration(data)
            if calibrated:
                md += ["Calibration on held-out pairs (mean over seeds, 95% t-interval): how often the system's "
                       "sequence log-prob ranks the better output first.", "", calibration_table(calibrated),
                       ""]  # fmt: skip
                made.append(plot_calibration(calibrated, sub))
        if res["kind"] in ("bench", "sweep"):
            made.append(plot_scaling(data, sub))
        if res["kind"] in ("run", "eval"):
            judged = judges_table(data["results"])
            if judged:
                md += ["Every judge: win rate over targets (pairwise LLM judge: both orders, disagreement = tie) or "
                       "the metric's mean, with 95% bootstrap intervals.", "", judged, ""]  # fmt: skip
            calibrated = calibration_table(data["results"])
            if calibrated:
                md += ["Calibration on held-out pairs: how often the system's sequence log-prob (summed, and per "
                       "token) ranks the better output first; ties = 1/2, 95% bootstrap intervals.", "",
                       calibrated, ""]  # fmt: skip
            made += [plot_eval_length_buckets(data["results"], sub), plot_calibration(data["results"], sub)]
        if res["kind"] != "eval":
            made.append(plot_training(res, sub))
        for png in [p for p in made if p is not None]:
            rel = png.relative_to(out)
            md += [f"![{png.stem}]({rel})", ""]
            figures.append((png, rel))
    text = "\n".join(md)
    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "report.html", _html(text, out))
    log.info("report: %s, %s", out / "report.md", out / "report.html")
    return {
        "report": str(out / "report.md"),
        "html": str(out / "report.html"),
        "plots": [str(p) for p, _ in figures],
    }


def _html(markdown_text: str, root: Path) -> str:
    """A minimal self-contained rendering: headings, paragraphs, tables, and images inlined as base64."""
    body: list[str] = []
    lines = markdown_text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            data = base64.b64encode((root / src).read_bytes()).decode()
            body.append(
                f'<p><img alt="{html.escape(src)}" src="data:image/png;base64,{data}" style="max-width:100%"></p>'
            )
        elif line.startswith("|"):
            table = []
            while i < len(lines) and lines[i].startswith("|"):
                table.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            head, rows = table[0], table[2:]
            body.append("<table border=1 cellspacing=0 cellpadding=4>")
            body.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
            body.append("</table>")
            continue
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
        i += 1
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>plad report</title></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_run_report(path: Path, summary: dict[str, Any]) -> None:
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
