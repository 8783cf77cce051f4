"""Training curves of a grokking run: accuracy and loss per seed, train vs validation."""

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
    curves = json.loads((Path(args.run_dir) / "curves.json").read_text())
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (seed, c) in enumerate(sorted(curves.items())):
        color = f"C{i}"
        ax_acc.plot(c["step"], c["train_acc"], color=color, ls="--", alpha=0.7)
        ax_acc.plot(c["step"], c["val_acc"], color=color, label=f"seed {seed}")
        ax_loss.plot(c["step"], c["train_loss"], color=color, ls="--", alpha=0.7)
        ax_loss.plot(c["step"], c["val_loss"], color=color)
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy (dashed: train, solid: validation)", ylim=(0, 1.02))
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(out / "grokking_curves.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'grokking_curves.png'}", flush=True)


if __name__ == "__main__":
    main()
