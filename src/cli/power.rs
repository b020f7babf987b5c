//! `esmfuzz power`: how likely each property family is to catch a degradation of size e
//! (one layer's output scaled, weights perturbed, attention logits scaled, an intermediate
//! rounded to f16) at the CI case count and at a campaign's; `power.json`, `power.md` and
//! `detection.svg` in `--out`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;

use esmfuzz::harness::family::Family;
use esmfuzz::harness::power::{
    DETECTED, Degradation, Judge, PowerCell, PowerReport, PowerSpec, run_power,
};
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::model::{Esm2, FaultSet, Precision};
use esmfuzz::with_backend;

use super::fuzz_deployment::ConnectArgs;
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
    /// Measure the judges of `fuzz --deployment` instead of a policy's: the false alarms of
    /// this deployment (fault-free: another team's stack of one precision, e.g. the HF FP16
    /// adapter) and the detection of each degradation in `esmfuzz serve` of that precision,
    /// under the fixed bound and with the twin judge. Same forms as `fuzz --deployment`; the
    /// precision is the deployment's (--bound-of or its handshake), not --precision.
    #[arg(long = "deployment")]
    pub endpoint: Option<String>,
    /// With --deployment: judge with the bounds of this precision (default: its handshake's
    /// dtype).
    #[arg(long, value_parser = named::<Precision>(), requires = "endpoint")]
    pub bound_of: Option<Precision>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn run(args: PowerArgs) -> Result<Outcome> {
    if args.endpoint.is_some() {
        return super::power_deployment::run(args);
    }
    // Every argument is checked, and the weights read, before --out is touched.
    let config = args.model.config_only()?;
    let places = args.policy.places(&config)?;
    let spec = args.spec(config.num_hidden_layers)?;
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
    let about = About {
        policy: policy.clone(),
        backend,
        weights: checkpoint.file.path.clone(),
        deployment: None,
    };
    // Written now, before the first cell, so an output that cannot be written is found
    // before minutes of work; then again after every cell.
    let mut sofar = SoFar::new(&outputs, &spec, tol, about.clone(), &[Judge::Bound]);
    sofar.write()?;
    let report = with_backend!(backend, |B, device| {
        eprintln!(
            "reference: {}\nunder test: {policy}\n{} families x {} degradation cells x {} trials, up to {} cases each",
            ref_plan.describe(),
            spec.families.len(),
            spec.cells_per_family(),
            spec.trials,
            spec.counts.iter().max().copied().unwrap_or(0)
        );
        let reference = Esm2::<B>::new(weights, ref_plan, FaultSet::none(), &device);
        let mut build =
            |faults: FaultSet| Esm2::<B>::mixed(weights, plan, places.clone(), faults, &device);
        let mut progress = |cell: &PowerCell, seconds: f64| {
            eprintln!("{}", line(cell, seconds));
            sofar.add(Judge::Bound, cell.clone());
        };
        run_power(&reference, &mut build, &tol, &spec, &mut progress)?
    });
    finish(&outputs, &sofar, &[report], &about)
}

/// Writes the complete report (the table goes to stdout when it cannot be written).
pub(super) fn finish(
    outputs: &PowerOutputs,
    sofar: &SoFar<'_>,
    reports: &[PowerReport],
    about: &About,
) -> Result<Outcome> {
    if let Some(e) = &sofar.write_error {
        eprintln!("warning: writing the partial report failed during the run: {e:#}");
    }
    if let Err(e) = outputs.write(reports, about, None) {
        // The work is not lost with the output: the table goes to stdout.
        println!("{}", markdown(reports, about));
        return Err(e.context("writing the power report (its table is printed above)"));
    }
    eprintln!(
        "{:.0} s; table: {} (data: {}, curves: {})",
        reports.iter().map(|r| r.seconds).fold(0.0, f64::max),
        outputs.md.display(),
        outputs.json.display(),
        outputs.svg.display()
    );
    Ok(Outcome::Passed)
}

impl PowerArgs {
    /// The measurement the flags ask for, checked against a model of `layers` layers.
    pub(super) fn spec(&self, layers: usize) -> Result<PowerSpec> {
        let spec = PowerSpec {
            families: self.families.clone(),
            degradations: self.degradations.clone(),
            sizes: self.sizes.clone(),
            trials: self.trials,
            counts: self.counts.clone(),
            seed: self.seed,
            layer: self.layer.unwrap_or(layers / 2),
        };
        spec.check(layers)?;
        Ok(spec)
    }
}

/// What was measured, for the reports' headings.
#[derive(Debug, Clone)]
pub(super) struct About {
    /// The policy under test, or the deployment's description.
    pub policy: String,
    pub backend: esmfuzz::backend::BackendKind,
    pub weights: PathBuf,
    /// `power --deployment`: the deployment, its handshake and how it was judged.
    pub deployment: Option<serde_json::Value>,
}

/// The files `power` writes in `--out`: power.json, power.md, detection.svg (the first
/// judge's curves) and, with --deployment, detection-bound-and-twin.svg.
pub(super) struct PowerOutputs {
    pub dir: PathBuf,
    json: PathBuf,
    md: PathBuf,
    svg: PathBuf,
    twin_svg: PathBuf,
}

