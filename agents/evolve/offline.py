"""The offline mind of `lab evolve`: deterministic proposals, no model.

The pool is the user's seed files (``--seed-code``) and the template's own
algorithms: every top-level ``merge_*`` function of experiment.py, renamed to
the hook's function. The first iteration runs the pool's first K (the user's
first, then the built-ins in a seeded order); later ones derive from the best
so far with seeded operators, each a real recombination or parameter change:

- ``blend``: a convex mix of two parents' outputs with a seeded weight;
- ``density``: a parent that reads ``args.density``, run with another value;
- ``trim``: a parent fed TIES-trimmed task vectors;
- ``explore``: the next pool algorithm not yet run.

Parents are copied in under their own prefixes (``ast`` renames their
functions), so a child's source stands alone and can itself be a parent.
"""

from __future__ import annotations

import ast
import random

from agents.evolve.workflow import Hook, ProposeRequest
from bus.schema.evolve import Candidate, Proposal

BLEND_WEIGHTS = (0.25, 0.5, 0.75)
DENSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)
OPERATORS = ("blend", "density", "trim", "explore")


def builtin_pool(experiment: str, hook: Hook) -> list[Proposal]:
    """The template's ``merge_*`` functions, each as a standalone candidate defining the hook's function."""
    tree = ast.parse(experiment)
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith(f"{hook.function}_"):
            src = ast.get_source_segment(experiment, node) or ""
            code = src.replace(f"def {node.name}(", f"def {hook.function}(", 1)
            doc = ast.get_docstring(node) or ""
            out.append(Proposal(name=node.name.removeprefix(f"{hook.function}_"), code=code + "\n", rationale=doc.split("\n")[0]))
    return out


def namespaced(code: str, prefix: str) -> tuple[str, dict[str, str]]:
    """``code`` with each top-level function renamed ``prefix + name`` (references too); the new names by old."""
    tree = ast.parse(code)
    names = {n.name: f"{prefix}{n.name}" for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    class Rename(ast.NodeTransformer):
        def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
            node.name = names.get(node.name, node.name)
            self.generic_visit(node)
            return node

        def visit_Name(self, node: ast.Name) -> ast.Name:
            node.id = names.get(node.id, node.id)
            return node

    return ast.unparse(Rename().visit(tree)), names


class OfflineEvolveMind:
    def __init__(self, hook: Hook, pool: list[Proposal], seed: int = 0) -> None:
        self.hook = hook
        self.pool = pool
        self.seed = seed

    async def propose(self, request: ProposeRequest) -> list[Proposal]:
        rng = random.Random(self.seed * 1009 + request.iteration)
        tried = {c.strip() for c in request.tried}
        fresh = [p for p in self.pool if p.code.strip() not in tried]
        if request.iteration == 0 or not request.examples:
            return fresh[: request.k]
        out: list[Proposal] = []
        seen = set(tried)
        for attempt in range(request.k * 20):
            if len(out) == request.k:
                break
            op = OPERATORS[(attempt + rng.randrange(len(OPERATORS))) % len(OPERATORS)]
            p = self._derive(op, request.examples, fresh, rng)
            if p is not None and p.code.strip() not in seen:
                seen.add(p.code.strip())
                out.append(p)
                if op == "explore":
                    fresh = [f for f in fresh if f.code.strip() != p.code.strip()]
        return out

    def _derive(self, op: str, best: list[Candidate], fresh: list[Proposal], rng: random.Random) -> Proposal | None:
        f = self.hook.function
        call = "task_vectors, args, gen"
        head = f"def {f}(task_vectors, args, gen):"
        a = best[0] if len(best) == 1 or rng.random() < 0.6 else rng.choice(best[1:])
        a_code, a_names = namespaced(a.code, "_a_")
        if op == "explore":
            return fresh[0] if fresh else None
        if op == "blend":
            others = [c for c in best if c.id != a.id]
            if not others:
                return None
            b = rng.choice(others)
            w = rng.choice(BLEND_WEIGHTS)
            b_code, b_names = namespaced(b.code, "_b_")
            body = f"    return {w} * {a_names[f]}({call}) + {1 - w} * {b_names[f]}({call})"
            return Proposal(
                name=f"blend({a.name},{b.name},{w})", code=f"{a_code}\n\n\n{b_code}\n\n\n{head}\n{body}\n",
                rationale=f"a convex mix ({w} : {1 - w}) of {a.name} and {b.name}", parents=[a.id, b.id],
            )
        if op == "density":
            if "density" not in a.code:
                return None  # the parent ignores args.density: the same algorithm under another name
            d = rng.choice(DENSITIES)
            body = f"    args = argparse.Namespace(**{{**vars(args), 'density': {d}}})\n    return {a_names[f]}({call})"
            return Proposal(name=f"{a.name}@density={d}", code=f"{a_code}\n\n\n{head}\n{body}\n",
                            rationale=f"{a.name} with density {d}", parents=[a.id])
        d = rng.choice(DENSITIES)
        body = f"    return {a_names[f]}(trim(task_vectors, {d}), args, gen)"
        return Proposal(name=f"trim{d}+{a.name}", code=f"{a_code}\n\n\n{head}\n{body}\n",
                        rationale=f"{a.name} on task vectors trimmed to their top {d} by magnitude", parents=[a.id])

    async def close(self) -> None:
        return None


__all__ = ["OfflineEvolveMind", "builtin_pool", "namespaced"]
