#!/usr/bin/env python3
"""Summarises `gpu_run.sh basebench`: each build's packed embed and forwards-alone tokens/s over
the alternating rounds (best and median), and this build over the base one.

    python3 scripts/basebench_summary.py OUT_DIR MODEL

Reads OUT_DIR/basebench-MODEL-{base,new}-ROUND.json (`esmfuzz bench --report`), one summary
per precision. Exits 1 when a build has no figures, or a precision figures of one build only, so
an empty or lopsided comparison never reads as a result.
"""

import glob
import json
import statistics
import sys

MEASURES = ("packed_tokens_per_second", "packed_forward_tokens_per_second")


def rows(out_dir, model, build):
    """Every round's figures for `build`: {(precision, measure): [tokens/s, ...]}."""
    paths = sorted(glob.glob(f"{out_dir}/basebench-{model}-{build}-*.json"))
    found = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            sys.exit(f"{path}: not a readable `esmfuzz bench` report: {e}")
        if not isinstance(report, dict):
            sys.exit(f"{path}: not an `esmfuzz bench` report (a JSON object)")
        for row in report.get("rows", []):
            for m in MEASURES:
                if row.get(m) is not None:
                    found.setdefault((row.get("precision"), m), []).append(float(row[m]))
    return paths, found


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: basebench_summary.py OUT_DIR MODEL")
    out_dir, model = sys.argv[1], sys.argv[2]
    figures = {}
    for build in ("base", "new"):
        paths, found = rows(out_dir, model, build)
        if not found:
            print(f"{model}: no {build} figures ({len(paths)} reports in {out_dir})")
            sys.exit(1)
        figures[build] = found
    # Each precision apart: a bench of several precisions writes one row for each.
    precisions = sorted({p for build in figures.values() for p, _ in build}, key=str)
    missing = [
        (p, m)
        for p in precisions
        for m in MEASURES
        if (p, m) not in figures["base"] or (p, m) not in figures["new"]
    ]
    if missing:
        print(f"{model}: figures missing from one build or both for {missing}")
        sys.exit(1)
    for precision in precisions:
        rounds = len(figures["new"][(precision, MEASURES[0])])
        print(f"{model} {precision}: tokens/s over {rounds} rounds, best / median")
        for m in MEASURES:
            base, new = figures["base"][(precision, m)], figures["new"][(precision, m)]
            name = "embed" if m == MEASURES[0] else "forwards alone"
            print(
                f"  {name:15} base {max(base):12,.0f} / {statistics.median(base):12,.0f}"
                f"   new {max(new):12,.0f} / {statistics.median(new):12,.0f}"
                f"   new/base {max(new) / max(base):.3f}"
                f" / {statistics.median(new) / statistics.median(base):.3f}"
            )


if __name__ == "__main__":
    main()
