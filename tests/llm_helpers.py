"""Shared bits of the llm mind tests: a small template spec, an analysis, scripted model clients."""

from __future__ import annotations

import json
from typing import Any

import pytest
from autogen_ext.models.replay import ReplayChatCompletionClient

from bus.schema import AnalysisReport, Comparison

SPEC: dict[str, Any] = {
    "name": "toy",
    "title": "Toy regression",
    "task": "Fit a small MLP to a synthetic regression task.",
    "knobs": {
        "lr": {"type": "float", "default": 0.1, "min": 0.001, "max": 1.0, "log": True, "candidates": [0.01, 0.3]},
        "weight_decay": {"type": "float", "default": 0.0, "min": 0.0, "max": 0.1},
        "activation": {"type": "choice", "default": "relu", "choices": ["relu", "gelu", "tanh"]},
        "n_train": {"type": "int", "default": 1000, "min": 100, "max": 10000, "fairness": True},
    },
    "metrics": {"val_loss": {"direction": "lower", "primary": True}},
}

LLM_ENV = (
    "LAB_MIND_CONFIG", "LAB_HOME",
    *(f"LAB_LLM_{k}" for k in ("MODEL", "BASE_URL", "API_KEY_ENV", "API_KEY_FILE", "TIMEOUT_S", "TEMPERATURE", "MAX_TOKENS", "OUTPUT_MODE", "FAMILY")),
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in LLM_ENV:
        monkeypatch.delenv(var, raising=False)


def replay(*answers: Any) -> ReplayChatCompletionClient:
    """A scripted model: dicts are sent as JSON, strings as they are."""
    return ReplayChatCompletionClient([a if isinstance(a, str) else json.dumps(a) for a in answers])


def sent(client: ReplayChatCompletionClient, call: int = -1) -> str:
    """The last user message of one call, as the model saw it."""
    return str(client.create_calls[call]["messages"][-1].content)


def report(better: bool = True) -> AnalysisReport:
    comparison = Comparison(
        idea_id="wd-1", metric="val_loss", direction="lower", baseline_mean=0.5, baseline_stderr=0.01, idea_mean=0.42,
        idea_stderr=0.01, n_baseline=3, n_idea=3, diff=-0.08, improvement=0.08, ci_low=0.05, ci_high=0.11, p_value=0.01 if better else 0.4,
        effect_size=2.1, better=better, verdict="better" if better else "inconclusive",
    )
    return AnalysisReport(project="p", primary_metric="val_loss", comparisons=[comparison], runs=[], flags=["only 3 seeds"])
