#!/usr/bin/env python3
"""Compares embeddings (.npy, one row per record) with the first file given: identical bit for
bit, or how many values differ, the largest absolute difference and the smallest row cosine.

    python3 scripts/compare_npy.py BASE.npy OTHER.npy [OTHER.npy ...] [--expect-identical N]

--expect-identical N: exit 1 unless the first N others are bit-identical to BASE (the rest are
reported only).
"""

import argparse
import sys

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("others", nargs="+")
    parser.add_argument("--expect-identical", type=int, default=0)
    args = parser.parse_args()
    base = np.load(args.base)
    status = 0
    for i, path in enumerate(args.others):
        other = np.load(path)
        if other.shape != base.shape:
            print(f"{path}: shape {other.shape} != {base.shape}")
            status = 1
            continue
        if base.tobytes() == other.tobytes():
            print(f"{path}: IDENTICAL to {args.base} ({base.size} values)")
            continue
        a, b = base.astype(np.float64), other.astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        print(
            f"{path}: DIFFERS from {args.base}: {int((a != b).sum())} of {a.size} values, "
            f"max |diff| {np.abs(a - b).max():.3e}, min row cosine {cos.min():.9f}"
        )
        if i < args.expect_identical:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
