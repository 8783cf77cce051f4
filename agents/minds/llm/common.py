"""What every role's llm mind shares: building its client, and showing context to the model."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from agents.minds.llm.client import MindClient, T
from agents.minds.llm.config import load_config
from agents.minds.llm.prompts import system_prompt
from bus.schema import ROLES, TemplateSpec


class LLMMind:
    """Base of the six llm minds: a client, a system prompt, and ``usage`` (the client's, live)."""

    role: str = ""

    def __init__(self, seed: int, config: dict[str, Any]) -> None:
        config = dict(config)
        # Tests (and the lab's replay mode) hand over a ready ChatCompletionClient.
        model_client = config.pop("model_client", None)
        self.seed = seed
        self.client = MindClient(self.role, load_config(config), model_client=model_client, seed=seed)
        self.system, self.prompt_source = system_prompt(self.role)

    async def ask(self, step: str, lines: Sequence[str], schema: type[T], check: Callable[[T], None] | None = None, **extra: Any) -> T:
        """One question under the role's system prompt, its prompt the ``lines`` one to a line; the validated answer."""
        return await self.client.ask(step, self.system, "\n".join(lines), schema, check, **extra)

    @property
    def usage(self) -> Any:
        return self.client.usage

    def describe(self) -> str:
        """The model behind each role, as configured (what the paper's byline names)."""
        models = ", ".join(f"{role}: {self.client.config.for_role(role).model}" for role in ROLES)
        return f"llm mind (models per role: {models})"

    async def close(self) -> None:
        await self.client.close()


def show(obj: Any) -> str:
    """Context for a prompt as compact JSON (pydantic models included)."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    elif isinstance(obj, list):
        obj = [o.model_dump(mode="json") if hasattr(o, "model_dump") else o for o in obj]
    return json.dumps(obj, ensure_ascii=False, default=str)


def knob_lines(spec: TemplateSpec, names: list[str] | None = None, profile: str | None = None, *, baseline: bool = True) -> str:
    """The template's knobs as one line each: what the model may change, and within what.

    The baseline value shown is the one the runs use under ``profile`` (``TemplateSpec.effective``:
    the defaults, the profile's overrides, the template's baseline), never the bare default;
    ``baseline=False`` leaves it out (a prompt that does not know the project's profile).
    """
    effective = spec.effective(profile or None)
    lines = []
    for name, knob in spec.knobs.items():
        if names is not None and name not in names:
            continue
        if knob.type == "choice" or knob.choices:
            space = f"one of {knob.choices}"
        elif knob.type == "bool":
            space = "true/false"
        else:
            space = f"{knob.type} in [{knob.min}, {knob.max}]" + (" (log scale)" if knob.log else "")
        base = f"; baseline {effective[name]!r}" if baseline else ""
        extra = f"; e.g. {knob.candidates}" if knob.candidates else ""
        compute = " Changes the compute per run: a hypothesis on it must not claim equal compute." if knob.changes_compute else ""
        lines.append(f"- {name}: {space}{base}{extra}. {knob.description}{compute}".rstrip())
    return "\n".join(lines)


def report_brief(report: Any) -> str:
    """The analysis a prompt needs (comparisons, flags, summary), without per-run detail that only costs tokens."""
    data = report.model_dump(mode="json", include={"primary_metric", "alpha", "comparisons", "flags", "summary", "round"})
    data["flags"] = [f.text for f in report.flags]  # the sentences a reader sees; the fields are for code
    data["runs"] = [
        {"idea_id": r.idea_id, "status": r.status, "reason": r.reason, "seeds": len(r.seeds), "overrides": r.overrides}
        for r in report.runs
    ]
    return json.dumps(data, ensure_ascii=False)
