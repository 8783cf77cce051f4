"""The Self-Developing loop (`lab evolve`, seed 004) as a workflow: what to run next, what was best, what to learn from.

After NEC's Self-Developing framework: each iteration a mind proposes K
algorithms as code for one hook of the template (for ``model_merging``: the
function that merges task vectors); each runs on the development split; the
best go into the next prompt as examples; the final best are scored once on
the held-out test split; best-vs-worst of every iteration is a preference pair
for DPO. This module decides and formats; running candidates is the lab's
(``project.py``: each an experiment request the PI sends the engineer), and
proposing is the mind's (``offline.py``, ``llm.py``).
"""

from __future__ import annotations

import ast
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml
from pydantic import ValidationError

from agents.codeedit import EditNotApplicable, apply_edits
from agents.evolve.stats import interval, paired
from bus.errors import LabError
from bus.schema import CodeEdit, Direction
from bus.schema.evolve import Candidate, Evidence, EvolveSpec, HookSpec, IterationSummary, PreferencePair, Proposal


class EvolveError(LabError, ValueError):
    """`lab evolve` cannot run as asked (a template without a hook, a bad population); one line."""


Hook = HookSpec


def hook_edit(hook: Hook, code: str) -> CodeEdit:
    return CodeEdit(path="experiment.py", search=hook.anchor, replace=f"{code.rstrip()}\n\n\n{hook.assign}\n")


def load_spec(folder: Path, name: str) -> EvolveSpec:
    """The template's ``evolve.yaml`` (EvolveError, one line, when it has none or it does not parse)."""
    path = folder / "evolve.yaml"
    if not path.is_file():
        raise EvolveError(f"template {name!r} declares no hook for `lab evolve` (no evolve.yaml; templates with one: model_merging)")
    try:
        return EvolveSpec.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as e:
        raise EvolveError(f"{path}: {str(e).splitlines()[0]}") from None


def hook_for(template: str) -> Hook:
    """The hook of a template by name (its evolve.yaml)."""
    from agents.templates import load

    folder, spec = load(template)
    return load_spec(folder, spec.name).hook


def check_code(hook: Hook, code: str) -> None:
    """EditNotApplicable unless ``code`` parses and defines the hook's function at the top level."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise EditNotApplicable(f"candidate: line {e.lineno}: syntax error: {e.msg}") from None
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    if hook.function not in funcs:
        raise EditNotApplicable(f"candidate: defines no top-level function {hook.function!r} ({hook.signature})")
    if len(funcs[hook.function].args.args) < 3:
        raise EditNotApplicable(f"candidate: {hook.function}() must take three arguments ({hook.signature})")


def patched(files: dict[str, str], hook: Hook, code: str) -> dict[str, str]:
    """The template's files with the candidate switched in, through the guarded edits (EditError if refused)."""
    check_code(hook, code)
    return apply_edits(files, [hook_edit(hook, code)])


# ------------------------------------------------------------------ selection


