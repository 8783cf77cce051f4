"""Sleep (the compute), then report a noisy quadratic per seed; also when and where it ran.

The start and end times and the pid in final_info.json let the lab's tests check
that no more experiments ran at once than the lab's capacity.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--x", type=float, default=0.0)
    ap.add_argument("--sleep_s", type=float, default=2.0)
    args = ap.parse_args()
    started = time.time()
    time.sleep(args.sleep_s)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    values = [(args.x - 0.3) ** 2 + random.Random(seed).gauss(0, 0.01) for seed in seeds]
    mean = sum(values) / len(values)
    stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) if len(values) > 1 else 0.0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = {
        "metrics": {"loss": {"mean": mean, "stderr": stderr, "values": values}},
        "seeds": seeds,
        "config": {"x": args.x, "sleep_s": args.sleep_s},
        "device": "cpu",
        "started_at": started,
        "ended_at": time.time(),
        "pid": os.getpid(),
    }
    (out / "final_info.json").write_text(json.dumps(final, indent=2))


if __name__ == "__main__":
    main()
