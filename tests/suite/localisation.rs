//! Localisation points to the right place: a fault in layer k is found at layer k, for every
//! layer of the 8M model, and a packing fault in an attention block.

use esmfuzz::batch::Layout;
use esmfuzz::harness::cases::localise_case;
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::input::Protein;
use esmfuzz::model::{FaultSet, Place, Precision};

use super::common;

fn short_proteins(n: usize) -> Vec<Protein> {
    common::corpus()
        .iter()
        .filter(|p| p.residues.len() < 80)
        .take(n)
        .cloned()
        .collect()
}

#[test]
fn one_layer_scaled_by_1_01_is_localised_to_that_layer_for_every_layer() {
    let layers = common::weights().config.num_hidden_layers;
    let proteins = short_proteins(1);
    let threshold = Tolerances::for_precision(Precision::F32).relative_l2;
    for k in 0..layers {
        let faulty = common::model_with(
            common::weights(),
            Precision::F32,
            FaultSet {
                scale_layer_output: Some((k, 1.01)),
                ..FaultSet::none()
            },
        );
        let l = localise_case(
            common::against_fp32(&faulty),
            &proteins,
            Layout::Padded,
            threshold,
        );
        println!("fault in layer {k}:\n{}", l.to_markdown());
        assert_eq!(l.first_crossing, Some(Place::Ffn(k)), "layer {k}");
        assert_eq!(l.largest_growth, Some(Place::Ffn(k)), "layer {k}");
    }
}

#[test]
fn attention_leaking_across_packed_sequences_is_localised_to_an_attention_block() {
    let faulty = common::model_with(
        common::weights(),
        Precision::F32,
        FaultSet {
            attention_leaks_across_sequences: true,
            ..FaultSet::none()
        },
    );
    let threshold = Tolerances::for_precision(Precision::F32).relative_l2;
    let l = localise_case(
        common::against_fp32(&faulty),
        &short_proteins(3),
        Layout::Packed,
        threshold,
    );
    println!("{}", l.to_markdown());
    assert!(
        matches!(l.first_crossing, Some(Place::Attention(_))),
        "{:?}",
        l.first_crossing
    );
    assert!(matches!(l.largest_growth, Some(Place::Attention(_))));
}

#[test]
fn fp16_error_is_localised_and_stays_finite_everywhere() {
    let model = common::shared_model(Precision::F16);
    let threshold = Tolerances::for_precision(Precision::F16).relative_l2;
    let l = localise_case(
        common::against_fp32(model),
        &short_proteins(2),
        Layout::Padded,
        threshold,
    );
    println!("{}", l.to_markdown());
    assert_eq!(
        l.places.len(),
        2 * common::weights().config.num_hidden_layers + 2
    );
    assert!(
        l.places
            .iter()
            .all(|p| p.relative_l2.is_finite() && p.relative_l2 > 0.0)
    );
    assert_eq!(
        l.first_crossing, None,
        "f16 stays within its relative-L2 bound"
    );
}
