"""The template spec: what a template.yaml declares, validated when a project starts.

It crosses every layer (the CLI loads it, the PI plans with it, the engineer
checks overrides against it, the analyst reads metric directions from it), so
it travels in messages as this model, never as a dict.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bus.errors import LabError
from bus.schema.constants import MIN_SEEDS
from bus.schema.kinds import DEFAULT_PROFILE, FAST_PROFILE, ProfileName
from bus.schema.project import CodeEdit, Idea


class TemplateError(LabError, ValueError):
    """A template that cannot be used; the message is one line for the user."""


class Knob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "choice", "bool"]
    default: Any
    min: float | None = None
    max: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    # Values worth trying first; the offline mind draws ideas from these.
    candidates: list[Any] = []
    # Changing a fairness knob changes the compute or data an arm gets, so a
    # comparison against the baseline would be unfair: the analyst flags it.
    fairness: bool = False
    # Changing it changes the compute a run spends (per step or in total), so a
    # hypothesis must not say "compute held equal"; the analyst flags it.
    changes_compute: bool = False
    # Int knobs whose values this int knob's value must divide (attention heads divide the width):
    # a relation no single knob's range can say, checked on a run's whole configuration.
    divides: list[str] = []
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Knob:
        if self.type == "choice" and not self.choices:
            raise ValueError("a choice knob needs 'choices'")
        for v in [self.default, *self.candidates]:
            self.validate_value(v)
        return self

    def validate_value(self, value: Any) -> Any:
        """Return the value coerced to the knob's type, or raise ValueError."""
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"expected true/false, got {value!r}")
            return value
        if self.type == "choice":
            if value not in (self.choices or []):
                raise ValueError(f"{value!r} is not one of {self.choices}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        if self.type == "int":
            if float(value) != int(value):
                raise ValueError(f"expected an integer, got {value!r}")
            value = int(value)
            # An int knob may name its valid values (heads that must divide the width): the rest are not in its space.
            if self.choices is not None and value not in self.choices:
                raise ValueError(f"{value!r} is not one of {self.choices}")
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {value!r}")
        if self.min is not None and value < self.min:
            raise ValueError(f"{value!r} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{value!r} is above the maximum {self.max}")
        return value


class Variant(BaseModel):
    """A code-level variant a template declares: edits of its own files the engineer switches in.

    Where a knob chooses between behaviours the experiment already has, a variant
    changes the code itself (a new merge algorithm, a regulariser), so an idea with
    ``code=CodeChange(variant=...)`` runs end to end without a model writing the edits.
    The edits are checked against the template's files when it loads
    (``agents.templates.load``): each search text must occur exactly once.
    """

    model_config = ConfigDict(extra="forbid")
    description: str
    edits: list[CodeEdit] = Field(min_length=1)
    # The variant spends different compute than the baseline (more steps, a bigger model):
    # a hypothesis must not say "compute held equal", as for a changes_compute knob.
    changes_compute: bool = False


MetricKind = Literal["outcome", "hardware", "derived", "fixed"]


class Metric(BaseModel):
    """A metric the experiment reports, with what kind of evidence it is.

    ``kind`` decides whether the analyst may test it:
    - ``outcome`` (default): a result of the method; tested (the primary metric's family, or the secondary family);
    - ``hardware``: depends on the machine and its load (throughput, wall time): compared only when the
      arms ran interleaved on the same node, otherwise reported descriptively and kept out of every test family;
    - ``derived``: computed from other metrics (``derived_from``): tested once, through its sources, not again;
    - ``fixed``: identical across arms by construction (a reference score every arm shares): never tested.
    """

    model_config = ConfigDict(extra="forbid")
    direction: Literal["higher", "lower"]
    primary: bool = False
    kind: MetricKind = "outcome"
    derived_from: list[str] = []
    description: str = ""
    # The curve (a name in final_info.json's ``curves``) whose end says whether training had settled for this
    # metric: "" is the metric's own curve when the experiment records one. The analyst checks the primary's.
    curve: str = ""
    # A level a run's curve of this metric keeps once it reaches it (grokking's val_acc 0.99): a run that reaches
    # it and ends worse than it by more than ``plateau_tol`` collapsed (flag unstable).
    plateau: float | None = None
    plateau_tol: float = Field(0.02, ge=0)
    # The smallest effect worth detecting, in the metric's units: the seed plan is powered for it
    # (None: a default fraction of the baseline's mean, see agents.analyst.workflow.MDE_FRACTION).
    min_effect: float | None = Field(None, gt=0)


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1, gt=0)
    gpu: int = Field(0, ge=0)  # per node
    # Nodes (pods) of one distributed run, each with ``gpu`` GPUs: torchrun across them (docs/gpu.md, multi-node).
    nodes: int = Field(1, ge=1)
    memory_mb: int = Field(2048, ge=64)
    # A memory-backed /dev/shm (DataLoader workers, NCCL): counted in memory_mb, as the kernel counts tmpfs pages.
    shm_mb: int = Field(256, ge=16)
    # Scratch disk the job may fill (ephemeral-storage on Kubernetes); None: the executor's default.
    disk_mb: int | None = Field(None, ge=16)


