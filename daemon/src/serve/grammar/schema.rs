//! JSON Schema to GBNF, for `response_format` and forced tool calls.
//!
//! The subset: `type` (one or a list), `properties`, `required`,
//! `additionalProperties` (declared properties only are produced, which any
//! setting accepts), `items`, `minItems`, `maxItems`, `enum`, `const`,
//! `anyOf`, `minLength`, `maxLength`, local `$ref`s into `$defs` /
//! `definitions` (recursion allowed), and the annotations (`title`,
//! `description`, `default`, `examples`, ...), which change nothing.
//! Any other keyword is refused, so what is produced always validates.
//! Properties come in the order the schema declares them (serde_json keeps
//! it: the workspace enables `preserve_order`), the required ones first,
//! then the optional ones, each present or not. Numbers have at most 16 digits per part and
//! whitespace is bounded, so a small model cannot loop inside them.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::GrammarError;

/// The shared rules: JSON's primitives and a generic value.
const PRIMITIVES: &str = r#"space ::= | " " | "\n" [ \t]{0,20}
boolean ::= ("true" | "false") space
null ::= "null" space
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt/] | "u" [0-9a-fA-F]{4})
string ::= "\"" char* "\"" space
integral-part ::= [0] | [1-9] [0-9]{0,15}
decimal-part ::= [0-9]{1,16}
integer ::= ("-"? integral-part) space
number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space
value ::= object | array | string | number | boolean | null
object ::= "{" space ( string ":" space value ("," space string ":" space value)* )? "}" space
array ::= "[" space ( value ("," space value)* )? "]" space
"#;

/// Any JSON object (`response_format: {type: json_object}`).
pub fn json_object() -> String {
    format!("root ::= object\n{PRIMITIVES}")
}

/// The grammar of the JSON values `schema` accepts.
pub fn grammar(schema: &Value) -> Result<String, GrammarError> {
    let mut r = Rules::new();
    let body = r.value(schema, "root")?;
    Ok(r.finish(&body))
}

/// Several schemas' rules in one grammar (a forced tool call holds each
/// tool's parameters): [`Rules::value`] gives an expression per schema,
/// [`Rules::finish`] the grammar with a given root.
pub struct Rules<'a> {
    c: Converter<'a>,
}

impl<'a> Rules<'a> {
    pub fn new() -> Self {
        Rules {
            c: Converter {
                root: &Value::Null,
                rules: Vec::new(),
                refs: HashMap::new(),
                n: 0,
            },
        }
    }

    /// A GBNF expression for the values of `schema` (its `$ref`s resolve
    /// within it).
    pub fn value(&mut self, schema: &'a Value, hint: &str) -> Result<String, GrammarError> {
        self.c.root = schema;
        self.c.refs.clear();
        self.c.visit(schema, hint)
    }

    /// The whole grammar, `root ::= root_body`.
    pub fn finish(self, root_body: &str) -> String {
        let mut out = format!("root ::= {root_body}\n");
        for (name, body) in &self.c.rules {
            out.push_str(&format!("{name} ::= {body}\n"));
        }
        out.push_str(PRIMITIVES);
        out
    }
}

