"""What each page of the web view shows for a given conversation: no browser, no bus."""

from __future__ import annotations

import json

from bus.schema import ProjectView
from services.web import feeds, views
from tests.web_convo import NOTE, P, conversation, entries, job_entries


def test_each_message_reads_like_lab_logs_and_expands_to_its_json():
    convo = conversation()
    shown = [views.message_view(e) for e in entries(convo)]
    assert [m.seq for m in shown] == list(range(1, len(convo) + 1))
    note, ack = shown[4], shown[5]
    assert (note.sender, note.recipient, note.kind, note.line) == ("copi", "pi", "copi_note", "co-PI note: 'only vary weight_decay'")
    assert (ack.kind, ack.note_id, note.note_id) == ("note_ack", NOTE.id, NOTE.id)
    assert ack.line == f"re note {NOTE.id}: from now on, new ideas vary only weight_decay"
    assert json.loads(note.json)["body"]["note"]["text"] == "only vary weight_decay"
    assert shown[-1].line == "DECISION: accepted — the reviewers accept"


def test_an_invalid_message_is_shown_with_its_reason():
    bad = views.message_view(views.Entry(subject="lab.convo.p.pi.all", seq=7, data=b"{not json", envelope=None, error="invalid JSON"))
    assert (bad.kind, bad.line, bad.json) == ("invalid", "invalid message (invalid JSON)", "{not json")


def test_experiments_show_state_metrics_figures_and_live_log():
    convo = conversation()
    # Mid-project: results not in yet, the runner has said the baseline runs and printed 12 lines.
    mid = views.experiments(convo[:4], views.job_activity(job_entries()))
    base, wd = mid
    assert (base.experiment_id, base.what, base.state) == ("x01-baseline", "baseline", "running")
    assert base.runs[0].state == "running" and base.runs[0].log == [f"step {i}" for i in range(4, 12)]  # the last LOG_TAIL lines
    assert (wd.what, wd.state, [r.job_id for r in wd.runs]) == ("weight_decay=1.0", "planned", ["j-wd1", "j-wd1b"])

    done = {x.experiment_id: x for x in views.experiments(convo)}
    wd = done["x02-wd-1"]
    assert wd.state == "done" and wd.reason == "timeout after 600 s"
    ok, failed = wd.runs
    assert ok.metrics == [("val_acc", "0.93 ± 0.01")] and ok.figures == [f"{P}/results/j-wd1/curve.png"] and ok.wall_s == 42.0
    assert failed.state == "failed" and failed.metrics == []


def test_a_rejected_plan_says_why():
    convo = conversation()[:3]
    from bus.schema import ExperimentPlanned
    from tests.web_convo import env

    rejected = ExperimentPlanned(experiment_id="x02-wd-1", idea_id="wd-1", overrides={}, job_ids=[], rejected="weight_decay=1.0 is out of range")
    convo.append(env("engineer", "pi", rejected))
    x = views.experiments(convo)[1]
    assert (x.state, x.reason, x.runs) == ("rejected", "weight_decay=1.0 is out of range", [])


def test_analysis_table():
    a = views.analysis(conversation())
    assert a is not None and (a.round, a.primary_metric) == (1, "val_acc")
    row = a.rows[0]
    assert (row.idea_id, row.baseline, row.idea, row.p_value, row.verdict, row.primary) == (
        "wd-1", "0.61 ± 0.02 (n=3)", "0.93 ± 0.01 (n=3)", "0.0012", "better", True,
    )
    assert a.flags == ["1 failed run: j-wd1b"] and a.figures == [f"{P}/figures/round-1/val_acc.png"]
    assert views.analysis(conversation()[:8]) is None


def test_review_rounds_pair_items_with_the_pis_answers():
    r1, r2 = views.review_rounds(conversation())
    assert (r1.round, r1.decision, r1.overall) == (1, "revise", [5, 6])
    assert [(i.id, i.answer) for i in r1.items] == [("r1-1", "act: Two more seeds ran."), ("r1-2", "")]
    assert (r2.round, r2.decision, r2.items) == (2, "accept", [])


def test_paper_is_the_latest_draft_and_says_why_a_pdf_is_missing():
    convo = conversation()
    first = views.paper(convo[:10])
    assert first is not None and first.round == 1 and first.pdf is None and "pdflatex not found" in first.pdf_error
    final = views.paper(convo)
    assert final is not None and (final.round, final.pdf, final.folder) == (2, f"{P}/paper/round-2/paper.pdf", f"{P}/paper/round-2")


def test_notes_show_the_answer_once_it_arrives():
    convo = conversation()
    assert [(n.text, n.answer) for n in views.notes(convo[:5])] == [("only vary weight_decay", "")]
    assert [n.answer for n in views.notes(convo)] == ["from now on, new ideas vary only weight_decay"]


def test_project_summary_and_page():
    state = {"project": P, "template": "grokking", "stage": "done", "ideas": {"wd-1": {}}, "experiments": {"a": {}, "b": {}}, "round": 1,
             "budget": {"max_ideas": 2, "max_runs": 12, "max_revision_rounds": 1}, "usage": {"pi": {"cost_usd": 0.5}, "writer": {"cost_usd": 0.25}},
             "outcome": "accepted after 1 revision round", "started_at": 0.0}
    s = views.summary(ProjectView.model_validate(state))
    assert (s.stage, s.ideas, s.runs, s.rounds, s.cost, s.decision) == ("done", "1/2", "2/12", "1/1", "$0.7500", "accepted after 1 revision round")
    page = views.project_page(P, ProjectView.model_validate(state), conversation(), {})
    assert page.decision is not None and page.decision.accepted and not page.running
    running = views.project_page(P, ProjectView.model_validate(state | {"stage": "experiments", "outcome": ""}), conversation()[:6], {})
    assert running.running and running.decision is None


def test_paper_markdown_links_point_at_the_artifacts_and_raw_html_is_not_passed():
    html = feeds.render_markdown("# T\n\n![curve](figures/figure-a.png)\n\n<script>alert(1)</script>\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[web](https://example.org)",
                                 f"/p/{P}/a/paper/round-2")
    assert f'src="/p/{P}/a/paper/round-2/figures/figure-a.png"' in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<table>" in html and 'href="https://example.org"' in html


def test_a_log_names_where_the_token_is_never_the_token(tmp_path, monkeypatch):
    """Not a terminal (a container's log): the line names the mounted token file when one is given, else web.json."""
    from services.web.serve import WebOptions, _announce

    token = "t0ken-" + "x" * 20
    said: list[str] = []
    monkeypatch.delenv("LAB_WEB_TOKEN_FILE", raising=False)
    _announce(WebOptions(home=tmp_path), "http://0.0.0.0:8765/", token, said.append)
    monkeypatch.setenv("LAB_WEB_TOKEN_FILE", "/run/secrets/web_token")
    _announce(WebOptions(home=tmp_path), "http://0.0.0.0:8765/", token, said.append)
    assert f"the co-PI token is in {tmp_path / 'web.json'}" in said[0]
    assert "the co-PI token is in /run/secrets/web_token" in said[1]
    assert all(token not in line for line in said)
