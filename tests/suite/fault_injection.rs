//! The harness can fail: each injected fault is caught, by the property it breaks, within
//! [`MAX_CASES_TO_CATCH`] cases, and shrunk to a minimal counterexample that the fault-free
//! model passes (so the fault, not the policy, is what was caught).
//!
//! Minimal means: for the packing faults, at most two sequences of at most 10 residues; for
//! the precision and layer faults, one sequence of at most 10 residues.

use std::num::NonZeroU32;

use esmfuzz::harness::campaign::{CampaignSpec, run_campaign};
use esmfuzz::harness::driver::{RunOptions, run_family};
use esmfuzz::harness::family::Family;
use esmfuzz::harness::strategies::Stratum;
use esmfuzz::harness::verdict::{PropertyId, Selection, Tolerances, failures};
use esmfuzz::model::{FaultSet, Precision};

use super::common;

/// Cases within which every fault must be caught.
const MAX_CASES_TO_CATCH: u32 = 16;
/// Generator seed of these runs, so CI sees the same cases every time.
const SEED: u64 = 0x00FA_0017;

/// Runs `family` on a model with `faults` and asserts the fault is caught by `expected`,
/// shrunk to at most `max_seqs` sequences of at most `max_residues` residues, and that the
/// shrunk case holds on the fault-free model.
fn caught(
    faults: FaultSet,
    precision: Precision,
    family: Family,
    expected: PropertyId,
    (max_seqs, max_residues): (usize, usize),
) {
    let faulty = common::model_with(common::weights(), precision, faults);
    let tol = Tolerances::for_precision(precision);
    let options = RunOptions {
        cases: NonZeroU32::new(MAX_CASES_TO_CATCH).expect("not zero"),
        seed: Some(SEED),
        regressions: None,
        selection: Selection::all(),
        localise: false,
        shrink: Default::default(),
    };
    let result = run_family(
        family,
        common::against_fp32(&faulty),
        &tol,
        &options,
        &mut (),
    );
    let Some(failure) = result.failure else {
        panic!(
            "fault '{faults}' went unnoticed through {} runs",
            result.runs
        )
    };
    let lens: Vec<usize> = failure.minimal.iter().map(|p| p.residues.len()).collect();
    println!(
        "fault '{faults}': caught at run {}; shrunk to {} sequence(s) of {lens:?} residues:\n{}{}",
        failure.cases_to_failure,
        failure.minimal.len(),
        failure.minimal_fasta,
        failure.message
    );
    assert!(
        (1..=MAX_CASES_TO_CATCH as usize).contains(&failure.cases_to_failure),
        "caught at run {}",
        failure.cases_to_failure
    );
    assert!(
        !failure.minimal.is_empty()
            && failure.minimal.len() <= max_seqs
            && lens.iter().all(|&n| n <= max_residues),
        "fault '{faults}': shrunk case {lens:?} is not minimal (<= {max_seqs} x <= {max_residues})"
    );
    let failed: Vec<PropertyId> = failure.verdicts.iter().map(|v| v.property).collect();
    assert!(
        failed.contains(&expected),
        "fault '{faults}' should fail '{expected}', failed {failed:?}"
    );
    let clean = family.judge(
        common::against_fp32(common::shared_model(precision)),
        &failure.minimal,
        &tol,
    );
    assert!(
        failures(&clean).is_none(),
        "the shrunk case of '{faults}' fails the fault-free model too:\n{}",
        failures(&clean).unwrap_or_default()
    );
}

#[test]
fn rope_positions_not_restarted_in_packed_input_are_caught() {
    caught(
        FaultSet {
            rope_not_restarted: true,
            ..FaultSet::none()
        },
        Precision::F32,
        Family::Packed(Stratum::Short),
        PropertyId::PackedVsPadded,
        (2, 10),
    );
}

#[test]
fn attention_leaking_across_packed_sequences_is_caught() {
    caught(
        FaultSet {
            attention_leaks_across_sequences: true,
            ..FaultSet::none()
        },
        Precision::F32,
        Family::Packed(Stratum::Short),
        PropertyId::PackedVsPadded,
        (2, 10),
    );
}

#[test]
fn half_statistics_without_max_shift_are_caught() {
    caught(
        FaultSet {
            unshifted_half_statistics: true,
            ..FaultSet::none()
        },
        Precision::F16,
        Family::UpTo(Stratum::Medium),
        PropertyId::NonFinite,
        (1, 10),
    );
}

#[test]
fn one_layer_output_scaled_by_1_01_is_caught() {
    caught(
        FaultSet {
            scale_layer_output: Some((2, 1.01)),
            ..FaultSet::none()
        },
        Precision::F32,
        Family::Stratum(Stratum::Short),
        PropertyId::RelativeL2,
        (1, 10),
    );
}

