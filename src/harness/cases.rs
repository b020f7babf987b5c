//! Cases: the one place where the harness runs models. A case is a batch of proteins; it is
//! run through the policy under test (and the FP32 reference) once, and the host states are
//! handed to the pure functions of [`super::properties`].

use burn::tensor::backend::Backend;

use super::localise::{Localisation, localise};
use super::properties::{
    against_reference, finite_layers, isolation, packed_vs_padded, within_twin,
};
use super::verdict::{PropertyId, Tolerances, Verdict};
use crate::batch::{
    Batch, HostStates, LayerStates, Layout, PackedBatch, PaddedBatch, run_batch, sequence_states,
};
use crate::input::Protein;
use crate::model::{Esm2, Place};

/// The models a family judges: the FP32 reference and the policy under test (which may be
/// the same model, or carry injected faults), and optionally a noise-floor model.
pub struct Models<'a, B: Backend> {
    pub reference: &'a Esm2<B>,
    pub test: &'a Esm2<B>,
    /// FP32 with another order of summation ([`crate::model::ComputePlan::reordered_f32`]):
    /// judged against the reference on each family's tightest case, it shows what the
    /// metrics read when nothing but rounding order differs.
    pub floor: Option<&'a Esm2<B>>,
    /// For a variant policy (fused attention, another gemm engine, FP32 places), its plain
    /// twin: the same precision computed the stock way. Each case's error against FP32 is
    /// then also judged against the twin's on the same input
    /// ([`super::properties::within_twin`]).
    pub twin: Option<&'a Esm2<B>>,
}

impl<'a, B: Backend> Models<'a, B> {
    /// The reference and the policy under test, without a noise floor.
    pub fn new(reference: &'a Esm2<B>, test: &'a Esm2<B>) -> Self {
        Self {
            reference,
            test,
            floor: None,
            twin: None,
        }
    }
}

// By hand: a derive would require `B: Copy`, and only references are copied.
impl<B: Backend> Clone for Models<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Models<'_, B> {}

/// One case run through one model.
#[derive(Debug, Clone)]
pub struct CaseStates {
    /// Last-layer token states per sequence, `[n + 2, hidden]` each, in input order.
    pub last: Vec<Vec<f32>>,
    /// Property 3 over every layer's states.
    pub finite: Verdict,
}

/// Runs `proteins` as one batch laid out as `layout`.
pub fn run_case<B: Backend>(model: &Esm2<B>, proteins: &[Protein], layout: Layout) -> CaseStates {
    let layers: Vec<usize> = (0..=model.config.num_hidden_layers).collect();
    let batch = one_batch(model, proteins, layout);
    let states = run_batch(model, batch.as_ref(), &layers);
    CaseStates {
        last: per_sequence(&states, batch.as_ref(), model.config.num_hidden_layers),
        finite: finite_layers(&states, batch.as_ref()),
    }
}

/// Runs `proteins` as one batch laid out as `layout` and returns every sequence's states at
/// every [`Place`] of the forward pass, `[n + 2, hidden]` per sequence.
pub fn trace_case<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    layout: Layout,
) -> Vec<(Place, Vec<Vec<f32>>)> {
    let batch = one_batch(model, proteins, layout);
    model
        .trace(batch.input())
        .into_iter()
        .map(|(place, t)| {
            let states = HostStates::fetch(t);
            let seqs = (0..batch.len())
                .map(|i| sequence_states(&states, batch.as_ref(), i).to_vec())
                .collect();
            (place, seqs)
        })
        .collect()
}

/// Where the error of one case is born: the policy under test laid out as `layout` against
/// the FP32 reference run padded, at every place of the forward pass.
pub fn localise_case<B: Backend>(
    models: Models<'_, B>,
    proteins: &[Protein],
    layout: Layout,
    threshold: f64,
) -> Localisation {
    let reference = trace_case(models.reference, proteins, Layout::Padded);
    let test = trace_case(models.test, proteins, layout);
    let hidden = models.reference.config.hidden_size;
    localise(&test, &reference, proteins, hidden, threshold)
}

/// `proteins` as one batch of `layout`, records numbered in input order.
fn one_batch<B: Backend>(model: &Esm2<B>, proteins: &[Protein], layout: Layout) -> Box<dyn Batch> {
    let seqs: Vec<(usize, Vec<u32>)> = proteins
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.tokens()))
        .collect();
    let dropout = model.config.token_dropout;
    match layout {
        Layout::Padded => Box::new(PaddedBatch::new(&seqs, dropout)),
        Layout::Packed => Box::new(PackedBatch::new(&seqs, dropout)),
    }
}

