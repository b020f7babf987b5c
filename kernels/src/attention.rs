//! Varlen self-attention with rotary embedding on the CPU, read straight from the stacked
//! q, k, v projections of a token stream (packed or padded) and written back in token order.
//!
//! It computes what esmfuzz's composed attention computes, step for step, in f32 with each
//! step's result rounded to the storage dtype `S` where the composition stores a tensor:
//! `q` scaled by `head_dim^-0.5` (the scale itself in `S`), then `q` and `k` rotated
//! (`x cos + rotate_half(x) sin`, NeoX halves, tables in `S`, each product and the sum
//! rounded), scores `q . k` over the sequence's keys (summed in f32, rounded), a max-shifted
//! softmax (`e = exp(s - max)` and its sum in f32, `p = e * (1 / sum)` rounded; with
//! [`Statistics::Storage`] `e` is rounded first, as burn-flex's half softmax stores it) and
//! the context `sum_j p_j v_j` (f32, rounded). What differs is only how the f32 reductions
//! run: burn's gemm blocks its sums its own way; here a score sums over the head dim in order,
//! and the softmax sum and each context lane add eight interleaved partial sums (lane
//! `j mod 8`, a tail of fewer than eight in lane 0) and then those, left to right. The dot
//! products of scores and contexts add each product by a fused multiply-add (as burn's f32
//! gemm does): one rounding per step in f32 storage, and for f16 and bf16 operands, whose
//! products f32 holds exactly, the very sums of a multiply then an add.
//! Padding keys are never read (no mask value, so no `-inf` arithmetic).

use rayon::prelude::*;

use super::exp::exp_nonpositive;
use super::multiversion;
use super::storage::{Bf16, Dtype, F16, F16Hw, F32, Storage, f16c};

/// Where a reduced policy's softmax keeps its exponentials: in f32 (the policy widens
/// statistics to f32; f32 storage) or stored in the storage dtype before they are normalised
/// (statistics in the storage dtype: burn-flex's half softmax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistics {
    F32,
    Storage,
}

/// One sequence of the stream: its queries are rows `q_start .. q_start + q_len`, its keys
/// rows `q_start .. q_start + k_len` (`k_len < q_len` in a padded block, whose padding rows
/// are queries too, attending the real keys). Row `q_start + r` has RoPE position `r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    pub q_start: usize,
    pub q_len: usize,
    pub k_len: usize,
}

/// The shape of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Model width: `heads * head_dim`.
    pub hidden: usize,
    pub heads: usize,
}

impl Heads {
    fn head_dim(self) -> usize {
        self.hidden / self.heads
    }
}

/// RoPE tables for positions `0..positions`: `cos[p * half + j] = cos(p f_j)` and the same for
/// `sin`, `half = head_dim / 2` (both halves of a head use the same frequencies).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl Rope {
    /// Tables for positions `0..positions` from `inv_freq` (`[head_dim / 2]`), each angle
    /// `p as f32 * f` in f32 as torch computes it, its cos and sin rounded to `dtype` (the
    /// composition casts the f32 tables to the storage dtype).
    pub fn new(inv_freq: &[f32], positions: usize, dtype: Dtype) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in inv_freq {
                let angle = p as f32 * f;
                cos.push(dtype.round(angle.cos()));
                sin.push(dtype.round(angle.sin()));
            }
        }
        Self { cos, sin, half }
    }

    fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }
}

/// The attention context of every query row, in storage `dtype` (values it holds, as f32),
/// the softmax's exponentials kept as `statistics` says. `qkv` holds values of `dtype`
/// (widened), `rope` tables rounded to it.
///
/// # Shapes
/// `qkv: [tokens, 3 hidden]` (q, then k, then v, each `[heads, head_dim]`), `out: [tokens,
/// hidden]`. Rows no sequence covers are left as they are.
///
/// # Panics
/// When a sequence reaches past `tokens`, has `k_len` of 0 or above `q_len`, when the RoPE
/// table is shorter than the longest sequence, or `hidden` is not `heads` times an even head
/// dim: the caller builds these from a validated layout.
pub fn attention(
    qkv: &[f32],
    shape: Heads,
    seqs: &[Sequence],
    rope: &Rope,
    dtype: Dtype,
    statistics: Statistics,
    out: &mut [f32],
) {
    match dtype {
        Dtype::F32 => attention_in::<F32>(qkv, shape, seqs, rope, statistics, out),
        Dtype::F16 if f16c() => attention_in::<F16Hw>(qkv, shape, seqs, rope, statistics, out),
        Dtype::F16 => attention_in::<F16>(qkv, shape, seqs, rope, statistics, out),
        Dtype::Bf16 => attention_in::<Bf16>(qkv, shape, seqs, rope, statistics, out),
    }
}

