"""An AI Scientist-format template that needs a package the lab does not have (labtinydep, built by the tests).

Run as the AI Scientist runs it: ``python experiment.py --out_dir=run_0``.
"""

import argparse
import json
import os

import labtinydep

parser = argparse.ArgumentParser()
parser.add_argument("--out_dir", type=str, default="run_0")
args = parser.parse_args()
os.makedirs(args.out_dir, exist_ok=True)
losses = [labtinydep.loss(seed) for seed in (0, 1, 2)]
info = {"toy": {"means": {"final_val_loss_mean": sum(losses) / 3}, "stderrs": {"final_val_loss_stderr": 0.0},
                "final_info_dict": {"final_val_loss": losses}}}
with open(os.path.join(args.out_dir, "final_info.json"), "w") as f:
    json.dump(info, f)
