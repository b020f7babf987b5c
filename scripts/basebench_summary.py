#!/usr/bin/env python3
"""Summarises `gpu_run.sh basebench`: each build's packed embed and forwards-alone tokens/s over
the alternating rounds (best and median), and this build over the base one.

    python3 scripts/basebench_summary.py OUT_DIR MODEL

Reads OUT_DIR/basebench-MODEL-{base,new}-ROUND.json (`esmfuzz bench --report`). Exits 1 when a
build has no report, or a report no row, so an empty comparison never reads as a result.
"""

import glob
import json
import statistics
import sys

MEASURES = ("packed_tokens_per_second", "packed_forward_tokens_per_second")


def rows(out_dir, model, build):
    """One list per measure of every row of every round's report for `build`."""
    paths = sorted(glob.glob(f"{out_dir}/basebench-{model}-{build}-*.json"))
    found = {m: [] for m in MEASURES}
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        for row in report.get("rows", []):
            for m in MEASURES:
                if row.get(m) is not None:
                    found[m].append(float(row[m]))
    return paths, found


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: basebench_summary.py OUT_DIR MODEL")
    out_dir, model = sys.argv[1], sys.argv[2]
    figures = {}
    for build in ("base", "new"):
        paths, found = rows(out_dir, model, build)
        if not paths or not all(found[m] for m in MEASURES):
            print(f"{model}: no {build} figures ({len(paths)} reports in {out_dir})")
            sys.exit(1)
        figures[build] = found
    print(f"{model}: tokens/s over {len(figures['new'][MEASURES[0]])} rounds, best / median")
    for m in MEASURES:
        base, new = figures["base"][m], figures["new"][m]
        name = "embed" if m == MEASURES[0] else "forwards alone"
        print(
            f"  {name:15} base {max(base):12,.0f} / {statistics.median(base):12,.0f}"
            f"   new {max(new):12,.0f} / {statistics.median(new):12,.0f}"
            f"   new/base {max(new) / max(base):.3f} / {statistics.median(new) / statistics.median(base):.3f}"
        )


if __name__ == "__main__":
    main()
