//! `esmfuzz power`: how likely each property family is to catch a degradation of size e
//! (one layer's output scaled, weights perturbed, attention logits scaled, an intermediate
//! rounded to f16) at the CI case count and at a campaign's; `power.json`, `power.md` and
//! `detection.svg` in `--out`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;

use esmfuzz::harness::family::Family;
use esmfuzz::harness::power::{
    DETECTED, Degradation, PowerCell, PowerReport, PowerSpec, run_power, smallest_detected,
};
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::model::{Esm2, FaultSet};
use esmfuzz::with_backend;

use super::policy::{PolicyArgs, describe_policy};
use super::{ModelArgs, Outcome, check_outputs, named, write_atomically, write_report};

#[derive(clap::Args, Debug)]
pub struct PowerArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The policy under test, which carries the degradations (f32: the harness's power on
    /// the model's code, held to FP32 noise; f16 etc.: under that policy's own error).
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Families, comma-separated: those that compare with FP32, and the isolation families
    /// (the policy against itself: only a degradation that couples sequences, such as
    /// leak-across-sequences, can move them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "stratum-tiny,stratum-short,mixed-up-to-short"
    )]
    pub families: Vec<Family>,
    /// Degradations, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = named::<Degradation>(),
          default_value = "scale-layer-output,perturb-weights,scale-attention-logits,round-to-f16")]
    pub degradations: Vec<Degradation>,
    /// Sizes e of the sized degradations, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1e-4,1e-3,1e-2,3e-2,1e-1,3e-1"
    )]
    pub sizes: Vec<f64>,
    /// Independent trials (generator seeds) per family, degradation and size.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Case counts at which detection is read: the CI count (`fuzz`'s default, the tests'
    /// largest) and a campaign's; each trial judges up to the largest.
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    pub counts: Vec<u32>,
    /// The degraded layer (0-based; default: the middle one).
    #[arg(long)]
    pub layer: Option<usize>,
    /// First generator seed (trial t uses seed + t).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Folder for power.json, power.md and detection.svg.
    #[arg(long, default_value = "power-out")]
    pub out: PathBuf,
}

pub fn run(args: PowerArgs) -> Result<Outcome> {
    // Every argument is checked, and the weights read, before --out is touched.
    let config = args.model.config_only()?;
    let places = args.policy.places(&config)?;
    let spec = PowerSpec {
        families: args.families.clone(),
        degradations: args.degradations.clone(),
        sizes: args.sizes.clone(),
        trials: args.trials,
        counts: args.counts.clone(),
        seed: args.seed,
        layer: args.layer.unwrap_or(config.num_hidden_layers / 2),
    };
    spec.check(config.num_hidden_layers)?;
    let outputs = PowerOutputs::new(&args.out);
    outputs.check(&args.model)?;
    let checkpoint = args.model.load()?;
    let weights = &checkpoint.weights;
    let backend = args.model.backend;
    let gemm = args.policy.gemm(backend)?;
    let tol = Tolerances::for_policy(args.policy.precision, backend);
    let ref_plan = PolicyArgs::reference_plan(backend, gemm)?;
    let plan = args.policy.plan(backend, gemm)?;
    esmfuzz::model::flash::preflight(&plan, &weights.config)?;
    let policy = describe_policy(&plan, &places);
    let planned = spec.families.len()
        * (spec
            .degradations
            .iter()
            .map(|d| if d.is_sized() { spec.sizes.len() } else { 1 })
            .sum::<usize>()
            + 1);
    // Written now, before the first cell, so an output that cannot be written is found
    // before minutes of work; then again after every cell.
    let mut sofar = SoFar {
        outputs: &outputs,
        spec: &spec,
        tol,
        policy: policy.clone(),
        backend,
        weights: checkpoint.file.path.clone(),
        planned,
        baseline: Vec::new(),
        cells: Vec::new(),
        started: std::time::Instant::now(),
        write_error: None,
    };
    sofar.write()?;
    let report = with_backend!(backend, |B, device| {
        eprintln!(
            "reference: {}\nunder test: {policy}\n{} families x {} degradation cells x {} trials, up to {} cases each",
            ref_plan.describe(),
            spec.families.len(),
            planned / spec.families.len().max(1),
            spec.trials,
            spec.counts.iter().max().copied().unwrap_or(0)
        );
        let reference = Esm2::<B>::new(weights, ref_plan, FaultSet::none(), &device);
        let mut build =
            |faults: FaultSet| Esm2::<B>::mixed(weights, plan, places.clone(), faults, &device);
        let mut progress = |cell: &PowerCell, seconds: f64| {
            eprintln!("{}", line(cell, seconds));
            sofar.add(cell.clone());
        };
        run_power(&reference, &mut build, &tol, &spec, &mut progress)?
    });
    if let Some(e) = &sofar.write_error {
        eprintln!("warning: writing the partial report failed during the run: {e:#}");
    }
    let written = outputs.write(&report, &policy, backend, &checkpoint.file.path, None);
    if let Err(e) = written {
        // The work is not lost with the output: the table goes to stdout.
        println!("{}", markdown(&report, &policy));
        return Err(e.context("writing the power report (its table is printed above)"));
    }
    eprintln!(
        "{:.0} s; table: {} (data: {}, curves: {})",
        report.seconds,
        outputs.md.display(),
        outputs.json.display(),
        outputs.svg.display()
    );
    Ok(Outcome::Passed)
}

