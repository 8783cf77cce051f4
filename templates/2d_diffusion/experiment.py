"""A small DDPM learns 2-D point clouds; samples are scored against held-out real points.

Runs standalone in a bare folder (the lab's job runner calls it), so it imports
only torch, numpy, scikit-learn and the standard library.

Resumable: with ``LAB_CHECKPOINT_DIR`` set, the training state (model, EMA,
optimizer, RNG) is saved there every ``LAB_CHECKPOINT_EVERY`` steps and on
SIGTERM, and a later run with the same configuration and seeds continues from
it, so a preempted job does not start over.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import make_circles, make_moons
from torch import nn
from torch.nn import functional as F

DATASETS = ("moons", "circles", "spiral", "line")
CHECKPOINT_NAME = "2d_diffusion.pt"
EXIT_PREEMPTED = 143  # 128 + SIGTERM
SCHEDULES = ("linear", "cosine", "quadratic")
PREDICTIONS = ("eps", "x0")

# Same names, types and defaults as template.yaml: the runner passes one flag per knob.
KNOBS = {
    "dataset": (str, "moons"),
    "num_timesteps": (int, 100),
    "beta_schedule": (str, "linear"),
    "prediction": (str, "eps"),
    "hidden_size": (int, 128),
    "num_layers": (int, 3),
    "embedding_size": (int, 64),
    "lr": (float, 1e-3),
    "batch_size": (int, 256),
    "num_train_steps": (int, 2500),
    "ema_decay": (float, 0.0),
    "num_samples": (int, 1000),
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    for name, (kind, default) in KNOBS.items():
        ap.add_argument(f"--{name}", type=kind, default=default)
    args = ap.parse_args()
    for name, allowed in (("dataset", DATASETS), ("beta_schedule", SCHEDULES), ("prediction", PREDICTIONS)):
        if getattr(args, name) not in allowed:
            ap.error(f"--{name} must be one of {allowed}")
    return args


def make_points(name: str, n: int, seed: int) -> np.ndarray:
    """n points of a 2-D dataset, standardised to zero mean and unit variance per axis."""
    rng = np.random.default_rng(seed)
    if name == "moons":
        x, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
    elif name == "circles":
        x, _ = make_circles(n_samples=n, noise=0.03, factor=0.5, random_state=seed)
    elif name == "spiral":
        # Two interleaved Archimedean spirals (r proportional to the angle).
        t = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
        arm = rng.integers(0, 2, n) * np.pi
        x = np.stack([t * np.cos(t + arm), t * np.sin(t + arm)], 1) + rng.normal(0, 0.2, (n, 2))
    else:  # line: a segment with small orthogonal noise, a near-degenerate density
        u = rng.uniform(-1, 1, n)
        x = np.stack([u, 0.5 * u], 1) + rng.normal(0, 0.02, (n, 2))
    x = (x - x.mean(0)) / x.std(0)
    return x.astype(np.float32)


def betas_for(schedule: str, t: int) -> torch.Tensor:
    if schedule == "linear":  # Ho et al. 2020, rescaled so the end point does not depend on t
        scale = 1000 / t
        return torch.linspace(scale * 1e-4, min(0.999, scale * 0.02), t)
    if schedule == "quadratic":
        scale = 1000 / t
        return torch.linspace(math.sqrt(scale * 1e-4), math.sqrt(min(0.999, scale * 0.02)), t) ** 2
    # cosine: Nichol & Dhariwal 2021, alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2)
    s = 0.008
    steps = torch.arange(t + 1, dtype=torch.float64) / t
    abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999).float()


def sinusoidal(x: torch.Tensor, size: int, scale: float) -> torch.Tensor:
    half = size // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / max(1, half - 1))
    args = scale * x[..., None] * freqs
    return torch.cat([args.sin(), args.cos()], -1)


class Denoiser(nn.Module):
    """Residual MLP on sinusoidal embeddings of the two coordinates and the timestep."""

    def __init__(self, hidden: int, layers: int, emb: int) -> None:
        super().__init__()
        self.emb = emb
        self.inp = nn.Linear(3 * emb, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.GELU()) for _ in range(layers))
        self.out = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Coordinates get a high-frequency embedding so a small MLP can draw thin structures.
        h = torch.cat([sinusoidal(x[:, 0], self.emb, 25.0), sinusoidal(x[:, 1], self.emb, 25.0), sinusoidal(t.float(), self.emb, 1.0)], -1)
        h = self.inp(h)
        for block in self.blocks:
            h = h + block(h)
        return self.out(F.gelu(h))


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)) -> float:
    """Biased squared MMD with a sum of RBF kernels (Gretton et al. 2012); 0 iff the samples match."""
    xy = torch.cat([x, y])
    d2 = torch.cdist(xy, xy).pow(2)
    k = sum(torch.exp(-d2 / (2 * b * b)) for b in bandwidths)
    n = len(x)
    return float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())


def chamfer(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean nearest-neighbour distance, both ways: mode dropping and stray samples both raise it."""
    d = torch.cdist(x, y)
    return float(0.5 * (d.min(1).values.mean() + d.min(0).values.mean()))


