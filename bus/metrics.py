"""The lab's Prometheus metrics, all in one place, and the HTTP exporter that serves them.

Every series is named ``lab_*`` and lives in the process's default registry, so
one ``/metrics`` page per process shows them together with prometheus-client's
own process and Python series. The agent host (``services/host/agent.py``)
starts the exporter when ``LAB_METRICS_PORT`` is set (0: any free port) and
records what it bound in its heartbeat (``Heartbeat.metrics_url``).

The series and their labels (``docs/metrics.md`` lists them for operators):

- ``lab_messages_handled_total{role,outcome}``: messages an agent finished; outcome ``ok``, ``error`` (it
  will come back: a NAK) or ``dead_letter``.
- ``lab_handler_seconds{role}``: a histogram of the time from taking a message to finishing it.
- ``lab_dead_letters_total{role}``: messages an agent set aside as dead letters.
- ``lab_lanes_held{role}`` / ``lab_lanes_in_hand{role}``: messages queued or in hand, and in hand now.
- ``lab_projects{stage}``: the PI's projects by stage (one PI replica counts the projects it owns).
- ``lab_jobs{state}``: the engineer's jobs by state, over the projects it owns.
- ``lab_capacity_used{counts}`` / ``lab_capacity_total{counts}``: the lab-wide capacity ledger as last written
  by this process (``counts``: ``slots`` or ``gpus``).
- ``lab_llm_call_seconds{role}`` / ``lab_llm_errors_total{role}``: model calls, with their retries, and those that
  failed for good.
- ``lab_auth_requests_total{outcome}`` / ``lab_auth_request_seconds``: the auth service's answers to nats-server
  (``admitted`` or ``refused``) and how long each took; ``lab_auth_commits_total{outcome}``: the object records it
  wrote for jobs (``committed``, ``refused``, ``error``).
- ``lab_web_requests_total{route,method,status}`` / ``lab_web_request_seconds{route}``: the web view's requests by
  route (its template, ``/p/{project}``: never a project's name; ``other`` for a path no route matched) and the
  seconds until each response started (a live feed's whole life is not counted).

- ``lab_runner_job_info{project,experiment,job_id}``, ``lab_runner_elapsed_seconds{job_id}``, ``lab_runner_log_lines_total{job_id}``,
  ``lab_runner_cpu_seconds{job_id}``, ``lab_runner_memory_bytes{job_id}``, ``lab_runner_peak_memory_bytes{job_id}``,
  ``lab_runner_gpu_memory_bytes{job_id,gpu}``: a job's runner while the experiment runs (``LAB_RUNNER_METRICS_PORT``).

The auth service and the web view serve them on ``LAB_METRICS_PORT`` too (``serve_or_log``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = structlog.get_logger()

# Seconds: agent handlers run from milliseconds (offline mind) to minutes (an llm mind writing a paper).
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
AUTH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
WEB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LLM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

MESSAGES_HANDLED = Counter("lab_messages_handled", "Messages an agent finished, by outcome (ok, error, dead_letter).", ["role", "outcome"])
HANDLER_SECONDS = Histogram("lab_handler_seconds", "Seconds an agent took over one message.", ["role"], buckets=HANDLER_BUCKETS)
DEAD_LETTERS = Counter("lab_dead_letters", "Messages an agent set aside as dead letters.", ["role"])
LANES_HELD = Gauge("lab_lanes_held", "Messages an agent holds, queued or in hand.", ["role"])
LANES_IN_HAND = Gauge("lab_lanes_in_hand", "Messages an agent is handling right now.", ["role"])
PROJECTS = Gauge("lab_projects", "The PI's projects by stage (those this replica owns).", ["stage"])
JOBS = Gauge("lab_jobs", "The engineer's jobs by state (over the projects this replica owns).", ["state"])
CAPACITY_USED = Gauge("lab_capacity_used", "Units of the lab-wide capacity ledger held by jobs, as last written here.", ["counts"])
CAPACITY_TOTAL = Gauge("lab_capacity_total", "Units the capacity ledger may hand out (absent: unlimited).", ["counts"])
LLM_SECONDS = Histogram("lab_llm_call_seconds", "Seconds one model call took, its transport retries included.", ["role"], buckets=LLM_BUCKETS)
LLM_ERRORS = Counter("lab_llm_errors", "Model calls that failed after their retries (or with the endpoint's breaker open).", ["role"])

AUTH_REQUESTS = Counter("lab_auth_requests", "Connections the auth service answered, by outcome (admitted, refused).", ["outcome"])
AUTH_SECONDS = Histogram("lab_auth_request_seconds", "Seconds the auth service took to answer one connection.", buckets=AUTH_BUCKETS)
AUTH_COMMITS = Counter("lab_auth_commits", "Object records jobs asked the auth service to write, by outcome.", ["outcome"])
WEB_REQUESTS = Counter("lab_web_requests", "Requests the web view answered, by route template, method and status.", ["route", "method", "status"])
WEB_SECONDS = Histogram("lab_web_request_seconds", "Seconds until the web view started its response, by route template.", ["route"],
                        buckets=WEB_BUCKETS)

# A job's runner (``LAB_RUNNER_METRICS_PORT``): every series carries the job's id (``job_id``: Prometheus keeps ``job``
# for its scrape job), so a process that runs no job (an agent) shows none of them, and one the runner cannot
# measure (no GPU, a launcher that wrote no usage yet) is absent, never a 0.
RUNNER_JOB = Gauge("lab_runner_job_info", "The job this runner runs (always 1): its project, experiment and id.", ["project", "experiment", "job_id"])
RUNNER_ELAPSED = Gauge("lab_runner_elapsed_seconds", "Seconds since the runner started the job's experiment.", ["job_id"])
RUNNER_LOG_LINES = Counter("lab_runner_log_lines", "Lines the job's log received: the experiment's output and the runner's own.", ["job_id"])
RUNNER_CPU = Gauge("lab_runner_cpu_seconds", "User + system CPU seconds the experiment's processes used so far.", ["job_id"])
RUNNER_MEMORY = Gauge("lab_runner_memory_bytes", "Resident memory of the experiment's processes now.", ["job_id"])
RUNNER_PEAK_MEMORY = Gauge("lab_runner_peak_memory_bytes", "The most resident memory the experiment's processes held, as sampled.",
                           ["job_id"])
RUNNER_GPU_MEMORY = Gauge("lab_runner_gpu_memory_bytes", "Memory in use on each GPU the job holds (nvidia-smi).", ["job_id", "gpu"])

OUTCOMES = ("ok", "error", "dead_letter")
AUTH_OUTCOMES = ("admitted", "refused")
COMMIT_OUTCOMES = ("committed", "refused", "error")

_lock = threading.Lock()
_served: dict[str, int] = {}  # "port": what this process's exporter bound, once started


def prepare(role: str) -> None:
    """Create a role's labelled series at zero, so a scrape shows them before the first message."""
    for outcome in OUTCOMES:
        MESSAGES_HANDLED.labels(role=role, outcome=outcome)
    HANDLER_SECONDS.labels(role=role)
    DEAD_LETTERS.labels(role=role)
    LANES_HELD.labels(role=role)
    LANES_IN_HAND.labels(role=role)


