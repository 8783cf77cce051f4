"""Figures of a merging run: per-task accuracy of the fine-tuned vs merged models, and accuracy vs coefficient."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--out_dir", required=True)
    args = ap.parse_args()
    runs = json.loads((Path(args.run_dir) / "curves.json").read_text())
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted(runs)
    tasks = runs[seeds[0]]["tasks"]
    ind = np.array([runs[s]["individual"] for s in seeds])
    mer = np.array([runs[s]["merged_per_task"] for s in seeds])
    pos = np.arange(len(tasks))
    fig, (ax, ax_lam) = plt.subplots(1, 2, figsize=(10, 4))
    ax.bar(pos - 0.2, ind.mean(0), 0.4, yerr=ind.std(0), label="fine-tuned alone")
    ax.bar(pos + 0.2, mer.mean(0), 0.4, yerr=mer.std(0), label="merged")
    ax.set(xticks=pos, xticklabels=["".join(map(str, t)) for t in tasks], xlabel="task (digit classes)",
           ylabel="held-out accuracy", ylim=(0.5, 1.0), title="within-task accuracy")
    ax.legend(loc="lower right")
    for s in seeds:
        if runs[s]["lambda_grid"]:
            ax_lam.plot(runs[s]["lambda_grid"], runs[s]["lambda_test_acc"], marker="o", label=f"seed {s}")
        ax_lam.axhline(runs[s]["pretrained_acc"], ls=":", color="gray")
    ax_lam.set(xlabel="scaling coefficient", ylabel="10-way test accuracy", title="merged model vs coefficient (dotted: pretrained)")
    if any(runs[s]["lambda_grid"] for s in seeds):
        ax_lam.legend()
    fig.tight_layout()
    fig.savefig(out / "merging.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'merging.png'}", flush=True)


if __name__ == "__main__":
    main()
