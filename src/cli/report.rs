//! `report.json` and `report.md`, the one schema a campaign's report has: written by `fuzz`
//! (as the campaign goes) and by `merge` (shards joined), read back by `merge` and by
//! `fuzz --resume` through [`read_report`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use esmfuzz::backend::BackendKind;
use esmfuzz::harness::campaign::CampaignReport;
use esmfuzz::harness::summary::MetricSummary;
use esmfuzz::harness::verdict::PropertyId;
use esmfuzz::model::{AttentionKernel, Fp32Places, Gemm};

use super::write_report;

/// Version of report.json's layout; bumped when a field changes meaning or goes. 3 added
/// `deployment` (campaigns against another team's deployment); schema 2 reads as 3 without it.
pub const REPORT_SCHEMA: u32 = 3;

/// Schemas this build reads: their fields mean what they mean in [`REPORT_SCHEMA`].
const READABLE_SCHEMAS: [u64; 2] = [2, 3];

/// What a campaign against a deployment ran on (`fuzz --deployment`): report.json's
/// `deployment`, absent for our own model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentSection {
    /// `process`, `http` or `oip`.
    pub transport: String,
    /// The command or URL (headers are not recorded: they may hold credentials).
    pub endpoint: String,
    /// The key its saved failures are kept under (`deployment=<name>__<family>`).
    pub name: String,
    /// The handshake as the deployment sent it (for OIP: made of its metadata and
    /// `--weights`), extra keys included.
    pub handshake: esmfuzz::deployment::protocol::Handshake,
    /// How the oracle pools (`--pooling`).
    pub pooling: String,
    /// The precision whose bounds judge it (`--bound-of`, default from the handshake dtype).
    pub bound_of: String,
    /// Each case also judged against our own policy of that precision (`--twin-judge`).
    pub twin_judge: bool,
    /// What the identity probe measured before fuzzing.
    pub identity: Vec<String>,
    /// Calls, time in calls, time in the protocol on our side, refusals, failures.
    pub calls: esmfuzz::deployment::CallStats,
    /// Wall time of the campaign so far, seconds (from the deployment's start).
    pub wall_seconds: f64,
    /// Time in the FP32 oracle's runs, seconds.
    #[serde(default)]
    pub oracle_seconds: f64,
    /// Properties not judged, and why.
    pub skipped: Vec<String>,
    /// What a reader of the verdicts should know (e.g. a server that regroups batches).
    pub notes: Vec<String>,
    /// The last lines the deployment wrote to stderr.
    pub stderr_tail: String,
}