def handled(role: str, outcome: str, seconds: float) -> None:
    """One message finished: its outcome and how long it took."""
    MESSAGES_HANDLED.labels(role=role, outcome=outcome).inc()
    HANDLER_SECONDS.labels(role=role).observe(seconds)
    if outcome == "dead_letter":
        DEAD_LETTERS.labels(role=role).inc()


def lanes(role: str, held: Callable[[], float], in_hand: Callable[[], float]) -> None:
    """Read a role's lanes when scraped: the gauges are the lanes' own counts, never a copy to keep in step."""
    LANES_HELD.labels(role=role).set_function(held)
    LANES_IN_HAND.labels(role=role).set_function(in_hand)


class LabelTally:
    """A gauge over per-project values: each project's latest tally of labels, summed across projects.

    The PI tells each project's stage (one label per project), the engineer its jobs' states
    (many per project); the gauge shows the sum, and a label no project has any more reads 0.
    """

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self.projects: dict[str, Tally[str]] = {}
        self._seen: set[str] = set()

    def set(self, project: str, labels: Iterable[str]) -> None:
        with _lock:
            self.projects[project] = Tally(labels)
            total: Tally[str] = Tally()
            for tally in self.projects.values():
                total.update(tally)
            self._seen.update(total)
            for label in self._seen:
                self.gauge.labels(label).set(total.get(label, 0))


