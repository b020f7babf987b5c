//! Protocol 1 over HTTP (one line POSTed, one line back) and the Open Inference Protocol
//! (KServe v2: readiness, metadata, `infer` with one BYTES input), both through ureq's
//! blocking client on a thread of their own, so a call honours its deadline and a signal.

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::protocol::{
    Embeddings, Handshake, Hello, PROTOCOL_VERSION, Request, Response, excerpt, parse_response,
};
use super::transport::{Transport, TransportError, on_thread};

/// Shared by both HTTP transports: the agent, the headers (`--header 'K: V'`) and the cap
/// on a response body.
#[derive(Clone)]
struct Client {
    agent: ureq::Agent,
    headers: Vec<(String, String)>,
    max_body: usize,
}

impl Client {
    fn new(headers: Vec<(String, String)>, max_body: usize) -> Self {
        Self {
            // Deadlines are the harness's (the call's thread is abandoned at its deadline);
            // connection attempts fail fast.
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .build(),
            headers,
            max_body,
        }
    }

    /// One request; the body of a 2xx answer, or an error naming the status and the start
    /// of the body.
    fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<String>,
    ) -> Result<String, TransportError> {
        let mut request = self.agent.request(method, url);
        for (k, v) in &self.headers {
            request = request.set(k, v);
        }
        let answer = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(&body),
            None => request.call(),
        };
        let response = match answer {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let text = read_capped(r, 4096).unwrap_or_default();
                return Err(TransportError::Garbage(format!(
                    "HTTP {code} from {url}: {}",
                    excerpt(&text)
                )));
            }
            Err(e) => return Err(TransportError::Io(format!("{url}: {e}"))),
        };
        read_capped(response, self.max_body)
    }
}

