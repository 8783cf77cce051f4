"""No figure worth drawing for a test template: writes nothing and succeeds (keeps jobs short)."""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--out_dir", required=True)
    ap.parse_args()


if __name__ == "__main__":
    main()
