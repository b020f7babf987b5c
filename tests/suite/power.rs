//! Detection power (`esmfuzz power`, `harness::power`): on the real 8M weights, a degradation
//! the FP32-held policy must see (one layer's output scaled by 1 + 1e-3, attention logits
//! scaled, one layer rounded to f16) is detected in every trial at a handful of cases, and
//! the fault-free model raises no alarm, so a measured power is the properties', not noise.

use esmfuzz::harness::family::Family;
use esmfuzz::harness::power::{Degradation, PowerSpec, run_power};
use esmfuzz::harness::strategies::Stratum;
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::model::{ComputePlan, Esm2, Precision};

use super::common;

#[test]
fn an_fp32_held_policy_detects_a_1e_3_layer_scaling_and_raises_no_false_alarm() {
    let spec = PowerSpec {
        families: vec![Family::Stratum(Stratum::Tiny)],
        degradations: vec![
            Degradation::ScaleLayerOutput,
            Degradation::ScaleAttentionLogits,
            Degradation::RoundToF16,
        ],
        sizes: vec![1e-3],
        trials: 3,
        counts: vec![1, 4],
        seed: 5,
        layer: 3,
    };
    let plan = ComputePlan::new(Precision::F32, common::test_backend());
    let weights = common::weights();
    let device = common::test_device();
    let mut build = |faults| Esm2::new(weights, plan, faults, &device);
    let report = run_power(
        common::shared_model(Precision::F32),
        &mut build,
        &Tolerances::for_precision(Precision::F32),
        &spec,
        &mut |_, _| {},
    )
    .expect("a valid spec");
    assert_eq!(report.baseline.len(), 1);
    let clean = &report.baseline[0];
    assert_eq!(clean.detection_at(4), Some(0.0), "a false alarm: {clean:?}");
    assert_eq!(clean.cases_judged, 12, "every case of every trial judged");
    assert_eq!(report.cells.len(), 3);
    for cell in &report.cells {
        assert_eq!(
            cell.detection_at(4),
            Some(1.0),
            "{:?} e={:?} not detected in every trial: {cell:?}",
            cell.degradation,
            cell.size
        );
    }
    assert!(report.smallest.iter().all(|s| s.count != 4 || s.detected));
}

#[test]
fn power_measures_the_isolation_family_which_sees_a_leak_across_sequences_and_not_a_scaling() {
    let spec = PowerSpec {
        families: vec![Family::Isolation(Stratum::Tiny)],
        degradations: vec![
            Degradation::LeakAcrossSequences,
            Degradation::ScaleLayerOutput,
        ],
        sizes: vec![1e-1],
        trials: 3,
        counts: vec![2],
        seed: 5,
        layer: 3,
    };
    let plan = ComputePlan::new(Precision::F32, common::test_backend());
    let weights = common::weights();
    let device = common::test_device();
    let mut build = |faults| Esm2::new(weights, plan, faults, &device);
    let report = run_power(
        common::shared_model(Precision::F32),
        &mut build,
        &Tolerances::for_precision(Precision::F32),
        &spec,
        &mut |_, _| {},
    )
    .expect("isolation families are measured");
    assert_eq!(
        report.baseline[0].detection_at(2),
        Some(0.0),
        "a false alarm"
    );
    let of = |d| {
        report
            .cells
            .iter()
            .find(|c| c.degradation == Some(d))
            .and_then(|c| c.detection_at(2))
    };
    // Isolation compares the policy with itself: a leak between packed batch-mates is what
    // it sees; a layer scaled alike alone and batched is invisible to it, and says so.
    assert_eq!(of(Degradation::LeakAcrossSequences), Some(1.0));
    assert_eq!(of(Degradation::ScaleLayerOutput), Some(0.0));
}
