"""The lab's fixed numbers and names, in one place for every layer.

A rule written as a literal in several modules drifts (the three-seed minimum
was spelled out six times); a name of a stream or bucket spelled twice can
disagree with the server. Everything here is imported, never retyped.
"""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 1

# ---------------------------------------------------------------- research rules

# The arm every idea is compared against; also the idea id of its experiments.
BASELINE: Final = "baseline"
# Every run has at least this many seeds: fewer cannot give a standard error worth the name.
MIN_SEEDS: Final = 3

# ---------------------------------------------------------------- liveness

# An agent writes its heartbeat this often; the key expires after AGENTS_TTL_S.
HEARTBEAT_EVERY_S: Final = 5.0
# A heartbeat older than this means the agent lost NATS or hung: `lab status` calls it down.
HEARTBEAT_STALE_S: Final = 20.0
# The agents bucket forgets an instance silent this long.
AGENTS_TTL_S: Final = 30.0

# ---------------------------------------------------------------- streams and buckets

CONVO_STREAM: Final = "LAB_CONVO"
JOBS_STREAM: Final = "LAB_JOBS"
DLQ_STREAM: Final = "LAB_DLQ"
STATE_BUCKET: Final = "lab_state"
AGENTS_BUCKET: Final = "lab_agents"
CACHE_BUCKET: Final = "lab_cache"
# The idea archive: what each project tried on each template and what came of it, kept across projects.
IDEAS_BUCKET: Final = "lab_ideas"
# The result cache (bus/resultcache.py): a run's content key -> its claim or its succeeded status, lab-wide.
RESULTS_BUCKET: Final = "lab_results"
ARTIFACTS_BUCKET: Final = "lab_artifacts"


def kv_stream(bucket: str) -> str:
    """The JetStream stream behind a key-value bucket."""
    return f"KV_{bucket}"


def object_stream(bucket: str) -> str:
    """The JetStream stream behind an object store."""
    return f"OBJ_{bucket}"


# ---------------------------------------------------------------- job runner exit codes

# Understood by Kubernetes' podFailurePolicy and by every executor.
EXIT_OK: Final = 0
EXIT_EXPERIMENT_FAILED: Final = 3  # the experiment crashed, timed out, ran out of memory, wrote bad output: do not retry
EXIT_INFRA: Final = 4  # the runner could not reach the bus or the object store: a retry may help
