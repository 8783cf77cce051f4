"""`python -m services.host.alive FILE [MAX_AGE_S]`: exit 0 if the agent's heartbeat file is fresh, 1 if not.

The Kubernetes liveness probe of every agent. The host touches
``$LAB_HOME/run/<instance>.alive`` only after NATS accepted a heartbeat, so an
agent that lost NATS, or whose event loop hung, stops touching it and is
restarted — a process that merely exists is not alive.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bus.schema.constants import AGENTS_TTL_S


def fresh(path: Path, max_age_s: float) -> tuple[bool, str]:
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False, f"{path}: no heartbeat yet"
    if age > max_age_s:
        return False, f"{path}: last heartbeat {age:.0f}s ago (limit {max_age_s:.0f}s)"
    return True, f"{path}: heartbeat {age:.0f}s ago"


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print("usage: python -m services.host.alive FILE [MAX_AGE_S]", file=sys.stderr)
        return 2
    # By default an agent is restarted when silent as long as the agents bucket takes to forget it.
    ok, why = fresh(Path(argv[0]), float(argv[1]) if len(argv) > 1 else AGENTS_TTL_S)
    print(why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
