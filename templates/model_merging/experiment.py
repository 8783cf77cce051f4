"""Merging MLPs fine-tuned from one pretrained init on disjoint digit classes.

Setting after Ilharco et al. (task arithmetic) and Yadav et al. (TIES), scaled to
scikit-learn's bundled 8x8 digits: an MLP is pretrained briefly on all classes,
then one copy per task fine-tunes its backbone on that task's classes with the
pretrained head frozen (as task arithmetic freezes zero-shot heads). The
backbones are merged by ``--merge_fn`` and the merged model is scored on
held-out digits of every task. Runs standalone: torch, numpy, scikit-learn, stdlib.

Three disjoint held-out splits of the digits (``split_indices``): the scaling
coefficient is always fitted on the ``fit`` digits; ``--split dev`` scores on the
``dev`` digits (what `lab evolve` selects on) and the default, ``--split test``,
on the ``test`` digits (what projects report and what `lab evolve` reads once, at
the end). No split's digits are ever used to choose anything scored on another.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

MERGE_FNS = ("average", "task_arithmetic", "ties", "dare", "magnitude_weighted", "consensus_rescale")
TASK_SPLITS = {
    2: [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]],
    3: [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]],
    5: [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
}
# Adam moves every weight by about the learning rate per step, so its task vectors are flat in magnitude; SGD's
# follow the gradient's magnitude and are heavy-tailed, the regime where trimming and sign election help (template.yaml).
OPTIMIZERS = ("adam", "sgd")
LAMBDA_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5)

# Same names, types and defaults as template.yaml: the runner passes one flag per knob.
KNOBS = {
    "merge_fn": (str, "task_arithmetic"),
    "scaling_coef": (float, 0.4),
    "select_scaling": (bool, True),
    "density": (float, 0.2),
    "num_tasks": (int, 2),
    "hidden_size": (int, 128),
    "pretrain_steps": (int, 30),
    "finetune_steps": (int, 100),
    "finetune_lr": (float, 1e-3),
    "finetune_optimizer": (str, "adam"),
    "batch_size": (int, 64),
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
    ap.add_argument("--split", choices=("fit", "dev", "test"), default="test", help="score on the fit, dev or test digits")
    for name, (kind, default) in KNOBS.items():
        ap.add_argument(f"--{name}", type=parse_bool if kind is bool else kind, default=default)
    args = ap.parse_args()
    if args.merge_fn not in MERGE_FNS:
        ap.error(f"--merge_fn must be one of {MERGE_FNS}")
    if args.finetune_optimizer not in OPTIMIZERS:
        ap.error(f"--finetune_optimizer must be one of {OPTIMIZERS}")
    if args.num_tasks not in TASK_SPLITS:
        ap.error(f"--num_tasks must be one of {sorted(TASK_SPLITS)}")
    return args


class MLP(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# ------------------------------------------------------------------ merge functions
# Each takes the pretrained backbone tensor and the task vectors (fine-tuned minus
# pretrained) of one parameter, and returns the merged task vector before scaling.


def merge_average(tvs: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """Plain weight averaging (a uniform model soup): the mean task vector; scaling is fixed to 1."""
    return tvs.mean(0)


def merge_task_arithmetic(tvs: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """Ilharco et al.: the sum of task vectors."""
    return tvs.sum(0)


def trim(tvs: torch.Tensor, density: float) -> torch.Tensor:
    """Keep each task vector's top-density fraction of entries by magnitude."""
    flat = tvs.reshape(len(tvs), -1)
    k = max(1, int(round(density * flat.shape[1])))
    thresh = flat.abs().topk(k, dim=1).values[:, -1:]
    return (flat * (flat.abs() >= thresh)).reshape(tvs.shape)


# ------------------------------------------------------------------ operators
# The primitives `lab evolve`'s offline mind composes programs from (evolve.yaml lists them). Stage
# operators map stacked task vectors (num_tasks, *shape) to the same shape; reducers map them to one
# merged vector (*shape); post operators map (merged, task vectors) to a merged vector.


def op_trim(tvs: torch.Tensor, density: float) -> torch.Tensor:
    """Trim by magnitude: each task vector keeps its top-``density`` entries."""
    return trim(tvs, density)


def op_elect(tvs: torch.Tensor) -> torch.Tensor:
    """Sign election: zero every entry whose sign disagrees with the sign of the entries' total mass."""
    sign = torch.sign(tvs.sum(0))
    return tvs * (torch.sign(tvs) == sign)


