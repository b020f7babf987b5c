//! Checking other people's deployments against this project's FP32 oracle: the generators'
//! cases as FASTA for any stack to embed, and a judge of the pooled embeddings it returns.
//!
//! Pooling conventions differ between users of fair-esm and HF (mean over residues with BOS
//! and EOS excluded, mean over every token, the BOS token alone): the check computes all
//! three from the oracle's token states, says which one the embeddings match, and diagnoses
//! the usual pipeline faults (another pooling, truncation, non-finite rows). Shrinking is
//! replaced by "smallest failing cases first".

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::metrics;
use super::strategies::{Stratum, protein};
use crate::batch::pool_residues;
use crate::input::Protein;

/// One generated case for export.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExportedCase {
    /// The FASTA id: `case-<stratum>-s<seed>-<index>`.
    pub id: String,
    pub stratum: String,
    pub residues: usize,
}

/// `per_stratum` proteins of each stratum, deterministic in `seed`, named as [`ExportedCase`]
/// says.
pub fn generate_cases(strata: &[Stratum], per_stratum: usize, seed: u64) -> Vec<Protein> {
    let mut bytes = [0u8; 32];
    StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let mut out = Vec::with_capacity(strata.len() * per_stratum);
    for &s in strata {
        for i in 0..per_stratum {
            // Generation cannot fail: the strategies reject nothing.
            let Ok(tree) = protein(s).new_tree(&mut runner) else {
                continue;
            };
            let mut p = tree.current();
            p.name = format!("case-{s}-s{seed}-{i}");
            out.push(p);
        }
    }
    out
}

/// How a pooled embedding was formed from the token states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Mean over the residues, BOS and EOS excluded (this project's, and HF users' usual).
    ResidueMean,
    /// Mean over every token, BOS and EOS included.
    AllTokenMean,
    /// The BOS (`<cls>`) token's state alone.
    Bos,
}

impl Pooling {
    pub const ALL: [Pooling; 3] = [Pooling::ResidueMean, Pooling::AllTokenMean, Pooling::Bos];

    fn pool(self, states: &[f32], hidden: usize) -> Vec<f32> {
        match self {
            Pooling::ResidueMean => pool_residues(states, hidden),
            Pooling::AllTokenMean => {
                let rows = (states.len() / hidden).max(1) as f64;
                (0..hidden)
                    .map(|c| {
                        (states
                            .iter()
                            .skip(c)
                            .step_by(hidden)
                            .map(|&v| v as f64)
                            .sum::<f64>()
                            / rows) as f32
                    })
                    .collect()
            }
            Pooling::Bos => states[..hidden].to_vec(),
        }
    }
}

/// One record of a deployment check.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecordCheck {
    pub name: String,
    pub residues: usize,
    /// Cosine of their embedding with the oracle's (residue-mean pooling).
    #[serde(deserialize_with = "super::verdict::f64_or_nan")]
    pub cosine: f64,
    /// `||theirs - ours|| / ||ours||`.
    #[serde(deserialize_with = "super::verdict::f64_or_nan")]
    pub relative_l2: f64,
    pub passed: bool,
}

/// The outcome of checking a deployment's pooled embeddings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeploymentCheck {
    /// Per-record pooled cosine threshold.
    pub threshold: f64,
    pub records: usize,
    /// The pooling their embeddings match best (over their finite rows; `None` when fewer
    /// than half the rows are finite), with the median cosine under each.
    pub pooling_detected: Option<Pooling>,
    pub median_cosine_by_pooling: Vec<(Pooling, f64)>,
    /// Failing records, smallest first.
    pub failures: Vec<RecordCheck>,
    /// The worst passing record (smallest cosine), when any passed.
    pub worst_passing: Option<RecordCheck>,
    /// What the failures suggest, in words.
    pub diagnosis: Vec<String>,
}

