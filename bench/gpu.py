"""A short run of char_lm's ``gpu`` profile on this machine's GPU: tokens/s and peak GPU memory.

    python bench/gpu.py [--steps 300] [--seeds 0]      (or: python -m bench.gpu)

It runs the template's own experiment.py (bf16/fp16 autocast, as a job would)
with the ``gpu`` profile's knobs and fewer steps, so the numbers are the
template's, not a separate micro-benchmark. Where there is no CUDA device it
says so and exits 0: it is never needed for CI. A benchmark prints numbers; it
asserts nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a file, this folder is sys.path[0] and its bus.py would shadow the lab's `bus` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

TEMPLATE = HERE.parent / "templates" / "char_lm"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps (the profile's max_steps is replaced)")
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"bench/gpu.py: skipped: no CUDA device here (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
              "the GPU path of char_lm is untested on this machine")
        return 0
    spec = yaml.safe_load((TEMPLATE / "template.yaml").read_text())
    overrides = {**spec["profiles"]["gpu"]["overrides"], "max_steps": args.steps, "warmup_steps": min(100, args.steps // 3)}
    flags = [f"--{k}={v}" for k, v in overrides.items()]
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as out:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(TEMPLATE / "experiment.py"), "--out_dir", out, "--seeds", args.seeds, *flags],
            env={**os.environ, "OMP_NUM_THREADS": "4"}, capture_output=True, text=True,
        )
        wall = time.monotonic() - started
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:])
            print(f"bench/gpu.py: the run failed (exit code {proc.returncode})")
            return 1
        info = json.loads((Path(out) / "final_info.json").read_text())
    tps = info["metrics"]["tokens_per_s"]
    print(f"device: {info.get('gpu_name', '?')} ({info['device']}, {info['precision']})")
    print(f"profile gpu, {args.steps} steps x {len(info['seeds'])} seed(s): {info['compute']['params'] / 1e6:.2f} M parameters")
    print(f"tokens/s: {tps['mean']:,.0f} (per seed: {', '.join(f'{v:,.0f}' for v in tps['values'])})")
    print(f"peak GPU memory: {info.get('gpu_memory_mb', 0):,.0f} MiB")
    print(f"val_loss after {args.steps} steps: {info['metrics']['val_loss']['mean']:.4f}; wall {wall:.0f} s")
    per_step = info["wall_s"] / (args.steps * len(info["seeds"]))
    full = spec["profiles"]["gpu"]["overrides"]["max_steps"] * 3 * per_step
    print(f"estimated gpu profile (3 seeds x {spec['profiles']['gpu']['overrides']['max_steps']} steps): {full / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
