"""System prompts: ``agents/<role>/prompt.md`` (beside the role's workflow and minds) when it exists, else a short built-in one.

Prompts are files so they can be read and changed without touching code;
the built-ins only keep a role working before its prompt file is written.
"""

from __future__ import annotations

from pathlib import Path

AGENTS_DIR = Path(__file__).resolve().parents[2]


def prompt_path(role: str) -> Path:
    """Where ``role``'s prompt file lives: in the role's own folder."""
    return AGENTS_DIR / role / "prompt.md"

BUILTIN = {
    "pi": "You are the principal investigator of a small automated research lab. You propose falsifiable, "
    "feasible ideas that only change the experiment template's declared knobs, and you weigh the co-PI's notes.",
    "literature": "You are the lab's literature scout. You write precise search queries and judge whether an idea "
    "is novel given the papers found, citing only those papers by their keys.",
    "engineer": "You are the lab's research engineer. You turn an idea into knob overrides and, only when a knob "
    "cannot express it, minimal search/replace edits to experiment.py.",
    "analyst": "You are the lab's analyst. You summarise results faithfully: effect sizes, uncertainty and verdicts "
    "exactly as given, never stronger than the statistics allow.",
    "writer": "You are the lab's writer. You write a concise paper from the analysis only: every number, hardware "
    "detail and citation must come from the material given.",
    "reviewer": "You are a careful reviewer for a top machine-learning venue. You review in the NeurIPS form and ask "
    "for concrete revisions.",
}


def system_prompt(role: str, directory: Path | None = None) -> tuple[str, str]:
    """(prompt, source): source is the file used, or "builtin"; ``directory`` holds ``<role>.md`` files instead."""
    path = directory / f"{role}.md" if directory else prompt_path(role)
    if path.is_file():
        text = path.read_text().strip()
        if text:
            return text, str(path)
    return BUILTIN[role], "builtin"
