//! `esmfuzz fuzz`: a campaign of the property families against FP32 on any backend, saved
//! failures replayed first; `report.json` is rewritten as the campaign goes.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Write;
use std::num::NonZeroU32;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use serde::Serialize;

use esmfuzz::backend::BackendKind;
use esmfuzz::harness::campaign::{
    CampaignReport, CampaignSpec, InProcessRunner, Runner, Shard, run_campaign_with,
};
use esmfuzz::harness::cases::Models;
use esmfuzz::harness::driver::Observer;
use esmfuzz::harness::driver::RunOptions;
use esmfuzz::harness::family::{Family, HEADS_GROUP, HeadsOffered, Skipped};
use esmfuzz::harness::strategies::{GENERATOR_VERSION, Stratum};
use esmfuzz::harness::summary::FamilyResult;
use esmfuzz::harness::verdict::{Tolerances, Verdict, tightest};
use esmfuzz::input::{NormaliseOptions, Protein};
use esmfuzz::model::{ComputePlan, FaultSet, Fp32Places, ModelSpec};
use esmfuzz::named::Named;
use esmfuzz::with_backend;

use super::campaign_dir::{self, Claim};
use super::policy::{PolicyArgs, describe_policy};
use super::report::{FuzzReport, ModelSize, RunHeader, SavedReport, read_report};
use super::{ModelArgs, Outcome, named, read_proteins};

#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub fasta_limits: super::FastaLimitArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// New cases per family (at least 1; default 8, or with --resume the stopped
    /// campaign's).
    #[arg(long)]
    pub cases: Option<NonZeroU32>,
    /// Longest stratum to generate (one family per stratum, plus mixed, packed and
    /// isolation batches).
    #[arg(long, value_parser = named::<Stratum>(), default_value = "very-long")]
    pub max_stratum: Stratum,
    /// Generator seed (default: a fresh one, printed first and stored in report.json). The
    /// same seed, esmfuzz version and backend give the same cases and verdicts.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Folder of saved failures: `<policy>__<family>.txt` seeds and
    /// `counterexamples/<policy>__<family>.fasta`, replayed first; new failures are saved
    /// here. A folder given must exist (default: `proptest-regressions`, none when absent).
    #[arg(long)]
    pub regressions: Option<PathBuf>,
    /// Folder for report.json and report.md (rewritten after each family; "incomplete: k of
    /// n families" until the last), cases.jsonl (one line per judged case, as they come) and
    /// shrunk counterexamples. A folder holding a campaign is refused (see --resume,
    /// --overwrite); a running campaign locks its folder.
    #[arg(long, default_value = "fuzz-out")]
    pub out: PathBuf,
    /// Replace the campaign in --out (its reports, cases.jsonl, plots and counterexamples),
    /// once every input has been checked.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Also judge these FASTA files' records (e.g. a proteome, six-frame translations): every
    /// record once against FP32, in padded batches of similar lengths, as family
    /// `fasta-<file stem>`.
    #[arg(long, value_delimiter = ',')]
    pub fasta: Vec<PathBuf>,
    /// Run part I of N of the campaign (0-based; families split round-robin, each drawing the
    /// cases it would draw unsharded); `esmfuzz merge` joins the parts' folders.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Run the campaign as one shard per listed GPU of this host (each child process sees
    /// only its device through CUDA_VISIBLE_DEVICES), then merge the shards into --out.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["shard", "resume"])]
    pub devices: Vec<String>,
    /// Continue the stopped campaign whose report.json is in this folder (its seed, policy
    /// and case count; the weights, strata, FASTA files and shard must be the same):
    /// finished families are kept, the others run. Writes to that folder.
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Run only these families of the plan (names as report.md lists them, e.g.
    /// stratum-tiny,isolation-up-to-short; `heads` for every head family); the saved
    /// failures are still replayed first.
    #[arg(long, value_delimiter = ',')]
    pub families: Vec<String>,
    #[command(flatten)]
    pub deployment: super::fuzz_deployment::DeploymentArgs,
}

