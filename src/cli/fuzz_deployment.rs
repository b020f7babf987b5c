//! `esmfuzz fuzz --deployment ...`: the campaign families run against another team's ESM-2
//! deployment (a child process, protocol 1 over HTTP, or an Open Inference Protocol server),
//! judged by our FP32 oracle on `--weights`, through the same driver, saved files, reports
//! and folders as a campaign of our own model.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use esmfuzz::deployment::child::ChildProcess;
use esmfuzz::deployment::http::{HttpLines, Oip, OipOptions};
use esmfuzz::deployment::protocol::{Handshake, PROTOCOL_VERSION};
use esmfuzz::deployment::transport::Transport;
use esmfuzz::deployment::{Deployment, Endpoint, Timeouts};
use esmfuzz::harness::campaign::SubjectRunner;
use esmfuzz::harness::cases::Oracle;
use esmfuzz::harness::deployment::{DeploymentBounds, Pooling, check_pooled, generate_cases};
use esmfuzz::harness::driver::{MAX_SHRINK_ITERS, RunOptions, ShrinkBudget};
use esmfuzz::harness::family::{Family, HeadsOffered};
use esmfuzz::harness::saved::DeploymentName;
use esmfuzz::harness::strategies::Stratum;
use esmfuzz::harness::subject::{InProcess, Subject};
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::model::{AttentionKernel, ComputePlan, FaultSet, Fp32Places, ModelSpec, Precision};
use esmfuzz::named::Named;
use esmfuzz::with_backend;

use super::fuzz::{Campaign, FuzzArgs, Planned, Start, check_plan, sha256_of, stop_on_signals};
use super::policy::PolicyArgs;
use super::report::{DeploymentSection, ModelSize, RunHeader};
use super::{Outcome, named};

/// The flags of `fuzz --deployment`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct DeploymentArgs {
    /// Fuzz another ESM-2 deployment instead of our own model: 'CMD ARGS' (a program
    /// speaking protocol 1 on stdin/stdout; split by shell rules, no shell run),
    /// http://HOST:PORT/PATH (protocol 1, one line POSTed per call) or oip://HOST:PORT/MODEL
    /// (oips:// for https; the Open Inference Protocol of Triton, KServe, MLServer). It is
    /// judged against our FP32 on --weights (docs/PROTOCOL.md).
    #[arg(long = "deployment", conflicts_with = "devices")]
    pub endpoint: Option<String>,
    /// The name its saved failures are kept under in the regressions folder (letters,
    /// digits, '.', '_', '-'); default: the handshake's model and dtype.
    #[arg(long, requires = "endpoint")]
    pub deployment_name: Option<String>,
    /// Judge with the bounds of this precision (default: the handshake's dtype).
    #[arg(long, value_parser = named::<Precision>(), requires = "endpoint")]
    pub bound_of: Option<Precision>,
    /// Also judge each case's error against our own policy of the same precision on the
    /// same case (within 2x plus 1e-4 relative L2).
    #[arg(long, requires = "endpoint")]
    pub twin_judge: bool,
    /// Calls a failure may spend shrinking (each shrink step is one case judged).
    #[arg(long, default_value_t = MAX_SHRINK_ITERS)]
    pub shrink_calls: u32,
    /// Seconds a failure may spend shrinking.
    #[arg(long, default_value_t = 600)]
    pub shrink_seconds: u32,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// How to reach and read a deployment (`fuzz --deployment` and `power --deployment`).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct ConnectArgs {
    /// How the deployment pools its rows (the oracle pools the same way): residue-mean
    /// (BOS and EOS excluded), all-mean, bos.
    #[arg(long, value_parser = named::<Pooling>(), default_value = "residue-mean")]
    pub pooling: Pooling,
    /// Seconds one call may take.
    #[arg(long, default_value_t = 120)]
    pub call_timeout: u64,
    /// Seconds the handshake and the first call may take (a deployment may compile first).
    #[arg(long, default_value_t = 600)]
    pub first_call_timeout: u64,
    /// An HTTP header for every request, 'Name: value' (repeatable; e.g. authorisation).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// OIP: the input's shape, [N] (n) or [N, 1] (n1).
    #[arg(long, value_parser = ["n", "n1"], default_value = "n")]
    pub oip_shape: String,
    /// OIP: the BYTES input tensor's name.
    #[arg(long, default_value = "sequences")]
    pub oip_input: String,
    /// OIP: the pooled output tensor's name (FP32 or FP16, [N, hidden]).
    #[arg(long, default_value = "pooled")]
    pub oip_output: String,
    /// The largest response accepted, in bytes (larger ones are a failed call).
    #[arg(long, default_value_t = MAX_RESPONSE_BYTES, hide = true)]
    pub max_response_bytes: usize,
}

