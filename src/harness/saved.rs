//! The regression files: a failure persists as `<regressions>/<policy>__<family>.txt`
//! (proptest seeds, replayed first by the next run of that family) and
//! `<regressions>/counterexamples/<policy>__<family>.fasta` (the shrunk input, replayed by
//! [`replay_counterexample`] whatever the strategies become), so a failure saved by a test
//! replays in every later campaign on any backend, and the other way round.
//!
//! `<policy>` is the whole policy ([`PolicyKey`]): a plain policy is its precision alone
//! (`f16`, the names files had before variants existed), a variant adds what sets it apart
//! (`f16+fused`, `f16+gemm=burn`, `f16+fp32=ffn.3,final-norm`), so a variant never writes
//! into, or replays from, another policy's files.

use std::any::Any;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use proptest::test_runner::{FailurePersistence, PersistedSeed};

use super::cases::Models;
use super::family::Family;
use super::verdict::{Selection, Tolerances, Verdict, failures, tightest};
use crate::input::{NormaliseOptions, Protein, read_fasta};
use crate::model::{AttentionKernel, Esm2, Gemm, Precision};

/// The whole policy a saved file belongs to: precision, attention kernel, gemm engine (when
/// not the backend's default) and FP32 places. Its [`PolicyKey::stem`] names the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyKey {
    pub precision: Precision,
    pub attention: AttentionKernel,
    /// `None` for the backend's default engine ([`Gemm::default_for`]): a plain policy's
    /// files are shared by every backend.
    pub gemm: Option<Gemm>,
    /// The FP32 places in their canonical form; `none` for a plain policy.
    pub fp32_places: String,
}

impl PolicyKey {
    /// The key of the policy `model` computes.
    pub fn of<B: Backend>(model: &Esm2<B>) -> Self {
        let plan = &model.plan;
        Self {
            precision: plan.precision,
            attention: plan.attention,
            gemm: (plan.gemm != Gemm::default_for(plan.backend)).then_some(plan.gemm),
            fp32_places: model.fp32_places.to_string(),
        }
    }

    /// Whether this is a plain policy: composed attention, the default engine, no FP32 place.
    pub fn is_plain(&self) -> bool {
        *self == PolicyKey::from(self.precision)
    }

    /// The policy part of a file name: the precision alone for a plain policy, else with
    /// `+fused`, `+gemm=<engine>` and `+fp32=<places>` (`:` written `.`, which file
    /// systems that refuse `:` accept).
    pub fn stem(&self) -> String {
        let mut stem = self.precision.name().to_string();
        if self.attention != AttentionKernel::Composed {
            stem.push('+');
            stem.push_str(self.attention.name());
        }
        if let Some(gemm) = self.gemm {
            stem.push_str("+gemm=");
            stem.push_str(gemm.name());
        }
        if self.fp32_places != PolicyKey::from(self.precision).fp32_places {
            stem.push_str("+fp32=");
            stem.push_str(&self.fp32_places.replace(':', "."));
        }
        stem
    }
}

/// The plain policy of a precision.
impl From<Precision> for PolicyKey {
    fn from(precision: Precision) -> Self {
        Self {
            precision,
            attention: AttentionKernel::Composed,
            gemm: None,
            fp32_places: crate::model::Fp32Places::none().to_string(),
        }
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.stem())
    }
}

/// Whose saved files: one of our policies, or a deployment by the stable name its user gives
/// (`--deployment-name`, else the handshake's model and dtype; never a port or a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectKey {
    Policy(PolicyKey),
    Deployment(DeploymentName),
}

impl SubjectKey {
    /// The subject part of a file name: the policy's stem, or `deployment=<name>`.
    pub fn stem(&self) -> String {
        match self {
            SubjectKey::Policy(policy) => policy.stem(),
            SubjectKey::Deployment(name) => format!("deployment={}", name.0),
        }
    }
}

impl From<PolicyKey> for SubjectKey {
    fn from(policy: PolicyKey) -> Self {
        SubjectKey::Policy(policy)
    }
}

impl From<Precision> for SubjectKey {
    fn from(precision: Precision) -> Self {
        SubjectKey::Policy(precision.into())
    }
}

impl From<DeploymentName> for SubjectKey {
    fn from(name: DeploymentName) -> Self {
        SubjectKey::Deployment(name)
    }
}

