"""`lab status` on an 80-column terminal: every project name and template whole, only free text cut to "…"; --wide shows all."""

from __future__ import annotations

from rich.console import Console

from bus.schema import Heartbeat, JobView, ProjectView
from services.cli.status import LabStatus, render
from services.read.projects import ActiveJob


def _agent(role: str) -> Heartbeat:
    return Heartbeat(role=role, pid=41234, mind="offline", handled=1234, seen=1e12)


def _project(name: str, template: str, stage: str, outcome: str = "") -> ProjectView:
    usage = {"writer": {"prompt_tokens": 120_345, "completion_tokens": 9_876, "cost_usd": 1.23456}}
    return ProjectView.model_validate({
        "project": name, "template": template, "stage": stage, "ideas": {"a": {}, "b": {}}, "experiments": {"e1": {}, "e2": {}, "e3": {}},
        "round": 1, "budget": {"max_ideas": 2, "max_runs": 12, "max_revision_rounds": 1}, "usage": usage, "outcome": outcome, "started_at": 0.0,
    })


DATA = LabStatus(
    nats="nats://127.0.0.1:43123",
    agents={r: _agent(r) for r in ("pi", "literature", "engineer", "analyst", "writer")} | {"reviewer": None},
    projects=[
        _project("grokking-s0-7f3a9c", "grokking", "experiments"),
        _project("model_merging-s12-1b2c3d", "model_merging", "done", "accepted after 1 revision round: all items answered"),
        _project("2d_diffusion-s3-abcdef", "2d_diffusion", "failed", "budget exhausted: 12/12 runs"),
        _project("weight-decay-study", "grokking", "review"),  # named by hand: its template is not in its name
    ],
    jobs=[ActiveJob("grokking-s0-7f3a9c", JobView(job_id="grokking-s0-7f3a9c-e3-a1", experiment_id="e3", state="running"))],
)


def _print(wide: bool, width: int = 80) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    render(DATA, console, wide=wide)
    return console.export_text()


def test_compact_fits_80_columns_with_every_name_whole():
    text = _print(wide=False)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80, "\n".join(ln for ln in lines if len(ln) > 80)
    for p in DATA.projects:
        assert any(p.project in ln for ln in lines), p.project
        assert f"{p.project[:8]}…" not in text
    # The template under a name that does not already say it.
    below = lines[next(i for i, ln in enumerate(lines) if "weight-decay-study" in ln) + 1]
    assert below.strip() == "grokking"
    assert "grokking-s0-7f3a9c-e3-a1" in text
    assert "2/2" in text and "3/12" in text and "1/1" in text and "1.23" in text
    assert "down" in text and text.count(" up ") + text.count(" up\n") >= 5
    assert "tokens" not in text  # the compact layout leaves tokens to --wide


def test_wide_shows_every_column_unwrapped():
    text = _print(wide=True)
    assert "tokens" in text and "130221" in text and "1.2346" in text
    assert "…" not in text
    row = next(ln for ln in text.splitlines() if "model_merging-s12-1b2c3d" in ln)
    # The whole row on one line, outcome included, though wider than the terminal.
    assert "accepted after 1 revision round: all items answered" in row and len(row) > 80


def _ran(project: ProjectView, *runs: tuple[str, float, float | None, float]) -> ProjectView:
    """``project`` with the runs the PI holds: (job id, wall s, cpu s, gpu s) each."""
    recs = [{"job_id": j, "experiment_id": "e1", "idea_id": "baseline", "overrides": {}, "seeds": [0], "status": "succeeded",
             "wall_s": w, "cpu_s": c, "gpu_s": g} for j, w, c, g in runs]
    return project.model_copy(update={"experiments": {"e1": {"experiment_id": "e1", "runs": recs}, "e2": {}}})


