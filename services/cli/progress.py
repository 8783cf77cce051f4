"""Per-job progress for `lab run`: the step each running job reached, read from its own log lines, with an ETA.

The templates print ``seed S step N: ...`` as they train; the total comes from the
template's step knob as the project runs it (``max_steps``, ``num_steps``, ...), and
the seeds from the job's status. A line per job is printed at most every
``EVERY_S`` seconds, and only when the job moved: a long silence while jobs train
becomes a line every half minute, never a wall of text.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

STEP_LINE = re.compile(r"\bseed (\d+) step (\d+)\b")
# The knob that counts a run's training steps, in the templates that ship with the lab.
STEP_KNOBS = ("max_steps", "num_steps", "num_train_steps", "steps", "train_steps")
EVERY_S = 30.0


def total_steps(config: dict[str, Any]) -> int | None:
    """The steps one seed trains for, from the run's configuration; None where the template names none."""
    for knob in STEP_KNOBS:
        value = config.get(knob)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass
class JobProgress:
    """What one job's log said so far: the seeds it finished, the seed and step it is on, when it started that seed."""

    job: str
    seeds_done: set[int] = field(default_factory=set)
    seed: int | None = None
    step: int = 0
    seed_started: float = 0.0
    step_at: float = 0.0  # when the latest step line came
    per_seed_s: list[float] = field(default_factory=list)
    printed_step: tuple[int | None, int] = (None, -1)
    printed_at: float = 0.0

    def saw(self, line: str, now: float) -> bool:
        """Take one log line; whether it was a step line."""
        m = STEP_LINE.search(line)
        if m is None:
            return False
        seed, step = int(m.group(1)), int(m.group(2))
        if seed != self.seed:
            if self.seed is not None:
                self.seeds_done.add(self.seed)
                self.per_seed_s.append(now - self.seed_started)
            self.seed, self.seed_started = seed, now
        self.step, self.step_at = step, now
        return True

    def line(self, total: int | None, seeds: int | None, now: float) -> str:
        """``x02-dropout-0p1: seed 1 (2/3), step 300/400 (75%), about 40 s left``."""
        seed_part = f"seed {self.seed}" + (f" ({len(self.seeds_done) + 1}/{seeds})" if seeds else "")
        step_part = f"step {self.step}" + (f"/{total} ({100 * self.step // total}%)" if total else "")
        eta = self.eta(total, seeds, now)
        return f"{self.job}: {seed_part}, {step_part}" + (f", about {eta} left" if eta else "")

    def eta(self, total: int | None, seeds: int | None, now: float) -> str:
        """Time left from the rate so far in this seed (and the finished seeds' durations), or "" when it cannot be told."""
        if not total or self.step <= 0 or self.seed is None or self.step_at - self.seed_started < 1.0:
            return ""  # no rate yet: the seed's first step line, or lines that came in one burst
        per_step = (self.step_at - self.seed_started) / self.step  # the rate this seed kept up to its latest step line
        this_seed_left = max(0.0, per_step * (total - self.step) - (now - self.step_at))
        per_seed = sum(self.per_seed_s) / len(self.per_seed_s) if self.per_seed_s else per_step * total
        later = max(0, (seeds or 0) - len(self.seeds_done) - 1) * per_seed
        left = this_seed_left + later
        return f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min"

    def due(self, now: float, every_s: float = EVERY_S) -> bool:
        """Moved since the last line, and that line is at least ``every_s`` old."""
        return self.seed is not None and (self.seed, self.step) != self.printed_step and now - self.printed_at >= every_s

    def printed(self, now: float) -> None:
        self.printed_step, self.printed_at = (self.seed, self.step), now


@dataclass
class Progress:
    """Every running job of one project, by job id; ``names`` maps a job to its experiment where a status said so,
    ``seeds`` an experiment to its seed count where its request said so."""

    total: int | None
    seeds: dict[str, int] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, JobProgress] = field(default_factory=dict)

    def log(self, job: str, line: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.jobs.setdefault(job, JobProgress(self.names.get(job, job))).saw(line, now)

    def finished(self, job: str) -> None:
        self.jobs.pop(job, None)

    def lines(self, now: float | None = None, every_s: float = EVERY_S) -> list[str]:
        """The lines due now (each job at most every ``every_s`` seconds, and only when it moved)."""
        now = time.monotonic() if now is None else now
        out = []
        for job, p in self.jobs.items():
            if p.due(now, every_s):
                p.job = self.names.get(job, p.job)
                out.append(p.line(self.total, self.seeds.get(self.names.get(job, job)), now))
                p.printed(now)
        return out
