#!/usr/bin/env python3
"""Checks src/model/flash_attention.cu on its own, on the GPU machine: compiled with NVRTC
through CuPy, against attention in float64 (torch) on random varlen batches, f16 and bf16,
head dims 16/32/64, packed and padded (k_len < q_len); then times it against torch's SDPA on
a 650M-shaped packed batch. Prints one line per case and exits non-zero on a failure.

    python3 scripts/flash_check.py [--time] [--src other_version.cu]
"""
import argparse
import math
import os
import sys

import cupy as cp
import torch

SRC = os.path.join(os.path.dirname(__file__), "..", "src", "model", "flash_attention.cu")
BQ = 64
DTYPE_NAMES = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32"}


def module(src=SRC):
    major, minor = torch.cuda.get_device_capability()
    arch = f"-arch=sm_{major}{minor}{'a' if major >= 9 else ''}"
    include = os.environ.get("CUDA_PATH", "/usr/local/cuda") + "/include"
    return cp.RawModule(code=open(src).read(), options=(arch, f"-I{include}", "-std=c++17"),
                        backend="nvrtc")


def rope_table(inv_freq, positions=1024):
    p = torch.arange(positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cat([p.cos(), p.sin()], dim=1).contiguous()


def rotate(x, pos, inv_freq):
    # x: [n, heads, hd] float64, pos: [n]; ESM rotate_half with f32 angles
    ang = (pos.float()[:, None] * inv_freq[None, :]).double()
    cos = torch.cat([ang.cos(), ang.cos()], 1)[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], 1)[:, None, :]
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def reference(qkv, q_start, q_len, k_len, heads, inv_freq):
    rows, width = qkv.shape
    hidden = width // 3
    hd = hidden // heads
    x = qkv.double().view(rows, 3, heads, hd)
    out = torch.zeros(rows, hidden, dtype=torch.float64, device=qkv.device)
    for s, ql, kl in zip(q_start, q_len, k_len):
        pos_q = torch.arange(ql, device=qkv.device)
        q = rotate(x[s:s + ql, 0], pos_q, inv_freq) / math.sqrt(hd)
        k = rotate(x[s:s + kl, 1], pos_q[:kl], inv_freq)
        v = x[s:s + kl, 2]
        scores = torch.einsum("qhd,khd->hqk", q, k)
        p = scores.softmax(-1)
        out[s:s + ql] = torch.einsum("hqk,khd->qhd", p, v).reshape(ql, hidden)
    return out


