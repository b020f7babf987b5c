//! Output safety, as issue 28 listed it: no run destroys a file it did not create. `embed`'s
//! `OUT.partial` is checked like an output, a symlinked output is followed (the link kept),
//! a device node is never replaced, two `embed` runs on one output do not both say "wrote",
//! campaign folders are claimed only when they hold a campaign or nothing, `--overwrite`
//! removes only what a campaign's manifest lists, other commands cannot replace a
//! campaign's report, lock and partial files are not written through a symlink, and an
//! interrupted `synth` leaves no truncated checkpoint under its final name. Every test runs
//! the tiny fixture model or stops before any model loads (seconds).

use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::binary::{self, Ran, s};
use super::common;

fn esmfuzz(args: &[&str]) -> Ran {
    binary::run(args, &[], None)
}

/// The tiny fixture checkpoint folder (2 layers x 32).
fn tiny() -> PathBuf {
    common::repo().join("tests/fixtures/tiny")
}

/// A small FASTA file in `dir`.
fn fasta(dir: &Path) -> PathBuf {
    let path = dir.join("in.fasta");
    std::fs::write(&path, ">a\nMKTAYIAKQR\n>b\nGSHMLE\n").unwrap();
    path
}

/// A character device node made with mknod (as /dev/null: 1, 3) in `dir`.
fn device_node(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let made = std::process::Command::new("mknod")
        .args([s(&path), "c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success(), "mknod (the suite runs as root in CI)");
    path
}

/// A child killed and reaped when dropped, unless [`Running::wait`] took it: a test that
/// fails while waiting for it leaves no process behind.
struct Running(Option<std::process::Child>);

impl Running {
    fn spawn(args: &[&str]) -> Self {
        Self(Some(binary::spawn(args)))
    }

    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    fn wait(mut self, args: &[&str]) -> Ran {
        binary::wait(self.0.take().expect("waited once"), args)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn is_char_device(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

#[test]
fn embed_refuses_an_out_whose_partial_file_is_one_of_its_inputs_and_leaves_it_intact() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("x.npy");
    let partial = work.path().join("x.npy.partial");
    // The FASTA, then the config, named as the partial file.
    std::fs::copy(fasta(work.path()), &partial).unwrap();
    let before = std::fs::read(&partial).unwrap();
    let tiny = tiny();
    let ran = esmfuzz(&[
        "embed",
        "--weights",
        s(&tiny.join("model.safetensors")),
        "--fasta",
        s(&partial),
        "--out",
        s(&out),
    ]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("would overwrite an input"),
        "{}",
        ran.stderr
    );
    assert_eq!(std::fs::read(&partial).unwrap(), before);
    std::fs::copy(tiny.join("config.json"), &partial).unwrap();
    let before = std::fs::read(&partial).unwrap();
    let ran = esmfuzz(&[
        "embed",
        "--weights",
        s(&tiny.join("model.safetensors")),
        "--config",
        s(&partial),
        "--fasta",
        s(&fasta(work.path())),
        "--out",
        s(&out),
    ]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert_eq!(std::fs::read(&partial).unwrap(), before);
    assert!(!out.exists());
}

#[test]
fn embed_refuses_a_partial_file_that_is_not_its_own_or_is_a_symlink() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("x.npy");
    let partial = work.path().join("x.npy.partial");
    let precious = work.path().join("precious.txt");
    std::fs::write(&precious, "keep").unwrap();
    let fasta = fasta(work.path());
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
    std::fs::write(&partial, "notes of mine").unwrap();
    let ran = esmfuzz(&args);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("not a partial .npy"), "{}", ran.stderr);
    assert_eq!(std::fs::read_to_string(&partial).unwrap(), "notes of mine");
    std::fs::remove_file(&partial).unwrap();
    symlink(&precious, &partial).unwrap();
    let ran = esmfuzz(&args);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("symlink"), "{}", ran.stderr);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep");
}

#[test]
fn embed_through_a_symlink_replaces_the_file_it_names_and_keeps_the_link() {
    let work = tempfile::tempdir().unwrap();
    let real = work.path().join("real.npy");
    std::fs::write(&real, "old").unwrap();
    let link = work.path().join("link.npy");
    symlink(&real, &link).unwrap();
    let fasta = fasta(work.path());
    let tiny = tiny();
    let ran = esmfuzz(&[
        "embed",
        "--weights",
        s(&tiny),
        "--fasta",
        s(&fasta),
        "--out",
        s(&link),
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    let (shape, _) = common::read_npy_f32(&real);
    assert_eq!(shape, [2, 32]);
}

#[test]
fn a_device_node_output_is_never_replaced_embed_refuses_it_and_reports_write_in_place() {
    let work = tempfile::tempdir().unwrap();
    let node = device_node(work.path(), "out.npy");
    let fasta = fasta(work.path());
    let tiny = tiny();
    let ran = esmfuzz(&[
        "embed",
        "--weights",
        s(&tiny),
        "--fasta",
        s(&fasta),
        "--out",
        s(&node),
    ]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("not a regular file"), "{}", ran.stderr);
    assert!(is_char_device(&node));
    // `cases` writes its FASTA and listing into device nodes in place.
    let listing = device_node(work.path(), "cases.json");
    let fasta_node = device_node(work.path(), "cases.fasta");
    let ran = esmfuzz(&[
        "cases",
        "--strata",
        "tiny",
        "--cases",
        "2",
        "--out",
        s(&fasta_node),
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(is_char_device(&fasta_node) && is_char_device(&listing));
}

#[test]
fn two_embed_runs_on_one_out_the_second_fails_and_the_first_s_rows_are_kept() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("x.npy");
    // The corpus four times over: seconds on the tiny model, while the second run starts.
    let corpus = std::fs::read_to_string(common::shared("corpus/uniprot_sprot196.fasta")).unwrap();
    let big = work.path().join("big.fasta");
    let mut text = String::new();
    for copy in 0..4 {
        text.push_str(&corpus.replace('>', &format!(">c{copy}_")));
    }
    std::fs::write(&big, text).unwrap();
    let small = fasta(work.path());
    let tiny = tiny();
    let first_args = [
        "embed",
        "--weights",
        s(&tiny),
        "--fasta",
        s(&big),
        "--out",
        s(&out),
    ];
    let first = Running::spawn(&first_args);
    let partial = work.path().join("x.npy.partial");
    let started = Instant::now();
    while !partial.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no partial file"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = esmfuzz(&[
        "embed",
        "--weights",
        s(&tiny),
        "--fasta",
        s(&small),
        "--out",
        s(&out),
    ]);
    let first = first.wait(&first_args);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(second.code, 2, "the second run: {}", second.stderr);
    assert!(
        second.stderr.contains("another esmfuzz run is writing"),
        "{}",
        second.stderr
    );
    let (shape, _) = common::read_npy_f32(&out);
    assert_eq!(shape, [4 * 196, 32], "the first run's rows");
}

#[test]
fn fuzz_refuses_a_non_empty_folder_that_holds_no_campaign() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("report.md"), "my notes").unwrap();
    std::fs::write(out.join("figure.svg"), "<svg/>").unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        let mut args = vec!["fuzz", "--max-stratum", "tiny", "--cases", "1", "--out"];
        args.push(s(&out));
        args.extend(extra);
        let ran = esmfuzz(&args);
        assert_eq!(ran.code, 2, "{extra:?}: {}", ran.stderr);
        assert!(ran.stderr.contains("holds no campaign"), "{}", ran.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        "my notes"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("figure.svg")).unwrap(),
        "<svg/>"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2, "nothing added");
}

