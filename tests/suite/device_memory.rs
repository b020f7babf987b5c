//! A device that runs out of memory: a batch too large is an error naming the batch, and
//! embedding lowers its token budget and goes on, giving the rows it would give anyway. The
//! device is simulated by the `device_memory_tokens` fault (burn-cuda panics the same way
//! when an allocation fails, with "out of memory" in the message).

use esmfuzz::batch::oom::OutOfMemory;
use esmfuzz::batch::{Batching, embed, padded_batches};
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

/// Every protein has its row, each value within 1e-5 of the unconstrained run's.
fn assert_rows_match(got: &[Vec<f32>], want: &[Vec<f32>]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
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
    assert_rows_match(&got, &want);
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

/// Embedding runs one batch ahead (the next batch is launched before the previous one's rows
/// are waited for): a later batch running out of memory while an earlier one is still in
/// flight must keep the earlier one's rows, re-run only the proteins without one, and give
/// every protein exactly one row, the same as a device with room.
#[test]
fn a_batch_running_out_of_memory_behind_a_finished_one_loses_and_repeats_no_row() {
    esmfuzz::batch::oom::quiet_out_of_memory_panics();
    let corpus = common::corpus();
    let long = corpus
        .iter()
        .find(|p| (300..=500).contains(&p.token_len()))
        .expect("the corpus has a protein of 300 to 500 tokens")
        .clone();
    let shorts: Vec<_> = corpus
        .iter()
        .filter(|p| p.token_len() <= 60)
        .cloned()
        .collect();
    let budget = long.token_len() + 50;
    let limit = long.token_len() + 10;
    let proteins: Vec<_> = std::iter::once(long).chain(shorts).collect();
    // Longest first: the long protein's batch (alone: two would exceed the budget) fits, and
    // a later batch of short ones does not (the fault counts a padded batch's slots).
    let slots = |batch: &Vec<usize>| {
        batch.len()
            * batch
                .iter()
                .map(|&i| proteins[i].token_len())
                .max()
                .unwrap_or(0)
    };
    let planned = padded_batches(&proteins, budget);
    assert_eq!(planned[0], [0], "the long protein runs alone, first");
    assert!(
        planned.iter().skip(1).any(|b| slots(b) > limit),
        "a later batch exceeds the limit: {:?}",
        planned.iter().map(slots).collect::<Vec<_>>()
    );
    let faults = FaultSet {
        device_memory_tokens: Some(limit),
        ..FaultSet::none()
    };
    let small = common::model_with(common::weights(), Precision::F32, faults);
    let mut calls = vec![0usize; proteins.len()];
    let mut got = vec![Vec::new(); proteins.len()];
    let embedded = embed(&small, &proteins, Batching::padded(budget), |i, row| {
        calls[i] += 1;
        got[i] = row;
        Ok::<(), OutOfMemory>(())
    })
    .expect("the batches were split");
    assert!(embedded.final_budget < budget, "the budget was lowered");
    assert!(calls.iter().all(|&c| c == 1), "rows per protein: {calls:?}");
    let (want, _) = rows(
        common::shared_model(Precision::F32),
        &proteins,
        embedded.final_budget,
    )
    .expect("fits");
    assert_rows_match(&got, &want);
}
