"""`plad report`: Markdown + self-contained HTML report with PNG plots from `plad bench`, `plad sweep`, `plad run` or
`plad eval` results."""

from __future__ import annotations

import base64
import html
import logging
import re
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
    """report.md and a self-contained report.html (plots embedded) from one or more results files: what `plad
    report` writes, and what `plad run` writes into its run folder."""
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
        section = _bench_section if res["kind"] in ("bench", "sweep") else _results_section
        text, made = section(res, sub, title)
        md += text
        for png in [p for p in made if p is not None]:
            rel = png.relative_to(out)
            md += [f"![{png.stem}]({rel})", ""]
            figures.append(png)
    text = "\n".join(md)
    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "report.html", _html(text, out, title))
    log.info("report: %s, %s", out / "report.md", out / "report.html")
    return {
        "report": str(out / "report.md"),
        "html": str(out / "report.html"),
        "plots": [str(p) for p in figures],
    }


def _bench_section(res: dict, sub: Path, title: str) -> tuple[list[str], list[Path | None]]:
    """A bench.json or sweep.json: how it was made, the systems' table, calibration, scaling, training curves."""
    data = res["data"]
    m = data["machine"]
    if "interval" in data:
        interval = f"Intervals: {data['interval']}."
    elif len(data.get("seeds", [])) == 1:
        interval = (
            "One seed: the main table's intervals are 95% bootstrap intervals over the test prompts; the others "
            "have no width."
        )
    else:
        interval = "Mean over seeds with 95% t-intervals."
    rows, judge = system_rows(res), data.get("judge") or ""
    md = [f"## {res['path']}", ""]
    md += [
        f"`{data['command']}` on {data['date']}; {m['cpu']}, {m['cores']} cores; seeds {data['seeds']}. {interval}",
        "",
    ]
    md += [systems_table(rows, "vs student-sft", judge), ""]
    made = [plot_win_rates(rows, sub, f"{title}: {res['path'].parent.name}", judge)]
    if res["kind"] == "bench":
        made.append(plot_length_buckets(data, sub))
        calibrated = bench_calibration(data)
        if calibrated:
            md += ["Calibration on held-out pairs (mean over seeds, 95% t-interval): how often the system's sequence "
                   "log-prob ranks the better output first.", "", calibration_table(calibrated), ""]  # fmt: skip
            made.append(plot_calibration(calibrated, sub))
    made += [plot_scaling(data, sub), plot_training(res, sub)]
    return md, made


def _results_section(res: dict, sub: Path, title: str) -> tuple[list[str], list[Path | None]]:
    """A run's results.json (every system of `plad run`) or `plad eval` results (one or several merged): the
    systems' table, every judge, calibration, and for a run its pairs and stage times."""
    data = res["data"]
    evals = data["results"]
    first = next(iter(evals.values()))
    if res["kind"] == "eval":
        md = [f"## plad eval: {', '.join(evals)}", ""]
        md += [f"Test set {first['test_file']} ({first['n']} prompts); headline judge per system: "
               + ", ".join(f"{n} `{r.get('judge') or '-'}`" for n, r in evals.items()) + ".", ""]  # fmt: skip
        md += [markdown_table(*table_rows(evals, "head-to-head")), ""]
    else:
        md = [f"## plad run: {res['path'].parent}", "", _run_intro(first), ""]
        md += [markdown_table(*table_rows(evals)), ""]
    judged = judges_table(evals)
    if judged:
        md += ["Every judge: win rate over targets (pairwise LLM judge: both orders, disagreement = tie) or the "
               "metric's mean, with 95% bootstrap intervals.", "", judged, ""]  # fmt: skip
    calibrated = calibration_table(evals)
    if calibrated:
        md += ["Calibration on held-out pairs: how often the system's sequence log-prob (summed, and per token) ranks "
               "the better output first; ties = 1/2, 95% bootstrap intervals.", "", calibrated, ""]  # fmt: skip
    if res["kind"] == "run":
        md += _pairs_and_times(data)
    judge = data.get("judge") or (first.get("judge") if res["kind"] == "run" else "") or ""
    made = [
        plot_win_rates(system_rows(res), sub, f"{title}: {res['path'].parent.name}", judge),
        plot_eval_length_buckets(evals, sub),
        plot_calibration(evals, sub),
    ]
    if res["kind"] == "run":
        made.append(plot_training(res, sub))
    return md, made


def _run_intro(first: dict) -> str:
    judge = first.get("judge")
    judged_by = (
        f"the `{first['scorer']}` task scorer" if judge == "task" else f"`{judge}`" if judge else "none"
    )
    return (
        f"Test set: {first['test_file']} ({first['n']} prompts), headline judge: {judged_by}. Win rate over targets "
        "(a judge that scores references): the output against the dataset reference, ties count 1/2. `vs "
        "student-sft`: head-to-head win rate against the initial (SFT) student (the higher score wins). "
        "Calibration: on held-out pairs (the best and the worst by the judge of the teacher's test output, the SFT "
        "student's and the reference), how often the system's summed / per-token log-prob ranks the better output "
        "first. Intervals: 95% bootstrap."
    )


def _pairs_and_times(summary: dict[str, Any]) -> list[str]:
    """A run's pseudo-preference pairs (how often the scorer agrees that the teacher's sample is better) and the
    seconds of each stage of the invocation that wrote it."""
    md: list[str] = []
    pairs = summary.get("pairs") or {}
    if pairs:
        md += [
            "## Pseudo-preference pairs",
            "",
            f"{pairs.get('pairs')} pairs from {pairs.get('prompts')} prompts.",
        ]
        if "mean_chosen_score" in pairs:
            md.append(
                f"Mean score: teacher {pairs['mean_chosen_score']:.3f}, student {pairs['mean_rejected_score']:.3f}; "
                f"teacher better in {pairs['pairs_teacher_better']:.1%}, tied {pairs['pairs_tied']:.1%}, "
                f"inverted {pairs['pairs_inverted']:.1%} of pairs."
            )
        md.append("")
    if summary.get("stage_seconds"):
        md += ["## Time (this invocation)", ""]
        md += [f"- {k}: {v:.1f} s" for k, v in summary["stage_seconds"].items()]
        md += [f"- total: {summary['total_seconds']:.1f} s", ""]
    return md


def _html(markdown_text: str, root: Path, title: str) -> str:
    """report.md rendered by python-markdown (tables extension), its PNGs inlined as base64: one file to send."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")

    def inline(m: re.Match) -> str:
        data = base64.b64encode((root / html.unescape(m.group(2))).read_bytes()).decode()
        return f'<img alt="{m.group(1)}" src="data:image/png;base64,{data}" style="max-width:100%">'

    body = re.sub(r'<img alt="([^"]*)" src="([^"]+\.png)"\s*/?>', inline, body)
    style = "table{border-collapse:collapse}td,th{border:1px solid #999;padding:3px 6px}td{text-align:right}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n{body}\n</body></html>\n"
    )
