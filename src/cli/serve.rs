//! `esmfuzz serve`: our model behind the deployment protocol (`docs/PROTOCOL.md`): protocol 1
//! on stdin/stdout, or over HTTP with `--listen` (protocol 1 on any path outside `/v2/`, and
//! the Open Inference Protocol's endpoints). A hidden `--degrade` builds a deliberately
//! faulty deployment for tests and for measuring what `fuzz --deployment` detects.

use std::io::{BufRead, Read as _, Write};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use serde_json::{Value, json};

use esmfuzz::batch::Layout;
use esmfuzz::deployment::protocol::{
    Handshake, PROTOCOL_VERSION, Request, error_line, excerpt, response_line,
};
use esmfuzz::harness::cases::run_case;
use esmfuzz::harness::deployment::Pooling;
use esmfuzz::harness::power::Degradation;
use esmfuzz::input::{NormaliseOptions, Protein, normalise};
use esmfuzz::model::{Esm2, FaultSet, Fp32Places, ModelSpec, Precision};
use esmfuzz::named::parse_named;
use esmfuzz::with_backend;

use super::policy::PolicyArgs;
use super::{ModelArgs, Outcome, named};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Run each request as one packed (varlen) batch instead of a padded one.
    #[arg(long)]
    pub packed: bool,
    /// Serve HTTP on this address instead of stdin/stdout (`127.0.0.1:0` picks a free port;
    /// the address is printed on stdout as `listening on http://ADDR`).
    #[arg(long)]
    pub listen: Option<String>,
    /// How a pooled row is formed from the last states.
    #[arg(long, value_parser = named::<Pooling>(), default_value = "residue-mean")]
    pub pooling: Pooling,
    /// Also send every token's last state (`tokens_b64`).
    #[arg(long)]
    pub tokens: bool,
    /// The most sequences in one request (said in the handshake; more are refused).
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// The model's name in the handshake and under OIP (`/v2/models/NAME`).
    #[arg(long, default_value = "esm2")]
    pub name: String,
    /// Deliberate faults, for tests: `scale-layer-output=E[@LAYER]`, `perturb-weights=E`,
    /// `scale-attention-logits=E`, `round-to-f16` (power's degradations, layer default the
    /// middle one, as `power`'s), `attention-leak` (packed batches attend across sequences) and
    /// `residue-pattern=PATTERN` (the last residue of every PATTERN read as X, as a
    /// tokenizer bug would).
    #[arg(long, hide = true)]
    pub degrade: Vec<Degrade>,
}

/// One `--degrade`.
#[derive(Debug, Clone, PartialEq)]
pub enum Degrade {
    Model {
        degradation: Degradation,
        e: f64,
        layer: Option<usize>,
    },
    AttentionLeak,
    ResiduePattern(String),
}

impl FromStr for Degrade {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (head, layer) = match s.split_once('@') {
            Some((h, l)) => (
                h,
                Some(
                    l.parse::<usize>()
                        .map_err(|_| format!("'{s}': @LAYER is a number"))?,
                ),
            ),
            None => (s, None),
        };
        let (name, value) = match head.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (head, None),
        };
        match (name, value) {
            ("attention-leak", None) => Ok(Degrade::AttentionLeak),
            ("residue-pattern", Some(p))
                if !p.is_empty() && p.bytes().all(|b| b.is_ascii_uppercase()) =>
            {
                Ok(Degrade::ResiduePattern(p.to_string()))
            }
            ("residue-pattern", _) => {
                Err(format!("'{s}': residue-pattern=PATTERN in capital letters"))
            }
            _ => {
                let degradation: Degradation = parse_named(name)?;
                let e = match value {
                    Some(v) => v
                        .parse::<f64>()
                        .map_err(|_| format!("'{s}': =E is a number"))?,
                    None if !degradation.is_sized() => 0.0,
                    None => return Err(format!("'{s}': {name}=E needs a size")),
                };
                Ok(Degrade::Model {
                    degradation,
                    e,
                    layer,
                })
            }
        }
    }
}

