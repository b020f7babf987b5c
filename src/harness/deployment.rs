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
use super::verdict::Tolerances;
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

impl crate::named::Named for Pooling {
    const VALUES: &'static [Self] = &Pooling::ALL;
    const WHAT: &'static str = "pooling";

    /// The `--pooling` names: `residue-mean`, `all-mean`, `bos`.
    fn name(self) -> &'static str {
        match self {
            Pooling::ResidueMean => "residue-mean",
            Pooling::AllTokenMean => "all-mean",
            Pooling::Bos => "bos",
        }
    }
}

impl Pooling {
    pub const ALL: [Pooling; 3] = [Pooling::ResidueMean, Pooling::AllTokenMean, Pooling::Bos];

    /// The pooled row of one sequence's token states, `[n + 2, hidden]`.
    pub fn pool(self, states: &[f32], hidden: usize) -> Vec<f32> {
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

/// The per-record bounds a deployment's pooled rows are held to: the cosine alone passes a
/// pipeline that scales every row (a normalisation, a unit change), so the size of the
/// error and of the row are bounded too.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentBounds {
    /// Pooled cosine per record, `>`: the policy's [`Tolerances::pooled_cosine`].
    pub cosine: f64,
    /// `||theirs - ours|| / ||ours||` per record, `<`: the policy's
    /// [`Tolerances::relative_l2`] (set on all token states; a pooled row averages the
    /// per-token error, and f16 measured 3e-3 on the corpus against f16's 0.03).
    pub relative_l2: f64,
    /// `| ||theirs|| / ||ours|| - 1 |` per record, `<`: the larger of the policy's
    /// [`Tolerances::l2_norm_rel`] (the acceptance's 5% on norms) and its relative-L2
    /// bound. Since `| ||a|| - ||b|| | <= ||a - b||`, a record within the relative-L2 bound
    /// is within this one too: it never fails alone, it names what broke when a pipeline
    /// rescales its rows.
    pub norm_ratio: f64,
}

impl DeploymentBounds {
    /// The bounds of a policy's tolerances.
    pub fn of(tolerances: &Tolerances) -> Self {
        Self {
            cosine: tolerances.pooled_cosine,
            relative_l2: tolerances.relative_l2,
            norm_ratio: tolerances.l2_norm_rel.max(tolerances.relative_l2),
        }
    }
}

/// Which of [`DeploymentBounds`] a record broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentBound {
    Cosine,
    RelativeL2,
    NormRatio,
}