/// `plan` and `skipped` (the families of the plan the subject cannot run) restricted to the
/// families `--families` names (all when it names none; `heads` names every head family). A
/// name not in the plan is an error listing the plan; names that select only skipped
/// families are an error giving each one's reason.
fn select_families(
    plan: Vec<Family>,
    skipped: Vec<Skipped>,
    names: &[String],
) -> Result<(Vec<Family>, Vec<Skipped>)> {
    if names.is_empty() {
        return Ok((plan, skipped));
    }
    let known: Vec<String> = plan
        .iter()
        .map(Family::name)
        .chain(skipped.iter().map(|s| s.family.clone()))
        .collect();
    if let Some(unknown) = names
        .iter()
        .find(|n| *n != HEADS_GROUP && !known.contains(n))
    {
        bail!(
            "--families: '{unknown}' is not a family of this campaign (with this --max-stratum): {}, \
             or {HEADS_GROUP} (every head family)",
            known.join(", ")
        );
    }
    let selects = |family: &Family| names.iter().any(|n| family.selected_by(n));
    let families: Vec<Family> = plan.into_iter().filter(selects).collect();
    let skipped: Vec<Skipped> = skipped
        .into_iter()
        .filter(|s| s.family.parse::<Family>().is_ok_and(|f| selects(&f)))
        .collect();
    if families.is_empty() {
        bail!(
            "--families {}: every family it names is skipped in this campaign: {}",
            names.join(","),
            skipped
                .iter()
                .map(Skipped::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok((families, skipped))
}

/// sha256 of a file, read in 8 MiB pieces.
pub(super) fn sha256_of(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 8 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl FuzzArgs {
    /// The command line of one shard of this campaign (`--devices`): these arguments with
    /// the shard's seed, part and output folder, and without `--devices`.
    fn shard_args(&self, seed: u64, shard: Shard, out: &Path) -> Vec<OsString> {
        // Every field named: a new flag that is not passed on does not compile.
        let Self {
            model,
            fasta_limits,
            policy,
            cases,
            max_stratum,
            seed: _,
            regressions,
            out: _,
            overwrite,
            fasta,
            shard: _,
            devices: _,
            resume: _,
            families,
            deployment: _,
        } = self;
        let mut args = vec![OsString::from("fuzz")];
        model.to_args(&mut args);
        fasta_limits.to_args(&mut args);
        policy.to_args(&mut args);
        if let Some(cases) = cases {
            args.extend(["--cases", &cases.to_string()].map(OsString::from));
        }
        args.extend(["--max-stratum", Named::name(*max_stratum)].map(OsString::from));
        args.extend(["--seed", &seed.to_string()].map(OsString::from));
        if let Some(regressions) = regressions {
            args.push("--regressions".into());
            args.push(regressions.into());
        }
        if *overwrite {
            args.push("--overwrite".into());
        }
        for path in fasta {
            args.push("--fasta".into());
            args.push(path.into());
        }
        if !families.is_empty() {
            args.extend(["--families", &families.join(",")].map(OsString::from));
        }
        args.extend(["--shard", &format!("{}/{}", shard.index, shard.count)].map(OsString::from));
        args.push("--out".into());
        args.push(out.into());
        args
    }
}

/// `fuzz --devices`: one child `esmfuzz fuzz --shard i/N` per device, then `merge`.
fn run_on_devices(args: &FuzzArgs) -> Result<Outcome> {
    if args.model.backend != BackendKind::Cuda {
        bail!(
            "--devices runs one shard per GPU and needs --backend cuda (on the {} backend it \
             would run every shard on the same device); use --shard I/N for parts run elsewhere",
            args.model.backend
        );
    }
    let claim = if args.overwrite {
        Claim::Overwrite
    } else {
        Claim::Merge
    };
    campaign_dir::check(&args.out, claim)?;
    args.regressions_dir()?;
    let seed = args.seed.unwrap_or_else(fresh_seed);
    eprintln!("seed: {seed} (rerun with --seed {seed})");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let exe = std::env::current_exe().context("finding the esmfuzz executable")?;
    // Installed before any child starts: a Ctrl-C is forwarded to the shards, not lost.
    let signals = Arc::new(AtomicUsize::new(0));
    forward_signals(&signals)?;
    let count = args.devices.len();
    let shard_dirs: Vec<PathBuf> = (0..count)
        .map(|i| args.out.join(format!("shard-{i}")))
        .collect();
    let mut children: Vec<(String, std::process::Child)> = Vec::with_capacity(count);
    for (i, (device, dir)) in args.devices.iter().zip(&shard_dirs).enumerate() {
        let shard = Shard { index: i, count };
        // A process group of its own: a terminal's Ctrl-C reaches the parent only, which
        // forwards it once per signal (a second stops the shards at once).
        let started = std::process::Command::new(&exe)
            .args(args.shard_args(seed, shard, dir))
            .env("CUDA_VISIBLE_DEVICES", device)
            .process_group(0)
            .spawn();
        match started {
            Ok(child) => children.push((device.clone(), child)),
            Err(e) => {
                // The shards already started are stopped and waited for, not left running.
                signals.fetch_add(1, Ordering::SeqCst);
                let _ = wait_for_shards(children, &signals);
                return Err(e).with_context(|| format!("starting the shard for device {device}"));
            }
        }
    }
    if wait_for_shards(children, &signals)? == ShardsEnd::Stopped {
        let resume: Vec<String> = shard_dirs
            .iter()
            .map(|d| format!("esmfuzz fuzz --resume {} ...", d.display()))
            .collect();
        bail!(
            "stopped by a signal: every shard was told to stop and has ended; the campaign is \
             incomplete and {} holds no merged report (each shard's report says incomplete). \
             Continue each shard with the same arguments ({}), then `esmfuzz merge {} --out {}`",
            args.out.display(),
            resume.join("; "),
            shard_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            args.out.display()
        );
    }
    super::merge::run(super::merge::MergeArgs {
        shards: shard_dirs,
        out: args.out.clone(),
        overwrite: args.overwrite,
    })
}

/// Counts SIGINT and SIGTERM in the `--devices` parent; [`wait_for_shards`] forwards each to
/// the shards (which run in their own process group and get no terminal signal themselves).
fn forward_signals(signals: &Arc<AtomicUsize>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM] {
        let signals = Arc::clone(signals);
        // SAFETY: the handler only increments an atomic: async-signal-safe.
        unsafe {
            signal_hook::low_level::register(signal, move || {
                signals.fetch_add(1, Ordering::SeqCst);
            })
        }
        .context("installing the SIGINT/SIGTERM handlers")?;
    }
    Ok(())
}

/// A seed for a campaign nobody seeded: the clock's nanoseconds mixed with the process id.
pub(super) fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Shows each model run on the progress bar (or as a log line when stderr is no terminal:
/// logs of long unattended runs, e.g. on the GPU machine, show progress) with the largest
/// fraction of a tolerance used so far, and streams each judged case to cases.jsonl.
struct ProgressObserver {
    bar: ProgressBar,
    started: Instant,
    worst_used: f64,
    lines: std::io::BufWriter<std::fs::File>,
    write_error: Option<std::io::Error>,
    /// Set by SIGINT or SIGTERM ([`stop_on_signals`]).
    stop: Arc<AtomicBool>,
}

/// One line of cases.jsonl.
#[derive(Serialize)]
struct CaseLine<'a> {
    family: String,
    run: usize,
    lengths: Vec<usize>,
    passed: bool,
    tightest: Option<&'a Verdict>,
}

impl Observer for ProgressObserver {
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn case_started(&mut self, family: &str, run: usize, proteins: &[Protein]) {
        let lens: Vec<usize> = proteins.iter().map(|p| p.residues.len()).collect();
        let msg = format!(
            "{family}: run {run} at {:.1} s, lengths {lens:?}; worst so far {:.1}% of a tolerance",
            self.started.elapsed().as_secs_f64(),
            100.0 * self.worst_used
        );
        if self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.set_message(msg);
        }
    }

    fn case_judged(&mut self, family: &str, run: usize, proteins: &[Protein], v: &[Verdict]) {
        let tightest = tightest(v);
        if let Some(t) = tightest {
            self.worst_used = self.worst_used.max(t.used_or_infinite());
        }
        let line = CaseLine {
            family: family.to_string(),
            run,
            lengths: proteins.iter().map(|p| p.residues.len()).collect(),
            passed: v.iter().all(|v| v.passed),
            tightest,
        };
        let written = serde_json::to_writer(&mut self.lines, &line)
            .map_err(std::io::Error::other)
            .and_then(|()| self.lines.write_all(b"\n"))
            .and_then(|()| self.lines.flush());
        if let Err(e) = written
            && self.write_error.is_none()
        {
            self.write_error = Some(e);
        }
    }
}

/// The stopped campaign in `dir` (`--resume`), after checking it is the campaign these
/// arguments describe as far as the arguments alone tell (policy, attention, case count,
/// generator, seed); [`check_same_campaign`] checks the rest once the inputs are read.
fn stopped_campaign(dir: &Path, args: &FuzzArgs) -> Result<SavedReport> {
    let path = dir.join("report.json");
    if !path.is_file() {
        anyhow::bail!("{}: nothing to resume", path.display());
    }
    let stopped = read_report(dir)?;
    let (header, campaign) = (&stopped.header, &stopped.campaign);
    let mismatch = |what: &str, theirs: String, ours: String| {
        anyhow::anyhow!(
            "{}: the stopped campaign ran {what} {theirs}, this one asks for {ours}",
            path.display()
        )
    };
    // A deployment's campaign is judged by the bounds its handshake (or --bound-of) picks,
    // checked once the deployment answers; the policy flags do not apply to it.
    let ours = args.deployment.endpoint.is_none();
    if ours && campaign.precision != args.policy.precision {
        return Err(mismatch(
            "policy",
            campaign.precision.to_string(),
            args.policy.precision.to_string(),
        ));
    }
    if header.deployment.is_some() == ours {
        return Err(mismatch(
            "subject",
            if header.deployment.is_some() {
                "a deployment"
            } else {
                "esmfuzz's own model"
            }
            .into(),
            if ours {
                "esmfuzz's own model"
            } else {
                "a deployment"
            }
            .into(),
        ));
    }
    if ours && header.attention != args.policy.attention {
        return Err(mismatch(
            "attention kernel",
            header.attention.to_string(),
            args.policy.attention.to_string(),
        ));
    }
    if let Some(cases) = args.cases.filter(|c| c.get() != campaign.cases_per_family) {
        return Err(mismatch(
            "cases per family",
            campaign.cases_per_family.to_string(),
            cases.to_string(),
        ));
    }
    if campaign.generator_version != GENERATOR_VERSION {
        return Err(mismatch(
            "generator version",
            campaign.generator_version.to_string(),
            GENERATOR_VERSION.to_string(),
        ));
    }
    if let Some(seed) = args.seed.filter(|&s| s != campaign.seed) {
        return Err(mismatch(
            "seed",
            campaign.seed.to_string(),
            seed.to_string(),
        ));
    }
    Ok(stopped)
}

/// What a resumed run must share with the stopped one beyond its arguments: the checkpoint
/// (by sha256), the FP32 places, the gemm engine, the plan (strata and FASTA families) and
/// the shard. Otherwise finished families would be mixed with others, or dropped.
fn check_same_campaign(
    dir: &Path,
    stopped: &SavedReport,
    ours: &RunHeader,
    planned: &[String],
    shard: Option<Shard>,
) -> Result<()> {
    let path = dir.join("report.json");
    let (header, campaign) = (&stopped.header, &stopped.campaign);
    let show_shard =
        |s: Option<Shard>| s.map_or("none".to_string(), |s| format!("{}/{}", s.index, s.count));
    for (what, theirs, ours) in [
        (
            "weights with sha256",
            header.checkpoint_sha256.clone(),
            ours.checkpoint_sha256.clone(),
        ),
        (
            "FP32 places",
            header.fp32_places.clone(),
            ours.fp32_places.clone(),
        ),
        (
            "gemm engine",
            header.gemm.to_string(),
            ours.gemm.to_string(),
        ),
        (
            "families (--max-stratum, --fasta)",
            campaign.planned.join(","),
            planned.join(","),
        ),
        ("shard", show_shard(campaign.shard), show_shard(shard)),
    ] {
        if theirs != ours {
            bail!(
                "{}: the stopped campaign ran {what} {theirs}, this one asks for {ours}; \
                 resume with the same arguments, or start a new campaign",
                path.display()
            );
        }
    }
    Ok(())
}

/// `fuzz --fasta` reads a file twice (its records, then its sha256 for `--resume`): a pipe
/// or device would give its records once and hash nothing, so it is refused by name.
fn require_regular_fasta(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() && !m.is_dir() => bail!(
            "--fasta {}: not a regular file (a pipe or device); fuzz keeps each FASTA file's \
             sha256 for --resume, so it needs a file: save the stream to one first",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// A resumed campaign's `--fasta` files must hold what the stopped one judged, byte for
/// byte (by sha256): a file of the same name with other records would be taken for finished
/// and its records never judged. A report that kept no digests (an older esmfuzz) cannot
/// tell, and is refused when it has FASTA families.
fn check_same_fasta(dir: &Path, stopped: &SavedReport, ours: &RunHeader) -> Result<()> {
    let path = dir.join("report.json");
    let theirs = &stopped.header.fasta_sha256;
    if ours.fasta_sha256.is_empty() || theirs == &ours.fasta_sha256 {
        return Ok(());
    }
    if theirs.is_empty() {
        bail!(
            "{}: the stopped campaign's report keeps no digest of its --fasta files (written \
             by an older esmfuzz), so whether these are the files it judged cannot be told; \
             start a new campaign",
            path.display()
        );
    }
    for (family, digest) in &ours.fasta_sha256 {
        let was = theirs.get(family).map_or("none", String::as_str);
        if was != digest {
            bail!(
                "{}: family {family}: the stopped campaign judged a FASTA file with sha256 \
                 {was}, this one has {digest} (same name, other content); resume with the \
                 same files, or start a new campaign",
                path.display()
            );
        }
    }
    Ok(())
}

/// A stopped campaign's `cases.jsonl` must hold a line for every run of every finished
/// family (a line per judged case, as the report counts them): one that lost them (a
/// truncated or replaced file) would be resumed into a log that says less than was judged.
/// A family of real proteins (`fasta-*`) may have none (their cases are not logged).
fn check_finished_cases(path: &Path, finished: &[FamilyResult]) -> Result<()> {
    if finished.is_empty() {
        return Ok(());
    }
    let counts = campaign_dir::lines_per_family(path)?;
    for family in finished {
        let lines = counts.get(&family.family).copied().unwrap_or(0);
        let logged_elsewhere = family.family.starts_with("fasta-") && lines == 0;
        if lines != family.runs && !logged_elsewhere {
            bail!(
                "{}: holds {lines} line(s) of finished family {}, whose report counts {} \
                 judged case(s); the log no longer matches the campaign, so a resume would \
                 report less than was judged: restore the file, or start a new campaign",
                path.display(),
                family.family,
                family.runs
            );
        }
    }
    Ok(())
}

/// A stopped campaign's `cases.jsonl` made to agree with the families it `finished`
/// ([`campaign_dir::repair_cases`]), saying what was cut.
fn repair_cases(path: &Path, finished: &[FamilyResult]) -> Result<()> {
    let names: HashSet<String> = finished.iter().map(|f| f.family.clone()).collect();
    let repair = campaign_dir::repair_cases(path, &names)?;
    if repair.torn_bytes > 0 {
        eprintln!(
            "warning: {}: its last line was cut off part way (a stopped run); {} bytes removed",
            path.display(),
            repair.torn_bytes
        );
    }
    if repair.dropped_lines > 0 {
        eprintln!(
            "{}: {} line(s) of families that did not finish removed (they run again)",
            path.display(),
            repair.dropped_lines
        );
    }
    Ok(())
}

/// The files a campaign of `planned` families may write besides its reports: a shrunk
/// counterexample `<family>.fasta` per family (listed in the folder's manifest).
fn counterexample_names(planned: &[String]) -> Vec<String> {
    planned.iter().map(|f| format!("{f}.fasta")).collect()
}

/// `fasta-<file stem>` for each FASTA file, made unique: a stem seen before gets `-2`, `-3`,
/// ... (two files `d1/x.fasta`, `d2/x.fasta` are `fasta-x` and `fasta-x-2`).
fn fasta_family_names(paths: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(paths.len());
    for path in paths {
        let stem = path
            .file_stem()
            .map_or_else(|| "input".into(), |s| s.to_string_lossy().into_owned());
        let base = format!("fasta-{stem}");
        let name = std::iter::once(base.clone())
            .chain((2..).map(|i| format!("{base}-{i}")))
            .find(|n| !names.contains(n))
            .unwrap_or(base);
        names.push(name);
    }
    names
}

/// Sets `stop` on SIGINT and SIGTERM (Ctrl-C, a scheduler's time limit), so the campaign
/// ends at the next case boundary with its report marked incomplete; a second signal ends
/// the process at once with exit 2 (not 1, which means a property failed), saying what
/// state `out` is left in.
pub(super) fn stop_on_signals(stop: &Arc<AtomicBool>, out: &Path) -> Result<()> {
    stop_on_signals_saying(stop, second_signal_message(out))
}

/// [`stop_on_signals`] for any command: a second signal prints `second` and exits 2.
pub(super) fn stop_on_signals_saying(stop: &Arc<AtomicBool>, second: String) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let message: Arc<Vec<u8>> = Arc::new(second.into_bytes());
    for signal in [SIGINT, SIGTERM] {
        let stop = Arc::clone(stop);
        let message = Arc::clone(&message);
        // SAFETY: the handler only swaps an atomic, writes a prepared buffer with write(2)
        // and calls _exit(2): all async-signal-safe; it allocates and locks nothing.
        unsafe {
            signal_hook::low_level::register(signal, move || {
                if stop.swap(true, Ordering::SeqCst) {
                    libc::write(2, message.as_ptr().cast(), message.len());
                    signal_hook::low_level::exit(2);
                }
            })
        }
        .context("installing the SIGINT/SIGTERM handlers")?;
    }
    Ok(())
}

/// What a second signal prints before the process ends at once.
fn second_signal_message(out: &Path) -> String {
    format!(
        "\nesmfuzz: a second signal: stopped at once, mid-family (exit 2). {dir}: report.md and \
         report.json hold the families finished before and say incomplete; the family under \
         way is lost and cases.jsonl may end in a cut line (a resume removes it and that \
         family's lines). Continue with `esmfuzz fuzz --resume {dir}` and the same arguments.\n",
        dir = out.display()
    )
}

/// How the shard children of `fuzz --devices` ended.
#[derive(Debug, PartialEq, Eq)]
enum ShardsEnd {
    /// Every child exited 0 or 1 (held, or a property failed: the merge reports it).
    Finished,
    /// A signal came: it was forwarded to every child still running, and each was waited for.
    Stopped,
}

/// Waits for every shard child, polling; for each SIGINT or SIGTERM counted in `signals`
/// forwards one SIGINT to each child still running (the first stops it at its next case
/// boundary, its report marked incomplete; a second at once) and goes on waiting, so no
/// child outlives the parent. A child that exits other than 0 or 1 outside a stop is an
/// error naming its device, once all have ended.
fn wait_for_shards(
    mut children: Vec<(String, std::process::Child)>,
    signals: &AtomicUsize,
) -> Result<ShardsEnd> {
    let mut forwarded = 0usize;
    let mut broken: Option<String> = None;
    while !children.is_empty() {
        if signals.load(Ordering::SeqCst) > forwarded {
            forwarded += 1;
            for (_, child) in &children {
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: kill(2) on a child of this process that has not been reaped.
                    unsafe { libc::kill(pid, libc::SIGINT) };
                }
            }
        }
        let mut still = Vec::with_capacity(children.len());
        for (device, mut child) in children {
            match child
                .try_wait()
                .with_context(|| format!("waiting for device {device}"))?
            {
                Some(status) => {
                    if !matches!(status.code(), Some(0 | 1)) && broken.is_none() {
                        broken = Some(format!(
                            "the shard on device {device} stopped with {status}"
                        ));
                    }
                }
                None => still.push((device, child)),
            }
        }
        children = still;
        if !children.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    if forwarded > 0 {
        return Ok(ShardsEnd::Stopped);
    }
    match broken {
        Some(message) => bail!(message),
        None => Ok(ShardsEnd::Finished),
    }
}

impl FuzzArgs {
    /// The regressions folder: a given one must exist (a mistyped path would replay nothing,
    /// silently); the default may be absent (nothing saved yet).
    fn regressions_dir(&self) -> Result<PathBuf> {
        match &self.regressions {
            Some(dir) if dir.is_dir() => Ok(dir.clone()),
            Some(dir) => bail!(
                "--regressions {}: no such folder (its saved failures could not be replayed); \
                 create it for a fresh one",
                dir.display()
            ),
            None => Ok(PathBuf::from(DEFAULT_REGRESSIONS)),
        }
    }
}

/// New cases per family when neither `--cases` nor `--resume` says.
const DEFAULT_CASES: NonZeroU32 = NonZeroU32::new(8).expect("8 is not zero");

/// The saved failures `fuzz` replays when `--regressions` is not given.
const DEFAULT_REGRESSIONS: &str = "proptest-regressions";

fn family_line(result: &FamilyResult) -> String {
    let outliers = result.outliers.as_ref().map_or_else(String::new, |o| {
        let worst = |list: &[esmfuzz::harness::outliers::RecordError]| {
            list.first().map_or_else(String::new, |r| {
                format!(
                    "{} ({} aa, pooled 1 - cos {:.2e}, {:.1}x its stratum median)",
                    r.name, r.residues, r.pooled_one_minus_cos, r.above_median
                )
            })
        };
        format!(
            "\n  furthest from FP32: {}; furthest above the median: {} (report.md lists more)",
            worst(&o.by_pooled_cosine),
            worst(&o.above_median)
        )
    });
    format!(
        "{:<24} {} {} cases ({} runs, {} saved seeds) {:>7.1} s  tightest: {}",
        result.family,
        if result.passed { "ok  " } else { "FAIL" },
        result.cases,
        result.runs,
        result.replayed_seeds,
        result.seconds,
        result
            .tightest
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default()
    ) + &outliers
}

pub fn run(args: FuzzArgs) -> Result<Outcome> {
    if !args.devices.is_empty() {
        if args.deployment.endpoint.is_some() {
            bail!(
                "--devices runs our own model on several GPUs; a --deployment is one subject: drop --devices"
            );
        }
        return run_on_devices(&args);
    }
    let start = Start::of(&args)?;
    if args.deployment.endpoint.is_some() {
        return super::fuzz_deployment::run(&args, start);
    }
    // The checkpoint's heads decide which head families the plan holds.
    let checkpoint = args.model.open()?;
    let heads = checkpoint.read_heads()?;
    let Planned {
        spec,
        out,
        claim,
        stopped,
        fasta_sha256,
    } = start.plan(
        Family::campaign(args.max_stratum),
        HeadsOffered::of(Some(&heads)),
        &args,
    )?;
    let digest = sha256_of(&checkpoint.file.path)?;
    let config = &checkpoint.config;
    let model = ModelSize::of(&checkpoint);
    let places = args.policy.places(config)?;
    let backend = args.model.backend;
    // The default engine is settled only now that `open` has found CUDA (its probe loads
    // cuBLAS on the device).
    let gemm = args.policy.gemm(backend)?;
    let ref_plan = PolicyArgs::reference_plan(backend, gemm)?;
    let plan = args.policy.plan(backend, gemm)?;
    esmfuzz::model::flash::preflight(&plan, &checkpoint.config)?;
    let policy = describe_policy(&plan, &places);
    let (esmfuzz_version, git_commit) = RunHeader::this_build();
    let header = RunHeader {
        esmfuzz_version,
        git_commit,
        checkpoint_sha256: digest,
        model,
        backend,
        device: String::new(),
        weights: checkpoint.file.path.clone(),
        policy,
        fp32_places: places.to_string(),
        attention: args.policy.attention,
        gemm,
        reference_policy: ref_plan.describe(),
        deployment: None,
        fasta_sha256,
    };
    check_plan(&spec, &out, stopped.as_ref(), &header, args.shard)?;
    let stop = Arc::new(AtomicBool::new(false));
    let tol = Tolerances::for_policy(args.policy.precision, backend);
    with_backend!(backend, |B, device| {
        eprintln!(
            "reference: {}\nunder test: {}",
            header.reference_policy, header.policy
        );
        let header = RunHeader {
            device: format!("{device:?}"),
            ..header.clone()
        };
        // Both models built layer by layer from the file: host memory holds one layer.
        let mut specs = vec![
            ModelSpec {
                plan: ref_plan,
                fp32_places: Fp32Places::none(),
                faults: FaultSet::none(),
            },
            ModelSpec {
                plan,
                fp32_places: places.clone(),
                faults: FaultSet::none(),
            },
        ];
        // A variant (fused attention, another gemm, FP32 places) is also judged against its
        // plain twin, case by case (`harness::properties::within_twin`).
        let twin_plan = ComputePlan::new(args.policy.precision, backend);
        let variant = plan != twin_plan || !places.is_empty();
        if variant {
            eprintln!("plain twin: {}", twin_plan.describe());
            specs.push(ModelSpec {
                plan: twin_plan,
                fp32_places: Fp32Places::none(),
                faults: FaultSet::none(),
            });
        }
        let mut built =
            super::build_streamed::<B>(&args.model, &checkpoint, &specs, &device)?.into_iter();
        let (Some(reference), Some(test)) = (built.next(), built.next()) else {
            unreachable!("two specs at least, one model each")
        };
        let twin = built.next();
        // FP32 summed in another order, sharing the reference's device tensors: the floor
        // the policy's errors are read against.
        let floor = reference.noise_floor();
        let models = Models {
            reference: &reference,
            test: &test,
            floor: floor.as_ref(),
            twin: twin.as_ref(),
            heads: Some(&heads),
        };
        let runner = InProcessRunner { models, tol };
        let campaign = Campaign {
            out: &out,
            claim,
            resumed: stopped.is_some(),
            spec: &spec,
            options: RunOptions::campaign(&spec),
            stop: &stop,
            signals_installed: false,
        };
        campaign.run(&runner, header, &mut |_| {})
    })
}

/// What every campaign checks and reads before it loads a model: the folder, the saved
/// failures' folder, the stopped campaign to resume, the case count and the user's FASTA.
pub(super) struct Start {
    pub out: PathBuf,
    pub claim: Claim,
    pub regressions: PathBuf,
    pub stopped: Option<SavedReport>,
    pub cases: NonZeroU32,
    pub real_proteins: Vec<(String, Vec<Protein>)>,
    /// sha256 of each `--fasta` file, by family name.
    pub fasta_sha256: std::collections::BTreeMap<String, String>,
}

/// A [`Start`] made into the campaign's plan: what runs, and where.
pub(super) struct Planned {
    pub spec: CampaignSpec,
    pub out: PathBuf,
    pub claim: Claim,
    pub stopped: Option<SavedReport>,
    pub fasta_sha256: std::collections::BTreeMap<String, String>,
}

impl Start {
    /// The campaign of `families` that the subject can run (`offered`: the head families
    /// need the checkpoint's head; the others are named as skipped), narrowed by
    /// `--families`, with the stopped campaign's seed and finished families when resumed,
    /// else `--seed` or a fresh one.
    pub fn plan(
        self,
        families: Vec<Family>,
        offered: HeadsOffered,
        args: &FuzzArgs,
    ) -> Result<Planned> {
        let Start {
            out,
            claim,
            regressions,
            stopped,
            cases,
            real_proteins,
            fasta_sha256,
        } = self;
        let seed = stopped
            .as_ref()
            .map(|s| s.campaign.seed)
            .or(args.seed)
            .unwrap_or_else(fresh_seed);
        let (families, skipped) = offered.partition(families);
        let (families, skipped) = select_families(families, skipped, &args.families)?;
        let spec = CampaignSpec {
            families,
            skipped,
            cases,
            seed,
            regressions,
            out_dir: out.clone(),
            real_proteins,
            completed: stopped
                .as_ref()
                .map(|s| s.campaign.families.clone())
                .unwrap_or_default(),
            shard: args.shard,
        };
        Ok(Planned {
            spec,
            out,
            claim,
            stopped,
            fasta_sha256,
        })
    }

    pub fn of(args: &FuzzArgs) -> Result<Self> {
        // Every input is checked before anything in the campaign folder is touched.
        let (out, claim) = match (&args.resume, args.overwrite) {
            (Some(dir), _) => (dir.clone(), Claim::Resume),
            (None, true) => (args.out.clone(), Claim::Overwrite),
            (None, false) => (args.out.clone(), Claim::NewCampaign),
        };
        campaign_dir::check(&out, claim)?;
        let regressions = args.regressions_dir()?;
        let stopped = args
            .resume
            .as_deref()
            .map(|dir| stopped_campaign(dir, args))
            .transpose()?;
        let cases = stopped
            .as_ref()
            .and_then(|s| NonZeroU32::new(s.campaign.cases_per_family))
            .or(args.cases)
            .unwrap_or(DEFAULT_CASES);
        let mut real_proteins = Vec::with_capacity(args.fasta.len());
        let mut fasta_sha256 = std::collections::BTreeMap::new();
        for (path, name) in args.fasta.iter().zip(fasta_family_names(&args.fasta)) {
            require_regular_fasta(path)?;
            let options = args.fasta_limits.options(NormaliseOptions::default());
            let proteins = read_proteins(path, options)?;
            fasta_sha256.insert(name.clone(), sha256_of(path)?);
            real_proteins.push((name, proteins));
        }
        Ok(Self {
            out,
            claim,
            regressions,
            stopped,
            cases,
            real_proteins,
            fasta_sha256,
        })
    }
}

impl ModelSize {
    /// The size of the model in `checkpoint`.
    pub fn of(checkpoint: &esmfuzz::model::checkpoint::OpenCheckpoint) -> Self {
        let config = &checkpoint.config;
        Self {
            layers: config.num_hidden_layers,
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            parameters: checkpoint.parameter_count(),
        }
    }
}

/// A plan that runs nothing is refused; a resumed campaign must be the one stopped.
pub(super) fn check_plan(
    spec: &CampaignSpec,
    out: &Path,
    stopped: Option<&SavedReport>,
    header: &RunHeader,
    shard: Option<Shard>,
) -> Result<()> {
    let planned = spec.planned();
    if spec.families_owned() == 0 {
        let shard = shard.map(|s| format!("{}/{}", s.index, s.count));
        bail!(
            "shard {} of a campaign of {} families runs no family: a campaign of nothing \
             would pass on nothing; use fewer shards",
            shard.unwrap_or_default(),
            planned.len()
        );
    }
    if let Some(stopped) = stopped {
        check_same_campaign(out, stopped, header, &planned, shard)?;
        check_same_fasta(out, stopped, header)?;
        check_finished_cases(
            &out.join(campaign_dir::CASES_FILE),
            &stopped.campaign.families,
        )?;
    }
    for skipped in &spec.skipped {
        eprintln!("not run: {skipped}");
    }
    eprintln!("seed: {} (rerun with --seed {})", spec.seed, spec.seed);
    Ok(())
}

/// One campaign run into its folder: the folder claimed and locked, cases.jsonl streamed,
/// report.json and report.md rewritten after each family, SIGINT and SIGTERM turned into a
/// stop at the next case boundary (an incomplete report, exit 2).
pub(super) struct Campaign<'a> {
    pub out: &'a Path,
    pub claim: Claim,
    pub resumed: bool,
    pub spec: &'a CampaignSpec,
    pub options: RunOptions,
    /// Set by SIGINT or SIGTERM once the handlers are installed.
    pub stop: &'a Arc<AtomicBool>,
    /// Whether the caller installed the handlers for `stop` already (a second installation
    /// would read one signal as two, and exit at once).
    pub signals_installed: bool,
}

/// A [`Campaign`] whose folder this run owns (locked until it is dropped).
pub(super) struct Claimed<'a> {
    campaign: Campaign<'a>,
    _owned: campaign_dir::OwnedDir,
}

impl<'a> Campaign<'a> {
    /// Takes the folder: the first write to it.
    pub fn claim(self) -> Result<Claimed<'a>> {
        let mut files = counterexample_names(&self.spec.planned());
        files.push(super::fuzz_deployment::STDERR_LOG.to_string());
        let owned = campaign_dir::claim(self.out, self.claim, &files)?;
        Ok(Claimed {
            campaign: self,
            _owned: owned,
        })
    }

    /// Claims the folder and runs the campaign ([`Claimed::run`]).
    pub fn run(
        self,
        runner: &dyn Runner,
        header: RunHeader,
        refresh: &mut dyn FnMut(&mut RunHeader),
    ) -> Result<Outcome> {
        self.claim()?.run(runner, header, refresh)
    }
}

