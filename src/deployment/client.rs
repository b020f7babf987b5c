//! A deployment as a [`Subject`]: each batch one protocol call, its answer checked (id, row
//! count, width, tokens' shapes) before anything reads it, a hung or dead deployment
//! restarted so shrinking can go on, and the run given up after
//! [`MAX_CONSECUTIVE_FAILURES`] calls in a row without an answer.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::protocol::{Handshake, Request, Sequence, split_flat_rows};
use super::transport::{Transport, TransportError};
use crate::batch::Layout;
use crate::harness::subject::{CallError, Capabilities, Subject, SubjectStates};
use crate::input::Protein;

/// Calls in a row that got no answer at all (the deployment, restarted, does not answer a
/// healthy protein either) before the run stops (incomplete, exit 2).
pub const MAX_CONSECUTIVE_FAILURES: u32 = 3;

/// The healthy protein a restarted deployment must embed before fuzzing goes on: a crash or
/// hang on a case is then the case's failure (it shrinks), not the deployment's end.
const HEALTH_PROBE: &str = "MKTAYIAKQRQISFVKSHFSRQ";

/// How long calls may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Every call after the first (`--call-timeout`, default 120 s).
    pub call: Duration,
    /// The handshake and the first call, which may compile kernels
    /// (`--first-call-timeout`, default 600 s).
    pub first_call: Duration,
}

/// What the calls cost, for report.json.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CallStats {
    pub calls: u64,
    /// Wall time inside calls (request sent to response read).
    pub seconds_in_calls: f64,
    /// Time spent building requests and checking responses on our side.
    pub protocol_seconds: f64,
    pub refusals: u64,
    /// Calls without a usable answer (crash, hang, garbage, wrong id or shape).
    pub broken: u64,
    pub restarts: u64,
    /// The last few call failures, each naming its call.
    pub failures: Vec<String>,
}

/// A running deployment.
pub struct Deployment {
    state: RefCell<State>,
    handshake: Handshake,
    /// Set by SIGINT/SIGTERM; a waiting call returns at once.
    stop: Arc<AtomicBool>,
    /// Set when the deployment gave up: the campaign stops.
    exhausted: AtomicBool,
    timeouts: Timeouts,
    hidden: usize,
}

struct State {
    transport: Box<dyn Transport>,
    next_id: u64,
    first_call_done: bool,
    consecutive_failures: u32,
    /// The transport must be restarted (handshake again) before the next call.
    needs_restart: bool,
    stats: CallStats,
}

/// Why the deployment could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the deployment gave no handshake: {error}{}", tail(stderr))]
    NoHandshake {
        error: TransportError,
        stderr: String,
    },
}

fn tail(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; its stderr ends:\n{}", stderr.trim_end())
    }
}

