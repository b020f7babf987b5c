//! Verdicts: the outcome of one property on one case, named by a [`PropertyId`], with the
//! measured value, the threshold and the margin; selections of properties that can never be
//! empty; and the tolerances each policy is held to. A failed property is data, not an error.

use std::fmt;

use super::heads::HeadTolerances;
use crate::backend::BackendKind;
use crate::model::Precision;

/// Declares [`PropertyId`] and [`PropertyId::ALL`] from one list, so that `ALL` holds every
/// variant by construction: a property can never be left out of `ALL` and so silently leave
/// every campaign (`Selection::all`).
macro_rules! property_ids {
    ($($(#[$doc:meta])* $id:ident,)+) => {
        /// Every property the harness checks. Families select among them by id, never by
        /// label, so renaming a label cannot silently select nothing.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize,
            serde::Deserialize,
        )]
        #[serde(rename_all = "kebab-case")]
        pub enum PropertyId {
            $($(#[$doc])* $id,)+
        }

        impl PropertyId {
            /// Every property, in report order (the order of declaration).
            pub const ALL: [PropertyId; [$(PropertyId::$id),+].len()] = [$(PropertyId::$id),+];
        }
    };
}

property_ids! {
    /// Property 3: no NaN or Inf in any layer at any real token.
    NonFinite,
    /// Property 1: pooled cosine per sequence.
    PooledCosine,
    /// Property 2: mean per-token cosine.
    TokenCosineMean,
    /// Property 2: minimum per-token cosine.
    TokenCosineMin,
    /// Regression bound on the relative L2 error of all token states.
    RelativeL2,
    /// Per-token cosine of the BOS and EOS tokens.
    BoundaryTokenCosine,
    /// Property 4: smallest pooled L2 norm.
    PooledNormMin,
    /// Property 4: largest pooled L2 norm.
    PooledNormMax,
    /// Property 5: |mean difference| of all values.
    MeanDifference,
    /// Property 5: relative std difference.
    StdRelative,
    /// Property 5: relative difference of the mean per-token L2 norm.
    TokenNormRelative,
    /// Property 5: relative difference of |z| > 3 outlier counts.
    OutlierRelative,
    /// Property 6: two-sample Kolmogorov-Smirnov distance.
    KolmogorovSmirnov,
    /// Property 7: the policy under test gives the same states packed as padded.
    PackedVsPadded,
    /// Property 8: a repeat of the batch is bit-identical.
    RepeatBitIdentical,
    /// Property 8: a sequence alone equals itself padded among batch-mates.
    AloneVsPadded,
    /// Property 8: a sequence alone equals itself packed among batch-mates in reverse order.
    AloneVsPackedReversed,
    /// FP32 against HF transformers: pooled cosine per sequence.
    ReferencePooledCosine,
    /// FP32 against HF transformers: max |diff| of the pooled embeddings.
    ReferencePooledMaxAbsDiff,
    /// FP32 against HF transformers: per-token cosine of the first tokens.
    ReferenceTokenCosine,
    /// FP32 against HF transformers: max |diff| of the first tokens' states.
    ReferenceTokenMaxAbsDiff,
    /// A variant's error against FP32 within twice its plain twin's on the same input, per
    /// sequence (relative L2 of the token states; [`crate::harness::properties::within_twin`]).
    TwinErrorRatio,
    /// The checkpoint's classifier: largest |p - p32| of any class probability.
    ClassifierProbability,
    /// The checkpoint's classifier: decisions changed beyond the margin from the boundary.
    ClassifierDecisionFlip,
    /// The checkpoint's contact head: largest |p - p32| of any contact probability.
    ContactMaxAbsDiff,
    /// The checkpoint's contact head: smallest overlap of the top-L/5 contact sets.
    ContactTopOverlap,
    /// A deployment: the call got an answer of the right id, row count and width.
    Answered,
    /// A deployment: a standard protein within its `max_residues` was not refused.
    Refusal,
    /// A deployment: `||theirs - ours|| / ||ours||` of the pooled rows (max over sequences).
    PooledRelativeL2,
    /// A deployment: `| ||theirs|| / ||ours|| - 1 |` of the pooled rows (max over sequences).
    PooledNormRatio,
    /// A deployment: a protein's pooled row alone against among batch-mates (relative L2).
    AloneVsBatch,
    /// A deployment: a protein's pooled row in the batch against in the reversed batch.
    OrderIndependent,
    /// A deployment: the same request twice gives bit-identical rows.
    Deterministic,
    /// A deployment: a protein over 1,022 residues is refused or truncated to the first
    /// 1,022, nothing else.
    OverLengthHandled,
}

impl PropertyId {
    /// Properties 1-2 and the relative-L2 bound.
    pub const EQUIVALENCE: &[PropertyId] = &[
        PropertyId::PooledCosine,
        PropertyId::TokenCosineMean,
        PropertyId::TokenCosineMin,
        PropertyId::RelativeL2,
    ];
    /// Properties 3-4.
    pub const STABILITY: &[PropertyId] = &[
        PropertyId::NonFinite,
        PropertyId::PooledNormMin,
        PropertyId::PooledNormMax,
    ];
    /// Properties 5-6.
    pub const STATISTICS: &[PropertyId] = &[
        PropertyId::MeanDifference,
        PropertyId::StdRelative,
        PropertyId::TokenNormRelative,
        PropertyId::OutlierRelative,
        PropertyId::KolmogorovSmirnov,
    ];

    /// What the property measures, as reports print it.
    pub fn label(self) -> &'static str {
        match self {
            PropertyId::NonFinite => "non-finite values in any layer",
            PropertyId::PooledCosine => "pooled cosine (min over sequences)",
            PropertyId::TokenCosineMean => "token cosine mean",
            PropertyId::TokenCosineMin => "token cosine min",
            PropertyId::RelativeL2 => "relative L2",
            PropertyId::BoundaryTokenCosine => "boundary token cosine min",
            PropertyId::PooledNormMin => "pooled L2 norm min",
            PropertyId::PooledNormMax => "pooled L2 norm max",
            PropertyId::MeanDifference => "|mean difference|",
            PropertyId::StdRelative => "std relative difference",
            PropertyId::TokenNormRelative => "mean L2 norm relative difference",
            PropertyId::OutlierRelative => {
                "|z|>3 outlier count relative difference (beyond sqrt(count))"
            }
            PropertyId::KolmogorovSmirnov => "Kolmogorov-Smirnov D",
            PropertyId::PackedVsPadded => "packed vs padded max |diff|",
            PropertyId::RepeatBitIdentical => "repeat is bit-identical",
            PropertyId::AloneVsPadded => "alone vs padded with batch-mates",
            PropertyId::AloneVsPackedReversed => "alone vs packed in reverse order",
            PropertyId::ReferencePooledCosine => "HF reference: pooled cosine (min over sequences)",
            PropertyId::ReferencePooledMaxAbsDiff => "HF reference: pooled max |diff|",
            PropertyId::ReferenceTokenCosine => "HF reference: first-token cosine min",
            PropertyId::ReferenceTokenMaxAbsDiff => "HF reference: first-token max |diff|",
            PropertyId::TwinErrorRatio => {
                "error vs FP32 over the plain twin's (relative L2 ratio, max over sequences)"
            }
            PropertyId::ClassifierProbability => "classifier max |p - p32|",
            PropertyId::ClassifierDecisionFlip => "classifier decisions flipped beyond the margin",
            PropertyId::ContactMaxAbsDiff => "contact map max |p - p32|",
            PropertyId::ContactTopOverlap => "contact top-L/5 overlap (min over sequences)",
            PropertyId::Answered => "deployment answered (id, rows, width)",
            PropertyId::Refusal => "standard protein within max_residues not refused",
            PropertyId::PooledRelativeL2 => "pooled relative L2 (max over sequences)",
            PropertyId::PooledNormRatio => "pooled norm ratio |r - 1| (max over sequences)",
            PropertyId::AloneVsBatch => "alone vs with batch-mates (pooled relative L2)",
            PropertyId::OrderIndependent => "batch vs reversed batch (pooled relative L2)",
            PropertyId::Deterministic => "same request twice, max |diff|",
            PropertyId::OverLengthHandled => "over-length input refused or truncated to 1,022",
        }
    }
}

impl PropertyId {
    /// The value a lower-bounded property has when nothing is lost (1 for cosines); `None`
    /// for lower bounds without one.
    pub fn ideal(self) -> Option<f64> {
        match self {
            PropertyId::PooledCosine
            | PropertyId::TokenCosineMean
            | PropertyId::TokenCosineMin
            | PropertyId::BoundaryTokenCosine
            | PropertyId::ReferencePooledCosine
            | PropertyId::ReferenceTokenCosine
            | PropertyId::ContactTopOverlap => Some(1.0),
            _ => None,
        }
    }
}

impl fmt::Display for PropertyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A non-empty set of properties: what a family judges.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Selection(Vec<PropertyId>);

/// Selecting no property at all: a check that would pass on nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an empty selection of properties would pass on nothing")]
pub struct EmptySelection;

impl Selection {
    /// Every property.
    pub fn all() -> Self {
        Self(PropertyId::ALL.to_vec())
    }

    /// Only `ids`; an error when `ids` is empty.
    pub fn only(ids: &[PropertyId]) -> Result<Self, EmptySelection> {
        if ids.is_empty() {
            return Err(EmptySelection);
        }
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        Ok(Self(ids))
    }

    pub fn contains(&self, id: PropertyId) -> bool {
        self.0.contains(&id)
    }

    /// The verdicts this selection judges.
    pub fn keep(&self, verdicts: Vec<Verdict>) -> Vec<Verdict> {
        verdicts
            .into_iter()
            .filter(|v| self.contains(v.property))
            .collect()
    }
}

/// Reads a number JSON may hold as `null` (serde_json writes NaN and +-Inf so) as NaN.
pub fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The outcome of one property on one case.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub property: PropertyId,
    #[serde(deserialize_with = "f64_or_nan")]
    pub measured: f64,
    pub threshold: f64,
    /// Distance to the threshold, positive when the property holds (NaN when the measured
    /// value is NaN).
    #[serde(deserialize_with = "f64_or_nan")]
    pub margin: f64,
    /// The fraction of the tolerance used: the error over the allowed error, e.g.
    /// `(1 - cos) / (1 - 0.99)` for a cosine, `measured / threshold` for an upper bound.
    /// Below 1 the property holds; comparable across properties whatever their units.
    #[serde(deserialize_with = "f64_or_nan")]
    pub used: f64,
    pub passed: bool,
    /// Which sequence, layer or token was worst.
    pub detail: String,
}

