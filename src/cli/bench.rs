//! `esmfuzz bench`: throughput of padded versus packed batches, first (cold) passes apart.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use serde::Serialize;

use esmfuzz::backend::BackendKind;
use esmfuzz::batch::{
    self, Batch, Batching, Layout, forward_only_seconds, pack_proteins, packed_batches,
    padded_batches, padding_efficiency,
};
use esmfuzz::input::{NormaliseOptions, Protein};
use esmfuzz::model::{
    AttentionKernel, ComputePlan, Esm2, EsmWeights, FaultSet, Gemm, Precision, resolve_gemm,
};
use esmfuzz::with_backend;

use super::{DEFAULT_CORPUS, ModelArgs, Outcome, named, read_proteins, token_count, write_report};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub fasta_limits: super::FastaLimitArgs,
    /// Sequences to embed (their lengths are what matters).
    #[arg(long, default_value = DEFAULT_CORPUS)]
    pub fasta: PathBuf,
    /// Policies to time.
    #[arg(long, value_parser = named::<Precision>(), value_delimiter = ',', default_value = "f32,f16")]
    pub precisions: Vec<Precision>,
    /// Attention kernels to time for each reduced policy (`composed,fused` gives a row each;
    /// f32 always runs composed).
    #[arg(long, value_parser = named::<AttentionKernel>(), value_delimiter = ',', default_value = "composed")]
    pub attention: Vec<AttentionKernel>,
    /// Matrix-product engines to time, a row each: `cublas` (CUDA only) and/or `burn`
    /// (default: cuBLAS on CUDA when it loads, else burn).
    #[arg(long, value_parser = named::<Gemm>(), value_delimiter = ',')]
    pub gemm: Vec<Gemm>,
    /// Tokens per batch for both layouts (default: 1024 on the CPU; on CUDA 16384, 65536 for models no wider than 8M).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_budget: Option<u64>,
    /// Slots per attention group of packed batches; several values give one row each
    /// (default: 1024 on the CPU, 4096 on CUDA).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub attention_group_slots: Vec<u64>,
    /// Timed passes over the file per layout after the first (the best is reported; the
    /// first pass, which compiles and tunes kernels on CUDA, is reported apart).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Random weights of the `--preset` size instead of a checkpoint (no file needed: timing
    /// only, e.g. `--preset esm2_t36_3B_UR50D --synthetic`).
    #[arg(long, requires = "preset")]
    pub synthetic: bool,
    /// Write the padded batches and the packed ones (token ids and `cu_seqlens`, in the order
    /// run) and the model config as JSON, for `scripts/torch_bench.py` to time HF transformers
    /// on exactly these batches.
    #[arg(long)]
    pub batches_out: Option<PathBuf>,
    /// Only write --batches-out, time nothing (so torch can run first).
    #[arg(long, requires = "batches_out")]
    pub plan_only: bool,
    /// `scripts/torch_bench.py`'s report on the same batches and card: adds esmfuzz / torch
    /// ratios per policy, against each anchor it measured and checked (torch eager,
    /// torch.compile, packed torch eager and compiled).
    #[arg(long)]
    pub torch: Option<PathBuf>,
    /// Mark the last timed pass of this layout as the region a CUDA profiler records when it
    /// is started with profiling off (`ncu --profile-from-start off`, `nsys -c
    /// cudaProfilerApi`): one warm pass, no compilation or autotuning in it. No effect
    /// without a profiler; CUDA only.
    #[arg(long, value_parser = named::<Layout>())]
    pub profile_pass: Option<Layout>,
}

/// What `--batches-out` writes: the batches both layouts of the bench run, for
/// `scripts/torch_bench.py`.
#[derive(Serialize)]
struct BatchPlan<'a> {
    /// [`BATCH_PLAN_VERSION`].
    version: u32,
    fasta: &'a std::path::Path,
    token_budget: usize,
    /// The model's HF config (for a random-weight torch model of the same shape).
    config: &'a esmfuzz::model::EsmConfig,
    /// Per padded batch, each sequence's token ids (BOS and EOS included).
    batches: Vec<Vec<Vec<u32>>>,
    /// Per padded batch, each sequence's record (its index in the FASTA as read), as `batches`.
    batch_records: Vec<Vec<usize>>,
    /// The packed batches of the same budget, exactly as the packed pass runs them
    /// ([`packed_batches`]).
    packed: Vec<PackedPlan>,
}

