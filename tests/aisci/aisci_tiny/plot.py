"""Bar chart of the validation loss per dataset for every run_* folder here (the AI Scientist's plot.py convention)."""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

labels = {"run_0": "Baseline"}
runs = sorted(d for d in os.listdir(".") if d.startswith("run_") and os.path.exists(os.path.join(d, "final_info.json")))
fig, ax = plt.subplots(figsize=(4, 3))
for i, run in enumerate(runs):
    with open(os.path.join(run, "final_info.json")) as f:
        info = json.load(f)
    names = sorted(info)
    ax.bar([j + 0.3 * i for j in range(len(names))], [info[n]["means"]["final_val_loss_mean"] for n in names], width=0.3, label=labels.get(run, run))
    ax.set_xticks(range(len(names)), names)
ax.set_ylabel("validation loss")
ax.legend()
fig.tight_layout()
fig.savefig("val_loss.png")
