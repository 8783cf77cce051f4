"""What the analyst's charts and the paper's figures share: a bar (mean ± s.e., with its test) and how a p-value is printed.

Both draw with matplotlib's object API on the Agg canvas (no pyplot), so
nothing depends on a display or pyplot's global figure registry, and
concurrent handlers cannot draw into each other's figures.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bar:
    label: str
    mean: float
    stderr: float
    n: int
    p_value: float | None = None  # None for the control's (the baseline's) bar
    verdict: str = ""


def fmt_p(p: float) -> str:
    return f"p={p:.2g}" if p >= 1e-3 else "p<0.001"
