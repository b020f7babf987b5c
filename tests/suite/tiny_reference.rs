//! Loader formats and forward-pass details against HF transformers itself, on a tiny random
//! ESM-2 (2 layers, hidden 32) made by `scripts/make_tiny_fixtures.py` (transformers 5.17):
//! every checkpoint format loads the same backbone, and the FP32 model reproduces HF's float64
//! hidden states for a padded batch with a `<mask>` token at every `repr_layers` index.

use std::path::PathBuf;

use esmfuzz::batch::{PaddedBatch, run_batch};
use esmfuzz::harness::metrics::max_abs_diff;
use esmfuzz::model::checkpoint::{CheckpointFormat, load_checkpoint};
use esmfuzz::model::{EsmWeights, FaultSet, Precision};

use super::common;

fn fixture(name: &str) -> PathBuf {
    common::repo().join("tests/fixtures/tiny").join(name)
}

fn f32_weights() -> EsmWeights {
    load_checkpoint(&fixture(""), None)
        .expect("tiny safetensors")
        .weights
}

/// Largest |a - b| over every weight of two backbones (NaN when either holds a NaN).
fn weight_distance(a: &EsmWeights, b: &EsmWeights) -> f64 {
    let flat = |w: &EsmWeights| -> Vec<f32> {
        let mut v = w.embed_tokens.data.clone();
        for l in &w.layers {
            for t in [
                &l.q_proj.weight,
                &l.q_proj.bias,
                &l.k_proj.weight,
                &l.k_proj.bias,
                &l.v_proj.weight,
                &l.v_proj.bias,
                &l.out_proj.weight,
                &l.out_proj.bias,
                &l.fc1.weight,
                &l.fc1.bias,
                &l.fc2.weight,
                &l.fc2.bias,
                &l.self_attn_layer_norm.weight,
                &l.self_attn_layer_norm.bias,
                &l.final_layer_norm.weight,
                &l.final_layer_norm.bias,
            ] {
                v.extend_from_slice(&t.data);
            }
            v.extend_from_slice(&l.inv_freq);
        }
        v.extend_from_slice(&w.emb_layer_norm_after.weight.data);
        v.extend_from_slice(&w.emb_layer_norm_after.bias.data);
        v
    };
    let (x, y) = (flat(a), flat(b));
    assert_eq!(x.len(), y.len());
    max_abs_diff(&x, &y)
}

#[test]
fn fair_esm_pt_loads_the_same_backbone_as_hf_safetensors() {
    let pt = load_checkpoint(&fixture("tiny_fair_esm.pt"), None).expect("fair-esm .pt");
    assert_eq!(pt.file.format, CheckpointFormat::Torch);
    assert_eq!(weight_distance(&pt.weights, &f32_weights()), 0.0);
    assert!(
        pt.file.ignored.iter().any(|k| k.contains("lm_head")),
        "{:?}",
        pt.file.ignored
    );
}

#[test]
fn fine_tuned_f16_torch_bin_with_esm_prefix_and_head_loads() {
    let bin = load_checkpoint(&fixture("pytorch_model_f16.bin"), None).expect("f16 .bin");
    assert!(
        bin.file.stored_dtypes.contains("f16"),
        "{:?}",
        bin.file.stored_dtypes
    );
    assert!(
        bin.file
            .ignored
            .iter()
            .any(|k| k.starts_with("classifier."))
    );
    let d = weight_distance(&bin.weights, &f32_weights());
    assert!(
        d > 0.0 && d < 4e-3,
        "f16 storage rounds by at most ~2^-11 relative: {d}"
    );
}

#[test]
fn bf16_safetensors_loads() {
    let st = load_checkpoint(&fixture("model_bf16.safetensors"), None).expect("bf16 safetensors");
    assert!(
        st.file.stored_dtypes.contains("bf16"),
        "{:?}",
        st.file.stored_dtypes
    );
    let d = weight_distance(&st.weights, &f32_weights());
    assert!(
        d > 0.0 && d < 3e-2,
        "bf16 storage rounds by at most ~2^-8 relative: {d}"
    );
}

#[test]
fn fp32_hidden_states_match_hf_float64_at_every_layer_with_mask_and_padding() {
    #[derive(serde::Deserialize)]
    struct Batch {
        input_ids: Vec<Vec<u32>>,
    }
    let batch: Batch =
        serde_json::from_str(&std::fs::read_to_string(fixture("batch.json")).unwrap()).unwrap();
    let sequences: Vec<(usize, Vec<u32>)> = batch
        .input_ids
        .iter()
        .enumerate()
        .map(|(i, ids)| (i, ids.iter().copied().filter(|&t| t != 1).collect()))
        .collect();
    assert!(
        sequences.iter().any(|(_, s)| s.contains(&32)),
        "the batch holds a <mask>"
    );
    let weights = f32_weights();
    let hidden = weights.config.hidden_size;
    let model = common::model_with(&weights, Precision::F32, FaultSet::none());
    let padded = PaddedBatch::new(&sequences, true);
    let layers: Vec<usize> = (0..=weights.config.num_hidden_layers).collect();
    let states = run_batch(&model, &padded, &layers);

    let (shape, reference) = common::read_npy_f32(&fixture("hf_f64_hidden_states.npy"));
    let [n_layers, n_seqs, width] = [shape[0], shape[1], shape[2]];
    assert_eq!(
        (n_layers, n_seqs, shape[3]),
        (layers.len(), sequences.len(), hidden)
    );
    assert_eq!(width, padded.seq_len);
    for &layer in &layers {
        for (i, (_, seq)) in sequences.iter().enumerate() {
            let start = (layer * n_seqs + i) * width * hidden;
            let theirs = &reference[start..start + seq.len() * hidden];
            let ours = &states[&layer].data[i * width * hidden..][..seq.len() * hidden];
            let diff = max_abs_diff(ours, theirs);
            println!("layer {layer} sequence {i}: max|diff| {diff:.2e}");
            assert!(
                diff < 1e-5,
                "layer {layer}, sequence {i}: max|diff| {diff:.3e} vs HF float64"
            );
        }
    }
}
