//! burn's fused attention op (`burn::tensor::module::attention`; cubek flash kernels on CUDA,
//! the unfused fallback elsewhere) against attention computed in f64 on the host from the same
//! f16 operands, on the smallest shapes that show the CUDA defect: a 3-token sequence padded
//! to a block of 64, the key-padding mask as esmfuzz passes it (expanded, stride 0) and
//! materialised, no padding, a length no kernel stage divides, two sequences of one block.
//!
//! The first test asserts the routing, not burn's kernel: `--attention fused` runs burn's op on
//! the test backend exactly when every case agrees. On the CPU every case agrees and burn's op
//! runs; on CUDA (burn 0.21) cases fail and esmfuzz's own flash kernel runs instead. When a
//! burn release fixes its kernel this test goes red on CUDA: reconsider the routing then.
//! The second test holds esmfuzz's fused attention (whatever runs it) to its composed twin on
//! the real 8M weights, padded and packed, against FP32.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Tensor, TensorData};
use esmfuzz::batch::{Batch, PackedBatch, PaddedBatch};
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::model::attention::uses_burn_fused_op;
use esmfuzz::model::{AttentionKernel, ComputePlan, Esm2, FaultSet, Precision};
use half::f16;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::common::{TestBackend, test_backend, test_device, weights};

const HEADS: usize = 4;
const HEAD_DIM: usize = 64;
/// f16 operands and output, f32 softmax statistics: ~1e-3 relative L2 expected; the defect
/// seen on CUDA is of order 1.
const BOUND: f64 = 1e-2;

/// One case: sequences of `lengths` in blocks of `block` slots.
struct Case {
    name: &'static str,
    lengths: &'static [usize],
    block: usize,
    mask: Mask,
}

#[derive(Clone, Copy, PartialEq)]
enum Mask {
    /// `[batch, 1, 1, block]` expanded to `[batch, heads, block, block]` (stride 0), as
    /// `src/model/attention.rs` passes it.
    Expanded,
    /// The same mask written out in full.
    Materialised,
    /// No mask (every block full).
    None,
}

const CASES: &[Case] = &[
    Case {
        name: "3 of 64, mask expanded",
        lengths: &[3],
        block: 64,
        mask: Mask::Expanded,
    },
    Case {
        name: "3 of 64, mask materialised",
        lengths: &[3],
        block: 64,
        mask: Mask::Materialised,
    },
    Case {
        name: "64 of 64, no mask",
        lengths: &[64],
        block: 64,
        mask: Mask::None,
    },
    Case {
        name: "3 of 3, no mask",
        lengths: &[3],
        block: 3,
        mask: Mask::None,
    },
    Case {
        name: "3 and 64 of 64, mask expanded",
        lengths: &[3, 64],
        block: 64,
        mask: Mask::Expanded,
    },
];

/// Host f64 attention of block `b`, head `h`, query row `i`, over its first `len` keys.
fn reference(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    block: usize,
    at: [usize; 3],
    len: usize,
) -> Vec<f64> {
    let [b, h, i] = at;
    let row = |t: &[f64], j: usize| {
        let start = ((b * HEADS + h) * block + j) * HEAD_DIM;
        t[start..start + HEAD_DIM].to_vec()
    };
    let qi = row(q, i);
    let scale = (HEAD_DIM as f64).powf(-0.5);
    let scores: Vec<f64> = (0..len)
        .map(|j| qi.iter().zip(row(k, j)).map(|(a, c)| a * c).sum::<f64>() * scale)
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut out = vec![0.0; HEAD_DIM];
    for (j, w) in weights.iter().enumerate() {
        for (o, x) in out.iter_mut().zip(row(v, j)) {
            *o += w / total * x;
        }
    }
    out
}