impl Verdict {
    /// Holds when `measured > threshold` (NaN fails). For a cosine the error is its distance
    /// from 1; for other lower bounds the tolerance used is `threshold / measured`.
    pub fn above(property: PropertyId, measured: f64, threshold: f64, detail: String) -> Self {
        let used = match property.ideal() {
            Some(ideal) => (ideal - measured) / (ideal - threshold),
            None => threshold / measured,
        };
        Self {
            property,
            measured,
            threshold,
            margin: measured - threshold,
            used,
            passed: measured > threshold,
            detail,
        }
    }

    /// Holds when `measured < threshold` (NaN fails).
    pub fn below(property: PropertyId, measured: f64, threshold: f64, detail: String) -> Self {
        let used = if threshold > 0.0 {
            measured / threshold
        } else if measured == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        Self {
            property,
            measured,
            threshold,
            margin: threshold - measured,
            used,
            passed: measured < threshold,
            detail,
        }
    }

    /// Holds when `measured <= threshold` (NaN fails): for bounds that may be 0.
    pub fn at_most(property: PropertyId, measured: f64, threshold: f64, detail: String) -> Self {
        Self {
            passed: measured <= threshold,
            ..Self::below(property, measured, threshold, detail)
        }
    }
}

impl Verdict {
    /// [`Verdict::used`] with NaN as infinity: a NaN has used more than any tolerance, so it
    /// ranks first wherever verdicts are compared or summarised.
    pub fn used_or_infinite(&self) -> f64 {
        if self.used.is_nan() {
            f64::INFINITY
        } else {
            self.used
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: measured {:.6e}, threshold {:.6e}, {:.1}% of tolerance used{}",
            if self.passed { "ok  " } else { "FAIL" },
            self.property,
            self.measured,
            self.threshold,
            100.0 * self.used,
            if self.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.detail)
            }
        )
    }
}

