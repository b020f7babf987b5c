//! Campaign folders, as issue 19 measured them: a failed run leaves an existing campaign
//! byte-identical, a running campaign locks its folder, a stopped one says it is incomplete,
//! `--resume` keeps exactly the finished families, and `merge` neither overwrites its inputs
//! nor joins unfinished or unknown reports. Each test runs the 8M model on one or two tiny
//! cases per family (seconds on two CPU cores).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use safetensors::Dtype;
use serde_json::Value;

use super::binary::{self, Ran, s};
use super::common;
use super::loader_errors::{real_tensors, write_checkpoint};

/// Runs the binary to its end.
fn esmfuzz(args: &[&str]) -> Ran {
    binary::run(args, &[], None)
}

/// Families of [`fuzz_args`]'s campaign: the four tiny strata and the 8M checkpoint's two head
/// families (classifier and contacts).
const FAMILIES: usize = 6;

/// `fuzz` of the tiny strata and the head families ([`FAMILIES`]) with `cases` per family,
/// seed 5, saved failures in `regressions`, then `extra`.
fn fuzz_args<'a>(regressions: &'a Path, cases: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "fuzz",
        "--max-stratum",
        "tiny",
        "--seed",
        "5",
        "--cases",
        cases,
        "--regressions",
        s(regressions),
    ];
    args.extend(extra);
    args
}

/// A temp folder with an empty regressions folder in it.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let regressions = work.path().join("regressions");
    std::fs::create_dir(&regressions).unwrap();
    (work, regressions)
}

/// A finished campaign of one case per family in `out`.
fn campaign(regressions: &Path, out: &Path) {
    let ran = esmfuzz(&fuzz_args(regressions, "1", &["--out", s(out)]));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
}

/// Every file in `dir` (hidden ones too) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn report(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

fn write_report(dir: &Path, report: &Value) {
    std::fs::write(dir.join("report.json"), report.to_string()).unwrap();
}

/// The (family, run) of every line of `dir/cases.jsonl`, each line checked to be a record.
fn case_lines(dir: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "a torn last line");
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a case record ({e}): {line}"));
            (
                v["family"].as_str().unwrap().to_string(),
                v["run"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn family_names(report: &Value) -> Vec<String> {
    report["families"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["family"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_run_that_fails_its_checks_leaves_an_existing_campaign_byte_identical() {
    let (work, regressions) = workspace();
    let out = work.path().join("campaign");
    campaign(&regressions, &out);
    let before = snapshot(&out);
    let missing = work.path().join("missing.fasta");
    let o = s(&out);
    let mut failing: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--out", o], "holds a campaign already"),
        (
            vec!["--out", o, "--overwrite", "--weights", "/nonexistent"],
            "/nonexistent",
        ),
        (
            vec!["--out", o, "--overwrite", "--fasta", s(&missing)],
            "missing.fasta",
        ),
        (
            vec!["--out", o, "--overwrite", "--fp32-places", "layer:0-99"],
            "layer:0-99",
        ),
        (
            vec!["--resume", o, "--weights", "/nonexistent"],
            "/nonexistent",
        ),
        (
            vec!["--resume", o, "--precision", "bf16"],
            "ran policy f16, this one asks for bf16",
        ),
    ];
    // A build without CUDA refuses `--backend cuda`; the CUDA suite's binary runs it.
    if !cfg!(feature = "cuda") {
        failing.push((vec!["--out", o, "--overwrite", "--backend", "cuda"], "CUDA"));
    }
    for (extra, says) in &failing {
        let ran = esmfuzz(&fuzz_args(&regressions, "1", extra));
        assert_eq!(ran.code, 2, "{extra:?}: {}", ran.stderr);
        assert!(ran.stderr.contains(says), "{extra:?}: {}", ran.stderr);
        assert!(
            snapshot(&out) == before,
            "{extra:?} changed {}",
            out.display()
        );
    }
    // Flags that replayed nothing, or ran GPU shards on the CPU, are refused too (issue 19,
    // item 11), before the folder is touched.
    let nowhere = work.path().join("nowhere");
    let strict: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "fuzz",
                "--regressions",
                "/nonexistent",
                "--overwrite",
                "--out",
                o,
            ],
            "--regressions /nonexistent: no such folder",
        ),
        (
            vec!["fuzz", "--devices", "0,1", "--overwrite", "--out", o],
            "needs --backend cuda",
        ),
    ];
    for (args, says) in &strict {
        let ran = esmfuzz(args);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.stderr);
        assert!(ran.stderr.contains(says), "{args:?}: {}", ran.stderr);
        assert!(
            snapshot(&out) == before,
            "{args:?} changed {}",
            out.display()
        );
    }
    // A shard of no family is an error, not "all held" over nothing (issue 19, item 8).
    let o = s(&nowhere);
    let ran = esmfuzz(&fuzz_args(
        &regressions,
        "1",
        &["--shard", "50/99", "--out", o],
    ));
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("runs no family"), "{}", ran.stderr);
    assert!(!nowhere.exists());
    // --overwrite replaces the campaign once every input is good.
    let ran = esmfuzz(&fuzz_args(
        &regressions,
        "1",
        &["--out", s(&out), "--overwrite"],
    ));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(case_lines(&out).len(), FAMILIES);
}

