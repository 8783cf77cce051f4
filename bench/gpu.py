"""The GPU check: CUDA inside the sandbox, then a char_lm project on the ``gpu`` profile, against nanoGPT's figure.

    python bench/gpu.py [--quick] [--steps 300] [--target 1.6]      (or: python -m bench.gpu)

On a machine with CUDA it
1. starts a process that initialises CUDA inside the local executor's sandbox,
   under the job's limits (the driver reserves far more address space than it
   touches: an address-space cap there failed every GPU job), and allocates on the GPU;
2. runs ``lab run --template char_lm --profile gpu --max-runs 1`` through the
   local executor (the baseline: nanoGPT's 6-layer, 384-wide shakespeare-char
   model, 5,000 iterations, 3 seeds), sampling ``nvidia-smi`` every 2 s, and
   prints GPU utilisation, tokens/s, the time to a target validation loss and
   the final validation loss beside nanoGPT's published ~1.47 nats/char.

``--quick`` skips the project and runs the template's experiment alone for
``--steps`` steps (tokens/s and peak GPU memory in about a minute). Without CUDA
it says so and exits 0: it is never needed for CI. A benchmark prints numbers;
it asserts nothing, and exits 1 only when a step it ran failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a file, this folder is sys.path[0] and its bus.py would shadow the lab's `bus` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

TEMPLATE = HERE.parent / "templates" / "char_lm"
NANOGPT_VAL_LOSS = 1.47  # nanoGPT README, shakespeare-char, 6 layers x 384, 5,000 iterations (1.4697)
CUDA_PROBE = """
import torch
torch.cuda.init()
x = torch.ones(1 << 20, device="cuda")
print(f"cuda ok: {torch.cuda.get_device_name(0)}, sum {float(x.sum()):.0f}", flush=True)
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the template's experiment, --steps steps (no project)")
    ap.add_argument("--steps", type=int, default=300, help="with --quick: training steps")
    ap.add_argument("--seeds", default="0", help="with --quick: seeds")
    ap.add_argument("--target", type=float, default=1.6, help="validation loss whose first crossing is timed")
    ap.add_argument("--wall-time", type=float, default=540, help="seconds the project may take")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"bench/gpu.py: skipped: no CUDA device here (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
              "the GPU path of char_lm is untested on this machine")
        return 0
    if not cuda_in_sandbox():
        return 1
    return quick(args) if args.quick else project(args)


def cuda_in_sandbox() -> bool:
    """CUDA initialised and used inside the local executor's sandbox, under a GPU job's limits."""
    from bus.schema import JobSpec
    from services.runner.runner import confine

    job = JobSpec(job_id="gpu-check", project="bench", experiment_id="cuda", template="char_lm", bundle_object="-",
                  seeds=[0], wall_time_s=120, memory_mb=8192, gpu=1)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        code = Path(tmp) / "code"
        code.mkdir()
        (code / "probe.py").write_text(CUDA_PROBE)
        launch = confine([sys.executable, "probe.py"], job, Path(tmp), [code], [])
        proc = subprocess.run(launch.argv, env=launch.env, preexec_fn=launch.preexec, capture_output=True, text=True, timeout=300)
    ok = proc.returncode == 0 and "cuda ok" in proc.stdout
    print(f"CUDA in the sandbox: {'ok' if ok else 'FAILED'}: {(proc.stdout + proc.stderr).strip()[-800:]}")
    return ok


class Sampler(threading.Thread):
    """``nvidia-smi`` every ``every_s`` seconds: GPU utilisation (%) and memory used (MiB)."""

    def __init__(self, every_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.every_s, self.samples, self.done = every_s, [], threading.Event()

    def run(self) -> None:
        smi = shutil.which("nvidia-smi")
        while smi and not self.done.wait(self.every_s):
            out = subprocess.run([smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.splitlines()
            if out and "," in out[0]:
                util, mem = (float(v) for v in out[0].split(",")[:2])
                self.samples.append((util, mem))


def project(args: argparse.Namespace) -> int:
    """``lab run`` on the gpu profile through the local executor; what it measured."""
    with tempfile.TemporaryDirectory(prefix="bench-gpu-home-") as home:
        out = Path(home) / "out"
        env = {**os.environ, "LAB_HOME": home, "LAB_LIT_SOURCES": "local,template", "LAB_EXECUTOR": "local"}
        cmd = [sys.executable, "-m", "services.cli", "run", "--template", "char_lm", "--profile", "gpu", "--max-runs", "1",
               "--max-ideas", "1", "--max-rounds", "0", "--wall-time", str(args.wall_time), "--quiet", "--out", str(out)]
        sampler = Sampler()
        sampler.start()
        started = time.monotonic()
        proc = subprocess.run(cmd, env=env, cwd=HERE.parent, capture_output=True, text=True)
        wall = time.monotonic() - started
        sampler.done.set()
        infos = [json.loads(p.read_text()) for p in sorted(out.glob("results/*/final_info.json"))]
        curves = [json.loads(p.read_text()) for p in sorted(out.glob("results/*/curves.json"))]
    if proc.returncode != 0 or not infos:
        print(proc.stdout[-3000:] + proc.stderr[-3000:])
        print(f"bench/gpu.py: the project failed (exit code {proc.returncode}, {len(infos)} result(s))")
        return 1
    report(infos[0], curves[0] if curves else {}, sampler.samples, wall, args.target)
    return 0


def report(info: dict, curves: dict, samples: list[tuple[float, float]], wall: float, target: float) -> None:
    val = info["metrics"]["val_loss"]
    tps = info["metrics"]["tokens_per_s"]
    print(f"device: {info.get('gpu_name', '?')} ({info.get('device')}, {info.get('precision')})")
    if samples:
        utils = [u for u, _ in samples]
        print(f"GPU utilisation: mean {sum(utils) / len(utils):.0f}%, max {max(utils):.0f}%; "
              f"memory used up to {max(m for _, m in samples):,.0f} MiB ({len(samples)} samples)")
    print(f"tokens/s: {tps['mean']:,.0f} (per seed: {', '.join(f'{v:,.0f}' for v in tps['values'])})")
    steps = int(info.get("config", {}).get("max_steps", 0))
    per_step = info.get("wall_s", wall) / max(1, steps * len(info.get("seeds", [0])))
    crossings = []
    for seed in curves.values():
        curve = seed.get("curve", {})
        hit = next((s for s, v in zip(curve.get("step", []), curve.get("val_loss", []), strict=False) if v <= target), None)
        crossings.append(None if hit is None else hit * per_step)
    reached = [c for c in crossings if c is not None]
    if reached:
        print(f"time to val_loss <= {target}: {sum(reached) / len(reached):.0f} s per seed ({len(reached)}/{len(crossings)} seeds reached it)")
    else:
        print(f"time to val_loss <= {target}: not reached")
    print(f"final val_loss: {val['mean']:.4f} ± {val['stderr']:.4f} nats/char over {len(val['values'])} seeds, after {steps} steps "
          f"(nanoGPT's published figure: ~{NANOGPT_VAL_LOSS}); project wall {wall:.0f} s")


def quick(args: argparse.Namespace) -> int:
    """The template's experiment alone, for ``--steps`` steps: tokens/s and peak GPU memory."""
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
