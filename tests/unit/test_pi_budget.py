"""A project's budget in GPU-hours and money: the estimate, the approval gate, and what a spent budget stops.

From data alone (``agents.pi.budget`` and the PI's transitions): the estimate's arithmetic from a
template's declared time budget, its GPUs and the runs; a start over the lab's threshold waits in the
stage ``approval`` with nothing sent to the engineer; an approval starts it, a refusal ends it with
the reason; runs reported with ``gpu_s`` past ``max_gpu_hours`` stop scheduling and the project goes
on to its analysis and paper with what it has, its decision saying why.
"""

from __future__ import annotations

from typing import Any

from agents.pi import budget as money
from agents.pi import transitions as t
from bus.schema import (
    ApprovalPolicy,
    Budget,
    BudgetLimits,
    ExperimentResult,
    FinalInfo,
    JobEnvironment,
    MetricStat,
    NoveltyVerdict,
    ProjectApproval,
    ProjectView,
    RunRecord,
    StartProject,
    TemplateSpec,
    Usage,
)
from tests.fakes import TOY_SPEC
from tests.unit.test_pi_transitions import T0, idea, kinds

GPU_SPEC = TemplateSpec.model_validate({
    **TOY_SPEC, "time_budget_s": 900, "resources": {"cpu": 2, "gpu": 2},
    "profiles": {"big": {"resources": {"cpu": 4, "gpu": 4, "nodes": 2}, "time_budget_s": 1800}},
})


def start(policy: ApprovalPolicy | None = None, limits: BudgetLimits | None = None, require: bool = False, mind: str = "offline", lab_gpu_hours: float = 0.0,
          user: str = "", user_gpu_hours: float = 0.0, **budget: Any) -> t.Step:
    body = StartProject(template="toy", template_object="p1/template.tar.gz", spec=GPU_SPEC, seed=7, mind=mind, require_approval=require,
                        budget=Budget(**{"max_ideas": 2, "max_runs": 10, "max_revision_rounds": 1, "wall_time_s": 600, **budget}), user=user)
    return t.start(None, body, "p1", T0, policy, limits, lab_gpu_hours, user_gpu_hours)


def gpu_runs(exp: str, arm: str, gpu_s: float) -> ExperimentResult:
    fi = FinalInfo(metrics={"loss": MetricStat(mean=1.0, stderr=0.1, values=[1.0, 1.1, 0.9])}, seeds=[0, 1, 2])
    run = RunRecord(job_id=f"j-{exp}", experiment_id=exp, idea_id=arm, overrides={}, seeds=[0, 1, 2], status="succeeded",
                    final_info=fi, wall_s=gpu_s / 2, gpu_s=gpu_s)
    return ExperimentResult(experiment_id=exp, idea_id=arm, runs=[run])


def test_the_estimate_is_runs_times_the_declared_job_time_times_the_gpus():
    est = money.estimate(GPU_SPEC, None, Budget(max_runs=12), "offline", ApprovalPolicy())
    assert (est.runs, est.job_s, est.gpus_per_job, est.cpus_per_job) == (12, 900, 2, 2)
    assert est.gpu_hours == 12 * 900 * 2 / 3600 == 6.0 and est.cpu_hours == 6.0
    assert est.tokens == 0 and est.cost_usd == 0 and "offline" in est.tokens_from and not est.needs_approval
    assert "time budget of profile default" in est.job_s_from
    # A profile's resources and time budget replace the template's; nodes multiply the GPUs.
    big = money.estimate(GPU_SPEC, "big", Budget(max_runs=3), "offline", ApprovalPolicy())
    assert (big.job_s, big.gpus_per_job) == (1800, 8) and big.gpu_hours == 3 * 1800 * 8 / 3600 == 12.0
    # A measured first run replaces the declared budget (an upper bound).
    measured = money.estimate(GPU_SPEC, None, Budget(max_runs=4), "offline", ApprovalPolicy(), measured_job_s=450)
    assert measured.gpu_hours == 1.0 and measured.job_s_from == "the template's measured first run"


def test_an_llm_minds_tokens_are_priced_at_the_stated_default_per_step():
    policy = ApprovalPolicy(usd_per_million_tokens=2.0, tokens_per_step=1000)
    est = money.estimate(GPU_SPEC, None, Budget(max_ideas=3, max_runs=10, max_revision_rounds=1), "llm", policy)
    steps = money.STEPS_PER_IDEA * 3 + money.STEPS_PER_RUN * 10 + money.STEPS_PER_ROUND * 2
    assert est.mind_steps == steps == 26 and est.tokens == 26_000 and est.cost_usd == 0.052
    assert "stated default" in est.tokens_from


