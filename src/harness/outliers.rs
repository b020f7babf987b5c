//! Outliers among real proteins (`fuzz --fasta`): the records furthest from FP32 and those
//! furthest above their policy's typical error for proteins of their length. Pure: per-record
//! errors from host states, ranked; the localisation of the worst is filled in by the driver.

use std::collections::BTreeMap;

use super::localise::Localisation;
use super::metrics;
use super::strategies::Stratum;
use super::verdict::f64_or_nan;
use crate::batch::pool_residues;
use crate::input::Protein;

/// How many records each ranking lists.
pub const OUTLIERS_SHOWN: usize = 5;
/// How many of the worst records (by pooled 1 - cos, then above the median) are localised.
pub const OUTLIERS_LOCALISED: usize = 3;

/// One record's distance from FP32.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordError {
    /// 0-based position in the FASTA file.
    pub index: usize,
    pub name: String,
    pub residues: usize,
    /// `1 - cos` of the pooled rows (what `embed` writes).
    #[serde(deserialize_with = "f64_or_nan")]
    pub pooled_one_minus_cos: f64,
    /// `||test - ref|| / ||ref||` over the record's token states.
    #[serde(deserialize_with = "f64_or_nan")]
    pub relative_l2: f64,
    /// `pooled_one_minus_cos` over the median of the records of its length stratum (the
    /// policy's own typical error for proteins of that length).
    #[serde(deserialize_with = "f64_or_nan")]
    pub above_median: f64,
    /// Where its error is born (for the worst few).
    #[serde(default)]
    pub localisation: Option<Localisation>,
}

/// The records of one FASTA file ranked three ways.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outliers {
    pub records: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub median_pooled_one_minus_cos: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub median_relative_l2: f64,
    /// Furthest from FP32 by pooled `1 - cos`, worst first (NaN first of all).
    pub by_pooled_cosine: Vec<RecordError>,
    /// Furthest by relative L2.
    pub by_relative_l2: Vec<RecordError>,
    /// Furthest above their stratum's median pooled `1 - cos`.
    pub above_median: Vec<RecordError>,
}

/// The errors of a batch's records (`test` and `reference`: `[n + 2, hidden]` states per
/// protein; `indices`: their positions in the file), `above_median` not yet known.
pub fn record_errors(
    test: &[Vec<f32>],
    reference: &[Vec<f32>],
    proteins: &[Protein],
    indices: &[usize],
    hidden: usize,
) -> Vec<RecordError> {
    test.iter()
        .zip(reference)
        .zip(proteins.iter().zip(indices))
        .map(|((t, r), (p, &index))| RecordError {
            index,
            name: p.name.clone(),
            residues: p.residues.len(),
            pooled_one_minus_cos: 1.0
                - metrics::cosine(&pool_residues(t, hidden), &pool_residues(r, hidden)),
            relative_l2: metrics::relative_l2(t, r),
            above_median: f64::NAN,
            localisation: None,
        })
        .collect()
}

/// NaN ranks as the worst.
fn key(v: f64) -> f64 {
    if v.is_nan() { f64::INFINITY } else { v }
}

/// The median of finite values (NaN when there are none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Ranks every record of a file; `above_median` is filled in from each stratum's median.
pub fn rank(mut records: Vec<RecordError>) -> Outliers {
    let mut by_stratum: BTreeMap<Stratum, Vec<f64>> = BTreeMap::new();
    for r in &records {
        by_stratum
            .entry(Stratum::of_length(r.residues))
            .or_default()
            .push(r.pooled_one_minus_cos);
    }
    let medians: BTreeMap<Stratum, f64> = by_stratum
        .into_iter()
        .map(|(s, v)| (s, median(v.into_iter())))
        .collect();
    for r in &mut records {
        let m = medians[&Stratum::of_length(r.residues)];
        r.above_median = if m > 0.0 {
            r.pooled_one_minus_cos / m
        } else if r.pooled_one_minus_cos > 0.0 || r.pooled_one_minus_cos.is_nan() {
            f64::INFINITY
        } else {
            1.0
        };
    }
    let top = |by: fn(&RecordError) -> f64| {
        let mut sorted: Vec<RecordError> = records.clone();
        sorted.sort_by(|a, b| {
            key(by(b))
                .total_cmp(&key(by(a)))
                .then(a.index.cmp(&b.index))
        });
        sorted.truncate(OUTLIERS_SHOWN);
        sorted
    };
    Outliers {
        records: records.len(),
        median_pooled_one_minus_cos: median(records.iter().map(|r| r.pooled_one_minus_cos)),
        median_relative_l2: median(records.iter().map(|r| r.relative_l2)),
        by_pooled_cosine: top(|r| r.pooled_one_minus_cos),
        by_relative_l2: top(|r| r.relative_l2),
        above_median: top(|r| r.above_median),
    }
}

