//! Reports that say no more than was judged (issue 28): a resume keys `--fasta` families by
//! content, not by file name; a resume refuses a `cases.jsonl` that lost the lines of
//! finished families; a second signal exits 2 (not 1, "a property failed") saying what state
//! the folder is in. Each test runs the tiny fixture model (seconds).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::binary::{self, Ran, s};
use super::common;

fn esmfuzz(args: &[&str]) -> Ran {
    binary::run(args, &[], None)
}

/// `fuzz` on the tiny fixture model, tiny strata (four families), seed 5, `extra` after.
fn fuzz<'a>(tiny: &'a Path, regressions: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "fuzz",
        "--weights",
        s(tiny),
        "--max-stratum",
        "tiny",
        "--seed",
        "5",
        "--regressions",
        s(regressions),
    ];
    args.extend(extra);
    args
}

fn workspace() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let regressions = work.path().join("regressions");
    std::fs::create_dir(&regressions).unwrap();
    (
        work,
        regressions,
        common::repo().join("tests/fixtures/tiny"),
    )
}

fn report(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// Marks the campaign in `dir` stopped before `family` (removed from its finished ones).
fn unfinish(dir: &Path, family: &str) {
    let mut r = report(dir);
    r["families"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["family"] != family);
    r["complete"] = Value::Bool(false);
    std::fs::write(dir.join("report.json"), r.to_string()).unwrap();
}

#[test]
fn resume_refuses_a_fasta_file_of_the_same_stem_but_other_content() {
    let (work, regressions, tiny) = workspace();
    let (d1, d2) = (work.path().join("d1"), work.path().join("d2"));
    for (dir, text) in [(&d1, ">a\nMKTAYIAKQR\n"), (&d2, ">b\nWWWWCCCCHH\n>c\nGG\n")] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("x.fasta"), text).unwrap();
    }
    let out = work.path().join("campaign");
    let first = d1.join("x.fasta");
    let ran = esmfuzz(&fuzz(
        &tiny,
        &regressions,
        &["--cases", "1", "--fasta", s(&first), "--out", s(&out)],
    ));
    assert!(matches!(ran.code, 0 | 1), "{}", ran.stderr);
    // Stopped with fasta-x finished; resumed with another x.fasta.
    unfinish(&out, "stratum-tiny");
    let other = d2.join("x.fasta");
    let ran = esmfuzz(&fuzz(
        &tiny,
        &regressions,
        &["--fasta", s(&other), "--resume", s(&out)],
    ));
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("other content"), "{}", ran.stderr);
    // A report that kept no digests cannot tell: refused too.
    let mut r = report(&out);
    r.as_object_mut().unwrap().remove("fasta_sha256");
    std::fs::write(out.join("report.json"), r.to_string()).unwrap();
    let ran = esmfuzz(&fuzz(
        &tiny,
        &regressions,
        &["--fasta", s(&first), "--resume", s(&out)],
    ));
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("keeps no digest"), "{}", ran.stderr);
}

#[test]
fn resume_refuses_a_cases_log_missing_the_lines_of_finished_families() {
    let (work, regressions, tiny) = workspace();
    let out = work.path().join("campaign");
    let ran = esmfuzz(&fuzz(
        &tiny,
        &regressions,
        &["--cases", "2", "--out", s(&out)],
    ));
    assert!(matches!(ran.code, 0 | 1), "{}", ran.stderr);
    unfinish(&out, "isolation-up-to-tiny");
    // The lines of the finished stratum-tiny are gone.
    let text = std::fs::read_to_string(out.join("cases.jsonl")).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.contains("\"stratum-tiny\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(out.join("cases.jsonl"), &kept).unwrap();
    let ran = esmfuzz(&fuzz(&tiny, &regressions, &["--resume", s(&out)]));
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("of finished family stratum-tiny"),
        "{}",
        ran.stderr
    );
    assert_eq!(
        std::fs::read_to_string(out.join("cases.jsonl")).unwrap(),
        kept
    );
}