#[test]
fn overwrite_keeps_a_fasta_input_in_the_folder_and_refuses_a_campaign_without_a_manifest() {
    let work = tempfile::tempdir().unwrap();
    let regressions = work.path().join("regressions");
    std::fs::create_dir(&regressions).unwrap();
    let out = work.path().join("campaign");
    let tiny = tiny();
    let base = |extra: &[&str]| -> Ran {
        let mut args = vec![
            "fuzz",
            "--weights",
            s(&tiny),
            "--max-stratum",
            "tiny",
            "--cases",
            "1",
            "--seed",
            "3",
            "--regressions",
            s(&regressions),
        ];
        args.extend(extra);
        esmfuzz(&args)
    };
    let ran = base(&["--out", s(&out)]);
    assert!(matches!(ran.code, 0 | 1), "{}", ran.stderr);
    // The user's proteins kept in the campaign folder, named like a counterexample.
    let input = out.join("stratum-mine.fasta");
    std::fs::write(&input, ">mine\nMKTAYIAKQR\n").unwrap();
    let ran = base(&["--out", s(&out), "--overwrite", "--fasta", s(&input)]);
    assert!(matches!(ran.code, 0 | 1), "{}", ran.stderr);
    assert_eq!(
        std::fs::read_to_string(&input).unwrap(),
        ">mine\nMKTAYIAKQR\n"
    );
    // A campaign of an esmfuzz that kept no manifest: refused, nothing removed.
    std::fs::remove_file(out.join(".esmfuzz-manifest")).unwrap();
    let names = |dir: &Path| {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    let before = names(&out);
    let ran = base(&["--out", s(&out), "--overwrite", "--fasta", s(&input)]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("without a manifest"), "{}", ran.stderr);
    assert_eq!(names(&out), before);
}

#[test]
fn check_report_and_cases_out_cannot_replace_a_campaign_s_report() {
    let work = tempfile::tempdir().unwrap();
    let camp = work.path().join("campaign");
    std::fs::create_dir(&camp).unwrap();
    for (name, text) in [
        ("report.json", "{\"campaign\": true}"),
        ("cases.jsonl", ""),
        (".esmfuzz-manifest", "report.json\ncases.jsonl\n"),
    ] {
        std::fs::write(camp.join(name), text).unwrap();
    }
    let ran = esmfuzz(&[
        "cases",
        "--cases",
        "1",
        "--out",
        s(&camp.join("report.fasta")),
    ]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("file of the campaign"),
        "{}",
        ran.stderr
    );
    let fasta = fasta(work.path());
    let npy = work.path().join("theirs.npy");
    std::fs::write(&npy, "x").unwrap();
    let ran = esmfuzz(&[
        "check",
        "--fasta",
        s(&fasta),
        "--embeddings",
        s(&npy),
        "--report",
        s(&camp.join("report.json")),
    ]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("file of the campaign"),
        "{}",
        ran.stderr
    );
    assert_eq!(
        std::fs::read_to_string(camp.join("report.json")).unwrap(),
        "{\"campaign\": true}"
    );
    assert!(!camp.join("report.fasta").exists());
}

#[test]
fn a_symlinked_campaign_lock_is_refused_and_its_target_kept() {
    let work = tempfile::tempdir().unwrap();
    let precious = work.path().join("precious.txt");
    std::fs::write(&precious, "keep").unwrap();
    let out = work.path().join("campaign");
    std::fs::create_dir(&out).unwrap();
    symlink(&precious, out.join(".esmfuzz.lock")).unwrap();
    let ran = esmfuzz(&[
        "fuzz",
        "--max-stratum",
        "tiny",
        "--cases",
        "1",
        "--out",
        s(&out),
    ]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("symlink"), "{}", ran.stderr);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep");
}

#[test]
fn an_interrupted_synth_leaves_no_checkpoint_under_its_final_name() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("synth");
    let args = ["synth", "--preset", "esm2_t33_650M_UR50D", "--out", s(&out)];
    let child = Running::spawn(&args);
    let partial = out.join("model.safetensors.partial");
    let started = Instant::now();
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < (1 << 20) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no partial file"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let ran = child.wait(&args);
    assert_ne!(ran.code, 0, "{}", ran.stderr);
    assert!(!out.join("model.safetensors").exists());
    assert!(!out.join("config.json").exists());
}

