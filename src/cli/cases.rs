//! `esmfuzz cases`: the generators' proteins as FASTA (plus `cases.json` saying what each
//! is), for another stack to embed and `esmfuzz check` to judge.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use esmfuzz::harness::deployment::{ExportedCase, generate_cases};
use esmfuzz::harness::strategies::Stratum;
use esmfuzz::input::{fasta_text, first_duplicate_name};

use super::{Outcome, check_outputs, named, same_file, write_atomically};

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
    let json = args.out.with_extension("json");
    if same_file(&args.out, &json) {
        bail!(
            "--out {}: the listing is written beside the FASTA as <out>.json, here the same \
             file; name the FASTA with another extension (e.g. {})",
            args.out.display(),
            args.out.with_extension("fasta").display()
        );
    }
    check_outputs(&[Some(&args.out), Some(&json)], None, &[])?;
    if let Some((i, s)) = args
        .strata
        .iter()
        .enumerate()
        .find(|(i, s)| args.strata[..*i].contains(s))
    {
        bail!(
            "--strata names {s} twice (item {}); each stratum's cases are numbered from 0, so \
             their ids would repeat",
            i + 1
        );
    }
    let proteins = generate_cases(&args.strata, args.cases as usize, args.seed);
    if let Some((first, second, name)) = first_duplicate_name(&proteins) {
        bail!("generated records {first} and {second} share the id '{name}'");
    }
    write_atomically(&args.out, fasta_text(&proteins).as_bytes())?;
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
    super::write_report(&json, &listing)?;
    eprintln!(
        "wrote {} proteins to {} and {}",
        proteins.len(),
        args.out.display(),
        json.display()
    );
    Ok(Outcome::Passed)
}
