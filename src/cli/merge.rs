//! `esmfuzz merge`: the reports of every shard of one campaign (`fuzz --shard I/N`, run
//! anywhere: Slurm array tasks, Kubernetes indexed Jobs) joined into the report the whole
//! campaign would have written.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use esmfuzz::backend::BackendKind;
use esmfuzz::harness::campaign::{CampaignReport, merge_shards};
use esmfuzz::model::{AttentionKernel, Gemm};

use super::fuzz::{FuzzReport, ModelSize, REPORT_SCHEMA, markdown};
use super::{Outcome, write_report};

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The shards' output folders (each holding report.json).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Folder for the merged report.json, report.md and plots.
    #[arg(long)]
    pub out: PathBuf,
}

/// What a shard's report.json says about where it ran.
#[derive(Deserialize)]
struct Header {
    esmfuzz_version: String,
    checkpoint_sha256: String,
    model: ModelSize,
    backend: BackendKind,
    device: String,
    weights: PathBuf,
    policy: String,
    #[serde(default = "super::fuzz::no_places")]
    fp32_places: String,
    #[serde(default)]
    attention: AttentionKernel,
    #[serde(default = "super::fuzz::burn_gemm")]
    gemm: Gemm,
    reference_policy: String,
}

fn read(dir: &Path) -> Result<(Header, CampaignReport)> {
    let path = dir.join("report.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let header: Header = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a campaign report", path.display()))?;
    let campaign: CampaignReport = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a campaign report", path.display()))?;
    Ok((header, campaign))
}

pub fn run(args: MergeArgs) -> Result<Outcome> {
    let mut headers = Vec::new();
    let mut campaigns = Vec::new();
    for dir in &args.shards {
        let (h, c) = read(dir)?;
        headers.push(h);
        campaigns.push(c);
    }
    let first = &headers[0];
    for (dir, h) in args.shards.iter().zip(&headers).skip(1) {
        for (what, a, b) in [
            (
                "checkpoint sha256",
                &first.checkpoint_sha256,
                &h.checkpoint_sha256,
            ),
            ("policy", &first.policy, &h.policy),
            (
                "esmfuzz version",
                &first.esmfuzz_version,
                &h.esmfuzz_version,
            ),
        ] {
            if a != b {
                bail!(
                    "{}: {what} {b} differs from the first shard's {a}",
                    dir.display()
                );
            }
        }
    }
    let merged = merge_shards(campaigns)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let devices: Vec<&str> = headers.iter().map(|h| h.device.as_str()).collect();
    let report = FuzzReport {
        schema: REPORT_SCHEMA,
        esmfuzz_version: env!("CARGO_PKG_VERSION"),
        git_commit: env!("ESMFUZZ_GIT_COMMIT"),
        checkpoint_sha256: &first.checkpoint_sha256,
        model: first.model,
        backend: first.backend,
        device: devices.join(", "),
        weights: &first.weights,
        policy: first.policy.clone(),
        fp32_places: first.fp32_places.clone(),
        attention: first.attention,
        gemm: first.gemm,
        reference_policy: first.reference_policy.clone(),
        passed: merged.passed(),
        campaign: &merged,
    };
    write_report(&args.out.join("report.json"), &report)?;
    let plots = super::plots::write_plots(&args.out, &merged)?;
    std::fs::write(args.out.join("report.md"), markdown(&report, &plots))
        .with_context(|| format!("writing {}", args.out.join("report.md").display()))?;
    eprintln!(
        "merged {} shards: {}; report: {}",
        args.shards.len(),
        if merged.passed() {
            "all held"
        } else {
            "FAILED"
        },
        args.out.join("report.md").display()
    );
    Ok(if merged.passed() {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}