def test_thresholds_and_the_flag_decide_whether_the_estimate_waits():
    b = Budget(max_runs=12)  # 6 GPU-h
    assert not money.estimate(GPU_SPEC, None, b, "offline", ApprovalPolicy(gpu_hours_over=6.0)).needs_approval  # over, not at
    over = money.estimate(GPU_SPEC, None, b, "offline", ApprovalPolicy(gpu_hours_over=5.0))
    assert over.needs_approval and "6.00 GPU-h is over the lab's approval threshold of 5 GPU-h" == over.why
    asked = money.estimate(GPU_SPEC, None, b, "offline", ApprovalPolicy(), require_approval=True)
    assert asked.needs_approval and "--require-approval" in asked.why
    costly = money.estimate(GPU_SPEC, None, b, "llm", ApprovalPolicy(cost_over=0.01, usd_per_million_tokens=10.0))
    assert costly.needs_approval and "over the lab's approval threshold of $0.01" in costly.why


def test_a_start_over_the_threshold_waits_with_nothing_run_and_an_approval_starts_it():
    step = start(ApprovalPolicy(gpu_hours_over=1.0))
    st = step.state
    assert st.stage == "approval" and kinds(step) == ["project_estimate->copi"] and step.ask is None
    assert st.experiments == {} and st.estimate is not None and st.estimate.needs_approval
    # An approval an hour later: the baseline is asked for now, and the wall time counts from now.
    later = T0 + 3600
    go = t.approval(st, ProjectApproval(approved=True), later)
    assert kinds(go) == ["experiment_request->engineer"] and go.state.stage == "experiments" and go.state.approved_at == later
    assert isinstance(go.ask, t.ProposeIdeas) and not t.out_of_time(go.state, later + 599)
    # A second approval (a redelivery, or a second click) changes nothing.
    again = t.approval(go.state, ProjectApproval(approved=True), later + 5)
    assert again.sent == [] and len(again.state.experiments) == 1


def test_a_refusal_ends_the_waiting_project_with_the_reason():
    st = start(require=True).state
    step = t.approval(st, ProjectApproval(approved=False, reason="too expensive this month"), T0 + 10)
    assert kinds(step) == ["decision->all"] and step.state.stage == "failed" and step.state.experiments == {}
    (decision, _), = step.sent
    assert decision.reason == "refused by the co-PI: too expensive this month" and not decision.accepted


def test_under_the_threshold_the_project_starts_at_once_and_says_its_estimate():
    step = start(ApprovalPolicy(gpu_hours_over=100.0))
    # Sent to the co-PI all the same (every project's estimate is published), and the baseline is asked for at once.
    assert kinds(step) == ["project_estimate->copi", "experiment_request->engineer"] and step.state.stage == "experiments"
    assert step.state.estimate is not None and not step.state.estimate.needs_approval
    assert step.sent[0][0].estimate == step.state.estimate


def test_the_labs_cap_lowers_a_projects_gpu_and_money_budget():
    st = start(limits=BudgetLimits(max_gpu_hours_per_project=2.0, max_cost_per_project=5.0), max_gpu_hours=10.0).state
    assert st.budget.max_gpu_hours == 2.0 and st.budget.max_cost_usd == 5.0
    st = start(limits=BudgetLimits(max_gpu_hours_per_project=2.0), max_gpu_hours=1.0).state
    assert st.budget.max_gpu_hours == 1.0  # a project's own lower budget stands


def test_gpu_hours_past_the_budget_stop_scheduling_and_the_project_finishes_with_what_it_has():
    st = start(max_gpu_hours=1.0).state  # 1 GPU-h
    st = t.wave_proposed(st, [idea(1), idea(2)], take=2).state
    # The baseline's job used 2 GPUs for 1800 s: 3600 GPU-seconds, the whole budget.
    spent = t.result(st, gpu_runs("x01-baseline", "baseline", gpu_s=3600.0), T0 + 10)
    assert spent.state.budget_stop.startswith("GPU-hour budget spent (1.0000 of 1 GPU-hours)")
    assert t.Log("warning", "budget spent", {"reason": spent.state.budget_stop}) in spent.effects
    # Both ideas come back novel: neither runs, and with nothing outstanding the analysis is asked for.
    v1 = t.verdict(spent.state, NoveltyVerdict(idea_id="i1", novel=True, justification="new"), T0 + 11)
    assert v1.sent == [] and v1.state.ideas["i1"].status == "skipped" and v1.state.ideas["i1"].reason == spent.state.budget_stop
    v2 = t.verdict(v1.state, NoveltyVerdict(idea_id="i2", novel=True, justification="new"), T0 + 12)
    assert kinds(v2) == ["analysis_request->analyst"] and v2.state.stage == "analysis"
    # The decision states the reason.
    end = t.finish(v2.state, accepted=False, reason="rejected in round 0: weak")
    assert end.sent[0][0].reason == f"rejected in round 0: weak; {spent.state.budget_stop}"


