"""A project's budget in compute and money: the estimate before its first run, and what is spent so far.

The estimate (``estimate``) is runs x the expected time of one job x the GPUs (and CPUs) each job
asks for, plus the steps that ask a mind x tokens per step, priced. The job time and the tokens per
step come from the archive where it has them (``archived``: the median wall time of earlier projects'
jobs on this template and profile, the median tokens and cost per step of earlier llm projects), else
from what the template declares and the lab's stated default. It decides whether the project
waits for the co-PI's approval (``ApprovalPolicy``; ``StartProject.require_approval`` forces it).
What is spent (``spent_reason``) is read from the runs the engineer reported (``RunRecord.gpu_s`` /
``cpu_s``) and the minds' usage: once a limit is reached the PI schedules no new run. Runs already
in flight are not stopped, so a project may end past its limit by at most those runs. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

from agents.pi.baseline import profile_name
from bus.schema import ApprovalPolicy, Budget, BudgetLimits, Estimate, ProjectView, RunRecord, TemplateSpec, Usage

# The steps a project asks a mind for, per idea / per run / per round (proposals and novelty, the engineer's plan,
# the analysis, the draft and the reviewer ensemble), for the token estimate of an llm mind.
STEPS_PER_IDEA, STEPS_PER_RUN, STEPS_PER_ROUND = 2, 1, 5
# Of a step's tokens, the share that is prompt (the rest completion): how a price per 1M prompt/completion tokens is averaged.
PROMPT_SHARE = 0.75
# Archived jobs a median needs before the estimate prefers it to the template's declared time (one run can be an outlier).
MIN_ARCHIVED_RUNS = 3


@dataclass(frozen=True)
class Archived:
    """What earlier projects used, as the estimate reads it (``archived``); empty lists: nothing archived to go on."""

    job_s: tuple[float, ...] = ()  # wall seconds of each job earlier projects ran on this template and profile
    job_from: str = ""  # which jobs, in words: "profile fast, on cpu, local runtime"
    tokens_per_step: tuple[float, ...] = ()  # one per earlier llm project: its tokens over its mind steps
    cost_per_step: tuple[float, ...] = ()  # likewise its USD over its mind steps
    tokens_from: str = ""  # which projects, in words: "on this template" / "on any template"


def hardware_class(run: RunRecord) -> str:
    """Where a job ran, as far as its time depends on it: the device and GPU model, and the image or the local runtime."""
    env = run.environment
    if env is None:
        return "unrecorded"
    device = env.device + (f" {env.gpus[0]}" if env.gpus else "")
    return f"{device}, {env.image or 'local runtime'}"


def mind_steps(ideas: int, runs: int, rounds: int) -> int:
    """The steps that ask a mind, for ideas, runs and review rounds (see STEPS_PER_*)."""
    return STEPS_PER_IDEA * ideas + STEPS_PER_RUN * runs + STEPS_PER_ROUND * rounds


def archived(history: Sequence[ProjectView], template: str, profile: str | None, gpu: bool) -> Archived:
    """Job times and tokens per step from earlier projects' stored states (the PI's ``pi.<project>`` records).

    Jobs: the succeeded runs each project ran itself (none the result cache served) on ``template`` under ``profile``,
    on the device the template asks for (cuda with GPUs, else cpu) where recorded; of those, the hardware class and
    runtime with the most jobs (the latest project's on a tie), so one median is never mixed from two machines.
    Tokens: every earlier project with a mind that used tokens, on this template where there are any, else on any.
    """
    history = sorted(history, key=lambda v: v.started_at)
    want = "cuda" if gpu else "cpu"
    groups: dict[str, list[float]] = {}
    latest: dict[str, int] = {}  # the last project (by start) each class ran a job for: the tie-break
    for i, view in enumerate(history):
        if view.template != template or profile_name(view.profile, view.fast) != profile:
            continue
        for run in _ran(view.runs):
            if run.status == "succeeded" and run.wall_s > 0 and (run.environment is None or run.environment.device == want):
                groups.setdefault(hardware_class(run), []).append(run.wall_s)
                latest[hardware_class(run)] = i
    best = max(groups, key=lambda k: (len(groups[k]), latest[k]), default=None)
    job_s = tuple(groups[best]) if best is not None else ()
    minded = [v for v in history if v.mind != "offline" and v.tokens > 0]
    same = [v for v in minded if v.template == template]
    used = same or minded
    steps = [(v, mind_steps(len(v.ideas), len(_ran(v.runs)), v.round + 1)) for v in used]
    return Archived(
        job_s=job_s, job_from=f"profile {profile or 'as declared'}, on {best}" if best else "",
        tokens_per_step=tuple(v.tokens / n for v, n in steps if n), cost_per_step=tuple(v.cost_usd / n for v, n in steps if n),
        tokens_from="on this template" if same else "on any template",
    )


def capped(
    budget: Budget, limits: BudgetLimits, lab_gpu_hours: float = 0.0, user_gpu_hours: float = 0.0, user: str = "",
) -> tuple[Budget, list[str]]:
    """The project's budget lowered to the lab's caps (config.yaml ``budgets:``), and a line for each cap applied.

    ``lab_gpu_hours`` is what the lab's stored projects used so far, ``user_gpu_hours`` what ``user``'s did: with a
    per-lab or per-user cap, a project may use what is left of it.
    """
    budget = budget.model_copy()
    said = []
    left = None if limits.max_gpu_hours_per_lab is None else round(max(0.0, limits.max_gpu_hours_per_lab - lab_gpu_hours), 4)
    mine = None if limits.max_gpu_hours_per_user is None else round(max(0.0, limits.max_gpu_hours_per_user - user_gpu_hours), 4)
    for field, cap, unit, whose in (
        ("max_gpu_hours", limits.max_gpu_hours_per_project, "GPU-h", "the lab's per-project cap"),
        ("max_gpu_hours", left, "GPU-h", f"what is left of the lab's {limits.max_gpu_hours_per_lab} GPU-h"),
        ("max_gpu_hours", mine, "GPU-h", f"what is left of {user or 'this user'}'s {limits.max_gpu_hours_per_user} GPU-h"),
        ("max_cost_usd", limits.max_cost_per_project, "USD", "the lab's per-project cap"),
    ):
        own = getattr(budget, field)
        if cap is not None and (own is None or own > cap):
            setattr(budget, field, cap)
            said.append(f"{field} {own if own is not None else 'unset'} -> {cap} {unit} ({whose})")
    return budget, said


def estimate(
    spec: TemplateSpec, profile: str | None, budget: Budget, mind: str, policy: ApprovalPolicy,
    measured_job_s: float | None = None, require_approval: bool = False, lab: tuple[float, float] | None = None,
    user: tuple[str, float, float] | None = None, past: Archived = Archived(),
) -> Estimate:
    """What the project is expected to use, and whether it waits for approval (see the module's docstring).

    ``lab``: (GPU-hours the lab's stored projects used, the lab's cap), where the lab has one; ``user``: (who started
    the project, GPU-hours their stored projects used, the per-user cap), where the lab has one; ``past``: what
    earlier projects used (``archived``), preferred to the declared job time and the default tokens per step.
    """
    resolved = spec.profile(profile)
    res = resolved.resources
    job_s, where = _job_time(past, measured_job_s, resolved.time_budget_s, resolved.name)
    runs = budget.max_runs
    gpus, cpus = res.gpu * res.nodes, res.cpu * res.nodes
    steps, tokens, cost, tokens_from = _minds(budget, mind, policy, past)
    est = Estimate(
        runs=runs, job_s=job_s, job_s_from=where, gpus_per_job=gpus, cpus_per_job=cpus,
        gpu_hours=round(runs * job_s * gpus / 3600, 4), cpu_hours=round(runs * job_s * cpus / 3600, 4),
        mind_steps=steps, tokens=tokens, tokens_from=tokens_from, cost_usd=round(cost, 4),
    )
    why = _approval_reasons(est, policy, require_approval, lab, user)
    return est.model_copy(update={"needs_approval": bool(why), "why": "; ".join(why)})


def _job_time(past: Archived, measured_job_s: float | None, declared_s: float, profile: str) -> tuple[float, str]:
    """The expected wall time of one job, and where it came from: the archive's median, a measured first run, the declared budget."""
    if len(past.job_s) >= MIN_ARCHIVED_RUNS:
        return round(median(past.job_s), 3), f"median of {len(past.job_s)} archived runs, {past.job_from}"
    if measured_job_s is not None:
        return measured_job_s, "the template's measured first run"
    return declared_s, f"declared: the time budget of profile {profile}, an upper bound"


def _minds(budget: Budget, mind: str, policy: ApprovalPolicy, past: Archived) -> tuple[int, int, float, str]:
    """The mind steps, tokens and USD a project is expected to use, and where the tokens per step came from."""
    if mind == "offline":
        return 0, 0, 0.0, "the offline mind asks no model: no tokens, no cost"
    steps = mind_steps(budget.max_ideas, budget.max_runs, budget.max_revision_rounds + 1)
    price = policy.usd_per_million_tokens
    if past.tokens_per_step:
        n, per_step = len(past.tokens_per_step), median(past.tokens_per_step)
        tokens = round(steps * per_step)
        spent = median(past.cost_per_step)  # what the models charged; 0 where no price was known, priced here then
        where = f"median of {n} archived project{'s' if n != 1 else ''} {past.tokens_from}: {per_step:.0f} tokens"
        if spent > 0:
            return steps, tokens, steps * spent, f"{where}, ${spent:.4f} per step"
        return steps, tokens, tokens * (price or 0.0) / 1_000_000, where + (" per step" if price else " per step; no price known for the model: $0")
    tokens = steps * policy.tokens_per_step
    where = f"{policy.tokens_per_step} tokens per step (a stated default: no archived project used a mind)"
    return steps, tokens, tokens * (price or 0.0) / 1_000_000, where + ("" if price is not None else "; no price known for the model: $0")


def _approval_reasons(
    est: Estimate, policy: ApprovalPolicy, require_approval: bool, lab: tuple[float, float] | None, user: tuple[str, float, float] | None,
) -> list[str]:
    """Why the estimate waits for the co-PI's approval (empty: it does not)."""
    why = []
    if require_approval:
        why.append("the co-PI asked for approval (--require-approval)")
    if policy.gpu_hours_over is not None and est.gpu_hours > policy.gpu_hours_over:
        why.append(f"{est.gpu_hours:.2f} GPU-h is over the lab's approval threshold of {policy.gpu_hours_over:g} GPU-h")
    if lab is not None and lab[0] + est.gpu_hours > lab[1]:
        why.append(f"the lab's projects used {lab[0]:.2f} of its {lab[1]:g} GPU-h; {est.gpu_hours:.2f} more would pass it")
    if user is not None and user[1] + est.gpu_hours > user[2]:
        why.append(f"{user[0] or 'this user'}'s projects used {user[1]:.2f} of their {user[2]:g} GPU-h; "
                   f"{est.gpu_hours:.2f} more would pass it")
    if policy.cost_over is not None and est.cost_usd > policy.cost_over:
        why.append(f"${est.cost_usd:.2f} is over the lab's approval threshold of ${policy.cost_over:g}")
    return why


def _ran(runs: list[RunRecord]) -> list[RunRecord]:
    """Each job once (a job's record may appear in several experiments' results), and only jobs that ran: a run the
    result cache served (``reused_from``) used no compute of this project's, and the project that ran it counts it."""
    return [r for r in {r.job_id: r for r in runs}.values() if not r.reused_from]


def gpu_hours(runs: list[RunRecord]) -> float:
    """GPU-hours the runs used."""
    return sum(r.gpu_s for r in _ran(runs)) / 3600


def cpu_hours(runs: list[RunRecord]) -> float:
    """CPU-hours the runs used, from those whose CPU time was measured (a job in its own container is not)."""
    return sum(r.cpu_s or 0.0 for r in _ran(runs)) / 3600


def spent_reason(budget: Budget, runs: list[RunRecord], usage: dict[str, Usage]) -> str:
    """Why no new run may start (a compute or money limit reached), or "" while every limit has room."""
    cost = sum(u.cost_usd for u in usage.values())
    for limit, used, unit in (
        (budget.max_gpu_hours, gpu_hours(runs), "GPU-hour"),
        (budget.max_cpu_hours, cpu_hours(runs), "CPU-hour"),
        (budget.max_cost_usd, cost, "money"),
    ):
        if limit is not None and (used >= limit if limit > 0 else used > 0):
            shown = f"${used:.4f} of ${limit:g}" if unit == "money" else f"{used:.4f} of {limit:g} {unit}s"
            return f"{unit} budget spent ({shown}): no new runs; the project finishes with the results in hand"
    return ""
