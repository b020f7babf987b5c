//! Opening a checkpoint: the file resolved, its config found, every key mapped through the
//! keys table ([`super::keys`]) and checked against what the config needs. Heads (`lm_head`, `contact_head`,
//! `classifier`, `pooler`) and unused position tables are ignored by name; any other
//! unknown tensor, a missing one, a wrong shape or a layer count that disagrees with the
//! config is an error naming the file and the key. Nothing here panics on a bad file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::error::LoadError;
use super::keys::{KeyRole, canonical_name, expected_tensors, layer_index};
use super::source::{CheckpointFormat, TensorSource};
use crate::model::config::{EsmConfig, PRESET_NAMES};
use crate::model::weights::{
    EsmWeights, HostTensor, LayerWeights, LinearWeights, NormWeights, first_non_finite,
};

/// What was learnt opening a checkpoint file: where it is, how it is stored, what was left
/// out. [`OpenCheckpoint`] and [`Checkpoint`] both carry it.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    pub path: PathBuf,
    pub format: CheckpointFormat,
    /// Dtypes found among the backbone tensors.
    pub stored_dtypes: BTreeSet<String>,
    /// Keys ignored as heads or unused tables.
    pub ignored: Vec<String>,
}

/// A loaded checkpoint: every weight in host memory, and its file.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub weights: EsmWeights,
    pub file: CheckpointFile,
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

/// A checkpoint whose keys, shapes and layer count are checked, its tensors not yet read:
/// [`OpenCheckpoint::read_layer`] and friends read them one at a time, so a caller that
/// uploads each layer and drops it holds one layer in host memory, not the file.
pub struct OpenCheckpoint {
    pub file: CheckpointFile,
    pub config: EsmConfig,
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
            file: CheckpointFile {
                path,
                format: source.format(),
                stored_dtypes,
                ignored,
            },
            config,
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
        self.read_key(key, shape.clone())
    }

    /// The stored tensor `key`, widened to f32, its value count checked against `shape`.
    fn read_key(&self, key: &str, shape: Vec<usize>) -> Result<HostTensor, LoadError> {
        let data = self.source.read_f32(&self.file.path, key)?;
        if data.len() != shape.iter().product::<usize>() {
            return Err(LoadError::TensorData {
                path: self.file.path.clone(),
                key: key.to_string(),
                detail: format!("{} values for shape {shape:?}", data.len()),
            });
        }
        Ok(HostTensor::new(shape, data))
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

    /// An ignored tensor (a head's) by the name it has once `esm.`, `encoder.` or
    /// `encoder.sentence_encoder.` is stripped, widened to f32, with its stored key; `None`
    /// when the file has no such tensor.
    pub(super) fn read_ignored(
        &self,
        name: &str,
    ) -> Result<Option<(String, HostTensor)>, LoadError> {
        let stripped = |key: &str| {
            let key = key.strip_prefix("esm.").unwrap_or(key);
            let key = key.strip_prefix("encoder.sentence_encoder.").unwrap_or(key);
            key.strip_prefix("encoder.").unwrap_or(key).to_string()
        };
        let Some(key) = self.file.ignored.iter().find(|k| stripped(k) == name) else {
            return Ok(None);
        };
        let infos = self.source.infos();
        let shape = infos.get(key).map(|i| i.shape.clone()).unwrap_or_default();
        Ok(Some((key.clone(), self.read_key(key, shape)?)))
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
            path: self.file.path.clone(),
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
            file: self.file.clone(),
        })
    }
}