/// The model's size, as report.json records it.
impl DeploymentSection {
    /// The shards' sections as one: the first's description, calls and times summed over
    /// the shards (time elsewhere stays a share of the shards' summed wall time), the
    /// failures and stderr tails of each shard named.
    pub fn merged(shards: &[(&std::path::Path, &DeploymentSection)]) -> Option<Self> {
        let (_, first) = shards.first()?;
        let mut merged = (*first).clone();
        if shards.len() == 1 {
            return Some(merged);
        }
        let c = &mut merged.calls;
        *c = esmfuzz::deployment::CallStats::default();
        merged.wall_seconds = 0.0;
        merged.oracle_seconds = 0.0;
        merged.stderr_tail.clear();
        for (dir, d) in shards {
            let (c, s) = (&mut merged.calls, &d.calls);
            c.calls += s.calls;
            c.seconds_in_calls += s.seconds_in_calls;
            c.protocol_seconds += s.protocol_seconds;
            c.refusals += s.refusals;
            c.broken += s.broken;
            c.restarts += s.restarts;
            c.failures
                .extend(s.failures.iter().map(|f| format!("{}: {f}", dir.display())));
            merged.wall_seconds += d.wall_seconds;
            merged.oracle_seconds += d.oracle_seconds;
            if !d.stderr_tail.trim().is_empty() {
                merged.stderr_tail.push_str(&format!(
                    "== {}\n{}\n",
                    dir.display(),
                    d.stderr_tail.trim_end()
                ));
            }
        }
        merged.notes.push(format!(
            "merged from {} shards: calls and times are summed over them",
            shards.len()
        ));
        Some(merged)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ModelSize {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub parameters: usize,
}

/// What a campaign ran, on what: the fields of report.json beside the campaign's own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunHeader {
    pub esmfuzz_version: String,
    /// The git commit the binary was built from ("unknown" outside a checkout).
    #[serde(default = "unknown")]
    pub git_commit: String,
    /// sha256 of the checkpoint file.
    pub checkpoint_sha256: String,
    /// The model's size: layers, hidden width, heads, parameters.
    pub model: ModelSize,
    pub backend: BackendKind,
    /// The device (for merged shards, each shard's, comma-separated).
    pub device: String,
    pub weights: PathBuf,
    pub policy: String,
    /// The policy's FP32 places (`none` for a plain policy).
    #[serde(default = "no_places")]
    pub fp32_places: String,
    /// The policy's attention kernel.
    #[serde(default)]
    pub attention: AttentionKernel,
    /// What computed the matrix products (reference and policy alike).
    #[serde(default = "burn_gemm")]
    pub gemm: Gemm,
    pub reference_policy: String,
    /// Set when the subject was another team's deployment.
    #[serde(default)]
    pub deployment: Option<DeploymentSection>,
    /// sha256 of each `--fasta` file, by family name: a resume must judge the same records
    /// (a file of the same name but other content is another campaign). Empty in reports
    /// written before it was kept.
    #[serde(default)]
    pub fasta_sha256: std::collections::BTreeMap<String, String>,
}

/// The engine of reports written before `--gemm` existed.
fn burn_gemm() -> Gemm {
    Gemm::Burn
}

fn no_places() -> String {
    Fp32Places::none().to_string()
}

fn unknown() -> String {
    "unknown".to_string()
}

impl RunHeader {
    /// This binary's version and commit.
    pub fn this_build() -> (String, String) {
        (
            env!("CARGO_PKG_VERSION").to_string(),
            env!("ESMFUZZ_GIT_COMMIT").to_string(),
        )
    }
}

/// report.json as written: the schema, the header, the verdict and the campaign.
#[derive(Debug, Serialize)]
pub struct FuzzReport<'a> {
    schema: u32,
    #[serde(flatten)]
    header: &'a RunHeader,
    /// Every family of the plan ran and held (false while the run goes, and when stopped).
    passed: bool,
    /// Every family of this part of the plan has a result: false in a report written while
    /// the run goes or by a run that was stopped (`fuzz --resume` finishes it).
    complete: bool,
    families_done: usize,
    families_planned: usize,
    #[serde(flatten)]
    campaign: &'a CampaignReport,
}

impl<'a> FuzzReport<'a> {
    pub fn new(header: &'a RunHeader, campaign: &'a CampaignReport) -> Self {
        Self {
            schema: REPORT_SCHEMA,
            header,
            passed: campaign.passed() && campaign.complete(),
            complete: campaign.complete(),
            families_done: campaign.families.len(),
            families_planned: campaign.families_planned(),
            campaign,
        }
    }

    /// Writes `report.json`, the plots and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_report(&dir.join("report.json"), self)?;
        let plots = super::plots::write_plots(dir, self.campaign)?;
        super::write_atomically(&dir.join("report.md"), markdown(self, &plots).as_bytes())
    }
}

/// A report.json read back: its header and its campaign.
#[derive(Debug)]
pub struct SavedReport {
    pub header: RunHeader,
    pub campaign: CampaignReport,
}

