//! `Metadata`: the ordered key/value store of a GGUF file, with typed getters that
//! coerce between integer widths, `set` for `--override-kv`, and `parse_override`
//! for llama.cpp's `KEY=TYPE:VALUE` override syntax.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::error::GgufError;
use crate::value::{Array, Value};

/// Key/value pairs in file order, with a name index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

fn wrong(key: &str, expected: &'static str, v: &Value) -> GgufError {
    GgufError::WrongType {
        key: key.to_string(),
        expected,
        found: v.type_name(),
    }
}

fn int_as<T: TryFrom<i128>>(key: &str, v: &Value, target: &'static str) -> Result<T, GgufError> {
    let i = v.as_integer().ok_or_else(|| wrong(key, target, v))?;
    T::try_from(i).map_err(|_| GgufError::OutOfRange {
        key: key.to_string(),
        value: i.to_string(),
        target,
    })
}

/// Converts an integer array element by element (borrowing when already `T`).
fn int_array_as<'a, T: TryFrom<i128> + Clone>(
    key: &str,
    a: &'a Array,
    exact: Option<&'a [T]>,
    target: &'static str,
    expected: &'static str,
) -> Result<Cow<'a, [T]>, GgufError> {
    if let Some(s) = exact {
        return Ok(Cow::Borrowed(s));
    }
    if !a.is_integer() {
        return Err(GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: format!("array[{}]", a.elem_type_name()),
        });
    }
    let mut out = Vec::with_capacity(a.len());
    for i in 0..a.len() {
        let x = a.integer_at(i).unwrap_or_default();
        out.push(T::try_from(x).map_err(|_| GgufError::OutOfRange {
            key: format!("{key}[{i}]"),
            value: x.to_string(),
            target,
        })?);
    }
    Ok(Cow::Owned(out))
}

impl Metadata {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All pairs in file order (keys added by `set` come last).
    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    /// Iterates over `(key, value)` in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Sets `key` to `value`, keeping its position when it exists (appending
    /// otherwise). Returns the previous value.
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> Option<Value> {
        let key = key.into();
        match self.index.get(&key) {
            Some(&i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.index.remove(key)?;
        let (_, v) = self.entries.remove(i);
        for j in self.index.values_mut() {
            if *j > i {
                *j -= 1;
            }
        }
        Some(v)
    }

    /// Adds a key that must not exist yet (the reader's duplicate check).
    pub(crate) fn insert_new(&mut self, key: String, value: Value) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }

    /// The value of `key`, or `MissingKey`.
    pub fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    /// Any integer value that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        int_as(key, self.require(key)?, "u32")
    }

    /// Any integer value that fits in i32.
    pub fn get_i32(&self, key: &str) -> Result<i32, GgufError> {
        int_as(key, self.require(key)?, "i32")
    }

    /// Any integer value that fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        int_as(key, self.require(key)?, "u64")
    }

    /// Any integer value that fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        int_as(key, self.require(key)?, "i64")
    }

    /// A float (f32 or f64, narrowed) or an integer, as f32.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_f64(key).map(|v| v as f32)
    }

    /// A float or an integer, as f64.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| wrong(key, "float", v))
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(wrong(key, "bool", v)),
        }
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| wrong(key, "string", v))
    }

    /// An array value of any element type.
    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| wrong(key, "array", v))
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<&[String], GgufError> {
        match self.require(key)? {
            Value::Array(Array::String(s)) => Ok(s),
            v => Err(wrong(key, "array[string]", v)),
        }
    }

    /// An array of f32 (borrowed), or of f64 / integers (converted).
    pub fn get_f32_array(&self, key: &str) -> Result<Cow<'_, [f32]>, GgufError> {
        let v = self.require(key)?;
        let a = v.as_array().ok_or_else(|| wrong(key, "array[f32]", v))?;
        match a {
            Array::F32(x) => Ok(Cow::Borrowed(x)),
            Array::F64(x) => Ok(Cow::Owned(x.iter().map(|&f| f as f32).collect())),
            _ if a.is_integer() => Ok(Cow::Owned(
                (0..a.len())
                    .map(|i| a.integer_at(i).unwrap_or_default() as f32)
                    .collect(),
            )),
            _ => Err(wrong(key, "array[f32]", v)),
        }
    }

    /// An array of i32 (borrowed), or of other integers that all fit (converted).
    pub fn get_i32_array(&self, key: &str) -> Result<Cow<'_, [i32]>, GgufError> {
        let v = self.require(key)?;
        let a = v.as_array().ok_or_else(|| wrong(key, "array[i32]", v))?;
        let exact = match a {
            Array::I32(x) => Some(x.as_slice()),
            _ => None,
        };
        int_array_as(key, a, exact, "i32", "array[i32]")
    }

    /// An array of u32 (borrowed), or of other integers that all fit (converted).
    pub fn get_u32_array(&self, key: &str) -> Result<Cow<'_, [u32]>, GgufError> {
        let v = self.require(key)?;
        let a = v.as_array().ok_or_else(|| wrong(key, "array[u32]", v))?;
        let exact = match a {
            Array::U32(x) => Some(x.as_slice()),
            _ => None,
        };
        int_array_as(key, a, exact, "u32", "array[u32]")
    }
}