impl DeploymentCheck {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Judges `theirs` (one pooled row per protein, `[hidden]` each) against the oracle's FP32
/// token states of the same proteins (`[n + 2, hidden]` each).
pub fn check_pooled(
    proteins: &[Protein],
    oracle_states: &[Vec<f32>],
    theirs: &[Vec<f32>],
    hidden: usize,
    threshold: f64,
) -> DeploymentCheck {
    let median_cosine_by_pooling: Vec<(Pooling, f64)> = Pooling::ALL
        .iter()
        .map(|&pooling| {
            let mut cos: Vec<f64> = oracle_states
                .iter()
                .zip(theirs)
                .map(|(s, t)| metrics::cosine(&pooling.pool(s, hidden), t))
                .filter(|c| !c.is_nan())
                .collect();
            cos.sort_by(f64::total_cmp);
            (pooling, cos.get(cos.len() / 2).copied().unwrap_or(f64::NAN))
        })
        .collect();
    let finite_rows = theirs
        .iter()
        .filter(|t| t.iter().all(|v| v.is_finite()))
        .count();
    let pooling_detected = (2 * finite_rows >= theirs.len().max(1))
        .then(|| {
            median_cosine_by_pooling
                .iter()
                .filter(|(_, c)| !c.is_nan())
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(p, _)| *p)
        })
        .flatten();
    let mut all: Vec<RecordCheck> = proteins
        .iter()
        .zip(oracle_states)
        .zip(theirs)
        .map(|((p, s), t)| {
            let ours = pool_residues(s, hidden);
            let cosine = metrics::cosine(&ours, t);
            RecordCheck {
                name: p.name.clone(),
                residues: p.residues.len(),
                cosine,
                relative_l2: metrics::relative_l2(t, &ours),
                passed: cosine > threshold,
            }
        })
        .collect();
    all.sort_by_key(|r| r.residues);
    let (failures, passing): (Vec<RecordCheck>, Vec<RecordCheck>) =
        all.into_iter().partition(|r| !r.passed);
    let worst_passing = passing
        .iter()
        .min_by(|a, b| a.cosine.total_cmp(&b.cosine))
        .cloned();
    let mut diagnosis = Vec::new();
    if let Some(pooling_detected) = pooling_detected.filter(|p| *p != Pooling::ResidueMean) {
        let median = |p| {
            median_cosine_by_pooling
                .iter()
                .find(|(q, _)| *q == p)
                .map_or(f64::NAN, |(_, c)| *c)
        };
        diagnosis.push(format!(
            "the embeddings match {} pooling (median cosine {:.6}) better than the mean over \
             residues with BOS and EOS excluded ({:.6}): pool over residues only",
            match pooling_detected {
                Pooling::AllTokenMean => "mean-over-every-token (BOS and EOS included)",
                Pooling::Bos => "BOS-token",
                Pooling::ResidueMean => "residue-mean",
            },
            median(pooling_detected),
            median(Pooling::ResidueMean)
        ));
    }
    let non_finite: Vec<&RecordCheck> = failures.iter().filter(|r| r.cosine.is_nan()).collect();
    if let Some(first) = non_finite.first() {
        diagnosis.push(format!(
            "{} record(s) hold NaN or Inf; the shortest has {} residues ('{}')",
            non_finite.len(),
            first.residues,
            first.name
        ));
    }
    // A length limit: failures only among the longer half of the records.
    if let Some(shortest) = failures.iter().find(|r| !r.cosine.is_nan()) {
        let mut lengths: Vec<usize> = proteins.iter().map(|p| p.residues.len()).collect();
        lengths.sort_unstable();
        let median = lengths[(lengths.len() - 1) / 2];
        let from_there = lengths.iter().filter(|&&n| n >= shortest.residues).count();
        let failing = failures.iter().filter(|r| !r.cosine.is_nan()).count();
        if shortest.residues > median {
            diagnosis.push(format!(
                "every failing record has {} residues or more ({failing} of the {from_there} \
                 records that long fail, none of the {} shorter ones): a length limit in the \
                 pipeline (truncation, a positional table, an overflow)?",
                shortest.residues,
                lengths.len() - from_there
            ));
        }
    }
    DeploymentCheck {
        threshold,
        records: proteins.len(),
        pooling_detected,
        median_cosine_by_pooling,
        failures,
        worst_passing,
        diagnosis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_deterministic_named_and_in_their_strata() {
        let a = generate_cases(&[Stratum::Tiny, Stratum::Short], 3, 9);
        let b = generate_cases(&[Stratum::Tiny, Stratum::Short], 3, 9);
        assert_eq!(a, b);
        assert_eq!(a.len(), 6);
        assert_eq!(a[4].name, "case-short-s9-1");
        assert!(a[..3].iter().all(|p| p.residues.len() <= 9));
        assert_ne!(a, generate_cases(&[Stratum::Tiny, Stratum::Short], 3, 10));
    }

    /// Two proteins' oracle states, width 2, with distinct BOS/EOS rows.
    fn oracle() -> (Vec<Protein>, Vec<Vec<f32>>) {
        let proteins = vec![
            Protein::from_letters("a", "MK"),
            Protein::from_letters("b", "MKVL"),
        ];
        let states = vec![
            vec![5.0, -5.0, 1.0, 0.2, 0.9, 0.1, -4.0, 6.0],
            vec![5.0, -5.0, 1.0, 0.1, 0.8, 0.3, 1.0, 0.2, 0.7, 0.4, -4.0, 6.0],
        ];
        (proteins, states)
    }

    #[test]
    fn the_right_pooling_passes_and_another_is_diagnosed() {
        let (proteins, states) = oracle();
        let right: Vec<Vec<f32>> = states.iter().map(|s| pool_residues(s, 2)).collect();
        let check = check_pooled(&proteins, &states, &right, 2, 0.99);
        assert!(check.passed() && check.diagnosis.is_empty(), "{check:?}");
        let wrong: Vec<Vec<f32>> = states
            .iter()
            .map(|s| Pooling::AllTokenMean.pool(s, 2))
            .collect();
        let check = check_pooled(&proteins, &states, &wrong, 2, 0.99);
        assert!(!check.passed());
        assert_eq!(check.pooling_detected, Some(Pooling::AllTokenMean));
        assert!(
            check.diagnosis[0].contains("BOS and EOS included"),
            "{:?}",
            check.diagnosis
        );
        assert_eq!(check.failures[0].name, "a", "smallest first");
    }

    #[test]
    fn failures_of_only_the_longest_records_suggest_a_length_limit() {
        let (mut proteins, states) = oracle();
        proteins[1] = Protein::from_letters("b", &"L".repeat(1010));
        let mut theirs: Vec<Vec<f32>> = states.iter().map(|s| pool_residues(s, 2)).collect();
        theirs[1] = vec![-theirs[1][0], theirs[1][1]];
        let check = check_pooled(&proteins, &states, &theirs, 2, 0.99);
        assert_eq!(check.failures.len(), 1);
        assert!(
            check.diagnosis.iter().any(|d| d.contains("length limit")),
            "{:?}",
            check.diagnosis
        );
        theirs[1] = vec![f32::NAN, 0.0];
        let check = check_pooled(&proteins, &states, &theirs, 2, 0.99);
        assert!(
            check.diagnosis.iter().any(|d| d.contains("NaN")),
            "{:?}",
            check.diagnosis
        );
    }
}
