//! Bounded input and clear messages (issue 28): every FASTA reader stops at its caps (a line
//! of 16 MiB, a record of 100,000 residues, both flags; a header of 64 KiB) with an error
//! naming the line, in bounded memory; FASTA streams from a pipe; a safetensors header that
//! lies names the tensor and both sizes; messages escape NUL and control bytes. Each test
//! stops before any model runs, or runs the tiny fixture model (seconds).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::binary::{self, Ran, s};
use super::common;

fn tiny() -> PathBuf {
    common::repo().join("tests/fixtures/tiny")
}

/// The binary under an address-space limit of 1.5 GB: an unbounded read would abort.
fn bounded(args: &[&str]) -> Ran {
    binary::run(args, &[], Some(1_500_000))
}

#[test]
fn a_fasta_without_newlines_is_refused_in_bounded_memory_by_every_reader() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("x.npy");
    let npy = work.path().join("e.npy");
    std::fs::write(&npy, "x").unwrap();
    let tiny = tiny();
    let w = s(&tiny);
    let zero = "/dev/zero";
    let cases: Vec<Vec<&str>> = vec![
        vec!["embed", "--weights", w, "--fasta", zero, "--out", s(&out)],
        vec![
            "check",
            "--weights",
            w,
            "--fasta",
            zero,
            "--embeddings",
            s(&npy),
        ],
        vec!["explain", "--weights", w, "--fasta", zero, "--record", "a"],
        vec!["bench", "--weights", w, "--fasta", zero],
        vec!["parity", "--weights", w, "--fasta", zero],
        vec!["bisect-precision", "--weights", w, "--fasta", zero],
    ];
    for args in &cases {
        let ran = bounded(args);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("line 1: longer than 16777216 bytes"),
            "{args:?}: {}",
            ran.stderr
        );
    }
}

#[test]
fn the_residue_and_line_caps_are_flags_and_a_record_over_them_names_its_line() {
    let work = tempfile::tempdir().unwrap();
    let fasta = work.path().join("in.fasta");
    std::fs::write(&fasta, ">short\nMK\n>long\nMKTAYIAKQR\nQISFVKSHFS\n").unwrap();
    let out = work.path().join("x.npy");
    let tiny = tiny();
    let base = [
        "embed",
        "--weights",
        s(&tiny),
        "--fasta",
        s(&fasta),
        "--out",
        s(&out),
    ];
    let ran = binary::run(
        &[&base[..], &["--max-record-residues", "15"]].concat(),
        &[],
        None,
    );
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("line 5: record 'long' holds more than 15 residues"),
        "{}",
        ran.stderr
    );
    let ran = binary::run(&[&base[..], &["--max-line-bytes", "8"]].concat(), &[], None);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("line 4: longer than 8 bytes"),
        "{}",
        ran.stderr
    );
    // The defaults read it.
    let ran = binary::run(&base, &[], None);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
}

#[test]
fn fasta_from_a_pipe_is_streamed_not_sought() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("x.npy");
    let tiny = tiny();
    let args = [
        "embed",
        "--weights",
        s(&tiny),
        "--fasta",
        "-",
        "--out",
        s(&out),
    ];
    let mut child = binary::command(&args, &[], None)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b">a\nMKTAYIAKQR\n>b\nGSHMLE\n").unwrap();
    }
    let ran = binary::wait(child, &args);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(!ran.stderr.contains("Illegal seek"), "{}", ran.stderr);
    assert_eq!(common::read_npy_f32(&out).0, [2, 32]);
}

/// A safetensors file of one tensor whose header claims `dtype` and `shape` over
/// `data_offsets` [0, `bytes`], with `bytes` bytes of data, beside the tiny config.
fn lying_checkpoint(dir: &Path, dtype: &str, shape: &[usize], bytes: usize) -> PathBuf {
    let folder = dir.join(format!("w-{dtype}"));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(tiny().join("config.json"), folder.join("config.json")).unwrap();
    let header = serde_json::json!({
        "embeddings.word_embeddings.weight": {
            "dtype": dtype, "shape": shape, "data_offsets": [0, bytes]
        }
    })
    .to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.resize(file.len() + bytes, 0);
    std::fs::write(folder.join("model.safetensors"), file).unwrap();
    folder
}

#[test]
fn a_safetensors_header_that_lies_about_shape_or_dtype_names_the_tensor_and_both_sizes() {
    let work = tempfile::tempdir().unwrap();
    let fasta = work.path().join("in.fasta");
    std::fs::write(&fasta, ">a\nMK\n").unwrap();
    let out = work.path().join("x.npy");
    // [33, 32] F32 is 4224 bytes; the offsets span 64. F16 claimed over 4224 bytes: 2112.
    for (dtype, bytes, claimed, spanned) in [
        (
            "F32",
            64,
            "F32 [33, 32], which is 4224 bytes",
            "span 64 bytes",
        ),
        (
            "F16",
            4224,
            "F16 [33, 32], which is 2112 bytes",
            "span 4224 bytes",
        ),
    ] {
        let weights = lying_checkpoint(work.path(), dtype, &[33, 32], bytes);
        let ran = binary::run(
            &[
                "embed",
                "--weights",
                s(&weights),
                "--fasta",
                s(&fasta),
                "--out",
                s(&out),
            ],
            &[],
            None,
        );
        assert_eq!(ran.code, 2, "{}", ran.stderr);
        for says in [
            "tensor 'embeddings.word_embeddings.weight'",
            claimed,
            spanned,
        ] {
            assert!(ran.stderr.contains(says), "{dtype}: {says}: {}", ran.stderr);
        }
    }
}

#[test]
fn messages_name_the_line_and_escape_nul_and_control_bytes() {
    let work = tempfile::tempdir().unwrap();
    let fasta = work.path().join("in.fasta");
    let out = work.path().join("x.npy");
    let tiny = tiny();
    let args = [
        "embed",
        "--weights",
        s(&tiny),
        "--fasta",
        s(&fasta),
        "--out",
        s(&out),
    ];
    std::fs::write(&fasta, b">a\x00b\x1b[31m\nMK\x00V\n").unwrap();
    let ran = binary::run(&args, &[], None);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(!ran.stderr.contains(['\0', '\x1b']), "{:?}", ran.stderr);
    assert!(
        ran.stderr
            .contains("record 'a\\u{0}b\\u{1b}[31m': character '\\u{0}' at residue position 3"),
        "{}",
        ran.stderr
    );
    // Text before the first header is named as such (noodles said "invalid prefix").
    std::fs::write(&fasta, b"MKV\n>a\nMK\n").unwrap();
    let ran = binary::run(&args, &[], None);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("line 1: 'MKV' before the first header"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("invalid prefix"), "{}", ran.stderr);
}
