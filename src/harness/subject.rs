//! What is under test: a [`Subject`] runs proteins as one batch and returns their states, or
//! says why it could not. Our own model ([`InProcess`]) and another team's deployment
//! (`crate::deployment::Deployment`) are the two kinds; families and checks see only this
//! seam, and the capabilities a subject declares pick the properties that apply.

use burn::tensor::backend::Backend;

use super::cases::{CaseStates, run_case};
use super::verdict::{PropertyId, Verdict};
use crate::batch::Layout;
use crate::input::Protein;
use crate::model::Esm2;

/// What a subject can return and control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capabilities {
    /// Every token's last state (BOS and EOS included), not only a pooled row.
    pub tokens: bool,
    /// Every layer's states are checked for non-finite values (in-process only).
    pub every_layer: bool,
    /// The harness chooses the layout (padded or packed); a deployment lays out its batches
    /// itself.
    pub chooses_layout: bool,
    /// Another team's stack: its own arithmetic, judged by pooled rows against the oracle.
    pub remote: bool,
}

/// One batch run by a subject, in request order.
#[derive(Debug, Clone)]
pub struct SubjectStates {
    /// One pooled row per protein, `[hidden]` each.
    pub pooled: Vec<Vec<f32>>,
    /// Last-layer token states, `[n + 2, hidden]` per protein, when the subject returns them.
    pub last: Option<Vec<Vec<f32>>>,
    /// Property 3 over every layer, when the subject runs in-process.
    pub finite: Option<Verdict>,
}

impl SubjectStates {
    /// The states of an in-process run, pooled over residues.
    pub fn of_case(states: CaseStates, hidden: usize) -> Self {
        Self {
            pooled: states
                .last
                .iter()
                .map(|s| crate::batch::pool_residues(s, hidden))
                .collect(),
            last: Some(states.last),
            finite: Some(states.finite),
        }
    }
}

/// Why a subject returned no states for a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The deployment answered with a refusal (`{"id": .., "error": ..}`).
    #[error("call {call}: the deployment refused the batch: {message}")]
    Refused { call: u64, message: String },
    /// No usable answer: a crash, a hang, the wrong id, row count or width, garbage. A
    /// failure of the case (it shrinks); the deployment is restarted where it can be.
    #[error("call {call}: {what}{}", tail(stderr_tail))]
    Broken {
        call: u64,
        what: String,
        /// The last lines the deployment wrote to stderr.
        stderr_tail: String,
    },
    /// The run cannot go on: no answer several times in a row, or a signal. The campaign
    /// stops, marked incomplete.
    #[error("{what}")]
    GaveUp { what: String },
}

fn tail(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; its stderr ends:\n{}", stderr.trim_end())
    }
}

impl CallError {
    /// The failed verdict that stands for this call in a case's verdicts.
    pub fn verdict(&self) -> Verdict {
        let property = match self {
            CallError::Refused { .. } => PropertyId::Refusal,
            CallError::Broken { .. } | CallError::GaveUp { .. } => PropertyId::Answered,
        };
        Verdict::at_most(property, 1.0, 0.0, self.to_string())
    }
}

/// A model under test.
pub trait Subject {
    /// What this subject returns.
    fn capabilities(&self) -> Capabilities;

    /// Runs `proteins` as one batch; `layout` is honoured where
    /// [`Capabilities::chooses_layout`].
    fn run(&self, proteins: &[Protein], layout: Layout) -> Result<SubjectStates, CallError>;

    /// Whether the subject can take no further call (a deployment that gave up); the driver
    /// then stops generating cases.
    fn exhausted(&self) -> bool {
        false
    }

    /// Whether a batch shape's first pass may differ in the last bits from later ones
    /// (cubecl autotunes on CUDA during it): repeat checks then compare later passes.
    fn first_pass_differs(&self) -> bool {
        false
    }
}

/// Our own model, run in this process under its policy.
pub struct InProcess<'a, B: Backend>(pub &'a Esm2<B>);

impl<B: Backend> Subject for InProcess<'_, B> {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            tokens: true,
            every_layer: true,
            chooses_layout: true,
            remote: false,
        }
    }

    fn first_pass_differs(&self) -> bool {
        self.0.plan.backend == crate::backend::BackendKind::Cuda
    }

    fn run(&self, proteins: &[Protein], layout: Layout) -> Result<SubjectStates, CallError> {
        let hidden = self.0.config.hidden_size;
        Ok(SubjectStates::of_case(
            run_case(self.0, proteins, layout),
            hidden,
        ))
    }
}

/// A batch's key in a memo: its proteins' tokens, in order.
type BatchKey = Vec<Vec<u32>>;

fn batch_key(proteins: &[Protein]) -> BatchKey {
    proteins.iter().map(Protein::tokens).collect()
}

/// Pooled rows remembered per batch: an in-process model judged again on the same cases (an
/// FP32 oracle or a twin beside many deployments under test, as `power --deployment` runs
/// one set of cases against each degraded deployment) runs each batch once. Only pooled rows
/// are kept: token states of hundreds of cases would not fit.
#[derive(Debug, Default)]
pub struct PooledMemo {
    rows: std::cell::RefCell<std::collections::HashMap<BatchKey, Vec<Vec<f32>>>>,
}

impl PooledMemo {
    /// The pooled rows of `proteins`, computed by `compute` the first time.
    pub fn get_or_insert_with(
        &self,
        proteins: &[Protein],
        compute: impl FnOnce() -> Vec<Vec<f32>>,
    ) -> Vec<Vec<f32>> {
        let key = batch_key(proteins);
        if let Some(rows) = self.rows.borrow().get(&key) {
            return rows.clone();
        }
        let rows = compute();
        self.rows.borrow_mut().insert(key, rows.clone());
        rows
    }
}

/// A subject whose answers are pooled as `pooling` pools and remembered per batch and
/// layout: pooled rows only (no token states), so it stands beside a remote subject, which
/// is judged by pooled rows (a twin of our own policy in `power --deployment`).
pub struct PooledOnce<'a> {
    inner: &'a dyn Subject,
    pooling: super::deployment::Pooling,
    hidden: usize,
    padded: PooledMemo,
    packed: PooledMemo,
}

impl<'a> PooledOnce<'a> {
    pub fn new(inner: &'a dyn Subject, pooling: super::deployment::Pooling, hidden: usize) -> Self {
        Self {
            inner,
            pooling,
            hidden,
            padded: PooledMemo::default(),
            packed: PooledMemo::default(),
        }
    }
}

impl Subject for PooledOnce<'_> {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            tokens: false,
            every_layer: false,
            ..self.inner.capabilities()
        }
    }

    fn run(&self, proteins: &[Protein], layout: Layout) -> Result<SubjectStates, CallError> {
        let memo = match layout {
            Layout::Padded => &self.padded,
            Layout::Packed => &self.packed,
        };
        let mut failed = None;
        let pooled = memo.get_or_insert_with(proteins, || match self.inner.run(proteins, layout) {
            Ok(states) => match states.last {
                Some(last) => last
                    .iter()
                    .map(|s| self.pooling.pool(s, self.hidden))
                    .collect(),
                None => states.pooled,
            },
            Err(e) => {
                failed = Some(e);
                Vec::new()
            }
        });
        if let Some(e) = failed {
            // Not remembered: a failed call is asked again.
            memo.rows.borrow_mut().remove(&batch_key(proteins));
            return Err(e);
        }
        Ok(SubjectStates {
            pooled,
            last: None,
            finite: None,
        })
    }

    fn first_pass_differs(&self) -> bool {
        self.inner.first_pass_differs()
    }
}
