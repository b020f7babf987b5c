#!/usr/bin/env python3
"""The copies `load_rows_async` issues, before (64a707b: element pointers from the tile's
first row, 64-bit) and after (session 25: 32-bit byte offsets from the sequence's first
row), simulated thread by thread from the CUDA source's arithmetic: every (shared vector ->
global vector or zero-fill) pair must be the same set. Exit 1 on any difference.

    python3 results/sass-s25/loader_copies.py
"""
import itertools
import sys

V = 8  # elements per 16-byte vector


def before(hd, ld, nt, n, stride, row, end, size):
    """64a707b: src = tile's first row (seq + row * stride), valid = end - row."""
    per_row, step_rows = hd // V, nt // (hd // V)
    tile_src, valid = row * stride, end - row
    copies = set()
    for tid in range(nt):
        r0, c = tid // per_row, (tid % per_row) * V
        frm = tile_src + r0 * stride + c
        for j in range(n // step_rows):
            inside = r0 + j * step_rows < valid
            copies.add(((r0 + j * step_rows) * ld + c, frm if inside else None))
            frm += step_rows * stride
    return copies


def after(hd, ld, nt, n, stride, row, end, size):
    """Session 25: base = sequence's first row, unsigned byte offsets (mod 2^32)."""
    per_row, step_rows = hd // V, nt // (hd // V)
    copies = set()
    for tid in range(nt):
        r0, c = tid // per_row, (tid % per_row) * V
        first = row + r0
        step = (step_rows * size * stride) % 2**32
        offset = ((first * stride + c) * size) % 2**32
        for j in range(n // step_rows):
            inside = first + j * step_rows < end
            assert offset % size == 0
            copies.add(((r0 + j * step_rows) * ld + c, offset // size if inside else None))
            offset = (offset + step) % 2**32
    return copies


def main() -> int:
    cases = differ = 0
    for hd, nt, size in itertools.product((16, 32, 64), (64, 128), (2,)):
        ld = hd + 8
        for hidden in (hd * 4, 1280, 2560, 5120):  # heads * hd; 650M, 3B, 15B widths
            stride = 3 * hidden
            for row in (0, 64, 128, 960):
                for end in list(range(row - 3, row + 70)) + [1024]:
                    if end < 1 or end > 1024:
                        continue
                    cases += 1
                    a = before(hd, ld, nt, 64, stride, row, end, size)
                    b = after(hd, ld, nt, 64, stride, row, end, size)
                    if a != b:
                        differ += 1
                        print(f"DIFFERS: hd {hd} nt {nt} stride {stride} row {row} end {end}")
    print(f"{cases - differ} of {cases} cases issue the same copies")
    return 1 if differ or not cases else 0


if __name__ == "__main__":
    sys.exit(main())
