//! Properties 3, 4 and 8: no NaN or Inf in any layer, pooled norms in (1, 1000),
//! determinism, and independence from batch-mates and their order.

use esmfuzz::harness::family::Family;
use esmfuzz::harness::strategies::Stratum;
use esmfuzz::harness::verdict::{PropertyId, Selection};
use esmfuzz::model::Precision;

use super::common::check_family;

fn stability() -> Selection {
    Selection::only(PropertyId::STABILITY).expect("a non-empty group")
}

#[test]
fn fp16_has_no_non_finite_values_and_sane_norms_on_long_inputs() {
    check_family(
        Family::Stratum(Stratum::VeryLong),
        Precision::F16,
        2,
        stability(),
    );
}

#[test]
fn bf16_has_no_non_finite_values_and_sane_norms() {
    check_family(
        Family::Mixed(Stratum::Long),
        Precision::Bf16,
        2,
        stability(),
    );
}

#[test]
fn fp32_is_deterministic_and_independent_of_batch_mates() {
    check_family(
        Family::Isolation(Stratum::Medium),
        Precision::F32,
        3,
        Selection::all(),
    );
}

#[test]
fn fp16_is_deterministic_and_independent_of_batch_mates() {
    check_family(
        Family::Isolation(Stratum::Medium),
        Precision::F16,
        2,
        Selection::all(),
    );
}
