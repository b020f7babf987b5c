#!/usr/bin/env python3
"""Compiles esmfuzz's CUDA programs (src/model/*.cu) with NVRTC on a machine without a GPU, as
esmfuzz compiles them at run time (same options), so a syntax or type error shows here
instead of costing a GPU call.

    python3 -m venv /tmp/nvrtc-venv && /tmp/nvrtc-venv/bin/pip install nvidia-cuda-nvrtc nvidia-cuda-runtime
    /tmp/nvrtc-venv/bin/python scripts/nvrtc_check.py [--arch sm_90a] [--ptx-out DIR] [FILE.cu ...]

Exit status 1 when a program does not compile; the NVRTC log is printed either way (warnings).
"""

import argparse
import ctypes
import pathlib
import sys


def nvidia_root() -> pathlib.Path:
    import nvidia  # the pip packages' namespace

    for base in nvidia.__path__:
        for lib in pathlib.Path(base).glob("cu*/lib/libnvrtc.so*"):
            return lib.parent.parent
    sys.exit("libnvrtc not found: pip install nvidia-cuda-nvrtc nvidia-cuda-runtime")


def load(arch: str) -> tuple[ctypes.CDLL, list[bytes]]:
    """The pip NVRTC library and the options esmfuzz compiles with (src/model/nvrtc.rs)."""
    root = nvidia_root()
    nvrtc = ctypes.CDLL(str(next((root / "lib").glob("libnvrtc.so*"))))
    options = [f"--gpu-architecture={arch}".encode(), f"--include-path={root / 'include'}".encode(),
               b"-std=c++17"]
    return nvrtc, options


def compile_program(nvrtc, path: pathlib.Path, options: list[bytes]) -> tuple[bool, str, bytes]:
    program = ctypes.c_void_p()
    source = path.read_bytes()
    check = lambda rc, what: rc == 0 or sys.exit(f"{what} failed: {rc}")
    check(nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, path.name.encode(), 0, None, None), "nvrtcCreateProgram")
    opts = (ctypes.c_char_p * len(options))(*options)
    rc = nvrtc.nvrtcCompileProgram(program, len(options), opts)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    ptx = b""
    if rc == 0:
        nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetPTX(program, buf)
        ptx = buf.value
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return rc == 0, log.value.decode(errors="replace"), ptx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=pathlib.Path)
    parser.add_argument("--arch", default="sm_90a", help="the GPU machine's H100/H200: sm_90a")
    parser.add_argument("--ptx-out", type=pathlib.Path, help="write each program's PTX here")
    args = parser.parse_args()
    repo = pathlib.Path(__file__).resolve().parent.parent
    files = args.files or sorted((repo / "src" / "model").glob("*.cu"))
    if not files:
        sys.exit("no .cu files to compile")
    nvrtc, options = load(args.arch)
    failed = 0
    for path in files:
        # The programs' shared header (storage_types.cuh) lies beside them; esmfuzz hands it
        # to NVRTC in memory.
        here = f"--include-path={path.resolve().parent}".encode()
        ok, log, ptx = compile_program(nvrtc, path, options + [here])
        print(f"{path.name}: {'compiled' if ok else 'FAILED'} ({len(ptx)} bytes of PTX)")
        if log.strip():
            print(log)
        if ok and args.ptx_out:
            args.ptx_out.mkdir(parents=True, exist_ok=True)
            (args.ptx_out / path.with_suffix(".ptx").name).write_bytes(ptx)
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