/// `--batches-out`'s format: 1 had `fasta`, `token_budget`, `config` and `batches` (and no
/// version field); 2 added `version`, `batch_records` and `packed`.
const BATCH_PLAN_VERSION: u32 = 2;

/// One packed batch of [`BatchPlan`]: one token stream, sequences back to back.
#[derive(Serialize)]
struct PackedPlan {
    /// Each sequence's record, in stream order.
    records: Vec<usize>,
    /// Sequence boundaries in `tokens`, `[sequences + 1]`, from 0.
    cu_seqlens: Vec<i32>,
    /// The longest sequence, BOS and EOS included.
    max_seqlen: usize,
    /// Every sequence's token ids (BOS and EOS included), back to back.
    tokens: Vec<u32>,
}

impl BatchPlan<'_> {
    fn packed_of(proteins: &[Protein], budget: usize, token_dropout: bool) -> Vec<PackedPlan> {
        packed_batches(proteins, budget, token_dropout)
            .map(|b| PackedPlan {
                tokens: b.input().tokens.clone(),
                records: b.records,
                cu_seqlens: b.cu_seqlens,
                max_seqlen: b.max_seqlen,
            })
            .collect()
    }
}

/// One row of `scripts/torch_bench.py`'s report: torch eager on the padded batches (the
/// report's `rows`, every version).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct TorchRow {
    precision: Precision,
    tokens_per_second: f64,
    first_pass_seconds: f64,
    #[serde(default)]
    peak_memory_gib: Option<f64>,
}

/// How `scripts/torch_bench.py` ran HF transformers: the anchors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum AnchorMode {
    /// `EsmModel` as it ships (SDPA) on the padded batches.
    Eager,
    /// `torch.compile(model, dynamic=True)` on the padded batches.
    Compiled,
    /// The same model on the packed batches, attention through `varlen_attn`.
    Packed,
    /// `torch.compile` of the packed model.
    PackedCompiled,
}

impl AnchorMode {
    const ALL: [AnchorMode; 4] = [
        AnchorMode::Eager,
        AnchorMode::Compiled,
        AnchorMode::Packed,
        AnchorMode::PackedCompiled,
    ];

    fn label(self) -> &'static str {
        match self {
            AnchorMode::Eager => "torch eager",
            AnchorMode::Compiled => "torch.compile",
            AnchorMode::Packed => "packed torch",
            AnchorMode::PackedCompiled => "packed torch.compile",
        }
    }
}

/// What became of one anchor (only `ok` carries a figure to compare with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum AnchorStatus {
    /// Checked against HF FP32 and timed.
    Ok,
    /// Disagreed with HF FP32 beyond its precision's bounds: not timed.
    Invalid,
    Error,
    Timeout,
    /// Does not apply (varlen_attn has no FP32).
    Skipped,
    /// Checked on the CPU, never timed.
    CheckOnly,
    /// Not reached (the script's deadline, or no FP32 reference to check against).
    NotRun,
}

impl AnchorStatus {
    fn name(self) -> &'static str {
        match self {
            AnchorStatus::Ok => "ok",
            AnchorStatus::Invalid => "invalid",
            AnchorStatus::Error => "error",
            AnchorStatus::Timeout => "timeout",
            AnchorStatus::Skipped => "skipped",
            AnchorStatus::CheckOnly => "check-only",
            AnchorStatus::NotRun => "not-run",
        }
    }
}

/// One entry of the report's `modes` (version 2): a mode at a precision.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct TorchAnchor {
    mode: AnchorMode,
    precision: Precision,
    status: AnchorStatus,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    tokens_per_second: Option<f64>,
    #[serde(default)]
    first_pass_seconds: Option<f64>,
    #[serde(default)]
    peak_memory_gib: Option<f64>,
}

impl TorchAnchor {
    /// Its tokens per second, when it is a figure to compare with.
    fn figure(&self) -> Option<f64> {
        self.tokens_per_second
            .filter(|t| self.status == AnchorStatus::Ok && t.is_finite() && *t > 0.0)
    }
}

