//! `esmfuzz merge`: the reports of every shard of one campaign (`fuzz --shard I/N`, run
//! anywhere: Slurm array tasks, Kubernetes indexed Jobs) joined into the report the whole
//! campaign would have written.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use esmfuzz::harness::campaign::merge_shards;

use super::Outcome;
use super::report::{FuzzReport, RunHeader, read_report};

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The shards' output folders (each holding report.json).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Folder for the merged report.json, report.md and plots.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: MergeArgs) -> Result<Outcome> {
    let mut headers = Vec::new();
    let mut campaigns = Vec::new();
    for dir in &args.shards {
        let saved = read_report(dir)?;
        headers.push(saved.header);
        campaigns.push(saved.campaign);
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
    let (esmfuzz_version, git_commit) = RunHeader::this_build();
    let header = RunHeader {
        esmfuzz_version,
        git_commit,
        device: devices.join(", "),
        ..first.clone()
    };
    FuzzReport::new(&header, &merged).write(&args.out)?;
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
