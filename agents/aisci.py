"""AI Scientist templates, run unchanged: recognise the format and derive the lab's template spec from it.

An AI Scientist template is a folder with ``experiment.py`` (run as
``python experiment.py --out_dir=run_i``, hyper-parameters hard-coded, its own seeds
and datasets), ``plot.py``, ``prompt.json`` (``system``, ``task_description``),
``seed_ideas.json`` and ``latex/template.tex``; the AI Scientist asks its user to run
the baseline once into ``run_0`` before anything else, so ``run_0/final_info.json``
(``{dataset: {means, stderrs, final_info_dict}}``) is where the metric names come from.

What is derived, and the rules (``docs/research.md#ai-scientist-templates``):

- task from ``prompt.json``'s ``task_description``; no knobs (the template declares none);
- metrics ``<dataset>/<metric>`` from ``run_0/final_info.json`` (or ``metrics`` in the override file);
- direction from the metric's name (:func:`direction_of`), else the override file's ``directions``;
  a metric whose name says time is of kind ``hardware`` (it depends on the machine);
- primary: the override file's ``primary``, else the first outcome metric of the first dataset
  whose name says validation, evaluation or test, else the first outcome metric;
- seeds: as many as the template's own per-seed lists hold;
- time budget: the override file's ``time_budget_s``, else 3 × the wall time of the template's
  first baseline run (:func:`measured`, recorded by the export), at least 60 s and at most
  7200 s, else 7200 s (the AI Scientist's own timeout) until a run has been measured.

The override file is ``lab.yaml`` beside ``experiment.py`` (:class:`Overrides`). Anything
that cannot be derived is one line in :attr:`Derived.problems`; `lab template check`
prints them and `lab run` refuses the template with the first.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import platformdirs
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents import aisci_shim
from agents.codeedit import EDITABLE, ORIGINAL_EDITABLE
from bus.schema import BASELINE, CodeChange, Idea, RunRecord, TemplateError, TemplateSpec
from bus.schema.constants import MIN_SEEDS
from bus.settings import settings

OVERRIDES = "lab.yaml"
PROMPT = "prompt.json"
SEED_IDEAS = "seed_ideas.json"
LATEX = "latex/template.tex"
DEFAULT_BUDGET_S = 7200.0  # the AI Scientist's own timeout for one run
MIN_BUDGET_S, BUDGET_FACTOR = 60.0, 3.0  # a measured template's budget: 3 x its first run, at least a minute, at most the default
MEASURED = "aisci_measured.json"  # under LAB_HOME: {template name: {wall_s, measured_at, project, job_id}}

Direction = Literal["higher", "lower"]
# Name parts that say which way is better; matched on the metric's words (split at _ - . and digits).
LOWER = {
    "loss", "losses", "error", "err", "time", "seconds", "latency", "perplexity", "ppl", "nll",
    "mse", "mae", "rmse", "bpc", "regret", "kl", "fid", "wer", "cer",
}
HIGHER = {"acc", "accuracy", "score", "reward", "rewards", "return", "f1", "auc", "bleu", "rouge", "precision", "recall", "iou", "map", "success", "win"}
TIME_WORDS = {"time", "seconds", "latency", "duration", "throughput"}
PRIMARY_WORDS = {"val", "valid", "validation", "eval", "test"}


class Overrides(BaseModel):
    """``lab.yaml`` beside an AI Scientist template's experiment.py: what the lab cannot read from the template itself."""

    model_config = ConfigDict(extra="forbid")
    title: str = ""
    keywords: list[str] = []
    primary: str = ""  # <dataset>/<metric>
    directions: dict[str, Direction] = {}  # by metric name (all datasets) or by <dataset>/<metric>
    metrics: list[str] = []  # <dataset>/<metric>, for a template without a checked-in run_0/final_info.json
    time_budget_s: float | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, ge=64)
    requirements: list[str] = []