/// `power` on the tiny fixture model, one family, `extra` after.
fn power_args<'a>(tiny: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "power",
        "--weights",
        s(tiny),
        "--precision",
        "f32",
        "--families",
        "stratum-tiny",
        "--out",
        s(out),
    ];
    args.extend(extra);
    args
}

#[test]
fn power_checks_its_arguments_and_outputs_before_creating_out() {
    let work = tempfile::tempdir().unwrap();
    let tiny = tiny();
    let out = work.path().join("power");
    let ran = esmfuzz(&power_args(&tiny, &out, &["--layer", "9"]));
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("layer 9 does not exist"),
        "{}",
        ran.stderr
    );
    assert!(
        !out.exists(),
        "--out created before the arguments were checked"
    );
    // An output that cannot be written is found before the work, not after it.
    std::fs::create_dir_all(out.join("detection.svg")).unwrap();
    let started = Instant::now();
    let ran = esmfuzz(&power_args(
        &tiny,
        &out,
        &["--trials", "50", "--counts", "64"],
    ));
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("detection.svg"), "{}", ran.stderr);
    assert!(!out.join("power.json").exists());
    assert!(started.elapsed() < Duration::from_secs(10), "it ran first");
}

#[test]
fn power_writes_as_it_goes_and_a_signal_leaves_a_report_marked_incomplete() {
    let work = tempfile::tempdir().unwrap();
    let tiny = tiny();
    let out = work.path().join("power");
    let args = power_args(
        &tiny,
        &out,
        &[
            "--sizes",
            "1e-4,1e-3,1e-2,3e-2,1e-1,3e-1,1,3",
            "--trials",
            "40",
            "--counts",
            "100",
        ],
    );
    let child = Running::spawn(&args);
    let json = out.join("power.json");
    let done = |path: &Path| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["cells_done"].as_u64())
            .unwrap_or(0)
    };
    let started = Instant::now();
    while done(&json) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no cell written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let ran = child.wait(&args);
    assert_ne!(ran.code, 0, "{}", ran.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["complete"], false);
    assert!(report["cells_done"].as_u64().unwrap() >= 1);
    assert!(
        report["cells_done"].as_u64() < report["cells_planned"].as_u64(),
        "{report}"
    );
    let md = std::fs::read_to_string(out.join("power.md")).unwrap();
    assert!(md.starts_with("**incomplete:"), "{md}");
}
