"""Offline analyst mind: a plain-language summary written only from the report.

Wording follows the metric's direction, so a lower loss reads as "lowered ...
(better)" and never as a drop in performance.
"""

from __future__ import annotations

from typing import Any

from bus.schema import AnalysisReport, Comparison, Usage


def _num(x: float) -> str:
    return f"{x:.4g}"


def describe(c: Comparison) -> str:
    moved = "raised" if c.idea_mean > c.baseline_mean else "lowered" if c.idea_mean < c.baseline_mean else "left unchanged"
    return (
        f"{c.idea_id} {moved} {c.metric} ({c.direction} is better) from {_num(c.baseline_mean)} to {_num(c.idea_mean)}: "
        f"improvement {_num(c.improvement)}, CI [{_num(c.ci_low)}, {_num(c.ci_high)}], "
        f"p = {_num(c.p_value)}, g = {_num(c.effect_size)}, n = {c.n_baseline}/{c.n_idea} -> {c.verdict}."
    )


class OfflineAnalystMind:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.usage = Usage()

    async def summarize(self, report: AnalysisReport) -> str:
        primary = [c for c in report.comparisons if c.metric == report.primary_metric]
        lines = [f"Round {report.round}: {len(primary)} idea(s) compared with the baseline on {report.primary_metric} (alpha {report.alpha})."]
        lines += [describe(c) for c in primary]
        lines += [describe(c) for c in report.comparisons if c.metric != report.primary_metric]
        better = [c.idea_id for c in primary if c.verdict == "better"]
        lines.append(f"Significantly better: {', '.join(better)}." if better else "No idea is significantly better than the baseline.")
        lines += [f"Flag: {f.text}" for f in report.flags]
        return "\n".join(lines)


def make(seed: int, config: dict[str, Any]) -> OfflineAnalystMind:
    return OfflineAnalystMind(seed)