class SeedIdea(BaseModel):
    """One entry of seed_ideas.json, as the AI Scientist writes it."""

    model_config = ConfigDict(extra="allow")
    Name: str = Field(min_length=1)
    Title: str = Field(min_length=1)
    Experiment: str = Field(min_length=1)
    Interestingness: int = Field(ge=1, le=10)
    Feasibility: int = Field(ge=1, le=10)
    Novelty: int = Field(ge=1, le=10)


@dataclass
class Derived:
    """What the lab made of an AI Scientist template: the spec (None while a problem stands), and from where."""

    folder: Path
    spec: TemplateSpec | None = None
    found: list[tuple[str, str, str]] = field(default_factory=list)  # (what, value, where from)
    problems: list[str] = field(default_factory=list)  # each one line; the template cannot run until they are fixed
    notes: list[str] = field(default_factory=list)
    seed_ideas: list[SeedIdea] = field(default_factory=list)
    requirements: list[str] = field(default_factory=list)
    overrides: Overrides = field(default_factory=Overrides)

    def first_problem(self) -> TemplateError:
        return TemplateError(self.problems[0])


def is_aisci(folder: Path) -> bool:
    """An AI Scientist template: experiment.py and prompt.json, and no template.yaml of the lab's own."""
    return folder.is_dir() and not (folder / "template.yaml").exists() and (folder / "experiment.py").is_file() and (folder / PROMPT).is_file()


def _words(name: str) -> set[str]:
    return {w for w in re.split(r"[^a-z]+", name.lower()) if w}


def direction_of(metric: str) -> Direction | None:
    """Which way is better, from the metric's name: loss, error, time ... lower; acc, score, reward ... higher; else None."""
    words = _words(metric)
    lower, higher = bool(words & LOWER), bool(words & HIGHER)
    if lower == higher:  # neither, or both ("score_time"): the name does not say
        return None
    return "lower" if lower else "higher"


def _read_json(path: Path, d: Derived) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        d.problems.append(f"{path}: cannot read ({e.strerror})")
    except (ValueError, UnicodeDecodeError) as e:
        d.problems.append(f"{path}: not valid JSON ({str(e).splitlines()[0]})")
    return None


def _read_overrides(d: Derived) -> None:
    path = d.folder / OVERRIDES
    if not path.is_file():
        return
    try:
        d.overrides = Overrides.model_validate(yaml.safe_load(path.read_text()) or {})
        d.found.append(("overrides", OVERRIDES, "the user"))
    except yaml.YAMLError as e:
        d.problems.append(f"{path}: not valid YAML ({str(e).splitlines()[0]})")
    except ValidationError as e:
        err = e.errors()[0]
        d.problems.append(f"{path}: {'.'.join(str(p) for p in err['loc']) or 'top level'}: {err['msg']}")


def _read_task(d: Derived) -> str:
    prompt = _read_json(d.folder / PROMPT, d)
    if prompt is None:
        return ""
    task = prompt.get("task_description") if isinstance(prompt, dict) else None
    if not isinstance(task, str) or not task.strip():
        d.problems.append(f"{d.folder / PROMPT}: no task_description (a non-empty string)")
        return ""
    d.found.append(("task", _short(task), PROMPT))
    return " ".join(task.split())