/// The three files `power` writes in `--out`.
struct PowerOutputs {
    dir: PathBuf,
    json: PathBuf,
    md: PathBuf,
    svg: PathBuf,
}

impl PowerOutputs {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            json: dir.join("power.json"),
            md: dir.join("power.md"),
            svg: dir.join("detection.svg"),
        }
    }

    /// Touching nothing: `--out` is a folder or nothing yet, and none of the files is an
    /// input or a campaign's.
    fn check(&self, model: &ModelArgs) -> Result<()> {
        if self.dir.exists() && !self.dir.is_dir() {
            bail!(
                "{}: not a folder; name a folder for power.json, power.md and detection.svg",
                self.dir.display()
            );
        }
        if self.dir.is_dir() {
            check_outputs(
                &[Some(&self.json), Some(&self.md), Some(&self.svg)],
                Some(model),
                &[],
            )?;
        }
        Ok(())
    }

    /// Writes `power.json` and `power.md` (and the curves when complete); `progress` is
    /// `Some((done, planned))` for a report written while the run goes.
    fn write(
        &self,
        report: &PowerReport,
        policy: &str,
        backend: esmfuzz::backend::BackendKind,
        weights: &Path,
        progress: Option<(usize, usize)>,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let (done, planned) = progress.unwrap_or((report.baseline.len() + report.cells.len(), 0));
        write_report(
            &self.json,
            &serde_json::json!({
                "policy": policy,
                "backend": backend,
                "weights": weights,
                "complete": progress.is_none(),
                "cells_done": done,
                "cells_planned": if progress.is_some() { planned } else { done },
                "report": report,
            }),
        )?;
        let mut md = markdown(report, policy);
        if progress.is_some() {
            md = format!(
                "**incomplete: {done} of {planned} cells measured** (the run was stopped or is \
                 still going; rerun the same command for the rest)\n\n{md}"
            );
        } else {
            draw(&self.svg, report, policy)?;
        }
        write_atomically(&self.md, md.as_bytes())
    }
}

/// The cells measured so far, written after each one.
struct SoFar<'a> {
    outputs: &'a PowerOutputs,
    spec: &'a PowerSpec,
    tol: Tolerances,
    policy: String,
    backend: esmfuzz::backend::BackendKind,
    weights: PathBuf,
    planned: usize,
    baseline: Vec<PowerCell>,
    cells: Vec<PowerCell>,
    started: std::time::Instant,
    write_error: Option<anyhow::Error>,
}

