//! `esmfuzz cases`: the generators' proteins as FASTA (plus `cases.json` saying what each
//! is), for another stack to embed and `esmfuzz check` to judge.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use esmfuzz::harness::deployment::{ExportedCase, generate_cases};
use esmfuzz::harness::strategies::Stratum;
use esmfuzz::input::write_fasta;

use super::{Outcome, check_output, named};

#[derive(Args, Debug)]
pub struct CasesArgs {
    /// Strata to generate.
    #[arg(long, value_parser = named::<Stratum>(), value_delimiter = ',', default_value = "tiny,short,medium,long,very-long")]
    pub strata: Vec<Stratum>,
    /// Proteins per stratum.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub cases: u64,
    /// Generator seed (the same seed and esmfuzz version give the same proteins).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output FASTA; `<out>.json` beside it lists each case.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: CasesArgs) -> Result<Outcome> {
    check_output(&args.out, &[])?;
    let proteins = generate_cases(&args.strata, args.cases as usize, args.seed);
    write_fasta(&args.out, &proteins).with_context(|| format!("writing {}", args.out.display()))?;
    let listing: Vec<ExportedCase> = proteins
        .iter()
        .map(|p| ExportedCase {
            id: p.name.clone(),
            stratum: args
                .strata
                .iter()
                .find(|s| p.name.starts_with(&format!("case-{s}-s")))
                .map(|s| s.to_string())
                .unwrap_or_default(),
            residues: p.residues.len(),
        })
        .collect();
    let json = args.out.with_extension("json");
    super::write_report(&json, &listing)?;
    eprintln!(
        "wrote {} proteins to {} and {}",
        proteins.len(),
        args.out.display(),
        json.display()
    );
    Ok(Outcome::Passed)
}
