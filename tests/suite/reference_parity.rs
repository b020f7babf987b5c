//! The FP32 model is ESM-2: on the CPU it reproduces HF transformers' FP32 outputs for the
//! real corpus, and the reduced policies' distance from it is measured and bounded.

use esmfuzz::harness::metrics::compare_states;
use esmfuzz::harness::reference::{
    REFERENCE_FIRST_TOKENS, REFERENCE_POOLED, ReferenceParity, compare_with_reference,
};
use esmfuzz::model::Precision;

use super::common;

/// FP16 pooled cosine floor against this project's FP32. torch's own FP16 reaches 0.999997
/// on an H100 on this corpus; this CPU path measured 0.999987; 0.9999 catches a 10x
/// degradation of the error (1 - cos).
const F16_MIN_POOLED_COSINE: f64 = 0.9999;
/// BF16 pooled cosine floor. torch's BF16 reaches 0.99970 on the same corpus on an H100;
/// this CPU path measured 0.99975 (bf16 storage, f32-accumulated gemm), so 0.999 leaves a 4x
/// margin on the error (1 - cos) while catching a 10x degradation.
const BF16_MIN_POOLED_COSINE: f64 = 0.999;

fn parity(states: &[Vec<f32>]) -> ReferenceParity {
    let hidden = common::weights().config.hidden_size;
    let (pooled_shape, pooled) = common::read_npy_f32(&common::shared(REFERENCE_POOLED));
    assert_eq!(pooled_shape, vec![common::corpus().len(), hidden]);
    let (first_shape, first) = common::read_npy_f32(&common::shared(REFERENCE_FIRST_TOKENS));
    compare_with_reference(states, &pooled, &first, first_shape[1], hidden)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn fp32_matches_the_hf_reference_pooled_and_per_token_for_every_corpus_sequence() {
    let p = parity(common::fp32_corpus_states());
    println!("FP32 vs HF: {p:?}");
    let failed: Vec<String> = p
        .verdicts()
        .iter()
        .filter(|v| !v.passed)
        .map(|v| v.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "FP32 departs from HF (worst record {}, {}):\n{}",
        p.pooled_cosine_argmin,
        common::corpus()[p.pooled_cosine_argmin].name,
        failed.join("\n")
    );
}

#[test]
fn parity_with_the_hf_reference_fails_when_one_record_is_nan() {
    let mut states = common::fp32_corpus_states().clone();
    let hidden = common::weights().config.hidden_size;
    states[100][hidden + 3] = f32::NAN;
    assert!(!parity(&states).passed(), "a NaN record passed HF parity");
}

fn reduced_against_fp32(precision: Precision, min_pooled: f64) {
    let hidden = common::weights().config.hidden_size;
    let states = common::corpus_states(precision);
    let c = compare_states(states, common::fp32_corpus_states(), hidden);
    println!(
        "{precision} vs FP32 (cpu): pooled cosine min {:.8} (record {}), token cosine min {:.6} mean {:.8}, rel L2 {:.3e}, max|diff| {:.3e}, non-finite {}",
        c.pooled_cosine_min,
        c.pooled_cosine_argmin,
        c.token_cosine_min,
        c.token_cosine_mean,
        c.relative_l2,
        c.max_abs_diff,
        c.non_finite
    );
    assert_eq!(c.non_finite, 0, "{precision}: non-finite values");
    assert!(
        c.pooled_cosine_min >= min_pooled,
        "{precision}: pooled cosine min {:.8} < {min_pooled} (record {})",
        c.pooled_cosine_min,
        c.pooled_cosine_argmin
    );
}

#[test]
fn fp16_pooled_cosine_against_fp32_exceeds_0_9999_on_the_corpus() {
    reduced_against_fp32(Precision::F16, F16_MIN_POOLED_COSINE);
}

#[test]
fn bf16_pooled_cosine_against_fp32_stays_near_the_torch_figure() {
    reduced_against_fp32(Precision::Bf16, BF16_MIN_POOLED_COSINE);
}

/// The noise floor of campaign reports: FP32 with every reduction summed in another order is
/// not the reference bit for bit (a floor of 0 would mean the reordering did nothing) but
/// stays within the FP32 tolerances, far below what a reduced policy uses.
#[test]
fn fp32_summed_in_another_order_differs_from_the_reference_only_by_rounding() {
    use esmfuzz::batch::Layout;
    use esmfuzz::harness::cases::{Models, check_against_reference};
    use esmfuzz::harness::verdict::{PropertyId, Tolerances};
    use esmfuzz::model::ComputePlan;

    let reference = common::shared_model(Precision::F32);
    let floor = reference
        .noise_floor()
        .expect("a plain FP32 model has a floor");
    assert_eq!(
        floor.plan,
        ComputePlan::reordered_f32(common::test_backend())
    );
    let proteins: Vec<_> = common::corpus().iter().take(4).cloned().collect();
    let verdicts = check_against_reference(
        Models::new(reference, &floor),
        &proteins,
        Layout::Padded,
        &Tolerances::for_precision(Precision::F32),
    );
    for v in &verdicts {
        assert!(v.passed, "{v}");
    }
    let relative_l2 = verdicts
        .iter()
        .find(|v| v.property == PropertyId::RelativeL2)
        .expect("relative L2 judged")
        .measured;
    assert!(
        relative_l2 > 0.0 && relative_l2 < 1e-5,
        "relative L2 of FP32 reordered: {relative_l2:e}"
    );
}
