//! `fuzz --fasta`: the real proteins furthest from FP32 are listed and localised, and an
//! injected fault that hits only long inputs puts a long record at the top.

use std::num::NonZeroU32;

use esmfuzz::harness::driver::{RunOptions, run_proteins};
use esmfuzz::harness::verdict::{Selection, Tolerances};
use esmfuzz::model::{FaultSet, Precision};

use super::common;

fn options() -> RunOptions {
    RunOptions {
        cases: NonZeroU32::MIN,
        seed: Some(1),
        regressions: None,
        selection: Selection::all(),
        localise: true,
        shrink: Default::default(),
    }
}

#[test]
fn real_proteins_list_their_worst_records_with_where_the_error_is_born() {
    let proteins: Vec<_> = common::corpus().iter().take(12).cloned().collect();
    let test = common::shared_model(Precision::F16);
    let tol = Tolerances::for_precision(Precision::F16);
    let result = run_proteins(
        "fasta-12",
        &proteins,
        common::against_fp32(test),
        &tol,
        &options(),
        &mut (),
    )
    .expect("12 proteins");
    let o = result.outliers.expect("real proteins are ranked");
    assert_eq!(o.records, 12);
    let worst = &o.by_pooled_cosine;
    assert!(worst.len() >= 3);
    assert!(
        worst
            .windows(2)
            .all(|w| w[0].pooled_one_minus_cos >= w[1].pooled_one_minus_cos),
        "{worst:?}"
    );
    assert!(worst[0].pooled_one_minus_cos > 0.0 && worst[0].localisation.is_some());
    assert!(o.above_median[0].above_median >= 1.0);
    println!("{}", o.to_markdown("fasta-12"));
}

/// Perturbed weights in layer 3 of the f16 model: every record moves far from FP32, and the
/// localisation of the worst says the error is born in layer 3, not before.
#[test]
fn a_perturbed_layer_is_where_the_worst_record_is_localised() {
    let proteins: Vec<_> = common::corpus().iter().take(6).cloned().collect();
    let faults = FaultSet {
        perturb_layer_weights: Some((3, 0.05)),
        ..FaultSet::none()
    };
    let test = common::model_with(common::weights(), Precision::F16, faults);
    let tol = Tolerances::for_precision(Precision::F16);
    let result = run_proteins(
        "fasta-6",
        &proteins,
        common::against_fp32(&test),
        &tol,
        &options(),
        &mut (),
    )
    .expect("6 proteins");
    let o = result.outliers.expect("ranked");
    let l = o.by_pooled_cosine[0]
        .localisation
        .as_ref()
        .expect("localised");
    let crossing = l
        .first_crossing
        .expect("a 5% weight perturbation crosses the bound");
    assert_eq!(
        crossing.to_string(),
        "layer 3 attention",
        "{}",
        l.to_markdown()
    );
}