class Checkpoints:
    """One file in LAB_CHECKPOINT_DIR, replaced atomically; SIGTERM asks the loop to save and stop."""

    def __init__(self, fingerprint: dict) -> None:
        where = os.environ.get("LAB_CHECKPOINT_DIR")
        self.path = Path(where) / CHECKPOINT_NAME if where else None
        self.every = int(os.environ.get("LAB_CHECKPOINT_EVERY", "500"))
        self.fingerprint = fingerprint
        self.stop = False
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: object) -> None:
        self.stop = True

    def load(self) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            print(f"checkpoint {self.path} is for another configuration; starting from scratch", flush=True)
            return None
        return state

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")  # hidden: the runner's upload skips dotfiles
        torch.save({**state, "fingerprint": self.fingerprint}, tmp)
        os.replace(tmp, self.path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def sample(model: nn.Module, n: int, betas: torch.Tensor, prediction: str, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) with the posterior variance."""
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([torch.ones(1, device=device), abar[:-1]])
    x = torch.randn(n, 2, generator=gen, device=device)
    for t in reversed(range(len(betas))):
        tt = torch.full((n,), t, device=device)
        out = model(x, tt)
        x0 = out if prediction == "x0" else (x - (1 - abar[t]).sqrt() * out) / abar[t].sqrt()
        x0 = x0.clamp(-6, 6)
        mean = (abar_prev[t].sqrt() * betas[t] * x0 + alphas[t].sqrt() * (1 - abar_prev[t]) * x) / (1 - abar[t])
        if t > 0:
            var = betas[t] * (1 - abar_prev[t]) / (1 - abar[t])
            x = mean + var.sqrt() * torch.randn(n, 2, generator=gen, device=device)
        else:
            x = mean
    return x


def run_seed(args: argparse.Namespace, seed: int, device: torch.device, ckpt: Checkpoints | None = None,
             done: dict | None = None, resume: dict | None = None) -> dict:
    seed_everything(seed)
    train = torch.from_numpy(make_points(args.dataset, 8000, seed)).to(device)
    # Held-out points come from an independent draw of the same generator.
    real = torch.from_numpy(make_points(args.dataset, args.num_samples, 10_000 + seed)).to(device)
    betas = betas_for(args.beta_schedule, args.num_timesteps).to(device)
    abar = torch.cumprod(1 - betas, 0)
    model = Denoiser(args.hidden_size, args.num_layers, args.embedding_size).to(device)
    ema = Denoiser(args.hidden_size, args.num_layers, args.embedding_size).to(device)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    curve: dict[str, list[float]] = {"step": [], "loss": []}
    running, tail, start = 0.0, [], 1
    if resume is not None:
        for obj, key in ((model, "model"), (ema, "ema"), (opt, "opt"), (sched, "sched")):
            obj.load_state_dict(resume[key])
        running, tail, curve, start = resume["running"], resume["tail"], resume["curve"], resume["step"]
        torch.set_rng_state(resume["rng"])  # the batches and noise continue exactly where they stopped

    def state(step: int) -> dict:
        return {"done": done or {}, "seed": seed, "step": step, "model": model.state_dict(), "ema": ema.state_dict(),
                "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": torch.get_rng_state(),
                "running": running, "tail": tail, "curve": curve}

    for step in range(start, args.num_train_steps + 1):
        if ckpt is not None and ckpt.stop:
            ckpt.save(state(step))
            print(f"SIGTERM: saved a checkpoint at seed {seed} step {step}", flush=True)
            raise SystemExit(EXIT_PREEMPTED)
        if ckpt is not None and step > start and step % ckpt.every == 0:
            ckpt.save(state(step))
        x0 = train[torch.randint(0, len(train), (args.batch_size,), device=device)]
        t = torch.randint(0, args.num_timesteps, (args.batch_size,), device=device)
        eps = torch.randn_like(x0)
        xt = abar[t].sqrt()[:, None] * x0 + (1 - abar[t]).sqrt()[:, None] * eps
        loss = F.mse_loss(model(xt, t), x0 if args.prediction == "x0" else eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            if args.ema_decay > 0:
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - args.ema_decay)
        running = loss.item() if step == 1 else 0.98 * running + 0.02 * loss.item()
        if step > 0.9 * args.num_train_steps:
            tail.append(loss.item())
        if step % 50 == 0 or step == args.num_train_steps:
            curve["step"].append(step)
            curve["loss"].append(running)
        if step % 1000 == 0:
            print(f"seed {seed} step {step}: loss {running:.4f}", flush=True)
    net = ema if args.ema_decay > 0 else model
    net.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    samples = sample(net, args.num_samples, betas, args.prediction, gen, device)
    metrics = {
        "mmd": mmd_rbf(samples, real),
        "chamfer": chamfer(samples, real),
        "train_loss": float(np.mean(tail)),
    }
    if not all(math.isfinite(v) for v in metrics.values()):
        raise SystemExit(f"seed {seed}: a metric is not finite ({metrics})")
    print(f"seed {seed}: mmd {metrics['mmd']:.5f} chamfer {metrics['chamfer']:.4f}", flush=True)
    compute = {"parameters": float(sum(p.numel() for p in model.parameters())), "optimizer_steps": float(args.num_train_steps),
               "examples_seen": float(args.num_train_steps * args.batch_size),
               "sampling_steps": float(args.num_timesteps * args.num_samples)}
    return {"metrics": metrics, "curve": curve, "samples": samples.cpu().tolist(), "real": real.cpu().tolist(), "compute": compute}


CURVE_POINTS = 40  # points per curve kept in final_info.json (curves.json keeps every evaluation)


def compact_curves(per_seed: dict[int, dict[str, list[float]]], names: list[str]) -> dict[str, dict]:
    """A few points of each curve for final_info.json, so the analyst can tell a run that had not settled or that collapsed.

    ``curves[name]``: [step, mean over seeds] at evenly spaced evaluations (the last always kept);
    ``seed_curves[name][seed]``: [step, value] at the same evaluations plus each seed's best and worst one,
    so a peak between kept points is not lost.
    """
    def keep(n: int) -> list[int]:
        return sorted({round(k * (n - 1) / (CURVE_POINTS - 1)) for k in range(CURVE_POINTS)}) if n > CURVE_POINTS else list(range(n))

    curves: dict[str, list] = {}
    seed_curves: dict[str, dict] = {}
    for name in names:
        per = {s: (c["step"], c[name]) for s, c in per_seed.items() if c.get(name)}
        if not per:
            continue
        common = sorted(set.intersection(*(set(steps) for steps, _ in per.values())))
        at = [dict(zip(steps, values, strict=True)) for steps, values in per.values()]
        curves[name] = [[common[k], float(np.mean([a[common[k]] for a in at]))] for k in keep(len(common))]
        seed_curves[name] = {}
        for s, (steps, values) in per.items():
            idx = set(keep(len(values))) | {int(np.argmax(values)), int(np.argmin(values))}
            seed_curves[name][str(s)] = [[steps[k], float(values[k])] for k in sorted(idx)]
    return {"curves": curves, "seed_curves": seed_curves}


def summarize(values: list[float]) -> dict:
    n = len(values)
    mean = float(np.mean(values))
    stderr = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": mean, "stderr": stderr, "values": [float(v) for v in values]}


def mean_compute(per_seed: list[dict]) -> dict:
    """The compute each seed's run used, averaged over seeds (what final_info.json's ``compute`` holds)."""
    return {k: float(np.mean([c[k] for c in per_seed])) for k in per_seed[0]}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # The code is part of the identity: a retry whose code a mind edited must not load this one's state.
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    ckpt = Checkpoints({"config": {k: getattr(args, k) for k in KNOBS}, "seeds": seeds, "code": code})
    saved = ckpt.load()
    results: dict = dict(saved["done"]) if saved else {}
    if saved:
        where = f"seed {saved['seed']}" if saved["seed"] is not None else "the next seed"
        resumed = f"resumed at step {saved['step']} of {where} ({len(results)} seeds already done)"
        print(resumed, flush=True)
    for seed in seeds:
        if seed not in results:
            resume = saved if saved and saved["seed"] == seed else None
            results[seed] = run_seed(args, seed, device, ckpt, results, resume)
            ckpt.save({"done": results, "seed": None, "step": 0})  # a preemption between seeds redoes none
    names = list(results[seeds[0]]["metrics"])
    final = {
        "metrics": {m: summarize([results[s]["metrics"][m] for s in seeds]) for m in names},
        "seeds": seeds,
        "config": {k: getattr(args, k) for k in KNOBS},
        "compute": mean_compute([results[s]["compute"] for s in seeds]),
        "device": device.type,
        "wall_s": round(time.time() - t0, 2),
        **compact_curves({s: results[s]["curve"] for s in seeds}, ["loss"]),
    }
    if saved:
        final["resumed_at_step"] = saved["step"]
        final["resumed"] = resumed
    curves = {str(s): {"curve": r["curve"], "samples": r["samples"], "real": r["real"]} for s, r in results.items()}
    (out / "curves.json").write_text(json.dumps(curves))
    (out / "final_info.json").write_text(json.dumps(final, indent=2))
    print(f"done in {final['wall_s']} s: mmd {final['metrics']['mmd']['mean']:.5f}", flush=True)


if __name__ == "__main__":
    main()
