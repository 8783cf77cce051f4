"""How the llm mind reaches a model: one pydantic config from YAML, env and code.

Sources, later ones winning: the YAML file named by ``LAB_MIND_CONFIG`` (its
``mind:`` section if it has one, else the whole file) or the ``mind:`` section
of ``$LAB_HOME/config.yaml``; then ``LAB_LLM_*`` environment variables; then
the dict the lab passes to ``make(seed, config)``. A typo anywhere is one
readable line naming the field, raised when the mind is made, not minutes
later inside a project.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.minds.llm.errors import MindConfigError
from bus.schema.formats import CONFIG_FILE, FormatError, LabConfig
from bus.schema.kinds import OutputMode
from bus.settings import ConfigError, Settings, settings

# The ``LAB_LLM_<FIELD>`` settings (bus.settings) override these fields of the config: ``llm_model`` is ``model``.
ENV_PREFIX = "llm_"

# USD per 1M tokens, an estimate for budgets (list prices when written); override under `prices:`.
# A model missing here costs 0, which is right for local servers (vLLM, Ollama, llama.cpp).
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-4o": {"prompt": 2.5, "completion": 10.0},
    "gpt-4o-mini": {"prompt": 0.15, "completion": 0.6},
    "gpt-4.1": {"prompt": 2.0, "completion": 8.0},
    "gpt-4.1-mini": {"prompt": 0.4, "completion": 1.6},
    "gpt-4.1-nano": {"prompt": 0.1, "completion": 0.4},
}

# A reviewer ensemble needs different reviews, so its default temperature is above 0.
ROLE_DEFAULTS: dict[str, dict[str, Any]] = {"reviewer": {"temperature": 0.7}}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Capabilities(_Model):
    """autogen's ``model_info`` for a model it does not know (anything but OpenAI's own)."""

    vision: bool = False
    function_calling: bool = False
    json_output: bool = True
    structured_output: bool = True
    family: str = "unknown"
    multiple_system_messages: bool = False


class Price(_Model):
    prompt: float = Field(0.0, ge=0)  # USD per 1M prompt tokens
    completion: float = Field(0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1_000_000


class Retries(_Model):
    invalid_output: int = Field(3, ge=0, le=10)  # re-asks after invalid JSON, schema mismatch or a broken rule
    transport: int = Field(4, ge=0, le=20)  # re-sends after 429, 5xx, connection errors, timeouts
    backoff_s: float = Field(1.0, ge=0)  # first wait; doubles each time
    backoff_max_s: float = Field(30.0, ge=0)
    # Timeouts or failed connections in a row, across every role and step in one process, after which calls to
    # that endpoint fail at once for the cool-down (then one trial call decides): a dead endpoint costs ~2 timeouts.
    breaker_after: int = Field(2, ge=1, le=100)
    breaker_cooldown_s: float = Field(60.0, ge=0)


class ModelSettings(_Model):
    """Everything needed to call one model; what a role ends up with after its overrides."""

    model: str = "gpt-4o-mini"
    base_url: str | None = None  # None: OpenAI itself
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: str | None = None  # a mounted secret wins over the env var
    timeout_s: float = Field(120.0, gt=0)  # per call, enforced with asyncio as well as by the HTTP client
    temperature: float = Field(0.2, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    output_mode: OutputMode = "auto"
    strict_schema: bool = True  # OpenAI's strict json_schema; our answer schemas are strict-compatible
    model_info: Capabilities | None = None  # None: autogen's own table (OpenAI models only)
    family: str | None = None  # shortcut for model_info.family

    def capabilities(self) -> Capabilities:
        info = self.model_info or Capabilities()
        return info.model_copy(update={"family": self.family}) if self.family else info

    def resolved_output_mode(self) -> OutputMode:
        """How the answer's shape is asked for: the schema on the wire, JSON mode, or only in the prompt."""
        if self.output_mode != "auto":
            return self.output_mode
        if self.model_info is None:  # an OpenAI model autogen knows: all of them do json_schema
            return "json_schema"
        info = self.capabilities()
        return "json_schema" if info.structured_output else "json_object" if info.json_output else "prompt"

    def api_key(self) -> str:
        if self.api_key_file:
            path = Path(self.api_key_file)
            try:
                key = path.read_text().strip()
            except OSError as e:
                raise MindConfigError(f"api_key_file {path}: {e.strerror or e}") from None
            if key:
                return key
        key = os.environ.get(self.api_key_env, "").strip()
        if key:
            return key
        if self.base_url:  # local servers take any key; the openai client insists on one
            return "unused"
        raise MindConfigError(f"no API key for {self.model}: set ${self.api_key_env} or mind.api_key_file (or point base_url at a local server)")


