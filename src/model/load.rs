//! Checkpoint loading: HF `model.safetensors`, HF `pytorch_model.bin` (torch zip) and fair-esm
//! `.pt`, in f32, f16 or bf16, into host [`EsmWeights`].
//!
//! Every key is mapped to one canonical (fair-esm) name in [`canonical_name`]; the `esm.`
//! prefix of fine-tuned HF checkpoints and the `encoder.` / `encoder.sentence_encoder.`
//! prefixes of fair-esm files are stripped there. Heads (`lm_head`, `contact_head`,
//! `classifier`, `pooler`) and unused position tables are ignored by name; any other
//! unknown tensor, a missing one, a wrong shape or a layer count that disagrees with the
//! config is an error naming the file and the key. Nothing here panics on a bad file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use burn_store::pytorch::{PytorchError, PytorchReader};

use super::config::{ConfigError, EsmConfig, PRESET_NAMES};
use super::safetensors_file::{SafetensorsError, SafetensorsFile};
use super::weights::{
    EsmWeights, HostTensor, LayerWeights, LinearWeights, NormWeights, first_non_finite,
};

/// Why a checkpoint could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read checkpoint")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable {format} checkpoint (truncated or foreign file?): {detail}")]
    Format {
        path: PathBuf,
        format: &'static str,
        detail: String,
    },
    #[error("{dir}: no checkpoint found (looked for model.safetensors, pytorch_model.bin, *.pt)")]
    NoCheckpoint { dir: PathBuf },
    #[error("{path}: missing tensor '{key}' (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor '{key}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor '{key}' has dtype {dtype}, expected f32, f16 or bf16")]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{path}: unexpected tensor '{key}' (not part of an ESM-2 backbone or a known head)")]
    UnexpectedTensor { path: PathBuf, key: String },
    #[error(
        "{path}: the checkpoint has {found} layers but the config says {expected} (key '{key}')"
    )]
    LayerCount {
        path: PathBuf,
        expected: usize,
        found: usize,
        key: String,
    },
    #[error("{path}: cannot read tensor '{key}': {detail}")]
    TensorData {
        path: PathBuf,
        key: String,
        detail: String,
    },
    #[error(
        "{path}: no config.json beside the checkpoint and no preset with {layers} layers of width {hidden} (known: {known}); pass a config",
        known = PRESET_NAMES.join(", ")
    )]
    CannotInferConfig {
        path: PathBuf,
        layers: usize,
        hidden: usize,
    },
    #[error(
        "{path}: tensor '{key}' holds {value} at flat index {index}; a model built from it computes \
         nothing meaningful (pass --allow-nonfinite-weights to run it anyway)"
    )]
    NonFinite {
        path: PathBuf,
        key: String,
        index: usize,
        value: f32,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The file formats this loader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum CheckpointFormat {
    /// HF `model.safetensors`.
    Safetensors,
    /// A torch pickle/zip: HF `pytorch_model.bin` or fair-esm `.pt`.
    Torch,
}

/// A loaded checkpoint and what was learnt while reading it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub weights: EsmWeights,
    pub path: PathBuf,
    pub format: CheckpointFormat,
    /// Dtypes found among the backbone tensors.
    pub stored_dtypes: BTreeSet<String>,
    /// Keys ignored as heads or unused tables.
    pub ignored: Vec<String>,
}

/// Resolves `path` (a checkpoint file, or a folder holding one plus `config.json`), reads the
/// config (`config` overrides `config.json`; without either the size is matched to a
/// preset) and loads the backbone.
pub fn load_checkpoint(path: &Path, config: Option<EsmConfig>) -> Result<Checkpoint, LoadError> {
    open_checkpoint(path, config)?.read_all()
}

