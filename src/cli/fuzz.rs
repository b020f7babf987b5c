//! `esmfuzz fuzz`: a campaign of the property families against FP32 on any backend, saved
//! failures replayed first; `report.json` is rewritten as the campaign goes.

use std::ffi::OsString;
use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;

use esmfuzz::harness::campaign::{CampaignReport, CampaignSpec, Shard, run_campaign};
use esmfuzz::harness::cases::Models;
use esmfuzz::harness::driver::Observer;
use esmfuzz::harness::family::Family;
use esmfuzz::harness::strategies::{GENERATOR_VERSION, Stratum};
use esmfuzz::harness::summary::FamilyResult;
use esmfuzz::harness::verdict::{Tolerances, Verdict, tightest};
use esmfuzz::input::{NormaliseOptions, Protein};
use esmfuzz::model::{FaultSet, Fp32Places, ModelSpec};
use esmfuzz::named::Named;
use esmfuzz::with_backend;

use super::policy::{PolicyArgs, describe_policy};
use super::report::{FuzzReport, ModelSize, RunHeader, SavedReport, read_report};
use super::{ModelArgs, Outcome, named, read_proteins};

#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// New cases per family (at least 1).
    #[arg(long, default_value_t = NonZeroU32::new(8).expect("8 is not zero"))]
    pub cases: NonZeroU32,
    /// Longest stratum to generate (one family per stratum, plus mixed, packed and
    /// isolation batches).
    #[arg(long, value_parser = named::<Stratum>(), default_value = "very-long")]
    pub max_stratum: Stratum,
    /// Generator seed (default: a fresh one, printed first and stored in report.json). The
    /// same seed, esmfuzz version and backend give the same cases and verdicts.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Folder of saved failures: `<policy>__<family>.txt` seeds and
    /// `counterexamples/<policy>__<family>.fasta`, replayed first; new failures are saved here.
    #[arg(long, default_value = "proptest-regressions")]
    pub regressions: PathBuf,
    /// Folder for report.json and report.md (rewritten after each family), cases.jsonl
    /// (one line per judged case, as they come) and shrunk counterexamples.
    #[arg(long, default_value = "fuzz-out")]
    pub out: PathBuf,
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
    /// and case count): finished families are kept, the others run. Writes to that folder.
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
}

/// sha256 of a file, read in 8 MiB pieces.
fn sha256_of(path: &Path) -> Result<String> {
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
            policy,
            cases,
            max_stratum,
            seed: _,
            regressions,
            out: _,
            fasta,
            shard: _,
            devices: _,
            resume: _,
        } = self;
        let mut args = vec![OsString::from("fuzz")];
        model.to_args(&mut args);
        policy.to_args(&mut args);
        args.extend(["--cases", &cases.to_string()].map(OsString::from));
        args.extend(["--max-stratum", Named::name(*max_stratum)].map(OsString::from));
        args.extend(["--seed", &seed.to_string()].map(OsString::from));
        args.push("--regressions".into());
        args.push(regressions.into());
        for path in fasta {
            args.push("--fasta".into());
            args.push(path.into());
        }
        args.extend(["--shard", &format!("{}/{}", shard.index, shard.count)].map(OsString::from));
        args.push("--out".into());
        args.push(out.into());
        args
    }
}

/// `fuzz --devices`: one child `esmfuzz fuzz --shard i/N` per device, then `merge`.
fn run_on_devices(args: &FuzzArgs) -> Result<Outcome> {
    let seed = args.seed.unwrap_or_else(fresh_seed);
    eprintln!("seed: {seed} (rerun with --seed {seed})");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let exe = std::env::current_exe().context("finding the esmfuzz executable")?;
    let count = args.devices.len();
    let shard_dirs: Vec<PathBuf> = (0..count)
        .map(|i| args.out.join(format!("shard-{i}")))
        .collect();
    let children: Vec<(String, std::process::Child)> = args
        .devices
        .iter()
        .zip(&shard_dirs)
        .enumerate()
        .map(|(i, (device, dir))| {
            let shard = Shard { index: i, count };
            let child = std::process::Command::new(&exe)
                .args(args.shard_args(seed, shard, dir))
                .env("CUDA_VISIBLE_DEVICES", device)
                .spawn()
                .with_context(|| format!("starting the shard for device {device}"))?;
            Ok((device.clone(), child))
        })
        .collect::<Result<_>>()?;
    for (device, mut child) in children {
        let status = child
            .wait()
            .with_context(|| format!("waiting for device {device}"))?;
        // 0: held, 1: a property failed (the merge reports it); anything else broke.
        if !matches!(status.code(), Some(0 | 1)) {
            anyhow::bail!("the shard on device {device} stopped with {status}");
        }
    }
    super::merge::run(super::merge::MergeArgs {
        shards: shard_dirs,
        out: args.out.clone(),
    })
}

