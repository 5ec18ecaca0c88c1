"""`plad report`: Markdown + self-contained HTML report with PNG plots from `plad bench`, `plad sweep` or
`plad run` results.

Plots (matplotlib, Agg backend, 150 dpi): win rate over targets and head-to-head per system with 95% intervals;
win rate by target-length bucket; data-scaling curves; training curves (loss per step) of the distillation runs.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

from plad.utils.errors import ConfigError
from plad.utils.io import read_jsonl, write_text_atomic

log = logging.getLogger("plad")


# the top-level fields of each kind of results that the report reads
REPORTED = {
    "bench": ("table", "seeds", "machine", "command", "date"),
    "sweep": ("reference", "scaling", "fractions", "seeds", "machine", "command", "date"),
    "run": ("results",),
    "eval": ("name", "judges", "test_file", "n"),
}

ROWS = {"bench": ("table",), "sweep": ("reference", "scaling"), "run": ("results",)}  # system -> its results


def load_results(path: str | Path) -> dict:
    """A bench.json, sweep.json or a run's results.json, recognised by its fields; errors name the file and what
    is wrong."""
    p = Path(path)
    if p.is_dir():
        for name in ("bench.json", "sweep.json", "results.json"):
            if (p / name).is_file():
                p = p / name
                break
    if p.is_dir():
        raise ConfigError(
            f"{p} holds no results: no bench.json (plad bench), sweep.json (plad sweep) or results.json (plad run) "
            "in it; give one of those files or the folder of a finished run"
        )
    if not p.is_file():
        raise ConfigError(
            f"results file {p} does not exist; give a bench.json (plad bench), sweep.json (plad sweep) or "
            "results.json (plad run)"
        )
    try:
        data = json.loads(p.read_bytes())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON (byte {e.start} is not UTF-8 text)") from None
    kind = None
    if isinstance(data, dict) and "table" in data and "seeds" in data:
        kind = "bench"
    elif isinstance(data, dict) and isinstance(data.get("scaling"), dict) and "fractions" in data:
        kind = "sweep"
    elif isinstance(data, dict) and isinstance(data.get("results"), dict):
        kind = "run"
    elif isinstance(data, dict) and isinstance(data.get("judges"), dict) and "name" in data:
        kind = "eval"
    if kind is not None:
        missing = [k for k in REPORTED[kind] if k not in data]
        if missing:  # before anything is written, not as a KeyError halfway through the report
            raise ConfigError(
                f"{p} is plad {kind} results without {', '.join(missing)}: cut short or edited? Make it again with "
                f"plad {kind}"
            )
        for key in ROWS.get(kind, ()):  # the systems' rows of its tables
            rows = data[key]
            names = list(rows) if isinstance(rows, dict) else []
            bad = next((f"{key}.{n}" for n in names if not isinstance(rows[n], dict)), None)
            if bad or not isinstance(rows, dict):
                raise ConfigError(f"{p}: {bad or key} is not a mapping of results as plad {kind} writes it")
        return {
            "kind": kind,
            "path": p,
            "data": {"results": {data["name"]: data}} if kind == "eval" else data,
        }
    raise ConfigError(
        f"{p} holds neither plad bench results (table, seeds), plad sweep results (scaling, fractions), plad run "
        "results (results) nor plad eval results (name, judges)"
    )


def merge_evals(results: list[dict]) -> list[dict]:
    """Several `plad eval` results.json files become one table (systems in the order given)."""
    evals = [r for r in results if r["kind"] == "eval"]
    if len(evals) < 2:
        return results
    merged: dict[str, dict] = {}
    for r in evals:
        for name, res in r["data"]["results"].items():
            if name in merged:
                raise ConfigError(
                    f"two eval results are both named {name!r} ({r['path']}); name systems apart"
                )
            merged[name] = res
    tests = {(res["test_file"], res["n"]) for res in merged.values()}
    if len(tests) > 1:
        raise ConfigError(
            "the eval results were made on different test sets: "
            + "; ".join(f"{n}: {res['test_file']} ({res['n']} prompts)" for n, res in merged.items())
        )
    first = results.index(evals[0])
    rest = [r for r in results if r["kind"] != "eval"]
    return [
        *rest[:first],
        {"kind": "eval", "path": evals[0]["path"], "data": {"results": merged}},
        *rest[first:],
    ]


def _interval(cell: dict | None) -> tuple[float, float, float] | None:
    """(value, low, high) from a bench cell (mean, ci95) or a run cell (value, ci95)."""
    if not cell:
        return None
    value = cell.get("mean", cell.get("value"))
    if value is None:  # no comparison had a verdict
        return None
    lo, hi = cell["ci95"]
    return value, lo, hi


def _sweep_table(data: dict) -> dict[str, dict]:
    """A sweep's points as systems: student-sft, then `METHOD @ F%` for every method and fraction."""
    table = dict(data["reference"])
    for method, by_frac in data["scaling"].items():
        table.update({f"{method} @ {100 * float(f):g}%": by_frac[f] for f in sorted(by_frac, key=float)})
    return table


def _rows(res: dict) -> dict[str, dict]:
    """system -> {metric: (value, low, high)} for any kind of results."""
    data = res["data"]
    if res["kind"] == "bench":
        table = data["table"]
    elif res["kind"] == "sweep":
        table = _sweep_table(data)
    else:
        table = data["results"]
    return {
        name: {m: _interval(row.get(m)) for m in ("mean_score", "win_rate_vs_target", "head_to_head")}
        for name, row in table.items()
    }


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
            ax.set_xlim(
                0,
                max(1e-9, max(hi for _, _, hi in (rows[n][metric] for n in names if rows[n][metric]))) * 1.1,
            )
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
            if (point := _interval(cell)) is not None:
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
        ref = _interval(reference.get(metric))
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


def _bench_calibration(data: dict) -> dict[str, dict]:
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


def _table_md(rows: dict[str, dict], against: str = "vs student-sft", judge: str = "") -> str:
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
        rows = _rows(res)
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
        md += [_table_md(rows, "head-to-head" if res["kind"] == "eval" else "vs student-sft", judge), ""]
        made = [plot_win_rates(rows, sub, f"{title}: {res['path'].parent.name}", judge)]
        if res["kind"] == "bench":
            made.append(plot_length_buckets(data, sub))
            bench_calibration = _bench_calibration(data)
            if bench_calibration:
                md += ["Calibration on held-out pairs (mean over seeds, 95% t-interval): how often the system's "
                       "sequence log-prob ranks the better output first.", "", calibration_table(bench_calibration),
                       ""]  # fmt: skip
                made.append(plot_calibration(bench_calibration, sub))
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