def test_gpu_hours_under_the_budget_keep_scheduling():
    st = start(max_gpu_hours=1.0).state
    st = t.wave_proposed(st, [idea(1)], take=1).state
    st = t.result(st, gpu_runs("x01-baseline", "baseline", gpu_s=1800.0), T0 + 10).state
    step = t.verdict(st, NoveltyVerdict(idea_id="i1", novel=True, justification="new"), T0 + 11)
    assert kinds(step) == ["experiment_request->engineer"] and step.state.budget_stop == ""


def test_money_past_the_budget_stops_runs_and_revisions_but_not_the_paper():
    st = start(max_cost_usd=1.0).state
    st = t.wave_proposed(st, [idea(1)], take=1).state
    step = t.usage_reported(st, "pi", Usage(prompt_tokens=10, cost_usd=1.5))
    assert step.state.stage == "experiments" and step.state.budget_stop.startswith("money budget spent ($1.5000 of $1)")
    v = t.verdict(step.state, NoveltyVerdict(idea_id="i1", novel=True, justification="new"), T0 + 11)
    assert v.sent == [] and v.state.ideas["i1"].status == "skipped"  # the baseline is still running: the paper follows it


def test_while_waiting_a_note_asking_for_a_run_is_refused_and_a_stop_ends_the_project():
    from agents.minds.base import NoteReading
    from bus.schema import CoPINote

    st = start(require=True).state
    ask = t.note_read(st, CoPINote(id="n1", text="try lr 0.5"), NoteReading(understood="a run with lr=0.5"))
    assert kinds(ask) == ["note_ack->copi"] and ask.state.experiments == {} and ask.state.stage == "approval"
    assert "waits for approval of its estimate (`lab approve p1`)" in ask.sent[0][0].understood
    stop = t.note_read(st, CoPINote(id="n2", text="stop the project now"), NoteReading(understood="stop", constraints={"stop": True}))
    assert stop.state.stage == "failed" and kinds(stop) == ["note_ack->copi", "decision->all"]


def test_a_per_lab_cap_lowers_a_new_projects_gpu_budget_to_what_is_left_and_passing_it_waits():
    limits = BudgetLimits(max_gpu_hours_per_lab=10.0)
    # The lab's stored projects used 7 of 10 GPU-h: this one may use 3, and its 5 GPU-h estimate (10 runs x 900 s x 2) waits.
    step = start(limits=limits, lab_gpu_hours=7.0)
    st = step.state
    assert st.budget.max_gpu_hours == 3.0 and st.stage == "approval" and kinds(step) == ["project_estimate->copi"]
    assert st.estimate is not None and "the lab's projects used 7.00 of its 10 GPU-h; 5.00 more would pass it" in st.estimate.why
    # With room for the estimate it starts at once, its own budget the smaller of its own and what is left.
    roomy = start(limits=limits, lab_gpu_hours=1.0, max_gpu_hours=6.0)
    assert roomy.state.stage == "experiments" and roomy.state.budget.max_gpu_hours == 6.0


def test_a_per_user_cap_counts_only_that_users_projects():
    limits = BudgetLimits(max_gpu_hours_per_user=8.0)
    # alice's stored projects used 6 of her 8 GPU-h: she may use 2, and the 5 GPU-h estimate waits, naming her.
    step = start(limits=limits, user="alice", lab_gpu_hours=6.5, user_gpu_hours=6.0)
    st = step.state
    assert st.user == "alice" and st.budget.max_gpu_hours == 2.0 and st.stage == "approval"
    assert st.estimate is not None and "alice's projects used 6.00 of their 8 GPU-h; 5.00 more would pass it" in st.estimate.why
    # bob used nothing yet (the lab's 6.5 GPU-h are alice's): his project starts at once, its budget capped at his 8.
    bob = start(limits=limits, user="bob", lab_gpu_hours=6.5, user_gpu_hours=0.0)
    assert bob.state.stage == "experiments" and bob.state.budget.max_gpu_hours == 8.0 and bob.state.user == "bob"


