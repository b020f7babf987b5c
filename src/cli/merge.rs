//! `esmfuzz merge`: the reports of every shard of one campaign (`fuzz --shard I/N`, run
//! anywhere: Slurm array tasks, Kubernetes indexed Jobs) joined into the report the whole
//! campaign would have written. Only finished shards are merged, and `--out` is never one of
//! them nor another campaign (unless `--overwrite`): a merge can always be redone.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use esmfuzz::harness::campaign::merge_shards;

use super::campaign_dir::{self, Claim};
use super::report::{DeploymentSection, FuzzReport, RunHeader, read_report};
use super::{Outcome, same_file};

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The shards' output folders (each holding the report.json of a finished shard).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Folder for the merged report.json, report.md and plots: not one of the shards, and
    /// holding no campaign run there (no cases.jsonl) unless --overwrite.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the campaign in --out (its reports, cases.jsonl, plots and counterexamples).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: MergeArgs) -> Result<Outcome> {
    if let Some(shard) = args.shards.iter().find(|s| same_file(&args.out, s)) {
        bail!(
            "{}: --out is one of the shards ({}); the merge would replace its report and could \
             not be redone; choose another folder",
            args.out.display(),
            shard.display()
        );
    }
    let claim = if args.overwrite {
        Claim::Overwrite
    } else {
        Claim::Merge
    };
    campaign_dir::check(&args.out, claim)?;
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
                    "{}: {what} {b} differs from the first shard's ({}) {a}",
                    dir.display(),
                    args.shards[0].display()
                );
            }
        }
    }
    let deployment_of = |h: &RunHeader| h.deployment.as_ref().map(|d| d.name.clone());
    if let Some((dir, h)) = args
        .shards
        .iter()
        .zip(&headers)
        .find(|(_, h)| deployment_of(h) != deployment_of(first))
    {
        bail!(
            "{}: deployment {:?} differs from the first shard's ({}) {:?}",
            dir.display(),
            deployment_of(h),
            args.shards[0].display(),
            deployment_of(first)
        );
    }
    let merged = merge_shards(campaigns).map_err(|e| match e.report() {
        Some(i) => anyhow!("{}: {e}", args.shards[i].display()),
        None => anyhow!(e),
    })?;
    let _owned = campaign_dir::claim(&args.out, claim, &[])?;
    let devices: Vec<&str> = headers.iter().map(|h| h.device.as_str()).collect();
    let (esmfuzz_version, git_commit) = RunHeader::this_build();
    let sections: Vec<(&Path, &DeploymentSection)> = args
        .shards
        .iter()
        .zip(&headers)
        .filter_map(|(dir, h)| Some((dir.as_path(), h.deployment.as_ref()?)))
        .collect();
    let header = RunHeader {
        esmfuzz_version,
        git_commit,
        device: devices.join(", "),
        deployment: DeploymentSection::merged(&sections),
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
