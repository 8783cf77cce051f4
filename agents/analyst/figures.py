"""Figures for the analysis: one bar chart per metric, the baseline next to the ideas (the paper's are agents/writer/charts.py).

Built on matplotlib's object API with the Agg canvas (agents/plotting.py says why).
"""

from __future__ import annotations

import io
import re

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agents.plotting import Bar, fmt_p


def bar_chart(metric: str, direction: str, bars: list[Bar]) -> bytes:
    """PNG bytes: means with standard-error bars, each idea annotated with its p-value."""
    fig = Figure(figsize=(max(4.0, 1.3 * len(bars) + 2.0), 3.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(bars)))
    colors = ["#7f7f7f" if b.p_value is None else {"better": "#2ca02c", "worse": "#d62728"}.get(b.verdict, "#1f77b4") for b in bars]
    ax.bar(xs, [b.mean for b in bars], yerr=[b.stderr for b in bars], capsize=4, color=colors)
    ax.set_xticks(xs, [f"{b.label}\n(n={b.n})" for b in bars], fontsize=8)
    arrow = "higher is better" if direction == "higher" else "lower is better"
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} ({arrow}); mean ± s.e.", fontsize=9)
    top = max(b.mean + b.stderr for b in bars)
    bottom = min(0.0, min(b.mean - b.stderr for b in bars))
    span = (top - bottom) or 1.0
    for x, b in zip(xs, bars, strict=True):
        if b.p_value is not None:
            ax.annotate(fmt_p(b.p_value), (x, b.mean + b.stderr), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7)
    ax.set_ylim(bottom, top + 0.15 * span)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def figure_name(project: str, round: int, metric: str) -> str:
    """Object-store name; the metric is reduced to characters safe in a path."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("._") or "metric"
    return f"{project}/figures/round-{round}/{safe}.png"
