//! Device out-of-memory as an error. burn-cuda panics when a device allocation fails; a batch
//! run is caught here, recognised by the panic's message and reported as [`OutOfMemory`],
//! naming the batch, so that callers can lower the token budget and go on (see
//! [`super::embed`]) or stop with a clear error instead of a panic.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use super::Batch;

/// What a batch asks of the device: its sequences, real tokens and attention slots
/// (padding included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    pub sequences: usize,
    pub tokens: usize,
    pub slots: usize,
    pub longest: usize,
}

impl BatchShape {
    pub fn of(batch: &(impl Batch + ?Sized)) -> Self {
        let lengths: Vec<usize> = (0..batch.len())
            .map(|i| batch.sequence_rows(i).len())
            .collect();
        let groups = &batch.input().layout.groups;
        Self {
            sequences: batch.len(),
            tokens: lengths.iter().sum(),
            slots: groups.iter().map(|g| g.batch * g.block_len).sum(),
            longest: lengths.iter().copied().max().unwrap_or(0),
        }
    }

    /// A token budget half this batch's slots (but never below its longest sequence, which
    /// must still fit alone).
    pub fn halved_budget(&self) -> usize {
        (self.slots / 2).max(self.longest).max(1)
    }
}

/// The device ran out of memory on a batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the device ran out of memory on a batch of {} sequence(s), {} tokens in {} attention slots \
     (longest {} tokens): {}; {}",
    shape.sequences, shape.tokens, shape.slots, shape.longest, first_line(message), self.advice()
)]
pub struct OutOfMemory {
    pub shape: BatchShape,
    pub message: String,
}

impl OutOfMemory {
    /// What to tell a user whose run stopped on this batch.
    pub fn advice(&self) -> String {
        if self.shape.sequences > 1 {
            format!(
                "lower --token-budget (this batch held {} slots; try {})",
                self.shape.slots,
                self.shape.halved_budget()
            )
        } else {
            "this one sequence does not fit on the device at this policy: use a card with more \
             memory or a smaller model"
                .to_string()
        }
    }
}

/// The first line of a panic message (cubecl's carry a backtrace below).
fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("")
}

/// Whether a panic message reports a failed device allocation (burn-cuda, cubecl, CUDA).
pub fn is_out_of_memory(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "out of memory",
        "out-of-memory",
        "outofmemory",
        "buffertoobig",
    ]
    .iter()
    .any(|marker| lower.contains(marker))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        String::new()
    }
}

thread_local! {
    /// The batch this thread ran last (for a panic that escapes [`catch_out_of_memory`]).
    static LAST_BATCH: Cell<Option<BatchShape>> = const { Cell::new(None) };
}

/// The batch this thread ran last, if any.
pub fn last_batch() -> Option<BatchShape> {
    LAST_BATCH.with(Cell::get)
}

/// Remembers `batch` as the one this thread runs now (named if an out-of-memory panic
/// escapes to the top of the program).
pub fn note_batch(batch: &(impl Batch + ?Sized)) {
    LAST_BATCH.with(|b| b.set(Some(BatchShape::of(batch))));
}

/// Runs `run` on `batch`'s behalf: an out-of-memory panic becomes [`OutOfMemory`]; any other
/// panic goes on unwinding.
pub fn catch_out_of_memory<R>(
    batch: &(impl Batch + ?Sized),
    run: impl FnOnce() -> R,
) -> Result<R, OutOfMemory> {
    match panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(r) => Ok(r),
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            if is_out_of_memory(&message) {
                let shape = BatchShape::of(batch);
                Err(OutOfMemory { shape, message })
            } else {
                panic::resume_unwind(payload)
            }
        }
    }
}

/// What to print for a panic that escaped to the top of the program: `Some` for an
/// out-of-memory panic (naming the batch this thread ran last), `None` for any other.
pub fn describe_escaped_panic(payload: &(dyn Any + Send)) -> Option<String> {
    let message = panic_message(payload);
    if !is_out_of_memory(&message) {
        return None;
    }
    Some(match last_batch() {
        Some(shape) => OutOfMemory { shape, message }.to_string(),
        None => format!("the device ran out of memory: {}", first_line(&message)),
    })
}

/// Keeps out-of-memory panics off stderr (their callers report them as errors); every other
/// panic is printed as before. Idempotent.
pub fn quiet_out_of_memory_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !is_out_of_memory(&panic_message(info.payload())) {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_and_cubecl_messages_are_recognised() {
        assert!(is_out_of_memory(
            "An out-of-memory error happened during launch"
        ));
        assert!(is_out_of_memory(
            "called `Result::unwrap()` on an `Err` value: BufferTooBig { size: 1 }"
        ));
        assert!(is_out_of_memory("CUDA_ERROR_OUT_OF_MEMORY, out of memory"));
        assert!(!is_out_of_memory("index out of bounds: the len is 3"));
    }

    #[test]
    fn the_halved_budget_still_fits_the_longest_sequence() {
        let shape = BatchShape {
            sequences: 4,
            tokens: 900,
            slots: 1024,
            longest: 600,
        };
        assert_eq!(shape.halved_budget(), 600);
        let wide = BatchShape {
            longest: 100,
            ..shape
        };
        assert_eq!(wide.halved_budget(), 512);
    }
}
