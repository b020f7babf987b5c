//! The pooled embedding as `embed` computes it against pooling the f32 states on the host
//! ([`pool_residues`]), bit for bit. On CUDA `pooled_batch` pools on the device
//! (`residue_mean.cu`), summing as the host does; on the CPU it pools the host copy.
//!
//! The device kernel must have run on CUDA (a host fallback would make the comparison pass on
//! nothing); on the CPU the test checks that the kernel hands the states back untouched.

use std::ops::Range;

use burn::tensor::{DType, Distribution, Tensor};
use esmfuzz::backend::BackendKind;
use esmfuzz::batch::{Batching, batches, pool_residues, pooled_batch, run_batch, sequence_states};
use esmfuzz::model::{Precision, cuda_pool, to_host};

use crate::common::{TestBackend, corpus, shared_model, test_backend, test_device};

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Every sequence of every batch, padded and packed, under the three storage policies: the
/// real 8M model on corpus proteins (short and long, several sequences per batch).
#[test]
fn pooled_batches_equal_pooling_their_f32_states_on_the_host() {
    let proteins: Vec<_> = corpus()
        .iter()
        .filter(|p| p.residues.len() <= 400)
        .take(7)
        .cloned()
        .collect();
    let mut compared = 0;
    for precision in [Precision::F32, Precision::F16, Precision::Bf16] {
        let model = shared_model(precision);
        let last = model.config.num_hidden_layers;
        for batching in [Batching::padded(1024), Batching::packed(1024)] {
            for batch in batches(model, &proteins, batching) {
                let pooled = pooled_batch(model, batch.as_ref());
                let states = run_batch(model, batch.as_ref(), &[last]);
                let states = &states[&last];
                assert_eq!(pooled.len(), batch.len());
                for (i, row) in pooled.iter().enumerate() {
                    let expected =
                        pool_residues(sequence_states(states, batch.as_ref(), i), states.hidden);
                    assert_eq!(
                        bits(row),
                        bits(&expected),
                        "{precision:?} {batching:?} sequence {i}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(
        compared >= 3 * 2 * proteins.len(),
        "{compared} sequences compared"
    );
}

/// The kernel on its own: widths of ESM-2 (320: 8M, 1280: 650M, 2560: 3B) and one no block
/// divides (20), sequences of no residue, one residue and more than a thousand, ranges in
/// any order and not covering every row, values of mixed sign and magnitude (the f64 sums'
/// order shows in the last bit).
#[test]
fn the_residue_mean_kernel_gives_the_host_pooling_bit_for_bit() {
    let device = test_device();
    let sequences: Vec<Range<usize>> = vec![0..2, 2..5, 5..6, 6..1030, 1100..1400, 1030..1100];
    let rows = 1400;
    let mut compared = 0;
    for hidden in [20usize, 320, 1280, 2560] {
        let values = Tensor::<TestBackend, 2>::random(
            [rows, hidden],
            Distribution::Normal(0.0, 4.0),
            &device,
        ) + Tensor::<TestBackend, 2>::random(
            [rows, hidden],
            Distribution::Uniform(-300.0, 300.0),
            &device,
        )
        .powi_scalar(3)
        .div_scalar(1e5);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let states = values.clone().cast(dtype);
            let host = to_host(states.clone());
            let what = format!("{dtype:?} hidden {hidden}");
            match (
                test_backend(),
                cuda_pool::residue_means(states.clone(), &sequences),
            ) {
                (BackendKind::Cuda, Ok(pooled)) => {
                    assert_eq!(pooled.dtype(), DType::F32, "{what}");
                    assert_eq!(pooled.dims(), [sequences.len(), hidden], "{what}");
                    let pooled = to_host(pooled);
                    for (s, r) in sequences.iter().enumerate() {
                        let expected =
                            pool_residues(&host[r.start * hidden..r.end * hidden], hidden);
                        let got = &pooled[s * hidden..(s + 1) * hidden];
                        assert_eq!(bits(got), bits(&expected), "{what} sequence {r:?}");
                        compared += 1;
                    }
                }
                (BackendKind::Cuda, Err(_)) => {
                    panic!("{what}: the residue mean kernel did not run")
                }
                (_, Ok(_)) => panic!("{what}: a device kernel ran off CUDA"),
                (_, Err(back)) => {
                    assert_eq!(bits(&to_host(back)), bits(&host), "{what}: states changed");
                    compared += 1;
                }
            }
        }
    }
    assert!(compared >= 4 * 3, "{compared} checks");
}