impl SoFar<'_> {
    fn add(&mut self, cell: PowerCell) {
        if cell.degradation.is_none() {
            self.baseline.push(cell);
        } else {
            self.cells.push(cell);
        }
        if let Err(e) = self.write() {
            eprintln!("warning: {e:#}");
            self.write_error.get_or_insert(e);
        }
    }

    fn write(&self) -> Result<()> {
        let mut sizes = self.spec.sizes.clone();
        sizes.sort_by(f64::total_cmp);
        sizes.dedup();
        let report = PowerReport {
            layer: self.spec.layer,
            trials: self.spec.trials,
            counts: self.spec.counts.clone(),
            seed: self.spec.seed,
            sizes,
            tolerances: self.tol,
            baseline: self.baseline.clone(),
            cells: self.cells.clone(),
            smallest: smallest_detected(&self.cells, self.spec),
            seconds: self.started.elapsed().as_secs_f64(),
        };
        let done = self.baseline.len() + self.cells.len();
        self.outputs.write(
            &report,
            &self.policy,
            self.backend,
            &self.weights,
            Some((done, self.planned)),
        )
    }
}

/// What a cell is: `family, degradation e`.
fn cell_name(cell: &PowerCell) -> String {
    match (cell.degradation, cell.size) {
        (None, _) => format!("{} no fault", cell.family),
        (Some(d), None) => format!("{} {d}", cell.family),
        (Some(d), Some(e)) => format!("{} {d} e={e:e}", cell.family),
    }
}

/// One progress line per cell.
fn line(cell: &PowerCell, seconds: f64) -> String {
    let detection: Vec<String> = cell
        .detection
        .iter()
        .map(|(n, p)| format!("{:.0}% at {n}", 100.0 * p))
        .collect();
    format!(
        "{:>7.1} s  {:<52} detected {}; {} cases judged; held cases: relative L2 median {}, max {}",
        seconds,
        cell_name(cell),
        detection.join(", "),
        cell.cases_judged,
        sci(cell.relative_l2_median),
        sci(cell.relative_l2_max)
    )
}

/// A value in scientific notation; `-` for NaN (no case held).
fn sci(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2e}")
    }
}

/// A fraction as a percentage; `-` for NaN (no case held).
fn percent(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * v)
    }
}

fn fmt_size(e: Option<f64>) -> String {
    e.map_or("not reached".into(), |e| format!("{e:e}"))
}

