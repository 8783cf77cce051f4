"""Figures of a char_lm run: train and validation loss curves, the LR schedule, and the text samples."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--out_dir", required=True)
    args = ap.parse_args()
    runs = json.loads((Path(args.run_dir) / "curves.json").read_text())
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted(runs, key=int)
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, seed in enumerate(seeds):
        c = runs[seed]["curve"]
        color = f"C{i}"
        ax_loss.plot(c["step"], c["train_loss"], color=color, linestyle="--", label=f"train, seed {seed}")
        ax_loss.plot(c["step"], c["val_loss"], color=color, label=f"val, seed {seed}")
    ax_loss.set(xlabel="step", ylabel="cross-entropy (nats/char)", title="loss curves")
    ax_loss.legend(fontsize=7)
    c = runs[seeds[0]]["curve"]
    ax_lr.plot(c["step"], c["lr"], marker=".")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning-rate schedule (at eval points)")
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)
    # The samples as a figure too, so a paper shows what the model writes next to its loss.
    fig, axes = plt.subplots(len(seeds), 1, figsize=(9, 2.6 * len(seeds)), squeeze=False)
    for ax, seed in zip(axes[:, 0], seeds, strict=True):
        text = "\n".join(runs[seed]["sample"].splitlines()[:12])
        ax.text(0.0, 1.0, text, family="monospace", fontsize=7, va="top", ha="left", transform=ax.transAxes, parse_math=False)
        ax.set_title(f"generated text, seed {seed} (temperature 0.8)", fontsize=9, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "text_samples.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'loss_curves.png'} and {out / 'text_samples.png'}", flush=True)


if __name__ == "__main__":
    main()