async def test_the_pi_wiring_sums_the_gpu_hours_of_every_stored_project(tmp_path):
    from services.host.wiring import PIWiring

    def doc(project: str, *gpu_s: float) -> dict:
        runs = [{"job_id": f"{project}-j{i}", "experiment_id": "x", "idea_id": "baseline", "overrides": {}, "seeds": [0],
                 "status": "succeeded", "gpu_s": g} for i, g in enumerate(gpu_s)]
        return {"state": {"project": project, "template": "toy", "stage": "done", "budget": {}, "started_at": 0.0,
                          "experiments": {"x": {"runs": runs}}, "user": "alice" if project == "a" else "bob"}}

    class States:  # the two reads the wiring makes of bus.store.StateStore
        data = {"pi.a": doc("a", 3600.0, 1800.0), "pi.b": doc("b", 7200.0), "pi.c": {"state": None}}

        async def keys(self, prefix: str = "") -> list[str]:
            return [k for k in self.data if k.startswith(prefix)]

        async def read(self, key: str) -> tuple[dict | None, int]:
            return self.data[key], 1

    wiring = PIWiring(tmp_path, limits=BudgetLimits(max_gpu_hours_per_lab=5))
    assert await wiring.lab_gpu_hours("alice") == (0.0, 0.0)  # not opened: no store to read
    wiring.states = States()  # type: ignore[assignment]
    assert await wiring.lab_gpu_hours("alice") == (3.5, 1.5)  # the lab's, and alice's project a's
    assert await wiring.lab_gpu_hours("carol") == (3.5, 0.0)


def test_a_run_the_result_cache_served_costs_the_reusing_project_nothing():
    served = gpu_runs("x02", "baseline", 7200.0).runs[0].model_copy(update={"job_id": "j-served", "reused_from": "other/x01-baseline/j0"})
    ran = gpu_runs("x01", "baseline", 3600.0).runs[0]
    assert money.gpu_hours([ran, served]) == 1.0 and money.gpu_hours([served]) == 0.0
    assert money.spent_reason(Budget(max_gpu_hours=1.5), [ran, served], {}) == ""


def past(name: str, walls: list[float], *, template: str = "toy", profile: str = "", fast: bool = False, device: str = "cuda",
         gpu: str = "H100", mind: str = "offline", usage: Usage | None = None, when: float = 0.0, reused: int = 0) -> ProjectView:
    """An earlier project's stored state: one succeeded job per wall time on ``device``, plus ``reused`` cache-served ones."""
    env = JobEnvironment(device=device, gpus=[gpu] if device == "cuda" else [])
    runs = [RunRecord(job_id=f"{name}-j{i}", experiment_id=f"x{i}", idea_id="baseline", overrides={}, seeds=[0], status="succeeded",
                      wall_s=w, environment=env).model_dump(mode="json") for i, w in enumerate(walls)]
    runs += [RunRecord(job_id=f"{name}-r{i}", experiment_id="xr", idea_id="baseline", overrides={}, seeds=[0], status="succeeded",
                       wall_s=9999.0, environment=env, reused_from="other/x/j").model_dump(mode="json") for i in range(reused)]
    return ProjectView.model_validate({
        "project": name, "template": template, "stage": "done", "budget": Budget().model_dump(), "started_at": when,
        "profile": profile, "fast": fast, "mind": mind, "ideas": {"i1": {}, "i2": {}}, "round": 1,
        "experiments": {"all": {"runs": runs}}, "usage": {"pi": (usage or Usage()).model_dump()},
    })


def test_archived_job_times_replace_the_declared_ones_and_say_how_many_runs():
    history = [
        past("a", [100.0, 300.0], when=1), past("b", [200.0, 400.0, 500.0], when=2, reused=2),  # cache-served runs are not jobs
        past("other-template", [5.0] * 9, template="else"), past("other-profile", [7.0] * 9, profile="big"),
        past("fast", [3.0] * 9, fast=True), past("on-cpu", [1.0] * 9, device="cpu"),  # GPU_SPEC asks for GPUs: cuda jobs only
    ]
    arch = money.archived(history, "toy", None, gpu=True)
    assert sorted(arch.job_s) == [100.0, 200.0, 300.0, 400.0, 500.0]
    est = money.estimate(GPU_SPEC, None, Budget(max_runs=12), "offline", ApprovalPolicy(), measured_job_s=900.0, past=arch)
    assert est.job_s == 300.0 and est.gpu_hours == 12 * 300 * 2 / 3600 == 2.0  # the median, preferred to a measured first run
    assert est.job_s_from == "median of 5 archived runs, profile as declared, on cuda H100, local runtime"
    # The fast profile's own jobs, for a --fast project; a profile with too few archived jobs falls back to the declared time.
    assert money.archived(history, "toy", "fast", gpu=True).job_s == (3.0,) * 9
    few = money.archived([past("c", [50.0, 60.0])], "toy", None, gpu=True)
    declared = money.estimate(GPU_SPEC, None, Budget(max_runs=12), "offline", ApprovalPolicy(), past=few)
    assert declared.job_s == 900 and declared.job_s_from.startswith("declared: the time budget of profile default")


