"""The baseline as it actually runs: every value the PI states or compares an idea with.

A template's ``baseline`` block holds only what it overrides; the runs apply the
knob defaults, then the project's profile (``--fast`` is ``fast``), then the
baseline's own values (``TemplateSpec.effective``). Reading ``spec.baseline.get(name,
knob.default)`` instead would state warmup 50 where the fast runs used 40, and
would let an idea that sets the fast profile's own lr (0.003) pass as a change.
"""

from __future__ import annotations

from typing import Any

from bus.schema import Idea, Knob, TemplateSpec

POSITIVE_CONTROL = "positive-control"  # the idea_id the analyst looks for: never a proposed idea


def profile_name(profile: str, fast: bool = False) -> str | None:
    """The profile a project runs under: its named one, else ``fast`` for ``--fast``, else None (as declared)."""
    return profile or ("fast" if fast else None)


def effective(spec: TemplateSpec, profile: str | None) -> dict[str, Any]:
    return spec.effective(profile or None)


def same_as_baseline(idea: Idea, base: dict[str, Any]) -> bool:
    """An idea that changes no code and sets every knob it names to the value the baseline already runs with."""
    return idea.code is None and all(base.get(k) == v for k, v in idea.changes.items())


def why_same(idea: Idea, base: dict[str, Any], profile: str | None) -> str:
    shown = ", ".join(f"{k}={base.get(k)!r}" for k in idea.changes) or "no change at all"
    return f"identical to the baseline as it runs under profile {profile or 'default'} ({shown}): it tests nothing"


def candidate_values(knob: Knob, base: Any = None) -> list[Any]:
    """The values a template declares worth trying: its candidates, else a choice knob's choices.

    ``base`` is the knob's value in the baseline as it runs (``TemplateSpec.effective``; the
    declared default when None): it is never a candidate, while the declared default is one
    when a profile moved the baseline off it (under ``--fast`` char_lm's lr is 0.003, so 0.001
    is a change and 0.003 is not). A bare range is not enough: a value picked from it may be
    invalid for the code (4 heads must divide the width) or meaningless (evaluation cadence),
    and only the template's author knows which.
    """
    base = knob.default if base is None else base
    if knob.candidates:
        values = list(knob.candidates)
    elif knob.type == "choice":
        values = list(knob.choices or [])
    elif knob.type == "bool":
        values = [not base]
    else:
        values = []
    if knob.default != base:
        values.append(knob.default)
    out = []
    for v in values:
        v = knob.validate_value(v)
        if v != base and v not in out:
            out.append(v)
    return out
