"""What the agent host reads from its environment, in one line when it is wrong.

Each role's concurrency, and a replica's index among its role's replicas (the
partitions it owns).
"""

from __future__ import annotations

import pytest

from bus import partitions
from services.host.agent import HostConfigError, concurrency_for, replica_from_env


def test_concurrency_setting_is_read_per_role_with_one_line_errors():
    assert concurrency_for("pi", {}) == 8
    assert concurrency_for("pi", {"LAB_CONCURRENCY": "3"}) == 3
    assert concurrency_for("pi", {"LAB_CONCURRENCY": "3", "LAB_CONCURRENCY_PI": "5"}) == 5
    with pytest.raises(HostConfigError, match="LAB_CONCURRENCY_PI='x': expected a whole number"):
        concurrency_for("pi", {"LAB_CONCURRENCY_PI": "x"})
    with pytest.raises(HostConfigError, match="at least 1"):
        concurrency_for("pi", {"LAB_CONCURRENCY": "0"})


def test_partitions_are_split_by_index_and_subjects_map_back():
    assert partitions.owned(0, 1) == list(range(partitions.PARTITIONS))
    assert partitions.owned(1, 3) == [1, 4, 7, 10, 13]
    assert sorted(p for i in range(5) for p in partitions.owned(i, 5)) == list(range(partitions.PARTITIONS))
    assert partitions.origin("lab.work.engineer.7.convo.a.pi.engineer") == "lab.convo.a.pi.engineer"
    assert partitions.origin("lab.work.engineer.12.jobs.a.j1.status") == "lab.jobs.a.j1.status"
    assert partitions.origin("lab.convo.a.pi.engineer") == "lab.convo.a.pi.engineer"
    assert partitions.partition_of("lab.work.pi.12.convo.a.copi.all") == 12 and partitions.partition_of("lab.convo.a.copi.pi") is None
    # One filter per durable (what the permissions pin), sixteen per role, on the role's own work stream.
    assert partitions.consumers("pi")[3] == ("LAB_WORK_PI", "role-pi-p03", "lab.work.pi.3.>")
    assert len(partitions.consumers("engineer")) == partitions.PARTITIONS
    assert replica_from_env({}) == (0, 1)
    assert replica_from_env({"LAB_REPLICA": "1", "LAB_REPLICAS": "2"}) == (1, 2)
    assert replica_from_env({"HOSTNAME": "lab-engineer-2", "LAB_REPLICAS": "3"}) == (2, 3)  # a StatefulSet's ordinal
    assert replica_from_env({"HOSTNAME": "lab-engineer-7f9c-x2b", "LAB_REPLICAS": "1"}) == (0, 1)
    with pytest.raises(HostConfigError, match="need LAB_REPLICA or a StatefulSet"):
        replica_from_env({"HOSTNAME": "lab-engineer-7f9c-x2b", "LAB_REPLICAS": "2"})  # a Deployment's pod
    with pytest.raises(HostConfigError, match="not one of 0..1"):
        replica_from_env({"LAB_REPLICA": "2", "LAB_REPLICAS": "2"})
    with pytest.raises(HostConfigError, match="1 to 16"):
        replica_from_env({"LAB_REPLICA": "0", "LAB_REPLICAS": "17"})