/// A seed for a campaign nobody seeded: the clock's nanoseconds mixed with the process id.
fn fresh_seed() -> u64 {
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
    fn case_started(&mut self, family: Family, run: usize, proteins: &[Protein]) {
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

    fn case_judged(&mut self, family: Family, run: usize, proteins: &[Protein], v: &[Verdict]) {
        let tightest = tightest(v);
        if let Some(t) = tightest {
            self.worst_used = self.worst_used.max(t.used_or_infinite());
        }
        let line = CaseLine {
            family: family.name(),
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

/// The finished families of the campaign in `dir`, after checking it is the campaign these
/// arguments describe.
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
    if campaign.precision != args.policy.precision {
        return Err(mismatch(
            "policy",
            campaign.precision.to_string(),
            args.policy.precision.to_string(),
        ));
    }
    if header.attention != args.policy.attention {
        return Err(mismatch(
            "attention kernel",
            header.attention.to_string(),
            args.policy.attention.to_string(),
        ));
    }
    if campaign.cases_per_family != args.cases.get() {
        return Err(mismatch(
            "cases per family",
            campaign.cases_per_family.to_string(),
            args.cases.to_string(),
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
        return run_on_devices(&args);
    }
    let stopped = args
        .resume
        .as_deref()
        .map(|dir| stopped_campaign(dir, &args))
        .transpose()?;
    let out = args.resume.clone().unwrap_or_else(|| args.out.clone());
    let seed = stopped
        .as_ref()
        .map(|s| s.campaign.seed)
        .or(args.seed)
        .unwrap_or_else(fresh_seed);
    eprintln!("seed: {seed} (rerun with --seed {seed})");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let lines_path = out.join("cases.jsonl");
    let lines = std::fs::OpenOptions::new()
        .create(true)
        .append(stopped.is_some())
        .write(true)
        .truncate(stopped.is_none())
        .open(&lines_path)
        .with_context(|| format!("creating {}", lines_path.display()))?;
    let mut real_proteins = Vec::with_capacity(args.fasta.len());
    for path in &args.fasta {
        let stem = path
            .file_stem()
            .map_or_else(|| "input".into(), |s| s.to_string_lossy().into_owned());
        let proteins = read_proteins(path, NormaliseOptions::default())?;
        real_proteins.push((format!("fasta-{stem}"), proteins));
    }
    let checkpoint = args.model.open()?;
    let digest = sha256_of(&checkpoint.file.path)?;
    let config = &checkpoint.config;
    let model = ModelSize {
        layers: config.num_hidden_layers,
        hidden: config.hidden_size,
        heads: config.num_attention_heads,
        parameters: checkpoint.parameter_count(),
    };
    let places = args.policy.places(config)?;
    if let Some(s) = stopped
        .as_ref()
        .filter(|s| s.header.fp32_places != places.to_string())
    {
        anyhow::bail!(
            "{}: the stopped campaign ran FP32 places {}, this one asks for {places}",
            out.join("report.json").display(),
            s.header.fp32_places
        );
    }
    let backend = args.model.backend;
    // The default engine is settled only now that `open` has found CUDA (its probe loads
    // cuBLAS on the device).
    let gemm = args.policy.gemm(backend);
    if let Some(s) = stopped.as_ref().filter(|s| s.header.gemm != gemm) {
        anyhow::bail!(
            "{}: the stopped campaign ran gemm engine {}, this one asks for {gemm}",
            out.join("report.json").display(),
            s.header.gemm
        );
    }
    let report_path = out.join("report.json");
    let markdown_path = out.join("report.md");
    let tol = Tolerances::for_precision(args.policy.precision);
    let spec = CampaignSpec {
        families: Family::campaign(args.max_stratum),
        cases: args.cases,
        seed,
        regressions: args.regressions.clone(),
        out_dir: out.clone(),
        real_proteins,
        completed: stopped.map(|s| s.campaign.families).unwrap_or_default(),
        shard: args.shard,
    };
    let report = with_backend!(backend, |B, device| {
        let ref_plan = PolicyArgs::reference_plan(backend, gemm)?;
        let plan = args.policy.plan(backend, gemm)?;
        esmfuzz::model::flash::preflight(&plan, &checkpoint.config)?;
        let policy = describe_policy(&plan, &places);
        eprintln!("reference: {}\nunder test: {policy}", ref_plan.describe(),);
        let (esmfuzz_version, git_commit) = RunHeader::this_build();
        let header = RunHeader {
            esmfuzz_version,
            git_commit,
            checkpoint_sha256: digest.clone(),
            model,
            backend,
            device: format!("{device:?}"),
            weights: checkpoint.file.path.clone(),
            policy,
            fp32_places: places.to_string(),
            attention: args.policy.attention,
            gemm,
            reference_policy: ref_plan.describe(),
        };
        // Both models built layer by layer from the file: host memory holds one layer.
        let specs = [
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
        let mut built = super::build_streamed::<B>(&args.model, &checkpoint, &specs, &device)?;
        let test = built
            .pop()
            .unwrap_or_else(|| unreachable!("two specs, two models"));
        let reference = built
            .pop()
            .unwrap_or_else(|| unreachable!("two specs, two models"));
        // FP32 summed in another order, sharing the reference's device tensors: the floor
        // the policy's errors are read against.
        let floor = reference.noise_floor();
        let models = Models {
            reference: &reference,
            test: &test,
            floor: floor.as_ref(),
        };
        let bar = ProgressBar::new(spec.families.len() as u64);
        let mut observer = ProgressObserver {
            bar: bar.clone(),
            started: Instant::now(),
            worst_used: 0.0,
            lines: std::io::BufWriter::new(lines),
            write_error: None,
        };
        let mut printed = 0usize;
        let mut replays_printed = false;
        let mut write = |campaign: &CampaignReport| -> std::io::Result<()> {
            if !std::mem::replace(&mut replays_printed, true) {
                for r in &campaign.replayed_counterexamples {
                    let verdict = if r.passed { "ok  " } else { "FAIL" };
                    bar.suspend(|| eprintln!("replay {verdict} {}", r.file.display()));
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
            FuzzReport::new(&header, campaign)
                .write(&out)
                .map_err(std::io::Error::other)
        };
        let report = run_campaign(models, &tol, &spec, &mut observer, &mut write)?;
        bar.finish_and_clear();
        if let Some(e) = observer.write_error {
            return Err(anyhow::Error::new(e).context(format!("writing {}", lines_path.display())));
        }
        report
    });
    eprintln!(
        "seed {seed}: {}; report: {} (data: {})",
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