impl PowerOutputs {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            json: dir.join("power.json"),
            md: dir.join("power.md"),
            svg: dir.join("detection.svg"),
            twin_svg: dir.join("detection-bound-and-twin.svg"),
        }
    }

    /// Touching nothing: `--out` is a folder or nothing yet, and none of the files is an
    /// input or a campaign's.
    pub fn check(&self, model: &ModelArgs) -> Result<()> {
        if self.dir.exists() && !self.dir.is_dir() {
            bail!(
                "{}: not a folder; name a folder for power.json, power.md and detection.svg",
                self.dir.display()
            );
        }
        if self.dir.is_dir() {
            check_outputs(
                &[
                    Some(&self.json),
                    Some(&self.md),
                    Some(&self.svg),
                    Some(&self.twin_svg),
                ],
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
        reports: &[PowerReport],
        about: &About,
        progress: Option<(usize, usize)>,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let measured = reports
            .first()
            .map_or(0, |r| r.baseline.len() + r.cells.len());
        let (done, planned) = progress.unwrap_or((measured, 0));
        let mut json = serde_json::json!({
            "policy": about.policy,
            "backend": about.backend,
            "weights": about.weights,
            "complete": progress.is_none(),
            "cells_done": done,
            "cells_planned": if progress.is_some() { planned } else { done },
            "report": reports.first(),
        });
        if let Some(deployment) = &about.deployment {
            json["deployment"] = deployment.clone();
            json["reports"] = serde_json::to_value(reports)?;
        }
        write_report(&self.json, &json)?;
        let mut md = markdown(reports, about);
        if progress.is_some() {
            md = format!(
                "**incomplete: {done} of {planned} cells measured** (the run was stopped or is \
                 still going; rerun the same command for the rest)\n\n{md}"
            );
        } else {
            for (report, svg) in reports.iter().zip([&self.svg, &self.twin_svg]) {
                draw(svg, report, &about.policy)?;
            }
        }
        write_atomically(&self.md, md.as_bytes())
    }
}

/// The cells measured so far, per judge, written after each one.
pub(super) struct SoFar<'a> {
    outputs: &'a PowerOutputs,
    spec: &'a PowerSpec,
    tol: Tolerances,
    about: About,
    planned: usize,
    /// Per judge: its fault-free cells and its degraded ones.
    cells: Vec<(Judge, Vec<PowerCell>, Vec<PowerCell>)>,
    started: std::time::Instant,
    pub write_error: Option<anyhow::Error>,
}

impl<'a> SoFar<'a> {
    pub fn new(
        outputs: &'a PowerOutputs,
        spec: &'a PowerSpec,
        tol: Tolerances,
        about: About,
        judges: &[Judge],
    ) -> Self {
        let planned = spec.families.len() * spec.cells_per_family();
        Self {
            outputs,
            spec,
            tol,
            about,
            planned,
            cells: judges
                .iter()
                .map(|&j| (j, Vec::new(), Vec::new()))
                .collect(),
            started: std::time::Instant::now(),
            write_error: None,
        }
    }

    pub fn add(&mut self, judge: Judge, cell: PowerCell) {
        if let Some((_, baseline, cells)) = self.cells.iter_mut().find(|(j, ..)| *j == judge) {
            if cell.degradation.is_none() {
                baseline.push(cell);
            } else {
                cells.push(cell);
            }
        }
        // Every judge's cell of one measurement arrives together: write after the last.
        if self.cells.last().is_some_and(|(j, ..)| *j != judge) {
            return;
        }
        if let Err(e) = self.write() {
            eprintln!("warning: {e:#}");
            self.write_error.get_or_insert(e);
        }
    }

    pub fn write(&self) -> Result<()> {
        let reports: Vec<PowerReport> = self
            .cells
            .iter()
            .map(|(judge, baseline, cells)| {
                self.spec.report(
                    *judge,
                    self.tol,
                    baseline.clone(),
                    cells.clone(),
                    self.started,
                )
            })
            .collect();
        let done = reports
            .first()
            .map_or(0, |r| r.baseline.len() + r.cells.len());
        self.outputs
            .write(&reports, &self.about, Some((done, self.planned)))
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
pub(super) fn line(cell: &PowerCell, seconds: f64) -> String {
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

/// power.md: what was measured, then per judge the smallest detected e and the detection of
/// every cell.
fn markdown(reports: &[PowerReport], about: &About) -> String {
    let Some(r) = reports.first() else {
        return "# esmfuzz power\n\nNothing measured.\n".into();
    };
    let counts: Vec<String> = r.counts.iter().map(|n| n.to_string()).collect();
    let mut md = format!(
        "# esmfuzz power\n\nUnder test: **{}**, degradations in layer {} (0-based), {} trials \
         (generator seeds {}..{}) per cell, detection read at {} cases per family. Detected = \
         the family reports a failure (any property the judge counts) in >= {:.0}% of trials.\n\n",
        about.policy,
        r.layer,
        r.trials,
        r.seed,
        r.seed + r.trials as u64 - 1,
        counts.join(" and "),
        100.0 * DETECTED
    );
    if about.deployment.is_some() {
        md.push_str(&super::power_deployment::summary(reports));
    }
    for report in reports {
        if reports.len() > 1 {
            md.push_str(&format!("## Judge: {}\n\n", report.judge));
            // The judge's own tables one heading level down.
            for l in judge_body(report).lines() {
                if l.starts_with("## ") {
                    md.push('#');
                }
                md.push_str(l);
                md.push('\n');
            }
        } else {
            md.push_str(&judge_body(report));
        }
    }
    md
}

/// One judge's tables: the smallest e detected, then every cell.
fn judge_body(r: &PowerReport) -> String {
    let mut md = String::new();
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
        "\nTolerances: {}\n\n![detection curves]({})\n\nMeasured in {:.0} s.\n\n",
        serde_json::to_string(&r.tolerances).unwrap_or_default(),
        match r.judge {
            Judge::Bound => "detection.svg",
            Judge::BoundAndTwin => "detection-bound-and-twin.svg",
        },
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