impl Default for Rules<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// A GBNF literal for `s`.
pub fn literal(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7F => {
                out.push_str(&format!("\\x{:02X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
    "strict",
];

struct Converter<'a> {
    root: &'a Value,
    rules: Vec<(String, String)>,
    refs: HashMap<String, String>,
    n: usize,
}

fn unsupported(k: &str) -> GrammarError {
    GrammarError::new(format!(
        "the JSON Schema keyword `{k}` is not supported (supported: type, properties, required, \
         additionalProperties, items, minItems, maxItems, enum, const, anyOf, minLength, \
         maxLength, $ref to $defs)"
    ))
}

impl<'a> Converter<'a> {
    fn rule(&mut self, hint: &str, body: String) -> String {
        self.n += 1;
        let clean: String = hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let name = format!("{clean}-r{}", self.n);
        self.rules.push((name.clone(), body));
        name
    }

    /// A GBNF expression for the values of `s`.
    fn visit(&mut self, s: &'a Value, hint: &str) -> Result<String, GrammarError> {
        let o = match s {
            Value::Bool(true) => return Ok("value".into()),
            Value::Bool(false) => {
                return Err(GrammarError::new("the schema `false` accepts nothing"))
            }
            Value::Object(o) => o,
            _ => return Err(GrammarError::new("a schema must be an object or a boolean")),
        };
        const KNOWN: &[&str] = &[
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "maxItems",
            "enum",
            "const",
            "anyOf",
            "minLength",
            "maxLength",
            "$ref",
        ];
        if let Some(k) = o
            .keys()
            .find(|k| !KNOWN.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()))
        {
            return Err(unsupported(k));
        }
        if let Some(r) = o.get("$ref") {
            if o.len() > 1
                && o.keys()
                    .any(|k| !ANNOTATIONS.contains(&k.as_str()) && k != "$ref")
            {
                return Err(GrammarError::new(
                    "`$ref` beside other keywords is not supported",
                ));
            }
            return self.reference(r);
        }
        if let Some(c) = o.get("const") {
            return Ok(format!("{} space", literal(&c.to_string())));
        }
        if let Some(e) = o.get("enum") {
            let Some(items) = e.as_array().filter(|a| !a.is_empty()) else {
                return Err(GrammarError::new("`enum` must be a non-empty array"));
            };
            let alts: Vec<String> = items.iter().map(|v| literal(&v.to_string())).collect();
            return Ok(format!("({}) space", alts.join(" | ")));
        }
        if let Some(any) = o.get("anyOf") {
            let Some(items) = any.as_array().filter(|a| !a.is_empty()) else {
                return Err(GrammarError::new("`anyOf` must be a non-empty array"));
            };
            if o.keys()
                .any(|k| k != "anyOf" && !ANNOTATIONS.contains(&k.as_str()))
            {
                return Err(GrammarError::new(
                    "`anyOf` beside other keywords is not supported",
                ));
            }
            let mut alts = Vec::new();
            for (i, it) in items.iter().enumerate() {
                let e = self.visit(it, &format!("{hint}-{i}"))?;
                alts.push(self.rule(hint, e));
            }
            return Ok(format!("({})", alts.join(" | ")));
        }
        match o.get("type") {
            None => {
                if o.contains_key("properties") {
                    self.object(o, hint)
                } else if o.contains_key("items") {
                    self.array(o, hint)
                } else {
                    Ok("value".into())
                }
            }
            Some(Value::String(t)) => self.typed(t, o, hint),
            Some(Value::Array(ts)) if !ts.is_empty() => {
                let mut alts = Vec::new();
                for t in ts {
                    let t = t
                        .as_str()
                        .ok_or_else(|| GrammarError::new("`type` must hold strings"))?;
                    let e = self.typed(t, o, hint)?;
                    alts.push(self.rule(hint, e));
                }
                Ok(format!("({})", alts.join(" | ")))
            }
            Some(_) => Err(GrammarError::new(
                "`type` must be a string or a list of strings",
            )),
        }
    }

    fn typed(
        &mut self,
        t: &str,
        o: &'a Map<String, Value>,
        hint: &str,
    ) -> Result<String, GrammarError> {
        let only = |allowed: &[&str]| -> Result<(), GrammarError> {
            const GENERIC: &[&str] = &["type", "enum", "const", "anyOf", "$ref"];
            match o.keys().find(|k| {
                !allowed.contains(&k.as_str())
                    && !GENERIC.contains(&k.as_str())
                    && !ANNOTATIONS.contains(&k.as_str())
            }) {
                Some(k) => Err(GrammarError::new(format!(
                    "the keyword `{k}` does not apply to type `{t}` here"
                ))),
                None => Ok(()),
            }
        };
        match t {
            "string" => {
                only(&["minLength", "maxLength"])?;
                let min = uint(o, "minLength")?;
                let max = uint(o, "maxLength")?;
                Ok(match (min, max) {
                    (None, None) => "string".into(),
                    (lo, hi) => {
                        let lo = lo.unwrap_or(0);
                        let hi = hi.map_or(String::new(), |h| h.to_string());
                        format!("\"\\\"\" char{{{lo},{hi}}} \"\\\"\" space")
                    }
                })
            }
            "number" => only(&[]).map(|_| "number".into()),
            "integer" => only(&[]).map(|_| "integer".into()),
            "boolean" => only(&[]).map(|_| "boolean".into()),
            "null" => only(&[]).map(|_| "null".into()),
            "object" => {
                only(&["properties", "required", "additionalProperties"])?;
                self.object(o, hint)
            }
            "array" => {
                only(&["items", "minItems", "maxItems"])?;
                self.array(o, hint)
            }
            other => Err(GrammarError::new(format!("unknown type `{other}`"))),
        }
    }

    fn reference(&mut self, r: &Value) -> Result<String, GrammarError> {
        let r = r
            .as_str()
            .ok_or_else(|| GrammarError::new("`$ref` must be a string"))?;
        if let Some(name) = self.refs.get(r) {
            return Ok(name.clone());
        }
        let target = if r == "#" {
            self.root
        } else {
            let path = r.strip_prefix("#/").ok_or_else(|| {
                GrammarError::new(format!("only local `$ref`s are supported, not `{r}`"))
            })?;
            let mut at = self.root;
            for part in path.split('/') {
                let part = part.replace("~1", "/").replace("~0", "~");
                at = at
                    .get(&part)
                    .ok_or_else(|| GrammarError::new(format!("`$ref` `{r}` points nowhere")))?;
            }
            at
        };
        // Named before its body is built, so recursion refers to it.
        self.n += 1;
        let name = format!("ref-r{}", self.n);
        self.refs.insert(r.to_string(), name.clone());
        let slot = self.rules.len();
        self.rules.push((name.clone(), String::new()));
        let body = self.visit(target, "ref")?;
        self.rules[slot].1 = body;
        Ok(name)
    }

    fn object(&mut self, o: &'a Map<String, Value>, hint: &str) -> Result<String, GrammarError> {
        let props = match o.get("properties") {
            None => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(GrammarError::new("`properties` must be an object")),
        };
        let required: Vec<&str> = match o.get("required") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(GrammarError::new("`required` must be an array of names")),
        };
        match o.get("additionalProperties") {
            None | Some(Value::Bool(_)) => {}
            Some(_) => {
                return Err(GrammarError::new(
                    "`additionalProperties` must be true or false here",
                ))
            }
        }
        let Some(props) = props else {
            if !required.is_empty() {
                return Err(GrammarError::new(
                    "`required` names properties the schema does not declare",
                ));
            }
            return Ok("object".into());
        };
        if let Some(missing) = required.iter().find(|r| !props.contains_key(**r)) {
            return Err(GrammarError::new(format!(
                "required property `{missing}` is not in `properties`"
            )));
        }
        let mut kv = HashMap::new();
        for (name, s) in props {
            let v = self.visit(s, &format!("{hint}-{name}"))?;
            let body = format!(
                "{} space \":\" space {v}",
                literal(&Value::from(name.as_str()).to_string())
            );
            kv.insert(name.as_str(), self.rule(&format!("{hint}-{name}-kv"), body));
        }
        let req: Vec<&str> = props
            .keys()
            .map(String::as_str)
            .filter(|k| required.contains(k))
            .collect();
        let opt: Vec<&str> = props
            .keys()
            .map(String::as_str)
            .filter(|k| !required.contains(k))
            .collect();
        let mut body = String::from("\"{\" space ");
        body.push_str(
            &req.iter()
                .map(|k| kv[k].clone())
                .collect::<Vec<_>>()
                .join(" \",\" space "),
        );
        if !opt.is_empty() {
            // Chains: each optional property, then optionally the later ones.
            let mut chain: Option<String> = None;
            let mut starts = Vec::new();
            for k in opt.iter().rev() {
                let body = match &chain {
                    Some(rest) => format!("{} ( \",\" space {rest} )?", kv[k]),
                    None => kv[k].clone(),
                };
                starts.push(self.rule(&format!("{hint}-opt"), body));
                chain = Some(format!("({})", {
                    let mut alts = starts.clone();
                    alts.reverse();
                    alts.join(" | ")
                }));
            }
            let any = chain.unwrap_or_default();
            if req.is_empty() {
                body.push_str(&format!("{any}?"));
            } else {
                body.push_str(&format!(" ( \",\" space {any} )?"));
            }
        }
        body.push_str(" \"}\" space");
        Ok(body)
    }

    fn array(&mut self, o: &'a Map<String, Value>, hint: &str) -> Result<String, GrammarError> {
        let item = match o.get("items") {
            None => "value".to_string(),
            Some(s) => {
                let e = self.visit(s, &format!("{hint}-item"))?;
                self.rule(&format!("{hint}-item"), e)
            }
        };
        let min = uint(o, "minItems")?.unwrap_or(0);
        let max = uint(o, "maxItems")?;
        if max.is_some_and(|m| m < min) {
            return Err(GrammarError::new("`maxItems` is below `minItems`"));
        }
        let list = match (min, max) {
            (_, Some(0)) => String::new(),
            (0, None) => format!("( {item} (\",\" space {item})* )?"),
            (0, Some(m)) => format!("( {item} (\",\" space {item}){{0,{}}} )?", m - 1),
            (n, None) => format!("{item} (\",\" space {item}){{{},}}", n - 1),
            (n, Some(m)) => format!("{item} (\",\" space {item}){{{},{}}}", n - 1, m - 1),
        };
        Ok(format!("\"[\" space {list} \"]\" space"))
    }
}

fn uint(o: &Map<String, Value>, k: &str) -> Result<Option<usize>, GrammarError> {
    match o.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n <= 1000)
            .map(|n| Some(n as usize))
            .ok_or_else(|| GrammarError::new(format!("`{k}` must be an integer from 0 to 1000"))),
    }
}
