"""Offline analyst mind: a plain-language summary written only from the report.

Wording follows the metric's direction, so a lower loss reads as "lowered ...
(better)" and never as a drop in performance. It names each comparison's
control, test, effect size and interval as the report has them, says which
family a verdict was corrected in, lists the metrics reported without a test,
and says so first when the report withholds its conclusions.
"""

from __future__ import annotations

from typing import Any

from bus.schema import AnalysisReport, Comparison, Usage


def _num(x: float) -> str:
    return f"{x:.4g}"


def describe(c: Comparison) -> str:
    moved = "raised" if c.idea_mean > c.baseline_mean else "lowered" if c.idea_mean < c.baseline_mean else "left unchanged"
    versus = "" if c.control == "baseline" else f" (vs its parent {c.control!r})"
    effect = "d_z" if c.effect_kind == "paired_d" else "g"
    level = f"{c.ci_level:.1%} " if c.ci_level is not None else ""
    p_adj = f", corrected p = {_num(c.p_adjusted)} ({c.family} family)" if c.p_adjusted is not None else ""
    looks = f", alpha spent over {c.looks} looks" if c.looks > 1 else ""
    return (
        f"{c.idea_id}{versus} {moved} {c.metric} ({c.direction} is better) from {_num(c.baseline_mean)} to {_num(c.idea_mean)}: "
        f"improvement {_num(c.improvement)}, {level}CI [{_num(c.ci_low)}, {_num(c.ci_high)}], "
        f"{c.test} p = {_num(c.p_value)}{p_adj}{looks}, {effect} = {_num(c.effect_size)}, n = {c.n_baseline}/{c.n_idea} -> {c.verdict}."
    )


def _descriptive(report: AnalysisReport) -> list[str]:
    metrics = sorted({d.metric for d in report.descriptive})
    out = []
    for metric in metrics:
        rows = [d for d in report.descriptive if d.metric == metric]
        values = ", ".join(f"{d.idea_id} {_num(d.mean)} ± {_num(d.stderr)} (n = {d.n})" for d in rows)
        out.append(f"Not tested: {metric}, because {rows[0].reason}: {values}.")
    return out


class OfflineAnalystMind:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.usage = Usage()

    async def summarize(self, report: AnalysisReport) -> str:
        primary = [c for c in report.comparisons if c.family == "primary"]
        lines = []
        if report.conclusions_withheld:
            lines.append("Conclusions withheld: the positive control did not differ from the baseline, so no verdict below is a finding.")
        lines.append(f"Round {report.round}: {len({c.idea_id for c in primary})} idea(s) compared on {report.primary_metric} "
                     f"(alpha {report.alpha}; primary and secondary families corrected separately).")
        lines += [describe(c) for c in primary]
        lines += [describe(c) for c in report.comparisons if c.family != "primary"]
        if report.positive_control is not None:
            lines.append("Positive control: " + describe(report.positive_control))
        lines += _descriptive(report)
        better = [c.idea_id for c in primary if c.verdict == "better" and c.control == "baseline"]
        lines.append(f"Significantly better: {', '.join(better)}." if better else "No idea is significantly better than the baseline.")
        if report.seed_plan is not None:
            sp = report.seed_plan
            lines.append(f"Seed plan: {sp.seeds} seeds per arm detect {_num(sp.min_detectable_effect)} on {sp.metric} with power "
                         f"{sp.power:g} at alpha {_num(sp.alpha)} (baseline SD {_num(sp.baseline_sd)}).")
        lines += [f"Flag: {f.text}" for f in report.flags]
        return "\n".join(lines)


def make(seed: int, config: dict[str, Any]) -> OfflineAnalystMind:
    return OfflineAnalystMind(seed)