def op_drop(tvs: torch.Tensor, density: float, gen: torch.Generator) -> torch.Tensor:
    """Random drop: keep each entry with probability ``density`` and rescale the survivors by 1/density (DARE)."""
    keep = torch.rand(tvs.shape, generator=gen, device=tvs.device) < density
    return tvs * keep / density


def op_layer_coef(tvs: torch.Tensor) -> torch.Tensor:
    """Per-layer coefficients: scale each task vector of this layer to the layer's mean task-vector norm."""
    norms = tvs.reshape(len(tvs), -1).norm(dim=1).clamp(min=1e-12)
    return tvs * (norms.mean() / norms).reshape(-1, *[1] * (tvs.dim() - 1))


def reduce_sum(tvs: torch.Tensor) -> torch.Tensor:
    """The sum of the task vectors (task arithmetic)."""
    return tvs.sum(0)


def reduce_disjoint_mean(tvs: torch.Tensor) -> torch.Tensor:
    """Per entry, the mean over the task vectors that are non-zero there (TIES' disjoint mean)."""
    return tvs.sum(0) / (tvs != 0).sum(0).clamp(min=1)


def reduce_magnitude(tvs: torch.Tensor) -> torch.Tensor:
    """Per entry, a mix weighted by each task vector's magnitude there, times the number of tasks."""
    w = tvs.abs() / tvs.abs().sum(0).clamp(min=1e-12)
    return len(tvs) * (w * tvs).sum(0)


def post_rescale(merged: torch.Tensor, tvs: torch.Tensor) -> torch.Tensor:
    """Rescale: the merged vector brought to the norm of the plain sum."""
    return merged * (tvs.sum(0).norm() / merged.norm().clamp(min=1e-12))


def post_norm_match(merged: torch.Tensor, tvs: torch.Tensor) -> torch.Tensor:
    """Norm matching: the merged vector brought to the mean norm of the task vectors."""
    return merged * (tvs.reshape(len(tvs), -1).norm(dim=1).mean() / merged.norm().clamp(min=1e-12))


