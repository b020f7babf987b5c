//! Weights where users keep them: `hf:<org>/<name>[@<revision>]` resolved through the
//! standard Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`): `models--<org>--<name>/refs/<revision>` names a commit whose
//! files are under `snapshots/<commit>/`. Nothing is downloaded here; a model missing from
//! the cache is an error that says where it looked and how to fetch it.

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
    #[error("no Hugging Face cache folder: set HF_HUB_CACHE or HF_HOME (HOME is unset too)")]
    NoCacheFolder,
}

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
    let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
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

/// `weights` as a local path: itself, or for `hf:...` its snapshot in the default cache.
pub fn resolve_weights(weights: &Path) -> Result<PathBuf, HubError> {
    match weights.to_str().and_then(|w| w.strip_prefix("hf:")) {
        Some(spec) => resolve_in_cache(&default_cache()?, spec),
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
}
