"""What ran: each arm's configuration as its runs recorded it, and the profile they ran under.

The paper's configuration sentences come from here, never from the template's
defaults: a value is the one the arm's runs wrote to ``final_info.json``'s
``config``; only a knob no run recorded falls back to ``spec.effective(profile)``,
and the paper says which knobs those are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bus.schema import AnalysisReport, TemplateSpec
from bus.schema.template import TemplateError


def recorded(report: AnalysisReport, arm: str) -> dict[str, Any]:
    """The configuration the arm's successful runs recorded (the first run's value where they differ)."""
    out: dict[str, Any] = {}
    for run in report.runs:
        if run.idea_id == arm and run.status == "succeeded" and run.final_info is not None:
            for k, v in run.final_info.config.items():
                out.setdefault(k, v)
    return out


def _effective(spec: TemplateSpec, profile: str) -> dict[str, Any]:
    try:
        return spec.effective(profile)
    except TemplateError:
        return spec.effective(None)


def infer_profile(spec: TemplateSpec, config: dict[str, Any]) -> str | None:
    """The profile whose effective baseline agrees with every recorded knob value, or None when none (or several) do."""
    knobs = {k: v for k, v in config.items() if k in spec.knobs}
    if not knobs:
        return None
    matches = [p for p in ["", *spec.profiles] if all(_effective(spec, p).get(k) == v for k, v in knobs.items())]
    return matches[0] if len(matches) == 1 else None


@dataclass
class Ran:
    """The baseline as it ran, and how the paper knows it."""

    profile: str | None  # "" the template as declared; None: neither told nor recognisable from the records
    profile_inferred: bool
    baseline: dict[str, Any]  # every knob's value in the baseline
    unrecorded: list[str] = field(default_factory=list)  # knobs no baseline run recorded: their values are the template's

    def profile_words(self, spec: TemplateSpec) -> str:
        if self.profile is None and len(self.unrecorded) == len(spec.knobs):
            return ("Profile: not recorded, and the runs recorded no configuration; the values below are the template's "
                    "declared ones, each marked as not recorded.")
        if self.profile is None:
            return ("Profile: not recorded, and the runs' recorded configuration matches no single profile of the template; "
                    "the values below are the recorded ones.")
        how = "the runs' recorded configuration matches" if self.profile_inferred else "the runs used"
        if not self.profile:
            return f"Profile: {how} the template as declared (no profile)."
        p = spec.profiles.get(self.profile)
        what = f" ({p.description.strip().rstrip('.')})" if p is not None and p.description.strip() else ""
        return f"Profile: {how} the template's `{self.profile}` profile{what}."


def baseline_ran(spec: TemplateSpec, report: AnalysisReport, profile: str | None) -> Ran:
    rec = recorded(report, "baseline")
    inferred = profile is None
    name = infer_profile(spec, rec) if inferred else profile
    fallback = _effective(spec, name or "")
    values = {k: rec.get(k, fallback.get(k)) for k in spec.knobs}
    return Ran(name, inferred, values, [k for k in spec.knobs if k not in rec])


def arm_value(report: AnalysisReport, arm: str, knob: str, planned: Any) -> Any:
    """The knob's value in an idea's runs as recorded, else the value the idea planned."""
    return recorded(report, arm).get(knob, planned)