/// The verdict closest to failing: a failed one first, then the largest fraction of its
/// tolerance used ([`Verdict::used`], comparable across properties of different units); NaN
/// counts as the most used.
pub fn tightest(verdicts: &[Verdict]) -> Option<&Verdict> {
    let key = |v: &Verdict| (!v.passed, v.used_or_infinite());
    verdicts.iter().max_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
    })
}

/// The failed verdicts as one message, or `None` when all held.
pub fn failures(verdicts: &[Verdict]) -> Option<String> {
    let failed: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.passed)
        .map(|v| v.to_string())
        .collect();
    if failed.is_empty() {
        None
    } else {
        Some(failed.join("\n"))
    }
}

/// Thresholds for comparing a policy with the FP32 reference.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tolerances {
    /// Property 1: pooled cosine per sequence, `>`. Acceptance: 0.99.
    pub pooled_cosine: f64,
    /// Property 2: per-token cosine mean, `>`. Acceptance: 0.99.
    pub token_cosine_mean: f64,
    /// Property 2: per-token cosine minimum, `>`. Acceptance: 0.98.
    pub token_cosine_min: f64,
    /// Regression bound on `||test - ref|| / ||ref||` over all token states, `<`.
    pub relative_l2: f64,
    /// Property 5: |mean difference| of all values, `<`. Acceptance: 0.01.
    pub mean_abs_diff: f64,
    /// Property 5: relative std difference, `<`. Acceptance: 5%.
    pub std_rel: f64,
    /// Property 5: relative difference of the mean per-token L2 norm, `<`. Acceptance: 5%.
    pub l2_norm_rel: f64,
    /// Property 5: relative difference of |z| > 3 outlier counts, `<`. Acceptance: 10%, with a
    /// Poisson slack of `sqrt(count)` outliers so that small samples do not fail on noise.
    pub outlier_rel: f64,
    /// Property 6: two-sample Kolmogorov-Smirnov distance D of all values, `<`.
    pub ks_d: f64,
    /// Property 7: max |diff| of the policy's packed states against its own padded ones,
    /// `<=`.
    pub packed_abs: f64,
    /// Property 8: max |diff| of one sequence's states across batch-mates and orders, `<`.
    pub isolation_abs: f64,
    /// Property 4: smallest pooled L2 norm of any sequence, `>`: a collapsed embedding.
    #[serde(default = "Tolerances::plan_pooled_norm_min")]
    pub pooled_norm_min: f64,
    /// Property 4: largest pooled L2 norm of any sequence, `<`: an overflowing embedding.
    #[serde(default = "Tolerances::plan_pooled_norm_max")]
    pub pooled_norm_max: f64,
    /// The head families' bounds on the checkpoint's classifier and contact head
    /// ([`HeadTolerances::for_precision`]).
    #[serde(default = "Tolerances::heads_unrecorded")]
    pub heads: HeadTolerances,
}