fn attention_in<S: Storage>(
    qkv: &[f32],
    shape: Heads,
    seqs: &[Sequence],
    rope: &Rope,
    statistics: Statistics,
    out: &mut [f32],
) {
    let Heads { hidden, heads } = shape;
    let head_dim = shape.head_dim();
    assert!(heads > 0 && head_dim > 0 && head_dim.is_multiple_of(2) && heads * head_dim == hidden);
    assert_eq!(rope.half * 2, head_dim, "RoPE table of another head dim");
    let tokens = qkv.len() / (3 * hidden);
    assert_eq!(qkv.len(), tokens * 3 * hidden);
    assert_eq!(out.len(), tokens * hidden);
    for s in seqs {
        assert!(
            s.k_len >= 1 && s.k_len <= s.q_len && s.q_start + s.q_len <= tokens,
            "{s:?}"
        );
        assert!(s.q_len <= rope.positions(), "{s:?} past the RoPE table");
    }
    // Longest first, so the last tasks rayon hands out are short ones.
    let mut tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..heads).map(move |h| (s, h)))
        .collect();
    tasks.sort_by_key(|&(s, _)| std::cmp::Reverse(seqs[s].q_len * seqs[s].k_len));
    let contexts: Vec<((usize, usize), Vec<f32>)> = tasks
        .into_par_iter()
        .map(|(s, h)| {
            let task = Task {
                seq: seqs[s],
                head: h,
                statistics,
            };
            ((s, h), one_head::<S>(qkv, shape, task, rope))
        })
        .collect();
    for ((s, h), context) in contexts {
        let seq = seqs[s];
        for (r, row) in context.chunks_exact(head_dim).enumerate() {
            let at = (seq.q_start + r) * hidden + h * head_dim;
            out[at..at + head_dim].copy_from_slice(row);
        }
    }
}

/// One head of one sequence, and how its softmax keeps its exponentials.
#[derive(Debug, Clone, Copy)]
struct Task {
    seq: Sequence,
    head: usize,
    statistics: Statistics,
}

multiversion! {
    /// One head of one sequence: `[q_len, head_dim]` contexts.
    fn one_head<S: Storage>(qkv: &[f32], shape: Heads, task: Task, rope: &Rope) -> Vec<f32>
        => one_head_body
}

/// Keys per panel: one vector of f32 lanes.
const LANES: usize = 8;

#[inline(always)]
fn one_head_body<S: Storage>(qkv: &[f32], shape: Heads, task: Task, rope: &Rope) -> Vec<f32> {
    let Task {
        seq,
        head,
        statistics,
    } = task;
    let Heads { hidden, .. } = shape;
    let head_dim = shape.head_dim();
    let row = |r: usize, part: usize| {
        let at = (seq.q_start + r) * 3 * hidden + part * hidden + head * head_dim;
        &qkv[at..at + head_dim]
    };
    let keys = seq.k_len;
    let panels = keys.div_ceil(LANES);
    // Rotated keys in panels of LANES keys, `[panels, head_dim, LANES]` (keys past the last
    // are zero and their scores unused): a query's scores for one panel are `head_dim` steps
    // on one vector of accumulators.
    let mut k_panels = vec![0.0f32; panels * head_dim * LANES];
    let mut rotated = vec![0.0f32; head_dim];
    for j in 0..keys {
        rotate::<S>(row(j, 1), j, rope, &mut rotated);
        let panel = &mut k_panels[(j / LANES) * head_dim * LANES..][..head_dim * LANES];
        for (d, &x) in rotated.iter().enumerate() {
            panel[d * LANES + j % LANES] = x;
        }
    }
    // Values transposed, `[head_dim, keys]`: a context lane is one contiguous sum.
    let mut vt = vec![0.0f32; head_dim * keys];
    for j in 0..keys {
        for (d, &x) in row(j, 2).iter().enumerate() {
            vt[d * keys + j] = x;
        }
    }
    let scale = S::round((head_dim as f64).powf(-0.5) as f32);
    let mut scaled = vec![0.0f32; head_dim];
    // QUERIES rows at a time: independent accumulator chains, each key and value load reused.
    let mut queries = vec![0.0f32; QUERIES * head_dim];
    let mut scores = vec![0.0f32; QUERIES * panels * LANES];
    let mut context = vec![0.0f32; seq.q_len * head_dim];
    for first in (0..seq.q_len).step_by(QUERIES) {
        let rows = QUERIES.min(seq.q_len - first);
        for (i, q) in queries.chunks_exact_mut(head_dim).enumerate() {
            // A short last block repeats its last row (computed, not written).
            let r = first + i.min(rows - 1);
            let unscaled = row(r, 0);
            let whole = head_dim / LANES * LANES;
            for j in (0..whole).step_by(LANES) {
                let x = lanes(&unscaled[j..]);
                scaled[j..j + LANES].copy_from_slice(&rounded::<S>(|l| x[l] * scale));
            }
            for j in whole..head_dim {
                scaled[j] = S::round(unscaled[j] * scale);
            }
            rotate::<S>(&scaled, r, rope, q);
        }
        block_scores::<S>(&queries, &k_panels, head_dim, &mut scores);
        for probs in scores.chunks_exact_mut(panels * LANES) {
            softmax_in_place::<S>(&mut probs[..keys], statistics);
        }
        let block = &mut context[first * head_dim..(first + rows) * head_dim];
        block_context::<S>(&scores, panels * LANES, keys, &vt, rows, block);
    }
    context
}

