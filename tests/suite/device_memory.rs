//! A device that runs out of memory: a batch too large is an error naming the batch, and
//! embedding lowers its token budget and goes on, giving the rows it would give anyway. The
//! device is simulated by the `device_memory_tokens` fault (burn-cuda panics the same way
//! when an allocation fails, with "out of memory" in the message).

use esmfuzz::batch::oom::OutOfMemory;
use esmfuzz::batch::{Batching, embed};
use esmfuzz::model::{FaultSet, Precision};

use super::common;

/// Embeds `proteins` (padded, `budget`) with `model`, rows in protein order.
fn rows(
    model: &esmfuzz::model::Esm2<common::TestBackend>,
    proteins: &[esmfuzz::input::Protein],
    budget: usize,
) -> Result<(Vec<Vec<f32>>, usize), OutOfMemory> {
    let mut out = vec![Vec::new(); proteins.len()];
    let embedded = embed(model, proteins, Batching::padded(budget), |i, row| {
        out[i] = row;
        Ok::<(), OutOfMemory>(())
    })?;
    Ok((out, embedded.final_budget))
}

#[test]
fn embedding_lowers_the_budget_when_the_device_runs_out_of_memory() {
    esmfuzz::batch::oom::quiet_out_of_memory_panics();
    let proteins: Vec<_> = common::corpus()
        .iter()
        .filter(|p| p.token_len() <= 200)
        .take(24)
        .cloned()
        .collect();
    assert!(proteins.len() >= 8, "the corpus has short proteins");
    let longest = proteins.iter().map(|p| p.token_len()).max().unwrap_or(0);
    let faults = FaultSet {
        device_memory_tokens: Some(2 * longest),
        ..FaultSet::none()
    };
    let small = common::model_with(common::weights(), Precision::F32, faults);
    let roomy = common::shared_model(Precision::F32);

    let (got, final_budget) = rows(&small, &proteins, 4096).expect("the batches were split");
    assert!(
        final_budget < 4096 && final_budget <= 2 * longest + 64,
        "budget lowered to {final_budget}"
    );
    let (want, unchanged) = rows(roomy, &proteins, final_budget).expect("fits");
    assert_eq!(unchanged, final_budget);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len(), "protein {i} has its row");
        let worst = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "protein {i}: {worst} off the unconstrained run"
        );
    }
}

#[test]
fn a_single_sequence_the_device_cannot_hold_is_an_error_naming_it() {
    esmfuzz::batch::oom::quiet_out_of_memory_panics();
    let protein = common::corpus()
        .iter()
        .find(|p| p.token_len() > 300)
        .expect("the corpus has a protein over 300 tokens")
        .clone();
    let faults = FaultSet {
        device_memory_tokens: Some(100),
        ..FaultSet::none()
    };
    let model = common::model_with(common::weights(), Precision::F32, faults);
    let err = rows(&model, std::slice::from_ref(&protein), 4096).expect_err("does not fit");
    assert_eq!(err.shape.sequences, 1);
    assert_eq!(err.shape.tokens, protein.token_len());
    let text = err.to_string();
    assert!(
        text.contains("ran out of memory") && text.contains("1 sequence"),
        "{text}"
    );
    assert!(text.contains("does not fit on the device"), "{text}");
}
