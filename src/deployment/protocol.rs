//! The deployment protocol, version 1 (`docs/PROTOCOL.md`): JSON lines between the harness
//! and a deployment, over a child process's stdin/stdout or one HTTP POST per line.
//!
//! The harness sends `{"hello": 1}` and reads a [`Handshake`]; then each [`Request`] is one
//! batch and its answer one [`Response`] line. Plain JSON numbers are what every deployment
//! can send; Python's `json` writes non-finite values as the bare tokens `NaN`, `Infinity`
//! and `-Infinity`, which are not JSON: [`parse_response`] reads them (and `null`) as
//! non-finite values, so they are judged as such, not as garbage.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// The harness's first line.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub hello: u64,
}

impl Hello {
    pub const V1: Hello = Hello {
        hello: PROTOCOL_VERSION,
    };
}

/// A deployment's answer to [`Hello`]: what it runs. `--weights` is the truth for shapes;
/// keys beyond these are kept in `extra` and recorded in the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Handshake {
    pub protocol: u64,
    /// Free text naming the model (the default `--deployment-name` is built from it and
    /// `dtype`).
    pub model: String,
    pub hidden: usize,
    pub layers: usize,
    /// `float16`, `bfloat16` or `float32` (what the default bound is chosen from).
    pub dtype: String,
    /// The longest protein (residues) it embeds; longer ones may be refused or truncated.
    pub max_residues: usize,
    /// The most sequences in one request.
    pub max_batch: usize,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One protein of a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sequence {
    pub name: String,
    pub residues: String,
}

/// One batch: the deployment embeds exactly these sequences together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    pub sequences: Vec<Sequence>,
}

/// A successful answer: one pooled row per sequence, in request order, and optionally every
/// token's last state (BOS and EOS rows included).
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// `[sequences][hidden]`; non-finite values as NaN or infinities.
    pub pooled: Vec<Vec<f32>>,
    /// `[sequences][(residues + 2) * hidden]` row-major, when the deployment sent tokens.
    pub tokens: Option<Vec<Vec<f32>>>,
}

/// One response line, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: u64,
    /// The rows, or the deployment's refusal text.
    pub answer: Result<Embeddings, String>,
}

/// Why a response line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("no numeric \"id\"")]
    NoId,
    #[error("id {id}: {what}")]
    Malformed { id: u64, what: String },
}

/// `line` with the bare tokens `NaN`, `Infinity` and `-Infinity` outside strings replaced by
/// `null`, so a JSON parser reads them (as missing values, judged non-finite).
pub fn nonfinite_tokens_as_null(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains("NaN") && !line.contains("Infinity") {
        return std::borrow::Cow::Borrowed(line);
    }
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let (mut i, mut in_string, mut escaped) = (0, false, false);
    while i < bytes.len() {
        let c = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if c == b'"' {
            in_string = true;
        } else {
            let rest = &line[i..];
            let token = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            if let Some(token) = token {
                out.push_str("null");
                i += token.len();
                continue;
            }
        }
        // Copy one whole UTF-8 character.
        let width = line[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&line[i..i + width]);
        i += width;
    }
    std::borrow::Cow::Owned(out)
}

