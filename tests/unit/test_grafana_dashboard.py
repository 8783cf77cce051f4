"""deploy/grafana/kenkyu-lab.json draws only series the lab serves, each limited to the chosen lab's namespace.

Every series a panel's PromQL names must be a sample of a metric defined in bus/metrics.py (a counter's
``_total``, a histogram's ``_bucket``/``_sum``/``_count``, a gauge's own name), so a renamed or dropped
metric fails here rather than as an empty panel; and every selector carries ``namespace="$namespace"``, so
two labs on one cluster (k8s/components/team) never add up in one panel.
"""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

import bus.metrics
from tests.conftest import ROOT as REPO

DASHBOARD = REPO / "deploy/grafana/kenkyu-lab.json"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
# A series name directly followed by its selector or range: `lab_jobs{`, `foo[5m]`.
SERIES = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\}|\[)")


def served() -> set[str]:
    """Every sample name the lab's metrics put on /metrics."""
    names = set()
    for metric in vars(bus.metrics).values():
        if isinstance(metric, MetricWrapperBase):
            names |= {metric._name + suffix for suffix in SUFFIXES[metric._type]}
    return names


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def unknown_series(expr: str, known: set[str]) -> list[str]:
    return [name for name, _ in SERIES.findall(expr) if name not in known]


def test_every_series_the_dashboard_draws_is_one_the_lab_serves() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = served()
    assert {"lab_messages_handled_total", "lab_handler_seconds_bucket", "lab_projects", "lab_jobs"} <= known
    exprs = expressions(dashboard)
    assert len(exprs) >= 10
    drawn = set()
    for title, expr in exprs:
        assert unknown_series(expr, known) == [], (title, expr)
        for name, selector in SERIES.findall(expr):
            # A job's runner serves from the jobs' namespace (its own dashboard variable), everything else from the lab's.
            where = 'namespace="$jobs_namespace"' if name.startswith("lab_runner_") else 'namespace="$namespace"'
            assert selector.startswith("{") and where in selector, (title, name)
            drawn.add(name)
    # The check is real: a misspelt or removed series is named.
    assert unknown_series('sum(rate(lab_messages_handeld_total{namespace="$namespace"}[5m]))', known) == ["lab_messages_handeld_total"]
    assert unknown_series('lab_handler_seconds_total{namespace="$namespace"}', known) == ["lab_handler_seconds_total"]  # not a counter
    # Every metric of bus/metrics.py has a panel.
    assert {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in drawn} == {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in known}
    # The namespace variable the selectors use exists, read from a series the lab serves.
    for name in ("namespace", "jobs_namespace"):
        [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == name]
        assert unknown_series(variable["definition"].replace("label_values(", "").replace(", namespace)", "{}"), known) == []
