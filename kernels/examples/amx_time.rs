//! Times the AMX tile products on the 8M model's shapes (1,024 rows): cargo run --release
//! --example amx_time -p esmfuzz-kernels.
use esmfuzz_kernels::amx;
use esmfuzz_kernels::storage::Dtype;
use std::time::Instant;

fn main() {
    if !amx::available() {
        eprintln!("no AMX here");
        return;
    }
    let m = 1024;
    for dtype in [Dtype::F16, Dtype::Bf16] {
        for [k, n] in [[320, 960], [320, 320], [320, 1280], [1280, 320]] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| dtype.round(((i * 7919) % 1000) as f32 / 1000.0 - 0.5))
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| dtype.round(((i * 104729) % 1000) as f32 / 5000.0 - 0.1))
                .collect();
            let mut out = vec![0.0f32; m * n];
            let (mut whole, mut packed) = (f64::MAX, f64::MAX);
            let b_tiles = amx::PackedB::new(&b, [k, n], dtype);
            for _ in 0..20 {
                let t = Instant::now();
                amx::matmul(&a, &b, &mut out, [m, k, n], dtype);
                whole = whole.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                amx::matmul_packed(&a, &b_tiles, &mut out);
                packed = packed.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{dtype:?} [{m}, {k}] x [{k}, {n}]: {:.3} ms packing b, {:.3} ms packed",
                whole * 1e3,
                packed * 1e3
            );
        }
    }
}
