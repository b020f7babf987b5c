//! Weights where users keep them: `hf:<org>/<name>[@<revision>]` resolved through the
//! standard Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`): `models--<org>--<name>/refs/<revision>` names a commit whose
//! files are under `snapshots/<commit>/`. A model missing from the cache is downloaded into
//! it (the `hf-hub` crate, as candle does: `config.json`, then `model.safetensors` or else
//! `pytorch_model.bin`) unless `HF_HUB_OFFLINE` is set; when that fails or is not allowed the
//! error says where it looked, why, and how to fetch it by hand.

use std::path::{Path, PathBuf};

/// Why a hub reference did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "'{spec}': expected hf:<org>/<name>[@<revision>], e.g. hf:facebook/esm2_t33_650M_UR50D"
    )]
    Malformed { spec: String },
    #[error(
        "'{repo}' (revision {revision}) is not in the Hugging Face cache: looked in {looked}. \
         Fetch it where the network allows (`huggingface-cli download {repo}`) or point HF_HOME / \
         HF_HUB_CACHE at a cache that holds it"
    )]
    NotCached {
        repo: String,
        revision: String,
        looked: PathBuf,
    },
    #[error(
        "'{repo}' (revision {revision}) is not in the Hugging Face cache (looked in {looked}) \
         and downloading it failed: {reason}. Fetch it where the network allows \
         (`huggingface-cli download {repo}`) or point HF_HOME / HF_HUB_CACHE at a cache that \
         holds it"
    )]
    DownloadFailed {
        repo: String,
        revision: String,
        looked: PathBuf,
        reason: String,
    },
    #[error("no Hugging Face cache folder: set HF_HUB_CACHE or HF_HOME (HOME is unset too)")]
    NoCacheFolder,
}

/// Whether a model missing from the cache may be downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Download what the cache lacks.
    Download,
    /// Only read the cache (`HF_HUB_OFFLINE` set to anything but `0` or empty).
    CacheOnly,
}

impl Fetch {
    /// What the environment allows.
    pub fn from_env() -> Self {
        match std::env::var("HF_HUB_OFFLINE") {
            Ok(v) if !v.is_empty() && v != "0" => Fetch::CacheOnly,
            _ => Fetch::Download,
        }
    }
}

/// The checkpoint files a snapshot may hold, in the order they are fetched.
const CHECKPOINT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// The cache folder the environment names (see the module docs).
pub fn default_cache() -> Result<PathBuf, HubError> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Ok(PathBuf::from(home).join("hub"));
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
        .ok_or(HubError::NoCacheFolder)
}

/// The snapshot folder of `spec` (`<org>/<name>[@<revision>]`, revision `main` unless
/// given: a branch or tag under `refs/`, or a commit hash) in `cache`.
pub fn resolve_in_cache(cache: &Path, spec: &str) -> Result<PathBuf, HubError> {
    let (repo, revision) = repo_and_revision(spec);
    let Some((org, name)) = repo.split_once('/') else {
        return Err(HubError::Malformed {
            spec: spec.to_string(),
        });
    };
    if org.is_empty() || name.is_empty() || name.contains('/') || revision.is_empty() {
        return Err(HubError::Malformed {
            spec: spec.to_string(),
        });
    }
    let folder = cache.join(format!("models--{org}--{name}"));
    let commit = std::fs::read_to_string(folder.join("refs").join(revision))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    let snapshot = folder.join("snapshots").join(&commit);
    if snapshot.is_dir() {
        Ok(snapshot)
    } else {
        Err(HubError::NotCached {
            repo: repo.to_string(),
            revision: revision.to_string(),
            looked: snapshot,
        })
    }
}

/// `spec` split into repository id and revision (`main` unless given).
fn repo_and_revision(spec: &str) -> (&str, &str) {
    spec.split_once('@').unwrap_or((spec, "main"))
}

/// Whether `snapshot` holds a config and a checkpoint.
fn is_complete(snapshot: &Path) -> bool {
    snapshot.join("config.json").is_file()
        && CHECKPOINT_FILES.iter().any(|f| snapshot.join(f).is_file())
}

/// `spec`'s snapshot in `cache`, downloaded into it first when missing (or lacking its
/// checkpoint) and `fetch` allows.
pub fn resolve(cache: &Path, spec: &str, fetch: Fetch) -> Result<PathBuf, HubError> {
    match resolve_in_cache(cache, spec) {
        Ok(snapshot) if is_complete(&snapshot) || fetch == Fetch::CacheOnly => Ok(snapshot),
        Err(HubError::NotCached { .. }) | Ok(_) if fetch == Fetch::Download => {
            download(cache, spec)
        }
        other => other,
    }
}