/// The model faults of `degrades` in a model of `layers` layers.
fn faults_of(degrades: &[Degrade], layers: usize) -> Result<FaultSet> {
    let mut faults = FaultSet::none();
    for d in degrades {
        match d {
            Degrade::Model {
                degradation,
                e,
                layer,
            } => {
                let layer = layer.unwrap_or(layers / 2);
                if layer >= layers {
                    bail!("--degrade: layer {layer} of a {layers}-layer model");
                }
                faults = faults.with(degradation.faults(layer, *e));
            }
            Degrade::AttentionLeak => faults.attention_leaks_across_sequences = true,
            Degrade::ResiduePattern(_) => {}
        }
    }
    Ok(faults)
}

/// The handshake's dtype name of a precision.
pub fn dtype_name(precision: Precision) -> &'static str {
    match precision {
        Precision::F16 | Precision::F16Mixed => "float16",
        Precision::Bf16 => "bfloat16",
        Precision::F32 | Precision::Tf32 => "float32",
    }
}

/// Our model and what a request needs of it.
struct Engine<B: Backend> {
    model: Esm2<B>,
    layout: Layout,
    pooling: Pooling,
    tokens: bool,
    max_batch: usize,
    pattern: Option<String>,
    handshake: Handshake,
}

impl<B: Backend> Engine<B> {
    /// The answer line to one protocol-1 line (the handshake to a hello).
    fn answer(&self, line: &str) -> String {
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return error_line(0, &format!("not JSON: {e} in {}", excerpt(line))),
        };
        if value.get("hello").is_some() {
            return serde_json::to_string(&self.handshake).unwrap_or_default();
        }
        let request: Request = match serde_json::from_value(value.clone()) {
            Ok(r) => r,
            Err(e) => {
                let id = value.get("id").and_then(Value::as_u64).unwrap_or(0);
                return error_line(id, &format!("not a request: {e}"));
            }
        };
        match self.embed(
            request
                .sequences
                .iter()
                .map(|s| (s.name.as_str(), s.residues.as_str())),
        ) {
            Ok((pooled, tokens)) => response_line(
                request.id,
                &pooled,
                tokens.as_deref(),
                self.model.config.hidden_size,
            ),
            Err(message) => error_line(request.id, &message),
        }
    }

    /// Pooled rows (and token states) of one batch, or a refusal naming the sequence.
    #[allow(clippy::type_complexity)]
    fn embed<'a>(
        &self,
        sequences: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<(Vec<Vec<f32>>, Option<Vec<Vec<f32>>>), String> {
        let mut proteins = Vec::new();
        for (i, (name, residues)) in sequences.enumerate() {
            if residues.len() > esmfuzz::alphabet::MAX_RESIDUES {
                return Err(format!(
                    "sequence {i} ({name}): {} residues, over max_residues {}",
                    residues.len(),
                    esmfuzz::alphabet::MAX_RESIDUES
                ));
            }
            let residues = match &self.pattern {
                Some(p) => misread(residues, p),
                None => residues.to_string(),
            };
            let protein: Protein =
                normalise(name, residues.as_bytes(), NormaliseOptions::default())
                    .map_err(|e| format!("sequence {i}: {e}"))?;
            if protein.residues.is_empty() {
                return Err(format!("sequence {i} ({name}): no residue"));
            }
            proteins.push(protein);
        }
        if proteins.is_empty() || proteins.len() > self.max_batch {
            return Err(format!(
                "{} sequences: a request holds 1 to max_batch {}",
                proteins.len(),
                self.max_batch
            ));
        }
        let hidden = self.model.config.hidden_size;
        let states = run_case(&self.model, &proteins, self.layout);
        let pooled = states
            .last
            .iter()
            .map(|s| self.pooling.pool(s, hidden))
            .collect();
        Ok((pooled, self.tokens.then_some(states.last)))
    }
}

