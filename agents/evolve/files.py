"""``evolve/``: an evolve project's files, rendered from its state at the end (the PI stores them; `lab export` and
`lab evolve` write them to the output folder).

    candidates.jsonl   every candidate on dev (its seeds, per-seed values, duplicate of, eliminated), one a line
    candidates/<id>.py (and .diff)   each candidate's code, and its diff against its parent or the baseline
    iterations.jsonl   per iteration: the best so far with its interval, the median, the runs
    prompt-i<n>.md     what the mind was asked in iteration n
    preferences.jsonl  pairs whose chosen beat the rejected by more than seed noise on dev, with the evidence (TRL's shape)
    final.jsonl        the leader, the baseline and the best built-in on the held-out test split, per-seed values
    summary.json       the settings, the final runs, the paired comparisons and the verdict
    progress.png       best so far (95% interval) and median per iteration, the baseline, the test results
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

from pydantic import BaseModel

from agents.evolve.race import Report
from agents.evolve.stats import interval
from bus.schema.evolve import Candidate, EvolveSetting, EvolveState


def _lines(rows: Sequence[BaseModel]) -> bytes:
    return "".join(r.model_dump_json() + "\n" for r in rows).encode()


def _code(c: Candidate) -> dict[str, bytes]:
    score = f"{c.score:.4f} over {len(c.values)} seeds" if c.score is not None else c.state
    out = {f"candidates/{c.id}.py": f"# {c.name} ({c.split}: {score})\n{c.code.rstrip()}\n".encode()}
    if c.diff:
        out[f"candidates/{c.id}.diff"] = c.diff.encode()
    return out


def render(ev: EvolveState, setting: EvolveSetting, report: Report) -> dict[str, bytes]:
    """Every file of ``evolve/``, by name."""
    from agents.evolve.project import summary

    files: dict[str, bytes] = {
        "candidates.jsonl": _lines(ev.archive),
        "iterations.jsonl": _lines(ev.summaries),
        "preferences.jsonl": _lines(ev.pairs),
        "final.jsonl": _lines(report.final),
        "summary.json": json.dumps(summary(ev, setting), indent=2).encode(),
        "progress.png": plot(report, setting.spec.primary_metric, ev.request.spec.baseline),
    }
    for c in [*ev.archive, *report.final]:
        files.update(_code(c))
    for i, text in ev.prompts.items():
        files[f"prompt-i{i}.md"] = text.encode()
    return files


def plot(report: Report, metric: str, baseline: str) -> bytes:
    """Best so far (95% interval) and median per iteration on dev, the baseline's dev mean, the test results marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    its = report.summaries
    xs = [s.iteration for s in its]
    nan = float("nan")
    best = [s.best if s.best is not None else nan for s in its]
    err = [[(s.best - s.best_lo) if s.best is not None and s.best_lo is not None else 0 for s in its],
           [(s.best_hi - s.best) if s.best is not None and s.best_hi is not None else 0 for s in its]]
    ax.errorbar(xs, best, yerr=err, fmt="o-", capsize=3, label="best so far (dev, 95% CI)")
    ax.plot(xs, [s.median if s.median is not None else nan for s in its], "s--", label="median of iteration (dev)")
    base = next((c for c in report.archive if c.builtin and c.name == baseline and c.values), None)
    if base is not None and base.score is not None:
        ax.axhline(base.score, color="grey", lw=1, ls="-.", label=f"baseline {baseline} (dev)")
    for i, c in enumerate(c for c in report.final if c.values):
        lo, hi = interval(c.values)
        m = sum(c.values) / len(c.values)
        x = (xs[-1] if xs else 0) + 0.25 * (i + 1)
        ax.errorbar([x], [m], yerr=[[m - lo], [hi - m]], fmt="*" if i == 0 else "d", ms=9, capsize=3, label=f"{c.name[:24]} (test, 95% CI)")
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric)
    ax.set_xticks(xs)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


__all__ = ["plot", "render"]
