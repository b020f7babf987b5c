//! `fuzz --deployment` against real child processes and servers (issue 26): our own
//! `esmfuzz serve`, faithful and with deliberate faults, over stdin/stdout, HTTP protocol 1
//! and the Open Inference Protocol; and hostile deployments (`tests/fixtures/
//! hostile_deployment.py`, a proxy to `esmfuzz serve` that misbehaves on batches holding a W)
//! that must never break the harness. Servers are waited for by their readiness line, never
//! by a fixed sleep; every child is killed and reaped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::binary::{self, Ran, s};
use super::common;

/// `esmfuzz serve` on the shared weights with `extra` flags, as a command line.
fn serve_command(extra: &str) -> String {
    format!(
        "{} serve --weights {} {extra}",
        common::esmfuzz_bin().display(),
        common::weights_path().display()
    )
}

/// A temporary campaign: its folder (not yet created) and a regressions folder.
struct Campaign {
    _dir: tempfile::TempDir,
    out: PathBuf,
    regressions: PathBuf,
}

impl Campaign {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let regressions = dir.path().join("regressions");
        std::fs::create_dir(&regressions).expect("the regressions folder");
        Self {
            out: dir.path().join("out"),
            regressions,
            _dir: dir,
        }
    }

    /// `fuzz --deployment DEPLOYMENT` with `extra` arguments into a fresh `--out` named
    /// `run` inside the campaign's folder.
    fn fuzz(&self, run: &str, deployment: &str, extra: &[&str]) -> (Ran, PathBuf) {
        let out = self.out.with_file_name(run);
        let weights = common::weights_path();
        let mut args = vec![
            "fuzz",
            "--weights",
            s(&weights),
            "--deployment",
            deployment,
            "--regressions",
            s(&self.regressions),
            "--out",
            s(&out),
        ];
        args.extend(extra);
        (binary::run(&args, &[], None), out)
    }
}