impl ConnectArgs {
    /// The `--header` values as (name, value) pairs.
    pub fn headers(&self) -> Result<Vec<(String, String)>> {
        self.headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .filter(|(k, _)| !k.is_empty())
                    .with_context(|| format!("--header '{h}': expected 'Name: value'"))
            })
            .collect()
    }

    /// Starts (or reaches) the deployment at `endpoint` and shakes hands with it: a child
    /// process's stderr goes to `stderr_log`; `shape` is `--weights`'s (hidden, layers).
    pub fn start(
        &self,
        endpoint: &Endpoint,
        headers: Vec<(String, String)>,
        stderr_log: std::path::PathBuf,
        shape: (usize, usize),
        stop: Arc<AtomicBool>,
    ) -> Result<Deployment> {
        let transport: Box<dyn Transport> = match endpoint {
            Endpoint::Process(argv) => Box::new(ChildProcess::new(
                argv.clone(),
                stderr_log,
                self.max_response_bytes,
            )),
            Endpoint::Http(url) => Box::new(HttpLines::new(
                url.clone(),
                headers,
                self.max_response_bytes,
            )),
            Endpoint::Oip { base, model } => Box::new(Oip::new(
                base.clone(),
                model.clone(),
                headers,
                self.max_response_bytes,
                OipOptions {
                    input: self.oip_input.clone(),
                    output: self.oip_output.clone(),
                    n1: self.oip_shape == "n1",
                    ..OipOptions::default()
                },
                shape,
            )),
        };
        let timeouts = Timeouts {
            call: Duration::from_secs(self.call_timeout.max(1)),
            first_call: Duration::from_secs(self.first_call_timeout.max(1)),
        };
        Ok(Deployment::start(transport, timeouts, shape.0, stop)?)
    }
}

/// The largest response a deployment may send (64 sequences of a 3B model's 2,560 values
/// are about 2 MB as JSON; token states of a full batch far more).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// The deployment's stderr log in the campaign folder.
pub const STDERR_LOG: &str = "deployment-stderr.log";

/// Identity: below this pooled cosine on the probe set, the deployment does not run
/// `--weights` (or pools, truncates or tokenises otherwise): fuzzing would only list
/// hundreds of failures of one cause.
const IDENTITY_COSINE: f64 = 0.9;

