//! The readers are fuzzed: arbitrary bytes and mutated real files through the FASTA reader
//! and every checkpoint format (safetensors, torch zip, fair-esm `.pt`, `config.json`). Each
//! execution must end in an `Ok` or an error, never a panic, within a time bound.
//!
//! `ESMFUZZ_READER_FUZZ_CASES` sets the executions per fuzzer (default 2000, for CI; 100000 gives 10^6 in all); the
//! executions run are printed (`cargo test reader_fuzz -- --nocapture`).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use esmfuzz::input::{NormaliseOptions, read_fasta};
use esmfuzz::model::checkpoint::load_checkpoint;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::common;

/// Longest one read may take: a hang guard, not a speed goal. The torch reader zero-fills
/// whatever length a mutated pickle string claims (up to 4 GiB, about 1.5 s alone on the CI
/// machine, several seconds while the suite's model tests share its two cores).
const BOUND: Duration = Duration::from_secs(60);

fn fuzz_cases() -> u32 {
    std::env::var("ESMFUZZ_READER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &u32| n > 0)
        .unwrap_or(2000)
}

/// One edit of a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Truncate {
        at: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    /// Overwrite 8 bytes with a huge little-endian integer (sizes and offsets in headers).
    Huge {
        at: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (at, any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        at.prop_map(|at| Mutation::Truncate { at }),
        (at, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        at.prop_map(|at| Mutation::Huge { at }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip { at, bit } => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::Set { at, byte } => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b = *byte;
                }
            }
            Mutation::Truncate { at } => bytes.truncate(at % len),
            Mutation::Insert { at, bytes: new } => {
                let at = (at % len).min(bytes.len());
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Huge { at } => {
                let at = at % len;
                for (i, b) in u64::MAX.to_le_bytes().iter().enumerate().take(7) {
                    if let Some(x) = bytes.get_mut(at + i) {
                        *x = *b;
                    }
                }
            }
        }
    }
    bytes
}

/// Runs `read` on `bytes` written to `path`: it must return within [`BOUND`].
fn execute<T, E>(path: &Path, bytes: &[u8], read: impl FnOnce() -> Result<T, E>) {
    std::fs::write(path, bytes).expect("temp file");
    let start = Instant::now();
    let _ = read();
    assert!(start.elapsed() < BOUND, "a read took {:?}", start.elapsed());
}

fn run(name: &str, strategy: impl Strategy<Value = Vec<u8>>, read: impl Fn(&[u8])) {
    let executions = Cell::new(0usize);
    let mut runner = TestRunner::new(Config {
        cases: fuzz_cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |bytes| {
        read(&bytes);
        executions.set(executions.get() + 1);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let ran = executions.get();
    println!("{name}: {ran} executions, no panic, each under {BOUND:?}");
    assert!(
        ran >= fuzz_cases() as usize,
        "{name}: only {ran} executions"
    );
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(common::repo().join("tests/fixtures/tiny").join(name)).expect("fixture")
}

fn mutated(original: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(mutation(), 1..6).prop_map(move |m| mutate(original.clone(), &m))
}

fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..4096)
}

fn fasta_read(dir: &Path) -> impl Fn(&[u8]) + '_ {
    move |bytes| {
        let path = dir.join("x.fasta");
        execute(&path, bytes, || {
            read_fasta(&path, NormaliseOptions::default())
        });
    }
}

/// Loads `bytes` as checkpoint `name` in a folder with the tiny `config.json`.
fn checkpoint_read<'a>(dir: &'a Path, name: &'static str) -> impl Fn(&[u8]) + 'a {
    std::fs::write(dir.join("config.json"), fixture("config.json")).expect("config");
    move |bytes| {
        let path: PathBuf = dir.join(name);
        execute(&path, bytes, || load_checkpoint(&path, None));
    }
}

#[test]
fn the_fasta_reader_survives_arbitrary_and_mutated_input() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = std::fs::read(common::shared(
        esmfuzz::harness::reference::REFERENCE_CORPUS,
    ))
    .unwrap();
    let head = corpus[..corpus.len().min(6000)].to_vec();
    run(
        "fasta, arbitrary bytes",
        arbitrary_bytes(),
        fasta_read(dir.path()),
    );
    run(
        "fasta, mutated corpus",
        mutated(head),
        fasta_read(dir.path()),
    );
}

#[test]
fn the_safetensors_reader_survives_arbitrary_and_mutated_input() {
    let dir = tempfile::tempdir().unwrap();
    let read = checkpoint_read(dir.path(), "model.safetensors");
    run("safetensors, arbitrary bytes", arbitrary_bytes(), &read);
    run(
        "safetensors, mutated f32",
        mutated(fixture("model.safetensors")),
        &read,
    );
    run(
        "safetensors, mutated bf16",
        mutated(fixture("model_bf16.safetensors")),
        &read,
    );
}

#[test]
fn the_torch_readers_survive_arbitrary_and_mutated_input() {
    let dir = tempfile::tempdir().unwrap();
    let bin = checkpoint_read(dir.path(), "pytorch_model.bin");
    run("torch zip, arbitrary bytes", arbitrary_bytes(), &bin);
    run(
        "torch zip, mutated HF .bin",
        mutated(fixture("pytorch_model_f16.bin")),
        &bin,
    );
    let pt = checkpoint_read(dir.path(), "tiny.pt");
    run(
        "fair-esm .pt, mutated",
        mutated(fixture("tiny_fair_esm.pt")),
        &pt,
    );
}

#[test]
fn config_json_survives_arbitrary_and_mutated_input() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        fixture("model.safetensors"),
    )
    .unwrap();
    let read = |bytes: &[u8]| {
        let path = dir.path().join("config.json");
        execute(&path, bytes, || load_checkpoint(dir.path(), None));
    };
    run("config.json, arbitrary bytes", arbitrary_bytes(), read);
    run(
        "config.json, mutated",
        mutated(fixture("config.json")),
        read,
    );
}

#[test]
fn a_safetensors_header_claiming_a_terabyte_is_an_error_not_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), fixture("config.json")).unwrap();
    let header = r#"{"embed_tokens.weight":{"dtype":"F32","shape":[268435456,1024],"data_offsets":[0,1099511627776]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 64]);
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let start = Instant::now();
    let err = load_checkpoint(&path, None).expect_err("a 1 TB claim in a small file");
    assert!(start.elapsed() < BOUND);
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}