/// `residues` with the last residue of every occurrence of `pattern` read as `X`.
fn misread(residues: &str, pattern: &str) -> String {
    let mut out: Vec<u8> = residues.as_bytes().to_vec();
    let p = pattern.as_bytes();
    let mut i = 0;
    while i + p.len() <= out.len() {
        if out[i..i + p.len()].eq_ignore_ascii_case(p) {
            out[i + p.len() - 1] = b'X';
            i += p.len();
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn run(args: ServeArgs) -> Result<Outcome> {
    let checkpoint = args.model.open()?;
    let config = checkpoint.config.clone();
    let faults = faults_of(&args.degrade, config.num_hidden_layers)?;
    if faults.attention_leaks_across_sequences && !args.packed {
        bail!("--degrade attention-leak needs --packed (it breaks packed batches only)");
    }
    let backend = args.model.backend;
    let gemm = args.policy.gemm(backend)?;
    let plan = args.policy.plan(backend, gemm)?;
    esmfuzz::model::flash::preflight(&plan, &config)?;
    let places = args.policy.places(&config)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing a signal handler")?;
    }
    let model_name = format!(
        "esmfuzz {}",
        checkpoint
            .file
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut extra = std::collections::BTreeMap::new();
    extra.insert("tokens".to_string(), json!(args.tokens));
    extra.insert("policy".to_string(), json!(plan.describe()));
    extra.insert("packed".to_string(), json!(args.packed));
    extra.insert(
        "pooling".to_string(),
        json!(esmfuzz::named::Named::name(args.pooling)),
    );
    let handshake = Handshake {
        protocol: PROTOCOL_VERSION,
        model: model_name,
        hidden: config.hidden_size,
        layers: config.num_hidden_layers,
        dtype: dtype_name(args.policy.precision).into(),
        max_residues: esmfuzz::alphabet::MAX_RESIDUES,
        max_batch: args.max_batch,
        extra,
    };
    with_backend!(backend, |B, device| {
        let spec = ModelSpec {
            plan,
            fp32_places: if places.is_empty() {
                Fp32Places::none()
            } else {
                places.clone()
            },
            faults,
        };
        let model = if spec.faults.changes_weights() {
            // A fault that changes weights (perturb-weights) is applied to whole weights
            // before the build: the streamed build never holds them.
            let whole = args.model.load()?;
            Esm2::<B>::mixed(
                &whole.weights,
                spec.plan,
                spec.fp32_places,
                spec.faults,
                &device,
            )
        } else {
            let mut built = super::build_streamed::<B>(&args.model, &checkpoint, &[spec], &device)?;
            let Some(model) = built.pop() else {
                unreachable!("one spec, one model")
            };
            model
        };
        let engine = Engine {
            model,
            layout: if args.packed {
                Layout::Packed
            } else {
                Layout::Padded
            },
            pooling: args.pooling,
            tokens: args.tokens,
            max_batch: args.max_batch.max(1),
            pattern: args.degrade.iter().find_map(|d| match d {
                Degrade::ResiduePattern(p) => Some(p.clone()),
                _ => None,
            }),
            handshake,
        };
        match &args.listen {
            Some(address) => serve_http(&engine, address, &args.name, &stop)?,
            None => serve_stdio(&engine, &stop)?,
        }
    });
    Ok(Outcome::Passed)
}

/// Protocol 1 on stdin/stdout until stdin closes or a signal comes.
fn serve_stdio<B: Backend>(engine: &Engine<B>, stop: &AtomicBool) -> Result<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = engine.answer(&line);
        writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .context("writing stdout")?;
    }
    Ok(())
}

/// HTTP until a signal comes: protocol 1 on any path outside `/v2/`, OIP under it.
fn serve_http<B: Backend>(
    engine: &Engine<B>,
    address: &str,
    name: &str,
    stop: &AtomicBool,
) -> Result<()> {
    let server =
        tiny_http::Server::http(address).map_err(|e| anyhow::anyhow!("--listen {address}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .map_or_else(|| address.to_string(), |a| a.to_string());
    println!("listening on http://{bound}");
    std::io::stdout().flush().ok();
    eprintln!("serving protocol 1 on http://{bound}/ and OIP on http://{bound}/v2/models/{name}");
    while !stop.load(Ordering::Relaxed) {
        let Some(mut request) = server
            .recv_timeout(Duration::from_millis(100))
            .context("accepting a request")?
        else {
            continue;
        };
        let mut body = String::new();
        let read = std::io::Read::take(request.as_reader(), 64 << 20).read_to_string(&mut body);
        let (status, text) = match read {
            Err(e) => (
                400,
                json!({"error": format!("reading the body: {e}")}).to_string(),
            ),
            Ok(_) => route(engine, name, request.method(), request.url(), &body),
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
            .map_err(|()| anyhow::anyhow!("a header"))?;
        let response = tiny_http::Response::from_string(text)
            .with_status_code(status)
            .with_header(header);
        if let Err(e) = request.respond(response) {
            eprintln!("warning: answering a request: {e}");
        }
    }
    Ok(())
}

/// The status and body for one HTTP request.
fn route<B: Backend>(
    engine: &Engine<B>,
    name: &str,
    method: &tiny_http::Method,
    url: &str,
    body: &str,
) -> (u16, String) {
    use tiny_http::Method::{Get, Post};
    let path = url.split('?').next().unwrap_or_default();
    let model = format!("/v2/models/{name}");
    match (method, path) {
        (Get, "/v2/health/ready" | "/v2/health/live") => (200, "{}".into()),
        (Get, p) if p == format!("{model}/ready") => {
            (200, json!({"name": name, "ready": true}).to_string())
        }
        (Get, p) if p == model => (200, metadata(engine, name).to_string()),
        (Post, p) if p == format!("{model}/infer") => match infer(engine, name, body) {
            Ok(v) => (200, v.to_string()),
            Err(message) => (400, json!({"error": message}).to_string()),
        },
        (_, p) if p.starts_with("/v2/") => (
            404,
            json!({"error": format!("no endpoint {method} {p}")}).to_string(),
        ),
        (Post, _) => (200, engine.answer(body.trim())),
        _ => (
            405,
            json!({"error": "POST one protocol-1 line"}).to_string(),
        ),
    }
}

fn metadata<B: Backend>(engine: &Engine<B>, name: &str) -> Value {
    json!({
        "name": name,
        "platform": "esmfuzz",
        "versions": ["1"],
        "inputs": [{"name": "sequences", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "pooled", "datatype": "FP32", "shape": [-1, engine.model.config.hidden_size]}],
    })
}

/// An OIP inference: one BYTES input of shape `[N]` or `[N, 1]`, one FP32 output `[N, hidden]`.
fn infer<B: Backend>(engine: &Engine<B>, name: &str, body: &str) -> Result<Value, String> {
    let request: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let input = request["inputs"]
        .as_array()
        .and_then(|inputs| inputs.first())
        .ok_or("no inputs")?;
    let data = input["data"]
        .as_array()
        .ok_or("the input has no data array")?;
    let mut residues = Vec::with_capacity(data.len());
    for item in data {
        // [N] as strings, or [N, 1] as one-element arrays.
        let text = match item {
            Value::String(s) => s.as_str(),
            Value::Array(inner) => inner
                .first()
                .and_then(Value::as_str)
                .ok_or("a [N, 1] row without a string")?,
            _ => return Err("BYTES data must be strings".into()),
        };
        residues.push(text.to_string());
    }
    let names: Vec<String> = (0..residues.len()).map(|i| format!("seq-{i}")).collect();
    let (pooled, _) = engine.embed(
        names
            .iter()
            .map(String::as_str)
            .zip(residues.iter().map(String::as_str)),
    )?;
    let hidden = engine.model.config.hidden_size;
    let flat: Vec<f32> = pooled.into_iter().flatten().collect();
    Ok(json!({
        "model_name": name,
        "id": request.get("id").cloned().unwrap_or(Value::Null),
        "outputs": [{"name": "pooled", "datatype": "FP32", "shape": [residues.len(), hidden], "data": flat}],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degradations_parse_as_power_names_them_and_bad_ones_are_refused() {
        assert_eq!(
            "scale-layer-output=0.1@2".parse(),
            Ok(Degrade::Model {
                degradation: Degradation::ScaleLayerOutput,
                e: 0.1,
                layer: Some(2)
            })
        );
        assert_eq!("attention-leak".parse(), Ok(Degrade::AttentionLeak));
        assert_eq!(
            "residue-pattern=LL".parse(),
            Ok(Degrade::ResiduePattern("LL".into()))
        );
        assert!("scale-layer-output".parse::<Degrade>().is_err());
        assert!("residue-pattern=l".parse::<Degrade>().is_err());
        assert!("melt".parse::<Degrade>().is_err());
    }

    #[test]
    fn a_residue_pattern_misreads_the_last_residue_of_each_occurrence() {
        assert_eq!(misread("MLLKLLL", "LL"), "MLXKLXL");
        assert_eq!(misread("MKV", "LL"), "MKV");
    }
}