pub fn run(args: &FuzzArgs, start: Start) -> Result<Outcome> {
    let d = &args.deployment;
    let endpoint: Endpoint = d.endpoint.as_deref().unwrap_or_default().parse()?;
    let headers = d.connect.headers()?;
    if !headers.is_empty() && matches!(endpoint, Endpoint::Process(_)) {
        bail!("--header is for http:// and oip:// deployments, not a child process");
    }
    if let Some(name) = &d.deployment_name
        && DeploymentName::sanitised(name).is_none_or(|n| n.as_str() != name)
    {
        bail!("--deployment-name '{name}': use letters, digits, '.', '_' and '-' (it names files)");
    }
    let Planned {
        spec,
        out,
        claim,
        stopped,
        fasta_sha256,
    } = start.plan(
        Family::deployment_campaign(args.max_stratum),
        HeadsOffered::PooledRowsOnly,
        args,
    )?;
    let checkpoint = args.model.open()?;
    let digest = sha256_of(&checkpoint.file.path)?;
    let config = checkpoint.config.clone();
    let backend = args.model.backend;
    let gemm = args.policy.gemm(backend)?;
    let ref_plan = PolicyArgs::reference_plan(backend, gemm)?;
    let (esmfuzz_version, git_commit) = RunHeader::this_build();
    let mut header = RunHeader {
        esmfuzz_version,
        git_commit,
        checkpoint_sha256: digest,
        model: ModelSize::of(&checkpoint),
        backend,
        device: String::new(),
        weights: checkpoint.file.path.clone(),
        policy: format!("deployment {endpoint}"),
        fp32_places: Fp32Places::none().to_string(),
        attention: AttentionKernel::Composed,
        gemm,
        reference_policy: ref_plan.describe(),
        deployment: None,
        fasta_sha256,
    };
    check_plan(&spec, &out, stopped.as_ref(), &header, args.shard)?;
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(&stop, &out)?;
    let options = RunOptions {
        shrink: ShrinkBudget {
            calls: d.shrink_calls,
            millis: d.shrink_seconds.saturating_mul(1000),
        },
        localise: false,
        ..RunOptions::campaign(&spec)
    };
    let campaign = Campaign {
        out: &out,
        claim,
        resumed: stopped.is_some(),
        spec: &spec,
        options,
        stop: &stop,
        signals_installed: true,
    }
    .claim()?;
    let started = Instant::now();
    eprintln!("starting the deployment: {endpoint}");
    let deployment = d.connect.start(
        &endpoint,
        headers,
        out.join(STDERR_LOG),
        (config.hidden_size, config.num_hidden_layers),
        Arc::clone(&stop),
    )?;
    let handshake = deployment.handshake().clone();
    check_handshake(&handshake, config.hidden_size, config.num_hidden_layers)?;
    let precision = match d.bound_of {
        Some(p) => p,
        None => precision_of_dtype(&handshake.dtype)?,
    };
    let name = match &d.deployment_name {
        Some(name) => DeploymentName::sanitised(name),
        None => DeploymentName::sanitised(&format!("{}-{}", handshake.model, handshake.dtype)),
    }
    .context("the handshake's model and dtype make no file name: pass --deployment-name")?;
    if let Some(stopped) = &stopped
        && stopped.campaign.precision != precision
    {
        bail!(
            "{}: the stopped campaign was judged with {} bounds, this deployment's with {}; \
             resume with the same --bound-of",
            out.display(),
            stopped.campaign.precision.name(),
            precision.name()
        );
    }
    if let Some(theirs) = stopped
        .as_ref()
        .and_then(|s| s.header.deployment.as_ref())
        .filter(|d| d.name != name.as_str())
    {
        bail!(
            "{}: the stopped campaign fuzzed deployment {}, this one is {}; resume with the same \
             --deployment-name",
            out.display(),
            theirs.name,
            name.as_str()
        );
    }
    let tol = Tolerances::for_precision(precision);
    let mut section = DeploymentSection {
        transport: endpoint.kind().into(),
        endpoint: endpoint.to_string(),
        name: name.as_str().to_string(),
        handshake: handshake.clone(),
        pooling: d.connect.pooling.name().into(),
        bound_of: precision.name().into(),
        twin_judge: d.twin_judge,
        identity: Vec::new(),
        calls: deployment.stats(),
        wall_seconds: 0.0,
        oracle_seconds: 0.0,
        skipped: skipped_properties(&deployment),
        notes: notes(&endpoint, &handshake),
        stderr_tail: String::new(),
    };
    eprintln!(
        "deployment: {} {} ({} layers x {}), judged with {} bounds, saved failures under deployment={}",
        handshake.model,
        handshake.dtype,
        handshake.layers,
        handshake.hidden,
        precision.name(),
        name.as_str()
    );
    let outcome = with_backend!(backend, |B, device| {
        header.device = format!("{device:?}");
        let mut specs = vec![ModelSpec {
            plan: ref_plan,
            fp32_places: Fp32Places::none(),
            faults: FaultSet::none(),
        }];
        if d.twin_judge {
            specs.push(ModelSpec {
                plan: ComputePlan::new(precision, backend).with_gemm(gemm)?,
                fp32_places: Fp32Places::none(),
                faults: FaultSet::none(),
            });
        }
        let mut built =
            super::build_streamed::<B>(&args.model, &checkpoint, &specs, &device)?.into_iter();
        let Some(reference) = built.next() else {
            unreachable!("one spec at least, one model each")
        };
        let twin_model = built.next();
        let twin = twin_model.as_ref().map(InProcess);
        let oracle_clock = std::cell::Cell::new(Duration::ZERO);
        let oracle = Oracle {
            model: &reference,
            pooling: d.connect.pooling,
            clock: Some(&oracle_clock),
            memo: None,
        };
        section.identity = identity_probe(&deployment, oracle)?;
        let runner = SubjectRunner {
            oracle,
            subject: &deployment,
            twin: twin.as_ref().map(|t| t as &dyn Subject),
            key: name.clone().into(),
            precision,
            tol,
        };
        header.deployment = Some(section.clone());
        let mut refresh = |h: &mut RunHeader| {
            if let Some(s) = h.deployment.as_mut() {
                s.calls = deployment.stats();
                s.wall_seconds = started.elapsed().as_secs_f64();
                s.oracle_seconds = oracle_clock.get().as_secs_f64();
                s.stderr_tail = deployment.stderr_tail();
            }
        };
        campaign.run(&runner, header, &mut refresh)
    });
    deployment.shutdown();
    let stats = deployment.stats();
    let wall = started.elapsed().as_secs_f64();
    eprintln!(
        "deployment calls: {} ({:.1} s inside calls, {:.2} s in the protocol here, {:.1} s wall)",
        stats.calls, stats.seconds_in_calls, stats.protocol_seconds, wall
    );
    outcome
}