def _short(text: str, n: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def _read_metric_names(d: Derived) -> tuple[list[str], int]:
    """Metric names (in the file's order) and how many seeds the template runs, from run_0/final_info.json or lab.yaml."""
    path = d.folder / aisci_shim.RUN_DIR / "final_info.json"
    if path.is_file():
        raw = _read_json(path, d)
        if raw is None:
            return [], 0
        try:
            lab = aisci_shim.convert(raw)
        except aisci_shim.FormatError as e:
            d.problems.append(f"{path}: {e}")
            return [], 0
        names = list(lab["metrics"])
        d.found.append(("datasets", ", ".join(lab["aisci"]["datasets"]), f"{aisci_shim.RUN_DIR}/final_info.json"))
        return names, len(lab["seeds"])
    if d.overrides.metrics:
        return list(d.overrides.metrics), 0
    d.problems.append(
        f"{d.folder}: no {aisci_shim.RUN_DIR}/final_info.json to read the metrics from: run `python experiment.py --out_dir={aisci_shim.RUN_DIR}` "
        f"there once (as the AI Scientist asks), or list them as `metrics:` in {OVERRIDES}"
    )
    return [], 0


def _direction(d: Derived, name: str) -> Direction | None:
    metric = name.split(aisci_shim.SEP, 1)[-1]
    given = d.overrides.directions.get(name) or d.overrides.directions.get(metric)
    if given:
        return given
    return direction_of(metric)


def _metrics(d: Derived, names: list[str]) -> dict[str, Any]:
    """The spec's metrics section: direction, kind and the one primary (by the rule in the module's docstring)."""
    metrics: dict[str, Any] = {}
    for name in names:
        direction = _direction(d, name)
        if direction is None:
            d.problems.append(
                f"metric {name}: cannot tell from its name whether higher or lower is better; add `directions: {{{name}: higher}}` (or lower) to {OVERRIDES}"
            )
            continue
        timed = bool(_words(name.split(aisci_shim.SEP, 1)[-1]) & TIME_WORDS)
        metrics[name] = {"direction": direction, "kind": "hardware" if timed else "outcome"}
        how = f"{direction} is better" + (" (hardware: a time)" if timed else "")
        d.found.append((f"metric {name}", how, OVERRIDES if _overridden(d, name) else "its name"))
    outcomes = [n for n, m in metrics.items() if m["kind"] == "outcome"]
    primary, why = d.overrides.primary, f"{OVERRIDES}: primary"
    if primary and primary not in metrics:
        d.problems.append(f"{d.folder / OVERRIDES}: primary: {primary!r} is not one of the metrics ({', '.join(names)})")
        return metrics
    if not primary and outcomes:
        first_ds = outcomes[0].split(aisci_shim.SEP, 1)[0]
        in_first = [n for n in outcomes if n.split(aisci_shim.SEP, 1)[0] == first_ds]
        said = [n for n in in_first if _words(n.split(aisci_shim.SEP, 1)[-1]) & PRIMARY_WORDS]
        primary, why = (said or in_first)[0], "rule: first dataset, first validation/eval/test outcome metric, else first outcome"
    if primary:
        metrics[primary]["primary"] = True
        d.found.append(("primary metric", primary, why))
    elif names and not d.problems:
        d.problems.append(f"{d.folder}: no outcome metric to be primary (every metric is a time); name one as `primary:` in {OVERRIDES}")
    return metrics


def _overridden(d: Derived, name: str) -> bool:
    return name in d.overrides.directions or name.split(aisci_shim.SEP, 1)[-1] in d.overrides.directions


def read_seed_ideas(folder: Path) -> tuple[list[SeedIdea], str | None]:
    """seed_ideas.json's ideas, or the one line saying what is wrong with it (no file: no ideas, no problem)."""
    path = folder / SEED_IDEAS
    if not path.is_file():
        return [], None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return [], f"{path}: not valid JSON ({str(e).splitlines()[0]})"
    if not isinstance(raw, list):
        return [], f"{path}: expected a list of ideas, got {type(raw).__name__}"
    ideas = []
    for i, item in enumerate(raw):
        try:
            ideas.append(SeedIdea.model_validate(item))
        except ValidationError as e:
            err = e.errors()[0]
            return [], f"{path}: idea {i}: {'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
    return ideas, None


def as_idea(seed: SeedIdea, primary: str, direction: str) -> Idea:
    """A seed idea as the PI's: a code change to experiment.py (the engineer's guarded edits write it), scored as the template scored it."""
    better = "higher" if direction == "higher" else "lower"
    return Idea(
        id="seed-" + (re.sub(r"[^a-z0-9]+", "-", seed.Name.lower()).strip("-")[:40] or "idea"),
        title=seed.Title,
        hypothesis=f"{seed.Experiment.strip()} This gives a {better} {primary} than the unchanged experiment.py.",
        falsification=f"Rejected if {primary} is not {better} than the baseline's after correction for multiple comparisons.",
        changes={},
        code=CodeChange(summary=seed.Experiment.strip()),
        rationale=f"{SEED_IDEAS}: the template's own idea {seed.Name!r}.",
        interestingness=seed.Interestingness, feasibility=seed.Feasibility, novelty=seed.Novelty,
    )


def read_requirements(folder: Path, overrides: Overrides) -> list[str]:
    """Extra packages: requirements.txt's lines (comments and blanks dropped), then the override file's."""
    path = folder / "requirements.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    reqs = [ln.split("#", 1)[0].strip() for ln in lines]
    return [r for r in [*reqs, *overrides.requirements] if r]


def _extras(d: Derived) -> None:
    """The parts that do not shape the spec: seed ideas, requirements, plot.py, the paper's LaTeX."""
    d.seed_ideas, problem = read_seed_ideas(d.folder)
    if problem:
        d.problems.append(problem)
    elif (d.folder / SEED_IDEAS).is_file():
        d.found.append(("seed ideas", f"{len(d.seed_ideas)}: " + _short(", ".join(i.Name for i in d.seed_ideas), 50), SEED_IDEAS))
    d.requirements = read_requirements(d.folder, d.overrides)
    if d.requirements:
        d.found.append(("requirements", _short(", ".join(d.requirements), 60), "requirements.txt" if (d.folder / "requirements.txt").is_file() else OVERRIDES))
    if not (d.folder / "plot.py").is_file():
        d.problems.append(f"{d.folder}: missing plot.py")
    if (d.folder / LATEX).is_file():
        d.found.append(("paper style", LATEX, "the template"))
    else:
        d.notes.append(f"no {LATEX}: the paper uses the lab's own style")


def _home(home: Path | None) -> Path:
    if home is not None:
        return home
    configured = settings().home
    return configured.expanduser() if configured else Path(platformdirs.user_data_dir("kenkyu-lab"))


def _read_measured(home: Path | None) -> dict[str, Any]:
    try:
        raw = json.loads((_home(home) / MEASURED).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return raw if isinstance(raw, dict) else {}


def measured(name: str, home: Path | None = None) -> tuple[float, float] | None:
    """(wall seconds, when) of template ``name``'s first measured baseline run, from LAB_HOME; None before one ran."""
    got = _read_measured(home).get(name)
    try:
        wall, when = float(got["wall_s"]), float(got["measured_at"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    return (wall, when) if wall > 0 else None


def record_measured(name: str, runs: list[RunRecord], project: str, home: Path | None = None) -> bool:
    """Record the wall time of the first succeeded baseline run among ``runs`` as template ``name``'s, unless one is recorded.

    Written by the export (``services.read.export``), which runs where `lab run` and
    `lab export` run, the machine that holds the template folder and derives its spec,
    whatever executor ran the job: the wall time travels back in the run's record.
    The first measurement stands; delete the entry in ``$LAB_HOME/aisci_measured.json``
    to measure again (after editing experiment.py, say).
    """
    first = next((r for r in runs if r.idea_id == BASELINE and r.status == "succeeded" and r.wall_s > 0), None)
    if first is None or measured(name, home) is not None:
        return False
    table = _read_measured(home)
    table[name] = {"wall_s": first.wall_s, "measured_at": time.time(), "project": project, "job_id": first.job_id}
    path = _home(home) / MEASURED
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=2, sort_keys=True))
    tmp.replace(path)
    return True


def budget_of(name: str, overrides: Overrides, home: Path | None = None) -> tuple[float, str, str]:
    """The time budget (seconds), how it was reached, and from where: lab.yaml, else 3 × the measured run, else the default."""
    if overrides.time_budget_s:
        return overrides.time_budget_s, f"{overrides.time_budget_s:.0f} s", OVERRIDES
    got = measured(name, home)
    if got is None:
        return DEFAULT_BUDGET_S, f"{DEFAULT_BUDGET_S:.0f} s", "the AI Scientist's default (no run measured yet)"
    wall, when = got
    budget = min(DEFAULT_BUDGET_S, max(MIN_BUDGET_S, BUDGET_FACTOR * wall))
    how = f"{BUDGET_FACTOR:.0f} × the measured {wall:.3g} s = {budget:.0f} s (measured on {time.strftime('%Y-%m-%d', time.localtime(when))})"
    return budget, how, f"$LAB_HOME/{MEASURED}"


def derive(folder: Path, home: Path | None = None) -> Derived:
    """The lab's template spec for an AI Scientist template folder, and what came from where (a measured run's time from ``home``)."""
    d = Derived(folder=folder.resolve())
    d.found.append(("format", "AI Scientist (experiment.py --out_dir=run_i)", "no template.yaml, a prompt.json"))
    _read_overrides(d)
    task = _read_task(d)
    names, seeds = _read_metric_names(d)
    metrics = _metrics(d, names)
    _extras(d)
    budget, how, where = budget_of(d.folder.name, d.overrides, home)
    d.found.append(("knobs", "none (hyper-parameters are hard-coded)", "experiment.py"))
    d.found.append(("seeds", f"{seeds or 'its own'} (run by the template itself)", f"{aisci_shim.RUN_DIR}/final_info.json" if seeds else "-"))
    d.found.append(("time budget", how, where))
    if d.problems:
        return d
    data = {
        "name": d.folder.name, "title": d.overrides.title or f"{d.folder.name} (an AI Scientist template)", "task": task,
        "keywords": d.overrides.keywords or [d.folder.name.replace("_", " ")], "knobs": {}, "metrics": metrics,
        "seeds": max(MIN_SEEDS, min(seeds, 50)), "fixed_seeds": True, "time_budget_s": budget,
    }
    if d.requirements:  # merged from requirements.txt and lab.yaml: the bundle's template.yaml is where the runner reads them
        data["requirements"] = d.requirements
    if d.overrides.memory_mb:
        data["resources"] = {"memory_mb": d.overrides.memory_mb}
    primary = next((n for n, m in metrics.items() if m.get("primary")), "")
    data["seed_ideas"] = [as_idea(i, primary, metrics.get(primary, {}).get("direction", "")) for i in d.seed_ideas]
    try:
        d.spec = TemplateSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        d.problems.append(f"{d.folder}: the derived spec is not valid: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    return d


def load(folder: Path) -> TemplateSpec:
    """The derived spec, or TemplateError with the first problem."""
    d = derive(folder)
    if d.spec is None:
        raise d.first_problem()
    return d.spec


FILECONTENTS = re.compile(r"\\begin\{filecontents\*?\}(?:\[[^\]]*\])?\{references\.bib\}(.*?)\\end\{filecontents\*?\}", re.S)
PLOT_SHIM = (
    '"""The lab\'s wrapper around the template\'s own plot.py (in original/): see experiment.py."""\n\n'
    "import sys\n\nfrom experiment import plot_main\n\nsys.exit(plot_main())\n"
)


def references(folder: Path) -> str:
    """The works the template cites: its references.bib, else the one its LaTeX carries in a filecontents block."""
    own = folder / "references.bib"
    if own.is_file():
        return own.read_text(errors="replace")
    tex = folder / LATEX
    found = FILECONTENTS.search(tex.read_text(errors="replace")) if tex.is_file() else None
    return found.group(1).strip() + "\n" if found else ""


def _skipped(rel: Path) -> bool:
    """Not part of the code: caches, hidden files, and the run_* output folders of earlier runs."""
    return any(p in {"__pycache__", ".ipynb_checkpoints"} or p.startswith(".") for p in rel.parts) or rel.parts[0].startswith("run_")


def bundle(folder: Path, spec: TemplateSpec) -> bytes:
    """The bundle the job runner fetches: the lab's wrapper as experiment.py and plot.py, the user's folder unchanged under original/."""
    import io
    import tarfile

    shim = Path(aisci_shim.__file__).read_bytes()
    made = {
        "experiment.py": shim, "plot.py": PLOT_SHIM.encode(), "references.bib": references(folder).encode(),
        "template.yaml": yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False).encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in made.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o644
            tar.addfile(info, io.BytesIO(body))
        for f in sorted(folder.rglob("*")):
            rel = f.relative_to(folder)
            if f.is_file() and not f.is_symlink() and not _skipped(rel):
                tar.add(f, arcname=f"{aisci_shim.ORIGINAL}/{rel}", recursive=False)
    return buf.getvalue()


def is_bundle(files: Mapping[str, str]) -> bool:
    """A bundle's text files (``agents.templates.bundle_files``) are an AI Scientist template's: the lab's wrapper over original/."""
    mark = (aisci_shim.__doc__ or "").splitlines()[0]
    return f"{aisci_shim.ORIGINAL}/experiment.py" in files and bool(mark) and files.get("experiment.py", "").startswith(f'"""{mark}')


def editable(files: Mapping[str, str]) -> frozenset[str]:
    """What a code idea's edits may change in a bundle: an AI Scientist template's own experiment.py and plot.py
    (``original/``), never the lab's wrapper that runs them; any other template's experiment.py and plot.py."""
    if is_bundle(files):
        return ORIGINAL_EDITABLE & frozenset(files)
    return EDITABLE & frozenset(files)


NO_LEVERS = (
    "This template declares no knobs or variants, so the offline mind has no idea to propose: "
    "the lab ran the baseline and its seeds only, and this report characterises that baseline. No idea was tested."
)


def declares_no_levers(spec: TemplateSpec) -> bool:
    """Nothing for the offline mind to vary: no knobs and no code variants (an AI Scientist template's case)."""
    return not spec.knobs and not spec.variants


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def baseline_report(spec: TemplateSpec, runs: list[RunRecord]) -> str:
    """A baseline-characterisation report (Markdown): each metric's mean, standard error and per-seed values, per dataset.

    Written for a template the offline mind cannot vary (:func:`declares_no_levers`); it says so
    plainly and names every idea that did run, so it never reads as a tested idea.
    """
    base = [r for r in runs if r.idea_id == BASELINE and r.status == "succeeded" and r.final_info is not None]
    others = sorted({r.idea_id for r in runs if r.idea_id != BASELINE})
    lines = [f"# Baseline characterisation: {spec.name}", "", NO_LEVERS if not others else f"Ideas that ran besides the baseline: {', '.join(others)}.", ""]
    lines += [f"Task: {spec.task}", ""]
    if not base:
        failed = [f"{r.job_id}: {r.reason}" for r in runs if r.idea_id == BASELINE]
        return "\n".join([*lines, "The baseline did not finish, so there is nothing to characterise.", *failed, ""])
    lines += ["| metric | better | mean | stderr | per seed | runs |", "|---|---|---|---|---|---|"]
    for name, metric in spec.metrics.items():
        stats = [(r.final_info.metrics[name], r) for r in base if r.final_info is not None and name in r.final_info.metrics]
        for stat, run in stats:
            label = f"**{name}** (primary)" if metric.primary else name
            better = metric.direction + (" (hardware)" if metric.kind == "hardware" else "")
            lines.append(f"| {label} | {better} | {_fmt(stat.mean)} | {_fmt(stat.stderr)} | {', '.join(map(_fmt, stat.values))} | {run.job_id} |")
        if not stats:
            lines.append(f"| {name} | {metric.direction} | - | - | not reported | - |")
    seeds = sorted({s for r in base if r.final_info is not None for s in r.final_info.seeds})
    walls = ", ".join(f"{r.wall_s:.1f}s" for r in base)
    lines += ["", f"Seeds: {len(seeds)} per run, run by the template itself. Wall time of each baseline run: {walls} "
              f"(time budget {spec.time_budget_s:.0f}s; the next project's is 3 × the first run's, or `time_budget_s` in {OVERRIDES}).", ""]
    return "\n".join(lines)
