//! Properties 1-2 (pooled and per-token cosine, relative-L2 regression bound) of each reduced
//! policy against FP32, by length stratum and in mixed batches, on the real 8M weights.
//! `PROPTEST_CASES` raises the case counts.

mod common;

use esmfuzz::generate::{Stratum, mixed_batch, protein, protein_up_to};
use esmfuzz::model::Precision;
use esmfuzz::props::Layout;
use proptest::strategy::Strategy;

const EQUIVALENCE: &[&str] = &["cosine", "relative L2"];

fn stratum(precision: Precision, s: Stratum, cases: u32) {
    common::check_family(
        &format!("equivalence_{}", s.name()),
        precision,
        Layout::Padded,
        cases,
        protein(s).prop_map(|p| vec![p]),
        EQUIVALENCE,
    );
}

#[test]
fn fp16_cosines_hold_for_tiny_sequences() {
    stratum(Precision::F16, Stratum::Tiny, 8);
}

#[test]
fn fp16_cosines_hold_for_short_sequences() {
    stratum(Precision::F16, Stratum::Short, 6);
}

#[test]
fn fp16_cosines_hold_for_medium_sequences() {
    stratum(Precision::F16, Stratum::Medium, 4);
}

#[test]
fn fp16_cosines_hold_for_long_sequences() {
    stratum(Precision::F16, Stratum::Long, 2);
}

#[test]
fn fp16_cosines_hold_for_very_long_sequences() {
    stratum(Precision::F16, Stratum::VeryLong, 1);
}

#[test]
fn fp16_cosines_hold_for_over_length_sequences_after_truncation() {
    stratum(Precision::F16, Stratum::OverLength, 1);
}

#[test]
fn fp16_cosines_hold_in_mixed_batches() {
    common::check_family(
        "equivalence_mixed",
        Precision::F16,
        Layout::Padded,
        3,
        mixed_batch(Stratum::Long, 4),
        EQUIVALENCE,
    );
}

#[test]
fn bf16_cosines_hold_across_strata() {
    common::check_family(
        "equivalence_up_to_long",
        Precision::Bf16,
        Layout::Padded,
        4,
        protein_up_to(Stratum::Long).prop_map(|p| vec![p]),
        EQUIVALENCE,
    );
}

#[test]
fn f16_mixed_cosines_hold_in_mixed_batches() {
    common::check_family(
        "equivalence_mixed",
        Precision::F16Mixed,
        Layout::Padded,
        2,
        mixed_batch(Stratum::Medium, 4),
        EQUIVALENCE,
    );
}
