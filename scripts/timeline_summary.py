#!/usr/bin/env python3
"""Where one profiled pass leaves the GPU idle: reads `nsys stats` CSV reports of a pass
captured with `nsys profile --capture-range=cudaProfilerApi` (`esmfuzz bench --profile-pass`,
or `scripts/torch_bench.py --profile-pass`) and gives the pass's span, the time the GPU was
busy (the union of its kernels and copies), the idle gaps by size, the largest gaps with the
work on either side, and, from the CUDA API trace, the host's synchronisations and copies to
the host inside the pass (each one stalls the host while the GPU drains).

    python3 scripts/timeline_summary.py GPU_TRACE_CSV [--api API_TRACE_CSV] [--json OUT]

GPU_TRACE_CSV: `nsys stats --report cuda_gpu_trace --format csv`; API_TRACE_CSV: `--report
cuda_api_trace`. Exit status 1 when the trace holds no GPU work.
"""
import argparse
import csv
import io
import json
import sys

# Gap classes, in microseconds: launch latency, host dispatch, host stalls.
BUCKETS = [(0, 5), (5, 20), (20, 100), (100, 1000), (1000, float("inf"))]
# API calls that make the host wait for the device (or copy to the host, which waits).
WAITS = ("Synchronize", "MemcpyDtoH", "Memcpy_DtoH", "cuMemcpyDtoH", "EventSynchronize",
         "StreamQuery", "cudaMemcpy", "cuMemcpy")


def rows_of(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    # nsys may print notes before the header; the header is the first line naming a start time.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "Start" in line and "Duration" in line:
            return list(csv.DictReader(io.StringIO("\n".join(lines[i:]))))
    sys.exit(f"{path}: no CSV header with Start and Duration columns (an nsys stats report?)")


def column(row, *words):
    """The first column whose name contains every word (nsys renames them between versions)."""
    for key in row:
        if key and all(w.lower() in key.lower() for w in words):
            return key
    return None


def start_and_duration(row, start, dur, path, n):
    """A row's start and duration in ns; exits naming the file and data row if not numbers."""
    try:
        return int(float(row[start])), int(float(row[dur]))
    except (TypeError, ValueError):
        sys.exit(f"{path}: data row {n}: start {row.get(start)!r}, duration {row.get(dur)!r} "
                 f"are not numbers")


def intervals(rows, path):
    if not rows:
        sys.exit(f"{path}: no GPU work in the trace (was the pass marked with --profile-pass, "
                 f"and nsys run with --capture-range=cudaProfilerApi?)")
    start, dur, name = column(rows[0], "start"), column(rows[0], "duration"), column(rows[0], "name")
    if not (start and dur and name):
        sys.exit(f"{path}: no Start, Duration and Name columns in {list(rows[0])}")
    out = []
    for n, r in enumerate(rows, start=1):
        if r.get(start) not in (None, ""):
            s, d = start_and_duration(r, start, dur, path, n)
            out.append((s, s + d, r[name]))
    out.sort()
    if not out:
        sys.exit(f"{path}: no GPU work in the trace")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gpu_trace")
    ap.add_argument("--api", help="the cuda_api_trace report of the same capture")
    ap.add_argument("--json")
    ap.add_argument("--top", type=int, default=12, help="largest gaps to list")
    a = ap.parse_args()
    work = intervals(rows_of(a.gpu_trace), a.gpu_trace)
    first, last = work[0][0], max(e for _, e, _ in work)
    busy, gaps, reach, before = 0, [], first, work[0][2]
    for s, e, name in work:
        if s > reach:
            gaps.append((s - reach, before, name, reach))
        busy += max(0, e - max(s, reach))
        if e > reach:
            reach, before = e, name
    span = last - first
    idle = span - busy
    print(f"{len(work)} kernels and copies over {span / 1e6:.2f} ms: GPU busy {busy / 1e6:.2f} ms "
          f"({100 * busy / span:.0f}%), idle {idle / 1e6:.2f} ms in {len(gaps)} gaps")
    print(f"{'gap (us)':<16} {'gaps':>6} {'idle ms':>9} {'share of idle':>14}")
    buckets = []
    for lo, hi in BUCKETS:
        sel = [g for g, *_ in gaps if lo * 1e3 <= g < hi * 1e3]
        label = f"{lo}-{hi:g}" if hi != float("inf") else f">= {lo}"
        buckets.append({"gap_us": label, "gaps": len(sel), "idle_seconds": sum(sel) / 1e9})
        print(f"{label:<16} {len(sel):>6} {sum(sel) / 1e6:>9.2f} "
              f"{100 * sum(sel) / idle if idle else 0:>13.0f}%")
    top = sorted(gaps, reverse=True)[: a.top]
    print(f"\nlargest gaps (at ms into the pass: after -> before)")
    for g, after, nxt, at in top:
        print(f"{g / 1e3:>9.1f} us at {(at - first) / 1e6:>8.2f} ms: {after[:50]} -> {nxt[:50]}")
    waits = []
    if a.api:
        api = rows_of(a.api)
        if api:
            start, dur, name = column(api[0], "start"), column(api[0], "duration"), column(api[0], "name")
            for n, r in enumerate(api, start=1):
                if any(w.lower() in (r[name] or "").lower() for w in WAITS):
                    waits.append((*start_and_duration(r, start, dur, a.api, n), r[name]))
        total = sum(d for _, d, _ in waits)
        print(f"\nhost waits in the capture (synchronisations, copies to the host): {len(waits)}, "
              f"{total / 1e6:.2f} ms")
        for s, d, n in sorted(waits, key=lambda w: -w[1])[:8]:
            print(f"{d / 1e3:>9.1f} us at {(s - first) / 1e6:>8.2f} ms: {n}")
    if a.json:
        json.dump({"work_items": len(work), "span_seconds": span / 1e9, "busy_seconds": busy / 1e9,
                   "idle_seconds": idle / 1e9, "gaps": len(gaps), "buckets": buckets,
                   "largest_gaps": [{"us": g / 1e3, "at_ms": (at - first) / 1e6, "after": x,
                                     "before": y} for g, x, y, at in top],
                   "host_waits": [{"us": d / 1e3, "at_ms": (s - first) / 1e6, "call": n}
                                  for s, d, n in waits]},
                  open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
