//! Localisation: where in the forward pass a policy's error is born. Pure: it takes the
//! states of the policy under test and of the FP32 reference at every [`Place`] (from
//! [`super::cases::trace_case`]) and measures the error at each.

use super::metrics;
use super::verdict::f64_or_nan;
use crate::input::Protein;
use crate::model::Place;

/// The error of the policy under test at one place.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlaceError {
    pub place: Place,
    /// `||test - ref|| / ||ref||` over every token of every sequence.
    #[serde(deserialize_with = "f64_or_nan")]
    pub relative_l2: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub token_cosine_min: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub token_cosine_mean: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub max_abs_diff: f64,
    /// This place's relative L2 over the previous place's (infinite where the error is
    /// born from nothing; 1 at the first place).
    #[serde(deserialize_with = "f64_or_nan")]
    pub growth: f64,
}

/// The token whose final state is furthest from FP32.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorstToken {
    pub sequence: usize,
    pub name: String,
    /// Token position: 0 is BOS, `n + 1` EOS, residues 1..=n.
    pub position: usize,
    /// The residue letter, or `<cls>` / `<eos>`.
    pub token: String,
    #[serde(deserialize_with = "f64_or_nan")]
    pub cosine: f64,
}

/// Where the error of one case is born and where it grows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Localisation {
    /// The relative-L2 threshold a place crosses.
    #[serde(deserialize_with = "f64_or_nan")]
    pub threshold: f64,
    pub places: Vec<PlaceError>,
    /// The first place whose relative L2 exceeds the threshold (or is NaN).
    pub first_crossing: Option<Place>,
    /// The place where the relative L2 grows the most over the previous place.
    pub largest_growth: Option<Place>,
    pub worst_token: Option<WorstToken>,
}

/// Localises the error of `test` against `reference`, both from the same `proteins` and
/// with the same places in the same order.
pub fn localise(
    test: &[(Place, Vec<Vec<f32>>)],
    reference: &[(Place, Vec<Vec<f32>>)],
    proteins: &[Protein],
    hidden: usize,
    threshold: f64,
) -> Localisation {
    let mut places: Vec<PlaceError> = Vec::with_capacity(test.len());
    for ((place, t), (ref_place, r)) in test.iter().zip(reference) {
        debug_assert_eq!(place, ref_place, "traces of different models");
        let c = metrics::compare_states(t, r, hidden);
        let growth = match places.last() {
            None => 1.0,
            Some(prev) if prev.relative_l2 == 0.0 => {
                if c.relative_l2 == 0.0 {
                    1.0
                } else {
                    f64::INFINITY
                }
            }
            Some(prev) => c.relative_l2 / prev.relative_l2,
        };
        places.push(PlaceError {
            place: *place,
            relative_l2: c.relative_l2,
            token_cosine_min: c.token_cosine_min,
            token_cosine_mean: c.token_cosine_mean,
            max_abs_diff: c.max_abs_diff,
            growth,
        });
    }
    let first_crossing = places
        .iter()
        .find(|p| p.relative_l2.is_nan() || p.relative_l2 > threshold)
        .map(|p| p.place);
    let mut largest_growth: Option<&PlaceError> = None;
    for p in places.iter().skip(1) {
        let beats = largest_growth.is_none_or(|best| {
            p.growth > best.growth || (p.growth.is_nan() && !best.growth.is_nan())
        });
        if beats && (p.growth > 1.0 || p.growth.is_nan()) {
            largest_growth = Some(p);
        }
    }
    let worst_token = test
        .last()
        .zip(reference.last())
        .and_then(|((_, t), (_, r))| worst_token(t, r, proteins, hidden));
    Localisation {
        threshold,
        largest_growth: largest_growth.map(|p| p.place),
        places,
        first_crossing,
        worst_token,
    }
}

fn worst_token(
    test: &[Vec<f32>],
    reference: &[Vec<f32>],
    proteins: &[Protein],
    hidden: usize,
) -> Option<WorstToken> {
    let mut worst: Option<WorstToken> = None;
    for (sequence, (t, r)) in test.iter().zip(reference).enumerate() {
        let cosines = metrics::row_cosines(t, r, hidden);
        let n = cosines.len();
        for (position, &cosine) in cosines.iter().enumerate() {
            let worse = worst
                .as_ref()
                .is_none_or(|w| cosine < w.cosine || (cosine.is_nan() && !w.cosine.is_nan()));
            if !worse {
                continue;
            }
            let protein = proteins.get(sequence);
            let token = match position {
                0 => "<cls>".to_string(),
                p if p + 1 == n => "<eos>".to_string(),
                p => protein
                    .and_then(|pr| pr.letters().chars().nth(p - 1))
                    .map_or_else(|| "?".to_string(), |c| c.to_string()),
            };
            worst = Some(WorstToken {
                sequence,
                name: protein.map(|p| p.name.clone()).unwrap_or_default(),
                position,
                token,
                cosine,
            });
        }
    }
    worst
}

impl Localisation {
    /// A table for a terminal or a Markdown report.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from(
            "| place | rel. L2 | growth | token cos min | token cos mean | max abs diff |\n|---|---|---|---|---|---|\n",
        );
        for p in &self.places {
            let mark = if Some(p.place) == self.first_crossing {
                " **first over threshold**"
            } else if Some(p.place) == self.largest_growth {
                " **largest growth**"
            } else {
                ""
            };
            out.push_str(&format!(
                "| {}{mark} | {:.3e} | {:.2} | {:.6} | {:.6} | {:.3e} |\n",
                p.place,
                p.relative_l2,
                p.growth,
                p.token_cosine_min,
                p.token_cosine_mean,
                p.max_abs_diff
            ));
        }
        let name = |p: Option<Place>| p.map_or_else(|| "none".to_string(), |p| p.to_string());
        out.push_str(&format!(
            "\nFirst place over relative L2 {:.1e}: {}; largest growth: {}.",
            self.threshold,
            name(self.first_crossing),
            name(self.largest_growth)
        ));
        if let Some(w) = &self.worst_token {
            out.push_str(&format!(
                " Worst token: sequence {} ('{}'), position {} ({}), final cosine {:.6}.",
                w.sequence, w.name, w.position, w.token, w.cosine
            ));
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_is_placed_where_it_is_born_and_where_it_grows() {
        let p = Protein::from_letters("p", "MK");
        let r = vec![vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5, 0.5]];
        let bump = |x: f32| vec![vec![1.0f32, 0.0, x, 1.0, 1.0, 1.0, 0.5, 0.5]];
        let places = [
            Place::Embeddings,
            Place::Attention(0),
            Place::Ffn(0),
            Place::FinalNorm,
        ];
        let reference: Vec<_> = places.iter().map(|&pl| (pl, r.clone())).collect();
        let test: Vec<_> = places
            .iter()
            .zip([0.0, 0.0, 0.01, 0.5])
            .map(|(&pl, x)| (pl, bump(x)))
            .collect();
        let l = localise(&test, &reference, &[p], 2, 1e-3);
        assert_eq!(l.first_crossing, Some(Place::Ffn(0)));
        assert_eq!(l.largest_growth, Some(Place::Ffn(0)), "born from nothing");
        let w = l.worst_token.clone().unwrap();
        assert_eq!((w.position, w.token.as_str()), (1, "M"));
        assert!(
            l.to_markdown()
                .contains("layer 0 FFN **first over threshold**")
        );
    }
}
