"""Two projects on the same template through the Kubernetes executor (kmock emulator).

Their baselines are two Jobs, and one project's cleanup leaves the other's.
"""

from __future__ import annotations

from typing import Any

from agents.engineer.workflow import job_id_for
from tests.integration.test_k8s_executor import cluster, make, raw_jobs, spec  # noqa: F401 - pytest fixtures

PROJECTS = ("grokking-s1-aaaaaa", "grokking-s2-bbbbbb")


async def test_two_projects_same_template_get_distinct_jobs_and_separate_cleanup(make: Any, cluster: Any) -> None:  # noqa: F811
    ex = make()
    ids = {p: job_id_for(p, "x01-baseline") for p in PROJECTS}
    assert len(set(ids.values())) == 2  # the same experiment id, two projects: two jobs
    for p, job_id in ids.items():
        s = spec(job_id, project=p).model_copy(update={"experiment_id": "x01-baseline", "template": "grokking"})
        await ex.submit(s)
        await ex.submit(s)  # a redelivered request adopts its own job, and only that
    jobs = await raw_jobs(cluster[1])
    assert len(jobs) == 2
    names = {j["metadata"]["name"] for j in jobs}
    assert len(names) == 2 and all(ids[p] in " ".join(names) for p in PROJECTS)
    await ex.cleanup(PROJECTS[0])
    [left] = await raw_jobs(cluster[1])
    assert ids[PROJECTS[1]] in left["metadata"]["name"]
