"""A tiny AI Scientist-format template for the lab's tests: ridge regression by gradient descent on two synthetic datasets.

Run as the AI Scientist runs it: ``python experiment.py --out_dir=run_0``. Everything else is hard-coded.
"""

import argparse
import json
import os
import time

import numpy as np

LR = 0.1
STEPS = 200
SEEDS = [0, 1, 2]
DATASETS = {"line": 0.1, "wave": 0.3}  # name -> label noise


def make_data(name, noise, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(128, 4))
    w = np.array([1.0, -2.0, 0.5, 0.0])
    y = x @ w + (np.sin(3 * x[:, 0]) if name == "wave" else 0) + noise * rng.normal(size=128)
    return x[:96], y[:96], x[96:], y[96:]


def run(name, noise, seed):
    xt, yt, xv, yv = make_data(name, noise, seed)
    w = np.zeros(4)
    start = time.time()
    for _ in range(STEPS):
        w -= LR * 2 * xt.T @ (xt @ w - yt) / len(yt)
    val = xv @ w
    return {
        "final_train_loss": float(np.mean((xt @ w - yt) ** 2)),
        "final_val_loss": float(np.mean((val - yv) ** 2)),
        "val_sign_acc": float(np.mean(np.sign(val) == np.sign(yv))),
        "total_train_time": time.time() - start,
    }


parser = argparse.ArgumentParser()
parser.add_argument("--out_dir", type=str, default="run_0")
args = parser.parse_args()
os.makedirs(args.out_dir, exist_ok=True)

final_infos, all_results = {}, {}
for name, noise in DATASETS.items():
    per_seed = [run(name, noise, s) for s in SEEDS]
    final_info_dict = {k: [r[k] for r in per_seed] for k in per_seed[0]}
    means = {f"{k}_mean": float(np.mean(v)) for k, v in final_info_dict.items()}
    stderrs = {f"{k}_stderr": float(np.std(v) / np.sqrt(len(v))) for k, v in final_info_dict.items()}
    final_infos[name] = {"means": means, "stderrs": stderrs, "final_info_dict": final_info_dict}
    all_results[name] = per_seed

with open(os.path.join(args.out_dir, "final_info.json"), "w") as f:
    json.dump(final_infos, f)
np.save(os.path.join(args.out_dir, "all_results.npy"), all_results)
