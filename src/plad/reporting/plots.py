"""The plots of `plad report`.

Plots (matplotlib, Agg backend, 150 dpi): win rate over targets and head-to-head per system with 95% intervals;
win rate by target-length bucket; data-scaling curves; training curves (loss per step) of the distillation runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from plad.reporting.results import cell_interval
from plad.utils.io import read_jsonl

log = logging.getLogger("plad")


def _pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    _pyplot().close(fig)
    return path


def _color(i: int) -> Any:
    return _pyplot().get_cmap("tab20")(i % 20)


def _style(i: int, name: str) -> dict:
    """20 distinguishable colours, dashed after them; the baselines drawn thick."""
    style = {"color": _color(i), "linestyle": "-" if i < 20 else "--"}
    if name in ("sft", "teacher", "student-sft"):
        style["linewidth"] = 2.5
    return style


WIN_RATE_PANELS = (
    ("mean_score", "mean score of the judge"),
    ("win_rate_vs_target", "win rate over targets (ties = 1/2)"),
    ("head_to_head", "head-to-head vs student-sft (ties = 1/2)"),
)


def plot_win_rates(rows: dict[str, dict], out: Path, title: str, judge: str = "") -> Path | None:
    """A panel per metric that some system has (a judge without win rates over targets gets no empty panel):
    bars with 95% intervals, the sft control as a dashed line, 1/2 marked on the win-rate panels."""
    plt = _pyplot()

    names = list(rows)
    panels = [(m, label) for m, label in WIN_RATE_PANELS if any(rows[n][m] is not None for n in names)]
    if not panels:
        return None
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 0.35 * len(names) + 1.8), sharey=True, squeeze=False
    )
    for ax, (metric, label) in zip(axes[0], panels, strict=True):
        if metric == "mean_score" and judge:
            label = f"mean score ({judge})"
        ys, vals, errs = [], [], [[], []]
        for i, name in enumerate(names):
            cell = rows[name][metric]
            if cell is None:
                continue
            v, lo, hi = cell
            ys.append(i)
            vals.append(v)
            errs[0].append(max(v - lo, 0))
            errs[1].append(max(hi - v, 0))
        ax.barh(ys, vals, xerr=errs, color="#4C72B0", ecolor="black", capsize=3, height=0.6)
        ref = rows.get("sft", {}).get(metric)
        if ref is not None:
            ax.axvline(ref[0], color="#C44E52", linestyle="--", linewidth=1, label="sft control")
            ax.legend(loc="lower right", fontsize=8)
        if metric != "mean_score":
            ax.axvline(0.5, color="grey", linewidth=0.8)
            ax.set_xlim(0, 1)
        else:
            top = max(hi for _, _, hi in (rows[n][metric] for n in names if rows[n][metric]))
            ax.set_xlim(0, (top if top > 0 else 1) * 1.1)  # all zero: a readable 0..1 axis, not 0..1e-9
        ax.set_xlabel(f"{label}\n95% interval")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(names)), names)
    axes[0][0].invert_yaxis()
    fig.suptitle(title)
    return _save(fig, out / "win_rates.png")


def plot_length_buckets(bench: dict, out: Path) -> Path | None:
    """plad bench's win rate (over targets, or head-to-head vs the SFT student) and mean score per target-length
    bucket, mean over seeds: one panel each."""
    plt = _pyplot()

    lengths = bench.get("length_buckets", {})
    panels = [
        (k, v)
        for k, v in (("win_rate", lengths.get("win_rate")), ("mean_score", lengths.get("mean_score")))
        if v
    ]
    if not panels:
        return None
    n = len(next(iter(panels[0][1].values())))
    labels = lengths.get("labels")
    if not labels:  # bench.json written before labels were stored
        edges = lengths["edges_tokens_per_seed"][0]
        bounds = [0, *edges, None]
        labels = [
            f"<= {bounds[b + 1]:g}"
            if b == 0
            else (f"> {bounds[b]:g}" if b == n - 1 else f"{bounds[b]:g}-{bounds[b + 1]:g}")
            for b in range(n)
        ]
    against = "targets" if lengths.get("against", "target") == "target" else "student-sft (head-to-head)"
    ylabels = {
        "win_rate": f"win rate over {against}",
        "mean_score": f"mean score ({bench.get('judge') or 'task'})",
    }
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 4.8), squeeze=False)
    # one colour per system in every panel (the head-to-head panel has no student-sft line)
    names = list(dict.fromkeys(name for _, buckets in panels for name in buckets))
    palette = plt.get_cmap("tab10") if len(names) <= 10 else _color  # tab10: no light/dark pairs
    for ax, (key, buckets) in zip(axes[0], panels, strict=True):
        for name, cells in buckets.items():
            vals = [c["mean"] if c else float("nan") for c in cells]
            i = names.index(name)
            style = {**_style(i, name), "color": palette(i)}
            ax.plot(range(n), vals, marker="o", label=name, **style)
        ax.set_xticks(range(n), labels[:n])
        ax.set_xlabel("target length (student tokens), quantile buckets of seed 0")
        ax.set_ylabel(f"{ylabels[key]}\n(mean over seeds)")
        if key == "win_rate":
            ax.axhline(0.5, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
    handles = {
        h.get_label(): h for ax in axes[0] for h in ax.get_lines() if not h.get_label().startswith("_")
    }
    axes[0][-1].legend(
        [handles[x] for x in names], names, fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left"
    )
    fig.suptitle("By target length")
    return _save(fig, out / "length_buckets.png")


def _scaling_series(data: dict, metric: str) -> dict[str, dict[float, tuple]]:
    """method -> {fraction: (value, low, high)}. bench.json holds one win-rate cell per fraction, sweep.json a cell
    per metric."""
    series: dict[str, dict[float, tuple]] = {}
    for name, by_frac in (data.get("scaling") or {}).items():
        points = {}
        for frac, cell in by_frac.items():
            if cell and "ci95" not in cell:
                cell = cell.get(metric)
            elif metric != "win_rate_vs_target":
                cell = None
            if (point := cell_interval(cell)) is not None:
                points[float(frac)] = point
        if points:
            series[name] = points
    return series


SCALING_METRICS = {
    "win_rate_vs_target": "win rate over targets (ties = 1/2)",
    "mean_score": "mean score of the judge",
    "head_to_head": "head-to-head vs student-sft (ties = 1/2)",
}


def plot_scaling(data: dict, out: Path) -> Path | None:
    """Data-scaling curves of bench.json or sweep.json: a panel per metric, the value at every fraction present with
    its interval, the SFT student (no distillation) as a horizontal reference line with its interval as a band."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, NullLocator

    panels = {m: s for m in SCALING_METRICS if (s := _scaling_series(data, m))}
    if not panels:
        return None
    interval = data.get("interval", "mean over seeds, 95% t-interval across seeds")
    reference = (data.get("reference") or data.get("table") or {}).get("student-sft") or {}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (metric, series) in zip(axes[0], panels.items(), strict=True):
        fracs = sorted({f for points in series.values() for f in points})
        k = len(series)
        colors = plt.get_cmap("tab10") if k <= 10 else _color  # tab10: no light/dark pairs
        for i, (name, points) in enumerate(series.items()):
            xs = sorted(points)
            shift = 1 + 0.025 * (i - (k - 1) / 2)  # side by side on the log axis, so the bars do not overlap
            ys = [points[f][0] for f in xs]
            err = [[points[f][0] - points[f][1] for f in xs], [points[f][2] - points[f][0] for f in xs]]
            ax.errorbar(
                [100 * f * shift for f in xs],
                ys,
                yerr=err,
                marker="o",
                capsize=3,
                label=name,
                color=colors(i),
            )
        ref = cell_interval(reference.get(metric))
        if ref is not None:
            ax.axhline(
                ref[0], color="black", linestyle="--", linewidth=1.2, label="student-sft (no distillation)"
            )
            ax.axhspan(ref[1], ref[2], color="grey", alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks([100 * f for f in fracs], [f"{100 * f:g}%" for f in fracs])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(100 * fracs[0] / 1.3, 100 * fracs[-1] * 1.3)
        ax.set_xlabel("fraction of the distillation data (% of training prompts, log scale)")
        ax.set_ylabel(f"{SCALING_METRICS[metric]}\n({interval})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    title = "Data scaling"
    if "steps" in data and "lr" in data:  # a sweep: every point trained the same way
        title += f": {data['steps']} steps at lr {data['lr']:g} from the SFT student, seeds {data['seeds']}"
    fig.suptitle(title)
    return _save(fig, out / "scaling.png")


def plot_eval_length_buckets(results: dict[str, dict], out: Path) -> Path | None:
    """Win rate over targets per target-length bucket (the headline judge of each eval), with 95% intervals."""
    plt = _pyplot()

    have = {n: r for n, r in results.items() if r.get("judge") and r.get("length_buckets")}
    if not have:
        return None
    first = next(iter(have.values()))
    labels, unit = first["length_buckets"]["labels"], first["length_buckets"]["unit"]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    k = len(have)
    for i, (name, r) in enumerate(have.items()):
        cells = r["judges"][r["judge"]]["by_length"]
        if [c["bucket"] for c in cells] != labels:
            log.warning(
                "report: %s has other length buckets than %s; left out of the plot", name, next(iter(have))
            )
            continue
        xs = [b + 0.6 * (i - (k - 1) / 2) / max(k, 1) for b in range(len(labels))]
        ys = [c["value"] if c["n"] else float("nan") for c in cells]  # an empty bucket: no point
        err = [
            [max(y - c["ci95"][0], 0) if c["n"] else 0 for y, c in zip(ys, cells, strict=True)],
            [max(c["ci95"][1] - y, 0) if c["n"] else 0 for y, c in zip(ys, cells, strict=True)],
        ]
        ax.errorbar(
            xs, ys, yerr=err, marker="o", capsize=3, label=f"{name} ({r['judge']})", **_style(i, name)
        )
    sizes = first["length_buckets"]["sizes"]
    ax.set_xticks(range(len(labels)), [f"{lab}\n(n={n})" for lab, n in zip(labels, sizes, strict=True)])
    ax.set_xlabel(f"target length ({unit}), buckets")
    ax.set_ylabel("win rate over targets (ties = 1/2)\n95% bootstrap interval")
    ax.set_ylim(-0.02, 1.02)
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.set_title("Win rate by target length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, out / "length_buckets.png")


def plot_calibration(results: dict[str, dict], out: Path) -> Path | None:
    """Ranking accuracy of each system's likelihood on the held-out pairs, summed and per token."""
    plt = _pyplot()

    have = {n: r["calibration"] for n, r in results.items() if r.get("calibration")}
    if not have:
        return None
    names = list(have)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 2))
    for j, (key, label, color) in enumerate(
        (("summed", "summed log-prob", "#4C72B0"), ("per_token", "per-token log-prob", "#DD8452"))
    ):
        ys = [i + (j - 0.5) * 0.38 for i in range(len(names))]
        vals = [have[n][key]["value"] for n in names]
        err = [
            [max(v - have[n][key]["ci95"][0], 0) for v, n in zip(vals, names, strict=True)],
            [max(have[n][key]["ci95"][1] - v, 0) for v, n in zip(vals, names, strict=True)],
        ]
        ax.barh(ys, vals, xerr=err, height=0.36, color=color, ecolor="black", capsize=3, label=label)
    ax.axvline(0.5, color="grey", linewidth=0.8, linestyle="--", label="chance")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    n_pairs = next(iter(have.values()))["pairs"]
    ax.set_xlabel(
        f"fraction of {n_pairs} held-out pairs where the better output has the higher likelihood (95% interval)"
    )
    ax.set_title("Calibration: does the likelihood rank the better output first?")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: it never covers a bar
    return _save(fig, out / "calibration.png")


def _curves(res: dict) -> dict[str, list[dict]]:
    """method -> metrics.jsonl rows of its distillation run (bench: seed 0 at the chosen lr)."""
    root = res["path"].parent
    found: dict[str, list[dict]] = {}
    if res["kind"] == "bench":
        seed = res["data"]["seeds"][0]
        for name, row in res["data"]["table"].items():
            lrs = row.get("lr")
            if not lrs:
                continue
            path = root / f"seed-{seed}" / "tune" / name / f"lr-{float(lrs[0]):g}" / "metrics.jsonl"
            if path.is_file():
                found[name] = read_jsonl(path)
    elif res["kind"] == "sweep":
        seed = res["data"]["seeds"][0]
        for method, by_frac in res["data"]["scaling"].items():
            for f in sorted(by_frac, key=float):
                path = root / f"seed-{seed}" / "scaling" / method / f"frac-{float(f):g}" / "metrics.jsonl"
                if path.is_file():
                    found[f"{method} @ {100 * float(f):g}%"] = read_jsonl(path)
    else:
        for name in res["data"]["results"]:
            path = root / "distill" / name / "metrics.jsonl"
            if path.is_file():
                found[name] = read_jsonl(path)
    return found


# Loss parts in metrics.jsonl besides the total (each method logs those it has), and how they are drawn.
LOSS_PARTS = (
    ("calibration", "calibration / preference term", "--", "#DD8452"),
    ("divergence", "divergence term", "--", "#DD8452"),
    ("reg_ce", "regulariser (CE)", ":", "#55A868"),
    ("reg_kl", "regulariser (KL to the initial student)", ":", "#55A868"),
)


def plot_training(res: dict, out: Path) -> Path | None:
    """One panel per run, each with its own y axis (the methods' losses are different quantities: CE in nats per
    token, a hinge on log-probs, a KL): the total loss and the parts the method logs."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    curves = _curves(res)
    if not curves:
        return None
    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.0 * rows + 0.8), squeeze=False)
    for ax, (name, metrics) in zip(axes.flat, curves.items(), strict=False):
        steps = [r["step"] for r in metrics]
        marker = {"marker": "o", "markersize": 3}  # a run logged once still shows its point
        ax.plot(
            steps, [r["loss"] for r in metrics], color="#4C72B0", linewidth=2, label="loss (total)", **marker
        )
        for key, label, style, color in LOSS_PARTS:
            if all(key in r for r in metrics):
                ax.plot(steps, [r[key] for r in metrics], color=color, linestyle=style, label=label, **marker)
        ax.set_title(name, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimizer step", fontsize=8)
        if len(set(steps)) == 1:  # one logged step: a unit-wide axis, so its ticks are whole steps too
            ax.set_xlim(steps[0] - 1, steps[0] + 1)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Training curves, window means per logged step"
        + {"bench": " (seed 0, chosen lr)", "sweep": " (first seed)"}.get(res["kind"], "")
    )
    return _save(fig, out / "training_curves.png")