class Profile(BaseModel):
    """A named way to run a template (``fast`` for smoke runs, ``gpu`` for one GPU, ...).

    Overrides apply on top of the knob defaults (the baseline's own overrides win);
    resources and time budget, when given, replace the template's, so a Job asks
    for the GPUs its profile needs.
    """

    model_config = ConfigDict(extra="forbid")
    overrides: dict[str, Any] = {}
    resources: Resources | None = None
    time_budget_s: float | None = Field(None, gt=0)
    description: str = ""


class Resolved(BaseModel):
    """A profile applied to a template: what the engineer plans a job with."""

    name: str
    overrides: dict[str, Any]
    resources: Resources
    time_budget_s: float




class TemplateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    title: str
    task: str
    keywords: list[str] = []
    knobs: dict[str, Knob]
    metrics: dict[str, Metric]
    baseline: dict[str, Any] = {}
    seeds: int = Field(MIN_SEEDS, ge=MIN_SEEDS, le=50)
    # The template runs its own seeds and ignores --seeds (an AI Scientist template's hard-coded seed list): a run
    # cannot add seeds, so the PI answers a review's more_seeds item with a rebuttal instead of re-running the same ones.
    fixed_seeds: bool = False
    time_budget_s: float = Field(600, gt=0)
    resources: Resources = Resources()
    fast: dict[str, Any] = {}  # shorthand for profiles.fast.overrides (older templates)
    profiles: dict[ProfileName, Profile] = {}
    variants: dict[str, Variant] = {}  # code-level variants, by name (see Variant)
    # The experiment saves a checkpoint to LAB_CHECKPOINT_DIR (every few steps and on
    # SIGTERM) and resumes from one, so the runner syncs that folder to the artifact store.
    resumable: bool = False
    # Seconds the experiment gets after SIGTERM (preemption, drain) to save a checkpoint; the
    # Kubernetes Job's terminationGracePeriodSeconds adds the runner's upload time to it.
    term_grace_s: float = Field(20, ge=0, le=600)
    references: str = "references.bib"
    network: bool = False
    # The lab's result cache (bus/resultcache.py) may serve a run of the same code, knobs, seeds and runtime
    # instead of running it again; false for an experiment whose results differ from run to run (nondeterministic).
    cache: bool = True
    # Extra packages (pip requirement lines) beside the lab's own; requirements.txt beside experiment.py adds to them.
    # The local runner installs them in an environment of their own; a Docker/Kubernetes job image must hold them.
    requirements: list[str] = []
    # A known-different setting (knob overrides on top of the baseline): the PI runs it as the idea
    # "positive-control"; if the analyst finds no difference from the baseline on the primary metric,
    # the testbed cannot separate settings here and conclusions are withheld (flag no_separation).
    positive_control: dict[str, Any] = {}
    # The significance level the analyst tests at and plans seeds for.
    alpha: float = Field(0.05, gt=0, lt=1)
    # Ideas the template brings (an AI Scientist template's seed_ideas.json, as code changes): with the llm
    # mind they lead the first wave, checked and ranked like the mind's own; the offline mind cannot write code.
    seed_ideas: list[Idea] = []

    @model_validator(mode="after")
    def _check_metrics(self) -> TemplateSpec:
        """Metric kinds that make sense: the primary is an outcome; a derived metric names declared sources."""
        for name, m in self.metrics.items():
            if m.primary and m.kind != "outcome":
                raise ValueError(f"metrics.{name}: the primary metric must be of kind outcome, not {m.kind}")
            if m.kind == "derived" and not m.derived_from:
                raise ValueError(f"metrics.{name}: a derived metric names its sources in derived_from")
            for source in m.derived_from:
                if source not in self.metrics or source == name:
                    raise ValueError(f"metrics.{name}.derived_from: {source!r} is not another declared metric")
        return self

    @model_validator(mode="after")
    def _check(self) -> TemplateSpec:
        primaries = [m for m, v in self.metrics.items() if v.primary]
        if len(primaries) != 1:
            raise ValueError(f"exactly one metric must have primary: true (found {len(primaries)})")
        # A dumped spec carries both (they agree); a template.yaml with two different ones is a mistake.
        if self.fast and FAST_PROFILE in self.profiles and self.profiles[FAST_PROFILE].overrides != self.fast:
            raise ValueError("declare the fast profile once: either 'fast' or 'profiles.fast'")
        if DEFAULT_PROFILE in self.profiles:
            raise ValueError(f"profiles.{DEFAULT_PROFILE}: reserved for the template's own settings")
        if self.fast and FAST_PROFILE not in self.profiles:
            self.profiles[FAST_PROFILE] = Profile(overrides=self.fast)
        elif FAST_PROFILE in self.profiles:
            self.fast = dict(self.profiles[FAST_PROFILE].overrides)
        for name, knob in self.knobs.items():
            for other in knob.divides:
                if knob.type != "int" or other not in self.knobs or self.knobs[other].type != "int":
                    raise ValueError(f"knobs.{name}.divides: {other!r} must be a declared int knob, and {name} an int knob")
        labelled = [("baseline", self.baseline), ("positive_control", self.positive_control)]
        labelled += [(f"profiles.{n}", p.overrides) for n, p in self.profiles.items()]
        for label, overrides in labelled:
            for k, v in overrides.items():
                if k not in self.knobs:
                    raise ValueError(f"{label}.{k}: not a declared knob")
                self.knobs[k].validate_value(v)
        # The template's own runs must hold its relations: as declared, and under each profile.
        for label, overrides in [("the defaults", {}), *((f"profiles.{n}", p.overrides) for n, p in self.profiles.items())]:
            if why := self.broken_relation({**overrides, **self.baseline}):
                raise ValueError(f"{label}: {why}")
        return self

    def broken_relation(self, overrides: dict[str, Any]) -> str | None:
        """Why a run with these overrides (on top of the defaults) breaks a declared relation, or None."""
        values = {**self.defaults(), **overrides}
        for name, knob in self.knobs.items():
            for other in knob.divides:
                a, b = values[name], values[other]
                if isinstance(a, int) and isinstance(b, int) and (a == 0 or b % a != 0):
                    return f"{name}={a} must divide {other}={b}"
        return None

    def profile(self, name: ProfileName | None = None) -> Resolved:
        """The named profile applied to this template; None, "" or "default" is the template as declared."""
        if not name or name == DEFAULT_PROFILE:
            return Resolved(name=DEFAULT_PROFILE, overrides={}, resources=self.resources, time_budget_s=self.time_budget_s)
        if name not in self.profiles:
            known = ", ".join([DEFAULT_PROFILE, *sorted(self.profiles)])
            raise TemplateError(f"template {self.name} has no profile {name!r}; known: {known}")
        p = self.profiles[name]
        return Resolved(
            name=name,
            overrides=dict(p.overrides),
            resources=p.resources or self.resources,
            time_budget_s=p.time_budget_s or self.time_budget_s,
        )

    @property
    def primary_metric(self) -> str:
        return next(m for m, v in self.metrics.items() if v.primary)

    def defaults(self) -> dict[str, Any]:
        return {k: v.default for k, v in self.knobs.items()}

    def effective(self, profile: str | None = None) -> dict[str, Any]:
        """Every knob's value in the baseline as it runs under ``profile``: defaults, then the profile's, then the baseline's.

        What the paper's Setup states and what an idea is compared with (the order ``plan_job`` applies);
        ``final_info.json``'s ``config`` records the same values for each run.
        """
        return {**self.defaults(), **self.profile(profile).overrides, **self.baseline}

    def check_overrides(self, overrides: dict[str, Any], profile: str | None = None) -> dict[str, Any]:
        """Coerced overrides, or TemplateError naming the first bad knob or broken relation (``divides``).

        Relations are checked on the run's whole configuration: the defaults, the
        profile's overrides, the baseline's, then these (the order ``agents.engineer.jobs.plan_job`` uses).
        """
        out = {}
        for k, v in overrides.items():
            if k not in self.knobs:
                raise TemplateError(f"unknown knob {k!r} (template {self.name} declares {sorted(self.knobs)})")
            try:
                out[k] = self.knobs[k].validate_value(v)
            except ValueError as e:
                raise TemplateError(f"knob {k!r}: {e}") from None
        if why := self.broken_relation({**self.profile(profile).overrides, **self.baseline, **out}):
            raise TemplateError(f"template {self.name}: {why}")
        return out


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "template.yaml"
    return f"{where}: {err['msg']}"


def parse_spec(data: Any, source: str = "template.yaml") -> TemplateSpec:
    try:
        return TemplateSpec.model_validate(data)
    except ValidationError as e:
        raise TemplateError(f"{source}: {_first_error(e)}") from None
