"""Plots nothing of interest: one empty figure file, so the runner's plot step runs sandboxed too."""

import argparse
import os

p = argparse.ArgumentParser()
p.add_argument("--run_dir")
p.add_argument("--out_dir")
a = p.parse_args()
os.makedirs(a.out_dir, exist_ok=True)
with open(os.path.join(a.out_dir, "attacks.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n")
