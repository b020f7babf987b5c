#!/usr/bin/env python3
"""What a kernel change did to the machine code, without a GPU: compiles src/model/FILE.cu at
REV and in the working tree as esmfuzz does (NVRTC, scripts/nvrtc_check.py's options), then
to SASS with ptxas, and prints for each kernel both have: registers, spilled bytes,
instructions in all and in its longest loop (for the flash kernels the key loop: where the
issue slots go), and whether its arithmetic is the same multiset of instructions. A change
that is only meant to move addresses, registers or loads must leave the arithmetic alone:
ptx_compare.py cannot say that once the PTX differs, this can (it is evidence, not proof;
the GPU's bit-for-bit `gpu_run.sh base` step is the proof).

    /tmp/nvrtc-venv/bin/pip install nvidia-cuda-nvcc nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
    /tmp/nvrtc-venv/bin/python scripts/sass_compare.py REV src/model/flash_attention.cu [--only esm_flash_f16]

Exit status 1 when a shared kernel's arithmetic differs, or when they share none.
"""
import argparse
import collections
import os
import pathlib
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import nvrtc_check  # noqa: E402
import ptx_compare  # noqa: E402

# Opcodes that compute or round values (data movement, addresses and control excluded; PRMT
# is byte movement, so bf16 packing may move between it and shifts).
ARITHMETIC = {"FADD", "FMUL", "FFMA", "FMNMX", "FSETP", "FSEL", "MUFU", "F2F", "F2FP", "F2I",
              "I2F", "FRND", "FCHK", "HADD2", "HMUL2", "HFMA2", "HMNMX2", "HSETP2", "HMMA",
              "DADD", "DMUL", "DFMA"}
INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+(?:\.[A-Z0-9_.]+)?)")
BRANCH = re.compile(r"^\s+/\*([0-9a-f]+)\*/.*\bBRA (0x[0-9a-f]+)")
FUNCTION = re.compile(r"^\s+Function : (\w+)", re.M)
RESOURCES = re.compile(r"Compiling entry function '(\w+)'.*?(\d+) bytes spill stores.*?Used (\d+) registers",
                       re.S)


def tool(name: str) -> str:
    root = nvrtc_check.nvidia_root()
    path = root / "bin" / name
    if not path.exists():
        sys.exit(f"{path}: missing: pip install nvidia-cuda-nvcc nvidia-cuda-cuobjdump "
                 "nvidia-cuda-nvdisasm into the NVRTC venv")
    return str(path)


def sass(ptx: str, arch: str, tmp: pathlib.Path, tag: str) -> tuple[dict, dict]:
    """Each kernel's SASS text, and (registers, spilled bytes) from ptxas."""
    src, cubin = tmp / f"{tag}.ptx", tmp / f"{tag}.cubin"
    src.write_text(ptx)
    built = subprocess.run([tool("ptxas"), f"-arch={arch}", "-v", str(src), "-o", str(cubin)],
                           capture_output=True, text=True)
    if built.returncode != 0:
        sys.exit(f"ptxas ({tag}): {built.stderr}")
    resources = {m.group(1): (int(m.group(3)), int(m.group(2)))
                 for m in RESOURCES.finditer(built.stderr)}
    env = dict(os.environ, PATH=f"{pathlib.Path(tool('nvdisasm')).parent}:{os.environ['PATH']}")
    dump = subprocess.run([tool("cuobjdump"), "-sass", str(cubin)], capture_output=True,
                          text=True, env=env, check=True).stdout
    starts = list(FUNCTION.finditer(dump))
    bodies = {m.group(1): dump[m.end():(starts[i + 1].start() if i + 1 < len(starts) else len(dump))]
              for i, m in enumerate(starts)}
    return bodies, resources


def summary(body: str) -> tuple[int, int, collections.Counter]:
    """Instructions in all, in the longest backward branch's span, and the arithmetic ones."""
    instructions, loops = [], []
    for line in body.splitlines():
        if m := INSTRUCTION.match(line):
            instructions.append((int(m.group(1), 16), m.group(2)))
        if m := BRANCH.match(line):
            at, target = int(m.group(1), 16), int(m.group(2), 16)
            if target < at:
                loops.append((at - target, target, at))
    _, first, last = max(loops, default=(0, -1, -1))
    in_loop = sum(1 for at, _ in instructions if first <= at <= last)
    arithmetic = collections.Counter(op for _, op in instructions if op.split(".")[0] in ARITHMETIC)
    return len(instructions), in_loop, arithmetic


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="the git revision to compare with (e.g. HEAD, f51e2aa)")
    ap.add_argument("file", type=pathlib.Path, help="a .cu file of src/model")
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--only", default="", help="kernels whose names start with this")
    a = ap.parse_args()
    nvrtc, options = nvrtc_check.load(a.arch)
    repo, rel = ptx_compare.repository_file(a.file)
    old_ptx = ptx_compare.ptx_at_revision(nvrtc, options, repo, rel, a.rev)
    new_ptx = ptx_compare.compile_ptx(nvrtc, a.file, options)
    with tempfile.TemporaryDirectory() as tmp:
        old, old_res = sass(old_ptx, a.arch, pathlib.Path(tmp), "old")
        new, new_res = sass(new_ptx, a.arch, pathlib.Path(tmp), "new")
    both = sorted(k for k in set(old) & set(new) if k.startswith(a.only))
    if not both:
        print(f"no kernel of {rel} at {a.rev} (starting {a.only!r}) is in the working tree's")
        return 1
    differ = 0
    print(f"{'kernel':28} {'registers':>11} {'spilled B':>11} {'instructions':>13} {'in loop':>11}  arithmetic")
    for k in both:
        (n_old, loop_old, ar_old), (n_new, loop_new, ar_new) = summary(old[k]), summary(new[k])
        (reg_old, spill_old), (reg_new, spill_new) = old_res.get(k, (0, 0)), new_res.get(k, (0, 0))
        same = ar_old == ar_new
        differ += not same
        print(f"{k:28} {reg_old:>4} -> {reg_new:<4} {spill_old:>4} -> {spill_new:<4} "
              f"{n_old:>5} -> {n_new:<5} {loop_old:>4} -> {loop_new:<4}  "
              f"{'same' if same else 'DIFFERS: ' + str(dict((ar_old - ar_new) + (ar_new - ar_old)))}")
    print(f"{len(both) - differ} of {len(both)} shared kernels keep their arithmetic instructions "
          f"at {a.rev} and in the working tree ({a.arch})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
