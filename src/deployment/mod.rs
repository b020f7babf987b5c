//! Other teams' ESM-2 deployments as subjects under test: the protocol (version 1, fixed in
//! `docs/PROTOCOL.md`), where a deployment is ([`endpoint`]), how calls reach it
//! ([`transport`]: a child process, protocol 1 over HTTP, the Open Inference Protocol) and
//! the [`client::Deployment`] the families judge through the subject seam
//! ([`crate::harness::subject`]).

pub mod child;
pub mod client;
pub mod endpoint;
pub mod http;
pub mod protocol;
pub mod transport;

pub use client::{CallStats, Deployment, StartError, Timeouts};
pub use endpoint::Endpoint;