def test_the_compute_so_far_fits_80_columns_for_running_projects_and_wide_has_every_project():
    running = _ran(DATA.projects[0], ("j1", 120.0, 150.0, 0.0), ("j2", 90.0, 54.0, 0.0))
    gpu = _ran(DATA.projects[3], ("j3", 1800.0, 1700.0, 7200.0), ("j4", 600.0, None, 2400.0))  # j4 ran in its own container
    done = _ran(DATA.projects[1], ("j5", 60.0, 60.0, 0.0))
    data = LabStatus(nats=DATA.nats, agents=DATA.agents, projects=[running, done, DATA.projects[2], gpu], jobs=DATA.jobs)
    console = Console(width=80, record=True, force_terminal=False, color_system=None)
    render(data, console)
    text = console.export_text()
    assert max(len(ln) for ln in text.splitlines()) <= 80
    assert "compute so far" in text
    assert "2 jobs, 3.4 CPU-min, 0 GPU-h" in text
    assert "2 jobs, 28.3 CPU-min (1 of 2 measured), 2.67 GPU-h" in text
    assert "1 job," not in text  # a finished project's compute is in its export (and --wide)
    wide = Console(width=80, record=True, force_terminal=False, color_system=None)
    render(data, wide, wide=True)
    assert "1 job, 1.0 CPU-min, 0 GPU-h" in wide.export_text()
    # Read from the same runs as export.json's spend.
    assert [r.job_id for r in gpu.runs] == ["j3", "j4"] and gpu.runs[1].cpu_s is None
    # A run the result cache served is no job of this project's: said apart.
    from bus.provenance import spend
    from services.cli.status import compute
    served = done.runs[0].model_copy(update={"job_id": "j6", "reused_from": "other/x01-baseline/j0"})
    assert compute(spend([*done.runs, served])) == "1 job, 1.0 CPU-min, 0 GPU-h, 1 reused"


def test_a_project_waiting_for_approval_shows_its_estimate_and_the_command_in_80_columns():
    from agents.pi.budget import estimate
    from bus.schema import ApprovalPolicy, Budget, TemplateSpec
    from tests.fakes import TOY_SPEC

    spec = TemplateSpec.model_validate({**TOY_SPEC, "resources": {"gpu": 2}, "time_budget_s": 1800})
    est = estimate(spec, None, Budget(max_runs=12), "offline", ApprovalPolicy(gpu_hours_over=4))
    waiting = _project("char_lm-s0-9a8b7c", "char_lm", "approval").model_copy(update={"estimate": est})
    data = LabStatus(nats=DATA.nats, agents=DATA.agents, projects=[waiting], jobs=[])
    for width, wide in ((80, False), (80, True)):
        console = Console(width=width, record=True, force_terminal=False, color_system=None)
        render(data, console, wide=wide)
        text = console.export_text()
        assert "waiting for approval" in text and "lab approve char_lm-s0-9a8b7c" in text, text
        assert "12 runs x 1800 s" in text
        if not wide:
            assert max(len(ln) for ln in text.splitlines()) <= 80
    console = Console(width=200, record=True, force_terminal=False, color_system=None)
    render(data, console, wide=True)
    text = console.export_text()
    assert "12.00 GPU-h" in text and "over the lab's approval threshold of 4 GPU-h" in text


def test_every_project_shows_its_estimate_beside_its_compute_so_far():
    """Not only a waiting one: a project that started at once, before its first job, and one with a job done."""
    from agents.pi.budget import estimate
    from bus.schema import ApprovalPolicy, Budget, TemplateSpec
    from tests.fakes import TOY_SPEC

    spec = TemplateSpec.model_validate({**TOY_SPEC, "resources": {"gpu": 1}, "time_budget_s": 360})
    est = estimate(spec, None, Budget(max_runs=5), "offline", ApprovalPolicy())  # 5 x 360 s x 1 GPU = 0.5 GPU-h
    fresh = _project("fresh-s0", "toy", "ideas").model_copy(update={"estimate": est, "experiments": {}})
    ran = _project("ran-s1", "toy", "experiments").model_copy(update={"estimate": est})
    ran.experiments = {"e1": {"runs": [{"job_id": "j1", "experiment_id": "e1", "idea_id": "baseline", "overrides": {}, "seeds": [0],
                                        "status": "succeeded", "wall_s": 60.0, "cpu_s": 60.0}]}}
    data = LabStatus(nats=DATA.nats, agents=DATA.agents, projects=[fresh, ran], jobs=[])
    for wide in (False, True):
        console = Console(width=200, record=True, force_terminal=False, color_system=None)
        render(data, console, wide=wide)
        lines = [ln for ln in console.export_text().splitlines() if "estimate 0.5 GPU-h" in ln]
        assert [ln.strip("│ ").split()[0] for ln in lines] == ["fresh-s0", "ran-s1"], console.export_text()
        assert "0 jobs, 0.0 CPU-min" in lines[0] and "1 job, 1.0 CPU-min" in lines[1]
        assert "waiting for approval" not in console.export_text()
