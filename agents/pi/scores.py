"""How the PI ranks a wave of ideas before any of them uses the run budget.

Each idea may carry three 1-10 scores from the mind (interestingness,
feasibility, novelty); a score the mind left empty (None) counts as the
middle of the scale, so an unscored idea is neither favoured nor dropped.
The priority is the weighted mean

    priority = 0.4 * interestingness + 0.3 * feasibility + 0.3 * novelty

and an idea is dropped when its priority is under ``FLOOR`` or its
feasibility is under ``FEASIBILITY_FLOOR`` (it would not finish in the time
budget). The rest run in order of priority, ties kept in the mind's order.
"""

from __future__ import annotations

from bus.schema import Idea

WEIGHTS = {"interestingness": 0.4, "feasibility": 0.3, "novelty": 0.3}
NEUTRAL = 5.5  # the middle of 1-10: what an empty score counts as
FLOOR = 4.0
FEASIBILITY_FLOOR = 3


def priority(idea: Idea) -> float:
    total = 0.0
    for name, weight in WEIGHTS.items():
        score = getattr(idea, name)
        total += weight * (NEUTRAL if score is None else float(score))
    return round(total, 3)


def below_floor(idea: Idea) -> str:
    """Why the idea is dropped, or "" when it is kept."""
    p = priority(idea)
    if idea.feasibility is not None and idea.feasibility < FEASIBILITY_FLOOR:
        return f"feasibility {idea.feasibility} < {FEASIBILITY_FLOOR}"
    if p < FLOOR:
        return f"priority {p:.2f} < {FLOOR}"
    return ""


def rank(ideas: list[Idea]) -> tuple[list[Idea], dict[str, str]]:
    """(kept ideas best first, dropped idea id -> why)."""
    dropped = {i.id: why for i in ideas if (why := below_floor(i))}
    kept = sorted((i for i in ideas if i.id not in dropped), key=priority, reverse=True)  # sorted() is stable
    return kept, dropped
