"""The offline mind of `lab evolve`: genetic programming over the template's declared operators, no model.

A program (``bus.schema.evolve.Program``) is a pipeline of the template's operators (evolve.yaml
``operators``): stage operators on the stacked task vectors (trim by magnitude, sign election, random drop,
per-layer coefficients), one reducer (sum, disjoint mean, magnitude-weighted), an optional post operator
(rescale to the sum's norm, norm matching). Each program is rendered as real Python code defining the hook's
function; what changed is a real code diff against its parent (the loop records it).

The first iteration runs the pool: the template's own ``merge_*`` functions (the baseline first, the others
in a seeded order), each with its program where evolve.yaml gives one. Later iterations breed from the best
so far (those carrying a program): mutation (insert, delete or replace a stage, change an operator's
parameter, swap the reducer, toggle the post operator) or crossover (one parent's stages with the other's
reducer and post operator); children whose code was already run are dropped.
"""

from __future__ import annotations

import ast
import random

from agents.evolve.workflow import Hook, ProposeRequest
from bus.schema.evolve import Candidate, EvolveSpec, Operators, Program, Proposal

MUTATIONS = ("insert", "delete", "replace", "param", "reduce", "post")
MAX_STAGES = 4


def builtin_pool(experiment: str, spec: EvolveSpec) -> list[Proposal]:
    """The template's ``merge_*`` functions, each standalone (defining the hook's function), the baseline first."""
    hook = spec.hook
    tree = ast.parse(experiment)
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith(f"{hook.function}_"):
            src = ast.get_source_segment(experiment, node) or ""
            code = src.replace(f"def {node.name}(", f"def {hook.function}(", 1)
            doc = ast.get_docstring(node) or ""
            name = node.name.removeprefix(f"{hook.function}_")
            out.append(Proposal(name=name, code=code + "\n", rationale=doc.split("\n")[0], builtin=True, program=spec.programs.get(name)))
    return sorted(out, key=lambda p: p.name != spec.baseline)


def describe(p: Program) -> str:
    """A program's name: its operators in order, parameters inline."""
    def one(name: str, params: dict[str, float]) -> str:
        short = name.removeprefix("op_")
        return f"{short}({','.join(f'{v:g}' for v in params.values())})" if params else short

    parts = [one(n, ps) for n, ps in p.stage] + [p.reduce.removeprefix("reduce_")] + ([p.post.removeprefix("post_")] if p.post else [])
    return "→".join(parts)


def render(p: Program, hook: Hook, ops: Operators) -> str:
    """The program as Python source defining the hook's function over the template's operators."""
    lines = [f"def {hook.function}(task_vectors, args, gen):", f'    """{describe(p)}: a program over the template\'s operators."""',
             "    t = task_vectors"]
    for name, params in p.stage:
        spec = ops.stage.get(name)
        args = [f"{v!r}" for v in params.values()] + (["gen"] if spec is not None and spec.gen else [])
        lines.append(f"    t = {name}({', '.join(['t', *args])})")
    lines.append(f"    merged = {p.reduce}(t)")
    if p.post:
        lines.append(f"    merged = {p.post}(merged, task_vectors)")
    lines.append("    return merged")
    return "\n".join(lines) + "\n"


def random_stage(ops: Operators, rng: random.Random) -> tuple[str, dict[str, float]]:
    name = rng.choice(sorted(ops.stage))
    return name, {k: rng.choice(vs) for k, vs in ops.stage[name].params.items()}


def mutate(p: Program, ops: Operators, rng: random.Random) -> Program:
    """One random change of ``p`` (it may be a no-op when the change does not apply; the caller retries)."""
    stage = list(p.stage)
    kind = rng.choice(MUTATIONS)
    if kind == "insert" and len(stage) < MAX_STAGES and ops.stage:
        stage.insert(rng.randrange(len(stage) + 1), random_stage(ops, rng))
    elif kind == "delete" and stage:
        stage.pop(rng.randrange(len(stage)))
    elif kind == "replace" and stage and ops.stage:
        stage[rng.randrange(len(stage))] = random_stage(ops, rng)
    elif kind == "param" and (tunable := [i for i, (n, ps) in enumerate(stage) if ps]):
        i = rng.choice(tunable)
        name, params = stage[i]
        key = rng.choice(sorted(params))
        stage[i] = (name, {**params, key: rng.choice(ops.stage[name].params[key])})
    elif kind == "reduce" and ops.reduce:
        return Program(stage=stage, reduce=rng.choice(ops.reduce), post=p.post)
    elif kind == "post" and ops.post:
        return Program(stage=stage, reduce=p.reduce, post=None if p.post else rng.choice(ops.post))
    return Program(stage=stage, reduce=p.reduce, post=p.post)


def crossover(a: Program, b: Program) -> Program:
    return Program(stage=list(a.stage), reduce=b.reduce, post=b.post)


class OfflineEvolveMind:
    def __init__(self, spec: EvolveSpec, pool: list[Proposal], seed: int = 0) -> None:
        self.spec = spec
        self.hook = spec.hook
        self.pool = pool
        self.seed = seed

    async def propose(self, request: ProposeRequest) -> list[Proposal]:
        rng = random.Random(self.seed * 1009 + request.iteration)
        tried = {c.strip() for c in request.tried}
        fresh = [p for p in self.pool if p.code.strip() not in tried]
        out: list[Proposal] = []
        parents = [c for c in request.examples if c.program is not None]
        if request.iteration == 0 or not request.examples:
            head, rest = fresh[:1], fresh[1:]
            rng.shuffle(rest)  # the baseline always; the other built-ins in a seeded order
            out = (head + rest)[: request.k]
            # a population larger than the pool is filled with mutants of the pool's programs
            parents = [Candidate(id=f"pool-{i}", iteration=0, name=p.name, code=p.code, state="succeeded", program=p.program)
                       for i, p in enumerate(self.pool) if p.program is not None]
        seen = tried | {p.code.strip() for p in out}
        for _ in range(request.k * 50):
            if len(out) == request.k or not parents:
                break
            child = self._child(parents, rng)
            if child is not None and child.code.strip() not in seen:
                seen.add(child.code.strip())
                out.append(child)
        return out

    def _child(self, parents: list[Candidate], rng: random.Random) -> Proposal | None:
        ops = self.spec.operators
        a = parents[0] if len(parents) == 1 or rng.random() < 0.5 else rng.choice(parents)
        assert a.program is not None
        if len(parents) > 1 and rng.random() < 0.3:
            b = rng.choice([c for c in parents if c.id != a.id])
            assert b.program is not None
            prog, how, ids = crossover(a.program, b.program), f"{a.name}'s stages with {b.name}'s reducer", [a.id, b.id]
        else:
            prog, how, ids = mutate(a.program, ops, rng), f"a mutation of {a.name}", [a.id]
        if prog == a.program or not prog.reduce:
            return None
        return Proposal(name=describe(prog)[:120], code=render(prog, self.hook, ops), rationale=how,
                        parents=[i for i in ids if not i.startswith("pool-")], program=prog)

    async def close(self) -> None:
        return None


__all__ = ["OfflineEvolveMind", "builtin_pool", "crossover", "describe", "mutate", "render"]
