//! Device out-of-memory as an error. burn-cuda panics when a device allocation fails; a batch
//! run is caught here, recognised by the panic's message and reported as [`OutOfMemory`],
//! naming the batch, so that callers can lower the token budget and go on (see
//! [`super::embed`]) or stop with a clear error instead of a panic.

use std::any::Any;
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

impl std::fmt::Display for BatchShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sequence(s), {} tokens in {} attention slots (longest {} tokens)",
            self.sequences, self.tokens, self.slots, self.longest
        )
    }
}

/// The device ran out of memory on a batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the device ran out of memory on a batch of {shape}: {}; {}",
    first_line(message),
    self.advice()
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

/// Whether a panic message reports a kernel the device refused or failed to run (burn-cuda
/// panics with "An error happened during execution" when a launch is refused, e.g. a cubek
/// kernel asking more shared memory than the card has).
pub fn is_device_failure(message: &str) -> bool {
    [
        "An error happened during execution",
        "The server is in an invalid state",
        "Too many resources were requested during launch",
    ]
    .iter()
    .any(|marker| message.contains(marker))
}

/// The most specific line of a device failure: the first launch error's detail if there is
/// one, else the message's first line.
fn device_failure_detail(message: &str) -> String {
    let specific = message.lines().map(str::trim).find(|l| {
        l.starts_with("Too much")
            || l.starts_with("Requested")
            || l.contains("CUDA_ERROR")
            || l.starts_with("Launch(")
    });
    specific.unwrap_or_else(|| first_line(message)).to_string()
}

/// The text of a panic's payload (a named batch's message, a `&str` or a `String`; empty
/// for any other payload).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(named) = payload.downcast_ref::<BatchPanic>() {
        named.message.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        String::new()
    }
}

/// A device panic (out of memory, or a kernel the device refused) with the batch it escaped
/// from: [`name_batch`] wraps the payload in it, so that the top of the program can name the
/// batch without any state kept aside.
#[derive(Debug)]
pub struct BatchPanic {
    pub shape: BatchShape,
    pub message: String,
}

/// The payload of a panic that escaped a run of a batch of `shape`, to go on unwinding with:
/// a device panic carries the shape from here on ([`BatchPanic`]); any other payload is
/// handed back as it was.
pub fn name_batch(shape: BatchShape, payload: Box<dyn Any + Send>) -> Box<dyn Any + Send> {
    if payload.is::<BatchPanic>() {
        return payload;
    }
    let message = panic_message(payload.as_ref());
    if is_out_of_memory(&message) || is_device_failure(&message) {
        Box::new(BatchPanic { shape, message })
    } else {
        payload
    }
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
/// out-of-memory panic or a kernel the device could not run (naming the batch when the
/// payload is a [`BatchPanic`]), `None` for any other.
pub fn describe_escaped_panic(payload: &(dyn Any + Send)) -> Option<String> {
    let message = panic_message(payload);
    let last_batch = || {
        payload
            .downcast_ref::<BatchPanic>()
            .map(|named| named.shape)
    };
    if is_device_failure(&message) && !is_out_of_memory(&message) {
        let batch = last_batch()
            .map(|shape| format!(" on a batch of {shape}"))
            .unwrap_or_default();
        return Some(format!(
            "the device could not run a kernel{batch}: {}. This is a failure of burn-cuda's \
             kernels, not of the model; with --gemm burn, try --gemm cublas (the default on CUDA)",
            device_failure_detail(&message)
        ));
    }
    if !is_out_of_memory(&message) {
        return None;
    }
    Some(match last_batch() {
        Some(shape) => OutOfMemory { shape, message }.to_string(),
        None => format!("the device ran out of memory: {}", first_line(&message)),
    })
}

/// Keeps out-of-memory and device-failure panics off stderr (they are reported as errors);
/// every other panic is printed as before. Idempotent.
pub fn quiet_out_of_memory_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let message = panic_message(info.payload());
            if !is_out_of_memory(&message) && !is_device_failure(&message) {
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
    fn a_refused_kernel_launch_is_a_device_failure_with_its_reason() {
        // As burn-cuda panicked on an H200 (`bench --gemm burn`, FP32 packed).
        let message = "Error while reading data: use `try_into_data` instead to catch the \
            error at runtime: An error happened during execution\nCaused by:\n  The server is \
            in an invalid state\nCaused by:\n  [Launch(Too many resources were requested during \
            launch\nToo much shared memory requested.\nRequested 393216 bytes, maximum 232448 \
            bytes available.\nBacktrace";
        assert!(is_device_failure(message));
        assert!(!is_out_of_memory(message));
        assert_eq!(
            device_failure_detail(message),
            "Too much shared memory requested."
        );
        let text = describe_escaped_panic(&message.to_string()).unwrap();
        assert!(
            text.contains("could not run a kernel") && text.contains("shared memory"),
            "{text}"
        );
        let shape = BatchShape {
            sequences: 2,
            tokens: 40,
            slots: 64,
            longest: 30,
        };
        let named = name_batch(shape, Box::new(message.to_string()));
        let text = describe_escaped_panic(named.as_ref()).unwrap();
        assert!(text.contains(&format!("on a batch of {shape}")), "{text}");
        let other = name_batch(shape, Box::new("index out of bounds".to_string()));
        assert_eq!(describe_escaped_panic(other.as_ref()), None);
        assert!(!is_device_failure("index out of bounds: the len is 3"));
        assert_eq!(
            describe_escaped_panic(&"index out of bounds".to_string()),
            None
        );
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
