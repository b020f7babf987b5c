//! Properties 5 and 6: global mean, std, mean L2 norm and outlier counts, and the
//! Kolmogorov-Smirnov distance between reduced and FP32 value distributions.

use esmfuzz::harness::family::Family;
use esmfuzz::harness::strategies::Stratum;
use esmfuzz::harness::verdict::{PropertyId, Selection};
use esmfuzz::model::Precision;

use super::common::check_family;

fn statistics() -> Selection {
    Selection::only(PropertyId::STATISTICS).expect("a non-empty group")
}

#[test]
fn fp16_value_statistics_match_fp32_in_mixed_batches() {
    check_family(
        Family::Mixed(Stratum::Long),
        Precision::F16,
        3,
        statistics(),
    );
}

#[test]
fn bf16_value_statistics_match_fp32_in_mixed_batches() {
    check_family(
        Family::Mixed(Stratum::Long),
        Precision::Bf16,
        3,
        statistics(),
    );
}