impl Outliers {
    /// The records worth localising, worst first, at most [`OUTLIERS_LOCALISED`]: the top of
    /// each ranking in turn.
    pub fn to_localise(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let lists = [
            &self.by_pooled_cosine,
            &self.above_median,
            &self.by_relative_l2,
        ];
        for rank in 0..OUTLIERS_SHOWN {
            for list in lists {
                if let Some(r) = list.get(rank)
                    && !out.contains(&r.index)
                    && out.len() < OUTLIERS_LOCALISED
                {
                    out.push(r.index);
                }
            }
        }
        out
    }

    /// Sets the localisation of record `index` wherever it is listed.
    pub fn set_localisation(&mut self, index: usize, localisation: &Localisation) {
        for list in [
            &mut self.by_pooled_cosine,
            &mut self.by_relative_l2,
            &mut self.above_median,
        ] {
            for r in list.iter_mut().filter(|r| r.index == index) {
                r.localisation = Some(localisation.clone());
            }
        }
    }

    /// The three rankings as Markdown tables, `name` the FASTA's family name.
    pub fn to_markdown(&self, name: &str) -> String {
        let mut out = format!(
            "#### {name}: records furthest from FP32 ({} records; median pooled 1 - cos {:.3e}, median relative L2 {:.3e})\n\n",
            self.records, self.median_pooled_one_minus_cos, self.median_relative_l2
        );
        let lists = [
            ("by pooled 1 - cos", &self.by_pooled_cosine),
            ("by relative L2", &self.by_relative_l2),
            (
                "furthest above their length stratum's median",
                &self.above_median,
            ),
        ];
        for (title, list) in lists {
            out.push_str(&format!(
                "{title}:\n\n| record | residues | pooled 1 - cos | relative L2 | x stratum median | first over threshold / largest growth |\n|---|---|---|---|---|---|\n"
            ));
            for r in list {
                let place = r.localisation.as_ref().map_or_else(
                    || "-".to_string(),
                    |l| {
                        let name = |p: Option<crate::model::Place>| {
                            p.map_or_else(|| "none".to_string(), |p| p.to_string())
                        };
                        format!("{} / {}", name(l.first_crossing), name(l.largest_growth))
                    },
                );
                out.push_str(&format!(
                    "| {} (#{}) | {} | {:.3e} | {:.3e} | {:.2} | {place} |\n",
                    // UniProt names hold `|`, which would split the table's cells.
                    r.name.replace('|', "\\|"),
                    r.index + 1,
                    r.residues,
                    r.pooled_one_minus_cos,
                    r.relative_l2,
                    r.above_median
                ));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: usize, residues: usize, err: f64) -> RecordError {
        RecordError {
            index,
            name: format!("r{index}"),
            residues,
            pooled_one_minus_cos: err,
            relative_l2: err * 10.0,
            above_median: f64::NAN,
            localisation: None,
        }
    }

    /// The worst record overall and the one furthest above its stratum's median can differ,
    /// and NaN ranks first.
    #[test]
    fn rankings_put_nan_first_and_compare_within_a_stratum() {
        // Short proteins err 1e-5 typically, medium ones 1e-6: a medium record at 5e-6 is
        // 5x its median but not the largest error.
        let mut records = vec![
            record(0, 20, 1e-5),
            record(1, 30, 1.2e-5),
            record(2, 25, 0.9e-5),
            record(3, 100, 1e-6),
            record(4, 120, 5e-6),
            record(5, 110, 1.1e-6),
        ];
        let o = rank(records.clone());
        assert_eq!(o.by_pooled_cosine[0].index, 1);
        assert_eq!(o.above_median[0].index, 4);
        assert!((o.above_median[0].above_median - 5.0 / 1.1).abs() < 1e-9);
        records.push(record(6, 40, f64::NAN));
        let o = rank(records);
        assert_eq!(o.by_pooled_cosine[0].index, 6);
        assert_eq!(o.by_relative_l2[0].index, 6);
        assert_eq!(o.to_localise(), vec![6, 1, 4]);
    }
}
