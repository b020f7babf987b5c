#!/usr/bin/env python3
"""Where one esmfuzz pass spends its GPU time: sums an `ncu --csv` log of one profiled pass
(`esmfuzz bench --profile-pass padded|packed` under `ncu --profile-from-start off --metrics
gpu__time_duration.sum --csv`) by kernel class and by kernel, and sets the sum beside the
pass's wall time (measured without the profiler) to give the host gap. The same for torch's
anchors (`scripts/torch_bench.py --profile-pass`, one mode per log): the classes name torch's
attention and torch.compile's Triton kernels apart.

    python3 scripts/profile_summary.py NCU_CSV [--wall-seconds S] [--forwards-wall-seconds S]
        [--json OUT]
"""
import argparse
import csv
import io
import json
import re
import sys
from collections import defaultdict

UNITS = {"nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3,
         "second": 1.0, "s": 1.0}

# Kernel classes by name, first match wins (cuBLAS kernels are named by CUTLASS/xmma).
CLASSES = [
    # Attention first: FlashAttention's and SDPA's kernel names carry cutlass:: template types.
    ("flash attention (esmfuzz)", re.compile(r"esm_flash", re.I)),
    # torch's varlen_attn (FlashAttention's kernels) and SDPA's attention kernels.
    ("flash attention (torch)", re.compile(r"flash_fwd|fmha|flash_attn|attention", re.I)),
    ("cuBLAS GEMM", re.compile(r"gemm|xmma|cutlass|nvjet|sm90_|sm80_|cublas", re.I)),
    ("bias + GELU (esmfuzz)", re.compile(r"esm_bias_gelu", re.I)),
    ("attention pre-pass (esmfuzz: bias, rotary)", re.compile(r"esm_rope", re.I)),
    # torch.compile's generated kernels: pointwise (triton_poi_), reductions such as LayerNorm
    # (triton_per_, triton_red_); named after the ops they fuse.
    ("torch.compile Triton, reduction", re.compile(r"^triton_(per|red)_", re.I)),
    ("torch.compile Triton, pointwise", re.compile(r"^triton_", re.I)),
    ("torch ATen kernels (eager)", re.compile(r"at::native", re.I)),
    ("softmax", re.compile(r"softmax", re.I)),
    ("reduction (LayerNorm stats, sums)", re.compile(r"reduce|mean|sum_dim|norm", re.I)),
    ("gather/select/scatter", re.compile(r"select|gather|scatter|index", re.I)),
    ("copy / layout (contiguous, cat, slice)", re.compile(r"contiguous|copy|cat|slice|into_|permute|reshape|memcpy", re.I)),
    ("fused elementwise (burn-fusion)", re.compile(r"fuse|elemwise|elementwise|trace", re.I)),
    ("cast", re.compile(r"cast|convert", re.I)),
]


def classify(name):
    for label, pattern in CLASSES:
        if pattern.search(name):
            return label
    return "other"


def read_rows(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    # ncu prints its own lines (==PROF== ...) before the CSV header.
    start = text.find('"ID"')
    if start < 0:
        sys.exit(f"{path}: no ncu CSV header (\"ID\",...) found")
    for row in csv.DictReader(io.StringIO(text[start:])):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = UNITS.get(row.get("Metric Unit", "nsecond").strip(), None)
        if unit is None:
            sys.exit(f"{path}: unknown unit {row.get('Metric Unit')!r}")
        value = float(row["Metric Value"].replace(",", ""))
        yield row["Kernel Name"], value * unit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--wall-seconds", type=float, help="the pass's wall time without profiler")
    ap.add_argument("--forwards-wall-seconds", type=float,
                    help="the forwards alone's wall time without profiler (esmfuzz's packed "
                         "pass has both: the embed path pools and fetches every batch)")
    ap.add_argument("--json")
    args = ap.parse_args()
    by_class = defaultdict(lambda: [0, 0.0])
    by_kernel = defaultdict(lambda: [0, 0.0])
    for name, seconds in read_rows(args.csv):
        short = name.split("(")[0][:90]
        for table, key in ((by_class, classify(name)), (by_kernel, short)):
            table[key][0] += 1
            table[key][1] += seconds
    launches = sum(c for c, _ in by_class.values())
    total = sum(t for _, t in by_class.values())
    if launches == 0:
        sys.exit(f"{args.csv}: no kernel was profiled (was the pass marked with --profile-pass?)")
    print(f"{launches} kernels, {total * 1e3:.1f} ms of GPU time in the profiled pass")
    for label, wall in (("wall", args.wall_seconds),
                        ("forwards alone, wall", args.forwards_wall_seconds)):
        if wall:
            print(f"{label} {wall * 1e3:.1f} ms: GPU busy {100 * total / wall:.0f}%, "
                  f"idle {(wall - total) * 1e3:.1f} ms (host dispatch, synchronisation)")
    print(f"{'class':<42} {'kernels':>8} {'ms':>9} {'share':>6}")
    for label, (count, seconds) in sorted(by_class.items(), key=lambda kv: -kv[1][1]):
        print(f"{label:<42} {count:>8} {seconds * 1e3:>9.2f} {100 * seconds / total:>5.1f}%")
    print(f"\n{'top kernels':<92} {'n':>6} {'ms':>9}")
    for name, (count, seconds) in sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[:15]:
        print(f"{name:<92} {count:>6} {seconds * 1e3:>9.2f}")
    if args.json:
        json.dump({"kernels": launches, "gpu_seconds": total, "wall_seconds": args.wall_seconds,
                   "forwards_wall_seconds": args.forwards_wall_seconds,
                   "by_class": {k: {"kernels": c, "seconds": t} for k, (c, t) in by_class.items()},
                   "top_kernels": {k: {"kernels": c, "seconds": t} for k, (c, t) in
                                   sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[:40]}},
                  open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