/// [`load_checkpoint`] without reading any tensor's data yet: every key, shape and the layer
/// count are checked; tensors are then read one layer at a time ([`OpenCheckpoint`]).
pub fn open_checkpoint(
    path: &Path,
    config: Option<EsmConfig>,
) -> Result<OpenCheckpoint, LoadError> {
    let file = resolve_checkpoint_file(path)?;
    let source = TensorSource::open(&file)?;
    let config = config_for(&file, &source, config)?;
    OpenCheckpoint::index(file, source, config)
}

/// The config [`load_checkpoint`] would use for `path`, read without loading any tensor's
/// data (only the file's header or index, and the shapes when no config is given).
pub fn checkpoint_config(path: &Path, config: Option<EsmConfig>) -> Result<EsmConfig, LoadError> {
    let file = resolve_checkpoint_file(path)?;
    let source = TensorSource::open(&file)?;
    config_for(&file, &source, config)
}

/// `config` validated, else `config.json` beside `file`, else the preset its shapes match.
fn config_for(
    file: &Path,
    source: &TensorSource,
    config: Option<EsmConfig>,
) -> Result<EsmConfig, LoadError> {
    match config {
        Some(c) => {
            c.validate()?;
            Ok(c)
        }
        None => match file.parent().map(|d| d.join("config.json")) {
            Some(json) if json.is_file() => Ok(EsmConfig::from_json_file(&json)?),
            _ => infer_config(file, source),
        },
    }
}

/// The checkpoint file for `path`: itself, or the first known name inside a folder.
pub fn resolve_checkpoint_file(path: &Path) -> Result<PathBuf, LoadError> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(LoadError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        return Ok(path.to_path_buf());
    }
    for name in ["model.safetensors", "pytorch_model.bin"] {
        let candidate = path.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let entries = std::fs::read_dir(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut pts: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pt" || e == "pth"))
        .collect();
    pts.sort();
    pts.into_iter()
        .next()
        .ok_or_else(|| LoadError::NoCheckpoint {
            dir: path.to_path_buf(),
        })
}

/// Raw tensors of a checkpoint file, read on demand.
enum TensorSource {
    Safetensors(SafetensorsFile),
    Torch(PytorchReader),
}

impl From<SafetensorsError> for LoadError {
    fn from(e: SafetensorsError) -> Self {
        match e {
            SafetensorsError::Io { path, source } => LoadError::Io { path, source },
            SafetensorsError::Format { path, detail } => LoadError::Format {
                path,
                format: "safetensors",
                detail,
            },
        }
    }
}

/// Shape and dtype of one stored tensor.
struct StoredInfo {
    shape: Vec<usize>,
    dtype: String,
}

impl TensorSource {
    fn open(path: &Path) -> Result<Self, LoadError> {
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        if is_safetensors {
            return SafetensorsFile::open(path)
                .map(Self::Safetensors)
                .map_err(LoadError::from);
        }
        check_torch_magic(path)?;
        let torch_error = |e: PytorchError| LoadError::Format {
            path: path.to_path_buf(),
            format: "torch",
            detail: e.to_string(),
        };
        // fair-esm keeps the state dict under "model"; HF files are the state dict itself.
        let reader = match PytorchReader::with_top_level_key(path, "model") {
            Ok(r) if !r.is_empty() => r,
            _ => PytorchReader::new(path).map_err(torch_error)?,
        };
        if reader.is_empty() {
            return Err(LoadError::Format {
                path: path.to_path_buf(),
                format: "torch",
                detail: "no tensors in the file".into(),
            });
        }
        Ok(Self::Torch(reader))
    }

    fn format(&self) -> CheckpointFormat {
        match self {
            Self::Safetensors(_) => CheckpointFormat::Safetensors,
            Self::Torch(_) => CheckpointFormat::Torch,
        }
    }

    /// Every stored key with its shape and dtype.
    fn infos(&self) -> BTreeMap<String, StoredInfo> {
        match self {
            Self::Safetensors(file) => file
                .tensors()
                .iter()
                .map(|(k, t)| {
                    let info = StoredInfo {
                        shape: t.shape.clone(),
                        dtype: t.dtype.to_lowercase(),
                    };
                    (k.clone(), info)
                })
                .collect(),
            Self::Torch(reader) => reader
                .tensors()
                .iter()
                .map(|(k, snap)| {
                    let info = StoredInfo {
                        shape: snap.shape.to_vec(),
                        dtype: dtype_name(snap.dtype),
                    };
                    (k.clone(), info)
                })
                .collect(),
        }
    }

    /// The values of `key` widened to f32.
    fn read_f32(&self, path: &Path, key: &str) -> Result<Vec<f32>, LoadError> {
        let data_error = |detail: String| LoadError::TensorData {
            path: path.to_path_buf(),
            key: key.to_string(),
            detail,
        };
        let unsupported = |dtype: String| LoadError::UnsupportedDtype {
            path: path.to_path_buf(),
            key: key.to_string(),
            dtype,
        };
        match self {
            Self::Safetensors(file) => {
                let dtype = file
                    .tensors()
                    .get(key)
                    .map(|t| t.dtype.clone())
                    .ok_or_else(|| data_error("key vanished".into()))?;
                let raw = file
                    .read_bytes(key)
                    .ok_or_else(|| data_error("key vanished".into()))??;
                let values = match dtype.as_str() {
                    "F32" => raw
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                    "F16" => raw
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    "BF16" => raw
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    other => return Err(unsupported(other.to_lowercase())),
                };
                Ok(values)
            }
            Self::Torch(reader) => {
                let snap = reader
                    .get(key)
                    .ok_or_else(|| data_error("key vanished".into()))?;
                if !matches!(
                    snap.dtype,
                    DType::F32 | DType::F16 | DType::BF16 | DType::F64
                ) {
                    return Err(unsupported(dtype_name(snap.dtype)));
                }
                let data: TensorData = snap.to_data().map_err(|e| data_error(format!("{e:?}")))?;
                data.convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| data_error(format!("{e:?}")))
            }
        }
    }
}

