//! Properties 5 and 6: global mean, std, mean L2 norm and outlier counts, and the
//! Kolmogorov-Smirnov distance between reduced and FP32 value distributions.

mod common;

use esmfuzz::generate::{Stratum, mixed_batch};
use esmfuzz::model::Precision;
use esmfuzz::props::Layout;

const STATISTICS: &[&str] = &[
    "mean difference",
    "std",
    "L2 norm relative",
    "outlier",
    "Kolmogorov",
];

#[test]
fn fp16_value_statistics_match_fp32_in_mixed_batches() {
    common::check_family(
        "statistics_mixed",
        Precision::F16,
        Layout::Padded,
        3,
        mixed_batch(Stratum::Long, 4),
        STATISTICS,
    );
}

#[test]
fn bf16_value_statistics_match_fp32_in_mixed_batches() {
    common::check_family(
        "statistics_mixed",
        Precision::Bf16,
        Layout::Padded,
        3,
        mixed_batch(Stratum::Long, 4),
        STATISTICS,
    );
}
