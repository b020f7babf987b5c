#!/usr/bin/env python3
"""Whether a CUDA program's kernels compile to the same PTX at two revisions: a change that
keeps every kernel's PTX (names of shared arrays and branch labels aside) keeps every value,
shown without a GPU. Compiles src/model/FILE.cu at REV (git show) and in the working tree
with NVRTC, as scripts/nvrtc_check.py does (same options), and compares each kernel both
have; kernels only one side has are listed.

    /tmp/nvrtc-venv/bin/python scripts/ptx_compare.py REV src/model/flash_attention.cu

Exit status 1 when a kernel both have differs, or when they share none.
"""
import argparse
import pathlib
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import nvrtc_check  # noqa: E402

ENTRY = re.compile(r"^\.(?:visible )?\.entry (\w+)\(", re.M)


def kernels(ptx: str) -> dict[str, str]:
    """Each entry's PTX, with the names that move when other kernels are added normalised:
    template-mangled shared arrays and branch labels."""
    out = {}
    for m in ENTRY.finditer(ptx):
        end = ptx.find("\n}\n", m.start())
        body = ptx[m.start():end if end >= 0 else len(ptx)]
        body = re.sub(r"\$L__BB\d+_", "$L__BB_", body)
        body = re.sub(r"_ZZ\w+?E(\d+)(\w+?)\b", lambda x: "SHARED_" + x.group(2), body)
        out[m.group(1)] = body
    return out


def compile_ptx(nvrtc, path: pathlib.Path, options: list[bytes]) -> str:
    here = f"--include-path={path.resolve().parent}".encode()
    ok, log, ptx = nvrtc_check.compile_program(nvrtc, path, options + [here])
    if not ok:
        sys.exit(f"{path}: does not compile:\n{log}")
    return ptx.decode()


def repository_file(file: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """This repository's root and `file` relative to it; exits with the reason when `file` is
    missing or lies outside it."""
    repo = pathlib.Path(__file__).resolve().parent.parent
    if not file.is_file():
        sys.exit(f"{file}: no such file")
    try:
        return repo, file.resolve().relative_to(repo)
    except ValueError:
        sys.exit(f"{file}: not a file of this repository ({repo})")


def ptx_at_revision(nvrtc, options: list[bytes], repo: pathlib.Path, rel: pathlib.Path,
                    rev: str) -> str:
    """The PTX of `rel` (a .cu file of the repository) as it was at `rev`, with the headers
    beside it as they were then."""
    with tempfile.TemporaryDirectory() as tmp:
        old_dir = pathlib.Path(tmp)
        for sibling in [rel] + [p.relative_to(repo) for p in (repo / rel).parent.glob("*.cuh")]:
            text = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{sibling}"],
                                  capture_output=True, check=False)
            if text.returncode == 0:
                (old_dir / sibling.name).write_bytes(text.stdout)
            elif sibling == rel:
                sys.exit(f"{rel} at {rev}: {text.stderr.decode().strip()}")
        return compile_ptx(nvrtc, old_dir / rel.name, options)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="the git revision to compare with (e.g. HEAD~1, f4265f2)")
    ap.add_argument("file", type=pathlib.Path, help="a .cu file of src/model")
    ap.add_argument("--arch", default="sm_90a")
    a = ap.parse_args()
    nvrtc, options = nvrtc_check.load(a.arch)
    repo, rel = repository_file(a.file)
    old = kernels(ptx_at_revision(nvrtc, options, repo, rel, a.rev))
    new = kernels(compile_ptx(nvrtc, a.file, options))
    both = sorted(set(old) & set(new))
    if not both:
        print(f"no kernel of {rel} at {a.rev} is in the working tree's")
        return 1
    differ = [k for k in both if old[k] != new[k]]
    for k in both:
        print(f"{'SAME   ' if k not in differ else 'DIFFERS'} {k}")
    for k in sorted(set(new) - set(old)):
        print(f"new     {k}")
    for k in sorted(set(old) - set(new)):
        print(f"gone    {k}")
    print(f"{len(both) - len(differ)} of {len(both)} shared kernels have the same PTX at {a.rev} "
          f"and in the working tree ({a.arch})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