/// Downloads `spec`'s config and checkpoint into `cache` (the hub's own layout, so a later
/// [`resolve_in_cache`] finds them), showing progress when stderr is a terminal.
fn download(cache: &Path, spec: &str) -> Result<PathBuf, HubError> {
    use hf_hub::{Repo, RepoType, api::sync::ApiBuilder};
    use std::io::IsTerminal;

    let (repo, revision) = repo_and_revision(spec);
    let failed = |reason: String| HubError::DownloadFailed {
        repo: repo.to_string(),
        revision: revision.to_string(),
        looked: cache.join(format!("models--{}", repo.replace('/', "--"))),
        reason,
    };
    let api = ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(std::io::stderr().is_terminal())
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let remote = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    eprintln!(
        "downloading {repo} (revision {revision}) into {}",
        cache.display()
    );
    let config = remote
        .get("config.json")
        .map_err(|e| failed(format!("config.json: {e}")))?;
    let mut reasons = Vec::new();
    for file in CHECKPOINT_FILES {
        match remote.get(file) {
            Ok(_) => {
                return Ok(config
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| cache.to_path_buf()));
            }
            Err(e) => reasons.push(format!("{file}: {e}")),
        }
    }
    Err(failed(reasons.join("; ")))
}

/// `weights` as a local path: itself, or for `hf:...` its snapshot in the default cache
/// (downloaded when missing, unless `HF_HUB_OFFLINE` is set).
pub fn resolve_weights(weights: &Path) -> Result<PathBuf, HubError> {
    match weights.to_str().and_then(|w| w.strip_prefix("hf:")) {
        Some(spec) => resolve(&default_cache()?, spec, Fetch::from_env()),
        None => Ok(weights.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache laid out as huggingface_hub writes it: refs/main -> a commit's snapshot.
    fn cache_with(org: &str, name: &str, commit: &str) -> tempfile::TempDir {
        let cache = tempfile::tempdir().unwrap();
        let folder = cache.path().join(format!("models--{org}--{name}"));
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::write(folder.join("refs/main"), format!("{commit}\n")).unwrap();
        std::fs::create_dir_all(folder.join("snapshots").join(commit)).unwrap();
        cache
    }

    #[test]
    fn refs_and_commits_resolve_to_their_snapshot() {
        let cache = cache_with("facebook", "esm2_t6_8M_UR50D", "abc123");
        let want = cache
            .path()
            .join("models--facebook--esm2_t6_8M_UR50D/snapshots/abc123");
        for spec in [
            "facebook/esm2_t6_8M_UR50D",
            "facebook/esm2_t6_8M_UR50D@main",
            "facebook/esm2_t6_8M_UR50D@abc123",
        ] {
            assert_eq!(
                resolve_in_cache(cache.path(), spec).unwrap(),
                want,
                "{spec}"
            );
        }
    }

    #[test]
    fn a_missing_model_says_where_it_looked_and_bad_specs_are_named() {
        let cache = cache_with("facebook", "esm2_t6_8M_UR50D", "abc123");
        let err = resolve_in_cache(cache.path(), "facebook/esm2_t33_650M_UR50D").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("models--facebook--esm2_t33_650M_UR50D"),
            "{msg}"
        );
        assert!(msg.contains("huggingface-cli download"), "{msg}");
        for bad in ["noslash", "a/b/c", "/x", "a/b@"] {
            assert!(
                matches!(
                    resolve_in_cache(cache.path(), bad),
                    Err(HubError::Malformed { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            resolve_weights(Path::new("/some/file")).unwrap(),
            PathBuf::from("/some/file")
        );
    }

    #[test]
    fn offline_a_missing_model_is_not_fetched_and_a_complete_snapshot_needs_no_network() {
        let cache = cache_with("facebook", "esm2_t6_8M_UR50D", "abc123");
        let err = resolve(
            cache.path(),
            "facebook/esm2_t33_650M_UR50D",
            Fetch::CacheOnly,
        )
        .unwrap_err();
        assert!(matches!(err, HubError::NotCached { .. }), "{err}");
        let snapshot = cache
            .path()
            .join("models--facebook--esm2_t6_8M_UR50D/snapshots/abc123");
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        std::fs::write(snapshot.join("model.safetensors"), "").unwrap();
        // Complete: resolved from the cache even when downloads are allowed.
        assert_eq!(
            resolve(cache.path(), "facebook/esm2_t6_8M_UR50D", Fetch::Download).unwrap(),
            snapshot
        );
    }
}
