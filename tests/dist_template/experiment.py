"""A tiny distributed run for the multi-node tests: all_reduce steps over gloo, a checkpoint, a resume.

Started by torchrun on every node. Each step all-reduces every rank's ``rank + 1`` into a
running total and a stop flag: SIGTERM on any rank stops all of them at the same step, rank 0
saves the checkpoint (``LAB_CHECKPOINT_DIR``, also after every step) and they exit 143. A
later start resumes from it: rank 0 reads it and broadcasts it. Rank 0 alone writes
final_info.json: the total, the world size, where it resumed from and how many starts it took.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 143


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--step_s", type=float, default=0.1)
    args = ap.parse_args()
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    where = os.environ.get("LAB_CHECKPOINT_DIR")
    ckpt = Path(where) / "dist.json" if where else None
    state = {"step": 0, "total": 0.0, "starts": 0}
    if rank == 0 and ckpt is not None and ckpt.is_file():
        state = json.loads(ckpt.read_text())
    shared = [state]
    dist.broadcast_object_list(shared, src=0)
    state = shared[0]
    resumed_from = state["step"]
    state["starts"] += 1
    print(f"rank {rank}/{world}: starting at step {resumed_from} (start {state['starts']})", flush=True)

    def save() -> None:
        if rank == 0 and ckpt is not None:
            tmp = ckpt.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(ckpt)

    while state["step"] < args.steps:
        x = torch.tensor([float(rank + 1)])
        dist.all_reduce(x)
        flag = torch.tensor([1.0 if stop["now"] else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        state["total"] += float(x.item())
        state["step"] += 1
        save()
        if flag.item() > 0:
            print(f"rank {rank}: SIGTERM: saved a checkpoint at step {state['step']}", flush=True)
            dist.destroy_process_group()
            sys.exit(EXIT_PREEMPTED)
        time.sleep(args.step_s)
    if rank == 0:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        final = {
            "metrics": {"total": {"mean": state["total"], "stderr": 0.0, "values": [state["total"]]}},
            "seeds": [int(s) for s in args.seeds.split(",") if s.strip()],
            "config": {"steps": args.steps},
            "world_size": world, "resumed_from": resumed_from, "starts": state["starts"], "device": "cpu",
        }
        (out / "final_info.json").write_text(json.dumps(final))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
