//! Every way a checkpoint can be wrong gives an error naming the file and the key (and the
//! expected versus found shape), never a panic; every supported storage dtype loads.
//!
//! Bad files are made from the real 8M weights: read with burn-store, rewritten as HF
//! safetensors with one defect each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn_store::pytorch::PytorchReader;
use esmfuzz::harness::metrics;
use esmfuzz::model::checkpoint::{LoadError, load_checkpoint};
use safetensors::{Dtype, tensor::TensorView};

use super::common;

/// Tensors by key: (shape, f32 values).
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The real checkpoint's tensors by their HF key (with the `esm.` prefix), in f32.
pub fn real_tensors() -> Tensors {
    let file = common::weights_path().join("pytorch_model.bin");
    let reader = PytorchReader::new(&file).expect("real weights readable");
    reader
        .tensors()
        .iter()
        .map(|(k, snap)| {
            let data = snap.to_data().expect("tensor data").convert::<f32>();
            (
                k.clone(),
                (snap.shape.to_vec(), data.into_vec::<f32>().expect("f32")),
            )
        })
        .collect()
}

/// Writes `tensors` as safetensors in `dtype` (F32, F16 or BF16) plus the real config.json.
pub fn write_checkpoint(dir: &Path, tensors: &Tensors, dtype: Dtype) -> PathBuf {
    std::fs::copy(
        common::weights_path().join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (shape, values))| {
            let raw: Vec<u8> = match dtype {
                Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::F16 => values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                other => panic!("unsupported test dtype {other:?}"),
            };
            (k.clone(), shape.clone(), raw)
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, shape, raw)| {
            (
                k.clone(),
                TensorView::new(dtype, shape.clone(), raw).unwrap(),
            )
        })
        .collect();
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}

fn load_error(tensors: &Tensors) -> (PathBuf, LoadError) {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = write_checkpoint(&dir, tensors, Dtype::F32);
    let err = load_checkpoint(&dir, None).expect_err("a defective checkpoint must not load");
    (path, err)
}

fn assert_names(err: &LoadError, needles: &[&str]) {
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "error message lacks '{n}': {msg}");
    }
}

#[test]
fn safetensors_in_f32_f16_and_bf16_load_the_same_backbone() {
    let tensors = real_tensors();
    let reference = load_checkpoint(&common::weights_path(), None)
        .unwrap()
        .weights;
    for (dtype, tolerance) in [(Dtype::F32, 0.0), (Dtype::F16, 1e-3), (Dtype::BF16, 8e-3)] {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &tensors, dtype);
        let loaded = load_checkpoint(dir.path(), None)
            .unwrap_or_else(|e| panic!("{dtype:?} safetensors: {e}"));
        let (a, b) = (
            &loaded.weights.layers[3].fc1.weight.data,
            &reference.layers[3].fc1.weight.data,
        );
        let rel: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(x, y)| ((x - y) / y.abs().max(1e-3)).abs() as f64)
            .collect();
        // NaN-propagating: a NaN weight fails the bound instead of reading as 0.
        let rel = metrics::max(&rel);
        assert!(
            rel <= tolerance,
            "{dtype:?}: relative difference {rel} > {tolerance}"
        );
        assert_eq!(
            loaded.file.ignored.len(),
            8,
            "heads and position tables are ignored by name"
        );
    }
}

#[test]
fn missing_tensor_names_file_and_key() {
    let mut t = real_tensors();
    t.remove("esm.encoder.layer.2.attention.self.key.weight")
        .unwrap();
    let (path, err) = load_error(&t);
    assert!(matches!(err, LoadError::MissingTensor { .. }), "{err}");
    assert_names(
        &err,
        &[
            &path.display().to_string(),
            "layers.2.self_attn.k_proj.weight",
            "[320, 320]",
        ],
    );
}

#[test]
fn wrong_shape_names_key_expected_and_found() {
    let mut t = real_tensors();
    let entry = t
        .get_mut("esm.encoder.layer.1.intermediate.dense.weight")
        .unwrap();
    entry.0 = vec![640, 640];
    let (path, err) = load_error(&t);
    assert!(matches!(err, LoadError::ShapeMismatch { .. }), "{err}");
    assert_names(
        &err,
        &[
            &path.display().to_string(),
            "esm.encoder.layer.1.intermediate.dense.weight",
            "[640, 640]",
            "[1280, 320]",
        ],
    );
}

#[test]
fn more_layers_than_the_config_is_a_layer_count_error() {
    let mut t = real_tensors();
    let extra: Tensors = t
        .iter()
        .filter(|(k, _)| k.starts_with("esm.encoder.layer.5."))
        .map(|(k, v)| (k.replace("layer.5.", "layer.6."), v.clone()))
        .collect();
    t.extend(extra);
    let (_, err) = load_error(&t);
    assert!(
        matches!(
            err,
            LoadError::LayerCount {
                expected: 6,
                found: 7,
                ..
            }
        ),
        "{err}"
    );
    assert_names(&err, &["7 layers", "config says 6", "esm.encoder.layer.6."]);
}