class MindConfig(ModelSettings):
    roles: dict[str, dict[str, Any]] = {}  # per-role overrides of ModelSettings fields
    prices: dict[str, Price] = {}
    retries: Retries = Retries()
    reflection_rounds: int = Field(2, ge=0, le=10)  # PI idea refinement rounds after the first answer
    # Reviewer: rounds in which each reviewer re-reads its own review against the paper before it is final
    # (the AI Scientist uses up to 5); it may stop early by setting done.
    review_reflections: int = Field(2, ge=0, le=5)
    # Writer: one section at a time (each seeing the ones before), then a refinement pass over the
    # whole paper, as the AI Scientist writes; false: the whole paper in one answer.
    write_by_section: bool = True
    query_limit: int = Field(4, ge=1, le=20)  # literature queries per round

    def for_role(self, role: str) -> ModelSettings:
        base = self.model_dump(include=set(ModelSettings.model_fields), exclude_unset=False)
        merged = {**base, **ROLE_DEFAULTS.get(role, {}), **self.roles.get(role, {})}
        try:
            return ModelSettings.model_validate(merged)
        except ValidationError as e:
            raise MindConfigError(f"mind.roles.{role}: {_first_error(e)}") from None

    def price(self, model: str) -> Price:
        if model in self.prices:
            return self.prices[model]
        if model in DEFAULT_PRICES:
            return Price(**DEFAULT_PRICES[model])
        return Price()


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "mind"
    return f"{where}: {err['msg']}"


def _read_yaml(path: Path, section: bool) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise MindConfigError(f"{path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise MindConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MindConfigError(f"{path}: expected a mapping")
    if section or "mind" in data:
        data = data.get("mind") or {}
    if not isinstance(data, dict):
        raise MindConfigError(f"{path}: mind: expected a mapping")
    return data


def _from_files(s: Settings) -> dict[str, Any]:
    if s.mind_config is not None:
        return _read_yaml(s.mind_config, section=False)
    if s.home is not None:
        path = s.home / CONFIG_FILE
        if path.is_file():
            try:
                return dict(LabConfig.parse(_read_text(path), where=str(path)).mind)
            except FormatError as e:
                raise MindConfigError(str(e)) from None
    return {}


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise MindConfigError(f"{path}: {e.strerror or e}") from None


def _from_env(s: Settings) -> dict[str, Any]:
    """The ``LAB_LLM_*`` variables that are set (``null`` among them: it clears what a file set)."""
    return {name.removeprefix(ENV_PREFIX): getattr(s, name) for name in sorted(s.model_fields_set) if name.startswith(ENV_PREFIX)}


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(overrides: dict[str, Any] | None = None, env: Mapping[str, str] | None = None) -> MindConfig:
    """The mind config from files, then env, then ``overrides`` (the dict given to ``make``); ``env`` replaces os.environ."""
    try:
        s = settings(env)
    except ConfigError as e:
        raise MindConfigError(f"mind config: {e}") from None
    data = _deep_merge(_deep_merge(_from_files(s), _from_env(s)), overrides or {})
    try:
        return MindConfig.model_validate(data)
    except ValidationError as e:
        raise MindConfigError(f"mind config: {_first_error(e)}") from None