/// `--weights` is the truth for shapes: a deployment that says otherwise runs another model.
pub(super) fn check_handshake(h: &Handshake, hidden: usize, layers: usize) -> Result<()> {
    if h.protocol != PROTOCOL_VERSION {
        bail!(
            "the deployment speaks protocol {}, this esmfuzz protocol {PROTOCOL_VERSION}",
            h.protocol
        );
    }
    if h.hidden != hidden || h.layers != layers {
        bail!(
            "the deployment runs {} layers x {} (its handshake), --weights has {layers} x {hidden}: \
             it does not run these weights; point --weights at the checkpoint it serves",
            h.layers,
            h.hidden
        );
    }
    if h.max_batch == 0 {
        bail!("the deployment's handshake says max_batch 0: it would embed nothing");
    }
    Ok(())
}

/// The precision whose bounds judge a handshake's dtype.
pub(super) fn precision_of_dtype(dtype: &str) -> Result<Precision> {
    Ok(match dtype.to_ascii_lowercase().as_str() {
        "float16" | "fp16" | "half" | "f16" => Precision::F16,
        "bfloat16" | "bf16" => Precision::Bf16,
        "float32" | "fp32" | "f32" => Precision::F32,
        other => bail!(
            "the deployment's dtype '{other}' names no precision: pass --bound-of f16|bf16|f32"
        ),
    })
}

/// Properties a campaign cannot judge on this deployment, and why.
fn skipped_properties(deployment: &Deployment) -> Vec<String> {
    let mut skipped = vec![
        "non-finite values in hidden layers: only the returned rows are checked".to_string(),
        "packed vs padded: the deployment lays out its own batches".to_string(),
    ];
    if !deployment.capabilities().tokens {
        skipped.push(
            "token cosines, boundary tokens and the KS distance: the deployment sends pooled rows only \
             (send tokens_b64 and say \"tokens\": true in the handshake)"
                .to_string(),
        );
    }
    skipped
}

/// What a reader of this deployment's verdicts should know.
fn notes(endpoint: &Endpoint, handshake: &Handshake) -> Vec<String> {
    let mut notes = Vec::new();
    if matches!(endpoint, Endpoint::Oip { .. }) {
        notes.push(
            "OIP servers may regroup requests (dynamic batching): batch-mate, order and determinism \
             families then judge the server's batches, not only the harness's"
                .to_string(),
        );
    }
    if handshake.max_batch < esmfuzz::harness::family::MIXED_BATCH_MAX {
        notes.push(format!(
            "max_batch {} is below the harness's batches of up to {}: larger ones are refused",
            handshake.max_batch,
            esmfuzz::harness::family::MIXED_BATCH_MAX
        ));
    }
    notes
}