impl Tolerances {
    /// The bounds of property 4, the plan's (1, 1000), the same for every policy: they catch
    /// a collapsed or an overflowing embedding, not a precision loss. Reports written before
    /// these were tolerances read them back so.
    fn plan_pooled_norm_min() -> f64 {
        1.0
    }

    fn plan_pooled_norm_max() -> f64 {
        1000.0
    }

    /// Reports written before the head families kept no head bounds (they judged no head):
    /// they read back with FP16's.
    fn heads_unrecorded() -> HeadTolerances {
        HeadTolerances::for_precision(Precision::F16)
    }

    /// [`Self::for_precision`] on `backend`. On CUDA f32's packed states are not
    /// bit-identical to its padded ones: cuBLAS picks its kernel, and so its order of
    /// summation, by the product's shape (padded and packed batches have other row counts).
    /// Measured: 4.1e-5 max abs on the 8M weights (H200, `fuzz --precision f32` up to medium,
    /// `results/h200-s8/README.md`), so packed gets f32's isolation bound there, 1e-4. On the
    /// CPU packed = padded stays exact (1e-6), which is what catches RoPE positions that run on
    /// across a packed stream.
    pub fn for_policy(precision: Precision, backend: BackendKind) -> Self {
        let tol = Self::for_precision(precision);
        match (precision, backend) {
            (Precision::F32, BackendKind::Cuda) => Self {
                packed_abs: tol.isolation_abs,
                ..tol
            },
            _ => tol,
        }
    }