/// The first bytes of a zip archive (`torch.save` since torch 1.6).
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// The first bytes of a legacy (pre-1.6) `torch.save` file: pickle protocol 2, then the
/// torch magic number 0x1950a86a20f9469cfc6c as a LONG1.
const LEGACY_TORCH_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

/// Refuses a file that is neither a torch zip nor a legacy torch pickle before the pickle
/// reader sees it: that reader allocates whatever a string length in the file claims (up to
/// 4 GiB for a few random bytes), so a foreign file must not reach it.
fn check_torch_magic(path: &Path) -> Result<(), LoadError> {
    use std::io::Read;
    let io_error = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(LEGACY_TORCH_MAGIC.len());
    std::fs::File::open(path)
        .map_err(io_error)?
        .take(LEGACY_TORCH_MAGIC.len() as u64)
        .read_to_end(&mut head)
        .map_err(io_error)?;
    if head.starts_with(ZIP_MAGIC) || head.starts_with(LEGACY_TORCH_MAGIC) {
        return Ok(());
    }
    Err(LoadError::Format {
        path: path.to_path_buf(),
        format: "torch",
        detail: format!(
            "starts with {} (bytes 0..{}), neither a zip archive (50 4b 03 04) nor a legacy torch pickle",
            head.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            head.len()
        ),
    })
}

fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

/// What a stored key is, once prefixes are stripped.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyRole {
    /// A backbone tensor under its canonical fair-esm name.
    Backbone(String),
    /// A RoPE `inv_freq` stored once for every layer: HF transformers 5.x writes
    /// `encoder.layer.*.attention.self.rotary_embeddings.inv_freq`, its current `EsmModel`
    /// keeps one model-level `rotary_embeddings.inv_freq`.
    SharedInvFreq,
    /// A head or unused table, ignored.
    Ignored,
    /// Not an ESM tensor.
    Unknown,
}