impl DeploymentBound {
    /// The bound as a report line names it, with its value from `bounds`.
    pub fn describe(self, bounds: &DeploymentBounds) -> String {
        match self {
            DeploymentBound::Cosine => format!("pooled cosine > {}", bounds.cosine),
            DeploymentBound::RelativeL2 => format!("relative L2 < {}", bounds.relative_l2),
            DeploymentBound::NormRatio => {
                format!("norm ratio within 1 +- {}", bounds.norm_ratio)
            }
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
    /// `||theirs|| / ||ours||`.
    #[serde(deserialize_with = "super::verdict::f64_or_nan")]
    pub norm_ratio: f64,
    /// The bounds this record broke (none when it passed); NaN breaks every one.
    pub broke: Vec<DeploymentBound>,
    pub passed: bool,
}

impl RecordCheck {
    fn judge(
        name: &str,
        residues: usize,
        ours: &[f32],
        theirs: &[f32],
        bounds: &DeploymentBounds,
    ) -> Self {
        let cosine = metrics::cosine(ours, theirs);
        let relative_l2 = metrics::relative_l2(theirs, ours);
        let norm_ratio = norm(theirs) / norm(ours);
        // Each holds only when its comparison is true, so NaN breaks every one.
        let held = [
            (DeploymentBound::Cosine, cosine > bounds.cosine),
            (
                DeploymentBound::RelativeL2,
                relative_l2 < bounds.relative_l2,
            ),
            (
                DeploymentBound::NormRatio,
                (norm_ratio - 1.0).abs() < bounds.norm_ratio,
            ),
        ];
        let broke: Vec<DeploymentBound> = held
            .into_iter()
            .filter(|(_, held)| !held)
            .map(|(bound, _)| bound)
            .collect();
        Self {
            name: name.to_string(),
            residues,
            cosine,
            relative_l2,
            norm_ratio,
            passed: broke.is_empty(),
            broke,
        }
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// The outcome of checking a deployment's pooled embeddings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeploymentCheck {
    /// Per-record pooled cosine threshold (`bounds.cosine`).
    pub threshold: f64,
    /// Every per-record bound.
    pub bounds: DeploymentBounds,
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

    /// Each broken bound with the number of failing records that broke it, in
    /// [`DeploymentBound`] order.
    pub fn broken_bounds(&self) -> Vec<(DeploymentBound, usize)> {
        [
            DeploymentBound::Cosine,
            DeploymentBound::RelativeL2,
            DeploymentBound::NormRatio,
        ]
        .into_iter()
        .map(|b| {
            (
                b,
                self.failures
                    .iter()
                    .filter(|f| f.broke.contains(&b))
                    .count(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// Failing rows looked at when searching for a row-order mismatch (each is compared with
/// every record's oracle row).
const ROW_ORDER_PROBES: usize = 64;

/// Relative spread under which per-row scale factors or offsets count as one constant.
const CONSTANT_SPREAD: f64 = 0.01;

/// Judges `theirs` (one pooled row per protein, `[hidden]` each) against the oracle's FP32
/// token states of the same proteins (`[n + 2, hidden]` each), each record under every one
/// of `bounds`. Diagnoses, in order: non-finite rows; then the first of a row-order
/// mismatch, a constant scale, a constant offset and another pooling that explains the
/// failures; then, when none did, a length limit.
pub fn check_pooled(
    proteins: &[Protein],
    oracle_states: &[Vec<f32>],
    theirs: &[Vec<f32>],
    hidden: usize,
    bounds: DeploymentBounds,
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
    let ours: Vec<Vec<f32>> = oracle_states
        .iter()
        .map(|s| pool_residues(s, hidden))
        .collect();
    let all: Vec<(usize, RecordCheck)> = proteins
        .iter()
        .zip(&ours)
        .zip(theirs)
        .map(|((p, o), t)| RecordCheck::judge(&p.name, p.residues.len(), o, t, &bounds))
        .enumerate()
        .collect();
    let failing_rows: Vec<usize> = all
        .iter()
        .filter(|(_, r)| !r.passed)
        .map(|(i, _)| *i)
        .collect();
    let mut all: Vec<RecordCheck> = all.into_iter().map(|(_, r)| r).collect();
    all.sort_by_key(|r| r.residues);
    let (failures, passing): (Vec<RecordCheck>, Vec<RecordCheck>) =
        all.into_iter().partition(|r| !r.passed);
    let worst_passing = passing
        .iter()
        .min_by(|a, b| a.cosine.total_cmp(&b.cosine))
        .cloned();
    let mut diagnosis = Vec::new();
    let non_finite: Vec<&RecordCheck> = failures.iter().filter(|r| r.cosine.is_nan()).collect();
    if let Some(first) = non_finite.first() {
        diagnosis.push(format!(
            "{} record(s) hold NaN or Inf; the shortest has {} residues ('{}')",
            non_finite.len(),
            first.residues,
            first.name
        ));
    }
    let finite_failing: Vec<usize> = failing_rows
        .iter()
        .copied()
        .filter(|&i| theirs[i].iter().all(|v| v.is_finite()))
        .collect();
    let structural = row_order(proteins, &ours, theirs, &finite_failing, &bounds)
        .or_else(|| constant_scale(&ours, theirs, &finite_failing, &bounds))
        .or_else(|| constant_offset(&ours, theirs, &finite_failing))
        .or_else(|| {
            pooling_detected
                .filter(|p| *p != Pooling::ResidueMean)
                .map(|detected| {
                    let median = |p| {
                        median_cosine_by_pooling
                            .iter()
                            .find(|(q, _)| *q == p)
                            .map_or(f64::NAN, |(_, c)| *c)
                    };
                    format!(
                        "the embeddings match {} pooling (median cosine {:.6}) better than \
                         the mean over residues with BOS and EOS excluded ({:.6}): pool over \
                         residues only",
                        match detected {
                            Pooling::AllTokenMean => {
                                "mean-over-every-token (BOS and EOS included)"
                            }
                            Pooling::Bos => "BOS-token",
                            Pooling::ResidueMean => "residue-mean",
                        },
                        median(detected),
                        median(Pooling::ResidueMean)
                    )
                })
        });
    let explained = structural.is_some();
    diagnosis.extend(structural);
    // A length limit: failures only among the longer half of the records.
    if let Some(shortest) = failures
        .iter()
        .find(|r| !r.cosine.is_nan())
        .filter(|_| !explained)
    {
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
        threshold: bounds.cosine,
        bounds,
        records: proteins.len(),
        pooling_detected,
        median_cosine_by_pooling,
        failures,
        worst_passing,
        diagnosis,
    }
}

/// A row-order mismatch: most of the (first [`ROW_ORDER_PROBES`]) failing rows match
/// another record's oracle row within the cosine bound, better than their own.
fn row_order(
    proteins: &[Protein],
    ours: &[Vec<f32>],
    theirs: &[Vec<f32>],
    failing: &[usize],
    bounds: &DeploymentBounds,
) -> Option<String> {
    let probes = &failing[..failing.len().min(ROW_ORDER_PROBES)];
    let matched: Vec<(usize, usize, f64)> = probes
        .iter()
        .filter_map(|&i| {
            let own = metrics::cosine(&ours[i], &theirs[i]);
            let (j, best) = ours
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, o)| (j, metrics::cosine(o, &theirs[i])))
                .filter(|(_, c)| !c.is_nan())
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            (best > bounds.cosine && best > own).then_some((i, j, best))
        })
        .collect();
    if matched.is_empty() || 2 * matched.len() < probes.len() {
        return None;
    }
    let n = ours.len();
    let reversed = matched.iter().all(|&(i, j, _)| j == n - 1 - i);
    let (i, j, c) = matched[0];
    Some(format!(
        "rows out of order: {} of the {} failing rows looked at match another record's \
         embedding better than their own{} (row {} '{}' matches record {} '{}', cosine \
         {c:.6}); write one row per FASTA record, in the FASTA's order",
        matched.len(),
        probes.len(),
        if reversed {
            ", as if in reverse order"
        } else {
            ""
        },
        i + 1,
        proteins[i].name,
        j + 1,
        proteins[j].name,
    ))
}

/// A constant scale: every failing row is the oracle's times one factor `k` (cosine
/// within its bound in absolute value; the per-row least-squares factors agree within
/// [`CONSTANT_SPREAD`]).
fn constant_scale(
    ours: &[Vec<f32>],
    theirs: &[Vec<f32>],
    failing: &[usize],
    bounds: &DeploymentBounds,
) -> Option<String> {
    if failing.is_empty() {
        return None;
    }
    let mut factors = Vec::with_capacity(failing.len());
    for &i in failing {
        let parallel = metrics::cosine(&ours[i], &theirs[i]).abs() > bounds.cosine;
        if !parallel {
            return None;
        }
        factors.push(dot(&theirs[i], &ours[i]) / dot(&ours[i], &ours[i]));
    }
    factors.sort_by(f64::total_cmp);
    let k = factors[factors.len() / 2];
    let spread = (factors[factors.len() - 1] - factors[0]).abs() / k.abs();
    (k.is_finite() && spread < CONSTANT_SPREAD).then(|| {
        format!(
            "every failing row is the oracle's scaled by {k:.4} ({} row(s)): a constant \
             factor in the pipeline (a normalisation, a sign, a unit change)?",
            failing.len()
        )
    })
}

/// A constant offset: at least two failing rows differ from the oracle's by one vector
/// (within [`CONSTANT_SPREAD`] of its norm).
fn constant_offset(ours: &[Vec<f32>], theirs: &[Vec<f32>], failing: &[usize]) -> Option<String> {
    if failing.len() < 2 {
        return None;
    }
    let diffs: Vec<Vec<f64>> = failing
        .iter()
        .map(|&i| {
            theirs[i]
                .iter()
                .zip(&ours[i])
                .map(|(&t, &o)| t as f64 - o as f64)
                .collect()
        })
        .collect();
    let hidden = diffs[0].len();
    let mean: Vec<f64> = (0..hidden)
        .map(|c| diffs.iter().map(|d| d[c]).sum::<f64>() / diffs.len() as f64)
        .collect();
    let size = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
    let widest = diffs
        .iter()
        .map(|d| {
            d.iter()
                .zip(&mean)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .max_by(f64::total_cmp)
        .unwrap_or(f64::NAN);
    if !(size > 0.0 && widest < CONSTANT_SPREAD * size) {
        return None;
    }
    let per_value = mean.iter().sum::<f64>() / hidden as f64;
    let uniform = mean
        .iter()
        .all(|v| (v - per_value).abs() < CONSTANT_SPREAD * per_value.abs());
    Some(if uniform {
        format!(
            "every failing row is the oracle's plus {per_value:.4} in each value ({} rows): \
             a constant offset in the pipeline?",
            failing.len()
        )
    } else {
        format!(
            "every failing row is the oracle's plus one vector (norm {size:.4}, {} rows): a \
             constant offset in the pipeline (a bias added, a mean not subtracted)?",
            failing.len()
        )
    })
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

    const BOUNDS: DeploymentBounds = DeploymentBounds {
        cosine: 0.99,
        relative_l2: 0.03,
        norm_ratio: 0.05,
    };

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
        let check = check_pooled(&proteins, &states, &right, 2, BOUNDS);
        assert!(check.passed() && check.diagnosis.is_empty(), "{check:?}");
        let wrong: Vec<Vec<f32>> = states
            .iter()
            .map(|s| Pooling::AllTokenMean.pool(s, 2))
            .collect();
        let check = check_pooled(&proteins, &states, &wrong, 2, BOUNDS);
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
        let check = check_pooled(&proteins, &states, &theirs, 2, BOUNDS);
        assert_eq!(check.failures.len(), 1);
        assert!(
            check.diagnosis.iter().any(|d| d.contains("length limit")),
            "{:?}",
            check.diagnosis
        );
        theirs[1] = vec![f32::NAN, 0.0];
        let check = check_pooled(&proteins, &states, &theirs, 2, BOUNDS);
        assert!(
            check.diagnosis.iter().any(|d| d.contains("NaN")),
            "{:?}",
            check.diagnosis
        );
    }

    #[test]
    fn scaled_rows_fail_the_size_bounds_and_are_named_as_a_scale() {
        let (proteins, states) = oracle();
        let scaled: Vec<Vec<f32>> = states
            .iter()
            .map(|s| pool_residues(s, 2).iter().map(|v| v * 1.5).collect())
            .collect();
        let check = check_pooled(&proteins, &states, &scaled, 2, BOUNDS);
        assert_eq!(check.failures.len(), 2, "{check:?}");
        assert_eq!(
            check.broken_bounds(),
            vec![
                (DeploymentBound::RelativeL2, 2),
                (DeploymentBound::NormRatio, 2)
            ]
        );
        assert!(check.diagnosis[0].contains("scaled by 1.5000"), "{check:?}");
    }

    #[test]
    fn swapped_rows_are_a_row_order_mismatch_and_an_offset_is_an_offset() {
        let (proteins, states) = oracle();
        let right: Vec<Vec<f32>> = states.iter().map(|s| pool_residues(s, 2)).collect();
        let swapped = vec![right[1].clone(), right[0].clone()];
        let check = check_pooled(&proteins, &states, &swapped, 2, BOUNDS);
        assert!(!check.passed());
        assert_eq!(check.diagnosis.len(), 1, "{:?}", check.diagnosis);
        assert!(
            check.diagnosis[0].contains("rows out of order")
                && check.diagnosis[0].contains("reverse order"),
            "{:?}",
            check.diagnosis
        );
        let offset: Vec<Vec<f32>> = right
            .iter()
            .map(|r| r.iter().map(|v| v + 0.5).collect())
            .collect();
        let check = check_pooled(&proteins, &states, &offset, 2, BOUNDS);
        assert_eq!(check.diagnosis.len(), 1, "{:?}", check.diagnosis);
        assert!(
            check.diagnosis[0].contains("plus 0.5000 in each value"),
            "{:?}",
            check.diagnosis
        );
    }
}