impl Claimed<'_> {
    /// Runs the campaign on `runner`; `refresh` updates the header before each report is
    /// written (a deployment's call counts).
    pub fn run(
        self,
        runner: &dyn Runner,
        header: RunHeader,
        refresh: &mut dyn FnMut(&mut RunHeader),
    ) -> Result<Outcome> {
        let Claimed {
            campaign:
                Campaign {
                    out,
                    claim: _,
                    resumed,
                    spec,
                    options,
                    stop,
                    signals_installed,
                },
            _owned,
        } = self;
        let lines_path = out.join(campaign_dir::CASES_FILE);
        if resumed {
            repair_cases(&lines_path, &spec.completed)?;
        }
        let lines = std::fs::OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(&lines_path)
            .with_context(|| format!("creating {}", lines_path.display()))?;
        if !signals_installed {
            stop_on_signals(stop, out)?;
        }
        let report_path = out.join("report.json");
        let markdown_path = out.join("report.md");
        let bar = ProgressBar::new(spec.families.len() as u64);
        let mut observer = ProgressObserver {
            bar: bar.clone(),
            started: Instant::now(),
            worst_used: 0.0,
            lines: std::io::BufWriter::new(lines),
            write_error: None,
            stop: Arc::clone(stop),
        };
        let mut header = header;
        let mut printed = 0usize;
        let mut replays_printed = false;
        let mut write = |campaign: &CampaignReport| -> std::io::Result<()> {
            if !std::mem::replace(&mut replays_printed, true) {
                for r in &campaign.replayed_counterexamples {
                    let verdict = if r.passed { "ok  " } else { "FAIL" };
                    bar.suspend(|| eprintln!("replay {verdict} {}", r.file.display()));
                    if let Some(failure) = r.failure.as_ref().filter(|_| !r.passed) {
                        bar.suspend(|| eprintln!("  {failure}"));
                    }
                }
                for f in &campaign.replayed_seed_families {
                    bar.suspend(|| eprintln!("replay {}", family_line(f)));
                }
                for path in &campaign.unreplayable {
                    bar.suspend(|| {
                        eprintln!("replay FAIL {}: names no known family", path.display())
                    });
                }
            }
            for result in &campaign.families[printed..] {
                bar.inc(1);
                // Printed whether or not stderr is a terminal (a hidden bar drops println).
                bar.suspend(|| eprintln!("{}", family_line(result)));
                if let Some(failure) = &result.failure {
                    bar.suspend(|| {
                        eprintln!(
                            "{}\nshrunk counterexample:\n{}",
                            failure.message, failure.minimal_fasta
                        )
                    });
                    if let Some(l) = &result.localisation {
                        bar.suspend(|| eprintln!("where the error is born:\n{}", l.to_markdown()));
                    }
                }
            }
            printed = campaign.families.len();
            refresh(&mut header);
            FuzzReport::new(&header, campaign)
                .write(out)
                .map_err(std::io::Error::other)
        };
        let report = run_campaign_with(runner, spec, options, &mut observer, &mut write)?;
        // A family discarded by a stop is not followed by a write of its own: once more, with
        // the subject's last figures.
        if !report.complete() {
            write(&report)?;
        }
        bar.finish_and_clear();
        if let Some(e) = observer.write_error {
            return Err(anyhow::Error::new(e).context(format!("writing {}", lines_path.display())));
        }
        if stop.load(Ordering::Relaxed) {
            bail!(
                "stopped by a signal after {} of {} families; {} says incomplete; continue with \
                 `esmfuzz fuzz --resume {}` and the same arguments",
                report.families.len(),
                report.families_planned(),
                markdown_path.display(),
                out.display()
            );
        }
        if !report.complete() {
            bail!(
                "stopped after {} of {} families: {}; {} says incomplete",
                report.families.len(),
                report.families_planned(),
                runner
                    .why_stopped()
                    .unwrap_or_else(|| "the subject could not go on".into()),
                markdown_path.display(),
            );
        }
        eprintln!(
            "seed {}: {}; report: {} (data: {})",
            spec.seed,
            if report.passed() {
                "all held"
            } else {
                "FAILED"
            },
            markdown_path.display(),
            report_path.display()
        );
        Ok(if report.passed() {
            Outcome::Passed
        } else {
            Outcome::Failed
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use esmfuzz::model::Precision;

    fn fuzz_args(line: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> FuzzArgs {
        match Cli::try_parse_from(line).unwrap().command {
            Command::Fuzz(args) => args,
            other => panic!("not fuzz: {other:?}"),
        }
    }

    #[test]
    fn a_shard_s_command_line_carries_every_argument_but_the_shard_s_own() {
        let given = fuzz_args([
            "esmfuzz",
            "fuzz",
            "--weights",
            "w.safetensors",
            "--preset",
            "esm2_t6_8M_UR50D",
            "--backend",
            "cpu",
            "--allow-nonfinite-weights",
            "--precision",
            "bf16",
            "--fp32-places",
            "final-norm",
            "--attention",
            "fused",
            "--gemm",
            "burn",
            "--cases",
            "3",
            "--max-stratum",
            "short",
            "--seed",
            "5",
            "--regressions",
            "saved",
            "--fasta",
            "a.fasta,b.fasta",
            "--max-record-residues",
            "5000",
            "--devices",
            "0,1",
            "--out",
            "campaign",
        ]);
        let shard = Shard { index: 1, count: 2 };
        let out = Path::new("campaign/shard-1");
        let mut line = vec![OsString::from("esmfuzz")];
        line.extend(given.shard_args(9, shard, out));
        let child = fuzz_args(line);
        let expected = FuzzArgs {
            seed: Some(9),
            shard: Some(shard),
            out: out.to_path_buf(),
            devices: Vec::new(),
            ..given
        };
        assert_eq!(format!("{child:?}"), format!("{expected:?}"));
    }

    #[test]
    fn a_signal_to_the_devices_parent_is_forwarded_to_every_shard_and_each_is_waited_for() {
        let _forks = crate::cli::fork_guard();
        // Two children that end on SIGINT (sh's trap), else after about 5 s, standing in
        // for shards: without the forwarding they end on their own and no stop is seen.
        let spawn = || {
            std::process::Command::new("sh")
                .args([
                    "-c",
                    "trap 'exit 0' INT; i=0; while [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done",
                ])
                .spawn()
                .unwrap()
        };
        let children = vec![("0".to_string(), spawn()), ("1".to_string(), spawn())];
        let pids: Vec<u32> = children.iter().map(|(_, c)| c.id()).collect();
        let stop = Arc::new(AtomicUsize::new(0));
        let setter = Arc::clone(&stop);
        let timer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            setter.fetch_add(1, Ordering::SeqCst);
        });
        let started = std::time::Instant::now();
        assert_eq!(
            wait_for_shards(children, &stop).unwrap(),
            ShardsEnd::Stopped
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "the shards ended on their own after {:?}, not on the forwarded signal",
            started.elapsed()
        );
        timer.join().unwrap();
        for pid in pids {
            // Reaped: no such process any more.
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} left"
            );
        }
        // Without a signal, a shard that broke (exit 3) is an error naming its device.
        let broke = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let e = wait_for_shards(vec![("7".into(), broke)], &AtomicUsize::new(0)).unwrap_err();
        assert!(e.to_string().contains("device 7"), "{e}");
    }

    #[test]
    fn fasta_files_of_one_stem_get_distinct_family_names() {
        let paths: Vec<PathBuf> = ["d1/x.fasta", "d2/x.fasta", "x-2.fa", "d3/x.fasta", "y"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(
            fasta_family_names(&paths),
            [
                "fasta-x",
                "fasta-x-2",
                "fasta-x-2-2",
                "fasta-x-3",
                "fasta-y"
            ]
        );
    }

    #[test]
    fn one_set_of_policy_flags_keeps_each_command_s_default_precision() {
        let line = |command: &str| {
            let extra: &[&str] = match command {
                "embed" => &["--fasta", "x.fasta", "--out", "x.npy"],
                "explain" => &["--fasta", "x.fasta", "--record", "r"],
                _ => &[],
            };
            let mut line = vec!["esmfuzz", command];
            line.extend(extra);
            match Cli::try_parse_from(line).unwrap().command {
                Command::Fuzz(args) => args.policy,
                Command::Embed(args) => args.policy,
                Command::Explain(args) => args.policy,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(line("fuzz").precision, Precision::F16);
        assert_eq!(line("explain").precision, Precision::F16);
        assert_eq!(line("embed").precision, Precision::F32);
        assert_eq!(line("embed").fp32_places, "none");
    }
}