/// Sends `signal` to `pid` with kill(1).
fn kill(signal: &str, pid: u32) {
    let sent = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

#[test]
fn a_second_signal_exits_2_and_says_what_state_the_folder_is_in() {
    let (work, regressions, tiny) = workspace();
    let out = work.path().join("campaign");
    let args = fuzz(
        &tiny,
        &regressions,
        &["--cases", "100000", "--out", s(&out)],
    );
    let child = binary::spawn(&args);
    let pid = child.id();
    // Killed on a failure before the wait (which kills a hang itself and reaps).
    struct Reap(Option<u32>);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
    let mut reap = Reap(Some(pid));
    let started = Instant::now();
    while std::fs::read_to_string(out.join("cases.jsonl")).map_or(0, |t| t.len()) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no case judged"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Stopped, both signals pending, then continued: the second handler runs before any
    // case boundary can be reached.
    kill("-STOP", pid);
    kill("-INT", pid);
    kill("-TERM", pid);
    kill("-CONT", pid);
    reap.0 = None;
    let ran = binary::wait(child, &args);
    assert_eq!(
        ran.code, 2,
        "exit 1 would say a property failed: {}",
        ran.stderr
    );
    assert!(ran.stderr.contains("a second signal"), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains(&format!("esmfuzz fuzz --resume {}", out.display())),
        "{}",
        ran.stderr
    );
    assert_eq!(report(&out)["complete"], false);
}

/// Four short corpus records as a FASTA file in `dir`, with the FP32 oracle's pooled rows.
fn four_records_and_rows(dir: &Path) -> (PathBuf, Vec<Vec<f32>>) {
    use esmfuzz::batch::{Batching, pool_residues, token_states};
    let proteins: Vec<esmfuzz::input::Protein> = common::corpus()
        .iter()
        .filter(|p| p.residues.len() < 60)
        .take(4)
        .cloned()
        .collect();
    let path = dir.join("four.fasta");
    esmfuzz::input::write_fasta(&path, &proteins).unwrap();
    let hidden = common::weights().config.hidden_size;
    let rows = token_states(
        common::shared_model(esmfuzz::model::Precision::F32),
        &proteins,
        Batching::padded(1024),
    )
    .iter()
    .map(|s| pool_residues(s, hidden))
    .collect();
    (path, rows)
}

fn write_rows(path: &Path, rows: &[Vec<f32>]) {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let array = ndarray::Array2::from_shape_vec((rows.len(), rows[0].len()), flat).unwrap();
    ndarray_npy::write_npy(path, &array).unwrap();
}

#[test]
fn check_says_what_the_bound_in_force_cannot_see_and_points_to_f32() {
    let work = tempfile::tempdir().unwrap();
    let (fasta, rows) = four_records_and_rows(work.path());
    let scaled: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| r.iter().map(|v| v * 1.02).collect())
        .collect();
    let npy = work.path().join("x1.02.npy");
    write_rows(&npy, &scaled);
    let args = ["check", "--fasta", s(&fasta), "--embeddings", s(&npy)];
    let ran = esmfuzz(&args);
    // x1.02 is inside f16's relative-L2 bound of 0.03: it passes, and the output says so.
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout
            .contains("what --bound-of f16 can see: rows rescaled by x0.9700..x1.0300"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("--bound-of f32 sees rescales"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("results/check-power/README.md"),
        "{}",
        ran.stdout
    );
    let ran = esmfuzz(&[&args[..], &["--bound-of", "f32"]].concat());
    assert_eq!(ran.code, 1, "f32's net catches x1.02: {}", ran.stdout);
}

#[test]
fn check_diagnoses_zeroed_rows_as_zero_rows_not_a_length_limit_or_pooling() {
    let work = tempfile::tempdir().unwrap();
    let (fasta, rows) = four_records_and_rows(work.path());
    let hidden = rows[0].len();
    let mut one = rows.clone();
    one[3] = vec![0.0; hidden];
    let all = vec![vec![0.0f32; hidden]; rows.len()];
    for (name, theirs, says) in [
        ("one", one, "1 row(s) are all zeros (row 4"),
        ("all", all, "4 row(s) are all zeros"),
    ] {
        let npy = work.path().join(format!("{name}.npy"));
        write_rows(&npy, &theirs);
        let ran = esmfuzz(&["check", "--fasta", s(&fasta), "--embeddings", s(&npy)]);
        assert_eq!(ran.code, 1, "{}", ran.stdout);
        assert!(ran.stdout.contains(says), "{name}: {}", ran.stdout);
        assert!(
            !ran.stdout.contains("length limit"),
            "{name}: {}",
            ran.stdout
        );
        assert!(
            !ran.stdout.contains("BOS-token pooling"),
            "{name}: {}",
            ran.stdout
        );
    }
}

/// `n` short records (10 to 40 residues) as a FASTA file at `path`.
fn many_records(path: &Path, n: usize) {
    let residues = "ACDEFGHIKLMNPQRSTVWY".as_bytes();
    let mut text = String::new();
    for i in 0..n {
        let len = 10 + i % 31;
        let seq: String = (0..len)
            .map(|j| residues[(i * 7 + j * 13) % residues.len()] as char)
            .collect();
        text.push_str(&format!(">r{i}\n{seq}\n"));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn cases_of_fasta_families_are_in_cases_jsonl() {
    let (work, regressions, tiny) = workspace();
    let fasta = work.path().join("mine.fasta");
    many_records(&fasta, 10);
    let out = work.path().join("campaign");
    let ran = esmfuzz(&fuzz(
        &tiny,
        &regressions,
        &[
            "--cases",
            "1",
            "--fasta",
            s(&fasta),
            "--families",
            "stratum-tiny",
            "--out",
            s(&out),
        ],
    ));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let lines = std::fs::read_to_string(out.join("cases.jsonl")).unwrap();
    let fasta_lines = lines
        .lines()
        .filter(|l| l.contains(r#""family":"fasta-mine""#))
        .count();
    // 10 records in batches of up to 4: 3 judged cases.
    assert_eq!(fasta_lines, 3, "{lines}");
}

#[test]
fn sigint_inside_a_2000_record_fasta_family_stops_within_5_s() {
    let (work, regressions, _) = workspace();
    let fasta = work.path().join("proteome.fasta");
    many_records(&fasta, 2000);
    let out = work.path().join("campaign");
    // The real 8M model: its 500 batches take far longer than 5 s on these machines, so
    // only a stop between batches ends the family in time.
    let weights = common::weights_path();
    let args = fuzz(
        &weights,
        &regressions,
        &[
            "--cases",
            "1",
            "--fasta",
            s(&fasta),
            "--families",
            "stratum-tiny",
            "--out",
            s(&out),
        ],
    );
    let child = binary::spawn(&args);
    let pid = child.id();
    let started = Instant::now();
    // Ready once the FASTA family has judged a case.
    while !std::fs::read_to_string(out.join("cases.jsonl"))
        .unwrap_or_default()
        .contains("fasta-proteome")
    {
        assert!(
            started.elapsed() < binary::HANG,
            "the FASTA family never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = Instant::now();
    kill("-INT", pid);
    let ran = binary::wait(child, &args);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "stopped {:?} after SIGINT",
        sent.elapsed()
    );
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    let r = report(&out);
    assert_eq!(r["complete"], false);
    assert!(
        r["families"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["family"] != "fasta-proteome"),
        "the family under way is discarded"
    );
}