#[test]
fn fewer_layers_than_the_config_is_a_layer_count_error() {
    let mut t = real_tensors();
    t.retain(|k, _| !k.starts_with("esm.encoder.layer.5."));
    let (_, err) = load_error(&t);
    assert!(
        matches!(
            err,
            LoadError::LayerCount {
                expected: 6,
                found: 5,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unknown_tensor_is_rejected_by_name() {
    let mut t = real_tensors();
    t.insert(
        "esm.encoder.layer.0.attention.self.gate.weight".into(),
        (vec![2], vec![0.0, 1.0]),
    );
    let (_, err) = load_error(&t);
    assert!(matches!(err, LoadError::UnexpectedTensor { .. }), "{err}");
    assert_names(&err, &["esm.encoder.layer.0.attention.self.gate.weight"]);
}

#[test]
fn truncated_torch_file_is_an_error_not_a_panic() {
    let bytes = std::fs::read(common::weights_path().join("pytorch_model.bin")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::weights_path().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    for cut in [bytes.len() / 2, 4096, 10] {
        let file = dir.path().join("pytorch_model.bin");
        std::fs::write(&file, &bytes[..cut]).unwrap();
        let err = load_checkpoint(&file, None).expect_err("truncated file must not load");
        assert!(
            matches!(err, LoadError::Format { .. } | LoadError::TensorData { .. }),
            "cut {cut}: {err}"
        );
        assert_names(&err, &[&file.display().to_string()]);
    }
}

#[test]
fn truncated_and_foreign_safetensors_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_checkpoint(dir.path(), &real_tensors(), Dtype::F32);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_checkpoint(&path, None).expect_err("truncated safetensors");
    assert!(matches!(err, LoadError::Format { .. }), "{err}");
    std::fs::write(&path, b"this is not a checkpoint\n").unwrap();
    let err = load_checkpoint(&path, None).expect_err("foreign safetensors");
    assert!(matches!(err, LoadError::Format { .. }), "{err}");
}

#[test]
fn foreign_torch_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pytorch_model.bin");
    std::fs::write(&file, b">sp|P1|X\nMKV\n").unwrap();
    let err = load_checkpoint(&file, None).expect_err("a FASTA file is no checkpoint");
    assert!(matches!(err, LoadError::Format { .. }), "{err}");
    assert_names(&err, &["neither a zip archive", "3e 73 70 7c"]);
}

#[test]
fn folder_without_checkpoint_and_missing_file_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_checkpoint(dir.path(), None).unwrap_err();
    assert!(matches!(err, LoadError::NoCheckpoint { .. }), "{err}");
    let err = load_checkpoint(&dir.path().join("nope.safetensors"), None).unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }), "{err}");
}

#[test]
fn without_config_json_the_size_is_matched_to_a_preset_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_checkpoint(dir.path(), &real_tensors(), Dtype::F32);
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let loaded = load_checkpoint(&path, None).expect("8M size matches a preset");
    assert_eq!(loaded.weights.config.num_attention_heads, 20);

    let mut t = real_tensors();
    t.retain(|k, _| !k.starts_with("esm.encoder.layer.5."));
    write_checkpoint(dir.path(), &t, Dtype::F32);
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load_checkpoint(&path, None).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::CannotInferConfig {
                layers: 5,
                hidden: 320,
                ..
            }
        ),
        "{err}"
    );
}

/// HF transformers 5.x writes one wildcard `inv_freq` for all layers and LayerNorm
/// parameters as `gamma` / `beta`; its current `EsmModel` keeps one model-level `inv_freq`.
/// Both load to the same backbone as the original file.
#[test]
fn hf_5_shared_inv_freq_and_gamma_beta_names_load_the_same_backbone() {
    let reference = load_checkpoint(&common::weights_path(), None)
        .unwrap()
        .weights;
    let original = real_tensors();
    let inv_freq = original
        .get("esm.encoder.layer.0.attention.self.rotary_embeddings.inv_freq")
        .expect("the 8M file stores inv_freq per layer")
        .clone();
    for shared_key in [
        "esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq",
        "esm.rotary_embeddings.inv_freq",
    ] {
        let mut renamed: Tensors = original
            .iter()
            .filter(|(k, _)| !k.ends_with("rotary_embeddings.inv_freq"))
            .map(|(k, v)| {
                let k = k
                    .replace("LayerNorm.weight", "LayerNorm.gamma")
                    .replace("LayerNorm.bias", "LayerNorm.beta");
                (k, v.clone())
            })
            .collect();
        assert!(renamed.keys().any(|k| k.ends_with(".gamma")));
        renamed.insert(shared_key.to_string(), inv_freq.clone());
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &renamed, Dtype::F32);
        let loaded = load_checkpoint(dir.path(), None)
            .unwrap_or_else(|e| panic!("{shared_key}: {e}"))
            .weights;
        assert_eq!(loaded, reference, "{shared_key}");
    }
}
