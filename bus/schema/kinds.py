"""The lab's closed choices, each declared once: which mind thinks, which executor runs jobs, how an llm answers.

The CLI's ``--mind`` / ``--executor``, the ``LAB_MIND`` / ``LAB_EXECUTOR``
settings (``bus.settings``), ``MindChoice`` on the wire, the config file's
``executor:`` section and the hosts' wiring all take their values from here,
so a new kind is added in one place and every check follows.

A template's profile is deliberately *not* closed: each template declares its
own (``fast``, ``gpu``, ...), so ``ProfileName`` is a plain name and the
template says which exist (``TemplateSpec.profile``).
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias, get_args

MindKind: TypeAlias = Literal["offline", "llm"]
MIND_KINDS: Final[tuple[MindKind, ...]] = get_args(MindKind)

ExecutorKind: TypeAlias = Literal["local", "docker", "kubernetes"]
EXECUTOR_KINDS: Final[tuple[ExecutorKind, ...]] = get_args(ExecutorKind)

# How the llm mind asks for a shaped answer (agents.minds.llm.config): the schema on the wire, JSON mode,
# only in the prompt, or "auto" (from the model's capabilities).
OutputMode: TypeAlias = Literal["auto", "json_schema", "json_object", "prompt"]
OUTPUT_MODES: Final[tuple[OutputMode, ...]] = get_args(OutputMode)

# A template profile by name; "" and DEFAULT_PROFILE are the template as declared, FAST_PROFILE its smoke runs.
ProfileName: TypeAlias = str
DEFAULT_PROFILE: Final = "default"
FAST_PROFILE: Final = "fast"
