//! `esmfuzz matmul-check`: what each policy's matrix product really computes.

use anyhow::Result;
use clap::Args;

use esmfuzz::backend::BackendKind;
use esmfuzz::model::matmul_check::{matmul_f64, matmul_relative_error, random_matrix};
use esmfuzz::model::{ComputePlan, Precision};
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
    with_backend!(backend, |B, device| {
        println!(
            "{n} x {n} random matrices, relative L2 error against an f64 product ({backend}):"
        );
        for precision in Precision::ALL {
            let plan = ComputePlan::new(precision, backend);
            let err = matmul_relative_error::<B>(&plan, &a, &b, &exact, n, &device);
            all_finite &= err.is_finite();
            println!("  {:<10} {err:.3e}   ({:?})", precision.name(), plan.matmul);
        }
    });
    Ok(if all_finite {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}