/// Generates `opt_*` twins of the getters: Ok(None) when the key is absent.
macro_rules! optional_getters {
    ($($opt:ident => $get:ident : $t:ty),* $(,)?) => {
        impl Metadata {
            $(
                #[doc = concat!("Like `", stringify!($get), "`, but Ok(None) when the key is absent.")]
                pub fn $opt(&self, key: &str) -> Result<Option<$t>, GgufError> {
                    if self.contains_key(key) { self.$get(key).map(Some) } else { Ok(None) }
                }
            )*
        }
    };
}
optional_getters!(
    opt_u32 => get_u32: u32,
    opt_i32 => get_i32: i32,
    opt_u64 => get_u64: u64,
    opt_i64 => get_i64: i64,
    opt_f32 => get_f32: f32,
    opt_f64 => get_f64: f64,
    opt_bool => get_bool: bool,
    opt_str => get_str: &str,
    opt_array => get_array: &Array,
    opt_str_array => get_str_array: &[String],
    opt_f32_array => get_f32_array: Cow<'_, [f32]>,
    opt_i32_array => get_i32_array: Cow<'_, [i32]>,
    opt_u32_array => get_u32_array: Cow<'_, [u32]>,
);

/// Parses llama.cpp's `--override-kv` syntax `KEY=TYPE:VALUE`, TYPE one of
/// `int` (→ `Value::I64`), `float` (→ `Value::F64`), `bool` (`true`/`false`)
/// or `str` (at most 127 bytes). The key must be 1..=127 bytes. Unlike
/// llama.cpp's `atol`/`atof`, numbers must parse completely.
pub fn parse_override(s: &str) -> Result<(String, Value), GgufError> {
    let bad = |reason: &str| GgufError::BadOverride {
        input: s.to_string(),
        reason: reason.to_string(),
    };
    let (key, rest) = s
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=TYPE:VALUE"))?;
    if key.is_empty() {
        return Err(bad("empty key"));
    }
    if key.len() >= 128 {
        return Err(bad("key is longer than 127 bytes"));
    }
    let (ty, val) = rest
        .split_once(':')
        .ok_or_else(|| bad("expected TYPE:VALUE after '=' (TYPE is int, float, bool or str)"))?;
    let value = match ty {
        "int" => Value::I64(
            val.trim()
                .parse::<i64>()
                .map_err(|e| bad(&format!("bad int value: {e}")))?,
        ),
        "float" => Value::F64(
            val.trim()
                .parse::<f64>()
                .map_err(|e| bad(&format!("bad float value: {e}")))?,
        ),
        "bool" => match val {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad("bool value must be 'true' or 'false'")),
        },
        "str" => {
            if val.len() > 127 {
                return Err(bad("str value cannot exceed 127 bytes"));
            }
            Value::String(val.to_string())
        }
        _ => return Err(bad("unknown TYPE (expected int, float, bool or str)")),
    };
    Ok((key.to_string(), value))
}