/// The first LANES values of `x` as an array (one bounds check, then fixed-size lanes the
/// compiler keeps in a vector register).
#[inline(always)]
fn lanes(x: &[f32]) -> &[f32; LANES] {
    x[..LANES]
        .try_into()
        .unwrap_or_else(|_| unreachable!("a slice of LANES values"))
}

/// Query rows per block.
const QUERIES: usize = 4;

/// `scores[i, j] = q_i . k_j` for the block's QUERIES rows and every key panel, each dot
/// product summed over the head dim in order, then rounded to `S`.
///
/// # Shapes
/// `queries: [QUERIES, head_dim]`, `k_panels: [panels, head_dim, LANES]` -> `scores:
/// [QUERIES, panels * LANES]`
#[inline(always)]
fn block_scores<S: Storage>(
    queries: &[f32],
    k_panels: &[f32],
    head_dim: usize,
    scores: &mut [f32],
) {
    let stride = scores.len() / QUERIES;
    for (p, panel) in k_panels.chunks_exact(head_dim * LANES).enumerate() {
        let mut acc = [[0.0f32; LANES]; QUERIES];
        for (d, k) in panel.chunks_exact(LANES).enumerate() {
            let k = lanes(k);
            for (i, a) in acc.iter_mut().enumerate() {
                let q = queries[i * head_dim + d];
                for l in 0..LANES {
                    a[l] = q.mul_add(k[l], a[l]);
                }
            }
        }
        for (i, &a) in acc.iter().enumerate() {
            scores[i * stride + p * LANES..][..LANES].copy_from_slice(&S::round_lanes(a));
        }
    }
}

/// `context[i, d] = sum_j p[i, j] v[j, d]` for the block's first `rows` rows, each sum as
/// eight interleaved partial sums (lane `j mod 8`, a tail in lane 0), then those left to
/// right, rounded to `S`.
///
/// # Shapes
/// `probs: [QUERIES, stride]` (the first `keys` of each row), `vt: [head_dim, keys]` ->
/// `context: [rows, head_dim]`
#[inline(always)]
fn block_context<S: Storage>(
    probs: &[f32],
    stride: usize,
    keys: usize,
    vt: &[f32],
    rows: usize,
    context: &mut [f32],
) {
    let head_dim = vt.len() / keys;
    let whole = keys / LANES * LANES;
    // Two dims at a time (the head dim is even): eight independent accumulator chains, and
    // each probability load serves both.
    for (pair, both) in vt.chunks_exact(2 * keys).enumerate() {
        let (first, second) = both.split_at(keys);
        let mut acc0 = [[0.0f32; LANES]; QUERIES];
        let mut acc1 = [[0.0f32; LANES]; QUERIES];
        for start in (0..whole).step_by(LANES) {
            let v0 = lanes(&first[start..]);
            let v1 = lanes(&second[start..]);
            for i in 0..QUERIES {
                let p = lanes(&probs[i * stride + start..]);
                for l in 0..LANES {
                    acc0[i][l] = p[l].mul_add(v0[l], acc0[i][l]);
                    acc1[i][l] = p[l].mul_add(v1[l], acc1[i][l]);
                }
            }
        }
        for (offset, (acc, lane)) in [(acc0, first), (acc1, second)].into_iter().enumerate() {
            for (i, mut a) in acc.into_iter().enumerate().take(rows) {
                for j in whole..keys {
                    a[0] = probs[i * stride + j].mul_add(lane[j], a[0]);
                }
                let d = 2 * pair + offset;
                context[i * head_dim + d] = S::round(a.iter().fold(0.0, |total, &s| total + s));
            }
        }
    }
}

