//! The model's forward pass on real batches (padded and packed, as `batch` builds them):
//! streamed loading, FP32 places, burn's fused attention and block rounding. These live in
//! the batch wing because they build batches; the model wing never imports `batch`.

use std::borrow::Cow;

use super::{Batch, PackedBatch, PaddedBatch};
use crate::backend::{BackendKind, Cpu, cpu_device};
use crate::model::blocks::ModelInput;
use crate::model::{ComputePlan, Esm2, EsmConfig, EsmWeights, FaultSet, Precision};

/// Last-layer states of `input` as f32.
fn states(model: &Esm2<Cpu>, input: &ModelInput) -> Vec<f32> {
    let out = model.forward(input, &[model.config.num_hidden_layers]);
    let last = out.representations.into_values().next().unwrap();
    last.into_data().convert::<f32>().into_vec().unwrap()
}

/// Models streamed layer by layer from an opened checkpoint (two specs at once) compute
/// exactly what models built from the fully loaded weights do; a NaN in a layer is
/// named by its stored key and index while streaming.
#[test]
fn models_streamed_from_the_file_equal_models_from_loaded_weights() {
    use crate::model::checkpoint::synth::{StoredDtype, SynthFormat, write_checkpoint};
    use crate::model::checkpoint::{load_checkpoint, open_checkpoint};
    use crate::model::{Fp32Places, ModelSpec};
    let config = EsmConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(
        &config,
        StoredDtype::F32,
        SynthFormat::Safetensors,
        3,
        dir.path(),
    )
    .unwrap();
    let loaded = load_checkpoint(dir.path(), None).unwrap();
    let open = open_checkpoint(dir.path(), None).unwrap();
    assert_eq!(open.parameter_count(), {
        let w = &loaded.weights;
        w.named_tensors()
            .iter()
            .map(|(_, t)| t.len())
            .sum::<usize>()
    });
    let plans = [Precision::F32, Precision::F16].map(|p| ComputePlan::new(p, BackendKind::Cpu));
    let specs: Vec<ModelSpec> = plans
        .iter()
        .map(|&plan| ModelSpec {
            plan,
            fp32_places: Fp32Places::none(),
            faults: FaultSet::none(),
        })
        .collect();
    let mut asked = Vec::new();
    let streamed = Esm2::<Cpu>::streamed(
        &open.config,
        &specs,
        &open.read_embed_tokens().unwrap(),
        &open.read_final_norm().unwrap(),
        |i| {
            asked.push(i);
            open.read_layer(i).map(Cow::Owned)
        },
        &cpu_device(),
    )
    .unwrap();
    assert_eq!(asked, (0..config.num_hidden_layers).collect::<Vec<_>>());
    let seqs = vec![(0, vec![0, 5, 9, 11, 2]), (1, vec![0, 7, 2])];
    let batch = PaddedBatch::new(&seqs, true);
    for (model, plan) in streamed.iter().zip(plans) {
        let whole = Esm2::<Cpu>::new(&loaded.weights, plan, FaultSet::none(), &cpu_device());
        assert_eq!(
            states(model, batch.input()),
            states(&whole, batch.input()),
            "{plan:?}"
        );
    }
    let mut poisoned = open.read_layer(1).unwrap();
    poisoned.fc2.bias.data[3] = f32::NAN;
    let err = open
        .check_finite(&poisoned.named_tensors(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder.layer.1.output.dense.bias") && err.contains("index 3"),
        "{err}"
    );
}

/// A reduced policy with every place in FP32 is the FP32 model, bit for bit; with none
/// it is the reduced policy.
#[test]
fn every_place_in_fp32_is_the_fp32_model() {
    use crate::model::Fp32Places;
    let config = EsmConfig::tiny();
    let weights = EsmWeights::random(&config, 5);
    let seqs: Vec<(usize, Vec<u32>)> = [4usize, 9]
        .iter()
        .enumerate()
        .map(|(i, &n)| (i, [vec![0], vec![6 + i as u32; n], vec![2]].concat()))
        .collect();
    let batch = PaddedBatch::new(&seqs, true);
    let plan = |p| ComputePlan::new(p, BackendKind::Cpu);
    let fp32 = Esm2::<Cpu>::new(
        &weights,
        plan(Precision::F32),
        FaultSet::none(),
        &cpu_device(),
    );
    let want = states(&fp32, batch.input());
    for precision in [Precision::F16, Precision::Bf16] {
        let all = Fp32Places::all(config.num_hidden_layers);
        let mixed = Esm2::<Cpu>::mixed(
            &weights,
            plan(precision),
            all,
            FaultSet::none(),
            &cpu_device(),
        );
        assert_eq!(states(&mixed, batch.input()), want, "{precision}");
        let none = Esm2::<Cpu>::mixed(
            &weights,
            plan(precision),
            Fp32Places::none(),
            FaultSet::none(),
            &cpu_device(),
        );
        assert_ne!(states(&none, batch.input()), want, "{precision}");
    }
}

/// burn's fused attention op computes what the composed attention does, padding masked.
#[test]
fn fused_attention_matches_the_composed_one_and_masks_padding() {
    use crate::model::AttentionKernel;
    let config = EsmConfig::tiny();
    let weights = EsmWeights::random(&config, 7);
    let seqs: Vec<(usize, Vec<u32>)> = [4usize, 11]
        .iter()
        .enumerate()
        .map(|(i, &n)| (i, [vec![0], vec![5 + i as u32; n], vec![2]].concat()))
        .collect();
    let batch = PaddedBatch::new(&seqs, true);
    let alone = PaddedBatch::new(&seqs[..1], true);
    let relative_l2 = |a: &[f32], b: &[f32]| {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den).sqrt()
    };
    for (precision, bound) in [
        (Precision::F32, 1e-5),
        (Precision::F16, 5e-3),
        (Precision::Bf16, 4e-2),
    ] {
        let composed = ComputePlan::new(precision, BackendKind::Cpu);
        let fused = composed.with_attention(AttentionKernel::Fused);
        let model = |plan| Esm2::<Cpu>::new(&weights, plan, FaultSet::none(), &cpu_device());
        let (composed, fused) = (model(composed), model(fused));
        let want = states(&composed, batch.input());
        let got = states(&fused, batch.input());
        // Not bit for bit: the fused op sums in another order, so equality would mean the
        // plan said fused and the composed path ran (what f32 did until session 9).
        assert_ne!(
            got, want,
            "{precision}: fused computed exactly what composed did"
        );
        let error = relative_l2(&got, &want);
        assert!(error < bound, "{precision}: relative L2 {error}");
        // The short sequence's rows are the same alone: the padding keys were masked.
        let hidden = config.hidden_size;
        let rows = 4 + 2;
        let solo = states(&fused, alone.input());
        let error = relative_l2(&got[..rows * hidden], &solo[..rows * hidden]);
        assert!(error < bound, "{precision}: padded vs alone {error}");
    }
}

