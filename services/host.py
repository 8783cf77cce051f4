"""`lab agent ROLE`: runs one role on the bus.

For each message: validate (else dead-letter with the reason), load the
role's state for the project, run the handler, store the new state together
with the outputs (compare-and-set), publish the outputs with derived ids, then
ack. A crash at any point repeats at most the same outputs, which JetStream's
duplicate window drops; a message that already has stored outputs is only
republished. On SIGTERM the host stops fetching, finishes the message in
hand, and drains.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from agents import role_class
from agents.base import Context, Rejected, Role, UnhandledKind, is_permanent
from agents.minds import make_mind
from bus import subjects
from bus.client import AGENTS_BUCKET, MAX_ENVELOPE_BYTES, Bus, BusConfig
from bus.consumer import MAX_DELIVER, keep_alive, messages, pull
from bus.errors import StateConflict
from agents.minds.llm.errors import MindFailed
from bus.messages import Envelope, StepFailed, Usage, UsageReport, decode
from bus.store import Artifacts, KVCache, StateStore
from services.logging import setup_logging

_STEP_OF: dict[str, tuple[str, Any]] = {
    "experiment_request": ("experiment", lambda b: b.experiment_id),
    "novelty_check": ("novelty", lambda b: b.idea.id),
    "analysis_request": ("analysis", lambda b: f"round-{b.round}"),
    "draft_request": ("draft", lambda b: f"round-{b.round}"),
    "review_request": ("review", lambda b: f"round-{b.round}"),
}
OUTBOX_KEEP = 16
FAULT_DELAY_AFTER_STORE = float(os.environ.get("LAB_FAULT_DELAY_AFTER_STORE", "0") or 0)
log = structlog.get_logger()


def _usage_of(mind: Any) -> Usage:
    usage = getattr(mind, "usage", None)
    return usage.model_copy() if usage is not None else Usage()


def retry_delay(delivered: int) -> float:
    """Seconds before a failed message is tried again: 2, 4, 8, 16, capped at 30."""
    return float(min(30, 2**delivered))


class AgentHost:
    def __init__(
        self,
        role: str,
        config: BusConfig,
        *,
        home: Path,
        mind: str = "offline",
        mind_config: dict[str, Any] | None = None,
        executor: Any = None,
        job_nats: Any = None,
    ):
        self.role_name = role
        self.role: Role = role_class(role)()
        self.config = config
        self.home = home
        self.mind_kind = mind
        self.mind = make_mind(mind, role, 0, mind_config)
        self.executor = executor
        self.job_nats = job_nats
        self.stop = asyncio.Event()
        self.lock = asyncio.Lock()
        self.handled = 0

    # ------------------------------------------------------------ lifecycle

    def ready_file(self) -> Path:
        return self.home / "run" / f"{self.role_name}.ready"

    async def run(self) -> None:
        self.bus = await Bus.connect(self.config)
        # Whoever starts first creates the streams and buckets (on a cluster there is no `lab up`).
        await self.bus.ensure_topology()
        self.states = await StateStore.open(self.bus)
        self.artifacts = await Artifacts.open(self.bus)
        self.cache = await KVCache.open(self.bus, self.role_name)
        self.agents_kv = await self.bus.js.key_value(AGENTS_BUCKET)
        subs = [await pull(self.bus, subjects.CONVO_STREAM, f"role-{self.role_name}", subjects.convo_for(self.role_name))]
        if self.role_name == "engineer":
            subs.append(await pull(self.bus, subjects.JOBS_STREAM, "role-engineer-jobs", [subjects.job_statuses()]))
        tasks = [asyncio.create_task(self._consume(s)) for s in subs]
        tasks.append(asyncio.create_task(self._heartbeat()))
        if self.role_name == "engineer" and self.executor is not None:
            tasks.append(asyncio.create_task(self._watch_jobs()))
        self.ready_file().parent.mkdir(parents=True, exist_ok=True)
        self.ready_file().write_text(str(os.getpid()))
        log.info("agent ready", role=self.role_name, mind=self.mind_kind, pid=os.getpid())
        try:
            await self.stop.wait()
        finally:
            self.ready_file().unlink(missing_ok=True)
            # Fetch loops see the stop event; the message in hand finishes under the lock.
            async with self.lock:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if self.executor is not None:
                await self.executor.close()
            await self.bus.close()
            log.info("agent stopped", role=self.role_name, handled=self.handled)

    async def _heartbeat(self) -> None:
        info = {"role": self.role_name, "pid": os.getpid(), "host": socket.gethostname(), "mind": self.mind_kind, "started": time.time()}
        while True:
            try:
                await self.agents_kv.put(self.role_name, json.dumps({**info, "seen": time.time(), "handled": self.handled}).encode())
            except Exception as e:
                log.warning("heartbeat failed", error=str(e))
            await asyncio.sleep(5)

    async def _consume(self, sub: Any) -> None:
        async for msg in messages(sub, self.stop):
            async with self.lock:
                try:
                    await self.process(msg)
                except Exception as e:  # e.g. the bus went away while publishing: the stored outbox is resent on redelivery
                    log.error("processing failed; the message will come back", role=self.role_name, subject=msg.subject, error=f"{type(e).__name__}: {e}")
                    try:
                        await msg.nak(delay=retry_delay(1))
                    except Exception:
                        pass

    # ------------------------------------------------------------ one message

    async def process(self, msg: Any) -> None:
        meta = msg.metadata
        delivered = meta.num_delivered if meta else 1
        if len(msg.data) > MAX_ENVELOPE_BYTES:
            await self._reject(msg, f"message of {len(msg.data)} bytes exceeds the limit of {MAX_ENVELOPE_BYTES}")
            return
        try:
            env = decode(msg.data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            await self._reject(msg, f"invalid message: {where}: {first['msg']} ({e.error_count()} errors)")
            return
        if msg.subject.startswith("lab.convo."):
            project, sender, recipient = subjects.parse_convo(msg.subject)
            if (project, sender, recipient) != (env.project, env.sender, env.recipient):
                await self._reject(msg, f"envelope claims {env.project}/{env.sender}->{env.recipient} but came on {msg.subject}")
                return
        bound = log.bind(role=self.role_name, project=env.project, message_id=env.id, kind=env.kind)
        beat = asyncio.create_task(keep_alive(msg))
        try:
            outputs = await self._handle(env, bound)
        except StateConflict as e:
            bound.warning("state conflict; retrying", error=str(e))
            await msg.nak(delay=1)
            return
        except Rejected as e:
            if isinstance(e, UnhandledKind) and env.recipient == "all":
                await msg.ack()  # broadcasts not meant for this role
            else:
                await self._reject(msg, str(e))
            return
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            if is_permanent(e):  # retrying cannot help: dead letters now, not after the whole backoff
                await self._reject(msg, f"cannot succeed on retry: {reason}")
            elif delivered >= MAX_DELIVER:
                await self._reject(msg, f"handler failed {delivered} times: {reason}")
            else:
                bound.error("handler failed; will retry", error=reason, delivered=delivered)
                await msg.nak(delay=retry_delay(delivered))
            return
        finally:
            beat.cancel()
        await self.bus.publish_many(outputs)
        await msg.ack()
        self.handled += 1
        bound.info("handled", outputs=[f"{o.kind}->{o.recipient}" for o in outputs], delivered=delivered)

    async def _handle(self, env: Envelope, bound: Any) -> list[Envelope]:
        key = f"{self.role_name}.{env.project}"
        doc, revision = await self.states.read(key)
        doc = doc or {}
        outbox: dict[str, list[str]] = doc.get("outbox", {})
        if env.id in outbox:
            bound.info("already handled; republishing its outputs")
            return [decode(o.encode()) for o in outbox[env.id]]
        state_cls = self.role.State
        if doc.get("state") is not None:
            state = state_cls.model_validate(doc["state"])
        else:
            try:
                state = state_cls()
            except ValidationError:
                state = None  # the PI's project state exists only once the project starts
        ctx = Context(
            project=env.project,
            role=self.role_name,  # type: ignore[arg-type]
            state=state,
            artifacts=self.artifacts,
            mind=self.mind,
            cache=self.cache,
            services={"lab_home": self.home, "executor": self.executor, "job_spec": self._job_spec},
        )
        before = _usage_of(self.mind)
        try:
            await self.role.handle(env, ctx)
        except MindFailed as e:
            # The mind ran out of retries: this step fails, the PI decides what follows.
            step, ref = _STEP_OF.get(env.kind, (env.kind, lambda b: ""))
            ctx.outputs = [(StepFailed(step=step, reason=e.reason, ref=ref(env.body)), "pi")]
            bound.error("step failed", step=step, reason=e.reason)
        outputs = [env.reply(body, sender=self.role_name, recipient=to, index=i) for i, (body, to) in enumerate(ctx.outputs)]  # type: ignore[arg-type]
        # What the mind spent on this message counts against this project (the PI too: it reads its own report).
        spent = _usage_of(self.mind) - before
        usage = Usage.model_validate(doc.get("usage") or {}) + spent
        if spent != Usage():
            outputs.append(env.reply(UsageReport(usage=usage), sender=self.role_name, recipient="pi", index=len(outputs)))  # type: ignore[arg-type]
        outbox[env.id] = [o.model_dump_json() for o in outputs]
        outbox = dict(list(outbox.items())[-OUTBOX_KEEP:])
        new_doc = {
            "state": ctx.state.model_dump(mode="json") if ctx.state is not None else None,
            "outbox": outbox,
            "usage": usage.model_dump(),
        }
        await self.states.write(key, new_doc, revision)
        if FAULT_DELAY_AFTER_STORE:
            # Fault injection for chaos tests: widen the window between storing and publishing.
            bound.warning("fault injection: pausing after storing state", seconds=FAULT_DELAY_AFTER_STORE)
            await asyncio.sleep(FAULT_DELAY_AFTER_STORE)
        return outputs

    async def _reject(self, msg: Any, reason: str) -> None:
        log.warning("dead-lettered", role=self.role_name, subject=msg.subject, reason=reason)
        await self.bus.dead_letter(self.role_name, reason, msg)
        await msg.ack()

    # ------------------------------------------------------------ the engineer's executor

    def _job_spec(self, project: str, job: Any) -> Any:
        from services.executors.base import JobSpec

        return JobSpec(
            job_id=job.job_id,
            project=project,
            experiment_id=job.experiment_id,
            template=job.template,
            bundle_object=job.bundle_object,
            overrides=job.overrides,
            seeds=job.seeds,
            wall_time_s=job.wall_time_s,
            memory_mb=job.memory_mb,
            cpu=job.cpu,
            gpu=job.gpu,
            network=job.network,
            nats=self.job_nats,
        )

    async def _watch_jobs(self, every: float = 3.0, grace_s: float = 20.0) -> None:
        """Catch jobs that failed where the runner could not say so (never started, killed, evicted)."""
        from bus.messages import JobStatus

        suspicious: dict[str, float] = {}
        while True:
            await asyncio.sleep(every)
            try:
                for key in await self.states.keys("engineer."):
                    doc, _ = await self.states.read(key)
                    if not doc or not doc.get("state"):
                        continue
                    project = key.split(".", 1)[1]
                    for job in doc["state"]["jobs"].values():
                        if job["state"] not in ("dispatched", "pending", "running"):
                            suspicious.pop(job["job_id"], None)
                            continue
                        phase = await self.executor.poll(job["job_id"])
                        if phase.state == "pending" and phase.reason and job.get("reason") != phase.reason:
                            await self._job_event(project, job, JobStatus(job_id=job["job_id"], experiment_id=job["experiment_id"], state="pending", reason=phase.reason), f"pending-{phase.reason}")
                        if phase.state in ("failed", "missing") or (phase.state == "succeeded"):
                            first = suspicious.setdefault(job["job_id"], time.monotonic())
                            # The runner reports its own end; wait a little for that before speaking for it.
                            if time.monotonic() - first > grace_s:
                                reason = phase.reason or ("runner exited without reporting" if phase.state != "missing" else "job vanished from the executor")
                                await self._job_event(project, job, JobStatus(job_id=job["job_id"], experiment_id=job["experiment_id"], state="failed", reason=reason), "executor-failed")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("job watch failed", error=str(e))

    async def _job_event(self, project: str, job: dict[str, Any], status: Any, tag: str) -> None:
        from bus.messages import derive_id

        env = Envelope(id=derive_id(job["job_id"], tag), project=project, sender="engineer", recipient="engineer", body=status)
        await self.bus.publish_job(subjects.job_status(project, job["job_id"]), env)


def run_agent(role: str, config: BusConfig, *, home: Path, mind: str, mind_config: dict[str, Any] | None, executor: Any, job_nats: Any) -> None:
    setup_logging(role=role)
    host = AgentHost(role, config, home=home, mind=mind, mind_config=mind_config, executor=executor, job_nats=job_nats)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, host.stop.set)
        await host.run()

    asyncio.run(main())