/// Maps an HF or fair-esm key to its canonical fair-esm name (`layers.{i}.self_attn.q_proj.weight`,
/// `embed_tokens.weight`, `emb_layer_norm_after.bias`, ...): HF's `encoder.layer.{i}.attention.
/// self.query` is fair-esm's `layers.{i}.self_attn.q_proj`, and so on (table in the body).
pub fn canonical_name(key: &str) -> KeyRole {
    let key = key.strip_prefix("esm.").unwrap_or(key);
    match canonical_name_as_stored(key) {
        // Older LayerNorm parameter names (TF-style), as HF's loader also accepts them.
        KeyRole::Backbone(name) => KeyRole::Backbone(match name.rsplit_once('.') {
            Some((module, "gamma")) if module.contains("norm") => format!("{module}.weight"),
            Some((module, "beta")) if module.contains("norm") => format!("{module}.bias"),
            _ => name,
        }),
        other => other,
    }
}

/// [`canonical_name`] before LayerNorm parameter names are unified.
fn canonical_name_as_stored(key: &str) -> KeyRole {
    if key == "rotary_embeddings.inv_freq"
        || key == "encoder.layer.*.attention.self.rotary_embeddings.inv_freq"
    {
        return KeyRole::SharedInvFreq;
    }
    let ignored_prefixes = [
        "lm_head.",
        "contact_head.",
        "classifier.",
        "pooler.",
        "encoder.lm_head.",
        "embeddings.position_embeddings.",
        "embeddings.position_ids",
        "embed_positions.",
    ];
    if ignored_prefixes.iter().any(|p| key.starts_with(p)) {
        return KeyRole::Ignored;
    }
    // HF names.
    if key == "embeddings.word_embeddings.weight" {
        return KeyRole::Backbone("embed_tokens.weight".into());
    }
    if let Some(rest) = key.strip_prefix("encoder.emb_layer_norm_after.") {
        return KeyRole::Backbone(format!("emb_layer_norm_after.{rest}"));
    }
    if let Some(rest) = key.strip_prefix("encoder.layer.") {
        let Some((index, tail)) = rest.split_once('.') else {
            return KeyRole::Unknown;
        };
        let mapped = [
            ("attention.self.query.", "self_attn.q_proj."),
            ("attention.self.key.", "self_attn.k_proj."),
            ("attention.self.value.", "self_attn.v_proj."),
            ("attention.self.rotary_embeddings.", "self_attn.rot_emb."),
            ("attention.output.dense.", "self_attn.out_proj."),
            ("attention.LayerNorm.", "self_attn_layer_norm."),
            ("intermediate.dense.", "fc1."),
            ("output.dense.", "fc2."),
            ("LayerNorm.", "final_layer_norm."),
        ]
        .iter()
        .find_map(|(hf, fair)| tail.strip_prefix(hf).map(|p| format!("{fair}{p}")));
        return match mapped {
            Some(t) => KeyRole::Backbone(format!("layers.{index}.{t}")),
            None => KeyRole::Unknown,
        };
    }
    // fair-esm names.
    let key = key
        .strip_prefix("encoder.sentence_encoder.")
        .or_else(|| key.strip_prefix("encoder."))
        .unwrap_or(key);
    if key.starts_with("lm_head.") || key.starts_with("contact_head.") {
        return KeyRole::Ignored;
    }
    if key.starts_with("embed_tokens.")
        || key.starts_with("emb_layer_norm_after.")
        || key.starts_with("layers.")
    {
        return KeyRole::Backbone(key.to_string());
    }
    KeyRole::Unknown
}