/// `x cos + rotate_half(x) sin` at position `p`, `rotate_half([x1, x2]) = [-x2, x1]`, each
/// product and the sum rounded to `S`.
#[inline(always)]
fn rotate<S: Storage>(x: &[f32], p: usize, rope: &Rope, out: &mut [f32]) {
    let half = rope.half;
    let cos = &rope.cos[p * half..(p + 1) * half];
    let sin = &rope.sin[p * half..(p + 1) * half];
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    // Eight lanes at a time (the rounding is the costly part in a half dtype), then the tail.
    let whole = half / LANES * LANES;
    for j in (0..whole).step_by(LANES) {
        let [a, b, c, s] = [x1, x2, cos, sin].map(|v| *lanes(&v[j..]));
        let (a_cos, b_cos) = (rounded::<S>(|l| a[l] * c[l]), rounded::<S>(|l| b[l] * c[l]));
        let neg_b_sin = rounded::<S>(|l| (-b[l]) * s[l]);
        let a_sin = rounded::<S>(|l| a[l] * s[l]);
        o1[j..j + LANES].copy_from_slice(&rounded::<S>(|l| a_cos[l] + neg_b_sin[l]));
        o2[j..j + LANES].copy_from_slice(&rounded::<S>(|l| b_cos[l] + a_sin[l]));
    }
    for j in whole..half {
        o1[j] = S::round(S::round(x1[j] * cos[j]) + S::round((-x2[j]) * sin[j]));
        o2[j] = S::round(S::round(x2[j] * cos[j]) + S::round(x1[j] * sin[j]));
    }
}

/// Eight lanes `f(0..8)`, each rounded to `S`.
#[inline(always)]
fn rounded<S: Storage>(f: impl Fn(usize) -> f32) -> [f32; LANES] {
    S::round_lanes(std::array::from_fn(f))
}

