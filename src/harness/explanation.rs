//! What `explain` tells about one record beyond the localisation: the pooled row as `embed`
//! writes it (FP32 against the policy), and, with a second policy, where the two diverge
//! place by place. Pure: built from the traces [`super::cases::explain_case`] hands over.

use super::localise::Localisation;
use super::metrics;
use super::verdict::f64_or_nan;
use crate::model::Place;

/// How many leading values of the pooled rows are shown.
pub const POOLED_VALUES_SHOWN: usize = 6;

/// One record's pooled embedding (mean over residues of the final states, what `embed`
/// writes) under a policy against FP32.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PooledRow {
    #[serde(deserialize_with = "f64_or_nan")]
    pub cosine: f64,
    /// `||test - fp32|| / ||fp32||` of the pooled rows.
    #[serde(deserialize_with = "f64_or_nan")]
    pub relative_l2: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub max_abs_diff: f64,
    /// The first [`POOLED_VALUES_SHOWN`] values: FP32's, then the policy's.
    pub fp32_first: Vec<f32>,
    pub test_first: Vec<f32>,
}

impl PooledRow {
    pub fn compare(test: &[f32], fp32: &[f32]) -> Self {
        let shown = |v: &[f32]| v.iter().take(POOLED_VALUES_SHOWN).copied().collect();
        Self {
            cosine: metrics::cosine(test, fp32),
            relative_l2: metrics::relative_l2(test, fp32),
            max_abs_diff: metrics::max_abs_diff(test, fp32),
            fp32_first: shown(fp32),
            test_first: shown(test),
        }
    }

    /// One Markdown line for the policy called `name`.
    pub fn to_markdown(&self, name: &str) -> String {
        let values = |v: &[f32]| {
            v.iter()
                .map(|x| format!("{x:.6}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "Pooled row as `embed` writes it, {name} against FP32: cosine {:.9} (1 - cos {:.3e}), \
             relative L2 {:.3e}, max |diff| {:.3e}\n  FP32:  [{}, ...]\n  {name}: [{}, ...]\n",
            self.cosine,
            1.0 - self.cosine,
            self.relative_l2,
            self.max_abs_diff,
            values(&self.fp32_first),
            values(&self.test_first)
        )
    }
}

/// Two policies on one record, place by place: each against FP32 and one against the other.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Divergence {
    /// The second policy (`--against`).
    pub against: String,
    pub places: Vec<DivergencePlace>,
    /// The second policy's pooled row against FP32.
    pub against_pooled: PooledRow,
    /// The pooled rows of the two policies against each other (the first as "test").
    pub between_pooled: PooledRow,
}

/// Relative L2 of both policies at one place.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DivergencePlace {
    pub place: Place,
    /// The policy under test against FP32.
    #[serde(deserialize_with = "f64_or_nan")]
    pub test: f64,
    /// The `--against` policy against FP32.
    #[serde(deserialize_with = "f64_or_nan")]
    pub against: f64,
    /// The two against each other (relative to the `--against` policy's states).
    #[serde(deserialize_with = "f64_or_nan")]
    pub between: f64,
}

impl Divergence {
    /// From the localisations of the policy under test and of `against`, each against FP32,
    /// and of the first against the second (same places in the same order).
    pub fn new(
        against: String,
        test: &Localisation,
        other: &Localisation,
        between: &Localisation,
        against_pooled: PooledRow,
        between_pooled: PooledRow,
    ) -> Self {
        let places = test
            .places
            .iter()
            .zip(&other.places)
            .zip(&between.places)
            .map(|((t, o), b)| DivergencePlace {
                place: t.place,
                test: t.relative_l2,
                against: o.relative_l2,
                between: b.relative_l2,
            })
            .collect();
        Self {
            against,
            places,
            against_pooled,
            between_pooled,
        }
    }

    /// The first place where the policy under test is further from FP32 than `against`
    /// (NaN counts as further), if any.
    pub fn first_worse(&self) -> Option<Place> {
        self.places
            .iter()
            .find(|p| p.test > p.against || (p.test.is_nan() && !p.against.is_nan()))
            .map(|p| p.place)
    }

    /// A table for a terminal or a Markdown report; `test` names the policy under test.
    pub fn to_markdown(&self, test: &str, test_pooled: &PooledRow) -> String {
        let a = &self.against;
        let mut out = format!(
            "| place | {test} vs FP32 | {a} vs FP32 | ratio | {test} vs {a} |\n|---|---|---|---|---|\n"
        );
        let row = |place: String, t: f64, o: f64, b: f64| {
            format!("| {place} | {t:.3e} | {o:.3e} | {:.2} | {b:.3e} |\n", t / o)
        };
        for p in &self.places {
            out.push_str(&row(p.place.to_string(), p.test, p.against, p.between));
        }
        out.push_str(&row(
            "**pooled row** (`embed`)".into(),
            test_pooled.relative_l2,
            self.against_pooled.relative_l2,
            self.between_pooled.relative_l2,
        ));
        let first = self
            .first_worse()
            .map_or_else(|| "nowhere".to_string(), |p| p.to_string());
        out.push_str(&format!(
            "\n{test} is further from FP32 than {a} first at: {first}. Pooled 1 - cos: {test} {:.3e}, {a} {:.3e}.\n",
            1.0 - test_pooled.cosine,
            1.0 - self.against_pooled.cosine,
        ));
        out
    }
}

/// What `explain` reports: the localisation (its fields at the top level, as before), the
/// pooled row, and the divergence from a second policy when one was asked for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    #[serde(flatten)]
    pub localisation: Localisation,
    pub pooled: PooledRow,
    #[serde(default)]
    pub divergence: Option<Divergence>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pooled_row_against_itself_is_exact_and_nan_is_not() {
        let row = [0.5f32, -1.0, 2.0];
        let same = PooledRow::compare(&row, &row);
        assert_eq!((same.relative_l2, same.max_abs_diff), (0.0, 0.0));
        assert!((same.cosine - 1.0).abs() < 1e-12);
        assert_eq!(same.fp32_first, row.to_vec());
        let nan = PooledRow::compare(&[f32::NAN, 0.0, 0.0], &row);
        assert!(nan.cosine.is_nan() || nan.cosine < 1.0);
        assert!(
            nan.relative_l2.is_nan() || nan.relative_l2 >= 1e-3,
            "NaN must not read as close"
        );
    }
}