/// Reads the report.json in `dir`, the one way every command reads one.
pub fn read_report(dir: &Path) -> Result<SavedReport> {
    let path = dir.join("report.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let not_a_report = || format!("{}: not a campaign report", path.display());
    let value: serde_json::Value = serde_json::from_str(&text).with_context(not_a_report)?;
    // Another schema's fields may mean other things: refused, not rewritten as this one.
    match value.get("schema").and_then(serde_json::Value::as_u64) {
        Some(schema) if READABLE_SCHEMAS.contains(&schema) => {}
        Some(schema) => bail!(
            "{}: report schema {schema}; this esmfuzz {} reads schema {REPORT_SCHEMA} only",
            path.display(),
            env!("CARGO_PKG_VERSION")
        ),
        None => bail!("{}: not a campaign report (no schema)", path.display()),
    }
    Ok(SavedReport {
        header: RunHeader::deserialize(&value).with_context(not_a_report)?,
        campaign: CampaignReport::deserialize(&value).with_context(not_a_report)?,
    })
}

/// report.md's account of the deployment under test.
fn deployment_section(d: &DeploymentSection) -> String {
    let h = &d.handshake;
    let c = &d.calls;
    let outside = d.wall_seconds - c.seconds_in_calls - d.oracle_seconds;
    let mut md = format!(
        "## Deployment under test\n\n`{}` over {} ({} {}, {} layers x {}, max {} residues, max batch {}), saved failures under `deployment={}`; pooled as {}, bounds of {}{}.\n\n",
        d.endpoint,
        d.transport,
        h.model,
        h.dtype,
        h.layers,
        h.hidden,
        h.max_residues,
        h.max_batch,
        d.name,
        d.pooling,
        d.bound_of,
        if d.twin_judge {
            ", each case also judged against our own policy of that precision (twin judge)"
        } else {
            ""
        }
    );
    md.push_str(&format!(
        "Calls: {} ({:.1} s inside calls, {:.1} s in the FP32 oracle, {:.1} s elsewhere ({:.0}%; building and reading the calls {:.2} s), of {:.1} s), {} refusals, {} without a usable answer, {} restarts.\n\n",
        c.calls, c.seconds_in_calls, d.oracle_seconds, outside.max(0.0), 100.0 * outside.max(0.0) / d.wall_seconds.max(1e-9), c.protocol_seconds, d.wall_seconds, c.refusals, c.broken, c.restarts
    ));
    for (title, lines) in [
        ("Identity probe", &d.identity),
        ("Not judged", &d.skipped),
        ("Notes", &d.notes),
        ("Call failures", &c.failures),
    ] {
        if !lines.is_empty() {
            md.push_str(&format!("**{title}**:\n"));
            for line in lines {
                md.push_str(&format!("- {}\n", line.replace('\n', " ")));
            }
            md.push('\n');
        }
    }
    if !d.stderr_tail.trim().is_empty() {
        md.push_str(&format!(
            "Its stderr ends:\n\n```\n{}\n```\n\n",
            d.stderr_tail.trim_end()
        ));
    }
    md
}

/// The variant's errors over its plain twin's, per family (empty for a plain policy).
fn twin_section(c: &CampaignReport) -> String {
    let families: Vec<_> = c
        .families
        .iter()
        .filter_map(|f| Some((f, f.twin_ratios.as_ref()?)))
        .collect();
    if families.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Errors against the plain twin\n\nPer case, the variant's relative L2 error against FP32 \
         over its plain twin's (same precision, composed attention, default gemm, no FP32 places) \
         on the same input, `e_variant / (e_twin + 5e-5)`, largest over the case's sequences; the \
         property fails above the bound (`e_variant >= 2 e_twin + 1e-4`). A ratio outlier is a \
         finding even when every absolute bound holds.\n\n| family | cases | median | p95 | max | bound |\n|---|---|---|---|---|---|\n",
    );
    for (f, r) in families {
        md.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {} |\n",
            f.family, r.cases, r.median, r.p95, r.max, r.bound
        ));
    }
    md
}

