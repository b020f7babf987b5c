//! `esmfuzz power --deployment ...`: what `fuzz --deployment`'s judges can see. The same
//! generated cases go to the deployment under test, fault-free (its failures are false
//! alarms: another team's stack of one precision, e.g. the HF FP16 adapter), and to
//! `esmfuzz serve` of that precision carrying each degradation (their failures are
//! detections). Every case is judged by the precision's fixed bound and by the bound with the
//! twin judge (our own policy of that precision run on the same case) from one call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};

use esmfuzz::backend::BackendKind;
use esmfuzz::batch::Layout;
use esmfuzz::deployment::{Deployment, Endpoint};
use esmfuzz::harness::cases::Oracle;
use esmfuzz::harness::family::Check;
use esmfuzz::harness::power::{
    Degradation, Judge, PowerCell, PowerError, PowerReport, PowerSpec, SubjectPower,
    run_power_on_subjects,
};
use esmfuzz::harness::subject::{InProcess, PooledMemo, PooledOnce, Subject};
use esmfuzz::harness::verdict::{PropertyId, Tolerances};
use esmfuzz::model::{ComputePlan, FaultSet, Fp32Places, ModelSpec, Precision};
use esmfuzz::named::Named;
use esmfuzz::with_backend;

use super::fuzz::stop_on_signals_saying;
use super::fuzz_deployment::{
    ConnectArgs, STDERR_LOG, check_handshake, identity_probe, precision_of_dtype,
};
use super::policy::PolicyArgs;
use super::power::{About, PowerArgs, PowerOutputs, SoFar, finish, line};
use super::{ModelArgs, Outcome};

/// The stderr of every degraded `esmfuzz serve`, appended in `--out`.
const SERVE_STDERR_LOG: &str = "serve-stderr.log";

pub fn run(args: PowerArgs) -> Result<Outcome> {
    // Every argument is checked, and the weights read, before --out is touched.
    let endpoint: Endpoint = args.endpoint.as_deref().unwrap_or_default().parse()?;
    let headers = args.connect.headers()?;
    if !headers.is_empty() && matches!(endpoint, Endpoint::Process(_)) {
        bail!("--header is for http:// and oip:// deployments, not a child process");
    }
    let config = args.model.config_only()?;
    let spec = args.spec(config.num_hidden_layers)?;
    refuse_harness_layouts(&spec)?;
    let outputs = PowerOutputs::new(&args.out);
    outputs.check(&args.model)?;
    let checkpoint = args.model.open()?;
    let backend = args.model.backend;
    let gemm = args.policy.gemm(backend)?;
    let ref_plan = PolicyArgs::reference_plan(backend, gemm)?;
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals_saying(
        &stop,
        format!(
            "\nesmfuzz: a second signal: stopped at once (exit 2). {}: power.md and power.json \
             hold the cells measured before and say incomplete.\n",
            args.out.display()
        ),
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let shape = (config.hidden_size, config.num_hidden_layers);
    eprintln!("starting the deployment under test: {endpoint}");
    let deployment = args.connect.start(
        &endpoint,
        headers,
        args.out.join(STDERR_LOG),
        shape,
        Arc::clone(&stop),
    )?;
    let handshake = deployment.handshake().clone();
    check_handshake(&handshake, shape.0, shape.1)?;
    let precision = match args.bound_of {
        Some(p) => p,
        None => precision_of_dtype(&handshake.dtype)?,
    };
    let tol = Tolerances::for_precision(precision);
    let twin_plan = ComputePlan::new(precision, backend).with_gemm(gemm)?;
    let about = About {
        policy: format!(
            "deployment {endpoint} ({} {}) against esmfuzz serve --precision {} with each degradation",
            handshake.model,
            handshake.dtype,
            precision.name()
        ),
        backend,
        weights: checkpoint.file.path.clone(),
        deployment: Some(serde_json::json!({
            "endpoint": endpoint.to_string(),
            "handshake": handshake,
            "pooling": args.connect.pooling.name(),
            "bound_of": precision.name(),
            "twin": twin_plan.describe(),
            "degraded": format!("esmfuzz serve --precision {} --degrade ...", precision.name()),
        })),
    };
    let judges = [Judge::Bound, Judge::BoundAndTwin];
    let mut sofar = SoFar::new(&outputs, &spec, tol, about.clone(), &judges);
    sofar.write()?;
    let serve = ServeCommand {
        exe: std::env::current_exe().context("finding this esmfuzz to start `serve`")?,
        model: &args.model,
        weights: checkpoint.file.path.clone(),
        precision,
        backend,
        pooling: args.connect.pooling.name(),
        layer: spec.layer,
    };
    let measured = with_backend!(backend, |B, device| {
        let specs = [
            ModelSpec {
                plan: ref_plan,
                fp32_places: Fp32Places::none(),
                faults: FaultSet::none(),
            },
            ModelSpec {
                plan: twin_plan,
                fp32_places: Fp32Places::none(),
                faults: FaultSet::none(),
            },
        ];
        let [reference, twin_model]: [_; 2] =
            super::build_streamed::<B>(&args.model, &checkpoint, &specs, &device)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("two specs build two models"))?;
        let memo = PooledMemo::default();
        let oracle = Oracle {
            model: &reference,
            pooling: args.connect.pooling,
            clock: None,
            memo: Some(&memo),
        };
        let identity = identity_probe(&deployment, oracle)?;
        eprintln!("identity probe: {}", identity.join("; "));
        let twin_in_process = InProcess(&twin_model);
        let twin = PooledOnce::new(&twin_in_process, args.connect.pooling, shape.0);
        let power = SubjectPower {
            oracle,
            twin: Some(&twin),
            baseline: &deployment,
        };
        let mut start = |degradation: Degradation, size: Option<f64>| {
            serve
                .start(
                    &args.connect,
                    &args.out,
                    degradation,
                    size,
                    Arc::clone(&stop),
                )
                .map_err(|e| PowerError::Subject(format!("{e:#}")))
        };
        let mut progress = |judge: Judge, cell: &PowerCell, seconds: f64| {
            eprintln!("{:<14} {}", judge.name(), line(cell, seconds));
            sofar.add(judge, cell.clone());
        };
        run_power_on_subjects(&power, &mut start, &tol, &spec, &mut progress)
    });
    deployment.shutdown();
    let reports = measured.context(
        "power --deployment stopped; power.md holds the cells measured before, marked incomplete",
    )?;
    finish(&outputs, &sofar, &reports, &about)
}

