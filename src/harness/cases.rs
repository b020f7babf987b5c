//! Cases: the one place where the harness runs models. A case is a batch of proteins; it is
//! run through the policy under test (and the FP32 reference) once, and the host states are
//! handed to the pure functions of [`super::properties`].

use burn::tensor::backend::Backend;

use super::deployment::Pooling;
use super::explanation::{Divergence, Explanation, PooledRow};
use super::heads::{Head, HeadTolerances, classifier_agreement, contact_agreement};
use super::localise::{Localisation, localise};
use super::properties::{
    against_reference, finite_layers, isolation, packed_vs_padded, pooled_against, rows_agree,
    rows_identical_within, within_twin,
};
use super::subject::{CallError, InProcess, PooledMemo, Subject, SubjectStates};
use super::verdict::{PropertyId, Tolerances, Verdict};
use crate::batch::{
    Batch, Batching, HostStates, LayerStates, Layout, PackedBatch, PaddedBatch, pool_residues,
    run_batch, sequence_states, token_states,
};
use crate::input::Protein;
use crate::model::heads::{
    ClassifierHead, ClassifierWeights, ContactWeights, HeadWeights, class_probabilities,
    predict_contacts,
};
use crate::model::{Esm2, Place, to_host};

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
    /// The checkpoint's trained heads, which the head families run
    /// ([`crate::harness::family::Family::Classifier`], `Contacts`).
    pub heads: Option<&'a HeadWeights>,
}

impl<'a, B: Backend> Models<'a, B> {
    /// The reference and the policy under test, without a noise floor.
    pub fn new(reference: &'a Esm2<B>, test: &'a Esm2<B>) -> Self {
        Self {
            reference,
            test,
            floor: None,
            twin: None,
            heads: None,
        }
    }

