//! How one call reaches a deployment and comes back: a [`Transport`] sends a [`Request`] and
//! returns the [`Response`] of the same id, or a [`TransportError`] saying what went wrong.
//! Each transport honours a deadline and a stop flag, so no call blocks the harness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::protocol::{Handshake, Request, Response};

/// Why a call brought no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("no answer within {0:.0?}")]
    Timeout(Duration),
    #[error("the deployment exited ({0})")]
    Exited(String),
    #[error("the answer is not protocol 1: {0}")]
    Garbage(String),
    #[error("the answer has id {got}, the call was {sent}")]
    WrongId { sent: u64, got: u64 },
    #[error("the answer is over {0} bytes")]
    Oversized(usize),
    #[error("{0}")]
    Io(String),
    #[error("stopped by a signal")]
    Stopped,
}

impl TransportError {
    /// Whether the deployment must be restarted before the next call (it may be hung, dead,
    /// or out of step with the ids).
    pub fn needs_restart(&self) -> bool {
        matches!(
            self,
            TransportError::Timeout(_)
                | TransportError::Exited(_)
                | TransportError::Oversized(_)
                | TransportError::Io(_)
        )
    }
}

/// A connection to a deployment.
pub trait Transport {
    /// Starts (or restarts) the deployment where the transport can, and reads its handshake.
    fn hello(&mut self, deadline: Instant, stop: &AtomicBool) -> Result<Handshake, TransportError>;
    /// One request, one response of the same id.
    fn call(
        &mut self,
        request: &Request,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<Response, TransportError>;
    /// The last lines the deployment wrote to stderr (empty where it cannot be seen).
    fn stderr_tail(&self) -> String {
        String::new()
    }
    /// Ends the deployment where this transport started it.
    fn shutdown(&mut self) {}
}

/// Waits on `rx` until `deadline`, checking `stop` every 50 ms.
pub fn receive<T>(
    rx: &Receiver<T>,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<T, TransportError> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(TransportError::Stopped);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(TransportError::Timeout(Duration::ZERO));
        }
        let wait = (deadline - now).min(Duration::from_millis(50));
        match rx.recv_timeout(wait) {
            Ok(value) => return Ok(value),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(TransportError::Io("the reader ended".into()));
            }
        }
    }
}

/// Runs `work` on its own thread and waits for it as [`receive`] does: a blocking HTTP
/// request stays interruptible (a stopped or timed-out call's thread is left to finish on
/// its own; its result is dropped).
pub fn on_thread<T: Send + 'static>(
    deadline: Instant,
    stop: &AtomicBool,
    work: impl FnOnce() -> Result<T, TransportError> + Send + 'static,
) -> Result<T, TransportError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    receive(&rx, deadline, stop)?
}
