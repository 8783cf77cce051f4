"""Grokking on modular arithmetic: a small transformer learns a ∘ b mod p.

Runs standalone in a bare folder (the lab's job runner calls it), so it imports
only torch, numpy and the standard library. Every seed is trained in turn; the
lab compares configurations over seeds, so all metrics are per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

OPERATIONS = ("x+y", "x-y", "x*y", "x/y")
SCHEDULES = ("constant", "cosine")

# Same names, types and defaults as template.yaml: the runner passes one flag per knob.
KNOBS = {
    "lr": (float, 3e-3),
    "weight_decay": (float, 1.0),
    "beta2": (float, 0.98),
    "train_fraction": (float, 0.6),
    "num_steps": (int, 2000),
    "prime": (int, 31),
    "operation": (str, "x+y"),
    "d_model": (int, 64),
    "num_layers": (int, 1),
    "num_heads": (int, 4),
    "dropout": (float, 0.0),
    "warmup_steps": (int, 10),
    "lr_schedule": (str, "constant"),
    "eval_every": (int, 25),
}


def parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    for name, (kind, default) in KNOBS.items():
        ap.add_argument(f"--{name}", type=parse_bool if kind is bool else kind, default=default)
    args = ap.parse_args()
    if args.operation not in OPERATIONS:
        ap.error(f"--operation must be one of {OPERATIONS}")
    if args.lr_schedule not in SCHEDULES:
        ap.error(f"--lr_schedule must be one of {SCHEDULES}")
    return args


def make_dataset(p: int, operation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (a, b) as the sequence [a, op, b, =] and the answer c."""
    op_tok, eq_tok = p, p + 1
    xs, ys = [], []
    for a in range(p):
        for b in range(p):
            if operation == "x+y":
                c = (a + b) % p
            elif operation == "x-y":
                c = (a - b) % p
            elif operation == "x*y":
                c = (a * b) % p
            else:  # x/y: a * b^-1, defined only for b != 0 (p is prime)
                if b == 0:
                    continue
                c = (a * pow(b, p - 2, p)) % p
            xs.append([a, op_tok, b, eq_tok])
            ys.append(c)
    return torch.tensor(xs), torch.tensor(ys)


class Block(nn.Module):
    """Pre-LN attention + MLP block; attention written out because sequences are 4 tokens long."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise SystemExit(f"d_model {d} is not divisible by num_heads {heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        # The answer is read at '=' only, so the last block needs only that query:
        # less compute, which is what makes grokking fit a CPU budget.
        if last_only:
            q, x = q[:, -1:], x[:, -1:]
        att = torch.einsum("bqhe,bkhe->bhqk", q, k).mul(1.0 / math.sqrt(d // self.heads)).softmax(-1)
        out = torch.einsum("bhqk,bkhe->bqhe", self.drop(att), v).reshape(b, q.shape[1], d)
        x = x + self.drop(self.proj(out))
        return x + self.drop(self.mlp(self.ln2(x)))


class Transformer(nn.Module):
    """A decoder-free, pre-LN transformer reading 4 tokens and predicting the answer at '='."""

    def __init__(self, vocab: int, n_out: int, d: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(4, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos
        for i, block in enumerate(self.blocks):
            h = block(h, last_only=i == len(self.blocks) - 1)
        return self.head(self.ln(h[:, -1]))


def lr_factor(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then constant or cosine decay to zero.

    Constant is the classic grokking setting (Power et al.); cosine decay damps
    Adam's late loss spikes but also freezes the memorising solution, which is
    itself a finding the lab may test.
    """
    warm = min(1.0, (step + 1) / max(1, args.warmup_steps))
    if args.lr_schedule == "constant":
        return warm
    progress = min(1.0, step / max(1, args.num_steps))
    return warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).float().mean().item()


def run_seed(args: argparse.Namespace, seed: int, device: torch.device) -> dict:
    seed_everything(seed)
    x, y = make_dataset(args.prime, args.operation)
    perm = torch.randperm(len(x))
    n_train = max(1, min(len(x) - 1, int(round(args.train_fraction * len(x)))))
    tr, va = perm[:n_train], perm[n_train:]
    xtr, ytr, xva, yva = x[tr].to(device), y[tr].to(device), x[va].to(device), y[va].to(device)
    model = Transformer(args.prime + 2, args.prime, args.d_model, args.num_layers, args.num_heads, args.dropout).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, args.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args))
    curve: dict[str, list[float]] = {"step": [], "train_loss": [], "train_acc": [], "val_loss": [], "val_acc": []}
    steps_to_val_99 = float(args.num_steps)  # never reached within the run
    for step in range(1, args.num_steps + 1):
        # Full-batch training, as in Power et al.'s small-data setting with few examples.
        loss = F.cross_entropy(model(xtr), ytr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.num_steps:
            tl, ta = evaluate(model, xtr, ytr)
            vl, vacc = evaluate(model, xva, yva)
            for k, v in zip(curve, (step, tl, ta, vl, vacc), strict=True):
                curve[k].append(float(v))
            if vacc >= 0.99 and steps_to_val_99 == float(args.num_steps):
                steps_to_val_99 = float(step)
            if step % (args.eval_every * 10) == 0 or step == args.num_steps:
                print(f"seed {seed} step {step}: train_acc {ta:.3f} val_acc {vacc:.3f} val_loss {vl:.3f}", flush=True)
    metrics = {
        "val_acc": curve["val_acc"][-1],
        "train_acc": curve["train_acc"][-1],
        "val_loss": curve["val_loss"][-1],
        "train_loss": curve["train_loss"][-1],
        "steps_to_val_99": steps_to_val_99,
    }
    if not all(math.isfinite(v) for v in metrics.values()):
        raise SystemExit(f"seed {seed}: a metric is not finite ({metrics})")
    # Full-batch steps: every step sees the whole training split.
    compute = {"parameters": float(sum(p.numel() for p in model.parameters())), "optimizer_steps": float(args.num_steps),
               "train_examples": float(n_train), "examples_seen": float(args.num_steps * n_train)}
    return {"metrics": metrics, "curve": curve, "compute": compute}


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
    results = {}
    for seed in seeds:
        results[seed] = run_seed(args, seed, device)
    names = list(results[seeds[0]]["metrics"])
    final = {
        "metrics": {m: summarize([results[s]["metrics"][m] for s in seeds]) for m in names},
        "seeds": seeds,
        "config": {k: getattr(args, k) for k in KNOBS},
        "compute": mean_compute([results[s]["compute"] for s in seeds]),
        "device": device.type,
        "wall_s": round(time.time() - t0, 2),
        **compact_curves({s: results[s]["curve"] for s in seeds}, ["val_acc", "train_acc", "val_loss", "train_loss"]),
    }
    (out / "curves.json").write_text(json.dumps({str(s): results[s]["curve"] for s in seeds}))
    (out / "final_info.json").write_text(json.dumps(final, indent=2))
    print(f"done in {final['wall_s']} s: val_acc {final['metrics']['val_acc']['mean']:.3f}", flush=True)


if __name__ == "__main__":
    main()
