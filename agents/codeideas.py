"""Code-level ideas: an idea that changes the experiment's code, not only a knob.

An idea carries ``code=CodeChange(summary, variant)``. A template-declared
variant (template.yaml ``variants``) brings its own edits, so any mind
implements it without a model; a summary alone is implemented by the llm
engineer mind, which writes the edits. Either way the edits go through the
guard of ``agents/codeedit.py``, and the run records the unified diff it ran
with, so the paper can show exactly what changed.
"""

from __future__ import annotations

import difflib

from bus.schema import CodeEdit, Idea, TemplateError, TemplateSpec


def variant_edits(idea: Idea, spec: TemplateSpec) -> list[CodeEdit] | None:
    """The edits of the variant the idea names, None for an idea without one; TemplateError for an unknown variant."""
    if idea.code is None or idea.code.variant is None:
        return None
    variant = spec.variants.get(idea.code.variant)
    if variant is None:
        known = ", ".join(sorted(spec.variants)) or "none"
        raise TemplateError(f"idea {idea.id!r}: template {spec.name} declares no code variant {idea.code.variant!r} (declared: {known})")
    return list(variant.edits)


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def unified_diff(before: dict[str, str], after: dict[str, str]) -> str:
    """The changed files as one unified diff (``a/`` and ``b/`` prefixes, as ``git diff`` writes them); "" when nothing changed."""
    parts = []
    for name in sorted(after):
        old, new = before.get(name, ""), after[name]
        if old != new:
            parts.append("".join(difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{name}", f"b/{name}", n=2,
            )))
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def describe(idea: Idea, spec: TemplateSpec) -> str:
    """A faithful one-paragraph account of a code idea: its summary, and the declared variant's own description."""
    if idea.code is None:
        return ""
    variant = spec.variants.get(idea.code.variant) if idea.code.variant else None
    text = _sentence(idea.code.summary)
    if variant is not None:
        text = f"{text} The template declares it as the code variant `{idea.code.variant}`: {_sentence(variant.description)}".strip()
        if variant.changes_compute:
            text += " The template marks this variant as changing the compute a run spends."
    return text
