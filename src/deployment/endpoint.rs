//! Where a deployment is: `--deployment 'CMD ARGS'` (a child process speaking protocol 1 on
//! stdin/stdout, split by shell rules, no shell run), `http://HOST:PORT/PATH` (protocol 1,
//! one line POSTed per call) or `oip://HOST:PORT/MODEL` (`oips://` for https: the Open
//! Inference Protocol, KServe v2).

use std::fmt;
use std::str::FromStr;

/// A parsed `--deployment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A program and its arguments.
    Process(Vec<String>),
    /// Protocol 1 over HTTP: the full URL lines are POSTed to.
    Http(String),
    /// The Open Inference Protocol: the server's base URL (scheme, host and port) and the
    /// model's name.
    Oip { base: String, model: String },
}

/// Why a `--deployment` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("--deployment is empty: give a command, an http:// URL or an oip:// URL")]
    Empty,
    #[error("--deployment '{0}': unbalanced quotes (it is split by shell rules)")]
    Quotes(String),
    #[error("--deployment '{0}': an oip:// URL names the model: oip://HOST:PORT/MODEL")]
    NoModel(String),
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.is_empty() {
            return Err(EndpointError::Empty);
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Endpoint::Http(text.to_string()));
        }
        for (scheme, http) in [("oip://", "http://"), ("oips://", "https://")] {
            if let Some(rest) = text.strip_prefix(scheme) {
                let (host, model) = rest
                    .split_once('/')
                    .filter(|(h, m)| !h.is_empty() && !m.trim_matches('/').is_empty())
                    .ok_or_else(|| EndpointError::NoModel(text.to_string()))?;
                return Ok(Endpoint::Oip {
                    base: format!("{http}{host}"),
                    model: model.trim_matches('/').to_string(),
                });
            }
        }
        let argv = shlex::split(text).ok_or_else(|| EndpointError::Quotes(text.to_string()))?;
        if argv.is_empty() {
            return Err(EndpointError::Empty);
        }
        Ok(Endpoint::Process(argv))
    }
}

impl Endpoint {
    /// The transport's name in reports: `process`, `http` or `oip`.
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Process(_) => "process",
            Endpoint::Http(_) => "http",
            Endpoint::Oip { .. } => "oip",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Process(argv) => f.write_str(
                &shlex::try_join(argv.iter().map(String::as_str))
                    .unwrap_or_else(|_| argv.join(" ")),
            ),
            Endpoint::Http(url) => f.write_str(url),
            Endpoint::Oip { base, model } => write!(f, "{base}/v2/models/{model}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_urls_and_oip_addresses_parse_and_bad_ones_are_named() {
        assert_eq!(
            "python3 'my adapter.py' --fp16".parse(),
            Ok(Endpoint::Process(vec![
                "python3".into(),
                "my adapter.py".into(),
                "--fp16".into()
            ]))
        );
        assert_eq!(
            "http://127.0.0.1:8080/embed".parse(),
            Ok(Endpoint::Http("http://127.0.0.1:8080/embed".into()))
        );
        assert_eq!(
            "oips://triton:8000/esm2/".parse(),
            Ok(Endpoint::Oip {
                base: "https://triton:8000".into(),
                model: "esm2".into()
            })
        );
        assert_eq!("  ".parse::<Endpoint>(), Err(EndpointError::Empty));
        assert!(matches!(
            "run 'x".parse::<Endpoint>(),
            Err(EndpointError::Quotes(_))
        ));
        assert!(matches!(
            "oip://host:1/".parse::<Endpoint>(),
            Err(EndpointError::NoModel(_))
        ));
    }
}