/// Reads one response line (shapes are checked by the caller, which knows the request).
pub fn parse_response(line: &str) -> Result<Response, ResponseError> {
    let text = nonfinite_tokens_as_null(line);
    let value: Value = serde_json::from_str(text.trim())
        .map_err(|e| ResponseError::NotJson(format!("{e} in {}", excerpt(line))))?;
    let Value::Object(map) = value else {
        return Err(ResponseError::NotJson(excerpt(line)));
    };
    let id = map
        .get("id")
        .and_then(Value::as_u64)
        .ok_or(ResponseError::NoId)?;
    let malformed = |what: String| ResponseError::Malformed { id, what };
    if let Some(error) = map.get("error") {
        let text = match error {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Ok(Response {
            id,
            answer: Err(text),
        });
    }
    let pooled = match (map.get("pooled"), map.get("pooled_b64")) {
        (Some(rows), _) => rows_of_numbers(rows).map_err(malformed)?,
        (None, Some(Value::String(b64))) => {
            let flat = f32_of_base64(b64).map_err(|e| malformed(format!("pooled_b64: {e}")))?;
            // Row width is known only to the caller: one flat row, split there.
            vec![flat]
        }
        _ => {
            return Err(malformed(
                "neither \"pooled\" nor \"pooled_b64\" nor \"error\"".into(),
            ));
        }
    };
    let tokens = match (map.get("tokens_b64"), map.get("token_shapes")) {
        (None, _) => None,
        (Some(Value::String(b64)), Some(shapes)) => {
            let flat = f32_of_base64(b64).map_err(|e| malformed(format!("tokens_b64: {e}")))?;
            let shapes: Vec<[usize; 2]> = serde_json::from_value(shapes.clone())
                .map_err(|e| malformed(format!("token_shapes: {e}")))?;
            Some(split_tokens(flat, &shapes).map_err(malformed)?)
        }
        (Some(_), _) => {
            return Err(malformed(
                "\"tokens_b64\" needs a base64 string and \"token_shapes\"".into(),
            ));
        }
    };
    Ok(Response {
        id,
        answer: Ok(Embeddings { pooled, tokens }),
    })
}

/// Whether `pooled` came as one flat base64 row that still needs splitting into `rows`.
pub fn split_flat_rows(pooled: Vec<Vec<f32>>, rows: usize, hidden: usize) -> Vec<Vec<f32>> {
    if pooled.len() == 1 && rows != 1 && pooled[0].len() == rows * hidden && hidden > 0 {
        pooled[0].chunks(hidden).map(<[f32]>::to_vec).collect()
    } else {
        pooled
    }
}

fn rows_of_numbers(rows: &Value) -> Result<Vec<Vec<f32>>, String> {
    let Value::Array(rows) = rows else {
        return Err("\"pooled\" is not an array of rows".into());
    };
    rows.iter()
        .enumerate()
        .map(|(r, row)| {
            let Value::Array(values) = row else {
                return Err(format!("\"pooled\" row {r} is not an array"));
            };
            values
                .iter()
                .enumerate()
                .map(|(c, v)| match v {
                    Value::Null => Ok(f32::NAN),
                    Value::Number(n) => n
                        .as_f64()
                        .map(|f| f as f32)
                        .ok_or_else(|| format!("\"pooled\"[{r}][{c}] is not a number")),
                    other => Err(format!(
                        "\"pooled\"[{r}][{c}] is {}, not a number",
                        excerpt(&other.to_string())
                    )),
                })
                .collect()
        })
        .collect()
}

fn f32_of_base64(b64: &str) -> Result<Vec<f32>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "{} bytes is not a whole number of f32",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Little-endian f32 values as base64 (what `pooled_b64` and `tokens_b64` carry).
pub fn base64_of_f32(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn split_tokens(flat: Vec<f32>, shapes: &[[usize; 2]]) -> Result<Vec<Vec<f32>>, String> {
    let total: usize = shapes
        .iter()
        .map(|[r, c]| r.checked_mul(*c).unwrap_or(usize::MAX))
        .fold(0usize, usize::saturating_add);
    if total != flat.len() {
        return Err(format!(
            "token_shapes hold {total} values, tokens_b64 {}",
            flat.len()
        ));
    }
    let mut out = Vec::with_capacity(shapes.len());
    let mut at = 0;
    for [r, c] in shapes {
        out.push(flat[at..at + r * c].to_vec());
        at += r * c;
    }
    Ok(out)
}

/// At most 120 characters of `text`, for error messages, with control bytes escaped.
pub fn excerpt(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(120)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > 120 {
        out.push_str("...");
    }
    out
}

/// The response line a deployment writes for `pooled` rows (serde writes non-finite values
/// as `null`).
pub fn response_line(
    id: u64,
    pooled: &[Vec<f32>],
    tokens: Option<&[Vec<f32>]>,
    hidden: usize,
) -> String {
    let mut map = serde_json::Map::new();
    map.insert("id".into(), id.into());
    map.insert(
        "pooled".into(),
        serde_json::to_value(pooled).unwrap_or(Value::Null),
    );
    if let Some(tokens) = tokens {
        let flat: Vec<f32> = tokens.iter().flatten().copied().collect();
        let shapes: Vec<[usize; 2]> = tokens
            .iter()
            .map(|t| [t.len() / hidden.max(1), hidden])
            .collect();
        map.insert("tokens_b64".into(), base64_of_f32(&flat).into());
        map.insert(
            "token_shapes".into(),
            serde_json::to_value(shapes).unwrap_or(Value::Null),
        );
    }
    Value::Object(map).to_string()
}

/// The refusal line for request `id`.
pub fn error_line(id: u64, message: &str) -> String {
    serde_json::json!({ "id": id, "error": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_s_nonfinite_tokens_read_as_nan_and_strings_are_left_alone() {
        let line = r#"{"id": 3, "pooled": [[NaN, Infinity, -Infinity, null, 1.5]], "note": "NaN \"Infinity\""}"#;
        let r = parse_response(line).unwrap();
        assert_eq!(r.id, 3);
        let rows = r.answer.unwrap().pooled;
        assert!(rows[0][..4].iter().all(|v| v.is_nan()));
        assert_eq!(rows[0][4], 1.5);
        assert_eq!(
            nonfinite_tokens_as_null(r#"{"a": "NaN é -Infinity", "b": NaN}"#),
            r#"{"a": "NaN é -Infinity", "b": null}"#
        );
    }

    #[test]
    fn refusals_base64_rows_and_tokens_read_back() {
        let r = parse_response(r#"{"id": 1, "error": "too long"}"#).unwrap();
        assert_eq!(r.answer, Err("too long".to_string()));
        let rows = vec![vec![1.0f32, -2.0], vec![0.5, f32::NAN]];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let line = format!(
            r#"{{"id": 2, "pooled_b64": "{}", "tokens_b64": "{}", "token_shapes": [[1, 2], [1, 2]]}}"#,
            base64_of_f32(&flat),
            base64_of_f32(&flat)
        );
        let e = parse_response(&line).unwrap().answer.unwrap();
        let pooled = split_flat_rows(e.pooled, 2, 2);
        assert_eq!(pooled[0], rows[0]);
        assert!(pooled[1][1].is_nan());
        assert_eq!(e.tokens.unwrap().len(), 2);
        let written = response_line(4, &rows, Some(&rows), 2);
        let back = parse_response(&written).unwrap().answer.unwrap();
        assert_eq!(back.pooled[0], rows[0]);
        assert!(
            back.pooled[1][1].is_nan(),
            "NaN goes out as null and back as NaN"
        );
    }

    #[test]
    fn garbage_names_what_is_wrong() {
        assert!(matches!(
            parse_response("hello"),
            Err(ResponseError::NotJson(_))
        ));
        assert!(matches!(
            parse_response("[1]"),
            Err(ResponseError::NotJson(_))
        ));
        assert_eq!(
            parse_response(r#"{"pooled": []}"#),
            Err(ResponseError::NoId)
        );
        let e = parse_response(r#"{"id": 5, "pooled": [["x"]]}"#).unwrap_err();
        assert!(e.to_string().contains("id 5"), "{e}");
        let e = parse_response(
            r#"{"id": 5, "tokens_b64": "AAAAAA==", "pooled": [[1]], "token_shapes": [[2, 2]]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("token_shapes"), "{e}");
        assert_eq!(excerpt("a\u{0}b"), "a\\0b");
    }
}