#[derive(Debug, serde::Deserialize)]
struct TorchReport {
    device: String,
    rows: Vec<TorchRow>,
    /// Every mode and precision (version 2; version 1 had only `rows`).
    #[serde(default)]
    modes: Vec<TorchAnchor>,
}

impl TorchReport {
    /// The anchors at `precision`: `modes`, or a version 1 report's eager rows.
    fn anchors(&self, precision: Precision) -> Vec<TorchAnchor> {
        if self.modes.is_empty() {
            return self
                .rows
                .iter()
                .filter(|r| r.precision == precision)
                .map(|r| TorchAnchor {
                    mode: AnchorMode::Eager,
                    precision,
                    status: AnchorStatus::Ok,
                    reason: None,
                    tokens_per_second: Some(r.tokens_per_second),
                    first_pass_seconds: Some(r.first_pass_seconds),
                    peak_memory_gib: r.peak_memory_gib,
                })
                .collect();
        }
        AnchorMode::ALL
            .iter()
            .filter_map(|&m| {
                self.modes
                    .iter()
                    .find(|a| a.mode == m && a.precision == precision)
            })
            .cloned()
            .collect()
    }
}

/// esmfuzz against one anchor, for one row of the bench.
#[derive(Debug, Serialize)]
struct AnchorRatio {
    #[serde(flatten)]
    torch: TorchAnchor,
    /// esmfuzz's faster layout over the anchor.
    best_over_torch: Option<f64>,
    /// esmfuzz packed over the anchor.
    packed_over_torch: Option<f64>,
    /// esmfuzz's packed forward passes alone over the anchor: the same work as the anchor's
    /// figure (torch's passes fetch and pool nothing).
    packed_forward_over_torch: Option<f64>,
}

/// Throughput of one policy, padded and packed.
#[derive(Debug, Serialize)]
struct BenchRow {
    precision: Precision,
    attention: AttentionKernel,
    gemm: Gemm,
    policy: String,
    /// Slots per attention group of the packed layout.
    attention_group_slots: usize,
    /// Seconds of the first pass over the file, kernel compilation and autotuning included
    /// (on CUDA each new shape compiles and tunes kernels).
    padded_first_pass_seconds: f64,
    packed_first_pass_seconds: f64,
    /// Tokens per second of the best later pass (warm caches).
    padded_tokens_per_second: f64,
    packed_tokens_per_second: f64,
    /// Tokens per second of the best packed pass of forwards alone, timed as the torch
    /// anchors time theirs: no states brought to the host, no pooling
    /// ([`esmfuzz::batch::forward_only_seconds`]). The rows above embed: each batch's last
    /// states pooled (on CUDA on the device) and the pooled rows fetched, as `embed` does.
    packed_forward_tokens_per_second: f64,
    packed_over_padded: f64,
    /// Useful TFLOP/s of those passes ([`EsmConfig::forward_flops`] of the real tokens over
    /// the pass's seconds; padding is not counted as work).
    ///
    /// [`EsmConfig::forward_flops`]: esmfuzz::model::EsmConfig::forward_flops
    padded_tflops: f64,
    packed_tflops: f64,
    /// HF transformers eager on the same padded batches and card (`--torch`).
    torch: Option<TorchRow>,
    padded_over_torch: Option<f64>,
    packed_over_torch: Option<f64>,
    /// Every anchor of `--torch` at this precision, in the order eager, compiled, packed,
    /// packed compiled (those it has).
    anchors: Vec<AnchorRatio>,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    backend: BackendKind,
    device: String,
    fasta: PathBuf,
    sequences: usize,
    tokens: usize,
    token_budget: usize,
    padding_efficiency: f64,
    packing_efficiency: f64,
    packed_batches: usize,
    /// Warm passes per layout (the best is reported).
    repeat: usize,
    /// The model: layers x hidden, and whether its weights are random (`--synthetic`).
    model: String,
    torch_device: Option<String>,
    rows: Vec<BenchRow>,
    /// Policies asked for that were not timed, and why (refused before loading, or stopped
    /// by an error; after an error nothing more is timed).
    not_timed: Vec<NotTimed>,
}

/// A policy of the bench that has no row.
#[derive(Debug, Clone, Serialize)]
struct NotTimed {
    policy: String,
    reason: String,
}

