//! Fuzzing campaigns for the CLI: the property families of the test suite over generated
//! proteins, on any backend, with results reported as each family completes.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use proptest::strategy::Strategy;

use crate::generate::{PropertyOutcome, Stratum, mixed_batch, protein, run_property, write_fasta};
use crate::input::Protein;
use crate::model::Esm2;
use crate::props::{
    Layout, Tolerances, Verdict, case_result, check_case, isolation_case, tightest,
};

/// One family of a campaign: a strategy and a layout.
#[derive(Debug, Clone, Copy)]
pub enum Family {
    /// Single proteins of one stratum, padded.
    Stratum(Stratum),
    /// Mixed batches up to a stratum, padded.
    Mixed(Stratum),
    /// Mixed batches up to a stratum, packed (against padded FP32).
    Packed(Stratum),
    /// Mixed batches up to a stratum: the policy under test alone vs among batch-mates
    /// (padded, and packed in reverse order), and a repeat bit-identical (property 8).
    Isolation(Stratum),
}

impl Family {
    /// The family's name in reports and file names.
    pub fn name(&self) -> String {
        match self {
            Family::Stratum(s) => format!("stratum-{s}"),
            Family::Mixed(s) => format!("mixed-up-to-{s}"),
            Family::Packed(s) => format!("packed-up-to-{s}"),
            Family::Isolation(s) => format!("isolation-up-to-{s}"),
        }
    }

    /// Every family of a campaign that goes up to `max`.
    pub fn all_up_to(max: Stratum) -> Vec<Family> {
        let mut families: Vec<Family> = Stratum::ALL
            .into_iter()
            .filter(|s| *s <= max)
            .map(Family::Stratum)
            .collect();
        let mixed = max.min(Stratum::Long);
        families.push(Family::Mixed(mixed));
        families.push(Family::Packed(mixed));
        families.push(Family::Isolation(mixed));
        families
    }
}

/// The outcome of one family.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FamilyResult {
    pub family: String,
    pub cases: u32,
    pub passed: bool,
    /// The verdict with the smallest margin over every case run (the shrunk one on failure).
    pub tightest: Option<Verdict>,
    /// The failed verdicts of the shrunk counterexample.
    pub failure: Option<String>,
    /// Where the shrunk counterexample was written as FASTA.
    pub counterexample: Option<PathBuf>,
    pub seconds: f64,
}

/// Runs `family` with `cases` cases: `test` against padded `reference`, `tol` thresholds.
/// `on_case(n, proteins)` is told of every model run (generated and shrinking cases alike)
/// before it starts. A failure's shrunk input is written to `out_dir/<family>.fasta`.
pub fn run_family<B: Backend>(
    reference: &Esm2<B>,
    test: &Esm2<B>,
    family: Family,
    cases: u32,
    tol: &Tolerances,
    out_dir: &Path,
    mut on_case: impl FnMut(usize, &[Protein]),
) -> FamilyResult {
    let start = std::time::Instant::now();
    let tightest_seen: RefCell<Option<Verdict>> = RefCell::new(None);
    let runs = Cell::new(0usize);
    let on_case = RefCell::new(&mut on_case);
    // One model run: report it, compute its verdicts, keep the tightest seen so far.
    let property = |proteins: &[Protein], check: &dyn Fn(&[Protein]) -> Vec<Verdict>| {
        runs.set(runs.get() + 1);
        (on_case.borrow_mut())(runs.get(), proteins);
        let verdicts = check(proteins);
        if let Some(v) = tightest(&verdicts) {
            let mut seen = tightest_seen.borrow_mut();
            let candidates: Vec<Verdict> = seen.take().into_iter().chain([v.clone()]).collect();
            *seen = tightest(&candidates).cloned();
        }
        case_result(&verdicts)
    };
    let against_reference =
        |layout: Layout| move |p: &[Protein]| check_case(reference, test, p, layout, tol);
    let padded = against_reference(Layout::Padded);
    let packed = against_reference(Layout::Packed);
    let isolation = |p: &[Protein]| isolation_case(test, p, tol);
    let name = family.name();
    let outcome = match family {
        Family::Stratum(s) => {
            run_property(&name, cases, protein(s).prop_map(|p| vec![p]), false, |p| {
                property(p, &padded)
            })
        }
        Family::Mixed(s) => run_property(&name, cases, mixed_batch(s, 4), false, |p| {
            property(p, &padded)
        }),
        Family::Packed(s) => run_property(&name, cases, mixed_batch(s, 4), false, |p| {
            property(p, &packed)
        }),
        Family::Isolation(s) => run_property(&name, cases, mixed_batch(s, 4), false, |p| {
            property(p, &isolation)
        }),
    };
    let (passed, failure, counterexample) = match outcome {
        PropertyOutcome::Held { .. } => (true, None, None),
        PropertyOutcome::Failed {
            message, minimal, ..
        } => {
            let path = out_dir.join(format!("{name}.fasta"));
            let written = write_fasta(&path, &minimal).ok().map(|_| path);
            (false, Some(message), written)
        }
    };
    FamilyResult {
        family: name,
        cases,
        passed,
        tightest: tightest_seen.into_inner(),
        failure,
        counterexample,
        seconds: start.elapsed().as_secs_f64(),
    }
}
