//! Every shrunk counterexample ever saved as FASTA in
//! `proptest-regressions/counterexamples/<policy>__<family>.fasta` is replayed through all
//! properties of its policy, whatever the generators have become since.

mod common;

use esmfuzz::input::{NormaliseOptions, read_fasta};
use esmfuzz::model::Precision;
use esmfuzz::props::{Layout, Tolerances, check_case, failures, isolation_case, tightest};

fn policy_of(file_stem: &str) -> Option<Precision> {
    let name = file_stem.split("__").next()?;
    Precision::ALL.into_iter().find(|p| p.name() == name)
}

#[test]
fn saved_counterexamples_replay_and_hold() {
    let dir = esmfuzz::generate::regressions_dir().join("counterexamples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "fasta"));
    files.sort();
    println!(
        "replaying {} counterexample file(s) from {}",
        files.len(),
        dir.display()
    );
    let reference = common::shared_model(Precision::F32);
    let mut failed = Vec::new();
    for file in &files {
        let stem = file
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let precision = policy_of(&stem).unwrap_or_else(|| {
            panic!("{}: name must start with a policy and '__'", file.display())
        });
        let proteins = read_fasta(file, NormaliseOptions::default())
            .unwrap_or_else(|e| panic!("cannot read counterexample: {e}"));
        let tol = Tolerances::for_precision(precision);
        let model = common::shared_model(precision);
        let mut verdicts = check_case(reference, model, &proteins, Layout::Padded, &tol);
        if stem.contains("isolation") {
            verdicts.extend(isolation_case(model, &proteins, &tol));
        }
        if stem.contains("packed") {
            verdicts.extend(check_case(
                reference,
                model,
                &proteins,
                Layout::Packed,
                &tol,
            ));
        }
        let worst = tightest(&verdicts);
        println!(
            "{stem} ({} sequences): smallest margin: {}",
            proteins.len(),
            worst.map(|v| v.to_string()).unwrap_or_default()
        );
        if let Some(msg) = failures(&verdicts) {
            failed.push(format!("{}:\n{msg}", file.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "saved counterexamples fail again:\n{}",
        failed.join("\n")
    );
}