impl NotTimed {
    fn of(plan: &ComputePlan, reason: String) -> Self {
        Self {
            policy: row_label(plan.precision, plan.attention, plan.gemm),
            reason,
        }
    }
}

/// Seconds of one pass over `proteins`; a pass that ran out of device memory is an error
/// (a time at another budget than the one asked for compares with nothing).
fn pass_seconds<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    batching: Batching,
) -> Result<f64> {
    let start = Instant::now();
    let ran = batch::embed(
        model,
        proteins,
        batching,
        |_, _| Ok::<(), anyhow::Error>(()),
    )?;
    if ran.final_budget < batching.budget {
        anyhow::bail!(
            "the device ran out of memory at a budget of {} tokens (it went on at {}): time \
             this model with --token-budget {}",
            batching.budget,
            ran.final_budget,
            ran.final_budget
        );
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Runs `f` as the region a CUDA profiler started with profiling off records
/// (`cuProfilerStart` / `cuProfilerStop` on device 0's primary context).
#[cfg(feature = "cuda")]
fn profiled<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    use cudarc::driver::{CudaContext, profiler_start, profiler_stop};
    let context = CudaContext::new(0).map_err(|e| anyhow::anyhow!("CUDA context: {e:?}"))?;
    context
        .bind_to_thread()
        .map_err(|e| anyhow::anyhow!("CUDA context: {e:?}"))?;
    profiler_start().map_err(|e| anyhow::anyhow!("cuProfilerStart: {e:?}"))?;
    // The pass ends by reading its outputs back, so its kernels all ran inside the region.
    let result = f();
    profiler_stop().map_err(|e| anyhow::anyhow!("cuProfilerStop: {e:?}"))?;
    result
}

/// Without CUDA there is no profiler region ([`run`] refuses the flag first).
#[cfg(not(feature = "cuda"))]
fn profiled<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    f()
}

/// The first (cold) pass and the best of `repeat` later passes, in seconds, with progress
/// on stderr.
fn timed_passes<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    batching: Batching,
    repeat: usize,
    profile: Option<Layout>,
) -> Result<(f64, f64)> {
    let name = batching.layout;
    let first = pass_seconds(model, proteins, batching)?;
    eprintln!("  {name}: first pass {first:.2} s");
    let mut best = f64::INFINITY;
    let passes = repeat.max(1);
    for i in 0..passes {
        let t = if profile == Some(batching.layout) && i + 1 == passes {
            profiled(|| pass_seconds(model, proteins, batching))?
        } else {
            pass_seconds(model, proteins, batching)?
        };
        eprintln!("  {name}: pass {} {t:.2} s", i + 2);
        best = best.min(t);
    }
    Ok((first, best))
}

/// The best of `repeat` forward-only passes ([`forward_only_seconds`]), in seconds,
/// after the embedding passes have warmed every shape, with progress on stderr.
fn forward_only_passes<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    batching: Batching,
    repeat: usize,
) -> Result<f64> {
    let mut best = f64::INFINITY;
    for i in 0..repeat.max(1) {
        let timing = forward_only_seconds(model, proteins, batching)?;
        // When the host had enqueued each batch: a last figure close to the pass's shows
        // a device that waited on the host.
        let enqueued: Vec<String> = timing
            .enqueued_seconds
            .iter()
            .map(|s| format!("{:.1}", s * 1e3))
            .collect();
        eprintln!(
            "  {}: forward only, pass {} {:.2} s (host enqueued batch ends at {} ms of {:.1})",
            batching.layout,
            i + 1,
            timing.seconds,
            enqueued.join(", "),
            timing.seconds * 1e3
        );
        best = best.min(timing.seconds);
    }
    Ok(best)
}

/// The row label of a policy: precision, `+fused` for fused attention, the gemm engine.
fn row_label(precision: Precision, attention: AttentionKernel, gemm: Gemm) -> String {
    let fused = match attention {
        AttentionKernel::Composed => "",
        AttentionKernel::Fused => "+fused",
    };
    format!("{}{fused} ({gemm})", precision.name())
}

