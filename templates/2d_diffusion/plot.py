"""Figures of a 2-D diffusion run: generated vs held-out real points, and the training loss."""

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
    fig, axes = plt.subplots(1, len(seeds), figsize=(3.5 * len(seeds), 3.5), squeeze=False)
    for ax, seed in zip(axes[0], seeds, strict=True):
        real, gen = np.array(runs[seed]["real"]), np.array(runs[seed]["samples"])
        ax.scatter(real[:, 0], real[:, 1], s=3, alpha=0.4, label="held-out real")
        ax.scatter(gen[:, 0], gen[:, 1], s=3, alpha=0.4, label="generated")
        ax.set(title=f"seed {seed}", xlim=(-3, 3), ylim=(-3, 3), aspect="equal")
    axes[0][0].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for seed in seeds:
        c = runs[seed]["curve"]
        ax.plot(c["step"], c["loss"], label=f"seed {seed}")
    ax.set(xlabel="step", ylabel="denoising MSE (smoothed)", title="training loss", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "train_loss.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'samples.png'} and {out / 'train_loss.png'}", flush=True)


if __name__ == "__main__":
    main()