fn report(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// The failed verdicts' property names of every family in a report.
fn failed_properties(report: &Value) -> Vec<String> {
    report["families"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| {
            f["failure"]["verdicts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v["property"].as_str().map(String::from))
        .collect()
}

/// Files saved under `regressions` for a deployment, by name.
fn saved(regressions: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(regressions.join("counterexamples"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn fuzz_against_esmfuzz_serve_holds_with_no_degradation() {
    let c = Campaign::new();
    let (ran, out) = c.fuzz(
        "held",
        &serve_command("--precision f16"),
        &["--cases", "3", "--max-stratum", "short", "--seed", "11"],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let r = report(&out);
    assert_eq!(r["complete"], true);
    let families = r["families"].as_array().expect("families");
    let names: Vec<&str> = families
        .iter()
        .filter_map(|f| f["family"].as_str())
        .collect();
    for expected in [
        "stratum-tiny",
        "stratum-short",
        "mixed-up-to-short",
        "isolation-up-to-short",
        "order-up-to-short",
        "determinism-up-to-short",
        "rare-tokens-up-to-short",
    ] {
        assert!(names.contains(&expected), "{expected} ran: {names:?}");
    }
    assert!(
        families.iter().all(|f| f["runs"].as_u64() >= Some(3)),
        "every family ran its cases"
    );
    let d = &r["deployment"];
    assert_eq!(d["handshake"]["dtype"], "float16");
    assert_eq!(
        d["bound_of"], "f16",
        "the default bound follows the handshake's dtype"
    );
    assert!(d["calls"]["calls"].as_u64() > Some(20), "{d}");
    assert!(
        d["identity"][0]
            .as_str()
            .is_some_and(|l| l.contains("0.99")),
        "{d}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(
        md.contains("## Deployment under test") && md.contains("Not judged"),
        "{md}"
    );
    // The head families are named as not run: a deployment returns pooled rows only.
    let skipped: Vec<&str> = r["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .filter(|s| {
            s["reason"]
                .as_str()
                .is_some_and(|r| r.contains("pooled rows only"))
        })
        .filter_map(|s| s["family"].as_str())
        .collect();
    assert_eq!(skipped, ["classifier-up-to-short", "contacts-up-to-short"]);
    assert!(md.contains("**Not run**"), "{md}");
    assert!(
        saved(&c.regressions).is_empty(),
        "nothing failed, nothing saved"
    );
}

#[test]
fn the_twin_judge_holds_a_faithful_f16_deployment_to_our_own_f16_error() {
    let c = Campaign::new();
    let (ran, out) = c.fuzz(
        "twin",
        &serve_command("--precision f16"),
        &[
            "--families",
            "stratum-short",
            "--max-stratum",
            "short",
            "--cases",
            "3",
            "--seed",
            "11",
            "--twin-judge",
        ],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let r = report(&out);
    assert_eq!(r["deployment"]["twin_judge"], true);
    let judged = r["families"][0]["metrics"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["property"] == "twin-error-ratio"));
    assert!(
        judged,
        "every case judged against our own f16: {}",
        r["families"][0]
    );
}

/// A fault in a deployment: a campaign fails on `families` with `property`, shrinks, saves
/// the counterexample under the deployment's name, and the next campaign replays it before
/// it generates anything and fails on it; the fault-free deployment passes the replay.
fn fails_shrinks_saves_and_replays(
    faulty: &str,
    fixed: &str,
    families: &str,
    cases: &str,
    extra: &[&str],
    property: &str,
) -> (Campaign, Value) {
    let c = Campaign::new();
    let mut args = vec![
        "--families",
        families,
        "--seed",
        "5",
        "--shrink-calls",
        "256",
        "--cases",
        cases,
    ];
    args.extend(extra);
    let (ran, out) = c.fuzz("found", faulty, &args);
    assert_eq!(ran.code, 1, "the fault is found: {}", ran.stderr);
    let found = report(&out);
    assert!(
        failed_properties(&found).iter().any(|p| p == property),
        "{property} caught it: {:?}",
        failed_properties(&found)
    );
    let files = saved(&c.regressions);
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("deployment=") && f.ends_with(&format!("__{families}.fasta"))),
        "the shrunk case is saved under the deployment's name: {files:?}"
    );
    // The next run replays it first: its first judged case is the saved one, and it fails.
    let mut again = vec!["--families", families, "--seed", "6", "--cases", "1"];
    again.extend(extra);
    let (ran, out) = c.fuzz("replayed", faulty, &again);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    let replay_at = ran
        .stderr
        .find("replay FAIL")
        .expect("a failed replay is printed");
    let first_case = ran.stderr.find(" run 1 at ").unwrap_or(usize::MAX);
    assert!(
        replay_at < first_case,
        "replayed before any generated case:\n{}",
        ran.stderr
    );
    let replayed = report(&out);
    assert_eq!(replayed["replayed_counterexamples"][0]["passed"], false);
    // The deployment fixed: the saved case passes.
    let (ran, _) = c.fuzz("fixed", fixed, &again);
    assert_eq!(
        ran.code, 0,
        "the shrunk case passes on the fault-free deployment: {}",
        ran.stderr
    );
    (c, found)
}

#[test]
fn a_layer_scaled_by_1_1_at_f16_fails_shrinks_saves_and_replays_first() {
    fails_shrinks_saves_and_replays(
        &serve_command("--precision f16 --degrade scale-layer-output=0.1"),
        &serve_command("--precision f16"),
        "stratum-short",
        "8",
        &["--max-stratum", "short"],
        "pooled-relative-l2",
    );
}

#[test]
fn a_batch_mate_leak_in_packed_serve_fails_shrinks_saves_and_replays_first() {
    fails_shrinks_saves_and_replays(
        &serve_command("--precision f32 --packed --degrade attention-leak"),
        &serve_command("--precision f32 --packed"),
        "isolation-up-to-short",
        "8",
        &["--max-stratum", "short", "--bound-of", "f32"],
        "alone-vs-batch",
    );
}

#[test]
fn a_residue_pattern_fault_shrinks_to_at_most_twice_the_shortest_trigger() {
    let (_c, found) = fails_shrinks_saves_and_replays(
        &serve_command("--precision f32 --degrade residue-pattern=LL"),
        &serve_command("--precision f32"),
        "mixed-up-to-short",
        "16",
        &["--max-stratum", "short", "--bound-of", "f32"],
        "pooled-relative-l2",
    );
    let fasta = found["families"][0]["failure"]["minimal_fasta"]
        .as_str()
        .expect("a shrunk counterexample");
    let sequences: Vec<&str> = fasta.lines().filter(|l| !l.starts_with('>')).collect();
    let triggering: Vec<&str> = sequences
        .iter()
        .copied()
        .filter(|s| s.contains("LL"))
        .collect();
    assert!(
        !triggering.is_empty(),
        "the shrunk batch holds the pattern: {fasta}"
    );
    // The shortest protein that triggers it is LL itself: 2 residues.
    assert!(
        triggering.iter().all(|s| s.len() <= 4),
        "shrunk to at most 2x the shortest trigger: {fasta}"
    );
}

/// `esmfuzz serve --listen 127.0.0.1:0` with `extra` flags: the child (killed and reaped
/// when dropped) and its address, once it has printed it (its readiness line).
struct Server {
    _child: Guarded,
    address: String,
}

impl Server {
    fn start(extra: &str) -> Self {
        let weights = common::weights_path();
        let mut child = Guarded(
            Command::new(common::esmfuzz_bin())
                .args(["serve", "--weights", s(&weights), "--listen", "127.0.0.1:0"])
                .args(extra.split_whitespace())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("esmfuzz serve starts"),
        );
        let address = child
            .address()
            .expect("esmfuzz serve --listen printed its address");
        Self {
            _child: child,
            address,
        }
    }
}

/// The campaign that finds a layer scaled by 1.1 behind a server: stratum-short, f16 bounds.
const FIND_SCALED_LAYER: &[&str] = &[
    "--families",
    "stratum-short",
    "--max-stratum",
    "short",
    "--cases",
    "6",
    "--seed",
    "5",
    "--bound-of",
    "f16",
];

#[test]
fn a_fault_is_found_over_http_protocol_1_and_over_the_open_inference_protocol() {
    let server = Server::start("--precision f16 --degrade scale-layer-output=0.1");
    for (run, deployment) in [
        ("http", format!("http://{}/", server.address)),
        ("oip", format!("oip://{}/esm2", server.address)),
    ] {
        let c = Campaign::new();
        let (ran, out) = c.fuzz(run, &deployment, FIND_SCALED_LAYER);
        assert_eq!(ran.code, 1, "{run}: {}", ran.stderr);
        let r = report(&out);
        assert_eq!(r["deployment"]["transport"], run);
        assert!(
            failed_properties(&r).contains(&"pooled-relative-l2".to_string()),
            "{run}"
        );
        if run == "oip" {
            assert!(
                r["deployment"]["handshake"]["oip_metadata"]["outputs"].is_array(),
                "metadata recorded"
            );
            assert!(
                r["deployment"]["notes"][0]
                    .as_str()
                    .is_some_and(|n| n.contains("regroup"))
            );
        }
    }
}

/// A hostile deployment (`mode` of the fixture) proxying `esmfuzz serve`; its pids (proxy
/// and serve) are written to `pids` so the test can see they are gone.
fn hostile(mode: &str, pids: &Path) -> String {
    let fixture = common::repo().join("tests/fixtures/hostile_deployment.py");
    format!(
        "python3 {} {mode} {} -- {}",
        fixture.display(),
        pids.display(),
        serve_command("--precision f32")
    )
}

/// Every pid listed in `pids` has exited (and been reaped: no zombie left).
fn assert_all_gone(pids: &Path) {
    let text = std::fs::read_to_string(pids).unwrap_or_default();
    let until = Instant::now() + Duration::from_secs(15);
    for pid in text.split_whitespace() {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        while proc.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !proc.exists(),
            "process {pid} outlived the run (or is a zombie)"
        );
    }
}

/// Runs the hostile `mode` on a small campaign and returns the run and its report.
fn run_hostile(mode: &str, extra: &[&str]) -> (Ran, Option<Value>) {
    let c = Campaign::new();
    let pids = c.regressions.with_file_name("pids");
    let mut args = vec![
        "--families",
        "mixed-up-to-short",
        "--max-stratum",
        "short",
        "--cases",
        "4",
        "--seed",
        "3",
        "--bound-of",
        "f32",
        "--shrink-calls",
        "6",
        "--call-timeout",
        "2",
    ];
    args.extend(extra);
    let (ran, out) = c.fuzz(mode, &hostile(mode, &pids), &args);
    assert!(!ran.stderr.contains("panicked"), "{mode}: {}", ran.stderr);
    assert_all_gone(&pids);
    let report = out.join("report.json").exists().then(|| report(&out));
    (ran, report)
}

#[test]
fn a_deployment_that_crashes_hangs_or_answers_wrongly_gets_a_verdict_naming_the_call() {
    for (mode, what) in [
        ("crash", "exited"),
        ("hang", "no answer within"),
        ("wrong-id", "has id"),
        ("rows", "pooled rows for"),
        ("width", "values, --weights' hidden size is 320"),
        ("garbage", "not protocol 1"),
        ("stray", "not protocol 1"),
        ("oversize", "over"),
    ] {
        let extra: &[&str] = if mode == "oversize" {
            &["--max-response-bytes", "1000000"]
        } else {
            &[]
        };
        let (ran, report) = run_hostile(mode, extra);
        assert_eq!(
            ran.code, 1,
            "{mode}: a case the deployment failed is exit 1: {}",
            ran.stderr
        );
        let report = report.expect("a report");
        let failure = &report["families"][0]["failure"];
        let message = failure["verdicts"][0]["detail"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            failure["verdicts"][0]["property"], "answered",
            "{mode}: {failure}"
        );
        assert!(
            message.contains("call ") && message.contains(what),
            "{mode}: {message}"
        );
        assert!(
            failure["minimal_fasta"]
                .as_str()
                .is_some_and(|f| f.contains('W')),
            "{mode}: shrunk to a case holding the trigger"
        );
        if mode == "crash" {
            assert!(
                message.contains("hostile crash"),
                "the stderr tail is quoted: {message}"
            );
        }
    }
}

#[test]
fn non_finite_rows_from_python_json_are_judged_non_finite() {
    let (ran, report) = run_hostile("nan", &[]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(failed_properties(&report.expect("a report")).contains(&"non-finite".to_string()));
}

#[test]
fn answers_that_differ_by_a_millionth_between_two_identical_requests_fail_determinism() {
    let c = Campaign::new();
    let pids = c.regressions.with_file_name("pids");
    let (ran, out) = c.fuzz(
        "jitter",
        &hostile("jitter", &pids),
        &[
            "--families",
            "determinism-up-to-short",
            "--max-stratum",
            "short",
            "--cases",
            "8",
            "--seed",
            "3",
            "--bound-of",
            "f32",
            "--shrink-calls",
            "16",
        ],
    );
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(failed_properties(&report(&out)).contains(&"deterministic".to_string()));
    assert_all_gone(&pids);
}

#[test]
fn a_deployment_that_answers_nothing_three_times_stops_the_run_incomplete() {
    let (ran, report) = run_hostile("always-crash", &[]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("gave up"), "{}", ran.stderr);
    let report = report.expect("the report stays");
    assert_eq!(report["complete"], false);
    assert!(
        report["deployment"]["calls"]["failures"]
            .as_array()
            .is_some_and(|f| f.len() >= 3)
    );
}

#[test]
fn a_handshake_that_disagrees_with_the_weights_or_another_pooling_stops_before_fuzzing() {
    let (ran, _) = run_hostile("handshake-hidden", &[]);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("does not run these weights"),
        "{}",
        ran.stderr
    );
    let c = Campaign::new();
    let (ran, out) = c.fuzz(
        "bos",
        &serve_command("--precision f32 --pooling bos"),
        &["--cases", "1"],
    );
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("identity probe") && ran.stderr.contains("bos"),
        "{}",
        ran.stderr
    );
    assert!(!out.join("cases.jsonl").exists(), "nothing was fuzzed");
}

#[test]
fn sigint_during_a_hung_call_stops_at_once_incomplete_and_leaves_no_child() {
    let c = Campaign::new();
    let pids = c.regressions.with_file_name("pids");
    let out = c.out.clone();
    let weights = common::weights_path();
    let deployment = hostile("hang", &pids);
    let args = [
        "fuzz",
        "--weights",
        s(&weights),
        "--deployment",
        &deployment,
        "--regressions",
        s(&c.regressions),
        "--out",
        s(&out),
        "--families",
        "mixed-up-to-short",
        "--max-stratum",
        "short",
        "--cases",
        "8",
        "--seed",
        "3",
        "--bound-of",
        "f32",
        "--call-timeout",
        "600",
    ];
    let child = binary::spawn(&args);
    // Ready when the deployment says it is hanging.
    let log = out.join("deployment-stderr.log");
    let until = Instant::now() + binary::HANG;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("hostile hang")
    {
        assert!(Instant::now() < until, "the hang never came");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Instant::now();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let ran = binary::wait(child, &args);
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "stopped within seconds, not at the call timeout"
    );
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert_eq!(report(&out)["complete"], false);
    assert_all_gone(&pids);
}

/// A child started with piped stdout, killed and reaped when dropped; [`Guarded::address`]
/// waits for its `listening on http://ADDR` line.
struct Guarded(Child);

impl Guarded {
    fn address(&mut self) -> Option<String> {
        let stdout = self.0.stdout.take()?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(a.to_string());
                }
            }
        });
        rx.recv_timeout(binary::HANG).ok()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SIGTERM first: the forwarder stops MLServer's workers on it.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_third_party_oip_server_mlserver_is_fuzzed_through_oip() {
    // Installed by the test's script; skipped, saying why, only where it cannot install.
    let install = Command::new("bash")
        .arg(common::repo().join("scripts/install_mlserver.sh"))
        .current_dir(common::repo())
        .stderr(Stdio::piped())
        .output()
        .expect("bash runs");
    if !install.status.success() {
        eprintln!(
            "SKIPPED: MLServer could not be installed here: {}",
            String::from_utf8_lossy(&install.stderr)
        );
        return;
    }
    let python = common::repo().join(String::from_utf8_lossy(&install.stdout).trim());
    let server = Server::start("--precision f16 --degrade scale-layer-output=0.1");
    let mut mlserver = Guarded(
        Command::new(&python)
            .arg(common::repo().join("scripts/oip_forwarder.py"))
            .args([
                "--forward",
                &format!("http://{}/", server.address),
                "--port",
                "0",
                "--name",
                "esm2",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the MLServer launcher starts"),
    );
    let address = mlserver
        .address()
        .expect("MLServer printed its address once ready");
    let c = Campaign::new();
    let (ran, out) = c.fuzz(
        "mlserver",
        &format!("oip://{address}/esm2"),
        FIND_SCALED_LAYER,
    );
    assert_eq!(
        ran.code, 1,
        "the fault behind MLServer is found: {}",
        ran.stderr
    );
    let r = report(&out);
    assert_eq!(r["deployment"]["transport"], "oip");
    assert!(
        r["deployment"]["handshake"]["oip_metadata"]["platform"].is_string(),
        "{}",
        r["deployment"]
    );
    assert!(failed_properties(&r).contains(&"pooled-relative-l2".to_string()));
}

/// `power --deployment DEPLOYMENT` on stratum-short, 2 trials of 3 cases, a layer scaled and
/// the weights perturbed by 1e-2, with `extra` flags: power.json.
fn power_on(deployment: &str, extra: &[&str]) -> (Value, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = dir.path().join("power");
    let weights = common::weights_path();
    let mut args = vec![
        "power",
        "--weights",
        s(&weights),
        "--deployment",
        deployment,
        "--families",
        "stratum-short",
        "--degradations",
        "scale-layer-output,perturb-weights",
        "--sizes",
        "1e-2",
        "--trials",
        "2",
        "--counts",
        "3",
        "--out",
        s(&out),
    ];
    args.extend(extra);
    let ran = binary::run(&args, &[], None);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let text = std::fs::read_to_string(out.join("power.json")).expect("power.json");
    let json: Value = serde_json::from_str(&text).expect("power.json is JSON");
    assert_eq!(json["complete"], true);
    (json, out, dir)
}

/// The report of `judge` in a `power --deployment` power.json.
fn judge_report<'a>(json: &'a Value, judge: &str) -> &'a Value {
    json["reports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["judge"] == judge)
        .unwrap_or_else(|| panic!("no {judge} report in {json}"))
}

/// Detection at the one count of a report's `what` cells (baseline: the fault-free
/// deployment; cells: serve scaled, then serve perturbed, a fault that changes weights and
/// that serve builds from whole weights).
fn detection(r: &Value, what: &str) -> f64 {
    let cells = &r[what];
    let expected = if what == "baseline" { 1 } else { 2 };
    assert_eq!(
        cells.as_array().map(Vec::len),
        Some(expected),
        "{what}: {r}"
    );
    cells[0]["detection"][0][1].as_f64().expect("a detection")
}

/// `power --deployment`: one set of cases judged on a fault-free deployment (false alarms)
/// and on `esmfuzz serve` with a degradation (detections), by the bound and by the twin
/// judge from one call per case. A layer scaled by 1.01 at f16 hides inside f16's fixed
/// bound (power-cpu: 1e-1 is the smallest the bound detects) and stands out against our own
/// f16 error case by case; a faithful f16 deployment raises no alarm under either judge.
#[test]
fn power_against_a_deployment_measures_false_alarms_and_detection_for_both_judges() {
    let (json, out, _dir) = power_on(&serve_command("--precision f16"), &[]);
    for name in ["bound", "bound-and-twin"] {
        let r = judge_report(&json, name);
        assert_eq!(detection(r, "baseline"), 0.0, "{name}: a false alarm: {r}");
        assert!(
            r["baseline"][0]["cases_judged"].as_u64() == Some(6),
            "{name}: 2 trials x 3 cases judged on the fault-free deployment: {r}"
        );
    }
    assert_eq!(
        detection(judge_report(&json, "bound-and-twin"), "cells"),
        1.0
    );
    assert_eq!(detection(judge_report(&json, "bound"), "cells"), 0.0);
    let md = std::fs::read_to_string(out.join("power.md")).expect("power.md");
    assert!(md.contains("false alarms"), "{md}");
    assert!(out.join("detection-bound-and-twin.svg").is_file());
}

/// The twin is pooled as the deployment and the oracle pool: with `--pooling bos`, a twin
/// pooled over residues would sit far from the oracle's BOS rows and excuse any error, so a
/// layer scaled by 1.01 (inside f16's bound) would pass.
#[test]
fn the_twin_judge_pools_our_twin_as_the_deployment_pools() {
    let c = Campaign::new();
    let (ran, out) = c.fuzz(
        "twin-bos",
        &serve_command("--precision f16 --pooling bos --degrade scale-layer-output=1e-2"),
        &[
            "--pooling",
            "bos",
            "--twin-judge",
            "--families",
            "stratum-short",
            "--max-stratum",
            "short",
            "--cases",
            "4",
            "--seed",
            "11",
            "--shrink-calls",
            "4",
        ],
    );
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    let failed = failed_properties(&report(&out));
    assert!(failed.iter().any(|p| p == "twin-error-ratio"), "{failed:?}");
}

/// `serve --degrade leak-across-sequences` (power's name; packed) leaks, and the isolation
/// family sees it through a deployment: before `FaultSet::with`, serve merged power's faults
/// field by field and dropped this one, so the leak was silently absent.
#[test]
fn power_against_a_deployment_sees_a_leak_across_sequences_in_packed_serve() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = dir.path().join("power");
    let ran = binary::run(
        &[
            "power",
            "--weights",
            s(&common::weights_path()),
            "--deployment",
            &serve_command("--precision f16"),
            "--families",
            "isolation-up-to-short",
            "--degradations",
            "leak-across-sequences",
            "--trials",
            "2",
            "--counts",
            "4",
            "--out",
            s(&out),
        ],
        &[],
        None,
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let text = std::fs::read_to_string(out.join("power.json")).expect("power.json");
    let json: Value = serde_json::from_str(&text).expect("power.json is JSON");
    let bound = judge_report(&json, "bound");
    assert_eq!(bound["baseline"][0]["detection"][0][1], 0.0, "{bound}");
    assert_eq!(bound["cells"][0]["detection"][0][1], 1.0, "{bound}");
}

/// Shards of a deployment campaign merge into one report whose deployment section counts
/// every shard's calls (it kept the first shard's alone), and shards of two differently
/// named deployments are refused.
#[test]
fn merged_deployment_shards_count_every_shards_calls() {
    let c = Campaign::new();
    let serve = serve_command("--precision f16");
    let shard = |part: &str, name: &str| {
        let (ran, out) = c.fuzz(
            &format!("shard-{name}-{}", part.replace('/', "of")),
            &serve,
            &[
                "--families",
                "stratum-tiny,stratum-short",
                "--max-stratum",
                "short",
                "--cases",
                "2",
                "--seed",
                "5",
                "--shard",
                part,
                "--deployment-name",
                name,
            ],
        );
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        out
    };
    let (a, b) = (shard("0/2", "ours"), shard("1/2", "ours"));
    let calls = |out: &Path| {
        report(out)["deployment"]["calls"]["calls"]
            .as_u64()
            .unwrap()
    };
    let merged = c.out.with_file_name("merged");
    let ran = binary::run(&["merge", s(&a), s(&b), "--out", s(&merged)], &[], None);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(calls(&a) > 0 && calls(&b) > 0);
    assert_eq!(calls(&merged), calls(&a) + calls(&b));
    let other = shard("1/2", "theirs");
    let refused = c.out.with_file_name("refused");
    let ran = binary::run(
        &["merge", s(&a), s(&other), "--out", s(&refused)],
        &[],
        None,
    );
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("deployment"), "{}", ran.stderr);
}