/// A deployment's name in file names: letters, digits, `.`, `_` and `-` only, 1 to 100
/// characters, so it is the same file on every file system.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentName(String);

impl DeploymentName {
    /// `text` made file-name safe: every run of other characters becomes one `-`, leading and
    /// trailing `-` and `.` dropped, cut at 100 characters; `None` when nothing is left.
    pub fn sanitised(text: &str) -> Option<Self> {
        let mut out = String::new();
        for c in text.chars() {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                out.push(c);
            } else if !out.ends_with('-') {
                out.push('-');
            }
        }
        let trimmed: String = out
            .trim_matches(|c| c == '-' || c == '.')
            .chars()
            .take(100)
            .collect();
        (!trimmed.is_empty()).then_some(Self(trimmed))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The stem of a family's saved files for a subject: `<subject>__<family>`.
pub fn saved_stem(subject: impl Into<SubjectKey>, family: Family) -> String {
    format!("{}__{}", subject.into().stem(), family.name())
}

/// Where a family's proptest seeds persist.
pub fn seeds_path(regressions: &Path, policy: impl Into<SubjectKey>, family: Family) -> PathBuf {
    regressions.join(format!("{}.txt", saved_stem(policy, family)))
}

/// Where a family's shrunk counterexample persists.
pub fn counterexample_path(
    regressions: &Path,
    policy: impl Into<SubjectKey>,
    family: Family,
) -> PathBuf {
    regressions
        .join("counterexamples")
        .join(format!("{}.fasta", saved_stem(policy, family)))
}

/// A family's seeds file as proptest's failure persistence, for a path known only at run
/// time. The format is proptest's own (`cc <hex> # shrinks to ...`, `#` comments), so files
/// written by either read in both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedsFile(pub PathBuf);

/// The header proptest writes atop a new seeds file.
const SEEDS_HEADER: &str = "\
# Seeds for failure cases proptest has generated in the past. It is
# automatically read and these particular cases re-run before any
# novel cases are generated.
#
# It is recommended to check this file in to source control so that
# everyone who runs the test benefits from these saved cases.
";

impl SeedsFile {
    /// The seeds saved in the file; none when it is absent. A line that does not parse is
    /// named on stderr and skipped, as proptest does.
    pub fn seeds(&self) -> Vec<PersistedSeed> {
        let Ok(text) = std::fs::read_to_string(&self.0) else {
            return Vec::new();
        };
        text.lines()
            .enumerate()
            .filter_map(|(at, line)| {
                let seed = line.split('#').next().unwrap_or_default().trim();
                if seed.is_empty() {
                    return None;
                }
                let parsed = seed.parse::<PersistedSeed>().ok();
                if parsed.is_none() {
                    eprintln!(
                        "warning: {}:{}: not a seed, skipped",
                        self.0.display(),
                        at + 1
                    );
                }
                parsed
            })
            .collect()
    }

    fn append(&self, seed: &PersistedSeed, shrunk: &dyn fmt::Debug) -> std::io::Result<()> {
        if let Some(dir) = self.0.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let header = if self.0.is_file() { "" } else { SEEDS_HEADER };
        let shrunk = format!("{shrunk:?}").replace(['\n', '\r'], " ");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.0)?;
        writeln!(file, "{header}{seed} # shrinks to {shrunk}")
    }
}

impl FailurePersistence for SeedsFile {
    fn load_persisted_failures2(&self, _source_file: Option<&'static str>) -> Vec<PersistedSeed> {
        self.seeds()
    }

    fn save_persisted_failure2(
        &mut self,
        _source_file: Option<&'static str>,
        seed: PersistedSeed,
        shrunken_value: &dyn fmt::Debug,
    ) {
        if let Err(e) = self.append(&seed, shrunken_value) {
            eprintln!("warning: cannot save a seed to {}: {e}", self.0.display());
        }
    }

    fn box_clone(&self) -> Box<dyn FailurePersistence> {
        Box::new(self.clone())
    }