/// Every policy and attention kernel asked for that can run, and those refused with the
/// reason (a gemm engine that does not load); none at all is an error.
fn timed_plans(args: &BenchArgs) -> Result<(Vec<ComputePlan>, Vec<NotTimed>)> {
    let backend = args.model.backend;
    let mut plans = Vec::new();
    let mut refused = Vec::new();
    let engines = if args.gemm.is_empty() {
        vec![None]
    } else {
        args.gemm.iter().copied().map(Some).collect()
    };
    for requested in engines {
        // A default engine that does not load falls back (with a warning); one asked for
        // that does not load leaves its rows not timed, with the reason.
        let resolved = resolve_gemm(requested, backend);
        let gemm = resolved
            .clone()
            .unwrap_or_else(|_| requested.unwrap_or(Gemm::Burn));
        for &precision in &args.precisions {
            for &kernel in &args.attention {
                let plan = resolved
                    .clone()
                    .map_err(anyhow::Error::from)
                    .and_then(|gemm| {
                        let plan = ComputePlan::new(precision, backend).with_attention(kernel);
                        Ok(plan.with_gemm(gemm)?)
                    });
                match plan {
                    Ok(plan) => plans.push(plan),
                    Err(e) => {
                        let policy = row_label(precision, kernel, gemm);
                        eprintln!("{policy} not timed: {e}");
                        refused.push(NotTimed {
                            policy,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
    }
    if plans.is_empty() {
        anyhow::bail!(
            "nothing to time: no policy of --precisions runs with --attention and --gemm"
        );
    }
    Ok((plans, refused))
}

/// Each row against every torch anchor at its precision: esmfuzz's best layout and packed
/// over the anchor, or why the anchor has no figure.
fn print_anchors(report: &BenchReport) {
    let rows: Vec<&BenchRow> = report
        .rows
        .iter()
        .filter(|r| !r.anchors.is_empty())
        .collect();
    if rows.is_empty() {
        return;
    }
    println!(
        "against torch on {} (its tokens/s and first pass; esmfuzz best layout / packed over it):",
        report.torch_device.as_deref().unwrap_or("?")
    );
    for r in rows {
        println!(
            "  {} ({} slots): esmfuzz padded {:.0}, packed {:.0} tok/s; packed forwards alone {:.0} tok/s",
            row_label(r.precision, r.attention, r.gemm),
            r.attention_group_slots,
            r.padded_tokens_per_second,
            r.packed_tokens_per_second,
            r.packed_forward_tokens_per_second
        );
        for a in &r.anchors {
            let t = &a.torch;
            match (
                t.figure(),
                a.best_over_torch,
                a.packed_over_torch,
                a.packed_forward_over_torch,
            ) {
                (Some(theirs), Some(best), Some(packed), Some(forward)) => println!(
                    "    {:<22} {:>12.0} tok/s  first pass {:>7.1} s   best {best:.2}x  packed {packed:.2}x  forwards alone {forward:.2}x",
                    t.mode.label(),
                    theirs,
                    t.first_pass_seconds.unwrap_or(f64::NAN),
                ),
                _ => println!(
                    "    {:<22} {}: {}",
                    t.mode.label(),
                    t.status.name(),
                    t.reason.as_deref().unwrap_or("no figure")
                ),
            }
        }
    }
}

pub fn run(args: BenchArgs) -> Result<Outcome> {
    super::check_outputs(
        &[args.batches_out.as_deref(), args.report.as_deref()],
        Some(&args.model),
        &[Some(&args.fasta), args.torch.as_deref()],
    )?;
    super::check_random_weights_fit(&args.model, args.synthetic && !args.plan_only)?;
    let proteins = read_proteins(
        &args.fasta,
        args.fasta_limits.options(NormaliseOptions::default()),
    )?;
    let (plans, refused) = timed_plans(&args)?;
    let torch = args
        .torch
        .as_deref()
        .map(|path| -> Result<TorchReport> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a torch_bench.py report", path.display()))
        })
        .transpose()?;
    // Random weights are drawn only once the plan is written (a 3B draw takes a while), and
    // a plan alone needs only the config.
    let (config, loaded) = match (&args.model.preset, args.synthetic) {
        (Some(name), true) => (esmfuzz::model::EsmConfig::preset(name)?, None),
        _ if args.plan_only => (args.model.config_only()?, None),
        _ => {
            let weights = args.model.load()?.weights;
            (weights.config.clone(), Some(weights))
        }
    };
    let backend = args.model.backend;
    let budget = args
        .model
        .budget(args.token_budget.map(|b| b as usize), &config);
    if let Some(path) = &args.batches_out {
        let padded = padded_batches(&proteins, budget);
        let plan = BatchPlan {
            version: BATCH_PLAN_VERSION,
            fasta: &args.fasta,
            token_budget: budget,
            config: &config,
            batches: padded
                .iter()
                .map(|b| b.iter().map(|&i| proteins[i].tokens()).collect())
                .collect(),
            batch_records: padded,
            packed: BatchPlan::packed_of(&proteins, budget, config.token_dropout),
        };
        write_report(path, &plan)?;
        if args.plan_only {
            eprintln!(
                "wrote {} padded and {} packed batches of {} sequences to {}",
                plan.batches.len(),
                plan.packed.len(),
                proteins.len(),
                path.display()
            );
            return Ok(Outcome::Passed);
        }
    }
    super::warn_if_over_budget(&proteins, budget);
    let weights = match loaded {
        Some(w) => w,
        None => {
            eprintln!(
                "random weights of {} layers x {}",
                config.num_hidden_layers, config.hidden_size
            );
            EsmWeights::random(&config, 0)
        }
    };
    let repeat = args.repeat as usize;
    let profile = args.profile_pass;
    if profile.is_some() && backend != BackendKind::Cuda {
        anyhow::bail!("--profile-pass marks a region for CUDA profilers: use --backend cuda");
    }
    let tokens = token_count(&proteins);
    let flops = weights
        .config
        .forward_flops(proteins.iter().map(Protein::token_len));
    let packing = pack_proteins(&proteins, budget);
    let report = with_backend!(backend, |B, device| {
        let mut report = BenchReport {
            backend,
            device: format!("{device:?}"),
            fasta: args.fasta.clone(),
            sequences: proteins.len(),
            tokens,
            token_budget: budget,
            padding_efficiency: padding_efficiency(&proteins, budget),
            packing_efficiency: packing.efficiency(),
            packed_batches: packing.bins.len(),
            repeat,
            model: format!(
                "{} layers x {}{}",
                weights.config.num_hidden_layers,
                weights.config.hidden_size,
                if args.synthetic {
                    ", random weights"
                } else {
                    ""
                }
            ),
            torch_device: torch.as_ref().map(|t| t.device.clone()),
            rows: Vec::new(),
            not_timed: refused,
        };
        let mut failure = None;
        for (i, &plan) in plans.iter().enumerate() {
            let precision = plan.precision;
            if let Err(e) = esmfuzz::model::flash::preflight(&plan, &weights.config) {
                eprintln!("{e}");
                report.not_timed.push(NotTimed::of(&plan, e.to_string()));
                continue;
            }
            eprintln!("policy: {}", plan.describe());
            let mut model = Esm2::<B>::new(&weights, plan, FaultSet::none(), &device);
            // A failed pass (a kernel the device refused, say) ends the timing: the rows
            // timed so far are still reported, then the error.
            let stop = |e: anyhow::Error, report: &mut BenchReport| {
                report.not_timed.push(NotTimed::of(&plan, format!("{e:#}")));
                for p in &plans[i + 1..] {
                    let reason = "not reached: the run stopped at the error above";
                    report.not_timed.push(NotTimed::of(p, reason.into()));
                }
                e
            };
            let (padded_first, padded) =
                match timed_passes(&model, &proteins, Batching::padded(budget), repeat, profile) {
                    Ok(t) => t,
                    Err(e) => {
                        failure = Some(stop(e, &mut report));
                        break;
                    }
                };
            let slots: Vec<usize> = if args.attention_group_slots.is_empty() {
                vec![backend.attention_group_slots()]
            } else {
                args.attention_group_slots
                    .iter()
                    .map(|&s| s as usize)
                    .collect()
            };
            for slots in slots {
                eprintln!("  attention groups of {slots} slots");
                model.attention_group_slots = slots;
                let (packed_first, packed) = match timed_passes(
                    &model,
                    &proteins,
                    Batching::packed(budget),
                    repeat,
                    profile,
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        failure = Some(stop(e, &mut report));
                        break;
                    }
                };
                let forward = match forward_only_passes(
                    &model,
                    &proteins,
                    Batching::packed(budget),
                    repeat,
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        failure = Some(stop(e, &mut report));
                        break;
                    }
                };
                let theirs = torch
                    .as_ref()
                    .and_then(|t| t.rows.iter().find(|r| r.precision == precision).cloned());
                let tokens_per_second = |seconds: f64| tokens as f64 / seconds;
                let best = tokens_per_second(padded.min(packed));
                let anchors = torch
                    .as_ref()
                    .map(|t| t.anchors(precision))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| AnchorRatio {
                        best_over_torch: a.figure().map(|f| best / f),
                        packed_over_torch: a.figure().map(|f| tokens_per_second(packed) / f),
                        packed_forward_over_torch: a
                            .figure()
                            .map(|f| tokens_per_second(forward) / f),
                        torch: a,
                    })
                    .collect();
                report.rows.push(BenchRow {
                    padded_over_torch: theirs
                        .as_ref()
                        .map(|t| tokens_per_second(padded) / t.tokens_per_second),
                    packed_over_torch: theirs
                        .as_ref()
                        .map(|t| tokens_per_second(packed) / t.tokens_per_second),
                    anchors,
                    torch: theirs,
                    precision,
                    attention: plan.attention,
                    gemm: plan.gemm,
                    policy: plan.describe(),
                    attention_group_slots: slots,
                    padded_first_pass_seconds: padded_first,
                    packed_first_pass_seconds: packed_first,
                    padded_tokens_per_second: tokens as f64 / padded,
                    packed_tokens_per_second: tokens as f64 / packed,
                    packed_forward_tokens_per_second: tokens as f64 / forward,
                    packed_over_padded: padded / packed,
                    padded_tflops: flops / padded / 1e12,
                    packed_tflops: flops / packed / 1e12,
                });
            }
            // Rewritten after every policy, so a stopped run keeps what it measured.
            if let Some(path) = &args.report {
                write_report(path, &report)?;
            }
            if failure.is_some() {
                break;
            }
        }
        if let (Some(path), Some(_)) = (&args.report, &failure) {
            write_report(path, &report)?;
        }
        (report, failure)
    });
    let (report, failure) = report;
    println!(
        "{} sequences, {} tokens, budget {} tokens/batch on {}: padding efficiency {:.1}%, packing efficiency {:.1}% ({} batches)",
        report.sequences,
        report.tokens,
        report.token_budget,
        report.backend,
        100.0 * report.padding_efficiency,
        100.0 * report.packing_efficiency,
        report.packed_batches
    );
    println!(
        "{:<18} {:>12} {:>14} {:>14} {:>16} {:>8} {:>16} {:>18} {:>14} {:>16}",
        "policy",
        "group slots",
        "padded tok/s",
        "packed tok/s",
        "forwards tok/s",
        "ratio",
        "TFLOP/s pad/pack",
        "first passes (s)",
        "torch tok/s",
        "padded/packed vs torch"
    );
    for r in &report.rows {
        let (theirs, ratios) = match (&r.torch, r.padded_over_torch, r.packed_over_torch) {
            (Some(t), Some(a), Some(b)) => (
                format!("{:.0}", t.tokens_per_second),
                format!("{a:.2}x / {b:.2}x"),
            ),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{:<18} {:>12} {:>14.0} {:>14.0} {:>16.0} {:>8.2} {:>7.2} / {:<6.2} {:>8.1} / {:<8.1} {theirs:>14} {ratios:>16}",
            row_label(r.precision, r.attention, r.gemm),
            r.attention_group_slots,
            r.padded_tokens_per_second,
            r.packed_tokens_per_second,
            r.packed_forward_tokens_per_second,
            r.packed_over_padded,
            r.padded_tflops,
            r.packed_tflops,
            r.padded_first_pass_seconds,
            r.packed_first_pass_seconds
        );
    }
    for n in &report.not_timed {
        println!("{:<18} not timed: {}", n.policy, n.reason);
    }
    print_anchors(&report);
    if let Some(t) = &torch {
        let missing: Vec<&str> = args
            .precisions
            .iter()
            .filter(|p| t.anchors(**p).is_empty())
            .map(|p| p.name())
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "warning: the torch report has nothing at {}: no ratio for those",
                missing.join(", ")
            );
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(Outcome::Passed),
    }
}
