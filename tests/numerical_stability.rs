//! Properties 3, 4 and 8: no NaN or Inf in any layer, pooled norms in (1, 1000),
//! determinism, and independence from batch-mates and their order.

mod common;

use esmfuzz::generate::{Stratum, assert_held, cases, mixed_batch, protein, run_property};
use esmfuzz::model::Precision;
use esmfuzz::props::{Layout, Tolerances, case_result, isolation_case, tightest};
use proptest::strategy::Strategy;

#[test]
fn fp16_has_no_non_finite_values_and_sane_norms_on_long_inputs() {
    common::check_family(
        "stability_very_long",
        Precision::F16,
        Layout::Padded,
        2,
        protein(Stratum::VeryLong).prop_map(|p| vec![p]),
        &["non-finite", "pooled L2 norm"],
    );
}

#[test]
fn bf16_has_no_non_finite_values_and_sane_norms() {
    common::check_family(
        "stability_mixed",
        Precision::Bf16,
        Layout::Padded,
        2,
        mixed_batch(Stratum::Long, 3),
        &["non-finite", "pooled L2 norm"],
    );
}

/// Property 8 for one policy (see [`isolation_case`]).
fn isolated(precision: Precision, default_cases: u32) {
    let model = common::shared_model(precision);
    let tol = Tolerances::for_precision(precision);
    let family = format!("{}__isolation", precision.name());
    let outcome = run_property(
        &family,
        cases(default_cases),
        mixed_batch(Stratum::Medium, 4),
        true,
        |proteins| {
            let verdicts = isolation_case(model, proteins, &tol);
            let worst = tightest(&verdicts).map(|v| v.to_string());
            println!("{family}: smallest margin: {}", worst.unwrap_or_default());
            case_result(&verdicts)
        },
    );
    assert_held(&family, outcome);
}

#[test]
fn fp32_is_deterministic_and_independent_of_batch_mates() {
    isolated(Precision::F32, 3);
}

#[test]
fn fp16_is_deterministic_and_independent_of_batch_mates() {
    isolated(Precision::F16, 2);
}