def merge_ties(tvs: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """Yadav et al.: trim, elect a sign per entry by total mass, mean of the entries that agree."""
    t = trim(tvs, args.density)
    sign = torch.sign(t.sum(0))
    agree = (torch.sign(t) == sign) & (t != 0)
    return (t * agree).sum(0) / agree.sum(0).clamp(min=1)


def merge_dare(tvs: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """Yu et al.: drop each entry with probability 1 - density, rescale the rest by 1/density, then sum."""
    keep = torch.rand(tvs.shape, generator=gen, device=tvs.device) < args.density
    return (tvs * keep / args.density).sum(0)


def merge_magnitude_weighted(tvs: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """Lab proposal: per entry, a convex mix of task vectors weighted by their magnitudes.

    The task that moved a weight most gets most of it, so small, noisy updates of
    other tasks do not dilute it; scaled by the number of tasks so that the
    coefficient means the same as in task arithmetic.
    """
    w = tvs.abs()
    w = w / w.sum(0).clamp(min=1e-12)
    return len(tvs) * (w * tvs).sum(0)


def merge_consensus_rescale(tvs: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """Lab proposal: TIES' sign consensus without trimming, rescaled to the norm of the plain sum.

    The disjoint mean drops conflicting mass and shrinks the update; restoring the
    norm of task arithmetic keeps its step size while keeping only agreed directions.
    """
    sign = torch.sign(tvs.sum(0))
    agree = torch.sign(tvs) == sign
    merged = (tvs * agree).sum(0) / agree.sum(0).clamp(min=1)
    return merged * (tvs.sum(0).norm() / merged.norm().clamp(min=1e-12))


# `lab evolve` sets this, by a guarded edit, to a candidate merge algorithm with the signature above;
# when set it replaces --merge_fn's function (the coefficient is still picked on validation data).
EVOLVED_MERGE = None

MERGERS = {
    "average": merge_average,
    "task_arithmetic": merge_task_arithmetic,
    "ties": merge_ties,
    "dare": merge_dare,
    "magnitude_weighted": merge_magnitude_weighted,
    "consensus_rescale": merge_consensus_rescale,
}


def merge(tvs: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """The merge this run uses: the one ``--merge_fn`` names.

    Code-level variants (template.yaml ``variants``) replace this body with a new
    algorithm, so the engineer switches one in by an edit and everything else
    (tasks, seeds, the coefficient chosen on validation data) stays as in the baseline.
    ``lab evolve``'s EVOLVED_MERGE, when set, takes precedence over it.
    """
    return MERGERS[args.merge_fn](tvs, args, gen)


def merged_vector(pre: dict, finetuned: list[dict], args: argparse.Namespace, seed: int) -> dict:
    gen = torch.Generator(device=next(iter(pre.values())).device).manual_seed(seed)
    fn = EVOLVED_MERGE or merge
    return {k: fn(torch.stack([f[k] - pre[k] for f in finetuned]), args, gen) for k in pre}


# ------------------------------------------------------------------ training and scoring


# The digits by role (fractions of all 1797), disjoint and stratified by class. The held-out ones (fit, dev,
# test) are the same digits for every seed, so no seed's dev digits are another seed's test digits; the seed
# draws which of the rest pretrain and which fine-tune.
SPLITS = {"pretrain": 0.25, "finetune": 0.40, "fit": 0.10, "dev": 0.10, "test": 0.15}
HELD_OUT = ("fit", "dev", "test")


def split_indices(y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Disjoint index arrays into the digits, one per role of SPLITS, the same for every merge algorithm of a seed."""
    held = sum(SPLITS[n] for n in HELD_OUT)
    train, rest = train_test_split(np.arange(len(y)), test_size=held, stratify=y, random_state=0)
    out: dict[str, np.ndarray] = {}
    left = held
    for name in HELD_OUT[:-1]:
        out[name], rest = train_test_split(rest, train_size=SPLITS[name] / left, stratify=y[rest], random_state=0)
        left -= SPLITS[name]
    out[HELD_OUT[-1]] = rest
    out["pretrain"], out["finetune"] = train_test_split(
        train, train_size=SPLITS["pretrain"] / (1 - held), stratify=y[train], random_state=seed)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(model: MLP, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor, classes: list[int] | None, steps: int, lr: float, bs: int,
          optimizer: str = "adam") -> int:
    """Adam (or SGD with momentum 0.9) on minibatches; with ``classes`` the loss sees only those logits (the task's head).

    Returns the steps taken."""
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr, momentum=0.9)
    cls = torch.tensor(classes if classes is not None else list(range(10)), device=x.device)
    remap = torch.full((10,), -1, dtype=torch.long, device=x.device)
    remap[cls] = torch.arange(len(cls), device=x.device)
    taken = 0
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(bs, len(x)),), device=x.device)
        logits = model(x[idx])[:, cls]
        loss = F.cross_entropy(logits, remap[y[idx]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        taken += 1
    return taken


@torch.no_grad()
def accuracy(model: MLP, x: torch.Tensor, y: torch.Tensor, classes: list[int] | None = None) -> float:
    """10-way accuracy, or within-task accuracy when ``classes`` restricts the head."""
    logits = model(x)
    if classes is None:
        return (logits.argmax(1) == y).float().mean().item()
    cls = torch.tensor(classes, device=x.device)
    mask = torch.isin(y, cls)
    return (cls[logits[mask][:, cls].argmax(1)] == y[mask]).float().mean().item()


def with_backbone(model: MLP, state: dict) -> MLP:
    model.backbone.load_state_dict(state)
    return model


def run_seed(args: argparse.Namespace, seed: int, device: torch.device) -> dict:
    seed_everything(seed)
    digits = load_digits()
    x_all = (digits.data / 16.0).astype(np.float32)
    y_all = digits.target.astype(np.int64)
    idx = split_indices(y_all, seed)
    t = {f"{w}_{name}": torch.from_numpy(a[idx[name]]).to(device) for name in SPLITS for w, a in (("x", x_all), ("y", y_all))}
    tasks = TASK_SPLITS[args.num_tasks]
    # The split scored; the coefficient is fitted on the fit digits whatever is scored.
    x_ev, y_ev = t[f"x_{args.split}"], t[f"y_{args.split}"]

    model = MLP(args.hidden_size).to(device)
    # Counted as taken, not as configured, so a code change that trains longer records it.
    steps_taken = train(model, list(model.parameters()), t["x_pretrain"], t["y_pretrain"], None, args.pretrain_steps, 1e-3, args.batch_size)
    pre = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
    pretrained_acc = accuracy(model, x_ev, y_ev)

    finetuned, individual = [], []
    for i, classes in enumerate(tasks):
        torch.manual_seed(seed * 1000 + i)
        model.backbone.load_state_dict(pre)
        mask = torch.isin(t["y_finetune"], torch.tensor(classes, device=device))
        steps_taken += train(
            model, list(model.backbone.parameters()), t["x_finetune"][mask], t["y_finetune"][mask], classes,
            args.finetune_steps, args.finetune_lr, args.batch_size, args.finetune_optimizer,
        )
        finetuned.append({k: v.detach().clone() for k, v in model.backbone.state_dict().items()})
        individual.append(accuracy(model, x_ev, y_ev, classes))

    tv = merged_vector(pre, finetuned, args, seed)

    def merged_with(lam: float) -> MLP:
        return with_backbone(model, {k: pre[k] + lam * tv[k] for k in pre})

    if args.merge_fn == "average":
        lam = 1.0  # the mean of the fine-tuned weights, by definition
    elif args.select_scaling:
        # As both Ilharco et al. and Yadav et al. do: the coefficient is picked on held-out data (the fit split).
        # Scored like the test metric: mean within-task accuracy with each task's head.
        lam = max(LAMBDA_GRID, key=lambda c: float(np.mean([accuracy(merged_with(c), t["x_fit"], t["y_fit"], k) for k in tasks])))
    else:
        lam = args.scaling_coef
    merged = merged_with(lam)
    per_task = [accuracy(merged, x_ev, y_ev, c) for c in tasks]
    metrics = {
        "task_acc": float(np.mean(per_task)),
        "merged_acc": accuracy(merged, x_ev, y_ev),
        "acc_gap": float(np.mean(individual) - np.mean(per_task)),
        "individual_acc": float(np.mean(individual)),
    }
    if not all(math.isfinite(v) for v in metrics.values()):
        raise SystemExit(f"seed {seed}: a metric is not finite ({metrics})")
    print(f"seed {seed}: pretrained {pretrained_acc:.3f} merged {metrics['merged_acc']:.3f} task {metrics['task_acc']:.3f} "
          f"individual {metrics['individual_acc']:.3f} lambda {lam}", flush=True)
    # What the merged model does on the fit and dev digits (its predictions, hashed): two merge algorithms with the
    # same behaviour on every seed are one algorithm to `lab evolve`, whatever their code looks like.
    with torch.no_grad():
        preds = torch.cat([merged(t["x_fit"]).argmax(1), merged(t["x_dev"]).argmax(1)]).cpu().numpy().astype(np.int8)
    behaviour = hashlib.sha1(preds.tobytes()).hexdigest()[:16]
    lam_curve = [(c, accuracy(merged_with(c), x_ev, y_ev)) for c in LAMBDA_GRID] if args.merge_fn != "average" else []
    # What this seed spent: the same for every merge function unless the code or a compute knob changes it.
    compute = {
        "parameters": float(sum(p.numel() for p in model.parameters())),
        "optimizer_steps": float(steps_taken),
        "validation_evals": float(len(LAMBDA_GRID) if args.select_scaling and args.merge_fn != "average" else 0),
    }
    detail = {"scaling_coef": float(lam), "tasks": tasks, "individual": individual, "merged_per_task": per_task, "pretrained_acc": pretrained_acc,
              "lambda_grid": [c for c, _ in lam_curve], "lambda_test_acc": [a for _, a in lam_curve]}
    return {"metrics": metrics, "detail": detail, "compute": compute, "behaviour": behaviour}


def summarize(values: list[float]) -> dict:
    n = len(values)
    mean = float(np.mean(values))
    stderr = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": mean, "stderr": stderr, "values": [float(v) for v in values]}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = {seed: run_seed(args, seed, device) for seed in seeds}
    names = list(results[seeds[0]]["metrics"])
    final = {
        "metrics": {m: summarize([results[s]["metrics"][m] for s in seeds]) for m in names},
        "seeds": seeds,
        "config": {k: getattr(args, k) for k in KNOBS},
        "compute": {c: float(np.mean([results[s]["compute"][c] for s in seeds])) for c in results[seeds[0]]["compute"]},
        "device": device.type,
        "split": args.split,
        "evolved_merge": EVOLVED_MERGE is not None,
        "behaviour": [results[s]["behaviour"] for s in seeds],
        "wall_s": round(time.time() - t0, 2),
    }
    (out / "curves.json").write_text(json.dumps({str(s): r["detail"] for s, r in results.items()}))
    (out / "final_info.json").write_text(json.dumps(final, indent=2))
    print(f"done in {final['wall_s']} s: task_acc {final['metrics']['task_acc']['mean']:.4f}", flush=True)


if __name__ == "__main__":
    main()