#[test]
fn a_running_campaign_locks_its_folder_and_a_sigint_leaves_a_report_marked_incomplete() {
    let (work, regressions) = workspace();
    let out = work.path().join("campaign");
    // Enough cases that the first family is still running when the signal comes.
    let args = fuzz_args(&regressions, "400", &["--out", s(&out)]);
    let child = binary::spawn(&args);
    let pid = child.id();
    let started = Instant::now();
    while case_lines_so_far(&out) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no case judged in 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second run on the folder refuses, naming the first, whatever it asks.
    let holder = format!("pid {pid}");
    for extra in [
        vec!["--out", s(&out), "--overwrite"],
        vec!["--resume", s(&out)],
    ] {
        let ran = esmfuzz(&fuzz_args(&regressions, "1", &extra));
        assert_eq!(ran.code, 2, "{extra:?}: {}", ran.stderr);
        assert!(ran.stderr.contains(&holder), "{extra:?}: {}", ran.stderr);
    }
    let merged = work.path().join("merged");
    let ran = esmfuzz(&["merge", s(&out), "--out", s(&merged)]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let ran = binary::wait(child, &args);
    assert_eq!(ran.code, 2, "a stopped campaign is no pass: {}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!(
            "stopped by a signal after 0 of {FAMILIES} families"
        )),
        "{}",
        ran.stderr
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.lines()
            .next()
            .unwrap()
            .contains(&format!("incomplete: 0 of {FAMILIES} families")),
        "{md}"
    );
    let json = report(&out);
    assert_eq!(json["complete"], false);
    assert_eq!(json["passed"], false);
    assert_eq!(json["families_planned"], FAMILIES);
    // Every line whole: the run stopped between cases, and the second run wrote nothing.
    let lines = case_lines(&out);
    assert!(lines.iter().all(|(f, _)| f == "stratum-tiny"), "{lines:?}");
    let runs: HashSet<u64> = lines.iter().map(|(_, r)| *r).collect();
    assert_eq!(runs.len(), lines.len(), "each run once: {lines:?}");
}

/// Lines of `dir/cases.jsonl` so far (0 while it does not exist).
fn case_lines_so_far(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("cases.jsonl")).map_or(0, |t| t.lines().count())
}

