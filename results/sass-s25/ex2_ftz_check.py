#!/usr/bin/env python3
"""What `ex2.approx.ftz` (session 25, f16 P values) removed from the flash kernels' machine
code, against a revision: for every kernel whose arithmetic differs, the difference must be
whole triples of the non-ftz `ex2.approx.f32` range reduction (FSETP.GEU x, -126; @!P FMUL
x, 0.5; MUFU.EX2; @!P FMUL r, r, r), every other arithmetic instruction (MUFU.EX2 and
unpredicated FMUL included) the same multiset, and only f16 kernels may differ (bf16 and f32
keep non-ftz exponentials). Exit 1 otherwise, or when no kernel differs.

    /tmp/nvrtc-venv/bin/python results/sass-s25/ex2_ftz_check.py f75a54e
"""
import collections
import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import nvrtc_check  # noqa: E402
import ptx_compare  # noqa: E402
import sass_compare  # noqa: E402

LINE = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(@!?P\w+\s+)?([A-Z0-9_]+(?:\.[A-Z0-9_.]+)?)(.*?);")


def classified(body: str) -> collections.Counter:
    """Arithmetic opcodes, with the range reduction's three told apart."""
    c = collections.Counter()
    for line in body.splitlines():
        m = LINE.match(line)
        if not m or m.group(2).split(".")[0] not in sass_compare.ARITHMETIC:
            continue
        predicated, op, args = bool(m.group(1)), m.group(2), m.group(3)
        if op == "FSETP.GEU.AND" and "-126" in args:
            op = "range check (FSETP -126)"
        elif op == "FMUL" and predicated:
            op = "range halve (@P FMUL 0.5)" if "0.5" in args else "range square (@P FMUL r, r)"
        c[op] += 1
    return c


def main() -> int:
    rev = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
    rel = pathlib.Path("src/model/flash_attention.cu")
    nvrtc, options = nvrtc_check.load("sm_90a")
    old_ptx = ptx_compare.ptx_at_revision(nvrtc, options, ROOT, rel, rev)
    new_ptx = ptx_compare.compile_ptx(nvrtc, ROOT / rel, options)
    with tempfile.TemporaryDirectory() as tmp:
        old, _ = sass_compare.sass(old_ptx, "sm_90a", pathlib.Path(tmp), "old")
        new, _ = sass_compare.sass(new_ptx, "sm_90a", pathlib.Path(tmp), "new")
    triple = collections.Counter({"range check (FSETP -126)": 1, "range halve (@P FMUL 0.5)": 1,
                                  "range square (@P FMUL r, r)": 1})
    changed = bad = 0
    for k in sorted(set(old) & set(new)):
        a, b = classified(old[k]), classified(new[k])
        if a == b:
            continue
        changed += 1
        removed, added = a - b, b - a
        n = removed["range check (FSETP -126)"]
        # Only the f16 kernels may change: bf16 and f32 keep their exponentials.
        ok = "_f16_" in k and not added and removed == collections.Counter({op: n for op in triple})
        bad += not ok
        print(f"{k:26} {'ok' if ok else 'UNEXPECTED'}: {n} range reductions removed "
              f"(MUFU.EX2 {a['MUFU.EX2']} -> {b['MUFU.EX2']}, FMUL {a['FMUL']} -> {b['FMUL']})"
              + ("" if ok else f"; removed {dict(removed)}, added {dict(added)}"))
    print(f"{changed} kernels differ from {rev}; {changed - bad} only by ex2 range reductions")
    return 1 if bad or not changed else 0


if __name__ == "__main__":
    sys.exit(main())