/// Relative L2 error of burn's fused op on `case` over the real query rows, or the panic
/// message when the op failed.
fn fused_error(case: &Case, seed: u64) -> Result<f64, String> {
    let device = test_device();
    let batch = case.lengths.len();
    let n = batch * HEADS * case.block * HEAD_DIM;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draw = || -> Vec<f64> {
        (0..n)
            .map(|_| f16::from_f64(rng.random_range(-2.0..2.0)).to_f64())
            .collect()
    };
    let (q, k, v) = (draw(), draw(), draw());
    let shape = [batch, HEADS, case.block, HEAD_DIM];
    // Values already f16-representable; uploaded as f32 and cast, so every backend holds
    // f16 tensors (a CPU upload of f16 data lands in the default float dtype).
    let upload = |t: &[f64]| {
        let data: Vec<f32> = t.iter().map(|&x| x as f32).collect();
        Tensor::<TestBackend, 4>::from_data(TensorData::new(data, shape), &device).cast(DType::F16)
    };
    let padding: Vec<bool> = case
        .lengths
        .iter()
        .flat_map(|&len| (0..case.block).map(move |j| j >= len))
        .collect();
    let mask = match case.mask {
        Mask::None => None,
        Mask::Expanded => Some(
            Tensor::<TestBackend, 1, Bool>::from_data(
                TensorData::new(padding.clone(), [batch * case.block]),
                &device,
            )
            .reshape([batch, 1, 1, case.block])
            .expand([batch, HEADS, case.block, case.block]),
        ),
        Mask::Materialised => {
            let full: Vec<bool> = (0..batch)
                .flat_map(|b| {
                    let padding = &padding;
                    (0..HEADS * case.block)
                        .flat_map(move |_| padding[b * case.block..(b + 1) * case.block].to_vec())
                })
                .collect();
            Some(Tensor::<TestBackend, 4, Bool>::from_data(
                TensorData::new(full, [batch, HEADS, case.block, case.block]),
                &device,
            ))
        }
    };
    let (tq, tk, tv) = (upload(&q), upload(&k), upload(&v));
    let got = catch_unwind(AssertUnwindSafe(|| {
        let out = burn::tensor::module::attention(
            tq,
            tk,
            tv,
            mask,
            None,
            AttentionModuleOptions::default(),
        );
        assert_eq!(out.dtype(), DType::F16);
        out.cast(DType::F32).into_data().to_vec::<f32>()
    }))
    .map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())
    })?
    .map_err(|e| format!("{e:?}"))?;
    let (mut num, mut den) = (0.0, 0.0);
    for (b, &len) in case.lengths.iter().enumerate() {
        for h in 0..HEADS {
            for i in 0..len {
                let want = reference(&q, &k, &v, case.block, [b, h, i], len);
                let start = ((b * HEADS + h) * case.block + i) * HEAD_DIM;
                for (x, y) in got[start..start + HEAD_DIM].iter().zip(&want) {
                    num += (*x as f64 - y).powi(2);
                    den += y * y;
                }
            }
        }
    }
    // NaN stays NaN (and fails the bound).
    Ok((num / den).sqrt())
}

#[test]
fn burns_fused_op_runs_exactly_where_it_agrees_with_f64() {
    let backend = test_backend();
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let verdict = fused_error(case, 100 + i as u64);
        eprintln!("{backend} burn fused attention, {}: {verdict:?}", case.name);
        match verdict {
            Ok(e) if e <= BOUND => {}
            Ok(e) => failures.push(format!("{}: relative L2 {e:.3e} > {BOUND:e}", case.name)),
            Err(why) => failures.push(format!("{}: {why}", case.name)),
        }
    }
    let used = uses_burn_fused_op(backend);
    assert_eq!(
        used,
        failures.is_empty(),
        "on {backend}, --attention fused {} burn's fused op, which {}",
        if used { "runs" } else { "does not run" },
        if failures.is_empty() {
            "agrees with f64 on every case".to_string()
        } else {
            format!("fails: {}", failures.join("; "))
        }
    );
}

