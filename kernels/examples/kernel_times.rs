//! Times the CPU kernels on the 8M model's shapes, per storage dtype: the attention kernel on
//! 4 sequences of 256 tokens (320 wide, 20 heads), and the AMX tile products at 1,024 rows
//! (packing `b` per call, and packed once). Best of 20 calls.
//!
//!     cargo run --release -p esmfuzz-kernels --example kernel_times
use std::time::Instant;

use esmfuzz_kernels::amx;
use esmfuzz_kernels::attention::{self, Heads, Rope, Sequence, Statistics};
use esmfuzz_kernels::storage::Dtype;

/// Deterministic values in (-scale, scale), rounded to `dtype`.
fn values(n: usize, seed: usize, scale: f32, dtype: Dtype) -> Vec<f32> {
    (0..n)
        .map(|i| dtype.round((((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0) * scale))
        .collect()
}

/// The best of 20 runs of `f`, in milliseconds.
fn best_ms(mut f: impl FnMut()) -> f64 {
    (0..20)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let dtypes = [Dtype::F32, Dtype::F16, Dtype::Bf16];
    let (hidden, heads, tokens) = (320, 20, 1024);
    let seqs: Vec<Sequence> = (0..4)
        .map(|s| Sequence {
            q_start: 256 * s,
            q_len: 256,
            k_len: 256,
        })
        .collect();
    let inv_freq: Vec<f32> = (0..8).map(|j| 10_000f32.powf(-(j as f32) / 8.0)).collect();
    for dtype in dtypes {
        let qkv = values(tokens * 3 * hidden, 1, 2.0, dtype);
        let rope = Rope::new(&inv_freq, 256, dtype);
        let mut out = vec![0.0f32; tokens * hidden];
        let shape = Heads { hidden, heads };
        let ms = best_ms(|| {
            attention::attention(
                &qkv,
                shape,
                &seqs,
                &rope,
                dtype,
                Statistics::Storage,
                &mut out,
            )
        });
        println!("attention {dtype:?}, 4 x 256 tokens: {ms:.3} ms");
    }
    if !amx::available() {
        println!("no AMX tiles on this CPU: the tile products are not timed");
        return;
    }
    for dtype in [Dtype::F16, Dtype::Bf16] {
        for [k, n] in [[320, 960], [320, 320], [320, 1280], [1280, 320]] {
            let a = values(tokens * k, 2, 1.0, dtype);
            let b = values(k * n, 3, 0.1, dtype);
            let mut out = vec![0.0f32; tokens * n];
            let per_call = best_ms(|| amx::matmul(&a, &b, &mut out, [tokens, k, n], dtype));
            let packed = amx::PackedB::new(&b, [k, n], dtype);
            let once = best_ms(|| amx::matmul_packed(&a, &packed, &mut out));
            println!(
                "tiles {dtype:?} [{tokens}, {k}] x [{k}, {n}]: {per_call:.3} ms packing b, {once:.3} ms packed once"
            );
        }
    }
}
