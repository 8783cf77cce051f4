"""A project's budget in compute and money: the estimate before its first run, and what is spent so far.

The estimate (``estimate``) is runs x the expected time of one job x the GPUs (and CPUs) each job
asks for, plus the steps that ask a mind x tokens per step, priced. It decides whether the project
waits for the co-PI's approval (``ApprovalPolicy``; ``StartProject.require_approval`` forces it).
What is spent (``spent_reason``) is read from the runs the engineer reported (``RunRecord.gpu_s`` /
``cpu_s``) and the minds' usage: once a limit is reached the PI schedules no new run. Runs already
in flight are not stopped, so a project may end past its limit by at most those runs. Pure.
"""

from __future__ import annotations

from bus.schema import ApprovalPolicy, Budget, BudgetLimits, Estimate, RunRecord, TemplateSpec, Usage

# The steps a project asks a mind for, per idea / per run / per round (proposals and novelty, the engineer's plan,
# the analysis, the draft and the reviewer ensemble), for the token estimate of an llm mind.
STEPS_PER_IDEA, STEPS_PER_RUN, STEPS_PER_ROUND = 2, 1, 5
# Of a step's tokens, the share that is prompt (the rest completion): how a price per 1M prompt/completion tokens is averaged.
PROMPT_SHARE = 0.75


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
    user: tuple[str, float, float] | None = None,
) -> Estimate:
    """What the project is expected to use, and whether it waits for approval (see the module's docstring).

    ``lab``: (GPU-hours the lab's stored projects used, the lab's cap), where the lab has one; ``user``: (who started
    the project, GPU-hours their stored projects used, the per-user cap), where the lab has one.
    """
    resolved = spec.profile(profile)
    res = resolved.resources
    if measured_job_s is not None:
        job_s, where = measured_job_s, "the template's measured first run"
    else:
        job_s, where = resolved.time_budget_s, f"the time budget of profile {resolved.name}, an upper bound"
    runs = budget.max_runs
    gpus, cpus = res.gpu * res.nodes, res.cpu * res.nodes
    steps = tokens = 0
    cost = 0.0
    tokens_from = "the offline mind asks no model: no tokens, no cost"
    if mind != "offline":
        steps = STEPS_PER_IDEA * budget.max_ideas + STEPS_PER_RUN * runs + STEPS_PER_ROUND * (budget.max_revision_rounds + 1)
        tokens = steps * policy.tokens_per_step
        cost = tokens * (policy.usd_per_million_tokens or 0.0) / 1_000_000
        tokens_from = f"{policy.tokens_per_step} tokens per step (a stated default: no measured tokens per step are recorded)"
        if policy.usd_per_million_tokens is None:
            tokens_from += "; no price known for the model: $0"
    est = Estimate(
        runs=runs, job_s=job_s, job_s_from=where, gpus_per_job=gpus, cpus_per_job=cpus,
        gpu_hours=round(runs * job_s * gpus / 3600, 4), cpu_hours=round(runs * job_s * cpus / 3600, 4),
        mind_steps=steps, tokens=tokens, tokens_from=tokens_from, cost_usd=round(cost, 4),
    )
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
    return est.model_copy(update={"needs_approval": bool(why), "why": "; ".join(why)})


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