#[test]
fn resume_checks_it_is_the_same_campaign_repairs_a_torn_line_and_keeps_finished_families() {
    let (work, regressions) = workspace();
    let out = work.path().join("campaign");
    let ran = esmfuzz(&fuzz_args(&regressions, "2", &["--out", s(&out)]));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let whole = report(&out);
    let all_lines = case_lines(&out);
    // Stopped after two families, killed while writing a line of the third.
    let mut stopped = whole.clone();
    stopped["families"].as_array_mut().unwrap().truncate(2);
    write_report(&out, &stopped);
    let mut cases = std::fs::read(out.join("cases.jsonl")).unwrap();
    cases.extend_from_slice(br#"{"family":"packed-up-to-tiny","ru"#);
    std::fs::write(out.join("cases.jsonl"), cases).unwrap();
    let before = snapshot(&out);
    // Other weights (the same values, another file), other strata, another shard or another
    // case count would mix or drop families: refused, nothing touched.
    let other = work.path().join("other-weights");
    std::fs::create_dir(&other).unwrap();
    write_checkpoint(&other, &real_tensors(), Dtype::F32);
    let o = s(&out);
    for (cases, extra, says) in [
        (
            "2",
            vec!["--resume", o, "--weights", s(&other)],
            "weights with sha256",
        ),
        ("2", vec!["--resume", o, "--shard", "0/2"], "shard none"),
        ("3", vec!["--resume", o], "cases per family 2"),
    ] {
        let ran = esmfuzz(&fuzz_args(&regressions, cases, &extra));
        assert_eq!(ran.code, 2, "{extra:?}: {}", ran.stderr);
        assert!(ran.stderr.contains(says), "{extra:?}: {}", ran.stderr);
        assert!(snapshot(&out) == before, "{extra:?} changed the folder");
    }
    let shorter = [
        "fuzz",
        "--max-stratum",
        "short",
        "--regressions",
        s(&regressions),
        "--resume",
        o,
    ];
    let ran = esmfuzz(&shorter);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("families (--max-stratum"),
        "{}",
        ran.stderr
    );
    assert!(snapshot(&out) == before);
    // Without --cases: the case count is the stopped campaign's (as --help says).
    let ran = esmfuzz(&[
        "fuzz",
        "--max-stratum",
        "tiny",
        "--regressions",
        s(&regressions),
        "--resume",
        o,
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("last line was cut off"),
        "{}",
        ran.stderr
    );
    let resumed = report(&out);
    assert_eq!(resumed["resumed"].as_array().unwrap().len(), 2);
    assert_eq!(resumed["cases_per_family"], 2);
    assert_eq!(family_names(&resumed), family_names(&whole));
    assert_eq!(resumed["complete"], true);
    // Each judged case once: the interrupted family's lines are not there twice.
    let mut lines = case_lines(&out);
    let mut expected = all_lines;
    lines.sort();
    expected.sort();
    assert_eq!(lines, expected);
}

#[test]
fn two_fasta_files_of_one_name_are_two_families_and_a_resume_judges_the_second() {
    let (work, regressions) = workspace();
    let short: Vec<_> = common::corpus()
        .iter()
        .filter(|p| p.residues.len() < 60)
        .take(3)
        .cloned()
        .collect();
    let mut paths = Vec::new();
    for (dir, records) in [("d1", &short[..1]), ("d2", &short[1..])] {
        std::fs::create_dir(work.path().join(dir)).unwrap();
        let path = work.path().join(dir).join("x.fasta");
        esmfuzz::input::write_fasta(&path, records).unwrap();
        paths.push(path);
    }
    let fasta = format!("{},{}", s(&paths[0]), s(&paths[1]));
    let out = work.path().join("campaign");
    let ran = esmfuzz(&fuzz_args(
        &regressions,
        "1",
        &["--fasta", &fasta, "--out", s(&out)],
    ));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let whole = report(&out);
    let cases = |r: &Value, name: &str| {
        r["families"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["family"] == name)
            .map(|f| f["cases"].as_u64().unwrap())
    };
    assert_eq!(cases(&whole, "fasta-x"), Some(1));
    assert_eq!(cases(&whole, "fasta-x-2"), Some(2));
    // Stopped before the second file: the resume judges d2, not d1 again.
    let mut stopped = whole.clone();
    stopped["families"].as_array_mut().unwrap().truncate(5);
    write_report(&out, &stopped);
    let ran = esmfuzz(&[
        "fuzz",
        "--max-stratum",
        "tiny",
        "--regressions",
        s(&regressions),
        "--fasta",
        &fasta,
        "--resume",
        s(&out),
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let resumed = report(&out);
    assert_eq!(family_names(&resumed), family_names(&whole));
    assert_eq!(cases(&resumed, "fasta-x-2"), Some(2));
}

#[test]
fn merge_refuses_its_own_shards_another_campaign_an_unfinished_shard_and_other_schemas() {
    let (work, regressions) = workspace();
    let shards: Vec<PathBuf> = (0..2)
        .map(|i| {
            let dir = work.path().join(format!("shard{i}"));
            let shard = format!("{i}/2");
            let ran = esmfuzz(&fuzz_args(
                &regressions,
                "1",
                &["--shard", &shard, "--out", s(&dir)],
            ));
            assert_eq!(ran.code, 0, "{}", ran.stderr);
            dir
        })
        .collect();
    let other = work.path().join("other");
    campaign(&regressions, &other);
    let kept: Vec<_> = shards.iter().chain([&other]).map(|d| snapshot(d)).collect();
    let merge = |dirs: &[&Path], out: &Path, extra: &[&str]| -> Ran {
        let mut args = vec!["merge"];
        args.extend(dirs.iter().map(|d| s(d)));
        args.extend(["--out", s(out)]);
        args.extend(extra);
        esmfuzz(&args)
    };
    let (a0, a1) = (shards[0].as_path(), shards[1].as_path());
    // Its own input, through a `..` path too, and another campaign's folder.
    let dotted = work.path().join("other").join("..").join("shard0");
    for (out, says) in [
        (a0, "is one of the shards"),
        (dotted.as_path(), "is one of the shards"),
        (other.as_path(), "holds a campaign already (cases.jsonl)"),
    ] {
        let ran = merge(&[a0, a1], out, &[]);
        assert_eq!(ran.code, 2, "{}: {}", out.display(), ran.stderr);
        assert!(ran.stderr.contains(says), "{}", ran.stderr);
    }
    // Copies of shard 1, each wrong in one way; the message names the copy.
    let copy = |name: &str, edit: &dyn Fn(&mut Value)| -> PathBuf {
        let dir = work.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let mut json = report(a1);
        edit(&mut json);
        write_report(&dir, &json);
        dir
    };
    let unfinished = copy("unfinished", &|j| {
        j["families"].as_array_mut().unwrap().clear();
    });
    let schema99 = copy("schema99", &|j| j["schema"] = 99.into());
    let schema1 = copy("schema1", &|j| j["schema"] = 1.into());
    let reseeded = copy("reseeded", &|j| j["seed"] = 6.into());
    let fresh = work.path().join("merged");
    let unfinished_says = format!("shard 1/2 is incomplete: 0 of {} families", FAMILIES / 2);
    for (dir, says) in [
        (&unfinished, unfinished_says.as_str()),
        (&schema99, "report schema 99"),
        (&schema1, "report schema 1"),
        (&reseeded, "seed 6 differs from the first shard's 5"),
    ] {
        let ran = merge(&[a0, dir], &fresh, &[]);
        assert_eq!(ran.code, 2, "{}: {}", dir.display(), ran.stderr);
        assert!(ran.stderr.contains(says), "{}", ran.stderr);
        assert!(
            ran.stderr.contains(s(dir)),
            "names the folder: {}",
            ran.stderr
        );
        assert!(!fresh.exists(), "nothing written");
    }
    for (dir, before) in shards.iter().chain([&other]).zip(&kept) {
        assert!(snapshot(dir) == *before, "{} changed", dir.display());
    }
    // --overwrite replaces the other campaign with the merged one, its case log gone.
    let ran = merge(&[a0, a1], &other, &["--overwrite"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(!other.join("cases.jsonl").exists());
    assert_eq!(report(&other)["complete"], true);
    assert_eq!(family_names(&report(&other)).len(), FAMILIES);
}