def run(mod, qkv, q_start, q_len, k_len, heads, inv_freq):
    rows, width = qkv.shape
    hidden = width // 3
    hd = hidden // heads
    tile_seq, tile_row0, row_pos = [], [], []
    for s, ql in enumerate(q_len):
        for r0 in range(0, ql, BQ):
            tile_seq.append(s)
            tile_row0.append(r0)
        row_pos.extend(range(ql))
    meta = torch.tensor(tile_seq + tile_row0 + q_start + q_len + k_len + row_pos,
                        dtype=torch.int32, device="cuda")
    row_pos_ptr = meta.data_ptr() + 4 * (2 * len(tile_seq) + 3 * len(q_len))
    table = rope_table(inv_freq.cpu()).cuda()
    out = torch.full((rows, hidden), float("nan"), dtype=qkv.dtype, device="cuda")
    qk = torch.full((rows, 2 * hidden), float("nan"), dtype=qkv.dtype, device="cuda")
    suffix = f"{DTYPE_NAMES[qkv.dtype]}_hd{hd}"
    rope_qk = mod.get_function(f"esm_rope_qk_{suffix}")
    flash = mod.get_function(f"esm_flash_{suffix}")
    rope_args = (cp.uint64(qkv.data_ptr()), cp.int32(rows), cp.int32(hidden), cp.uint64(qk.data_ptr()),
                 cp.uint64(row_pos_ptr), cp.uint64(table.data_ptr()), cp.float32(hd ** -0.5))
    flash_args = (cp.uint64(qkv.data_ptr()), cp.uint64(qk.data_ptr()), cp.int32(hidden),
                  cp.uint64(out.data_ptr()), cp.uint64(meta.data_ptr()), cp.int32(len(tile_seq)),
                  cp.int32(len(q_len)))

    def launch():
        rope_qk(((rows * hidden + 255) // 256,), (256,), rope_args)
        flash((len(tile_seq), heads, 1), (128, 1, 1), flash_args)

    launch()
    torch.cuda.synchronize()
    return out, launch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--src", default=SRC, help="kernel source to check (default: the crate's)")
    args = ap.parse_args()
    print(f"kernel: {os.path.relpath(args.src)}")
    mod = module(args.src)
    torch.manual_seed(0)
    failures = 0
    cases = [
        ("packed 3,64,130,1", [3, 64, 130, 1], None),
        ("packed 200,7,513", [200, 7, 513], None),
        ("padded 3 of 64, 64 of 64", [64, 64], [3, 64]),
        ("padded 17 of 128, 100 of 128", [128, 128], [17, 100]),
    ]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtypes = [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)]
    try:
        mod.get_function("esm_flash_f32_hd64")
        dtypes.append((torch.float32, 1e-5))
    except Exception:
        print("no f32 kernel in this source: f16 and bf16 only")
    for dtype, tol in dtypes:
        for hd, heads in ((16, 20), (32, 20), (64, 20)):
            inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            for name, q_len, k_len in cases:
                k_len = k_len or q_len
                q_start = [sum(q_len[:i]) for i in range(len(q_len))]
                rows = sum(q_len)
                qkv = (torch.randn(rows, 3 * heads * hd, device="cuda") * 1.5).to(dtype)
                got, _ = run(mod, qkv, q_start, q_len, k_len, heads, inv_freq.cuda())
                want = reference(qkv, q_start, q_len, k_len, heads, inv_freq.cuda())
                err = ((got.double() - want).norm() / want.norm()).item()
                ok = err <= tol and torch.isfinite(got).all().item()
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {str(dtype)[6:]:9} hd{hd:<3} {name:32} rel L2 {err:.3e} (bound {tol:g})")
    if args.time:
        # A 650M-shaped packed batch of the corpus's lengths: 16,384 tokens, 20 heads of 64.
        lens = [1024, 700, 512, 400, 300, 300, 250, 200, 200, 180, 150, 150, 120, 100, 100, 90,
                80, 64, 64, 50, 40, 30, 30, 20]
        while sum(lens) < 16384 - 300:
            lens += [300, 200, 120, 60]
        for dtype, _ in dtypes:
            time_one(mod, lens, dtype)
    print(f"{failures} failed")
    sys.exit(1 if failures else 0)


def time_one(mod, lens, dtype):
    """Times the kernel against torch SDPA (padded to the longest) on `lens` in `dtype`."""
    heads, hd = 20, 64
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    q_start = [sum(lens[:i]) for i in range(len(lens))]
    qkv = torch.randn(sum(lens), 3 * heads * hd, device="cuda", dtype=dtype)
    _, launch = run(mod, qkv, q_start, lens, lens, heads, inv_freq.cuda())
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    for _ in range(3):
        launch()
    ev[0].record()
    for _ in range(20):
        launch()
    ev[1].record()
    torch.cuda.synchronize()
    ms = ev[0].elapsed_time(ev[1]) / 20
    flops = sum(4 * l * l * hd * heads for l in lens)
    # torch SDPA on the same sequences, padded to the longest (what HF runs).
    import torch.nn.functional as F
    L = max(lens)
    q = torch.randn(len(lens), heads, L, hd, device="cuda", dtype=dtype)
    mask = torch.zeros(len(lens), 1, 1, L, dtype=torch.bool, device="cuda")
    for i, l in enumerate(lens):
        mask[i, ..., :l] = True
    for _ in range(3):
        F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    ev[0].record()
    for _ in range(20):
        F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    ev[1].record()
    torch.cuda.synchronize()
    sdpa = ev[0].elapsed_time(ev[1]) / 20
    print(f"time {DTYPE_NAMES[dtype]}: {len(lens)} sequences, {sum(lens)} tokens: flash kernel "
          f"{ms:.3f} ms ({flops / ms / 1e9:.1f} TFLOP/s useful); torch SDPA padded to {L}: "
          f"{sdpa:.3f} ms")


if __name__ == "__main__":
    main()