    /// These models with the checkpoint's `heads`.
    pub fn with_heads(self, heads: &'a HeadWeights) -> Self {
        Self {
            heads: Some(heads),
            ..self
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

/// `explain` for one protein: the localisation of the policy under test (laid out as
/// `layout`) against FP32 padded, its pooled row against FP32's (what `embed` writes for the
/// protein alone), and with `against` (a second policy, `against.0` its name, run padded)
/// where the two diverge place by place.
pub fn explain_case<B: Backend>(
    models: Models<'_, B>,
    against: Option<(&str, &Esm2<B>)>,
    protein: &Protein,
    layout: Layout,
    threshold: f64,
) -> Explanation {
    let proteins = std::slice::from_ref(protein);
    let hidden = models.reference.config.hidden_size;
    let reference = trace_case(models.reference, proteins, Layout::Padded);
    let test = trace_case(models.test, proteins, layout);
    let pooled = |trace: &[(Place, Vec<Vec<f32>>)]| {
        trace
            .last()
            .map(|(_, seqs)| pool_residues(&seqs[0], hidden))
            .unwrap_or_default()
    };
    let fp32_pooled = pooled(&reference);
    let test_pooled = pooled(&test);
    let divergence = against.map(|(name, model)| {
        let other = trace_case(model, proteins, Layout::Padded);
        let other_pooled = pooled(&other);
        Divergence::new(
            name.to_string(),
            &localise(&test, &reference, proteins, hidden, threshold),
            &localise(&other, &reference, proteins, hidden, threshold),
            &localise(&test, &other, proteins, hidden, threshold),
            PooledRow::compare(&other_pooled, &fp32_pooled),
            PooledRow::compare(&test_pooled, &other_pooled),
        )
    });
    Explanation {
        localisation: localise(&test, &reference, proteins, hidden, threshold),
        pooled: PooledRow::compare(&test_pooled, &fp32_pooled),
        divergence,
    }
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
    let twin = models.twin.map(InProcess);
    against_oracle(
        Oracle::of(models.reference),
        &InProcess(models.test),
        twin.as_ref().map(|t| t as &dyn Subject),
        proteins,
        layout,
        tol,
    )
}

/// The FP32 oracle a subject is judged against: our FP32 model on the same weights, run
/// padded, its token states pooled as the subject pools.
pub struct Oracle<'a, B: Backend> {
    pub model: &'a Esm2<B>,
    pub pooling: Pooling,
    /// Time spent in the oracle's runs, added up when given (a deployment campaign reports
    /// where its time went).
    pub clock: Option<&'a std::cell::Cell<std::time::Duration>>,
    /// Pooled rows remembered per batch, when given: a case judged against many subjects
    /// runs the oracle once (`power --deployment`).
    pub memo: Option<&'a PooledMemo>,
}

impl<'a, B: Backend> Oracle<'a, B> {
    /// The oracle's padded FP32 states of `proteins` as one batch, its time added to the
    /// clock.
    pub fn run(&self, proteins: &[Protein]) -> CaseStates {
        let started = std::time::Instant::now();
        let states = run_case(self.model, proteins, Layout::Padded);
        if let Some(clock) = self.clock {
            clock.set(clock.get() + started.elapsed());
        }
        states
    }

    /// The pooled rows of `states`, pooled as the subject pools.
    pub fn pooled(&self, states: &CaseStates) -> Vec<Vec<f32>> {
        let hidden = self.model.config.hidden_size;
        states
            .last
            .iter()
            .map(|s| self.pooling.pool(s, hidden))
            .collect()
    }

    /// The oracle's pooled rows of `proteins` as one batch (remembered when the oracle has a
    /// memo).
    pub fn pooled_of(&self, proteins: &[Protein]) -> Vec<Vec<f32>> {
        match self.memo {
            Some(memo) => memo.get_or_insert_with(proteins, || self.pooled(&self.run(proteins))),
            None => self.pooled(&self.run(proteins)),
        }
    }

    /// `model`, pooled over residues (BOS and EOS excluded).
    pub fn of(model: &'a Esm2<B>) -> Self {
        Self {
            model,
            pooling: Pooling::ResidueMean,
            clock: None,
            memo: None,
        }
    }
}

// By hand: a derive would require `B: Copy`.
impl<B: Backend> Clone for Oracle<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Oracle<'_, B> {}

/// Properties 1-6 of one case: `subject` runs it laid out as `layout` (where it chooses
/// layouts) and is judged against the oracle run padded. A subject with token states gets
/// the token properties (in-process: every layer's non-finite check too; packed: property 7
/// against its own padded run); a remote one gets the pooled-row properties, and the token
/// ones too when it sends tokens. With `twin`, each sequence's error is judged against the
/// twin's on the same input. A call that fails is the case's failed verdict.
pub fn against_oracle<B: Backend>(
    oracle: Oracle<'_, B>,
    subject: &dyn Subject,
    twin: Option<&dyn Subject>,
    proteins: &[Protein],
    layout: Layout,
    tol: &Tolerances,
) -> Vec<Verdict> {
    let hidden = oracle.model.config.hidden_size;
    let test = match run_checked(subject, proteins, layout, hidden) {
        Ok(states) => states,
        Err(verdict) => return vec![verdict],
    };
    let caps = subject.capabilities();
    let names: Vec<String> = proteins.iter().map(|p| p.name.clone()).collect();
    let mut verdicts = Vec::new();
    if caps.remote {
        // Pooled rows alone need no token states of the oracle's (and may be remembered).
        let (pooled, reference_last) = match &test.last {
            Some(_) => {
                let reference = oracle.run(proteins);
                (oracle.pooled(&reference), Some(reference.last))
            }
            None => (oracle.pooled_of(proteins), None),
        };
        verdicts.extend(pooled_against(&test.pooled, &pooled, &names, tol));
        if let (Some(last), Some(reference_last)) = (&test.last, &reference_last) {
            verdicts.extend(against_reference(last, reference_last, &names, hidden, tol));
        }
        if let Some(twin) = twin {
            match run_checked(twin, proteins, layout, hidden) {
                Ok(t) => {
                    // The twin pooled as the oracle pools (and the deployment says it does).
                    let twin_pooled = match &t.last {
                        Some(last) => last
                            .iter()
                            .map(|s| oracle.pooling.pool(s, hidden))
                            .collect(),
                        None => t.pooled,
                    };
                    verdicts.push(within_twin(&test.pooled, &twin_pooled, &pooled, &names))
                }
                Err(verdict) => verdicts.push(verdict),
            }
        }
        return verdicts;
    }
    let reference = oracle.run(proteins);
    let last = test.last.unwrap_or_default();
    verdicts.extend(test.finite);
    verdicts.extend(against_reference(
        &last,
        &reference.last,
        &names,
        hidden,
        tol,
    ));
    if layout == Layout::Packed && caps.chooses_layout {
        match run_checked(subject, proteins, Layout::Padded, hidden) {
            Ok(padded) => verdicts.push(packed_vs_padded(
                &last,
                &padded.last.unwrap_or_default(),
                tol,
            )),
            Err(verdict) => verdicts.push(verdict),
        }
    }
    if let Some(twin) = twin {
        // The twin laid out as the variant is: only the computation differs.
        match run_checked(twin, proteins, layout, hidden) {
            Ok(t) => verdicts.push(within_twin(
                &last,
                &t.last.unwrap_or_default(),
                &reference.last,
                &names,
            )),
            Err(verdict) => verdicts.push(verdict),
        }
    }
    verdicts
}

/// `subject` run on `proteins`, its answer's shape checked before any metric reads it: one
/// pooled row of `hidden` values per protein, and `[n + 2, hidden]` token states when sent.
/// A call error or a wrong shape is the failed verdict returned.
fn run_checked(
    subject: &dyn Subject,
    proteins: &[Protein],
    layout: Layout,
    hidden: usize,
) -> Result<SubjectStates, Verdict> {
    let states = subject.run(proteins, layout).map_err(|e| e.verdict())?;
    let wrong = |what: String| {
        Verdict::at_most(
            PropertyId::Answered,
            1.0,
            0.0,
            format!("{what} for {} proteins", proteins.len()),
        )
    };
    if states.pooled.len() != proteins.len() {
        return Err(wrong(format!("{} pooled rows", states.pooled.len())));
    }
    if let Some(at) = states.pooled.iter().position(|r| r.len() != hidden) {
        return Err(wrong(format!(
            "pooled row {at} of {} values, not {hidden},",
            states.pooled[at].len()
        )));
    }
    if let Some(last) = &states.last {
        let bad = last.len() != proteins.len()
            || last
                .iter()
                .zip(proteins)
                .any(|(s, p)| s.len() != p.token_len() * hidden);
        if bad {
            return Err(wrong("token states of the wrong shape".into()));
        }
    }
    Ok(states)
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
///
/// On CUDA the repeat compares the second and third passes of the batch. A shape's first
/// pass can differ from later ones in the last bits: cubecl autotunes kernels during it
/// (burn-fusion's fused reductions among them: `cubecl-autotune.log` lists two candidates
/// per LayerNorm key) and later passes run the winner. A saved f32 counterexample failed
/// the repeat by 5.3e-6 on an H200 when it compared the first two passes, and held when it
/// compared the second and third (the CUDA suite, `results/h200-s9/`). The steady state is
/// what a deployment runs in, and what a race or an atomic reduction would break.
///
/// A remote subject lays out its batches itself and may run another kernel for another
/// batch shape: each protein's pooled row alone is held against its row among the
/// batch-mates within the policy's relative-L2 bound (a batch-mate may not move a row more
/// than the precision may move it from FP32).
pub fn check_isolation(
    subject: &dyn Subject,
    proteins: &[Protein],
    tol: &Tolerances,
) -> Vec<Verdict> {
    if subject.capabilities().remote {
        return batch_mates(subject, proteins, tol);
    }
    let run = |proteins: &[Protein], layout| {
        subject
            .run(proteins, layout)
            .map(|s| (s.last.unwrap_or_default(), s.finite))
            .map_err(|e| e.verdict())
    };
    let isolation_of = || -> Result<Vec<Verdict>, Verdict> {
        if subject.first_pass_differs() {
            run(proteins, Layout::Padded)?;
        }
        let (together, finite) = run(proteins, Layout::Padded)?;
        let (again, _) = run(proteins, Layout::Padded)?;
        let reversed: Vec<Protein> = proteins.iter().rev().cloned().collect();
        let (packed_rev, _) = run(&reversed, Layout::Packed)?;
        let n = proteins.len();
        let mut verdicts: Vec<Verdict> = finite.into_iter().collect();
        for i in 0..n {
            let (alone, _) = run(&proteins[i..=i], Layout::Padded)?;
            let which = || format!("sequence {i}");
            verdicts.push(isolation(
                PropertyId::RepeatBitIdentical,
                &together[i],
                &again[i],
                0.0,
                which(),
            ));
            verdicts.push(isolation(
                PropertyId::AloneVsPadded,
                &alone[0],
                &together[i],
                tol.isolation_abs,
                which(),
            ));
            verdicts.push(isolation(
                PropertyId::AloneVsPackedReversed,
                &alone[0],
                &packed_rev[n - 1 - i],
                tol.isolation_abs,
                which(),
            ));
        }
        Ok(verdicts)
    };
    isolation_of().unwrap_or_else(|failed| vec![failed])
}

/// A remote subject's rows alone against among batch-mates (see [`check_isolation`]).
fn batch_mates(subject: &dyn Subject, proteins: &[Protein], tol: &Tolerances) -> Vec<Verdict> {
    let rows = |proteins: &[Protein]| subject.run(proteins, Layout::Padded).map(|s| s.pooled);
    let names: Vec<String> = proteins.iter().map(|p| p.name.clone()).collect();
    let judged = || -> Result<Verdict, CallError> {
        let together = rows(proteins)?;
        let mut alone = Vec::with_capacity(proteins.len());
        for p in proteins {
            alone.extend(rows(std::slice::from_ref(p))?);
        }
        Ok(rows_agree(
            PropertyId::AloneVsBatch,
            &alone,
            &together,
            &names,
            tol.relative_l2,
        ))
    };
    vec![judged().unwrap_or_else(|e| e.verdict())]
}

/// Order within a batch: the batch and the same batch reversed give each protein the same
/// pooled row, within the policy's relative-L2 bound for a remote subject (it may pick
/// kernels by position) and `tol.isolation_abs` in max |diff| for our own model.
pub fn check_order(subject: &dyn Subject, proteins: &[Protein], tol: &Tolerances) -> Vec<Verdict> {
    let names: Vec<String> = proteins.iter().map(|p| p.name.clone()).collect();
    let reversed: Vec<Protein> = proteins.iter().rev().cloned().collect();
    let judged = || -> Result<Verdict, CallError> {
        let forward = subject.run(proteins, Layout::Padded)?.pooled;
        let mut backward = subject.run(&reversed, Layout::Padded)?.pooled;
        backward.reverse();
        Ok(if subject.capabilities().remote {
            rows_agree(
                PropertyId::OrderIndependent,
                &forward,
                &backward,
                &names,
                tol.relative_l2,
            )
        } else {
            rows_identical_within(
                PropertyId::OrderIndependent,
                &forward,
                &backward,
                &names,
                tol.isolation_abs,
            )
        })
    };
    vec![judged().unwrap_or_else(|e| e.verdict())]
}

/// Determinism: the same request twice gives bit-identical pooled rows (on CUDA in-process,
/// after a first pass that may autotune; see [`check_isolation`]).
pub fn check_determinism(subject: &dyn Subject, proteins: &[Protein]) -> Vec<Verdict> {
    let names: Vec<String> = proteins.iter().map(|p| p.name.clone()).collect();
    let judged = || -> Result<Verdict, CallError> {
        if subject.first_pass_differs() {
            subject.run(proteins, Layout::Padded)?;
        }
        let first = subject.run(proteins, Layout::Padded)?.pooled;
        let second = subject.run(proteins, Layout::Padded)?.pooled;
        Ok(rows_identical_within(
            PropertyId::Deterministic,
            &first,
            &second,
            &names,
            0.0,
        ))
    };
    vec![judged().unwrap_or_else(|e| e.verdict())]
}

/// An over-length protein (over 1,022 residues, sent whole to a deployment): a refusal
/// passes, named; an answer passes when it is the embedding of the first 1,022 residues (the
/// pooled-row properties against the oracle on those); anything else fails.
pub fn check_over_length<B: Backend>(
    oracle: Oracle<'_, B>,
    subject: &dyn Subject,
    proteins: &[Protein],
    tol: &Tolerances,
) -> Vec<Verdict> {
    let names: Vec<String> = proteins.iter().map(|p| p.name.clone()).collect();
    let named = |passed: bool, detail: String| Verdict {
        passed,
        ..Verdict::at_most(
            PropertyId::OverLengthHandled,
            if passed { 0.0 } else { 1.0 },
            0.0,
            detail,
        )
    };
    let hidden = oracle.model.config.hidden_size;
    match subject.run(proteins, Layout::Padded) {
        Err(CallError::Refused { message, .. }) => {
            vec![named(
                true,
                format!("refused: {}", message.chars().take(120).collect::<String>()),
            )]
        }
        Err(e) => vec![e.verdict()],
        Ok(states)
            if states.pooled.len() != proteins.len()
                || states.pooled.iter().any(|r| r.len() != hidden) =>
        {
            vec![named(false, "rows of the wrong shape".into())]
        }
        Ok(states) => {
            let pooled = oracle.pooled(&oracle.run(proteins));
            let mut verdicts = pooled_against(&states.pooled, &pooled, &names, tol);
            let truncated = verdicts.iter().all(|v| v.passed);
            verdicts.push(named(
                truncated,
                if truncated {
                    "truncated to the first 1,022 residues".into()
                } else {
                    "neither refused nor the embedding of the first 1,022 residues".into()
                },
            ));
            verdicts
        }
    }
}

/// Class probabilities of `proteins`: the model's last states (padded batches of the
/// backend's budget), their BOS rows through the checkpoint's classifier computed under the
/// model's own plan, softmax in f64. One row per protein, in input order.
pub fn classify<B: Backend>(
    model: &Esm2<B>,
    head: &ClassifierWeights,
    proteins: &[Protein],
) -> Vec<Vec<f64>> {
    let hidden = model.config.hidden_size;
    let budget = model
        .plan
        .backend
        .default_token_budget(model.config.hidden_size);
    let states = token_states(model, proteins, Batching::padded(budget));
    let bos: Vec<&[f32]> = states.iter().map(|s| &s[..hidden]).collect();
    ClassifierHead::<B>::new(head, &model.plan, model.device())
        .logits(&bos)
        .iter()
        .map(|l| class_probabilities(l))
        .collect()
}

/// The contact map of one protein of `n` residues, `[n, n]` row-major: every layer's
/// attention probabilities under the model's plan (the protein alone, padded), trimmed of
/// BOS and EOS by [`predict_contacts`].
pub fn contacts<B: Backend>(model: &Esm2<B>, head: &ContactWeights, protein: &Protein) -> Vec<f32> {
    let batch = one_batch(model, std::slice::from_ref(protein), Layout::Padded);
    let t = protein.tokens().len();
    let mut maps = Vec::with_capacity(head.channels() * t * t);
    for layer in model.attention_maps(batch.input()) {
        // One sequence padded alone: one group, one row, block_len >= t.
        let probs = layer
            .into_iter()
            .next()
            .unwrap_or_else(|| unreachable!("a batch of one sequence has one group"));
        let [_, heads, _, _] = probs.dims();
        maps.extend(to_host(probs.slice([0..1, 0..heads, 0..t, 0..t])));
    }
    predict_contacts(head, &maps, t - 2)
}

/// The task-level properties for one case, on whichever heads the checkpoint carries: the
/// classifier's probabilities and decisions, and each protein's contact map, of the policy
/// under test against the FP32 reference. Empty when there is no head.
pub fn check_heads<B: Backend>(
    models: Models<'_, B>,
    heads: &HeadWeights,
    proteins: &[Protein],
    tol: &HeadTolerances,
) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    if let Some(head) = &heads.classifier {
        verdicts.extend(check_classifier(models, head, proteins, tol));
    }
    if let Some(head) = &heads.contact {
        verdicts.extend(check_contacts(models, head, proteins, tol));
    }
    verdicts
}

/// The head family's check for one case: `head` of `models.heads` on `proteins`, the policy
/// under test against FP32. A head the models do not carry is a failed verdict saying so.
pub fn check_head<B: Backend>(
    models: Models<'_, B>,
    head: Head,
    proteins: &[Protein],
    tol: &HeadTolerances,
) -> Vec<Verdict> {
    let (classifier, contact) = models.heads.map_or((None, None), |h| {
        (h.classifier.as_ref(), h.contact.as_ref())
    });
    match (head, classifier, contact) {
        (Head::Classifier, Some(w), _) => check_classifier(models, w, proteins, tol),
        (Head::Contact, _, Some(w)) => check_contacts(models, w, proteins, tol),
        _ => vec![head.not_judged(&format!("the checkpoint carries no {}", head.label()))],
    }
}

/// The classifier's probabilities and decisions of the policy under test against FP32's.
pub fn check_classifier<B: Backend>(
    models: Models<'_, B>,
    head: &ClassifierWeights,
    proteins: &[Protein],
    tol: &HeadTolerances,
) -> Vec<Verdict> {
    let names: Vec<String> = proteins.iter().map(|p| p.name.clone()).collect();
    let test = classify(models.test, head, proteins);
    let reference = classify(models.reference, head, proteins);
    classifier_agreement(&test, &reference, &names, tol)
}

/// Each protein's contact map (alone) of the policy under test against FP32's.
pub fn check_contacts<B: Backend>(
    models: Models<'_, B>,
    head: &ContactWeights,
    proteins: &[Protein],
    tol: &HeadTolerances,
) -> Vec<Verdict> {
    let names: Vec<String> = proteins.iter().map(|p| p.name.clone()).collect();
    let maps = |model| {
        proteins
            .iter()
            .map(|p| contacts(model, head, p))
            .collect::<Vec<_>>()
    };
    contact_agreement(&maps(models.test), &maps(models.reference), &names, tol)
}
