//! Runs batches through a model and brings the results to the host as f32: per-token states
//! and mean-pooled embeddings (host-side sums in f64), and the embedding pipeline that groups
//! proteins into batches and hands each finished batch's rows to the caller.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use burn::tensor::{Tensor, backend::Backend};

use super::oom::{OutOfMemory, catch_out_of_memory};
use super::{Batch, Batching, Layout, PaddedBatch, packed_batches, padded_batches};
use crate::input::Protein;
use crate::model::{Esm2, HostTensor, PendingRead, Widen, cuda_pool};
use crate::with_stored;

/// `[tokens, hidden]` states on the host, f32, rows in batch-token order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostStates {
    pub hidden: usize,
    pub data: Vec<f32>,
}

impl HostStates {
    /// Copies a device tensor to the host (widening to f32 there).
    pub fn fetch<B: Backend>(t: Tensor<B, 2>) -> Self {
        Self::of(&HostTensor::read(t))
    }

    /// The states of a `[tokens, hidden]` tensor already read.
    pub fn of(read: &HostTensor) -> Self {
        Self {
            hidden: read.dims()[1],
            data: read.to_f32(),
        }
    }

    /// The states of `rows`, `[rows.len() * hidden]`.
    pub fn rows(&self, rows: Range<usize>) -> &[f32] {
        &self.data[rows.start * self.hidden..rows.end * self.hidden]
    }
}

/// Per-layer host states of one batch.
pub type LayerStates = BTreeMap<usize, HostStates>;

/// Runs `batch` and fetches the requested representations.
pub fn run_batch<B: Backend>(
    model: &Esm2<B>,
    batch: &(impl Batch + ?Sized),
    repr_layers: &[usize],
) -> LayerStates {
    read_batch(model, batch, repr_layers)
        .iter()
        .map(|(&layer, read)| (layer, HostStates::of(read)))
        .collect()
}

/// Runs `batch` and reads the requested representations to the host in the dtype the model
/// computed them in.
fn read_batch<B: Backend>(
    model: &Esm2<B>,
    batch: &(impl Batch + ?Sized),
    repr_layers: &[usize],
) -> BTreeMap<usize, HostTensor> {
    naming_the_batch(batch, || {
        model
            .forward(batch.input(), repr_layers)
            .representations
            .into_iter()
            .map(|(layer, t)| (layer, HostTensor::read(t)))
            .collect()
    })
}

/// Runs `run` (a forward of `batch` and its reads); a device panic goes on unwinding with
/// this batch's shape in its payload, so that the top of the program can name the batch (see
/// `oom::describe_escaped_panic`).
fn naming_the_batch<T>(batch: &(impl Batch + ?Sized), run: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|payload| {
        let shape = super::oom::BatchShape::of(batch);
        std::panic::resume_unwind(super::oom::name_batch(shape, payload))
    })
}

/// The states of sequence `i`, BOS and EOS included, `[n + 2, hidden]` flat.
pub fn sequence_states<'a>(
    states: &'a HostStates,
    batch: &(impl Batch + ?Sized),
    i: usize,
) -> &'a [f32] {
    states.rows(batch.sequence_rows(i))
}

/// The pooled embedding: mean over the residues of one sequence's `[n + 2, hidden]` states,
/// BOS and EOS excluded (the convention of HF and fair-esm users who pool residues),
/// accumulated in f64, `[hidden]`.
pub fn pool_residues(states: &[f32], hidden: usize) -> Vec<f32> {
    pool_stored(states, hidden)
}

/// [`pool_residues`] of states in their storage type, each value widened to f32 (exactly)
/// before it is accumulated: the same sums as pooling the f32 states.
fn pool_stored<T: Widen>(states: &[T], hidden: usize) -> Vec<f32> {
    let rows = states.len() / hidden;
    let residues = if rows > 2 {
        &states[hidden..(rows - 1) * hidden]
    } else {
        &[][..]
    };
    let mut acc = vec![0f64; hidden];
    for row in residues.chunks_exact(hidden) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v.widen() as f64;
        }
    }
    let n = rows.saturating_sub(2).max(1) as f64;
    acc.into_iter().map(|a| (a / n) as f32).collect()
}

/// Runs `batch` and returns the pooled last representation of each of its sequences.
///
/// On CUDA the states are pooled on the device ([`cuda_pool::residue_means`]) and only the
/// pooled rows come back. Elsewhere (or under `ESMFUZZ_HOST_POOLING=1`) they are pooled from
/// the host copy in the dtype the model computed them in (no f32 copy of the batch is made),
/// the sequences in parallel over the host's cores. Either way each sequence's sums are those
/// of [`pool_residues`], so the values depend on neither.
pub fn pooled_batch<B: Backend>(model: &Esm2<B>, batch: &(impl Batch + ?Sized)) -> Vec<Vec<f32>> {
    launch_pooled(model, batch).finish(batch)
}

/// A batch [`launch_pooled`] ran: its pooled rows, or their read from the device still under
/// way.
pub struct LaunchedBatch(LaunchedRows);