/// The probe set embedded before fuzzing: one protein of each stratum up to long, fixed.
fn probe_set() -> Vec<esmfuzz::input::Protein> {
    let mut probes = generate_cases(
        &[
            Stratum::Tiny,
            Stratum::Short,
            Stratum::Medium,
            Stratum::Long,
        ],
        1,
        0x1d_e7_17,
    );
    for (i, p) in probes.iter_mut().enumerate() {
        p.name = format!("identity-probe-{i}");
    }
    probes
}

/// Embeds the probe set and stops (an error, exit 2) when the deployment does not run
/// `--weights` as the oracle pools it: another pooling, BOS pooling, truncation, another
/// model, with `check`'s diagnosis. Returns what it measured, for the report.
pub(super) fn identity_probe<B: burn::tensor::backend::Backend>(
    deployment: &Deployment,
    oracle: Oracle<'_, B>,
) -> Result<Vec<String>> {
    let probes = probe_set();
    let hidden = oracle.model.config.hidden_size;
    let mut theirs = Vec::with_capacity(probes.len());
    for p in &probes {
        let states = deployment
            .run(std::slice::from_ref(p), esmfuzz::batch::Layout::Padded)
            .map_err(|e| anyhow::anyhow!("identity probe {}: {e}", p.name))?;
        theirs.extend(states.pooled);
    }
    let oracle_states: Vec<Vec<f32>> = probes
        .iter()
        .flat_map(|p| oracle.run(std::slice::from_ref(p)).last)
        .collect();
    let ours: Vec<Vec<f32>> = oracle_states
        .iter()
        .map(|s| oracle.pooling.pool(s, hidden))
        .collect();
    let cosines: Vec<f64> = ours
        .iter()
        .zip(&theirs)
        .map(|(o, t)| esmfuzz::harness::metrics::cosine(o, t))
        .collect();
    let check = check_pooled(
        &probes,
        &oracle_states,
        &theirs,
        hidden,
        DeploymentBounds {
            cosine: IDENTITY_COSINE,
            relative_l2: f64::INFINITY,
            norm_ratio: f64::INFINITY,
        },
    );
    let mut lines = vec![format!(
        "{} probes of {} residues: pooled cosine under --pooling {} {}",
        probes.len(),
        probes
            .iter()
            .map(|p| p.residues.len().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        oracle.pooling.name(),
        cosines
            .iter()
            .map(|c| format!("{c:.6}"))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    lines.push(format!(
        "median cosine by pooling: {}",
        check
            .median_cosine_by_pooling
            .iter()
            .map(|(p, c)| format!("{} {c:.4}", p.name()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let worst = esmfuzz::harness::metrics::min(&cosines);
    let pooled_otherwise = check
        .pooling_detected
        .filter(|p| *p != oracle.pooling)
        .filter(|p| {
            check
                .median_cosine_by_pooling
                .iter()
                .any(|(q, c)| q == p && *c > IDENTITY_COSINE)
        });
    if let Some(detected) = pooled_otherwise {
        bail!(
            "identity probe: the deployment's rows match {} pooling, not --pooling {} ({}); rerun \
             with --pooling {} if that is what it means to serve",
            detected.name(),
            oracle.pooling.name(),
            lines[1],
            detected.name()
        );
    }
    // NaN fails too: a NaN cosine is no match.
    if worst.is_nan() || worst <= IDENTITY_COSINE {
        let diagnosis = if check.diagnosis.is_empty() {
            "no known pipeline fault explains it".to_string()
        } else {
            check.diagnosis.join("; ")
        };
        bail!(
            "identity probe: pooled cosine {worst:.4} < {IDENTITY_COSINE} against our FP32 on --weights: \
             the deployment does not run these weights as we pool them ({}; {}; {diagnosis})",
            lines[0],
            lines[1]
        );
    }
    Ok(lines)
}
