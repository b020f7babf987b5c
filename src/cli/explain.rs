//! `esmfuzz explain`: where in the forward pass one FASTA record's error is born, for a
//! policy against FP32, ending with the pooled row as `embed` writes it; with `--against`,
//! where a second policy diverges from the first, place by place.

use std::path::PathBuf;

use anyhow::{Result, bail};

use esmfuzz::batch::Layout;
use esmfuzz::harness::cases::{Models, explain_case};
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::input::NormaliseOptions;
use esmfuzz::model::{ComputePlan, Esm2, FaultSet, Fp32Places, Precision};
use esmfuzz::named::Named;
use esmfuzz::with_backend;

use super::policy::{PolicyArgs, describe_policy};
use super::{ModelArgs, Outcome, check_outputs, read_proteins, write_report};

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub fasta_limits: super::FastaLimitArgs,
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
    /// A second policy (plain, padded, same matrix-product engine) to compare with the one
    /// under test, place by place and on the pooled row: where do the two diverge?
    #[arg(long, value_parser = super::named::<Precision>())]
    pub against: Option<Precision>,
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
    let proteins = read_proteins(
        &args.fasta,
        args.fasta_limits.options(NormaliseOptions::default()),
    )?;
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
            esmfuzz::input::escaped(&args.record)
        );
    }
    let Some(protein) = proteins.iter().find(|p| p.name == args.record) else {
        let known: Vec<String> = proteins
            .iter()
            .take(5)
            .map(|p| esmfuzz::input::escaped(&p.name))
            .collect();
        bail!(
            "{}: no record '{}' among its {} records (the first: {})",
            args.fasta.display(),
            esmfuzz::input::escaped(&args.record),
            proteins.len(),
            known.join(", ")
        );
    };
    let checkpoint = args.model.load()?;
    let places = args.policy.places(&checkpoint.weights.config)?;
    let backend = args.model.backend;
    let tol = Tolerances::for_policy(args.policy.precision, backend);
    let layout = if args.packed {
        Layout::Packed
    } else {
        Layout::Padded
    };
    let explanation = with_backend!(backend, |B, device| {
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
        let against = match args.against {
            Some(precision) => {
                let plan = ComputePlan::new(precision, backend).with_gemm(gemm)?;
                eprintln!("against: {}", describe_policy(&plan, &Fp32Places::none()));
                Some(Esm2::<B>::new(
                    &checkpoint.weights,
                    plan,
                    FaultSet::none(),
                    &device,
                ))
            }
            None => None,
        };
        let name = args.against.map(Named::name).unwrap_or_default();
        explain_case(
            models,
            against.as_ref().map(|m| (name, m)),
            protein,
            layout,
            tol.relative_l2,
        )
    });
    let localisation = &explanation.localisation;
    let test_name = Named::name(args.policy.precision);
    println!(
        "{} ({} residues), {} {layout} against FP32 padded on {backend}:\n",
        protein.name,
        protein.residues.len(),
        args.policy.precision
    );
    println!("{}", localisation.to_markdown());
    println!("{}", explanation.pooled.to_markdown(test_name));
    if let Some(divergence) = &explanation.divergence {
        println!(
            "{} against {} (both padded), relative L2 to FP32 per place:\n",
            test_name, divergence.against
        );
        println!("{}", divergence.to_markdown(test_name, &explanation.pooled));
    }
    if let Some(path) = &args.report {
        write_report(path, &explanation)?;
    }
    Ok(if localisation.first_crossing.is_none() {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}