    /// The acceptance thresholds (cosines 0.99 / 0.98, statistics within 5-10%) with
    /// per-policy regression bounds on the relative L2
    /// error, set about 2.5x above the worst figure measured so that a 10x degradation of the
    /// typical error fails even where the plan's 0.99 cosines would pass:
    /// - f16: 3.0e-3 on the 196-protein corpus (CPU), up to 1.07e-2 on generated sequences
    ///   of 8 residues and 1.2e-2 for f16-mixed on a mixed batch (`equivalence_by_stratum`,
    ///   generator v2) -> bound 0.03 for f16, f16-mixed and tf32 (tf32: 1.1e-3 on the corpus).
    /// - bf16: 2.3e-2 on the corpus, up to 0.108 on generated sequences of 5 residues
    ///   (counterexample kept in `proptest-regressions/counterexamples/`), cosines still
    ///   above 0.997 -> bound 0.25.
    /// - f32 (another f32 run, e.g. a fault-injected one): bounds at f32 noise.
    ///
    /// KS distance: on generated mixed batches f16 measured D of 4.4e-4 to 1.3e-3 and bf16
    /// stayed under 0.01 (`statistical_validation` prints the smallest margin per case);
    /// bounds 0.01 (f16) and 0.02 (bf16) leave about 8x and 2x. p-values are not used: with
    /// 10^5 values even a 1e-3 shift is "significant", which says nothing about whether the
    /// embeddings stay useful.
    pub fn for_precision(precision: Precision) -> Self {
        let plan = Self {
            pooled_cosine: 0.99,
            token_cosine_mean: 0.99,
            token_cosine_min: 0.98,
            relative_l2: 0.03,
            mean_abs_diff: 0.01,
            std_rel: 0.05,
            l2_norm_rel: 0.05,
            outlier_rel: 0.10,
            ks_d: 0.01,
            packed_abs: 1e-5,
            isolation_abs: 1e-5,
            pooled_norm_min: Self::plan_pooled_norm_min(),
            pooled_norm_max: Self::plan_pooled_norm_max(),
            heads: HeadTolerances::for_precision(precision),
        };
        match precision {
            // Packed equals padded bit for bit on the CPU (60 corpus proteins, every policy,
            // measured 0.0), and so does a sequence alone against among batch-mates (12
            // generated batches up to medium: 0.0 for tf32, f16, f16-mixed and bf16). On
            // CUDA the kernels follow the batch shape; these bounds were set for that and
            // are checked against the H100 figures in results/ (isolation held at 0.05).
            Precision::F16 | Precision::F16Mixed | Precision::Tf32 => Self {
                packed_abs: 0.05,
                isolation_abs: 0.05,
                ..plan
            },
            Precision::Bf16 => Self {
                relative_l2: 0.25,
                ks_d: 0.02,
                packed_abs: 0.5,
                isolation_abs: 0.5,
                ..plan
            },
            Precision::F32 => Self {
                pooled_cosine: 0.999_999,
                token_cosine_mean: 0.999_999,
                token_cosine_min: 0.999_99,
                relative_l2: 1e-4,
                mean_abs_diff: 1e-4,
                std_rel: 1e-3,
                l2_norm_rel: 1e-3,
                outlier_rel: 0.01,
                ks_d: 0.005,
                // Packed = padded measured bit-identical on the CPU (0.0); RoPE positions that
                // run on across the packed stream (the rope-not-restarted fault, invisible in
                // exact arithmetic since RoPE is relative) move states by 3.5e-6 median and
                // 1.2e-5 max on 60 corpus proteins, so 1e-6 catches it.
                packed_abs: 1e-6,
                // A sequence alone vs padded beside longer batch-mates measured 1.9e-5 and
                // 1.7e-5 (12 generated batches up to medium, alone vs packed reversed too; gemm
                // blocking follows the padded width; states reach |x| ~ 10, so ~2e-6
                // relative). Packed batches, whose blocks do not change, meet 1e-5
                // (packed_equivalence).
                isolation_abs: 1e-4,
                ..plan
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_f32_on_cuda_widens_the_packed_bound() {
        for p in Precision::ALL {
            let cpu = Tolerances::for_policy(p, BackendKind::Cpu);
            assert_eq!(cpu.packed_abs, Tolerances::for_precision(p).packed_abs);
            let cuda = Tolerances::for_policy(p, BackendKind::Cuda);
            let want = if p == Precision::F32 {
                1e-4
            } else {
                cpu.packed_abs
            };
            assert_eq!(cuda.packed_abs, want, "{p}");
            assert_eq!(cuda.relative_l2, cpu.relative_l2);
        }
        assert_eq!(
            Tolerances::for_policy(Precision::F32, BackendKind::Cpu).packed_abs,
            1e-6
        );
    }

    #[test]
    fn verdicts_fail_on_nan_and_report_signed_margins() {
        let v = Verdict::above(PropertyId::PooledCosine, f64::NAN, 0.99, String::new());
        assert!(!v.passed);
        let v = Verdict::below(PropertyId::RelativeL2, 0.02, 0.01, String::new());
        assert!(!v.passed && v.margin < 0.0);
        let v = Verdict::above(PropertyId::PooledCosine, 0.995, 0.99, String::new());
        assert!(v.passed && (v.margin - 0.005).abs() < 1e-12);
        assert!((v.used - 0.5).abs() < 1e-9, "{}", v.used);
        assert!(!Verdict::at_most(PropertyId::NonFinite, f64::NAN, 0.0, String::new()).passed);
    }

    #[test]
    fn tightest_ranks_by_the_fraction_of_tolerance_used_not_by_margin() {
        // Relative L2 3e-3 of 0.03 uses 10%; KS D 8.6e-4 of 0.01 uses 8.6%, though its
        // absolute margin (0.009) is smaller than the L2's (0.027).
        let l2 = Verdict::below(PropertyId::RelativeL2, 3e-3, 0.03, String::new());
        let ks = Verdict::below(PropertyId::KolmogorovSmirnov, 8.6e-4, 0.01, String::new());
        assert!(ks.margin < l2.margin);
        let pick = tightest(&[ks.clone(), l2.clone()]).map(|v| v.property);
        assert_eq!(pick, Some(PropertyId::RelativeL2));
        let cos = Verdict::above(PropertyId::PooledCosine, 0.998, 0.99, String::new());
        let pick = tightest(&[ks, l2, cos]).map(|v| v.property);
        assert_eq!(pick, Some(PropertyId::PooledCosine), "0.2% of 1% is 20%");
        let nan = Verdict::below(PropertyId::RelativeL2, f64::NAN, 0.03, String::new());
        assert!(nan.used.is_nan());
    }

    #[test]
    fn tightest_skips_passing_exact_checks_but_never_a_failure() {
        let exact = Verdict::at_most(PropertyId::RepeatBitIdentical, 0.0, 0.0, String::new());
        let loose = Verdict::above(PropertyId::PooledCosine, 0.995, 0.99, String::new());
        let id = |v: Option<&Verdict>| v.map(|v| v.property);
        assert_eq!(
            id(tightest(&[exact.clone(), loose.clone()])),
            Some(PropertyId::PooledCosine)
        );
        assert_eq!(id(tightest(&[exact])), Some(PropertyId::RepeatBitIdentical));
        let broken = Verdict::at_most(PropertyId::RepeatBitIdentical, 1e-7, 0.0, String::new());
        assert_eq!(
            id(tightest(&[loose, broken])),
            Some(PropertyId::RepeatBitIdentical)
        );
    }

    #[test]
    fn an_empty_selection_is_an_error_and_a_selection_keeps_only_its_ids() {
        assert_eq!(Selection::only(&[]), Err(EmptySelection));
        let only = Selection::only(PropertyId::STABILITY).unwrap();
        let verdicts = vec![
            Verdict::below(PropertyId::NonFinite, 0.0, 0.5, String::new()),
            Verdict::above(PropertyId::PooledCosine, 1.0, 0.99, String::new()),
        ];
        let kept = only.keep(verdicts);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].property, PropertyId::NonFinite);
    }

    /// Hands back the variant names serde's derive lists for an enum: a list of the
    /// variants that does not come from [`PropertyId::ALL`].
    struct VariantNames<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for VariantNames<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom(
                "only an enum's variant names are read",
            ))
        }

        fn deserialize_enum<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = variants;
            Err(serde::de::Error::custom("variant names read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
            identifier ignored_any
        }
    }

    #[test]
    fn every_declared_property_is_in_all_once_and_every_selection_of_all_keeps_it() {
        use serde::Deserialize;
        let mut declared: &'static [&'static str] = &[];
        let _ = PropertyId::deserialize(VariantNames(&mut declared));
        let listed: Vec<String> = PropertyId::ALL
            .iter()
            .map(|id| {
                serde_json::to_value(id)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            listed, declared,
            "ALL lists every variant, in declaration order"
        );
        assert!(PropertyId::ALL.windows(2).all(|w| w[0] < w[1]), "no repeat");
        let every: Vec<Verdict> = PropertyId::ALL
            .iter()
            .map(|&id| Verdict::at_most(id, 0.0, 1.0, String::new()))
            .collect();
        assert_eq!(Selection::all().keep(every).len(), declared.len());
    }
}
