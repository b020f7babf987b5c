//! Precision bisection: the smallest set of [`Fp32Place`]s that a reduced policy must run in
//! FP32 for every property to hold on a fixed set of cases with a stated margin, found by
//! delta debugging (Zeller's ddmin, with "holds" as the outcome sought) over the places.
//!
//! The FP32 reference runs once per case; each trial builds the mixed model and runs only it,
//! stopping at the first case that does not hold. The result is 1-minimal: dropping any one of
//! its places breaks a property or the margin.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;

use super::cases::{CaseStates, judge_against, run_case};
use super::verdict::{PropertyId, Tolerances, Verdict, tightest};
use crate::batch::Layout;
use crate::input::Protein;
use crate::model::{ComputePlan, Esm2, EsmWeights, FaultSet, Fp32Place, Fp32Places, Precision};

/// What a bisection runs on and what it asks of a trial.
pub struct BisectSpec<'a> {
    pub weights: &'a EsmWeights,
    /// The reduced policy (its backend is the reference's too).
    pub plan: ComputePlan,
    /// Faults built into every trial model (none for a real question).
    pub faults: FaultSet,
    /// Each case a padded batch of proteins.
    pub cases: &'a [Vec<Protein>],
    pub tolerances: &'a Tolerances,
    /// How much of each tolerance a holding trial may use.
    pub bound: UsedBound,
}

/// How much of its tolerance each verdict of a holding trial may use ([`Verdict::used`]);
/// every verdict must pass in any case.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UsedBound {
    /// The same fraction for every property (1.0: just hold; 0.5: half the tolerance spare).
    Uniform(f64),
    /// Per equivalence property (cosines, relative L2), the fraction another policy used on
    /// the same cases: "do as well as plain f16". The other properties must only hold.
    Reach(BTreeMap<PropertyId, f64>),
}

impl UsedBound {
    /// The bound that makes a trial do as well as `reached` did on the equivalence
    /// properties.
    pub fn reaching(reached: &[Verdict]) -> Self {
        let mut worst = BTreeMap::new();
        for v in reached
            .iter()
            .filter(|v| PropertyId::EQUIVALENCE.contains(&v.property))
        {
            let used = worst.entry(v.property).or_insert(0.0f64);
            *used = used.max(v.used);
        }
        UsedBound::Reach(worst)
    }

    /// Whether `v` holds within this bound.
    pub fn allows(&self, v: &Verdict) -> bool {
        let limit = match self {
            UsedBound::Uniform(x) => *x,
            UsedBound::Reach(m) => m.get(&v.property).copied().unwrap_or(f64::INFINITY),
        };
        v.passed && v.used <= limit
    }
}

impl std::fmt::Display for UsedBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsedBound::Uniform(x) => write!(
                f,
                "every property within {:.1}% of its tolerance",
                100.0 * x
            ),
            UsedBound::Reach(m) => {
                let parts: Vec<String> = m
                    .iter()
                    .map(|(p, x)| format!("{p} within {:.2}%", 100.0 * x))
                    .collect();
                write!(f, "{}; the rest hold", parts.join(", "))
            }
        }
    }
}

/// One mixed policy tried.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trial {
    pub places: Fp32Places,
    pub held: bool,
    /// Cases run before the verdict (a trial stops at its first case that does not hold).
    pub cases_run: usize,
    /// The verdict closest to failing over the cases run.
    pub worst: Option<Verdict>,
    /// The first verdict outside the bound, when the trial did not hold.
    pub broke: Option<Verdict>,
    /// Every verdict of the cases run (what a reached policy's bound is made from).
    #[serde(skip)]
    pub verdicts: Vec<Verdict>,
}

/// What a bisection found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bisection {
    /// The plain reduced policy (no FP32 place).
    pub plain: Trial,
    /// Every place in FP32.
    pub all: Trial,
    /// The 1-minimal set of places (empty when the plain policy holds).
    pub minimal: Fp32Places,
    /// Every trial, in the order run.
    pub trials: Vec<Trial>,
}

/// Why a bisection cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum BisectError {
    #[error("no cases to bisect on")]
    NoCases,
    #[error(
        "even with every place in FP32 the properties do not hold ({bound}): {worst}; \
         the error is not born in a place that FP32 can repair, or the bound is too tight"
    )]
    AllFp32Fails { bound: String, worst: String },
}

/// Runs the delta debugging; `progress` sees every trial as it ends.
pub fn bisect_precision<B: Backend>(
    spec: &BisectSpec<'_>,
    device: &B::Device,
    mut progress: impl FnMut(&Trial),
) -> Result<Bisection, BisectError> {
    if spec.cases.iter().all(|c| c.is_empty()) {
        return Err(BisectError::NoCases);
    }
    let references = reference_states::<B>(spec, device);

    let layers = spec.weights.config.num_hidden_layers;
    let mut trials: Vec<Trial> = Vec::new();
    // A set asked for again (ddmin revisits some) is answered from its trial.
    let mut try_places = |places: &[Fp32Place]| -> bool {
        let set = Fp32Places::from_places(places.iter().copied());
        if let Some(tried) = trials.iter().find(|t| t.places == set) {
            return tried.held;
        }
        let trial = run_trial::<B>(spec, &references, places, device);
        progress(&trial);
        let held = trial.held;
        trials.push(trial);
        held
    };

    let everything: Vec<Fp32Place> = Fp32Places::all(layers).iter().collect();
    let plain_held = try_places(&[]);
    let all_held = try_places(&everything);
    let minimal = if plain_held || !all_held {
        Vec::new()
    } else {
        ddmin(everything.clone(), &mut try_places)
    };
    let find = |places: &[Fp32Place]| {
        let set = Fp32Places::from_places(places.iter().copied());
        trials
            .iter()
            .find(|t| t.places == set)
            .cloned()
            .unwrap_or_else(|| unreachable!("every set asked for was tried"))
    };
    let (plain, all) = (find(&[]), find(&everything));
    if !all.held {
        return Err(BisectError::AllFp32Fails {
            bound: spec.bound.to_string(),
            worst: all.worst.map(|v| v.to_string()).unwrap_or_default(),
        });
    }
    Ok(Bisection {
        plain,
        all,
        minimal: Fp32Places::from_places(minimal),
        trials,
    })
}

