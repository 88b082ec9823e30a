//! OpenAI's `/v1/embeddings` request and response bodies: `input` as a
//! string, an array of strings, an array of token ids or an array of such
//! arrays; `encoding_format` `float` (the default) or `base64` (each
//! vector's little-endian f32 bytes); `dimensions` only as the model's own
//! width (vectors are not shortened).

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::fields::{field, parse_object};
use super::ApiError;

type Res<T> = Result<T, ApiError>;

/// One input to embed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Text(String),
    Tokens(Vec<u32>),
}

/// A parsed `/v1/embeddings` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingsRequest {
    pub model: Option<String>,
    pub inputs: Vec<Input>,
    pub base64: bool,
    pub dimensions: Option<u64>,
}

const INPUT_SHAPE: &str = "`input` must be a string, an array of strings, an array of token \
                           ids, or an array of arrays of token ids.";

pub fn embeddings_request(body: &[u8]) -> Res<EmbeddingsRequest> {
    let o = parse_object(body)?;
    let model = match field(&o, "model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("model", "`model` must be a string.")),
    };
    let base64 = match field(&o, "encoding_format") {
        None => false,
        Some(v) => match v.as_str() {
            Some("float") => false,
            Some("base64") => true,
            _ => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    "`encoding_format` must be `float` or `base64`.",
                ))
            }
        },
    };
    let dimensions = match field(&o, "dimensions") {
        None => None,
        Some(v) => Some(v.as_u64().filter(|&d| d > 0).ok_or_else(|| {
            ApiError::invalid("dimensions", "`dimensions` must be a positive integer.")
        })?),
    };
    Ok(EmbeddingsRequest {
        model,
        inputs: inputs(&o)?,
        base64,
        dimensions,
    })
}

fn inputs(o: &Map<String, Value>) -> Res<Vec<Input>> {
    let bad = || ApiError::invalid("input", INPUT_SHAPE);
    let list = match field(o, "input") {
        None => return Err(ApiError::invalid("input", "`input` is required.")),
        Some(Value::String(s)) => return Ok(vec![Input::Text(s.clone())]),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad()),
    };
    if list.is_empty() {
        return Err(ApiError::invalid("input", "`input` must not be empty."));
    }
    if list.iter().all(Value::is_number) {
        return Ok(vec![Input::Tokens(token_ids(list).ok_or_else(bad)?)]);
    }
    list.iter()
        .map(|v| match v {
            Value::String(s) => Ok(Input::Text(s.clone())),
            Value::Array(a) => token_ids(a).map(Input::Tokens).ok_or_else(bad),
            _ => Err(bad()),
        })
        .collect()
}

fn token_ids(a: &[Value]) -> Option<Vec<u32>> {
    a.iter()
        .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect()
}

/// The response body: one `embedding` object per vector, in input order.
pub fn embeddings_response(
    model: &str,
    vectors: &[Vec<f32>],
    base64: bool,
    prompt_tokens: usize,
) -> Value {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: Value) -> Res<EmbeddingsRequest> {
        embeddings_request(body.to_string().as_bytes())
    }

    #[test]
    fn every_input_shape_parses() {
        let t = |s: &str| Input::Text(s.into());
        assert_eq!(req(json!({"input": "hi"})).unwrap().inputs, [t("hi")]);
        assert_eq!(
            req(json!({"input": ["a", "b"]})).unwrap().inputs,
            [t("a"), t("b")]
        );
        assert_eq!(
            req(json!({"input": [1, 2, 3]})).unwrap().inputs,
            [Input::Tokens(vec![1, 2, 3])]
        );
        assert_eq!(
            req(json!({"input": [[1], [2, 3]]})).unwrap().inputs,
            [Input::Tokens(vec![1]), Input::Tokens(vec![2, 3])]
        );
        let r = req(json!({"input": "x", "encoding_format": "base64", "dimensions": 64})).unwrap();
        assert!(r.base64);
        assert_eq!(r.dimensions, Some(64));
    }

    #[test]
    fn bad_inputs_are_400s_naming_their_field() {
        for (body, param) in [
            (json!({}), "input"),
            (json!({"input": []}), "input"),
            (json!({"input": 5}), "input"),
            (json!({"input": [1, -2]}), "input"),
            (json!({"input": [[1], "a", 3]}), "input"),
            (json!({"input": [1.5]}), "input"),
            (
                json!({"input": "x", "encoding_format": "int8"}),
                "encoding_format",
            ),
            (json!({"input": "x", "dimensions": 0}), "dimensions"),
            (json!({"input": "x", "model": 3}), "model"),
        ] {
            let e = req(body.clone()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}");
        }
    }

    #[test]
    fn base64_holds_little_endian_floats() {
        let r = embeddings_response("m", &[vec![1.0, -0.5]], true, 3);
        let s = r["data"][0]["embedding"].as_str().unwrap();
        let b = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(b, [1.0f32.to_le_bytes(), (-0.5f32).to_le_bytes()].concat());
        assert_eq!(r["usage"]["prompt_tokens"], 3);
        let f = embeddings_response("m", &[vec![0.25]], false, 1);
        assert_eq!(f["data"][0]["embedding"], json!([0.25]));
        assert_eq!(f["object"], "list");
    }
}