    fn eq(&self, other: &dyn FailurePersistence) -> bool {
        other.as_any().downcast_ref::<Self>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Files a regressions folder holds for one policy, by family.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedFiles {
    /// Families with saved seeds or counterexamples, each with its files.
    pub families: Vec<(Family, Option<PathBuf>, Option<PathBuf>)>,
    /// Files of this policy whose family name is unknown: they cannot be replayed, and a
    /// replay must say so rather than skip them.
    pub unknown: Vec<PathBuf>,
}

/// Lists the seeds and counterexamples saved for `policy` under `regressions` (nothing when
/// the folder does not exist). Another policy's files (a variant's, for a plain policy, and
/// the other way round) are not listed.
pub fn saved_files(
    regressions: &Path,
    policy: impl Into<SubjectKey>,
) -> std::io::Result<SavedFiles> {
    let prefix = format!("{}__", policy.into().stem());
    let mut saved = SavedFiles::default();
    let mut add = |dir: PathBuf, ext: &str, seeds: bool| -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut paths: Vec<PathBuf> = entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        paths.sort();
        for path in paths {
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(ext))
                .and_then(|n| n.strip_prefix(&prefix))
            else {
                continue;
            };
            let Ok(family) = stem.parse::<Family>() else {
                saved.unknown.push(path);
                continue;
            };
            match saved.families.iter_mut().find(|(f, ..)| *f == family) {
                Some(entry) if seeds => entry.1 = Some(path),
                Some(entry) => entry.2 = Some(path),
                None if seeds => saved.families.push((family, Some(path), None)),
                None => saved.families.push((family, None, Some(path))),
            }
        }
        Ok(())
    };
    add(regressions.to_path_buf(), ".txt", true)?;
    add(regressions.join("counterexamples"), ".fasta", false)?;
    Ok(saved)
}

/// The outcome of replaying one saved counterexample.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Replay {
    pub file: PathBuf,
    pub family: String,
    pub sequences: usize,
    pub passed: bool,
    /// The failed verdicts, or why the file could not be replayed.
    pub failure: Option<String>,
    pub tightest: Option<Verdict>,
}

/// Replays a saved counterexample FASTA through `family`'s check and `selection`.
pub fn replay_counterexample<B: Backend>(
    family: Family,
    path: &Path,
    models: Models<'_, B>,
    tol: &Tolerances,
    selection: &Selection,
) -> Replay {
    replay_counterexample_with(
        family,
        path,
        &|p: &[Protein]| family.judge(models, p, tol),
        selection,
    )
}

