"""The lab's wrapper around an AI Scientist template: shipped in its bundle as ``experiment.py`` and ``plot.py``.

The job runner calls every template as ``experiment.py --out_dir OUT --seeds S [--knob v]``
and ``plot.py --run_dir OUT --out_dir FIGS``. An AI Scientist template instead runs as
``python experiment.py --out_dir=run_i`` from its own folder, with its seeds, datasets and
hyper-parameters inside, and writes ``{dataset: {means, stderrs, final_info_dict}}``.
This file bridges the two without touching the user's code: it runs the original
(``original/experiment.py`` in the bundle) with its own command line into ``OUT/run_0``
and writes the lab's ``final_info.json`` (metrics named ``<dataset>/<metric>``) beside it.

It runs inside the sandbox, so it uses the standard library only, and the lab imports
:func:`convert` from here too (``agents.aisci``), so both read the format one way.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ORIGINAL = "original"  # the user's template folder inside the bundle, unchanged
RUN_DIR = "run_0"  # the AI Scientist's name for the baseline's output folder
SEP = "/"  # metric names: <dataset>/<metric>


class FormatError(ValueError):
    """A final_info.json that is not in the AI Scientist's format; the message is one line."""


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _stderr(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    m = sum(values) / n
    return math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def _metric(mean: float, stderr: float | None, values: list[float]) -> dict[str, Any]:
    return {"mean": mean, "stderr": _stderr(values) if stderr is None else stderr, "values": values or [mean]}


def _per_seed(raw: Any) -> list[float]:
    items = raw if isinstance(raw, list) else [raw]
    return [f for f in (_number(x) for x in items) if f is not None]


def _dataset(name: str, block: Any) -> dict[str, dict[str, Any]]:
    """One dataset's metrics: the ``means``/``stderrs``/``final_info_dict`` form, or a flat {metric: number} one."""
    if not isinstance(block, dict):
        raise FormatError(f"dataset {name!r}: expected an object of results, got {type(block).__name__}")
    out: dict[str, dict[str, Any]] = {}
    if isinstance(block.get("means"), dict):
        stderrs: dict[str, Any] = block["stderrs"] if isinstance(block.get("stderrs"), dict) else {}
        per: dict[str, Any] = block["final_info_dict"] if isinstance(block.get("final_info_dict"), dict) else {}
        for key, raw in block["means"].items():
            mean = _number(raw)
            if mean is None:
                continue
            metric = key.removesuffix("_mean")
            values = _per_seed(per.get(metric, []))
            out[metric] = _metric(mean, _number(stderrs.get(f"{metric}_stderr")), values)
        return out
    for metric, raw in block.items():  # the older flat form: one number (or a list over seeds) per metric
        values = _per_seed(raw)
        if values:
            out[metric] = _metric(sum(values) / len(values), None, values)
    return out


def convert(raw: Any) -> dict[str, Any]:
    """An AI Scientist final_info.json as the lab's (``bus.schema.results.FinalInfo``'s shape)."""
    if not isinstance(raw, dict) or not raw:
        raise FormatError("final_info.json: expected an object with one entry per dataset")
    metrics: dict[str, dict[str, Any]] = {}
    datasets = []
    for dataset, block in raw.items():
        found = _dataset(str(dataset), block)
        if found:
            datasets.append(str(dataset))
        for metric, stat in found.items():
            metrics[f"{dataset}{SEP}{metric}"] = stat
    if not metrics:
        raise FormatError("final_info.json: no numeric metric in any dataset")
    seeds = max(len(s["values"]) for s in metrics.values())
    for stat in metrics.values():  # a metric reported once (not per seed) cannot be matched to seeds: keep its mean only
        if len(stat["values"]) != seeds:
            stat["values"] = []
    # The template runs its own seeds: they are numbered here in the order it reported them.
    return {"metrics": metrics, "seeds": list(range(seeds)), "config": {}, "aisci": {"datasets": datasets, "run_dir": RUN_DIR}}


def _run(argv: list[str], cwd: Path) -> int:
    """Run the original as a child, passing SIGTERM on (the runner's stop, a preemption) so it can clean up."""
    child = subprocess.Popen(argv, cwd=cwd)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    return child.wait()


def experiment_main(args: list[str] | None = None) -> int:
    """``experiment.py --out_dir OUT --seeds ...``: run the original unchanged, then convert its results."""
    p = argparse.ArgumentParser(description="The lab's wrapper around an AI Scientist template")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--seeds", default="", help="ignored: an AI Scientist template runs its own seeds")
    opts = p.parse_args(args)
    here = Path(__file__).resolve().parent
    out = Path(opts.out_dir).resolve()
    run_dir = out / RUN_DIR
    code = _run([sys.executable, str(here / ORIGINAL / "experiment.py"), f"--out_dir={run_dir}"], here / ORIGINAL)
    if code != 0:
        print(f"aisci: the template's experiment.py exited with {code}", file=sys.stderr)
        return code
    found = run_dir / "final_info.json"
    if not found.is_file():
        print(f"aisci: the template's experiment.py wrote no {RUN_DIR}/final_info.json", file=sys.stderr)
        return 3
    try:
        lab = convert(json.loads(found.read_text()))
    except ValueError as e:  # not JSON, or FormatError
        print(f"aisci: {RUN_DIR}/final_info.json: {str(e).splitlines()[0]}", file=sys.stderr)
        return 3
    (out / "final_info.json").write_text(json.dumps(lab, indent=1))
    return 0


def plot_main(args: list[str] | None = None) -> int:
    """``plot.py --run_dir OUT --out_dir FIGS``: the original plot.py reads ``run_*`` folders in its working directory."""
    p = argparse.ArgumentParser(description="The lab's wrapper around an AI Scientist template's plot.py")
    p.add_argument("--run_dir", required=True)
    p.add_argument("--out_dir", required=True)
    opts = p.parse_args(args)
    here = Path(__file__).resolve().parent
    figs = Path(opts.out_dir).resolve()
    work = figs / "aisci-plot"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(Path(opts.run_dir) / RUN_DIR, work / RUN_DIR)
    code = _run([sys.executable, str(here / ORIGINAL / "plot.py")], work)
    for png in sorted(work.glob("*.png")):
        png.replace(figs / png.name)
    shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(experiment_main())
