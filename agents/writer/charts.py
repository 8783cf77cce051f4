"""The paper's figures: one per comparison (an idea against its control), a panel per metric, the primary metric first.

Built on matplotlib's object API with the Agg canvas (no pyplot), as the analyst's charts are, so nothing
depends on a display and concurrent handlers cannot draw into each other's figures.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agents.plotting import Bar, fmt_p


@dataclass(frozen=True)
class Panel:
    """One metric of one comparison: the control's and the idea's mean ± s.e. and the test's outcome."""

    metric: str
    direction: str
    control: Bar
    idea: Bar


def comparison_chart(title: str, panels: list[Panel]) -> bytes:
    """PNG bytes: one figure for one comparison, a panel per metric in the order given (the primary metric first)."""
    fig = Figure(figsize=(max(3.2, 2.6 * len(panels)), 3.2), dpi=120)
    FigureCanvasAgg(fig)
    for i, p in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        bars = [p.control, p.idea]
        colors = ["#7f7f7f", {"better": "#2ca02c", "worse": "#d62728"}.get(p.idea.verdict, "#1f77b4")]
        ax.bar([0, 1], [b.mean for b in bars], yerr=[b.stderr for b in bars], capsize=4, color=colors)
        ax.set_xticks([0, 1], [f"{b.label}\n(n={b.n})" for b in bars], fontsize=7)
        arrow = "higher is better" if p.direction == "higher" else "lower is better"
        ax.set_title(f"{p.metric}\n({arrow})", fontsize=8)
        top = max(b.mean + b.stderr for b in bars)
        bottom = min(0.0, min(b.mean - b.stderr for b in bars))
        if p.idea.p_value is not None:
            ax.annotate(fmt_p(p.idea.p_value), (1, p.idea.mean + p.idea.stderr), xytext=(0, 3), textcoords="offset points",
                        ha="center", fontsize=7)
        ax.set_ylim(bottom, top + 0.15 * ((top - bottom) or 1.0))
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
