//! Precision bisection finds the place that needs FP32: with the softmax of one layer left
//! unshifted in f16 (it overflows once a score passes ~11), delta debugging over the places
//! returns exactly that layer's attention, for every layer of the 8M model.

use esmfuzz::harness::bisect::{BisectSpec, UsedBound, bisect_precision};
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::input::Protein;
use esmfuzz::model::{ComputePlan, FaultSet, Fp32Place, Fp32Places, Precision};

use super::common;

/// Two batches of two corpus proteins of 150-250 residues: long enough for large scores.
fn cases() -> Vec<Vec<Protein>> {
    let proteins: Vec<Protein> = common::corpus()
        .iter()
        .filter(|p| (150..=250).contains(&p.residues.len()))
        .take(4)
        .cloned()
        .collect();
    assert_eq!(
        proteins.len(),
        4,
        "the corpus has 4 proteins of 150-250 residues"
    );
    proteins.chunks(2).map(<[Protein]>::to_vec).collect()
}

#[test]
fn bisection_returns_exactly_the_layer_whose_softmax_overflows_in_f16() {
    let cases = cases();
    let tol = Tolerances::for_precision(Precision::F16);
    let layers = common::weights().config.num_hidden_layers;
    for k in 0..layers {
        let spec = BisectSpec {
            weights: common::weights(),
            plan: ComputePlan::new(Precision::F16, common::test_backend()),
            faults: FaultSet {
                unshifted_softmax_in_layer: Some(k),
                ..FaultSet::none()
            },
            cases: &cases,
            tolerances: &tol,
            bound: UsedBound::Uniform(1.0),
        };
        let bisection =
            bisect_precision::<common::TestBackend>(&spec, &common::test_device(), |_| {})
                .unwrap_or_else(|e| panic!("layer {k}: {e}"));
        println!(
            "layer {k}: plain held {}, minimal {} after {} trials",
            bisection.plain.held,
            bisection.minimal,
            bisection.trials.len()
        );
        assert!(!bisection.plain.held, "layer {k}: the fault did not show");
        assert_eq!(
            bisection.minimal,
            Fp32Places::from_places([Fp32Place::Attention(k)]),
            "layer {k}"
        );
    }
}
