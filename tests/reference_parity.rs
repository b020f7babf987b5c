//! The FP32 model is ESM-2: on the CPU it reproduces HF transformers' FP32 outputs for the
//! real corpus, and the reduced policies' distance from it is measured and bounded.

mod common;

use std::sync::OnceLock;

use esmfuzz::embed::{DEFAULT_CPU_BUDGET, token_states_padded};
use esmfuzz::metrics;
use esmfuzz::model::Precision;
use esmfuzz::parity::{compare_pooled, compare_states, pool_residues};

/// HF reference bound: pooled and per-token cosine per sequence (issue acceptance).
const REFERENCE_MIN_COSINE: f64 = 0.99999;
/// HF reference bound: max |diff| of pooled and first-8-token states (issue acceptance).
const REFERENCE_MAX_ABS_DIFF: f64 = 1e-3;
/// FP16 pooled cosine floor against this project's FP32 (issue acceptance; torch's own FP16
/// reaches 0.999997 on an H100, ANCHORS.md).
const F16_MIN_POOLED_COSINE: f64 = 0.9999;
/// BF16 pooled cosine floor. torch's BF16 reaches 0.99970 on the same corpus (ANCHORS.md);
/// this CPU path measured 0.99975 (bf16 storage, f32-accumulated gemm), so 0.999 leaves a 4x
/// margin on the error (1 - cos) while catching a 10x degradation.
const BF16_MIN_POOLED_COSINE: f64 = 0.999;

/// FP32 last-layer states of the corpus, `[n_i + 2, hidden]` each, computed once.
fn fp32_states() -> &'static Vec<Vec<f32>> {
    static S: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    S.get_or_init(|| {
        token_states_padded(
            &common::cpu_model(Precision::F32),
            common::corpus(),
            DEFAULT_CPU_BUDGET,
        )
    })
}

#[test]
fn fp32_pooled_embeddings_match_hf_reference_for_every_corpus_sequence() {
    let hidden = common::weights().config.hidden_size;
    let (shape, reference) = common::read_npy_f32(&common::shared(
        "reference/uniprot_sprot196.hf_fp32_pooled.npy",
    ));
    assert_eq!(shape, vec![common::corpus().len(), hidden]);
    let pooled: Vec<Vec<f32>> = fp32_states()
        .iter()
        .map(|s| pool_residues(s, hidden))
        .collect();
    let (cosines, max_diff) = compare_pooled(&pooled, &reference, hidden);
    let (worst, min_cos) = cosines.iter().enumerate().fold(
        (0, f64::INFINITY),
        |(wi, wc), (i, &c)| if c < wc { (i, c) } else { (wi, wc) },
    );
    println!(
        "FP32 vs HF pooled: cosine min {min_cos:.9} (record {worst}), max|diff| {max_diff:.3e}"
    );
    assert!(
        min_cos >= REFERENCE_MIN_COSINE,
        "pooled cosine {min_cos:.9} < {REFERENCE_MIN_COSINE} for record {worst} ({})",
        common::corpus()[worst].name
    );
    assert!(
        max_diff <= REFERENCE_MAX_ABS_DIFF,
        "pooled max|diff| {max_diff:.3e} > {REFERENCE_MAX_ABS_DIFF:e}"
    );
}

#[test]
fn fp32_first_eight_token_states_match_hf_reference() {
    let hidden = common::weights().config.hidden_size;
    let (shape, reference) = common::read_npy_f32(&common::shared(
        "reference/uniprot_sprot196.hf_fp32_first8tokens.npy",
    ));
    let positions = shape[1];
    let (mut min_cos, mut max_diff) = (f64::INFINITY, 0f64);
    for (i, states) in fp32_states().iter().enumerate() {
        let ours = &states[..positions * hidden];
        let theirs = &reference[i * positions * hidden..(i + 1) * positions * hidden];
        min_cos = min_cos.min(metrics::min(&metrics::row_cosines(ours, theirs, hidden)));
        max_diff = max_diff.max(metrics::max_abs_diff(ours, theirs));
    }
    println!("FP32 vs HF first 8 tokens: cosine min {min_cos:.9}, max|diff| {max_diff:.3e}");
    assert!(
        min_cos >= REFERENCE_MIN_COSINE,
        "token cosine {min_cos:.9} < {REFERENCE_MIN_COSINE}"
    );
    assert!(
        max_diff <= REFERENCE_MAX_ABS_DIFF,
        "token max|diff| {max_diff:.3e} > {REFERENCE_MAX_ABS_DIFF:e}"
    );
}

fn reduced_against_fp32(precision: Precision, min_pooled: f64) {
    let hidden = common::weights().config.hidden_size;
    let states = token_states_padded(
        &common::cpu_model(precision),
        common::corpus(),
        DEFAULT_CPU_BUDGET,
    );
    let c = compare_states(&states, fp32_states(), hidden);
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