/// One mixed policy judged alone (a confirmation on fresh cases, or a plain policy's margins):
/// the FP32 reference runs on `spec.cases`, then `places` over them.
pub fn judge_places<B: Backend>(
    spec: &BisectSpec<'_>,
    places: &Fp32Places,
    device: &B::Device,
) -> Trial {
    let references = reference_states::<B>(spec, device);
    let places: Vec<Fp32Place> = places.iter().collect();
    run_trial::<B>(spec, &references, &places, device)
}

/// The FP32 reference's states of every case.
fn reference_states<B: Backend>(spec: &BisectSpec<'_>, device: &B::Device) -> Vec<CaseStates> {
    let plan = ComputePlan::new(Precision::F32, spec.plan.backend);
    let model = Esm2::<B>::new(spec.weights, plan, FaultSet::none(), device);
    spec.cases
        .iter()
        .map(|c| run_case(&model, c, Layout::Padded))
        .collect()
}

/// One mixed policy over the cases, stopping at the first that does not hold.
fn run_trial<B: Backend>(
    spec: &BisectSpec<'_>,
    references: &[CaseStates],
    places: &[Fp32Place],
    device: &B::Device,
) -> Trial {
    let set = Fp32Places::from_places(places.iter().copied());
    let model = Esm2::<B>::mixed(spec.weights, spec.plan, set.clone(), spec.faults, device);
    let hidden = spec.weights.config.hidden_size;
    let mut worst: Option<Verdict> = None;
    let mut cases_run = 0;
    let mut held = true;
    let mut broke = None;
    let mut all = Vec::new();
    for (proteins, reference) in spec.cases.iter().zip(references) {
        if proteins.is_empty() {
            continue;
        }
        let test = run_case(&model, proteins, Layout::Padded);
        let verdicts = judge_against(&test, reference, proteins, hidden, spec.tolerances);
        cases_run += 1;
        if let Some(v) = tightest(&verdicts) {
            let candidates: Vec<Verdict> = worst.iter().cloned().chain([v.clone()]).collect();
            worst = tightest(&candidates).cloned();
        }
        let outside = verdicts.iter().find(|v| !spec.bound.allows(v)).cloned();
        all.extend(verdicts);
        if outside.is_some() {
            broke = outside;
            held = false;
            break;
        }
    }
    Trial {
        places: set,
        held,
        cases_run,
        worst,
        broke,
        verdicts: all,
    }
}

/// Zeller's ddmin for the smallest set that holds: `holds(items)` is known true and
/// `holds(&[])` false. Returns a 1-minimal subset (every one of its items is needed),
/// assuming more FP32 never hurts.
fn ddmin(
    mut items: Vec<Fp32Place>,
    holds: &mut impl FnMut(&[Fp32Place]) -> bool,
) -> Vec<Fp32Place> {
    let mut n = 2usize;
    while items.len() >= 2 {
        let chunks = split(&items, n);
        if let Some(chunk) = chunks.iter().find(|c| holds(c)) {
            items = chunk.clone();
            n = 2;
            continue;
        }
        let complement = (n > 2)
            .then(|| {
                chunks.iter().enumerate().find_map(|(i, _)| {
                    let rest: Vec<Fp32Place> = chunks
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .flat_map(|(_, c)| c.iter().copied())
                        .collect();
                    holds(&rest).then_some(rest)
                })
            })
            .flatten();
        if let Some(rest) = complement {
            items = rest;
            n = (n - 1).max(2);
            continue;
        }
        if n >= items.len() {
            break;
        }
        n = (2 * n).min(items.len());
    }
    items
}

/// `items` in `n` nearly equal consecutive chunks.
fn split(items: &[Fp32Place], n: usize) -> Vec<Vec<Fp32Place>> {
    let n = n.min(items.len()).max(1);
    let (size, extra) = (items.len() / n, items.len() % n);
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for i in 0..n {
        let len = size + usize::from(i < extra);
        out.push(items[start..start + len].to_vec());
        start += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(n: usize) -> Vec<Fp32Place> {
        (0..n).map(Fp32Place::Ffn).collect()
    }

    /// ddmin finds exactly the needed places whatever their number and position, and tries
    /// far fewer sets than all subsets.
    #[test]
    fn ddmin_finds_the_needed_places() {
        for needed in [vec![7], vec![0, 18], vec![3, 4, 11], vec![]] {
            let mut tries = 0;
            let need: Vec<Fp32Place> = needed.iter().map(|&i| Fp32Place::Ffn(i)).collect();
            let mut holds = |s: &[Fp32Place]| {
                tries += 1;
                need.iter().all(|p| s.contains(p))
            };
            let found = ddmin(places(19), &mut holds);
            if needed.is_empty() {
                assert_eq!(found.len(), 1, "ddmin never returns an empty set itself");
            } else {
                assert_eq!(found, need);
            }
            assert!(tries < 80, "{tries} trials for {needed:?}");
        }
    }

    #[test]
    fn split_covers_every_item_once() {
        let items = places(7);
        let chunks = split(&items, 3);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2, 2]);
        assert_eq!(chunks.concat(), items);
    }
}