/// The layer index of a canonical `layers.{i}.` name.
fn layer_index(canonical: &str) -> Option<usize> {
    canonical
        .strip_prefix("layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Matches the stored size to a preset when no config was given.
fn infer_config(path: &Path, source: &TensorSource) -> Result<EsmConfig, LoadError> {
    let mut layers = 0;
    let mut hidden = 0;
    for (key, info) in source.infos() {
        if let KeyRole::Backbone(name) = canonical_name(&key) {
            if let Some(i) = layer_index(&name) {
                layers = layers.max(i + 1);
            }
            if name == "embed_tokens.weight" && info.shape.len() == 2 {
                hidden = info.shape[1];
            }
        }
    }
    PRESET_NAMES
        .iter()
        .filter_map(|n| EsmConfig::preset(n).ok())
        .find(|c| c.num_hidden_layers == layers && c.hidden_size == hidden)
        .ok_or(LoadError::CannotInferConfig {
            path: path.to_path_buf(),
            layers,
            hidden,
        })
}

/// Canonical names and shapes an ESM-2 of `config` needs.
fn expected_tensors(config: &EsmConfig) -> Vec<(String, Vec<usize>)> {
    let h = config.hidden_size;
    let f = config.intermediate_size;
    let mut out = vec![
        (
            "embed_tokens.weight".to_string(),
            vec![config.vocab_size, h],
        ),
        ("emb_layer_norm_after.weight".to_string(), vec![h]),
        ("emb_layer_norm_after.bias".to_string(), vec![h]),
    ];
    for i in 0..config.num_hidden_layers {
        let p = format!("layers.{i}.");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push((format!("{p}self_attn.{proj}.weight"), vec![h, h]));
            out.push((format!("{p}self_attn.{proj}.bias"), vec![h]));
        }
        out.push((
            format!("{p}self_attn.rot_emb.inv_freq"),
            vec![config.head_dim() / 2],
        ));
        for norm in ["self_attn_layer_norm", "final_layer_norm"] {
            out.push((format!("{p}{norm}.weight"), vec![h]));
            out.push((format!("{p}{norm}.bias"), vec![h]));
        }
        out.push((format!("{p}fc1.weight"), vec![f, h]));
        out.push((format!("{p}fc1.bias"), vec![f]));
        out.push((format!("{p}fc2.weight"), vec![h, f]));
        out.push((format!("{p}fc2.bias"), vec![h]));
    }
    out
}

/// A checkpoint whose keys, shapes and layer count are checked, its tensors not yet read:
/// [`OpenCheckpoint::read_layer`] and friends read them one at a time, so a caller that
/// uploads each layer and drops it holds one layer in host memory, not the file.
pub struct OpenCheckpoint {
    pub path: PathBuf,
    pub config: EsmConfig,
    pub format: CheckpointFormat,
    /// Dtypes found among the backbone tensors.
    pub stored_dtypes: BTreeSet<String>,
    /// Keys ignored as heads or unused tables.
    pub ignored: Vec<String>,
    source: TensorSource,
    /// Canonical name -> (stored key, expected shape), for every tensor the model needs.
    keys: BTreeMap<String, (String, Vec<usize>)>,
}

impl OpenCheckpoint {
    fn index(path: PathBuf, source: TensorSource, config: EsmConfig) -> Result<Self, LoadError> {
        let infos = source.infos();
        let mut by_canonical: BTreeMap<String, String> = BTreeMap::new();
        let mut ignored = Vec::new();
        let mut layers_found = 0;
        let mut deepest_key = String::new();
        let mut shared_inv_freq: Option<String> = None;
        for key in infos.keys() {
            match canonical_name(key) {
                KeyRole::SharedInvFreq => shared_inv_freq = Some(key.clone()),
                KeyRole::Backbone(name) => {
                    if let Some(i) = layer_index(&name)
                        && i + 1 > layers_found
                    {
                        layers_found = i + 1;
                        deepest_key = key.clone();
                    }
                    by_canonical.insert(name, key.clone());
                }
                KeyRole::Ignored => ignored.push(key.clone()),
                KeyRole::Unknown => {
                    return Err(LoadError::UnexpectedTensor {
                        path,
                        key: key.clone(),
                    });
                }
            }
        }
        // A shared inv_freq serves every layer that stores none of its own.
        if let Some(shared) = &shared_inv_freq {
            for i in 0..config.num_hidden_layers {
                by_canonical
                    .entry(format!("layers.{i}.self_attn.rot_emb.inv_freq"))
                    .or_insert_with(|| shared.clone());
            }
        }
        if layers_found > config.num_hidden_layers {
            return Err(LoadError::LayerCount {
                path,
                expected: config.num_hidden_layers,
                found: layers_found,
                key: deepest_key,
            });
        }

        let mut stored_dtypes = BTreeSet::new();
        let expected = expected_tensors(&config);
        let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        for (name, source_key) in &by_canonical {
            if !expected_names.contains(name.as_str()) {
                return Err(LoadError::UnexpectedTensor {
                    path,
                    key: source_key.clone(),
                });
            }
        }
        let mut keys = BTreeMap::new();
        for (name, shape) in expected {
            let Some(key) = by_canonical.get(&name) else {
                if layer_index(&name).is_some_and(|i| i >= layers_found) && layers_found > 0 {
                    return Err(LoadError::LayerCount {
                        path,
                        expected: config.num_hidden_layers,
                        found: layers_found,
                        key: deepest_key,
                    });
                }
                return Err(LoadError::MissingTensor {
                    path,
                    key: name,
                    expected: shape,
                });
            };
            let info = &infos[key];
            if info.shape != shape {
                return Err(LoadError::ShapeMismatch {
                    path,
                    key: key.clone(),
                    expected: shape,
                    found: info.shape.clone(),
                });
            }
            stored_dtypes.insert(info.dtype.clone());
            keys.insert(name, (key.clone(), shape));
        }
        Ok(Self {
            path,
            config,
            format: source.format(),
            stored_dtypes,
            ignored,
            source,
            keys,
        })
    }

    /// One tensor by canonical name, widened to f32.
    fn read(&self, name: &str) -> Result<HostTensor, LoadError> {
        let (key, shape) = self
            .keys
            .get(name)
            .unwrap_or_else(|| unreachable!("{name} is an expected tensor, checked when opened"));
        let data = self.source.read_f32(&self.path, key)?;
        if data.len() != shape.iter().product::<usize>() {
            return Err(LoadError::TensorData {
                path: self.path.clone(),
                key: key.clone(),
                detail: format!("{} values for shape {shape:?}", data.len()),
            });
        }
        Ok(HostTensor::new(shape.clone(), data))
    }

    fn linear(&self, prefix: &str) -> Result<LinearWeights, LoadError> {
        Ok(LinearWeights {
            weight: self.read(&format!("{prefix}.weight"))?,
            bias: self.read(&format!("{prefix}.bias"))?,
        })
    }

    fn norm(&self, prefix: &str) -> Result<NormWeights, LoadError> {
        Ok(NormWeights {
            weight: self.read(&format!("{prefix}.weight"))?,
            bias: self.read(&format!("{prefix}.bias"))?,
        })
    }

    /// Layer `i`'s weights (`i < config.num_hidden_layers`).
    pub fn read_layer(&self, i: usize) -> Result<LayerWeights, LoadError> {
        let p = format!("layers.{i}");
        Ok(LayerWeights {
            q_proj: self.linear(&format!("{p}.self_attn.q_proj"))?,
            k_proj: self.linear(&format!("{p}.self_attn.k_proj"))?,
            v_proj: self.linear(&format!("{p}.self_attn.v_proj"))?,
            out_proj: self.linear(&format!("{p}.self_attn.out_proj"))?,
            inv_freq: self.read(&format!("{p}.self_attn.rot_emb.inv_freq"))?.data,
            self_attn_layer_norm: self.norm(&format!("{p}.self_attn_layer_norm"))?,
            fc1: self.linear(&format!("{p}.fc1"))?,
            fc2: self.linear(&format!("{p}.fc2"))?,
            final_layer_norm: self.norm(&format!("{p}.final_layer_norm"))?,
        })
    }

    /// Values in the backbone's tensors (`inv_freq` included).
    pub fn parameter_count(&self) -> usize {
        self.keys
            .values()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }

    /// `embed_tokens.weight`, `[vocab, hidden]`.
    pub fn read_embed_tokens(&self) -> Result<HostTensor, LoadError> {
        self.read("embed_tokens.weight")
    }

    /// `emb_layer_norm_after`.
    pub fn read_final_norm(&self) -> Result<NormWeights, LoadError> {
        self.norm("emb_layer_norm_after")
    }

    /// An error naming the first of `tensors` (canonical name, values; a layer's or the
    /// whole model's `named_tensors`) holding NaN or Inf, by its stored key, with the flat
    /// index, if any.
    pub fn check_finite(&self, tensors: &[(String, &[f32])]) -> Result<(), LoadError> {
        let Some((name, index, value)) = first_non_finite(tensors) else {
            return Ok(());
        };
        // The key as the file stores it, and the canonical name when that differs.
        let key = match self.keys.get(&name) {
            Some((stored, _)) if *stored != name => format!("{stored} ({name})"),
            _ => name,
        };
        Err(LoadError::NonFinite {
            path: self.path.clone(),
            key,
            index,
            value,
        })
    }

    /// Every tensor, into host memory at once (check them with
    /// `check_finite(&checkpoint.weights.named_tensors())`).
    pub fn read_all(&self) -> Result<Checkpoint, LoadError> {
        let layers = (0..self.config.num_hidden_layers)
            .map(|i| self.read_layer(i))
            .collect::<Result<Vec<_>, _>>()?;
        let weights = EsmWeights {
            config: self.config.clone(),
            embed_tokens: self.read_embed_tokens()?,
            layers,
            emb_layer_norm_after: self.read_final_norm()?,
        };
        Ok(Checkpoint {
            weights,
            path: self.path.clone(),
            format: self.format,
            stored_dtypes: self.stored_dtypes.clone(),
            ignored: self.ignored.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_and_fair_esm_names_meet_in_one_canonical_name() {
        let b = |s: &str| KeyRole::Backbone(s.to_string());
        assert_eq!(
            canonical_name("esm.encoder.layer.3.attention.self.query.weight"),
            b("layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(
            canonical_name("encoder.sentence_encoder.layers.3.self_attn.q_proj.weight"),
            b("layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(
            canonical_name("encoder.layer.0.attention.self.rotary_embeddings.inv_freq"),
            b("layers.0.self_attn.rot_emb.inv_freq")
        );
        assert_eq!(
            canonical_name("esm.encoder.layer.5.LayerNorm.bias"),
            b("layers.5.final_layer_norm.bias")
        );
        assert_eq!(
            canonical_name("esm.encoder.layer.5.output.dense.bias"),
            b("layers.5.fc2.bias")
        );
        assert_eq!(
            canonical_name("esm.embeddings.word_embeddings.weight"),
            b("embed_tokens.weight")
        );
        assert_eq!(
            canonical_name("encoder.emb_layer_norm_after.weight"),
            b("emb_layer_norm_after.weight")
        );
        assert_eq!(
            canonical_name("embed_tokens.weight"),
            b("embed_tokens.weight")
        );
        assert_eq!(canonical_name("classifier.dense.weight"), KeyRole::Ignored);
        assert_eq!(canonical_name("encoder.lm_head.weight"), KeyRole::Ignored);
        assert_eq!(
            canonical_name("esm.contact_head.regression.weight"),
            KeyRole::Ignored
        );
        assert_eq!(canonical_name("decoder.weight"), KeyRole::Unknown);
        assert_eq!(
            canonical_name("encoder.layer.0.attention.self.gate.weight"),
            KeyRole::Unknown
        );
    }

    #[test]
    fn expected_tensors_cover_every_weight() {
        let c = EsmConfig::preset("esm2_t6_8M_UR50D").unwrap();
        // 3 + 6 layers x 17 = 105 backbone tensors (the 8M file adds 8 ignored ones).
        assert_eq!(expected_tensors(&c).len(), 105);
    }
}
