//! Field readers every API's request parser uses: a body as a JSON object,
//! and typed optional fields whose errors name the field (`param`).

use serde_json::{Map, Value};

use super::ApiError;

pub(crate) type Res<T> = std::result::Result<T, ApiError>;

/// Parses a body into a JSON object.
pub fn parse_object(body: &[u8]) -> Res<Map<String, Value>> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("The body is not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::invalid("", "The body must be a JSON object.")),
    }
}

/// `o[name]`, with JSON null read as absent.
pub(crate) fn field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

pub(crate) fn opt_f32(o: &Map<String, Value>, name: &str, lo: f32, hi: f32) -> Res<Option<f32>> {
    let Some(v) = field(o, name) else {
        return Ok(None);
    };
    let x = v
        .as_f64()
        .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be a number, got {v}.")))?;
    if !(lo as f64..=hi as f64).contains(&x) {
        return Err(ApiError::invalid(
            name,
            format!("`{name}` must be between {lo} and {hi}, got {x}."),
        ));
    }
    Ok(Some(x as f32))
}

pub(crate) fn opt_uint(o: &Map<String, Value>, name: &str, min: u64) -> Res<Option<u64>> {
    let Some(v) = field(o, name) else {
        return Ok(None);
    };
    let x = v.as_u64().ok_or_else(|| {
        ApiError::invalid(
            name,
            format!("`{name}` must be an integer of at least {min}, got {v}."),
        )
    })?;
    if x < min {
        return Err(ApiError::invalid(
            name,
            format!("`{name}` must be at least {min}, got {x}."),
        ));
    }
    Ok(Some(x))
}

pub(crate) fn opt_bool(o: &Map<String, Value>, name: &str) -> Res<Option<bool>> {
    let Some(v) = field(o, name) else {
        return Ok(None);
    };
    v.as_bool()
        .map(Some)
        .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be a boolean, got {v}.")))
}

pub(crate) fn opt_str<'a>(o: &'a Map<String, Value>, name: &str) -> Res<Option<&'a str>> {
    let Some(v) = field(o, name) else {
        return Ok(None);
    };
    v.as_str()
        .map(Some)
        .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be a string, got {v}.")))
}

/// Refuses a field that asks for something this server does not do.
pub(crate) fn refuse_if(
    o: &Map<String, Value>,
    name: &str,
    on: impl Fn(&Value) -> bool,
    what: &str,
) -> Res<()> {
    match field(o, name) {
        Some(v) if on(v) => Err(ApiError::invalid_code(
            name,
            "unsupported_parameter",
            format!("{what} is not supported by this server."),
        )),
        _ => Ok(()),
    }
}