PROJECT_STAGES = LabelTally(PROJECTS)
JOB_STATES = LabelTally(JOBS)


def capacity(counts: str, used: int, total: int | None) -> None:
    CAPACITY_USED.labels(counts=counts).set(used)
    if total is not None:
        CAPACITY_TOTAL.labels(counts=counts).set(total)


def llm_call(role: str, seconds: float, failed: bool) -> None:
    LLM_SECONDS.labels(role=role).observe(seconds)
    if failed:
        LLM_ERRORS.labels(role=role).inc()


def prepare_auth() -> None:
    """The auth service's series at zero, so a scrape shows them before the first connection."""
    for outcome in AUTH_OUTCOMES:
        AUTH_REQUESTS.labels(outcome=outcome)
    for outcome in COMMIT_OUTCOMES:
        AUTH_COMMITS.labels(outcome=outcome)


def auth_request(admitted: bool, seconds: float) -> None:
    AUTH_REQUESTS.labels(outcome="admitted" if admitted else "refused").inc()
    AUTH_SECONDS.observe(seconds)


def auth_commit(outcome: str) -> None:
    AUTH_COMMITS.labels(outcome=outcome).inc()


def web_request(route: str, method: str, status: int, seconds: float) -> None:
    WEB_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    WEB_SECONDS.labels(route=route).observe(seconds)


def runner_started(project: str, experiment: str, job: str, started: float) -> None:
    """A runner began the job's experiment at ``started`` (time.monotonic()): its info, its clock, its log's count at 0."""
    RUNNER_JOB.labels(project=project, experiment=experiment, job_id=job).set(1)
    RUNNER_ELAPSED.labels(job_id=job).set_function(lambda: time.monotonic() - started)
    RUNNER_LOG_LINES.labels(job_id=job)


def runner_line(job: str) -> None:
    RUNNER_LOG_LINES.labels(job_id=job).inc()


def runner_usage(job: str, cpu_s: float, rss: int, peak_rss: int, gpu_memory: dict[str, int] | None) -> None:
    """What the experiment used, as last measured; ``gpu_memory`` None: no GPU seen (the series stays absent)."""
    RUNNER_CPU.labels(job_id=job).set(cpu_s)
    RUNNER_MEMORY.labels(job_id=job).set(rss)
    RUNNER_PEAK_MEMORY.labels(job_id=job).set(peak_rss)
    for gpu, used in (gpu_memory or {}).items():
        RUNNER_GPU_MEMORY.labels(job_id=job, gpu=gpu).set(used)


def serve_or_log(port: int | None, process: str) -> str:
    """Serve this process's metrics on ``port`` (None: not at all); the URL, or "" when not served.

    A port already taken is logged, and the process works on without its metrics.
    """
    if port is None:
        return ""
    try:
        where = url(serve(port))
    except OSError as e:
        log.error("cannot serve metrics; going on without them", process=process, port=port, error=str(e))
        return ""
    log.info("serving metrics", process=process, url=where)
    return where


def serve(port: int, addr: str = "0.0.0.0") -> int:
    """Start this process's exporter on ``port`` (0: a free one) once; return the port it serves on.

    A second call (two hosts in one process, as in tests) gets the first exporter's port.
    """
    with _lock:
        if "port" not in _served:
            server, _thread = start_http_server(port, addr=addr)
            _served["port"] = int(server.server_address[1])
        return _served["port"]


def url(port: int) -> str:
    """Where a scraper finds this process's metrics: its host name (a pod's name) and the port."""
    return f"http://{socket.gethostname()}:{port}/metrics"