/// Max-shifted softmax of one row: `e = exp(s - max)`, `p = e * (1 / sum e)` rounded to `S`
/// (with [`Statistics::Storage`], `p = round(round(e) * (1 / sum e))`).
#[inline(always)]
fn softmax_in_place<S: Storage>(row: &mut [f32], statistics: Statistics) {
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in max.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    // A NaN score is skipped here but makes its `e` NaN below, so the sum and every
    // probability of the row are NaN, as in the composed softmax.
    let mut top = f32::NEG_INFINITY;
    for &x in max.iter().chain(chunks.remainder()) {
        top = if x > top { x } else { top };
    }
    for x in row.iter_mut() {
        *x = exp_nonpositive(*x - top);
    }
    let mut sum = [0.0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, &x) in sum.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    for &x in chunks.remainder() {
        sum[0] += x;
    }
    let total = sum.iter().fold(0.0f32, |total, &s| total + s);
    let inv = 1.0 / total;
    let probabilities = |e: [f32; LANES]| match statistics {
        Statistics::F32 => S::round_lanes(e.map(|e| e * inv)),
        Statistics::Storage => S::round_lanes(S::round_lanes(e).map(|e| e * inv)),
    };
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        let p = probabilities(*lanes(chunk));
        chunk.copy_from_slice(&p);
    }
    // The last partial vector, padded with zeros (each lane is rounded on its own).
    let tail = chunks.into_remainder();
    let mut e = [0.0f32; LANES];
    e[..tail.len()].copy_from_slice(tail);
    let p = probabilities(e);
    tail.copy_from_slice(&p[..tail.len()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`attention`] in f32 storage and statistics.
    fn attention_f32(qkv: &[f32], shape: Heads, seqs: &[Sequence], rope: &Rope, out: &mut [f32]) {
        attention(qkv, shape, seqs, rope, Dtype::F32, Statistics::F32, out);
    }

    /// A seeded uniform value in [-scale, scale) (xorshift; no dependency for a test).
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// The attention of one sequence and head in f64, straight from the definition.
    fn reference(
        qkv: &[f32],
        shape: Heads,
        seq: Sequence,
        head: usize,
        inv_freq: &[f32],
    ) -> Vec<f64> {
        let (hidden, head_dim) = (shape.hidden, shape.head_dim());
        let half = head_dim / 2;
        let vec_of = |r: usize, part: usize, pos: usize, scale: f64| -> Vec<f64> {
            let at = (seq.q_start + r) * 3 * hidden + part * hidden + head * head_dim;
            let x: Vec<f64> = qkv[at..at + head_dim]
                .iter()
                .map(|&v| v as f64 * scale)
                .collect();
            if part == 2 {
                return x;
            }
            (0..head_dim)
                .map(|d| {
                    let angle = pos as f64 * inv_freq[d % half] as f64;
                    let rot = if d < half { -x[d + half] } else { x[d - half] };
                    x[d] * angle.cos() + rot * angle.sin()
                })
                .collect()
        };
        let scale = (head_dim as f64).powf(-0.5);
        let mut out = Vec::new();
        for r in 0..seq.q_len {
            let q = vec_of(r, 0, r, scale);
            let scores: Vec<f64> = (0..seq.k_len)
                .map(|j| q.iter().zip(vec_of(j, 1, j, 1.0)).map(|(a, b)| a * b).sum())
                .collect();
            let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..head_dim {
                out.push(
                    (0..seq.k_len)
                        .map(|j| e[j] / sum * vec_of(j, 2, j, 1.0)[d])
                        .sum(),
                );
            }
        }
        out
    }

    #[test]
    fn packed_and_padded_sequences_match_attention_in_f64() {
        let shape = Heads {
            hidden: 64,
            heads: 4,
        };
        let inv_freq: Vec<f32> = (0..8)
            .map(|i| 1.0 / 10000f32.powf(i as f32 / 8.0))
            .collect();
        // Packed lengths 1, 3, 9 and 37; then a padded block of 20 rows with 13 keys.
        let seqs = [
            Sequence {
                q_start: 0,
                q_len: 1,
                k_len: 1,
            },
            Sequence {
                q_start: 1,
                q_len: 3,
                k_len: 3,
            },
            Sequence {
                q_start: 4,
                q_len: 9,
                k_len: 9,
            },
            Sequence {
                q_start: 13,
                q_len: 37,
                k_len: 37,
            },
            Sequence {
                q_start: 50,
                q_len: 20,
                k_len: 13,
            },
        ];
        let tokens = 72;
        let qkv = values(tokens * 3 * shape.hidden, 7, 3.0);
        let rope = Rope::new(&inv_freq, 40, Dtype::F32);
        let mut out = vec![f32::NAN; tokens * shape.hidden];
        attention_f32(&qkv, shape, &seqs, &rope, &mut out);
        let mut worst = 0.0f64;
        for seq in seqs {
            for head in 0..shape.heads {
                let want = reference(&qkv, shape, seq, head, &inv_freq);
                for r in 0..seq.q_len {
                    for d in 0..16 {
                        let got = out[(seq.q_start + r) * shape.hidden + head * 16 + d] as f64;
                        let w = want[r * 16 + d];
                        worst = worst.max((got - w).abs());
                    }
                }
            }
        }
        // Values within +-3, scores up to ~20: f32 rounding moves a context by ~2e-6 (measured
        // 1.8e-6); a wrong rotation, scale, key or sum moves it by far more.
        assert!(worst < 1e-5, "max |error| {worst:e}");
        // Rows 70 and 71 belong to no sequence: left as they were.
        assert!(out[70 * 64..].iter().all(|x| x.is_nan()));
    }

    #[test]
    fn a_non_finite_value_spreads_to_its_own_sequence_only() {
        let shape = Heads {
            hidden: 32,
            heads: 2,
        };
        let seqs = [
            Sequence {
                q_start: 0,
                q_len: 5,
                k_len: 5,
            },
            Sequence {
                q_start: 5,
                q_len: 6,
                k_len: 6,
            },
        ];
        let mut qkv = values(11 * 96, 3, 1.0);
        qkv[2 * 96 + 32] = f32::NAN; // a key of sequence 0, head 0
        let mut out = vec![0.0f32; 11 * 32];
        let rope = Rope::new(&[1.0; 8], 6, Dtype::F32);
        attention_f32(&qkv, shape, &seqs, &rope, &mut out);
        assert!((0..5).all(|r| out[r * 32..r * 32 + 16].iter().all(|x| x.is_nan())));
        assert!(
            out[..5 * 32]
                .chunks(32)
                .all(|row| row[16..].iter().all(|x| x.is_finite()))
        );
        assert!(out[5 * 32..].iter().all(|x| x.is_finite()));
    }
}
