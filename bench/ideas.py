"""`lab ideas` benchmark: the table for 1,000 archived ideas against 10, at 80 columns and with --wide.

Prints the seconds each takes and the ratio per idea (1.0: linear in the archive; above: something
grows faster than the archive). The archive is read by one filtered consumer (bus.store.IdeaArchive);
what is measured here is the CLI's side: validating the records and laying out the table.

    PYTHONPATH=. python bench/ideas.py
"""

from __future__ import annotations

import io
import json
import time

from rich.console import Console

from bus.schema import ArchiveRecord
from services.cli.ideas import render


def records(n: int) -> list[dict[str, object]]:
    changes = {f"knob_{i}": 0.001 * i for i in range(6)}
    return [{
        "template": "grokking", "signature": f"s{i}", "project": f"grokking-s{i}-7f3a9c", "recorded_at": 1.7e9 + i,
        "outcome": {"idea_id": f"x{i:03d}-idea", "changes": changes, "status": "better", "improvement": 0.1, "effect_size": 1.2,
                    "ci_low": 0.01, "ci_high": 0.2, "p_adjusted": 0.01, "replicated": True},
    } for i in range(n)]


def once(raw: list[str], wide: bool) -> float:
    start = time.perf_counter()
    parsed = [ArchiveRecord.model_validate_json(v) for v in raw]
    render("grokking", parsed, Console(file=io.StringIO(), width=80, force_terminal=False, color_system=None), wide=wide)
    return time.perf_counter() - start


def best(n: int, wide: bool, repeat: int = 3) -> float:
    raw = [json.dumps(r) for r in records(n)]
    return min(once(raw, wide) for _ in range(repeat))


def main() -> None:
    for wide in (False, True):
        small, large = best(10, wide), best(1_000, wide)
        print(f"{'wide' if wide else '80 columns'}: 10 ideas {small:.4f} s, 1000 ideas {large:.4f} s, "
              f"ratio {large / small:.1f} (per idea {large / small / 100:.2f}; 1.0 is linear)")


if __name__ == "__main__":
    main()
