"""The Self-Developing loop (`lab evolve`, seed 004) as a workflow: what to run next, what was best, what to learn from.

After NEC's Self-Developing framework: each iteration a mind proposes K
algorithms as code for one hook of the template (for ``model_merging``: the
function that merges task vectors); each runs on the development split; the
best go into the next prompt as examples; the final best are scored once on
the held-out test split; best-vs-worst of every iteration is a preference pair
for DPO. This module decides and formats; running jobs and writing files are
the activities in ``services/cli/evolve.py``, and proposing is the mind's
(``agents/minds/{offline,llm}/evolve.py``).
"""

from __future__ import annotations

import ast
import statistics
from dataclasses import dataclass
from typing import Protocol

from agents.codeedit import EditNotApplicable, apply_edits
from bus.errors import LabError
from bus.schema import CodeEdit, Direction
from bus.schema.evolve import Candidate, IterationSummary, PreferencePair, Proposal


class EvolveError(LabError, ValueError):
    """`lab evolve` cannot run as asked (a template without a hook, a bad population); one line."""


@dataclass(frozen=True)
class Hook:
    """Where a candidate goes in a template: a line its code replaces, and the function it must define."""

    anchor: str  # a line of experiment.py that occurs once; the candidate's code replaces it
    function: str
    signature: str
    assign: str  # the line after the candidate's code that switches it in
    describe: str  # for the prompt: what the function gets and returns

    def edit(self, code: str) -> CodeEdit:
        return CodeEdit(path="experiment.py", search=self.anchor, replace=f"{code.rstrip()}\n\n\n{self.assign}\n")


HOOKS = {
    "model_merging": Hook(
        anchor="EVOLVED_MERGE = None\n",
        function="merge",
        signature="def merge(task_vectors: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:",
        assign="EVOLVED_MERGE = merge",
        describe=(
            "task_vectors stacks one parameter's task vectors (fine-tuned minus pretrained weights), shape "
            "(num_tasks, *param_shape); return the merged task vector (param_shape). The experiment adds it to the "
            "pretrained weights times a coefficient picked on validation data. args holds the template's knobs "
            "(args.density, args.num_tasks, ...); gen is a seeded torch.Generator for any randomness. The module "
            "already imports torch, numpy as np, math and argparse, and defines trim(tvs, density) (keep each task "
            "vector's top-density entries by magnitude) and the built-in merge_* functions."
        ),
    ),
}


def hook_for(template: str) -> Hook:
    if template not in HOOKS:
        raise EvolveError(f"template {template!r} declares no hook for `lab evolve` (templates with one: {', '.join(sorted(HOOKS))})")
    return HOOKS[template]


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
    return apply_edits(files, [hook.edit(code)])


# ------------------------------------------------------------------ selection


def ranked(candidates: list[Candidate], direction: Direction) -> list[Candidate]:
    """Succeeded candidates, best first (ties: the earlier one)."""
    ok = [c for c in candidates if c.state == "succeeded" and c.score is not None]
    return sorted(ok, key=lambda c: (-(c.score or 0.0) if direction == "higher" else (c.score or 0.0)))


def examples(candidates: list[Candidate], n: int, direction: Direction) -> list[Candidate]:
    """The best ``n`` distinct algorithms so far: what the next prompt shows."""
    out: list[Candidate] = []
    for c in ranked(candidates, direction):
        if all(c.code.strip() != o.code.strip() for o in out):
            out.append(c)
        if len(out) == n:
            break
    return out


def summary(iteration: int, candidates: list[Candidate], direction: Direction) -> IterationSummary:
    scores = [c.score for c in candidates if c.state == "succeeded" and c.score is not None]
    best = ranked(candidates, direction)
    return IterationSummary(
        iteration=iteration,
        best=best[0].score if best else None,
        median=statistics.median(scores) if scores else None,
        succeeded=len(scores),
        failed=len(candidates) - len(scores),
        best_id=best[0].id if best else None,
    )


def preference(prompt: str, candidates: list[Candidate], direction: Direction) -> PreferencePair | None:
    """Best vs worst of one iteration; a failed candidate counts as worse than any that ran.

    None when there is no pair: nothing succeeded, or fewer than two distinct algorithms.
    """
    best = ranked(candidates, direction)
    if not best:
        return None
    failed = [c for c in candidates if c.state == "failed"]
    worst = failed[0] if failed else best[-1]
    if worst.id == best[0].id or worst.code.strip() == best[0].code.strip():
        return None
    return PreferencePair(prompt=prompt, chosen=best[0].code, rejected=worst.code)


# ------------------------------------------------------------------ the prompt


def prompt(hook: Hook, task: str, metric: str, direction: Direction, k: int, shown: list[Candidate]) -> str:
    """What the mind is asked each iteration; the same text is the prompt of that iteration's preference pair."""
    parts = [
        f"Task: {task.strip()}",
        f"Write {k} new, different algorithms as Python code. Each must define\n    {hook.signature}\n{hook.describe}",
        f"They are scored by {metric} ({direction} is better) on a development split.",
        "Code may not start processes, use the network, or touch time limits: the guarded edit refuses it.",
    ]
    if shown:
        parts.append("The best algorithms so far, best first:")
        for c in shown:
            parts.append(f"## {c.name} ({metric} {c.score:.4f})\n```python\n{c.code.strip()}\n```")
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
    "EvolveError", "EvolveMind", "HOOKS", "Hook", "ProposeRequest", "check_code", "examples", "hook_for", "patched",
    "preference", "prompt", "ranked", "summary",
]