def test_one_median_is_never_mixed_from_two_hardware_classes():
    history = [past("h100", [100.0] * 3, when=1), past("a100", [400.0] * 5, gpu="A100", when=2), past("h100b", [120.0], when=3)]
    arch = money.archived(history, "toy", None, gpu=True)
    assert arch.job_s == (400.0,) * 5 and "A100" in arch.job_from  # the class with the most jobs (5 against 4)
    tie = money.archived([past("x", [10.0] * 3, when=1), past("y", [20.0] * 3, gpu="A100", when=2)], "toy", None, gpu=True)
    assert tie.job_s == (20.0,) * 3  # on a tie, the latest project's class
    back = [past("x", [10.0] * 2, when=1), past("y", [20.0] * 3, gpu="A100", when=2), past("z", [10.0], when=3)]
    assert money.archived(back, "toy", None, gpu=True).job_s == (10.0,) * 3  # H100 again last: it is the latest


def test_an_llm_minds_tokens_and_cost_per_step_come_from_archived_projects():
    # Each past project had 2 ideas, its jobs and 2 rounds: 2*2 + 1*jobs + 5*2 steps.
    a = past("a", [10.0] * 6, mind="llm", usage=Usage(prompt_tokens=15_000, completion_tokens=5_000, cost_usd=0.4))  # 20 steps
    b = past("b", [10.0] * 1, mind="llm", usage=Usage(prompt_tokens=30_000, completion_tokens=0, cost_usd=0.75))  # 15 steps
    elsewhere = past("c", [10.0], template="else", mind="llm", usage=Usage(prompt_tokens=10**6, cost_usd=50.0))
    offline = past("d", [10.0], usage=Usage())
    arch = money.archived([a, b, elsewhere, offline], "toy", None, gpu=True)
    assert sorted(arch.tokens_per_step) == [1000.0, 2000.0] and sorted(arch.cost_per_step) == [0.02, 0.05]
    budget = Budget(max_ideas=3, max_runs=10, max_revision_rounds=1)  # 26 steps
    est = money.estimate(GPU_SPEC, None, budget, "llm", ApprovalPolicy(usd_per_million_tokens=99.0), past=arch)
    assert est.mind_steps == 26 and est.tokens == 26 * 1500 and est.cost_usd == round(26 * 0.035, 4)
    assert est.tokens_from == "median of 2 archived projects on this template: 1500 tokens, $0.0350 per step"
    # With no project on this template, any template's; the offline mind never asks the archive.
    other = money.archived([elsewhere], "toy", None, gpu=True)
    assert other.tokens_per_step == (10**6 / 15,) and other.tokens_from == "on any template"
    assert money.estimate(GPU_SPEC, None, budget, "offline", ApprovalPolicy(), past=arch).tokens == 0
    # Archived projects that were charged nothing (no known price): their tokens, at the lab's price.
    free = money.archived([past("f", [10.0] * 6, mind="llm", usage=Usage(prompt_tokens=20_000))], "toy", None, gpu=True)
    priced = money.estimate(GPU_SPEC, None, budget, "llm", ApprovalPolicy(usd_per_million_tokens=2.0), past=free)
    assert priced.tokens == 26_000 and priced.cost_usd == 0.052 and priced.tokens_from.endswith("1000 tokens per step")


def test_the_start_reads_the_archive_it_is_given():
    history = [past("a", [100.0, 200.0, 300.0])]
    body = StartProject(template="toy", template_object="p1/template.tar.gz", spec=GPU_SPEC, seed=7, budget=Budget(max_runs=10))
    st = t.start(None, body, "p1", T0, history=history).state
    assert st.estimate is not None and st.estimate.job_s == 200.0 and "median of 3 archived runs" in st.estimate.job_s_from