fn per_sequence(states: &LayerStates, batch: &dyn Batch, last: usize) -> Vec<Vec<f32>> {
    (0..batch.len())
        .map(|i| sequence_states(&states[&last], batch, i).to_vec())
        .collect()
}

/// Properties 1-6 for one case: the policy under test laid out as `layout` against the FP32
/// reference run padded; packed, also property 7 (packed against its own padded states).
pub fn check_against_reference<B: Backend>(
    models: Models<'_, B>,
    proteins: &[Protein],
    layout: Layout,
    tol: &Tolerances,
) -> Vec<Verdict> {
    let reference = run_case(models.reference, proteins, Layout::Padded);
    let (test, mut verdicts) = judge_states(models.test, &reference, proteins, layout, tol);
    if let Some(twin) = models.twin {
        // The twin laid out as the variant is: only the computation differs.
        let twin = run_case(twin, proteins, layout);
        let names: Vec<String> = proteins.iter().map(|p| p.name.clone()).collect();
        verdicts.push(within_twin(&test.last, &twin.last, &reference.last, &names));
    }
    verdicts
}

/// [`check_against_reference`] with the reference's padded states already computed (a
/// reference run shared by many models under test, as `esmfuzz power` does); no twin.
pub fn check_against_states<B: Backend>(
    test_model: &Esm2<B>,
    reference: &CaseStates,
    proteins: &[Protein],
    layout: Layout,
    tol: &Tolerances,
) -> Vec<Verdict> {
    judge_states(test_model, reference, proteins, layout, tol).1
}

/// Runs the policy under test on a case and judges it against the reference's states
/// (properties 1-6, and 7 when packed); hands back its states too.
fn judge_states<B: Backend>(
    test_model: &Esm2<B>,
    reference: &CaseStates,
    proteins: &[Protein],
    layout: Layout,
    tol: &Tolerances,
) -> (CaseStates, Vec<Verdict>) {
    let test = run_case(test_model, proteins, layout);
    let hidden = test_model.config.hidden_size;
    let mut verdicts = judge_against(&test, reference, proteins, hidden, tol);
    if layout == Layout::Packed {
        let padded = run_case(test_model, proteins, Layout::Padded);
        verdicts.push(packed_vs_padded(&test.last, &padded.last, tol));
    }
    (test, verdicts)
}

/// Properties 1-6 for states already computed: `test` (property 3 from its own run)
/// against `reference`.
pub fn judge_against(
    test: &CaseStates,
    reference: &CaseStates,
    proteins: &[Protein],
    hidden: usize,
    tol: &Tolerances,
) -> Vec<Verdict> {
    let names: Vec<String> = proteins.iter().map(|p| p.name.clone()).collect();
    let mut verdicts = vec![test.finite.clone()];
    verdicts.extend(against_reference(
        &test.last,
        &reference.last,
        &names,
        hidden,
        tol,
    ));
    verdicts
}

/// Property 8 for one case: each sequence alone equals itself among batch-mates (padded,
/// and packed in reverse order) within `tol.isolation_abs`, and a repeat of the batch is
/// bit-identical. Only the policy under test runs.
pub fn check_isolation<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    tol: &Tolerances,
) -> Vec<Verdict> {
    let together = run_case(model, proteins, Layout::Padded);
    let again = run_case(model, proteins, Layout::Padded);
    let reversed: Vec<Protein> = proteins.iter().rev().cloned().collect();
    let packed_rev = run_case(model, &reversed, Layout::Packed);
    let n = proteins.len();
    let mut verdicts = vec![together.finite.clone()];
    for i in 0..n {
        let alone = run_case(model, &proteins[i..=i], Layout::Padded);
        let which = || format!("sequence {i}");
        verdicts.push(isolation(
            PropertyId::RepeatBitIdentical,
            &together.last[i],
            &again.last[i],
            0.0,
            which(),
        ));
        verdicts.push(isolation(
            PropertyId::AloneVsPadded,
            &alone.last[0],
            &together.last[i],
            tol.isolation_abs,
            which(),
        ));
        verdicts.push(isolation(
            PropertyId::AloneVsPackedReversed,
            &alone.last[0],
            &packed_rev.last[n - 1 - i],
            tol.isolation_abs,
            which(),
        ));
    }
    verdicts
}