enum LaunchedRows {
    /// Pooled on the device; the read of `[sequences, hidden]` f32 started.
    Device(PendingRead),
    /// Pooled on the host.
    Pooled(Vec<Vec<f32>>),
}

/// [`pooled_batch`] up to the read of the device-pooled rows, which it only starts
/// ([`HostTensor::start_read`]): the caller can queue the next batch before
/// [`LaunchedBatch::finish`] waits for them.
pub fn launch_pooled<B: Backend>(model: &Esm2<B>, batch: &(impl Batch + ?Sized)) -> LaunchedBatch {
    let last = model.config.num_hidden_layers;
    let rows: Vec<Range<usize>> = (0..batch.len()).map(|i| batch.sequence_rows(i)).collect();
    naming_the_batch(batch, || {
        let mut representations = model.forward(batch.input(), &[last]).representations;
        let states = representations
            .remove(&last)
            .expect("the forward returns every layer it is asked for");
        LaunchedBatch(match cuda_pool::residue_means(states, &rows) {
            Ok(pooled) => LaunchedRows::Device(HostTensor::start_read(pooled)),
            Err(states) => {
                let states = HostTensor::read(states);
                let hidden = states.dims()[1];
                let pooled =
                    with_stored!(states.values(), values => pool_sequences(values, hidden, rows));
                LaunchedRows::Pooled(pooled)
            }
        })
    })
}

impl LaunchedBatch {
    /// The pooled rows of `batch` (the one launched), in its sequences' order.
    pub fn finish(self, batch: &(impl Batch + ?Sized)) -> Vec<Vec<f32>> {
        match self.0 {
            LaunchedRows::Pooled(pooled) => pooled,
            LaunchedRows::Device(read) => naming_the_batch(batch, || {
                let pooled = read.finish();
                let hidden = pooled.dims()[1];
                pooled
                    .to_f32()
                    .chunks_exact(hidden)
                    .map(<[f32]>::to_vec)
                    .collect()
            }),
        }
    }
}

/// Each of `rows` of `states` (`[tokens, hidden]` flat) pooled, in parallel.
fn pool_sequences<T: Widen>(states: &[T], hidden: usize, rows: Vec<Range<usize>>) -> Vec<Vec<f32>> {
    use rayon::prelude::*;
    rows.into_par_iter()
        .map(|r| pool_stored(&states[r.start * hidden..r.end * hidden], hidden))
        .collect()
}

/// The batches of `proteins` under `batching`, built one at a time for `model` (padded rows
/// rounded up to [`Esm2::padded_row_multiple`]).
pub fn batches<'a, B: Backend>(
    model: &'a Esm2<B>,
    proteins: &'a [Protein],
    batching: Batching,
) -> impl Iterator<Item = Box<dyn Batch>> + 'a {
    let dropout = model.config.token_dropout;
    let batches: Box<dyn Iterator<Item = Box<dyn Batch>> + 'a> = match batching.layout {
        Layout::Padded => Box::new(padded_batches(proteins, batching.budget).into_iter().map(
            move |indices| -> Box<dyn Batch> {
                let seqs: Vec<(usize, Vec<u32>)> =
                    indices.iter().map(|&i| (i, proteins[i].tokens())).collect();
                Box::new(PaddedBatch::with_len_multiple(
                    &seqs,
                    dropout,
                    model.padded_row_multiple(),
                ))
            },
        )),
        Layout::Packed => Box::new(
            packed_batches(proteins, batching.budget, dropout)
                .map(|b| -> Box<dyn Batch> { Box::new(b) }),
        ),
    };
    batches
}

/// What [`embed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedded {
    /// Tokens processed (BOS/EOS included, no padding).
    pub tokens: usize,
    /// The token budget the last batches ran under: below the one asked for when the
    /// device ran out of memory and batches were split.
    pub final_budget: usize,
}

