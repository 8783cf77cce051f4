"""`lab status` at COLUMNS=80 with long decisions, many projects and replicas: every line fits, the facts stay, --wide has it all."""

from __future__ import annotations

from rich.console import Console

from bus.schema import Heartbeat, JobView, ProjectView
from services.cli.status import LabStatus, age, render
from services.read.projects import ActiveJob
from services.read.team import Replica

NOW = 1_700_000_000.0
RULE = ("decision rule: accept when the primary metric steps_to_val_99 improves on the baseline by at least 10% with a Holm-corrected "
        "p below 0.05 over 5 seeds, the effect replicates on a fresh seed set, and no reviewer item stays open; otherwise not accepted. ") * 3


def _project(i: int, stage: str, accepted: bool | None = None) -> ProjectView:
    return ProjectView.model_validate({
        "project": f"grokking-s{i}-7f3a9c", "template": "grokking", "stage": stage, "budget": {"max_ideas": 2, "max_runs": 12},
        "outcome": RULE if stage in ("done", "failed") else "", "accepted": accepted, "started_at": NOW - 3_600 * (i + 1),
    })


def _beat(role: str, instance: str) -> Heartbeat:
    return Heartbeat(role=role, instance=instance, pid=41234, host="gpu-node-17.cluster.example.org", handled=1234, busy=2, concurrency=4,
                     p50_s=0.12, p99_s=3.4, seen=NOW, metrics_url=f"http://gpu-node-17:9464/metrics#{instance}")


ROLES = ("pi", "literature", "engineer", "analyst", "writer", "reviewer")
REPLICAS = [Replica(f"{r}.{k}", _beat(r, f"{r}-{k}"), stale=k == 2) for r in ROLES[:-1] for k in range(3)]
DATA = LabStatus(
    nats="nats://127.0.0.1:43123",
    agents={r: _beat(r, r) for r in ROLES[:-1]} | {"reviewer": None},
    projects=[_project(i, "done" if i % 3 else "failed", accepted=i % 2 == 0) for i in range(12)] + [_project(99, "experiments")],
    jobs=[ActiveJob("grokking-s99-7f3a9c", JobView(job_id="grokking-s99-7f3a9c-e3-a1", experiment_id="e3", state="running", reason=RULE))],
    capacity={"capacity": 4, "counts": "gpus", "used": 2, "projects": {"grokking-s99-7f3a9c": {"held": 2, "share": 1.0, "waiting": False}}},
    instances=REPLICAS,
)


def _print(wide: bool, width: int = 80) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    render(DATA, console, wide=wide, now=NOW)
    return console.export_text()


def test_every_line_fits_80_columns_and_names_stay_whole():
    text = _print(wide=False)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80, "\n".join(ln for ln in lines if len(ln) > 80)
    for p in DATA.projects:
        assert any(p.project in ln for ln in lines), p.project
        if p.finished:
            assert f"lab export {p.project}" in text
    for r in REPLICAS:
        assert r.beat.instance in text
    assert "grokking-s99-7f3a9c-e3-a1" in text
    # The decision rule is cut to one line per project (and one for the job's reason), not wrapped into many.
    assert sum("decision rule" in ln for ln in lines) == 13 and "…" in text
    assert len(lines) < 80, len(lines)
    for header in ("agent", "state", "handled", "busy", "p50 s", "decision", "age", "export", "outcome", "reason", "waiting"):
        assert header in text, header
    assert "ACCEPTED" in text and "NOT ACCEPTED" in text and "FAILED" in text and "12h" in text


def test_one_agents_table_with_a_down_role():
    text = _print(wide=False)
    assert text.count("agent ") == 1
    row = next(ln for ln in text.splitlines() if ln.split()[:1] == ["reviewer"])
    assert "down" in row
    assert sum(ln.split()[1:2] == ["down"] for ln in text.splitlines() if ln.split()[:1] and ln.split()[0].endswith("-2")) == 5


def test_wide_shows_the_full_decision_and_the_hosts():
    text = _print(wide=True)
    assert " ".join(RULE.split()) in " ".join(text.split())
    assert "gpu-node-17.cluster.example.org" in text and "3.40" in text
    assert "http://gpu-node-17:9464/metrics#writer-2" in text  # where each process serves its metrics


def test_age():
    assert [age(s) for s in (5, 125, 7_300, 200_000, -3)] == ["5s", "2m", "2h", "2d", "0s"]