impl Deployment {
    /// Starts `transport` (for a child process: spawns it) and reads its handshake. `hidden`
    /// is `--weights`' hidden size: every row is checked against it.
    pub fn start(
        mut transport: Box<dyn Transport>,
        timeouts: Timeouts,
        hidden: usize,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, StartError> {
        let deadline = Instant::now() + timeouts.first_call;
        let handshake =
            transport
                .hello(deadline, &stop)
                .map_err(|error| StartError::NoHandshake {
                    stderr: transport.stderr_tail(),
                    error,
                })?;
        Ok(Self {
            state: RefCell::new(State {
                transport,
                next_id: 1,
                first_call_done: false,
                consecutive_failures: 0,
                needs_restart: false,
                stats: CallStats::default(),
            }),
            handshake,
            stop,
            exhausted: AtomicBool::new(false),
            timeouts,
            hidden,
        })
    }

    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    pub fn stats(&self) -> CallStats {
        self.state.borrow().stats.clone()
    }

    /// The deployment's stderr tail (what the report quotes).
    pub fn stderr_tail(&self) -> String {
        self.state.borrow().transport.stderr_tail()
    }

    /// Ends the deployment (a child: stdin closed, SIGTERM, SIGKILL, reaped).
    pub fn shutdown(&self) {
        self.state.borrow_mut().transport.shutdown();
    }

    /// One call: `proteins` as one batch, named as given.
    fn call(&self, proteins: &[Protein]) -> Result<SubjectStates, CallError> {
        if self.exhausted.load(Ordering::Relaxed) {
            return Err(CallError::GaveUp {
                what: "the deployment was given up earlier".into(),
            });
        }
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        if state.needs_restart
            && let Err(what) = self.restart(state)
        {
            return Err(self.gave_no_answer(state, 0, what));
        }
        let started = Instant::now();
        let id = state.next_id;
        state.next_id += 1;
        let request = Request {
            id,
            sequences: proteins
                .iter()
                .map(|p| Sequence {
                    name: p.name.clone(),
                    residues: p.full_letters(),
                })
                .collect(),
        };
        let timeout = if state.first_call_done {
            self.timeouts.call
        } else {
            self.timeouts.first_call
        };
        let built = started.elapsed();
        let sent = Instant::now();
        let answer = state.transport.call(&request, sent + timeout, &self.stop);
        let in_call = sent.elapsed();
        state.stats.calls += 1;
        state.stats.seconds_in_calls += in_call.as_secs_f64();
        let mut checking = Duration::ZERO;
        let result = match answer {
            Err(TransportError::Stopped) => Err(CallError::GaveUp {
                what: "stopped by a signal".into(),
            }),
            Err(e) if e.needs_restart() => {
                // The case's failure if a restarted deployment answers a healthy request;
                // else the deployment itself is gone, and after a few such calls the run
                // stops.
                let what = e.to_string();
                match self.restart(state) {
                    Ok(()) => Err(self.broken(state, id, what)),
                    Err(restart) => {
                        state.needs_restart = true;
                        Err(self.gave_no_answer(state, id, format!("{what}; then {restart}")))
                    }
                }
            }
            Err(e) => Err(self.broken(state, id, e.to_string())),
            Ok(response) => {
                state.first_call_done = true;
                state.consecutive_failures = 0;
                match response.answer {
                    Err(message) => {
                        state.stats.refusals += 1;
                        Err(CallError::Refused { call: id, message })
                    }
                    Ok(embeddings) => {
                        let at = Instant::now();
                        let checked = self.checked(state, id, proteins, embeddings);
                        checking = at.elapsed();
                        checked
                    }
                }
            }
        };
        state.stats.protocol_seconds += (built + checking).as_secs_f64();
        result
    }

    /// Restarts the deployment (a child: stopped and spawned again) and checks that it
    /// answers a healthy one-protein request.
    fn restart(&self, state: &mut State) -> Result<(), String> {
        let started = Instant::now();
        let restarted = self.restart_untimed(state);
        state.stats.seconds_in_calls += started.elapsed().as_secs_f64();
        restarted
    }

    fn restart_untimed(&self, state: &mut State) -> Result<(), String> {
        state.stats.restarts += 1;
        let deadline = Instant::now() + self.timeouts.first_call;
        let handshake = state
            .transport
            .hello(deadline, &self.stop)
            .map_err(|e| format!("restarting it failed: {e}"))?;
        if handshake.hidden != self.handshake.hidden || handshake.layers != self.handshake.layers {
            return Err("it came back with another handshake".into());
        }
        let id = state.next_id;
        state.next_id += 1;
        let probe = Request {
            id,
            sequences: vec![Sequence {
                name: "health-probe".into(),
                residues: HEALTH_PROBE.into(),
            }],
        };
        let deadline = Instant::now() + self.timeouts.call;
        match state.transport.call(&probe, deadline, &self.stop) {
            Ok(r) if r.answer.as_ref().is_ok_and(|e| e.pooled.len() == 1) => {
                state.needs_restart = false;
                state.consecutive_failures = 0;
                Ok(())
            }
            Ok(_) => Err("after a restart it did not embed a healthy protein".into()),
            Err(e) => Err(format!(
                "after a restart it did not answer a healthy protein: {e}"
            )),
        }
    }

    /// A call without a usable answer whose deployment still answers others: the case's
    /// failure, counted, its stderr quoted.
    fn broken(&self, state: &mut State, id: u64, what: String) -> CallError {
        state.stats.broken += 1;
        let error = CallError::Broken {
            call: id,
            what,
            stderr_tail: state.transport.stderr_tail(),
        };
        if state.stats.failures.len() < 20 {
            state.stats.failures.push(error.to_string());
        }
        error
    }

    /// A call after which the deployment answers nothing, not even a healthy protein: after
    /// [`MAX_CONSECUTIVE_FAILURES`] in a row the deployment is given up.
    fn gave_no_answer(&self, state: &mut State, id: u64, what: String) -> CallError {
        state.consecutive_failures += 1;
        let error = self.broken(state, id, what);
        if state.consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
            self.exhausted.store(true, Ordering::Relaxed);
            return CallError::GaveUp {
                what: format!(
                    "{MAX_CONSECUTIVE_FAILURES} calls in a row got no answer, even to a healthy \
                     protein after a restart; the last: {error}"
                ),
            };
        }
        error
    }

    /// The answer's rows and tokens checked against the request and `--weights`' width.
    fn checked(
        &self,
        state: &mut State,
        id: u64,
        proteins: &[Protein],
        embeddings: super::protocol::Embeddings,
    ) -> Result<SubjectStates, CallError> {
        let hidden = self.hidden;
        let pooled = split_flat_rows(embeddings.pooled, proteins.len(), hidden);
        let mut broken = |what: String| Err(self.broken(state, id, what));
        if pooled.len() != proteins.len() {
            return broken(format!(
                "{} pooled rows for {} sequences",
                pooled.len(),
                proteins.len()
            ));
        }
        if let Some(at) = pooled.iter().position(|r| r.len() != hidden) {
            return broken(format!(
                "pooled row {at} has {} values, --weights' hidden size is {hidden}",
                pooled[at].len()
            ));
        }
        if let Some(tokens) = &embeddings.tokens {
            let bad = tokens.len() != proteins.len()
                || tokens
                    .iter()
                    .zip(proteins)
                    .any(|(t, p)| t.len() != p.token_len() * hidden);
            if bad {
                return broken(format!(
                    "token states are not [residues + 2, {hidden}] for each of {} sequences",
                    proteins.len()
                ));
            }
        }
        Ok(SubjectStates {
            pooled,
            last: embeddings.tokens,
            finite: None,
        })
    }
}

impl Subject for Deployment {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            tokens: self
                .handshake
                .extra
                .get("tokens")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            every_layer: false,
            chooses_layout: false,
            remote: true,
        }
    }

    fn run(&self, proteins: &[Protein], _layout: Layout) -> Result<SubjectStates, CallError> {
        self.call(proteins)
    }

    fn exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed) || self.stop.load(Ordering::Relaxed)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.state.get_mut().transport.shutdown();
    }
}
