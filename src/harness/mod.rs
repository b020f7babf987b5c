//! The property harness, in floors that only ever call downwards:
//!
//! - [`driver`]: the one family driver (generation, shrinking, persistence), used by the
//!   tests and by [`campaign`]; it runs a [`family`] (what inputs, what check), replays and
//!   saves the regression files of [`saved`], and sums up what it saw in a
//!   [`summary::FamilyResult`];
//! - [`cases`]: the only place a property runs a model; it hands host states to
//! - [`properties`]: pure functions from states to [`verdict::Verdict`]s ([`heads`]: on
//!   the checkpoint's classifier and contact head), and [`localise`]:
//!   where in the forward pass an error is born ([`explanation`]: with the pooled row and a
//!   second policy, for `explain`), both built on
//! - [`metrics`]: comparisons in f64, total on NaN and Inf, and [`matmul_check`]: what a
//!   policy's matrix product really computes, against f64;
//! - [`strategies`]: the generators of biologically plausible proteins;
//! - [`reference`]: FP32 against the HF transformers reference, as verdicts; [`outliers`]:
//!   the records of a real FASTA furthest from FP32;
//! - [`deployment`]: the generated cases for other stacks, and a judge of their embeddings;
//! - [`bisect`]: the smallest set of places a reduced policy must run in FP32;
//! - [`power`]: how likely each family is to catch a degradation of size e (mutation testing).

pub mod bisect;
pub mod campaign;
pub mod cases;
pub mod deployment;
pub mod driver;
pub mod explanation;
pub mod family;
pub mod heads;
pub mod localise;
pub mod matmul_check;
pub mod metrics;
pub mod outliers;
pub mod power;
pub mod properties;
pub mod reference;
pub mod saved;
pub mod strategies;
pub mod subject;
pub mod summary;
pub mod verdict;