/// A deployment lays out its own batches: a family that judges the harness's packed layout
/// would measure nothing of it.
fn refuse_harness_layouts(spec: &PowerSpec) -> Result<()> {
    if let Some(f) = spec
        .families
        .iter()
        .find(|f| matches!(f.check(), Check::AgainstReference(Layout::Packed)))
    {
        bail!(
            "family {f}: a deployment lays out its own batches; use the mixed, isolation or \
             strata families with --deployment"
        );
    }
    Ok(())
}

/// `esmfuzz serve` of the deployment's precision on the same weights, with one degradation.
struct ServeCommand<'a> {
    exe: PathBuf,
    model: &'a ModelArgs,
    weights: PathBuf,
    precision: Precision,
    backend: BackendKind,
    pooling: &'static str,
    layer: usize,
}

impl ServeCommand<'_> {
    /// The command line: a size and layer for sized degradations; packed batches for the
    /// leak (it breaks packed attention only).
    fn argv(&self, degradation: Degradation, size: Option<f64>) -> Vec<String> {
        let mut argv: Vec<String> = vec![
            self.exe.display().to_string(),
            "serve".into(),
            "--weights".into(),
            self.weights.display().to_string(),
            "--backend".into(),
            self.backend.name().into(),
            "--precision".into(),
            self.precision.name().into(),
            "--pooling".into(),
            self.pooling.into(),
        ];
        if let Some(config) = &self.model.config {
            argv.extend(["--config".into(), config.display().to_string()]);
        }
        if let Some(preset) = &self.model.preset {
            argv.extend(["--preset".into(), preset.clone()]);
        }
        if degradation == Degradation::LeakAcrossSequences {
            argv.push("--packed".into());
        }
        let fault = match size {
            Some(e) => format!("{}={e:e}@{}", degradation.name(), self.layer),
            None => format!("{}@{}", degradation.name(), self.layer),
        };
        argv.extend(["--degrade".into(), fault]);
        argv
    }

    fn start(
        &self,
        connect: &ConnectArgs,
        out: &Path,
        degradation: Degradation,
        size: Option<f64>,
        stop: Arc<AtomicBool>,
    ) -> Result<Box<dyn Subject>> {
        let argv = self.argv(degradation, size);
        let (hidden, layers) = (
            self.model.config_only()?.hidden_size,
            self.model.config_only()?.num_hidden_layers,
        );
        let deployment: Deployment = connect
            .start(
                &Endpoint::Process(argv.clone()),
                Vec::new(),
                out.join(SERVE_STDERR_LOG),
                (hidden, layers),
                stop,
            )
            .with_context(|| format!("starting {}", argv.join(" ")))?;
        check_handshake(deployment.handshake(), hidden, layers)?;
        Ok(Box::new(deployment))
    }
}

