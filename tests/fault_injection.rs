//! The harness can fail: each injected fault is caught by the properties within a bounded
//! number of cases and shrunk to a minimal counterexample.
//!
//! Minimal means: for the packing faults, at most two sequences of at most 10 residues; for
//! the precision and layer faults, one sequence of at most 10 residues.

mod common;

use esmfuzz::fault::FaultSet;
use esmfuzz::generate::{
    PropertyOutcome, Stratum, mixed_batch, protein, protein_up_to, run_property,
};
use esmfuzz::input::Protein;
use esmfuzz::metrics;
use esmfuzz::model::Precision;
use esmfuzz::props::{Layout, Tolerances, Verdict, case_result, check_case, run_case};
use proptest::strategy::{BoxedStrategy, Strategy};

/// Cases within which every fault must be caught.
const MAX_CASES_TO_CATCH: usize = 16;
/// Packed and padded FP32 run the same blocks through the same kernels: measured bit-identical
/// on the whole corpus (max |diff| 0), so any packing defect that changes rounding shows.
const PACKED_F32_MAX_ABS_DIFF: f64 = 1e-6;

/// Property 7 in FP32: packed (possibly faulty) against padded FP32, per token.
fn packed_matches_padded(
    faulty: &esmfuzz::model::Esm2<esmfuzz::backend::Cpu>,
    proteins: &[Protein],
) -> Vec<Verdict> {
    let reference = common::shared_model(Precision::F32);
    let (padded, _) = run_case(reference, proteins, Layout::Padded);
    let (packed, finite) = run_case(faulty, proteins, Layout::Packed);
    let mut verdicts = vec![finite];
    for (i, (a, b)) in packed.iter().zip(&padded).enumerate() {
        verdicts.push(Verdict::below(
            "packed vs padded FP32 max |diff|",
            metrics::max_abs_diff(a, b),
            PACKED_F32_MAX_ABS_DIFF,
            format!("sequence {i}"),
        ));
    }
    verdicts
}

/// Runs the properties over `strategy` on a model with `faults` and asserts they fail within
/// [`MAX_CASES_TO_CATCH`] cases, shrinking to at most `max_seqs` sequences of at most
/// `max_residues` residues.
fn caught(
    name: &str,
    faults: FaultSet,
    precision: Precision,
    strategy: BoxedStrategy<Vec<Protein>>,
    check: impl Fn(&esmfuzz::model::Esm2<esmfuzz::backend::Cpu>, &[Protein]) -> Vec<Verdict>,
    (max_seqs, max_residues): (usize, usize),
) {
    let faulty = common::cpu_model_with(common::weights(), precision, faults);
    let outcome = run_property(
        name,
        MAX_CASES_TO_CATCH as u32,
        strategy,
        false,
        |proteins| case_result(&check(&faulty, proteins)),
    );
    match outcome {
        PropertyOutcome::Held { cases } => {
            panic!("fault '{faults}' went unnoticed through {cases} cases")
        }
        PropertyOutcome::Failed {
            message,
            minimal,
            cases_to_failure,
        } => {
            let lens: Vec<usize> = minimal.iter().map(|p| p.residues.len()).collect();
            println!(
                "fault '{faults}': caught at case {cases_to_failure}; shrunk to {} sequence(s) of {lens:?} residues:\n{}\n{message}",
                minimal.len(),
                minimal
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            assert!(
                (1..=MAX_CASES_TO_CATCH).contains(&cases_to_failure),
                "caught at case {cases_to_failure}"
            );
            assert!(
                minimal.len() <= max_seqs && lens.iter().all(|&n| n <= max_residues),
                "fault '{faults}': shrunk case {lens:?} is not minimal (<= {max_seqs} x <= {max_residues})"
            );
        }
    }
}

fn against_fp32(
    precision: Precision,
) -> impl Fn(&esmfuzz::model::Esm2<esmfuzz::backend::Cpu>, &[Protein]) -> Vec<Verdict> {
    let tol = Tolerances::for_precision(precision);
    move |model, proteins| {
        check_case(
            common::shared_model(Precision::F32),
            model,
            proteins,
            Layout::Padded,
            &tol,
        )
    }
}

#[test]
fn rope_positions_not_restarted_in_packed_input_are_caught() {
    caught(
        "fault_rope",
        FaultSet {
            rope_not_restarted: true,
            ..FaultSet::none()
        },
        Precision::F32,
        mixed_batch(Stratum::Short, 4).boxed(),
        packed_matches_padded,
        (2, 10),
    );
}

#[test]
fn attention_leaking_across_packed_sequences_is_caught() {
    caught(
        "fault_leak",
        FaultSet {
            attention_leaks_across_sequences: true,
            ..FaultSet::none()
        },
        Precision::F32,
        mixed_batch(Stratum::Short, 4).boxed(),
        packed_matches_padded,
        (2, 10),
    );
}

#[test]
fn half_statistics_without_max_shift_are_caught() {
    caught(
        "fault_unshifted",
        FaultSet {
            unshifted_half_statistics: true,
            ..FaultSet::none()
        },
        Precision::F16,
        protein_up_to(Stratum::Medium).prop_map(|p| vec![p]).boxed(),
        against_fp32(Precision::F16),
        (1, 10),
    );
}

#[test]
fn one_layer_output_scaled_by_1_01_is_caught() {
    caught(
        "fault_scale",
        FaultSet {
            scale_layer_output: Some((2, 1.01)),
            ..FaultSet::none()
        },
        Precision::F32,
        protein(Stratum::Short).prop_map(|p| vec![p]).boxed(),
        against_fp32(Precision::F32),
        (1, 10),
    );
}

#[test]
fn one_layer_weights_perturbed_are_caught() {
    caught(
        "fault_perturb",
        FaultSet {
            perturb_layer_weights: Some((3, 1e-3)),
            ..FaultSet::none()
        },
        Precision::F32,
        protein(Stratum::Short).prop_map(|p| vec![p]).boxed(),
        against_fp32(Precision::F32),
        (1, 10),
    );
}

#[test]
fn a_fuzz_campaign_reports_a_fault_and_writes_its_counterexample() {
    use esmfuzz::campaign::{Family, run_family};
    let out = tempfile::tempdir().unwrap();
    let faulty = common::cpu_model_with(
        common::weights(),
        Precision::F32,
        FaultSet {
            scale_layer_output: Some((2, 1.01)),
            ..FaultSet::none()
        },
    );
    let tol = Tolerances::for_precision(Precision::F32);
    let result = run_family(
        common::shared_model(Precision::F32),
        &faulty,
        Family::Stratum(Stratum::Tiny),
        4,
        &tol,
        out.path(),
        |_, _| {},
    );
    println!("{result:?}");
    assert!(!result.passed, "the campaign missed the fault");
    let path = result.counterexample.expect("counterexample written");
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.starts_with(">gen-v"), "{text}");
    let clean = run_family(
        common::shared_model(Precision::F32),
        common::shared_model(Precision::F32),
        Family::Stratum(Stratum::Tiny),
        4,
        &tol,
        out.path(),
        |_, _| {},
    );
    assert!(clean.passed, "{:?}", clean.failure);
}
