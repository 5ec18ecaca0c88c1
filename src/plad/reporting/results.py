"""Results files for `plad report`: bench.json, sweep.json, a run's results.json or `plad eval` results.json,
recognised by their fields and checked before anything is written, and their systems' rows as (value, low, high)."""

from __future__ import annotations

import json
from pathlib import Path

from plad.utils.errors import ConfigError

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


def cell_interval(cell: dict | None) -> tuple[float, float, float] | None:
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


def system_rows(res: dict) -> dict[str, dict]:
    """system -> {metric: (value, low, high)} for any kind of results."""
    data = res["data"]
    if res["kind"] == "bench":
        table = data["table"]
    elif res["kind"] == "sweep":
        table = _sweep_table(data)
    else:
        table = data["results"]
    return {
        name: {m: cell_interval(row.get(m)) for m in ("mean_score", "win_rate_vs_target", "head_to_head")}
        for name, row in table.items()
    }