fn read_capped(response: ureq::Response, cap: usize) -> Result<String, TransportError> {
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TransportError::Io(e.to_string()))?;
    if bytes.len() > cap {
        return Err(TransportError::Oversized(cap));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Protocol 1 over HTTP.
pub struct HttpLines {
    url: String,
    client: Client,
}

impl HttpLines {
    pub fn new(url: String, headers: Vec<(String, String)>, max_body: usize) -> Self {
        Self {
            url,
            client: Client::new(headers, max_body),
        }
    }

    fn post(
        &self,
        line: String,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<String, TransportError> {
        let (client, url) = (self.client.clone(), self.url.clone());
        let timeout = deadline.saturating_duration_since(Instant::now());
        on_thread(deadline, stop, move || {
            client.send("POST", &url, Some(line))
        })
        .map_err(|e| with_timeout(e, timeout))
    }
}

fn with_timeout(e: TransportError, timeout: Duration) -> TransportError {
    match e {
        TransportError::Timeout(_) => TransportError::Timeout(timeout),
        other => other,
    }
}

impl Transport for HttpLines {
    fn hello(&mut self, deadline: Instant, stop: &AtomicBool) -> Result<Handshake, TransportError> {
        let line = serde_json::to_string(&Hello::V1).unwrap_or_default();
        let body = self.post(line, deadline, stop)?;
        serde_json::from_str(body.trim())
            .map_err(|e| TransportError::Garbage(format!("handshake: {e} in {}", excerpt(&body))))
    }

    fn call(
        &mut self,
        request: &Request,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<Response, TransportError> {
        let line = serde_json::to_string(request).map_err(|e| TransportError::Io(e.to_string()))?;
        let body = self.post(line, deadline, stop)?;
        let response =
            parse_response(body.trim()).map_err(|e| TransportError::Garbage(e.to_string()))?;
        if response.id != request.id {
            return Err(TransportError::WrongId {
                sent: request.id,
                got: response.id,
            });
        }
        Ok(response)
    }
}

/// How an OIP server's tensors are named and shaped (flags of `fuzz --deployment oip://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OipOptions {
    /// The BYTES input's name (default `sequences`).
    pub input: String,
    /// The pooled output's name (default `pooled`).
    pub output: String,
    /// Send the input as `[N, 1]` instead of `[N]`.
    pub n1: bool,
    /// The most sequences in one request (OIP has no handshake to say so).
    pub max_batch: usize,
}

impl Default for OipOptions {
    fn default() -> Self {
        Self {
            input: "sequences".into(),
            output: "pooled".into(),
            n1: false,
            max_batch: 64,
        }
    }
}

/// The Open Inference Protocol (KServe v2).
pub struct Oip {
    base: String,
    model: String,
    client: Client,
    options: OipOptions,
    /// Hidden size and layers from `--weights`: OIP servers do not say.
    hidden: usize,
    layers: usize,
}

impl Oip {
    pub fn new(
        base: String,
        model: String,
        headers: Vec<(String, String)>,
        max_body: usize,
        options: OipOptions,
        (hidden, layers): (usize, usize),
    ) -> Self {
        Self {
            base,
            model,
            client: Client::new(headers, max_body),
            options,
            hidden,
            layers,
        }
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/models/{}{tail}", self.base, self.model)
    }
}

impl Transport for Oip {
    /// Waits for `GET .../ready` to answer 200, then reads the metadata and makes a
    /// handshake of it (dtype from the output tensor's datatype).
    fn hello(&mut self, deadline: Instant, stop: &AtomicBool) -> Result<Handshake, TransportError> {
        let ready = self.url("/ready");
        let waiting = deadline.saturating_duration_since(Instant::now());
        let last_error = loop {
            let client = self.client.clone();
            let url = ready.clone();
            let until = (Instant::now() + Duration::from_secs(5)).min(deadline);
            match on_thread(until, stop, move || client.send("GET", &url, None)) {
                Ok(_) => break None,
                Err(TransportError::Stopped) => return Err(TransportError::Stopped),
                Err(TransportError::Timeout(_)) if Instant::now() >= deadline => {
                    break Some(TransportError::Timeout(waiting));
                }
                Err(e) if Instant::now() >= deadline => break Some(e),
                // Not up yet: poll again shortly (readiness, not a fixed wait).
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        if let Some(e) = last_error {
            return Err(TransportError::Io(format!(
                "{ready} never answered ready: {e}"
            )));
        }
        let (client, url) = (self.client.clone(), self.url(""));
        let body = on_thread(deadline, stop, move || client.send("GET", &url, None))?;
        let metadata: Value = serde_json::from_str(&body)
            .map_err(|e| TransportError::Garbage(format!("metadata: {e} in {}", excerpt(&body))))?;
        let datatype = metadata["outputs"]
            .as_array()
            .and_then(|outs| {
                outs.iter()
                    .find(|o| o["name"] == self.options.output.as_str())
            })
            .and_then(|o| o["datatype"].as_str())
            .unwrap_or("FP32")
            .to_string();
        let dtype = match datatype.as_str() {
            "FP16" => "float16",
            "BF16" => "bfloat16",
            _ => "float32",
        };
        Ok(Handshake {
            protocol: PROTOCOL_VERSION,
            model: metadata["name"].as_str().unwrap_or(&self.model).to_string(),
            hidden: self.hidden,
            layers: self.layers,
            dtype: dtype.into(),
            max_residues: crate::alphabet::MAX_RESIDUES,
            max_batch: self.options.max_batch,
            extra: [("oip_metadata".to_string(), metadata)]
                .into_iter()
                .collect(),
        })
    }

    fn call(
        &mut self,
        request: &Request,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<Response, TransportError> {
        let n = request.sequences.len();
        let shape = if self.options.n1 {
            json!([n, 1])
        } else {
            json!([n])
        };
        let body = json!({
            "id": request.id.to_string(),
            "inputs": [{
                "name": self.options.input,
                "shape": shape,
                "datatype": "BYTES",
                "data": request.sequences.iter().map(|s| s.residues.as_str()).collect::<Vec<_>>(),
            }],
            "outputs": [{"name": self.options.output}],
        })
        .to_string();
        let (client, url) = (self.client.clone(), self.url("/infer"));
        let timeout = deadline.saturating_duration_since(Instant::now());
        let answer = on_thread(deadline, stop, move || {
            client.send("POST", &url, Some(body))
        })
        .map_err(|e| with_timeout(e, timeout));
        let text = match answer {
            Ok(text) => text,
            // A 4xx/5xx answer is the server's refusal of this batch.
            Err(TransportError::Garbage(message))
                if message.starts_with("HTTP 4") || message.starts_with("HTTP 5") =>
            {
                return Ok(Response {
                    id: request.id,
                    answer: Err(message),
                });
            }
            Err(e) => return Err(e),
        };
        let value: Value = serde_json::from_str(&super::protocol::nonfinite_tokens_as_null(&text))
            .map_err(|e| TransportError::Garbage(format!("{e} in {}", excerpt(&text))))?;
        let output = value["outputs"]
            .as_array()
            .and_then(|outs| {
                outs.iter()
                    .find(|o| o["name"] == self.options.output.as_str())
            })
            .ok_or_else(|| {
                TransportError::Garbage(format!(
                    "no output named '{}' in {}",
                    self.options.output,
                    excerpt(&text)
                ))
            })?;
        let data = output["data"]
            .as_array()
            .ok_or_else(|| TransportError::Garbage("the output has no \"data\" array".into()))?;
        let flat: Vec<f32> = data
            .iter()
            .map(|v| match v {
                Value::Null => Ok(f32::NAN),
                Value::Number(x) => Ok(x.as_f64().unwrap_or(f64::NAN) as f32),
                other => Err(TransportError::Garbage(format!(
                    "output value {} is not a number",
                    excerpt(&other.to_string())
                ))),
            })
            .collect::<Result<_, _>>()?;
        let hidden = self.hidden.max(1);
        if flat.len() != n * hidden {
            return Err(TransportError::Garbage(format!(
                "output '{}' holds {} values, [{n}, {hidden}] expected (shape {})",
                self.options.output,
                flat.len(),
                output["shape"]
            )));
        }
        Ok(Response {
            id: request.id,
            answer: Ok(Embeddings {
                pooled: flat.chunks(hidden).map(<[f32]>::to_vec).collect(),
                tokens: None,
            }),
        })
    }
}