#[test]
fn one_layer_weights_perturbed_are_caught() {
    caught(
        FaultSet {
            perturb_layer_weights: Some((3, 1e-3)),
            ..FaultSet::none()
        },
        Precision::F32,
        Family::Stratum(Stratum::Short),
        PropertyId::RelativeL2,
        (1, 10),
    );
}

#[test]
fn a_nan_weight_is_caught_as_non_finite_states() {
    caught(
        FaultSet {
            nan_weight: Some(1),
            ..FaultSet::none()
        },
        Precision::F32,
        Family::Stratum(Stratum::Short),
        PropertyId::NonFinite,
        (1, 10),
    );
}

#[test]
fn f16_activations_overflowing_past_65504_are_caught_as_non_finite_states() {
    caught(
        FaultSet {
            scale_layer_output: Some((2, 1e5)),
            ..FaultSet::none()
        },
        Precision::F16,
        Family::Stratum(Stratum::Short),
        PropertyId::NonFinite,
        (1, 10),
    );
}

#[test]
fn a_zeroed_attention_head_is_caught() {
    caught(
        FaultSet {
            zeroed_attention_head: Some((1, 0)),
            ..FaultSet::none()
        },
        Precision::F32,
        Family::Stratum(Stratum::Short),
        PropertyId::RelativeL2,
        (1, 10),
    );
}

#[test]
fn a_campaign_reports_a_fault_and_writes_its_counterexample() {
    let regressions = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let spec = CampaignSpec {
        families: vec![Family::Stratum(Stratum::Tiny)],
        cases: NonZeroU32::new(4).expect("not zero"),
        seed: SEED,
        regressions: regressions.path().to_path_buf(),
        out_dir: out.path().to_path_buf(),
        real_proteins: Vec::new(),
        completed: Vec::new(),
        shard: None,
        skipped: Vec::new(),
    };
    let tol = Tolerances::for_precision(Precision::F32);
    let faulty = common::model_with(
        common::weights(),
        Precision::F32,
        FaultSet {
            scale_layer_output: Some((2, 1.01)),
            ..FaultSet::none()
        },
    );
    let report = run_campaign(
        common::against_fp32(&faulty),
        &tol,
        &spec,
        &mut (),
        &mut |_| Ok(()),
    )
    .unwrap();
    assert!(!report.passed(), "the campaign missed the fault");
    let text = std::fs::read_to_string(out.path().join("stratum-tiny.fasta")).unwrap();
    assert!(text.starts_with(">gen-v"), "{text}");

    let clean_dir = tempfile::tempdir().unwrap();
    let clean = run_campaign(
        common::against_fp32(common::shared_model(Precision::F32)),
        &tol,
        &CampaignSpec {
            regressions: clean_dir.path().to_path_buf(),
            ..spec
        },
        &mut (),
        &mut |_| Ok(()),
    )
    .unwrap();
    assert!(clean.passed(), "{:?}", clean.families);
}

#[test]
fn real_proteins_are_judged_once_each_and_a_fault_is_reported_on_the_shortest_batch() {
    use esmfuzz::harness::driver::run_proteins;
    let proteins: Vec<_> = common::corpus()
        .iter()
        .filter(|p| p.residues.len() < 120)
        .take(6)
        .cloned()
        .collect();
    let tol = Tolerances::for_precision(Precision::F32);
    let options = RunOptions {
        cases: NonZeroU32::new(1).expect("not zero"),
        seed: None,
        regressions: None,
        selection: Selection::all(),
        localise: true,
        shrink: Default::default(),
    };
    let faulty = common::model_with(
        common::weights(),
        Precision::F32,
        FaultSet {
            scale_layer_output: Some((2, 1.01)),
            ..FaultSet::none()
        },
    );
    let result = run_proteins(
        "fasta-test",
        &proteins,
        common::against_fp32(&faulty),
        &tol,
        &options,
        &mut (),
    )
    .expect("six proteins");
    assert_eq!((result.cases, result.runs), (6, 2));
    let failure = result.failure.expect("the fault is reported");
    let shortest = proteins.iter().map(|p| p.residues.len()).min().unwrap();
    assert!(failure.minimal.iter().any(|p| p.residues.len() == shortest));
    assert!(result.localisation.is_some());
    let clean = run_proteins(
        "fasta-test",
        &proteins,
        common::against_fp32(common::shared_model(Precision::F16)),
        &Tolerances::for_precision(Precision::F16),
        &options,
        &mut (),
    )
    .expect("six proteins");
    assert!(clean.passed, "{:?}", clean.failure.map(|f| f.message));
    let none = run_proteins(
        "fasta-empty",
        &[],
        common::against_fp32(&faulty),
        &tol,
        &options,
        &mut (),
    );
    assert!(none.is_err(), "zero proteins never pass");
}
