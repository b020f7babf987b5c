//! `esmfuzz matmul-check`: what each policy's matrix product really computes.

use anyhow::Result;
use clap::Args;

use esmfuzz::backend::BackendKind;
use esmfuzz::harness::matmul_check::{
    layout_differences, matmul_f64, matmul_relative_error, random_matrix,
};
use esmfuzz::model::{ComputePlan, Gemm, Precision, resolve_gemm};
use esmfuzz::with_backend;

use super::{Outcome, named};

#[derive(Args, Debug)]
pub struct MatmulCheckArgs {
    /// Backend.
    #[arg(long, value_parser = named::<BackendKind>(), default_value = "cpu")]
    pub backend: BackendKind,
    /// Matrix size n (products of n x n matrices).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=16384))]
    pub size: u64,
}

pub fn run(args: MatmulCheckArgs) -> Result<Outcome> {
    let n = args.size as usize;
    let (a, b) = (random_matrix(n, 1), random_matrix(n, 2));
    let exact = matmul_f64(&a, &b, n);
    let backend = args.backend;
    let mut all_finite = true;
    let mut layouts_agree = true;
    with_backend!(backend, |B, device| {
        println!(
            "{n} x {n} random matrices, relative L2 error against an f64 product ({backend}):"
        );
        let engines: Vec<Gemm> = Gemm::ALL
            .into_iter()
            .filter(|&g| resolve_gemm(Some(g), backend).is_ok())
            .collect();
        for precision in Precision::ALL {
            for &gemm in &engines {
                let plan = ComputePlan::new(precision, backend).with_gemm(gemm)?;
                let err = matmul_relative_error::<B>(&plan, &a, &b, &exact, n, &device);
                all_finite &= err.is_finite();
                let how = match gemm {
                    Gemm::Burn => format!("{:?}", plan.matmul),
                    Gemm::Cublas => "cuBLAS".to_string(),
                };
                println!(
                    "  {:<10} {:<7} {err:.3e}   ({how})",
                    precision.name(),
                    gemm.name()
                );
            }
        }
        // cuBLAS reads burn's strides itself: every layout the model produces must give
        // burn's true-f32 product (f32 rounding apart).
        if engines.contains(&Gemm::Cublas) {
            println!("cuBLAS f32 against burn's true f32 (split) on the model's operand layouts:");
            let reference = ComputePlan::new(Precision::F32, backend).with_gemm(Gemm::Burn)?;
            let plan = reference.with_gemm(Gemm::Cublas)?;
            for (name, diff) in layout_differences::<B>(&plan, &reference, &device) {
                let ok = diff < 1e-5;
                layouts_agree &= ok;
                println!(
                    "  {name:<55} {diff:.3e} {}",
                    if ok { "ok" } else { "WRONG" }
                );
            }
        }
    });
    Ok(if all_finite && layouts_agree {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}