def contenders(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates still in the race: ran, not another's duplicate in behaviour, not eliminated."""
    return [c for c in candidates if c.state == "succeeded" and c.values and not c.same_as and not c.eliminated]


def ranked(candidates: list[Candidate], direction: Direction) -> list[Candidate]:
    """Contenders, best mean first (ties: the one with more seeds, then the earlier one)."""
    sign = -1.0 if direction == "higher" else 1.0
    return sorted(contenders(candidates), key=lambda c: (sign * (c.score or 0.0), -len(c.values)))


def examples(candidates: list[Candidate], n: int, direction: Direction) -> list[Candidate]:
    """The best ``n`` distinct algorithms so far: what the next prompt shows."""
    return ranked(candidates, direction)[:n]


def worst(candidates: list[Candidate], n: int, direction: Direction) -> list[Candidate]:
    """The ``n`` worst that ran (eliminated ones included): what the next prompt shows as what not to do."""
    ran = [c for c in candidates if c.state == "succeeded" and c.values and not c.same_as]
    sign = 1.0 if direction == "higher" else -1.0
    return sorted(ran, key=lambda c: sign * (c.score or 0.0))[:n]


def scored(c: Candidate) -> Candidate:
    """``c`` with its mean and standard error recomputed from its per-seed values."""
    if not c.values:
        return c
    se = statistics.stdev(c.values) / len(c.values) ** 0.5 if len(c.values) > 1 else 0.0
    return c.model_copy(update={"score": statistics.fmean(c.values), "stderr": se})


def summary(iteration: int, batch: list[Candidate], archive: list[Candidate], direction: Direction, runs: int) -> IterationSummary:
    """The best so far (with its interval) and the median of this iteration's candidates."""
    scores = [c.score for c in batch if c.state == "succeeded" and c.score is not None]
    best = ranked(archive, direction)
    lo, hi = interval(best[0].values) if best else (None, None)
    return IterationSummary(
        iteration=iteration, best=best[0].score if best else None, best_lo=lo, best_hi=hi,
        median=statistics.median(scores) if scores else None, succeeded=len(scores), failed=len(batch) - len(scores),
        best_id=best[0].id if best else None, runs=runs,
    )


def preferences(prompt: str, batch: list[Candidate], direction: Direction, metric: str, alpha: float = 0.05) -> list[PreferencePair]:
    """This iteration's best against each of its candidates it beat by more than seed noise on dev (paired interval
    above zero): no pair where the difference could be noise, and none from a failure (no scores to compare)."""
    ran = [c for c in batch if c.state == "succeeded" and len(c.values) >= 2]
    if len(ran) < 2:
        return []
    sign = -1.0 if direction == "higher" else 1.0
    chosen = min(ran, key=lambda c: sign * (c.score or 0.0))
    level = 1 - alpha / (len(ran) - 1)  # Bonferroni over the chosen's comparisons: the chosen is the batch's maximum
    out = []
    for c in ran:
        if c.id == chosen.id or c.code.strip() == chosen.code.strip() or c.same_as == chosen.id or chosen.same_as == c.id:
            continue
        cmp = paired(chosen, c, direction, level)
        if cmp is not None and cmp.better:
            out.append(PreferencePair(prompt=prompt, chosen=chosen.code, rejected=c.code,
                                      evidence=Evidence(chosen=chosen.id, rejected=c.id, metric=metric, comparison=cmp)))
    return out


# ------------------------------------------------------------------ the prompt


def _shown(c: Candidate, metric: str) -> str:
    lo, hi = interval(c.values)
    return (f"## {c.name} ({metric} {c.score:.4f}, 95% CI [{lo:.4f}, {hi:.4f}] over {len(c.values)} seeds)\n"
            f"```python\n{c.code.strip()}\n```")


def prompt(spec: EvolveSpec, task: str, metric: str, direction: Direction, k: int, shown: list[Candidate],
           bad: list[Candidate] | None = None) -> str:
    """What the mind is asked each iteration; the same text is the prompt of that iteration's preference pairs."""
    hook = spec.hook
    ops = [*spec.operators.stage, *spec.operators.reduce, *spec.operators.post]
    parts = [
        f"Task: {task.strip()}",
        f"Write {k} new, different algorithms as Python code. Each must define\n    {hook.signature}\n{hook.describe}",
        spec.fixed.strip(),
        f"They are scored by {metric} ({direction} is better) on a development split, per seed; candidates close to the best "
        "run on more seeds, and the final best is compared once, paired, on a held-out test split.",
        "Code may not start processes, use the network, or touch time limits: the guarded edit refuses it.",
    ]
    if ops:
        parts.append("Operators you may call: " + ", ".join(ops) + ".")
    if shown:
        parts.append("The best algorithms so far, best first:")
        parts += [_shown(c, metric) for c in shown]
    if bad:
        parts.append("The worst so far (do not do this):")
        parts += [_shown(c, metric) for c in bad]
    if shown:
        parts.append("Improve on them: combine their ideas or try new ones; do not repeat them unchanged.")
    return "\n\n".join(parts)


@dataclass(frozen=True)
class ProposeRequest:
    """What a mind gets each iteration."""

    iteration: int
    k: int
    prompt: str
    examples: list[Candidate]  # the best so far, best first
    tried: list[str]  # code already run, so a mind can avoid repeats


class EvolveMind(Protocol):
    async def propose(self, request: ProposeRequest) -> list[Proposal]:
        """Up to ``request.k`` algorithms as code."""
        ...

    async def close(self) -> None: ...


__all__ = [
    "EvolveError", "EvolveMind", "Hook", "ProposeRequest", "check_code", "contenders", "examples", "hook_edit", "hook_for",
    "load_spec", "patched", "preferences", "prompt", "ranked", "scored", "summary", "worst",
]