/// power.md's summary for a deployment: per judge, the false alarms of the deployment under
/// test and the smallest size of each degradation detected at the largest count.
pub fn summary(reports: &[PowerReport]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let count = first.counts.iter().copied().max().unwrap_or(0);
    let mut degradations: Vec<Degradation> = Vec::new();
    for d in first.cells.iter().filter_map(|c| c.degradation) {
        if !degradations.contains(&d) {
            degradations.push(d);
        }
    }
    let mut md = format!(
        "Fault-free rows are the deployment under test: every failure there is a **false alarm**. \
         Degraded rows are `esmfuzz serve` of the same precision with that fault. Each case is \
         judged once by every judge: **bound** (the precision's fixed bounds) and \
         **bound-and-twin** (also each case's error against FP32 within 2x plus 1e-4 relative L2 \
         of our own same-precision policy's on the same case, as `fuzz --twin-judge`).\n\n\
         ## Summary at {count} cases per trial\n\n| judge | false alarms (failing cases / cases judged) |"
    );
    for d in &degradations {
        md.push_str(&format!(" {d}: smallest e detected |"));
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---|".repeat(degradations.len()));
    md.push('\n');
    for r in reports {
        let alarms: usize = r
            .baseline
            .iter()
            .map(|c| c.first_failure.iter().filter(|f| f.is_some()).count())
            .sum();
        let judged: usize = r.baseline.iter().map(|c| c.cases_judged).sum();
        md.push_str(&format!("| {} | {alarms} / {judged} |", r.judge));
        for d in &degradations {
            let found: Vec<String> = r
                .smallest
                .iter()
                .filter(|s| s.degradation == *d && s.count == count)
                .map(|s| {
                    let what = match (d.is_sized(), s.size, s.detected) {
                        (true, Some(e), _) => format!("{e:e}"),
                        (true, None, _) => "not reached".into(),
                        (false, _, true) => "detected".into(),
                        (false, _, false) => "not detected".into(),
                    };
                    format!("{} {what}", s.family)
                })
                .collect();
            md.push_str(&format!(" {} |", found.join("; ")));
        }
        md.push('\n');
    }
    let twin_ratio = reports
        .iter()
        .flat_map(|r| &r.baseline)
        .filter_map(|c| c.worst_measured.get(&PropertyId::TwinErrorRatio))
        .copied()
        .fold(f64::NAN, f64::max);
    if !twin_ratio.is_nan() {
        md.push_str(&format!(
            "\nThe largest twin-error ratio the fault-free deployment reached (over every case \
             the bound judged, 2 is the twin judge's limit): **{twin_ratio:.2}**.\n"
        ));
    }
    md.push_str(
        "\nA false alarm stops its trial, so a judge with false alarms judged fewer cases; the \
         twin judge may become `fuzz`'s default only with 0 false alarms in 640 cases of a \
         foreign stack.\n\n",
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use esmfuzz::harness::family::Family;
    use esmfuzz::harness::strategies::Stratum;

    fn spec(families: Vec<Family>) -> PowerSpec {
        PowerSpec {
            families,
            degradations: vec![Degradation::ScaleLayerOutput],
            sizes: vec![1e-2],
            trials: 1,
            counts: vec![1],
            seed: 1,
            layer: 3,
        }
    }

    #[test]
    fn packed_families_are_refused_for_a_deployment() {
        refuse_harness_layouts(&spec(vec![Family::Stratum(Stratum::Tiny)])).unwrap();
        let e = refuse_harness_layouts(&spec(vec![Family::Packed(Stratum::Tiny)])).unwrap_err();
        assert!(e.to_string().contains("lays out its own batches"), "{e}");
    }
}
