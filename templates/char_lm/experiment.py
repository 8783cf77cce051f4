"""A small GPT (nanoGPT-style) learns character-level Shakespeare; val loss is the score.

Runs standalone in a bare folder (the lab's job runner calls it), so it imports
only torch, numpy and the standard library. The text ships next to this file
(``shakespeare.txt``, see README.md for where it comes from): nothing is
downloaded at run time.

Three things beyond a plain training loop, each because the lab needs it:

* Device at run time: CUDA when present (bf16 autocast, fp16 with a grad
  scaler where bf16 is missing), else CPU in float32.
* ``torchrun``: with ``WORLD_SIZE > 1`` the model is wrapped in
  DistributedDataParallel (NCCL on GPUs, gloo on CPU); every rank draws its own
  batches and rank 0 alone writes the outputs.
* Preemption: with ``LAB_CHECKPOINT_DIR`` set, the state is saved there every
  ``LAB_CHECKPOINT_EVERY`` steps and when SIGTERM arrives, and a later run with
  the same configuration resumes from it. Batches are drawn from a generator
  reseeded from (seed, rank, step), so a resumed CPU run sees exactly the
  batches an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SCHEDULES = ("cosine", "linear", "constant")
DATA = Path(__file__).resolve().parent / "shakespeare.txt"
CHECKPOINT_NAME = "char_lm.pt"
SAMPLE_CHARS = 400
EXIT_PREEMPTED = 143  # 128 + SIGTERM: the conventional "terminated" status

# Same names, types and defaults as template.yaml: the runner passes one flag per knob.
KNOBS = {
    "n_layer": (int, 3),
    "n_head": (int, 4),
    "n_embd": (int, 128),
    "dropout": (float, 0.0),
    "block_size": (int, 128),
    "batch_size": (int, 16),
    "lr": (float, 1e-3),
    "lr_schedule": (str, "cosine"),
    "warmup_steps": (int, 50),
    "min_lr_ratio": (float, 0.1),
    "max_steps": (int, 500),
    "weight_decay": (float, 0.1),
    "beta2": (float, 0.99),
    "grad_clip": (float, 1.0),
    "eval_batches": (int, 20),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    for name, (kind, default) in KNOBS.items():
        ap.add_argument(f"--{name}", type=kind, default=default)
    args = ap.parse_args(argv)
    if args.lr_schedule not in SCHEDULES:
        ap.error(f"--lr_schedule must be one of {SCHEDULES}")
    if args.n_embd % args.n_head:
        ap.error(f"--n_embd ({args.n_embd}) must be a multiple of --n_head ({args.n_head})")
    return args


# ----------------------------------------------------------------------------- the model


class SelfAttention(nn.Module):
    """Multi-head causal self-attention (PyTorch's fused kernel where it has one)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok = nn.Embedding(vocab, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.tok.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init)
        # GPT-2: scale the residual projections by 1/sqrt(2 * depth) so deep stacks start stable.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n: int, temperature: float, gen: torch.Generator) -> torch.Tensor:
        for _ in range(n):
            logits, _ = self(idx[:, -self.block_size :])
            probs = F.softmax(logits[:, -1, :].float() / temperature, dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=gen)], dim=1)
        return idx


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (linear and embedding weights); never biases or layer-norm gains."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine/linear decay to lr * min_lr_ratio at max_steps (or constant)."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    if args.lr_schedule == "constant":
        return args.lr
    progress = min(1.0, (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if args.lr_schedule == "cosine" else 1 - progress
    low = args.lr * args.min_lr_ratio
    return low + (args.lr - low) * shape


# ----------------------------------------------------------------------------- data and evaluation


class Corpus:
    def __init__(self, path: Path = DATA) -> None:
        text = path.read_text(encoding="ascii")
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        data = torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        n = int(0.9 * len(data))  # the last 10% (whole plays' ends) is held out
        self.splits = {"train": data[:n], "val": data[n:]}

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def batch(self, split: str, b: int, t: int, gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.splits[split]
        ix = torch.randint(len(data) - t - 1, (b,), generator=gen)
        chunk = data[ix[:, None] + torch.arange(t + 1)]
        return chunk[:, :-1].to(device, non_blocking=True), chunk[:, 1:].to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: nn.Module, corpus: Corpus, args: argparse.Namespace, device: torch.device, amp: Any) -> dict[str, float]:
    """Mean loss on the same fixed batches every time, so curve points differ only by the model."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        gen = torch.Generator().manual_seed(1234)
        losses = []
        for _ in range(args.eval_batches):
            x, y = corpus.batch(split, args.batch_size, args.block_size, gen, device)
            with amp():
                _, loss = model(x, y)
            losses.append(float(loss))
        out[split] = float(np.mean(losses))
    model.train()
    return out


# ----------------------------------------------------------------------------- checkpoints and preemption


class Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


class Checkpoints:
    """One file in LAB_CHECKPOINT_DIR, replaced atomically; ignored when the configuration differs."""

    def __init__(self, fingerprint: dict[str, Any]) -> None:
        where = os.environ.get("LAB_CHECKPOINT_DIR")
        self.path = Path(where) / CHECKPOINT_NAME if where else None
        self.every = int(os.environ.get("LAB_CHECKPOINT_EVERY", "200"))
        self.fingerprint = fingerprint

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            print(f"checkpoint {self.path} is for another configuration; starting from scratch", flush=True)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")  # hidden: the runner's upload skips dotfiles
        torch.save({**state, "fingerprint": self.fingerprint}, tmp)
        os.replace(tmp, self.path)


# ----------------------------------------------------------------------------- training


class Dist:
    """Rank, world size and device, from torchrun's environment (a single process without it)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1:
            torch.distributed.init_process_group("nccl" if cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def should_stop(self, requested: bool) -> bool:
        """True on every rank once any rank got SIGTERM, so all stop at the same step boundary
        (a rank that stopped alone would leave the others blocked in an all-reduce)."""
        if self.world == 1:
            return requested
        flag = torch.tensor([1.0 if requested else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def close(self) -> None:
        if self.world > 1:
            torch.distributed.destroy_process_group()


def autocast_for(device: torch.device) -> tuple[Any, str]:
    if device.type != "cuda":
        return contextlib.nullcontext, "float32"
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), str(dtype).removeprefix("torch.")


def run_seed(args: argparse.Namespace, seed: int, corpus: Corpus, dist: Dist, ckpt: Checkpoints, stop: Preemption,
             done: dict[int, dict], resume: dict[str, Any] | None) -> dict[str, Any]:
    device = dist.device
    torch.manual_seed(seed)
    model = GPT(len(corpus.chars), args.block_size, args.n_layer, args.n_head, args.n_embd, args.dropout).to(device)
    amp, amp_dtype = autocast_for(device)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, args.beta2), fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == "float16")
    curve: dict[str, list[float]] = {"step": [], "train_loss": [], "val_loss": [], "lr": []}
    start, train_time, tokens = 0, 0.0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        scaler.load_state_dict(resume["scaler"])
        curve, start, train_time, tokens = resume["curve"], resume["step"], resume["train_time"], resume["tokens"]
        if dist.main:
            torch.set_rng_state(resume["rng"])  # dropout continues exactly where it stopped
        else:
            torch.manual_seed(seed * 1_000_003 + dist.rank * 7919 + start)
    elif dist.world > 1:
        torch.manual_seed(seed * 1_000_003 + dist.rank)  # dropout masks differ across ranks
    net = torch.nn.parallel.DistributedDataParallel(model) if dist.world > 1 else model
    eval_every = max(1, args.max_steps // 10)
    gen = torch.Generator()

    def state(step: int) -> dict[str, Any]:
        return {"done": done, "seed": seed, "step": step, "model": model.state_dict(), "opt": opt.state_dict(),
                "scaler": scaler.state_dict(), "rng": torch.get_rng_state(), "curve": curve,
                "train_time": train_time, "tokens": tokens}

    for step in range(start, args.max_steps):
        if dist.should_stop(stop.requested):
            if dist.main:
                ckpt.save(state(step))
                print(f"SIGTERM: saved a checkpoint at seed {seed} step {step}", flush=True)
            raise SystemExit(EXIT_PREEMPTED)
        if dist.main and step > start and step % ckpt.every == 0:
            ckpt.save(state(step))
        if step % eval_every == 0:
            losses = evaluate(model, corpus, args, device, amp)
            curve["step"].append(step)
            curve["train_loss"].append(losses["train"])
            curve["val_loss"].append(losses["val"])
            curve["lr"].append(lr_at(step, args))
            if dist.main:
                print(f"seed {seed} step {step}: train {losses['train']:.4f} val {losses['val']:.4f}", flush=True)
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        gen.manual_seed(seed * 1_000_003 + dist.rank * 7919 + step)
        x, y = corpus.batch("train", args.batch_size, args.block_size, gen, device)
        with amp():
            _, loss = net(x, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.grad_clip > 0:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        tokens += args.batch_size * args.block_size * dist.world
    final = evaluate(model, corpus, args, device, amp)
    curve["step"].append(args.max_steps)
    curve["train_loss"].append(final["train"])
    curve["val_loss"].append(final["val"])
    curve["lr"].append(lr_at(args.max_steps - 1, args))
    if not all(math.isfinite(v) for v in final.values()):
        raise SystemExit(f"seed {seed}: the loss is not finite ({final})")
    sample = ""
    if dist.main:
        model.eval()
        prompt = torch.tensor([[corpus.stoi["\n"]]], device=device)
        with amp():
            ids = model.generate(prompt, SAMPLE_CHARS, 0.8, torch.Generator(device=device).manual_seed(seed))
        sample = corpus.decode(ids[0, 1:].tolist())
        print(f"seed {seed}: val {final['val']:.4f} train {final['train']:.4f}", flush=True)
    return {
        "metrics": {"val_loss": final["val"], "train_loss": final["train"], "tokens_per_s": tokens / max(train_time, 1e-9)},
        "curve": curve,
        "sample": sample,
        "tokens": tokens,
        "amp_dtype": amp_dtype,
    }


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


def compute_used(args: argparse.Namespace, vocab: int, tokens: float) -> dict[str, float]:
    """Parameters, training tokens and a FLOPs estimate: 6N per token plus attention (Kaplan et al. 2020)."""
    n_params = sum(p.numel() for p in GPT(vocab, args.block_size, args.n_layer, args.n_head, args.n_embd, 0.0).parameters())
    per_token = 6 * n_params + 12 * args.n_layer * args.n_embd * args.block_size
    return {"params": float(n_params), "tokens": float(tokens), "flops": float(per_token * tokens)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist = Dist()
    if dist.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Corpus()
    config = {k: getattr(args, k) for k in KNOBS}
    # The code is part of the identity: a retry whose code a mind edited must not load this one's state.
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    ckpt = Checkpoints({"config": config, "seeds": seeds, "world": dist.world, "code": code})
    stop = Preemption()
    saved = ckpt.load()
    done: dict[int, dict] = dict(saved["done"]) if saved else {}
    resumed_at = None
    if saved:
        where = f"seed {saved['seed']}" if saved["seed"] is not None else "the next seed"
        resumed_at = {"step": saved["step"], "text": f"resumed at step {saved['step']} of {where} ({len(done)} seeds already done)"}
        if dist.main:
            print(resumed_at["text"], flush=True)
    t0 = time.time()
    for seed in seeds:
        if seed in done:
            continue
        resume = saved if saved and saved["seed"] == seed else None
        done[seed] = run_seed(args, seed, corpus, dist, ckpt, stop, done, resume)
        if dist.main:  # a preemption between seeds does not redo a finished one
            ckpt.save({"done": done, "seed": None, "step": 0})
    if dist.main:
        first = done[seeds[0]]
        total_tokens = sum(done[s]["tokens"] for s in seeds)
        final = {
            "metrics": {m: summarize([done[s]["metrics"][m] for s in seeds]) for m in first["metrics"]},
            "seeds": seeds,
            "config": config,
            "device": dist.device.type,
            "precision": first["amp_dtype"],
            "world_size": dist.world,
            # Per seed, as final_info.json's compute is: an arm that ran more seeds did not get more compute per run.
            "compute": compute_used(args, len(corpus.chars), total_tokens / len(seeds)),
            "samples": {str(s): done[s]["sample"] for s in seeds},
            "determinism": "CPU runs are bit-reproducible per seed" if dist.device.type == "cpu"
            else "GPU kernels (cuBLAS/cuDNN, atomics in attention backward) are not deterministic: reruns of a seed differ slightly",
            "wall_s": round(time.time() - t0, 2),
            **compact_curves({s: done[s]["curve"] for s in seeds}, ["val_loss", "train_loss"]),
        }
        if dist.device.type == "cuda":
            final["gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(dist.device) / 2**20, 1)
            final["gpu_name"] = torch.cuda.get_device_name(dist.device)
        if resumed_at is not None:
            final["resumed_at_step"] = resumed_at["step"]
            final["resumed"] = resumed_at["text"]
        curves = {str(s): {"curve": done[s]["curve"], "sample": done[s]["sample"]} for s in seeds}
        (out / "curves.json").write_text(json.dumps(curves))
        (out / "final_info.json").write_text(json.dumps(final, indent=2))
        print(f"done in {final['wall_s']} s: val_loss {final['metrics']['val_loss']['mean']:.4f}", flush=True)
    dist.close()


if __name__ == "__main__":
    sys.exit(main())