/// power.md: the smallest detected e, then the detection of every cell.
fn markdown(r: &PowerReport, policy: &str) -> String {
    let counts: Vec<String> = r.counts.iter().map(|n| n.to_string()).collect();
    let mut md = format!(
        "# esmfuzz power\n\nUnder test: **{policy}**, degradations in layer {} (0-based), {} trials \
         (generator seeds {}..{}) per cell, detection read at {} cases per family. Detected = \
         the family reports a failure (any property) in >= {:.0}% of trials.\n\n",
        r.layer,
        r.trials,
        r.seed,
        r.seed + r.trials as u64 - 1,
        counts.join(" and "),
        100.0 * DETECTED
    );
    md.push_str("## Smallest e detected with >= 95% probability\n\n| family | degradation |");
    for n in &r.counts {
        md.push_str(&format!(" at {n} cases |"));
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---|".repeat(r.counts.len()));
    md.push('\n');
    let mut rows: Vec<(&str, Degradation)> = r
        .smallest
        .iter()
        .map(|s| (s.family.as_str(), s.degradation))
        .collect();
    rows.dedup();
    for (family, d) in rows {
        md.push_str(&format!("| {family} | {d} |"));
        for n in &r.counts {
            let s = r
                .smallest
                .iter()
                .find(|s| s.family == family && s.degradation == d && s.count == *n);
            let text = match s {
                Some(s) if d.is_sized() => fmt_size(s.size),
                Some(s) if s.detected => "detected".into(),
                Some(_) => "not detected".into(),
                None => String::new(),
            };
            md.push_str(&format!(" {text} |"));
        }
        md.push('\n');
    }
    md.push_str(
        "\n## Every cell\n\nDetection at each count; the per-case failure rate (failing trials over \
         cases judged) and the cases one trial would need for 95% at that rate; the property that \
         failed first; and, over the cases that held, the relative L2 error against FP32 (median, \
         max; the bound is in the tolerances below) and the largest fraction of a tolerance the \
         tightest property used (how far below the thresholds an undetected degradation stays).\n\n| family | degradation | e |",
    );
    for n in &r.counts {
        md.push_str(&format!(" P at {n} |"));
    }
    md.push_str(" per-case rate | cases for 95% | caught by | relative L2 median | relative L2 max | max used (property) |\n|---|---|---|");
    md.push_str(&"---|".repeat(r.counts.len()));
    md.push_str("---|---|---|---|---|---|\n");
    for c in r.baseline.iter().chain(&r.cells) {
        md.push_str(&format!(
            "| {} | {} | {} |",
            c.family,
            c.degradation.map_or("none".into(), |d| d.to_string()),
            c.size.map_or("-".into(), |e| format!("{e:e}"))
        ));
        for n in &r.counts {
            let p = c.detection_at(*n).unwrap_or(f64::NAN);
            md.push_str(&format!(" {:.2} |", p));
        }
        let caught: Vec<String> = c
            .caught_by
            .iter()
            .map(|(p, k)| format!("{p} ({k})"))
            .collect();
        md.push_str(&format!(
            " {:.3} | {} | {} | {} | {} | {} ({}) |\n",
            c.per_case_rate,
            c.cases_for_detection()
                .map_or("-".into(), |n| format!("{n:.0}")),
            caught.join(", "),
            sci(c.relative_l2_median),
            sci(c.relative_l2_max),
            percent(c.max_used),
            c.max_used_property.map_or("-".into(), |p| p.to_string()),
        ));
    }
    md.push_str(&format!(
        "\nTolerances: {}\n\n![detection curves](detection.svg)\n\nMeasured in {:.0} s.\n",
        serde_json::to_string(&r.tolerances).unwrap_or_default(),
        r.seconds
    ));
    md
}

/// detection.svg: detection probability against e, one panel per count, one line per
/// family and sized degradation.
fn draw(path: &Path, r: &PowerReport, policy: &str) -> Result<()> {
    let panels = r.counts.len().max(1);
    let root = SVGBackend::new(path, (480 * panels as u32, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (lo, hi) = r
        .sizes
        .iter()
        .fold((f64::INFINITY, 0f64), |(a, b), &e| (a.min(e), b.max(e)));
    if !lo.is_finite() {
        return root.present().map_err(|e| anyhow!("{e}"));
    }
    let title = policy.split(':').next().unwrap_or(policy);
    for (area, &count) in root.split_evenly((1, panels)).iter().zip(&r.counts) {
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{title}: detection at {count} cases"),
                ("sans-serif", 15),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((lo / 2.0..hi * 2.0).log_scale(), -0.02f64..1.02)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("size e")
            .y_desc("P(detected)")
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(
                [(lo / 2.0, DETECTED), (hi * 2.0, DETECTED)],
                BLACK.mix(0.4),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        let mut keys: Vec<(String, Degradation)> = r
            .cells
            .iter()
            .filter_map(|c| Some((c.family.clone(), c.degradation?)))
            .filter(|(_, d)| d.is_sized())
            .collect();
        keys.dedup();
        for (i, (family, d)) in keys.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = r
                .cells
                .iter()
                .filter(|c| &c.family == family && c.degradation == Some(*d))
                .filter_map(|c| Some((c.size?, c.detection_at(count)?)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(format!("{family} {d}"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 10))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
