//! `explain` ends with the pooled row exactly as `embed` writes it, and `--against` shows two
//! policies place by place.

use std::process::Command;

use esmfuzz::harness::explanation::Explanation;

use super::common;

/// Runs the binary; (exit code, stderr).
fn esmfuzz(args: &[&str]) -> (i32, String) {
    let out = Command::new(common::esmfuzz_bin())
        .args(args)
        .current_dir(common::repo())
        .output()
        .expect("the esmfuzz binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn explain_shows_the_pooled_row_embed_writes_and_where_another_policy_diverges() {
    let work = tempfile::tempdir().unwrap();
    let protein = common::corpus()
        .iter()
        .find(|p| p.residues.len() < 60)
        .expect("a short corpus record");
    let fasta = work.path().join("one.fasta");
    esmfuzz::input::write_fasta(&fasta, std::slice::from_ref(protein)).unwrap();
    let fasta = fasta.to_str().unwrap();
    let (report, npy) = (work.path().join("e.json"), work.path().join("e.npy"));
    let (report, npy) = (report.to_str().unwrap(), npy.to_str().unwrap());

    let (code, err) = esmfuzz(&[
        "explain",
        "--fasta",
        fasta,
        "--record",
        &protein.name,
        "--precision",
        "f16-mixed",
        "--against",
        "f16",
        "--report",
        report,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = esmfuzz(&[
        "embed",
        "--fasta",
        fasta,
        "--precision",
        "f16-mixed",
        "--out",
        npy,
    ]);
    assert_eq!(code, 0, "{err}");

    let e: Explanation =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).expect("explain JSON");
    let (_, row) = common::read_npy_f32(std::path::Path::new(npy));
    assert_eq!(
        e.pooled.test_first,
        row[..e.pooled.test_first.len()].to_vec(),
        "explain's pooled row is embed's, bit for bit"
    );
    assert!(
        e.pooled.cosine > 0.9999 && e.pooled.cosine < 1.0,
        "{:?}",
        e.pooled
    );
    let d = e.divergence.expect("--against gives a divergence");
    assert_eq!(d.against, "f16");
    assert_eq!(d.places.len(), e.localisation.places.len());
    assert!(d.places.iter().all(|p| p.test > 0.0 && p.against > 0.0));
    // The two reduced policies differ from each other (after the embeddings, which both
    // store in f16 alike).
    assert!(d.places.last().is_some_and(|p| p.between > 0.0), "{d:?}");
}
