//! Properties 1-2 (pooled and per-token cosine, relative-L2 regression bound) of each reduced
//! policy against FP32, by length stratum and in mixed batches, on the real 8M weights.
//! `PROPTEST_CASES` raises the case counts.

use esmfuzz::harness::family::Family;
use esmfuzz::harness::strategies::Stratum;
use esmfuzz::harness::verdict::{PropertyId, Selection};
use esmfuzz::model::Precision;

use super::common::check_family;

fn equivalence() -> Selection {
    Selection::only(PropertyId::EQUIVALENCE).expect("a non-empty group")
}

fn fp16_stratum(s: Stratum, cases: u32) {
    check_family(Family::Stratum(s), Precision::F16, cases, equivalence());
}

#[test]
fn fp16_cosines_hold_for_tiny_sequences() {
    fp16_stratum(Stratum::Tiny, 8);
}

#[test]
fn fp16_cosines_hold_for_short_sequences() {
    fp16_stratum(Stratum::Short, 6);
}

#[test]
fn fp16_cosines_hold_for_medium_sequences() {
    fp16_stratum(Stratum::Medium, 4);
}

#[test]
fn fp16_cosines_hold_for_long_sequences() {
    fp16_stratum(Stratum::Long, 2);
}

#[test]
fn fp16_cosines_hold_for_very_long_sequences() {
    fp16_stratum(Stratum::VeryLong, 1);
}

#[test]
fn fp16_cosines_hold_for_over_length_sequences_after_truncation() {
    fp16_stratum(Stratum::OverLength, 1);
}

#[test]
fn fp16_cosines_hold_in_mixed_batches() {
    check_family(
        Family::Mixed(Stratum::Long),
        Precision::F16,
        3,
        equivalence(),
    );
}

#[test]
fn bf16_cosines_hold_across_strata() {
    check_family(
        Family::UpTo(Stratum::Long),
        Precision::Bf16,
        4,
        equivalence(),
    );
}

#[test]
fn f16_mixed_cosines_hold_in_mixed_batches() {
    check_family(
        Family::Mixed(Stratum::Medium),
        Precision::F16Mixed,
        2,
        equivalence(),
    );
}
