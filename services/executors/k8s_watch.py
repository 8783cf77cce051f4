"""One list-and-watch of the lab's objects of one kind, feeding a cache that ``poll`` reads.

Polling costs API calls per job per pass; a watch costs one long request per
kind, whatever the number of jobs, and sees a change as it happens. The
official client's watch is blocking, so it runs in a daemon thread. Whenever
the stream ends or fails (the server's watch timeout, 410 Gone when the
resourceVersion expired, a dropped connection, an API server restart) the
watcher lists again and starts a new watch from that list: the resync that
makes a missed event harmless.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from bus.retry import backoff_delay

log = structlog.get_logger()


class Watcher:
    """Keeps ``items`` (name -> object) equal to the cluster's objects that ``ours`` accepts."""

    def __init__(self, kind: str, list_fn: Callable[..., Any], namespace: str, selector: str,
                 ours: Callable[[Any], bool], request_timeout_s: float, watch_timeout_s: float) -> None:
        self.kind = kind
        self._list = list_fn
        self._namespace = namespace
        self._selector = selector
        self._ours = ours
        self._request_timeout_s = request_timeout_s
        self._watch_timeout_s = watch_timeout_s
        self._lock = threading.Lock()
        self._items: dict[str, Any] = {}
        self.synced = threading.Event()  # set once the first LIST arrived
        self.error = ""  # why the last list or watch failed; cleared by the next good LIST
        self.lists = 0  # how many LISTs (resyncs) it took: one, unless the stream broke
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"lab-watch-{kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def items(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._items)

    def forget(self, name: str) -> None:
        """Drop an object now (it was just deleted) rather than when the DELETED event comes."""
        with self._lock:
            self._items.pop(name, None)

    def remember(self, obj: Any) -> None:
        """Take an object read directly (a GET) so the next poll need not read it again."""
        with self._lock:
            self._items[obj.metadata.name] = obj

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._list_and_watch()
                failures = 0
            except Exception as e:  # 410 Gone, a dropped stream, no API server: list again after a pause
                if self._stopping.is_set():
                    return
                self.error = _describe(e)
                failures += 1
                # Jitter: many engineers (or one restarted API server) must not all relist at once.
                pause = backoff_delay(failures, base_s=0.2, max_s=10.0, jitter=0.5)
                log.warning("kubernetes watch failed; listing again", error=self.error, after_s=round(pause, 1))
                self._stopping.wait(pause)

    def _list_and_watch(self) -> None:
        listed = self._list(self._namespace, label_selector=self._selector, _request_timeout=self._request_timeout_s)
        with self._lock:
            self._items = {o.metadata.name: o for o in listed.items if self._ours(o)}
        self.lists += 1
        self.error = ""
        self.synced.set()
        w = watch.Watch()
        self._watch = w
        if self._stopping.is_set():
            return
        stream = w.stream(
            self._list, self._namespace, label_selector=self._selector,
            resource_version=listed.metadata.resource_version if listed.metadata else None,
            timeout_seconds=int(self._watch_timeout_s),
            # The read timeout ends a stream the server forgot to close; then we list again.
            _request_timeout=(self._request_timeout_s, self._watch_timeout_s + 30),
        )
        for event in stream:
            obj = event["object"]
            if self._stopping.is_set():
                w.stop()
                return
            if not self._ours(obj):
                continue
            with self._lock:
                if event["type"] == "DELETED":
                    self._items.pop(obj.metadata.name, None)
                else:
                    self._items[obj.metadata.name] = obj

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the watch: shut its socket (so a blocked read returns) until the thread is gone."""
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self._watch is not None:
                self._watch.stop()
            self._thread.join(0.05)


def _describe(e: Exception) -> str:
    if isinstance(e, ApiException):
        return f"{e.status} {e.reason}"
    return f"{type(e).__name__}: {e}"
