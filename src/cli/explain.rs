//! `esmfuzz explain`: where in the forward pass one FASTA record's error is born, for a
//! policy against FP32.

use std::path::PathBuf;

use anyhow::{Result, bail};

use esmfuzz::batch::Layout;
use esmfuzz::harness::cases::{Models, localise_case};
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::input::NormaliseOptions;
use esmfuzz::model::{Esm2, FaultSet};
use esmfuzz::with_backend;

use super::policy::{PolicyArgs, describe_policy};
use super::{ModelArgs, Outcome, check_outputs, read_proteins, write_report};

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// FASTA file holding the record.
    #[arg(long)]
    pub fasta: PathBuf,
    /// The record's identifier (the FASTA name up to the first whitespace).
    #[arg(long)]
    pub record: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Run the policy under test packed (varlen) instead of padded.
    #[arg(long)]
    pub packed: bool,
    /// Also write the localisation as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn run(args: ExplainArgs) -> Result<Outcome> {
    check_outputs(
        &[args.report.as_deref()],
        Some(&args.model),
        &[Some(&args.fasta)],
    )?;
    let proteins = read_proteins(&args.fasta, NormaliseOptions::default())?;
    let numbers: Vec<usize> = proteins
        .iter()
        .enumerate()
        .filter(|(_, p)| p.name == args.record)
        .map(|(i, _)| i + 1)
        .collect();
    if let [first, second, ..] = numbers[..] {
        bail!(
            "{}: records {first} and {second} share the id '{}'; give every record its own id",
            args.fasta.display(),
            args.record
        );
    }
    let Some(protein) = proteins.iter().find(|p| p.name == args.record) else {
        let known: Vec<&str> = proteins.iter().take(5).map(|p| p.name.as_str()).collect();
        bail!(
            "{}: no record '{}' among its {} records (the first: {})",
            args.fasta.display(),
            args.record,
            proteins.len(),
            known.join(", ")
        );
    };
    let checkpoint = args.model.load()?;
    let places = args.policy.places(&checkpoint.weights.config)?;
    let backend = args.model.backend;
    let tol = Tolerances::for_precision(args.policy.precision);
    let layout = if args.packed {
        Layout::Packed
    } else {
        Layout::Padded
    };
    let localisation = with_backend!(backend, |B, device| {
        let gemm = args.policy.gemm(backend)?;
        let reference = Esm2::<B>::new(
            &checkpoint.weights,
            PolicyArgs::reference_plan(backend, gemm)?,
            FaultSet::none(),
            &device,
        );
        let plan = args.policy.plan(backend, gemm)?;
        eprintln!("under test: {}", describe_policy(&plan, &places));
        let test = Esm2::<B>::mixed(
            &checkpoint.weights,
            plan,
            places.clone(),
            FaultSet::none(),
            &device,
        );
        let models = Models::new(&reference, &test);
        localise_case(
            models,
            std::slice::from_ref(protein),
            layout,
            tol.relative_l2,
        )
    });
    println!(
        "{} ({} residues), {} {layout} against FP32 padded on {backend}:\n",
        protein.name,
        protein.residues.len(),
        args.policy.precision
    );
    println!("{}", localisation.to_markdown());
    if let Some(path) = &args.report {
        write_report(path, &localisation)?;
    }
    Ok(if localisation.first_crossing.is_none() {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}