/// Relative L2 distance of two equally long vectors (NaN stays NaN).
fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// FlashAttention's rule for a fused kernel: its error against the higher-precision reference
/// stays within twice that of the unfused computation in the same dtype, plus a small
/// absolute term. Here on the last layer of the real 8M model, padded (a 3-token sequence in a
/// block of 64 beside a full one) and packed (3, 64 and 130 tokens).
#[test]
fn fused_attention_is_as_close_to_fp32_as_the_composed_one() {
    let backend = test_backend();
    let device = test_device();
    let weights = weights();
    let last = weights.config.num_hidden_layers;
    let seqs: Vec<(usize, Vec<u32>)> = [3usize, 64, 130]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let residues = (0..n).map(|j| 4 + ((j * 7 + i * 3) % 20) as u32);
            (i, [vec![0], residues.collect(), vec![2]].concat())
        })
        .collect();
    let batches: [(&str, Box<dyn Batch>); 2] = [
        (
            "padded",
            Box::new(PaddedBatch::with_len_multiple(&seqs[..2], true, 64)),
        ),
        ("packed", Box::new(PackedBatch::new(&seqs, true))),
    ];
    let model =
        |plan: ComputePlan| Esm2::<TestBackend>::new(weights, plan, FaultSet::none(), &device);
    let states = |m: &Esm2<TestBackend>, input| -> Vec<f32> {
        let out = m.forward(input, &[last]);
        let x = out
            .representations
            .into_values()
            .next()
            .expect("the last layer");
        x.cast(DType::F32)
            .into_data()
            .to_vec::<f32>()
            .expect("f32 states")
    };
    let reference = model(ComputePlan::new(Precision::F32, backend));
    for precision in [Precision::F32, Precision::F16, Precision::Bf16] {
        let composed = ComputePlan::new(precision, backend);
        let fused = composed.with_attention(AttentionKernel::Fused);
        let (composed, fused) = (model(composed), model(fused));
        for (name, batch) in &batches {
            let input = batch.input();
            // Only rows of real tokens: padding rows are not outputs.
            let keep: Vec<usize> = (0..batch.len())
                .flat_map(|i| batch.sequence_rows(i))
                .collect();
            let rows = |v: Vec<f32>| -> Vec<f32> {
                let hidden = weights.config.hidden_size;
                keep.iter()
                    .flat_map(|&r| v[r * hidden..(r + 1) * hidden].to_vec())
                    .collect()
            };
            let want = rows(states(&reference, input));
            let twin = relative_l2(&rows(states(&composed, input)), &want);
            let got = relative_l2(&rows(states(&fused, input)), &want);
            eprintln!(
                "{backend} {precision} {name}: fused {got:.3e}, composed {twin:.3e} relative L2 against FP32"
            );
            // f32's composed twin is the reference itself (0): fused f32 only sums in
            // another order, so it stays at f32's noise (the FP32 noise-floor bound).
            let allowed = if precision == Precision::F32 {
                Tolerances::for_precision(Precision::F32).relative_l2
            } else {
                2.0 * twin + 1e-3
            };
            assert!(
                got <= allowed,
                "{precision} {name}: fused attention's error {got:.3e} exceeds {allowed:.3e} \
                 (composed: {twin:.3e})"
            );
        }
    }
}

/// The twin property (issue 20): a variant whose error against FP32 is about 3x its plain
/// twin's fails it while every absolute bound holds, and holds without that fault. The
/// variant is f16 with fused attention; the fault scales layer 3's output by 1 + 1.5e-2
/// (about 1.4e-2 relative L2 added to f16's own 4e-3..1e-2: the bound is 0.03).
#[test]
fn a_variant_3x_further_from_fp32_than_its_twin_fails_the_twin_property_only() {
    use std::num::NonZeroU32;

    use esmfuzz::harness::cases::Models;
    use esmfuzz::harness::driver::{RunOptions, run_family};
    use esmfuzz::harness::family::Family;
    use esmfuzz::harness::strategies::Stratum;
    use esmfuzz::harness::verdict::{PropertyId, Selection};

    let plan =
        ComputePlan::new(Precision::F16, test_backend()).with_attention(AttentionKernel::Fused);
    let variant = |faults| Esm2::<TestBackend>::new(weights(), plan, faults, &test_device());
    let twin = crate::common::shared_model(Precision::F16);
    let tol = Tolerances::for_precision(Precision::F16);
    let options = RunOptions {
        cases: NonZeroU32::new(4).expect("not zero"),
        seed: Some(20),
        regressions: None,
        selection: Selection::all(),
        localise: false,
        shrink: Default::default(),
    };
    let run = |test: &Esm2<TestBackend>| {
        let models = Models {
            twin: Some(twin),
            ..crate::common::against_fp32(test)
        };
        run_family(
            Family::Stratum(Stratum::Short),
            models,
            &tol,
            &options,
            &mut (),
        )
    };
    let clean = run(&variant(FaultSet::none()));
    let ratios = clean.twin_ratios.clone().expect("a twin was judged");
    eprintln!("fused vs composed twin: {ratios:?}");
    assert!(clean.passed, "{:?}", clean.failure);
    assert!(ratios.cases >= 4 && ratios.max < 2.0, "{ratios:?}");

    let worse = run(&variant(FaultSet {
        scale_layer_output: Some((3, 1.015)),
        ..FaultSet::none()
    }));
    let failure = worse
        .failure
        .expect("the 3x worse variant passed the twin property");
    eprintln!("{}", failure.message);
    let failed: Vec<PropertyId> = failure.verdicts.iter().map(|v| v.property).collect();
    assert_eq!(
        failed,
        vec![PropertyId::TwinErrorRatio],
        "only the twin property may fail: every absolute bound must hold"
    );
    assert!(failure.verdicts[0].measured > 2.0);
}