/// Embeds every protein, calling `on_row(index, pooled)` for each as its batch completes.
///
/// A batch the device has no memory for ([`OutOfMemory`]) is not fatal while it holds more
/// than one sequence: the budget is halved to fit ([`BatchShape::halved_budget`]), a warning
/// says so, and the proteins not yet embedded are batched again under it. A single sequence
/// that does not fit is an error.
///
/// [`BatchShape::halved_budget`]: super::oom::BatchShape::halved_budget
pub fn embed<B: Backend, E: From<OutOfMemory>>(
    model: &Esm2<B>,
    proteins: &[Protein],
    batching: Batching,
    mut on_row: impl FnMut(usize, Vec<f32>) -> Result<(), E>,
) -> Result<Embedded, E> {
    let mut tokens = 0;
    let mut budget = batching.budget;
    // Indices (into `proteins`) not yet embedded.
    let mut todo: Vec<usize> = (0..proteins.len()).collect();
    'rebatch: while !todo.is_empty() {
        // Until the device runs out of memory `todo` is every protein, in order.
        let remaining: Cow<[Protein]> = if todo.len() == proteins.len() {
            Cow::Borrowed(proteins)
        } else {
            Cow::Owned(todo.iter().map(|&i| proteins[i].clone()).collect())
        };
        let mut done = vec![false; todo.len()];
        // One batch ahead: each batch is launched before the previous one's rows are
        // waited for, so the device has the next forward queued while the host waits.
        let mut in_flight: Option<(Box<dyn Batch>, LaunchedBatch)> = None;
        let mut batches = batches(model, &remaining, Batching { budget, ..batching });
        loop {
            let launched = batches.next().map(|batch| {
                let launched =
                    catch_out_of_memory(batch.as_ref(), || launch_pooled(model, batch.as_ref()));
                (batch, launched)
            });
            // The previous batch's rows: their read was started before this batch's forward.
            let mut out_of_memory = None;
            if let Some((batch, launched)) = in_flight.take() {
                match catch_out_of_memory(batch.as_ref(), || launched.finish(batch.as_ref())) {
                    Ok(pooled) => {
                        for (k, row) in pooled.into_iter().enumerate() {
                            let r = batch.record(k);
                            let i = todo[r];
                            done[r] = true;
                            tokens += proteins[i].token_len();
                            on_row(i, row)?;
                        }
                    }
                    Err(oom) => out_of_memory = Some(oom),
                }
            }
            match launched {
                Some((batch, Ok(launched))) => in_flight = Some((batch, launched)),
                Some((_, Err(oom))) => {
                    out_of_memory.get_or_insert(oom);
                }
                None => {}
            }
            if let Some(oom) = out_of_memory {
                if oom.shape.sequences <= 1 {
                    return Err(oom.into());
                }
                budget = oom
                    .shape
                    .halved_budget()
                    .min(budget.saturating_sub(1))
                    .max(1);
                eprintln!("warning: {oom}; token budget lowered to {budget}, going on");
                todo = todo
                    .iter()
                    .zip(&done)
                    .filter(|&(_, &d)| !d)
                    .map(|(&i, _)| i)
                    .collect();
                continue 'rebatch;
            }
            if in_flight.is_none() {
                break;
            }
        }
        break;
    }
    Ok(Embedded {
        tokens,
        final_budget: budget,
    })
}

/// The time of one forward-only pass ([`forward_only_seconds`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardTiming {
    /// Seconds from the pass's start until every batch had run on the device.
    pub seconds: f64,
    /// Seconds from the pass's start until the host had enqueued each batch's forward, in
    /// batch order: where the last is close to `seconds`, the device waited on the host
    /// (launches, not kernels, set the pace); where it is well below, the host ran ahead.
    pub enqueued_seconds: Vec<f64>,
}

/// The forward passes alone over `proteins` under `batching`, timed as the torch anchors time
/// theirs (`scripts/torch_bench.py`): every batch's forward enqueued one after another,
/// nothing brought to the host but one value of each batch's last states at the end (so every
/// batch has run), no pooling. Building the batches is timed too (torch builds its inputs
/// before its clock starts). The same batches as [`embed`] runs, at a budget it has already
/// run without running out of memory.
///
/// # Errors
/// A batch whose forward panicked (a device error), named by its shape.
pub fn forward_only_seconds<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    batching: Batching,
) -> anyhow::Result<ForwardTiming> {
    let last = model.config.num_hidden_layers;
    let start = std::time::Instant::now();
    let mut probes = Vec::new();
    let mut enqueued_seconds = Vec::new();
    for batch in batches(model, proteins, batching) {
        let run = || {
            model
                .forward(batch.input(), &[last])
                .representations
                .remove(&last)
                .map(|states| states.slice([0..1, 0..1]))
        };
        let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).map_err(|_| {
            let shape = super::oom::BatchShape::of(batch.as_ref());
            anyhow::anyhow!("the forward-only pass failed on a batch of {shape}")
        })?;
        probes.extend(probe);
        enqueued_seconds.push(start.elapsed().as_secs_f64());
    }
    for probe in probes {
        crate::model::to_host(probe);
    }
    Ok(ForwardTiming {
        seconds: start.elapsed().as_secs_f64(),
        enqueued_seconds,
    })
}

/// The last-layer token states of every protein, each `[n + 2, hidden]` flat with BOS and
/// EOS, in protein order.
pub fn token_states<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    batching: Batching,
) -> Vec<Vec<f32>> {
    let last = model.config.num_hidden_layers;
    let mut out = vec![Vec::new(); proteins.len()];
    for batch in batches(model, proteins, batching) {
        let states = run_batch(model, batch.as_ref(), &[last]);
        for k in 0..batch.len() {
            out[batch.record(k)] = sequence_states(&states[&last], batch.as_ref(), k).to_vec();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_averages_the_residues_and_skips_bos_and_eos() {
        let states = [9.0, 9.0, 1.0, 2.0, 3.0, 4.0, -9.0, -9.0];
        assert_eq!(pool_residues(&states, 2), vec![2.0, 3.0]);
        assert_eq!(pool_residues(&[1.0, 1.0, 2.0, 2.0], 2), vec![0.0, 0.0]);
    }
}