/// Replays a saved counterexample FASTA through `judge` (the family's check on whatever
/// subject is under test) and `selection`.
pub fn replay_counterexample_with(
    family: Family,
    path: &Path,
    judge: &dyn Fn(&[Protein]) -> Vec<Verdict>,
    selection: &Selection,
) -> Replay {
    let proteins = match read_fasta(path, NormaliseOptions::default()) {
        Ok(p) => p,
        Err(e) => {
            return Replay {
                file: path.to_path_buf(),
                family: family.name(),
                sequences: 0,
                passed: false,
                failure: Some(format!("cannot read the counterexample: {e}")),
                tightest: None,
            };
        }
    };
    let verdicts = selection.keep(judge(&proteins));
    let failure = if verdicts.is_empty() {
        Some("no selected property applies to this family: nothing was judged".to_string())
    } else {
        failures(&verdicts)
    };
    Replay {
        file: path.to_path_buf(),
        family: family.name(),
        sequences: proteins.len(),
        passed: failure.is_none(),
        failure,
        tightest: tightest(&verdicts).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::strategies::Stratum;

    #[test]
    fn seeds_written_here_read_back_and_in_proptest_s_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = SeedsFile(dir.path().join("nested/f16__stratum-tiny.txt"));
        assert!(file.seeds().is_empty(), "an absent file holds no seed");
        let line = "cc c1105398d173dde9399a09e586000eaa1fe9a397cb606f692186ebb1447b75a3";
        let seed: PersistedSeed = line.parse().unwrap();
        file.save_persisted_failure2(None, seed.clone(), &format_args!("two\nlines"));
        file.save_persisted_failure2(None, seed.clone(), &1);
        assert_eq!(file.seeds(), vec![seed.clone(), seed]);
        let text = std::fs::read_to_string(&file.0).unwrap();
        assert!(text.starts_with("# Seeds for failure cases"), "{text}");
        assert_eq!(text.matches("# Seeds").count(), 1, "one header");
        assert!(
            text.contains(&format!("{line} # shrinks to two lines\n")),
            "{text}"
        );
    }

    #[test]
    fn deployment_names_are_file_safe_and_stems_never_clash_with_policies() {
        let name = DeploymentName::sanitised("HF EsmModel (esm2_t33) @ float16 / v2").unwrap();
        assert_eq!(name.as_str(), "HF-EsmModel-esm2_t33-float16-v2");
        assert!(
            DeploymentName::sanitised(" / :: ").is_none(),
            "nothing file-safe is left"
        );
        assert_eq!(
            DeploymentName::sanitised(&"a".repeat(300))
                .unwrap()
                .as_str()
                .len(),
            100
        );
        let stem = saved_stem(name, Family::Stratum(Stratum::Tiny));
        assert_eq!(
            stem,
            "deployment=HF-EsmModel-esm2_t33-float16-v2__stratum-tiny"
        );
        // A policy's listing never picks up a deployment's files, nor the other way round.
        let dir = tempfile::tempdir().unwrap();
        let deployment = DeploymentName::sanitised("f16").unwrap();
        std::fs::write(
            seeds_path(
                dir.path(),
                deployment.clone(),
                Family::Stratum(Stratum::Tiny),
            ),
            "",
        )
        .unwrap();
        assert!(
            saved_files(dir.path(), Precision::F16)
                .unwrap()
                .families
                .is_empty()
        );
        assert_eq!(
            saved_files(dir.path(), deployment).unwrap().families.len(),
            1
        );
    }

    #[test]
    fn saved_files_pair_seeds_with_counterexamples_and_flag_unknown_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("counterexamples")).unwrap();
        for f in [
            "f16__stratum-tiny.txt",
            "f16__nonsense.txt",
            "bf16__stratum-tiny.txt",
            "counterexamples/f16__stratum-tiny.fasta",
            "counterexamples/f16__up-to-long.fasta",
        ] {
            std::fs::write(root.join(f), "").unwrap();
        }
        let saved = saved_files(root, Precision::F16).unwrap();
        assert_eq!(saved.families.len(), 2);
        assert_eq!(saved.families[0].0, Family::Stratum(Stratum::Tiny));
        assert!(saved.families[0].1.is_some() && saved.families[0].2.is_some());
        assert_eq!(saved.families[1].0, Family::UpTo(Stratum::Long));
        assert_eq!(saved.unknown, vec![root.join("f16__nonsense.txt")]);
        let none = saved_files(&root.join("missing"), Precision::F16).unwrap();
        assert_eq!(none, SavedFiles::default());
    }

    #[test]
    fn a_variant_s_stem_names_what_sets_it_apart_and_plain_stems_are_unchanged() {
        let tiny = Family::Stratum(Stratum::Tiny);
        assert_eq!(saved_stem(Precision::F16, tiny), "f16__stratum-tiny");
        let plain = PolicyKey::from(Precision::F16Mixed);
        assert!(plain.is_plain());
        assert_eq!(plain.stem(), "f16-mixed");
        let variant = PolicyKey {
            attention: AttentionKernel::Fused,
            gemm: Some(Gemm::Burn),
            fp32_places: "attention:0-2,final-norm".into(),
            ..PolicyKey::from(Precision::F16)
        };
        assert!(!variant.is_plain());
        assert_eq!(
            saved_stem(variant.clone(), tiny),
            "f16+fused+gemm=burn+fp32=attention.0-2,final-norm__stratum-tiny"
        );
        // A plain policy's listing leaves the variant's files out, and the other way round.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(seeds_path(dir.path(), variant.clone(), tiny), "").unwrap();
        std::fs::write(seeds_path(dir.path(), Precision::F16, tiny), "").unwrap();
        let of_plain = saved_files(dir.path(), Precision::F16).unwrap();
        let of_variant = saved_files(dir.path(), variant.clone()).unwrap();
        assert_eq!(of_plain.families.len(), 1);
        assert_eq!(of_variant.families.len(), 1);
        assert_eq!(
            of_plain.families[0].1,
            Some(seeds_path(dir.path(), Precision::F16, tiny))
        );
        assert_eq!(
            of_variant.families[0].1,
            Some(seeds_path(dir.path(), variant, tiny))
        );
    }
}