/// report.md: the verdict first, then a table of families, each family's metrics, and each
/// failure with its shrunk input and where its error is born.
fn markdown(report: &FuzzReport<'_>, plots: &[(PathBuf, &str)]) -> String {
    let (r, c) = (report.header, report.campaign);
    let verdict = match (report.complete, report.passed) {
        (true, true) => "all properties held".to_string(),
        (true, false) => "FAILED".to_string(),
        (false, _) => format!(
            "incomplete: {} of {} families{}",
            report.families_done,
            report.families_planned,
            if c.passed() {
                ", no failure so far"
            } else {
                ", FAILED"
            }
        ),
    };
    let mut md = format!(
        "# esmfuzz campaign: {verdict}\n\n**{}** against FP32 on {} ({}), seed {}, {} cases per family, generator v{}, esmfuzz {} ({}).\n\n",
        r.policy,
        r.backend,
        r.device,
        c.seed,
        c.cases_per_family,
        c.generator_version,
        r.esmfuzz_version,
        r.git_commit
    );
    md.push_str(&format!(
        "Weights: `{}` (sha256 {}; {} layers x {}, {} heads, {} parameters). Saved failures replayed first: {} counterexample file(s), {} seed file(s) of families not run here{}.\n\n",
        r.weights.display(),
        r.checkpoint_sha256,
        r.model.layers,
        r.model.hidden,
        r.model.heads,
        r.model.parameters,
        c.replayed_counterexamples.len(),
        c.replayed_seed_families.len(),
        if c.unreplayable.is_empty() {
            String::new()
        } else {
            format!(", **{} file(s) naming no known family**", c.unreplayable.len())
        }
    ));
    if let Some(d) = &r.deployment {
        md.push_str(&deployment_section(d));
    }
    if !c.skipped.is_empty() {
        md.push_str("**Not run** (families of the plan this subject cannot run):\n");
        for s in &c.skipped {
            md.push_str(&format!("- `{}`: {}\n", s.family, s.reason));
        }
        md.push('\n');
    }
    md.push_str("| family | verdict | cases | model runs | tightest property | tolerance used | seconds |\n|---|---|---|---|---|---|---|\n");
    for f in c.replayed_seed_families.iter().chain(&c.families) {
        let (property, used) = f
            .tightest
            .as_ref()
            .map_or((String::new(), String::new()), |t| {
                (t.property.to_string(), format!("{:.1}%", 100.0 * t.used))
            });
        md.push_str(&format!(
            "| {} | {} | {} | {} | {property} | {used} | {:.1} |\n",
            f.family,
            if f.passed { "ok" } else { "**FAIL**" },
            f.cases,
            f.runs,
            f.seconds
        ));
    }
    for (path, caption) in plots {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        md.push_str(&format!("\n![{caption}]({name})\n"));
    }
    md.push_str(&twin_section(c));
    for r in c.replayed_counterexamples.iter().filter(|r| !r.passed) {
        md.push_str(&format!(
            "\nReplayed counterexample `{}` **fails again**:\n```\n{}\n```\n",
            r.file.display(),
            r.failure.clone().unwrap_or_default()
        ));
    }
    for f in &c.families {
        md.push_str(&format!("\n## {}\n\n", f.family));
        if !f.metrics.is_empty() {
            md.push_str("| property | threshold | min | p01 | median | max | worst use of tolerance | FP32 noise floor |\n|---|---|---|---|---|---|---|---|\n");
            for m in &f.metrics {
                let floor = f
                    .noise_floor
                    .iter()
                    .find(|v| v.property == m.property)
                    .map_or("".to_string(), |v| {
                        format!("{:.6e} ({:.2}%)", v.measured, 100.0 * v.used)
                    });
                md.push_str(&format!(
                    "| {} | {:.4e} | {:.6e} | {:.6e} | {:.6e} | {:.6e} | {:.1}% | {floor} |\n",
                    m.property,
                    m.threshold,
                    m.min,
                    m.p01,
                    m.median,
                    m.max,
                    100.0 * m.worst_used
                ));
            }
            if !f.noise_floor.is_empty() {
                md.push_str("\nNoise floor: FP32 with every reduction summed in another order, against the FP32 reference, on this family's tightest case (what the metric reads when only rounding order differs).\n");
            }
        }
        if !f.by_stratum.is_empty() {
            md.push_str("\nBy stratum of each case's longest protein:\n\n| stratum | cases | pooled cosine min | token cosine min | relative L2 max | worst use of tolerance |\n|---|---|---|---|---|---|\n");
            for s in &f.by_stratum {
                let get = |id: PropertyId, pick: fn(&MetricSummary) -> f64| {
                    s.metrics
                        .iter()
                        .find(|m| m.property == id)
                        .map_or("".to_string(), |m| format!("{:.6}", pick(m)))
                };
                let worst = s.metrics.iter().map(|m| m.worst_used).fold(0.0, f64::max);
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {:.1}% |\n",
                    s.stratum.name(),
                    s.cases,
                    get(PropertyId::PooledCosine, |m| m.min),
                    get(PropertyId::TokenCosineMin, |m| m.min),
                    get(PropertyId::RelativeL2, |m| m.max),
                    100.0 * worst
                ));
            }
        }
        if let Some(failure) = &f.failure {
            md.push_str(&format!(
                "\n**Failed** at model run {}. Shrunk counterexample{}:\n```\n{}```\nFailed verdicts:\n```\n{}\n```\n",
                failure.cases_to_failure,
                failure
                    .counterexample
                    .as_ref()
                    .map(|p| format!(" (saved as `{}`)", p.display()))
                    .unwrap_or_default(),
                failure.minimal_fasta,
                failure.message
            ));
        }
        if let Some(l) = &f.localisation {
            let which = if f.failure.is_some() {
                "the shrunk counterexample"
            } else {
                "the tightest case"
            };
            md.push_str(&format!(
                "\nWhere the error of {which} is born:\n\n{}",
                l.to_markdown()
            ));
        }
        if let Some(o) = &f.outliers {
            md.push_str(&format!("\n{}", o.to_markdown(&f.family)));
        }
    }
    md
}