/// Rounding block lengths up (what CUDA does) must not change any token's output.
#[test]
fn block_multiple_does_not_change_the_output() {
    let config = EsmConfig::tiny();
    let weights = EsmWeights::random(&config, 3);
    let plan = ComputePlan::new(Precision::F32, BackendKind::Cpu);
    let model = Esm2::<Cpu>::new(&weights, plan, FaultSet::none(), &cpu_device());
    let seqs: Vec<(usize, Vec<u32>)> = [3usize, 11, 6]
        .iter()
        .enumerate()
        .map(|(i, &n)| (i, [vec![0], vec![5 + i as u32; n], vec![2]].concat()))
        .collect();
    let batches: [Box<dyn Batch>; 2] = [
        Box::new(PaddedBatch::new(&seqs, true)),
        Box::new(PackedBatch::new(&seqs, true)),
    ];
    for batch in &batches {
        let input = batch.input();
        let bucketed = ModelInput {
            layout: input.layout.with_block_multiple(input.tokens.len(), 8),
            ..input.clone()
        };
        assert_ne!(bucketed.layout, input.layout);
        let (a, b) = (states(&model, input), states(&model, &bucketed));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-5, "max |diff| {worst:e}");
    }
}

/// Pooling a batch from its host copy in the storage dtype gives, bit for bit, the pooled
/// f32 states of the same batch (half policies too: widening is exact).
#[test]
fn pooled_batches_equal_pooling_their_f32_states() {
    let config = EsmConfig::tiny();
    let weights = EsmWeights::random(&config, 5);
    let seqs: Vec<(usize, Vec<u32>)> = [4usize, 9, 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| (i, [vec![0], vec![6 + i as u32; n], vec![2]].concat()))
        .collect();
    for precision in [Precision::F32, Precision::F16, Precision::Bf16] {
        let plan = ComputePlan::new(precision, BackendKind::Cpu);
        let model = Esm2::<Cpu>::new(&weights, plan, FaultSet::none(), &cpu_device());
        let last = model.config.num_hidden_layers;
        let batches: [Box<dyn Batch>; 2] = [
            Box::new(PaddedBatch::new(&seqs, true)),
            Box::new(PackedBatch::new(&seqs, true)),
        ];
        for batch in &batches {
            let pooled = super::run::pooled_batch(&model, batch.as_ref());
            let states = super::run_batch(&model, batch.as_ref(), &[last]);
            let states = &states[&last];
            assert_eq!(pooled.len(), seqs.len());
            for (i, row) in pooled.iter().enumerate() {
                let expected = super::pool_residues(
                    super::sequence_states(states, batch.as_ref(), i),
                    states.hidden,
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(row), bits(&expected), "{precision:?} sequence {i}");
            }
        }
    }
}
