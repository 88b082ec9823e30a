use std::sync::Arc;

use serde_json::{json, Value};

use super::schema;
use super::*;

fn g(text: &str) -> Grammar {
    Grammar::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn gbnf_literals_classes_and_repetitions() {
    let gr = g(r#"root ::= "a" [0-9]+ ("x" | "yz")? [^\n]{2,3} # comment
"#);
    assert!(gr.accepts("a1x..."));
    assert!(gr.accepts("a12yzab"));
    assert!(gr.accepts("a9\u{e9}\u{e9}"));
    assert!(!gr.accepts("a"));
    assert!(!gr.accepts("ax.."));
    assert!(!gr.accepts("a1."));
    assert!(!gr.accepts("a1x...."));
    assert!(!gr.accepts("a1\n\n"));
}

#[test]
fn gbnf_rules_span_lines_and_recurse() {
    let gr = g(
        "root ::= list\nlist ::= \"[\" (\n  item (\",\" item)*\n)? \"]\"\nitem ::= [a-z] | list\n",
    );
    assert!(gr.accepts("[]"));
    assert!(gr.accepts("[a,[b,[]],c]"));
    assert!(!gr.accepts("[a,]"));
    assert!(!gr.accepts("[a"));
}

#[test]
fn gbnf_errors_name_the_problem() {
    let e = Grammar::parse("root ::= foo").unwrap_err();
    assert!(e.0.contains("foo"), "{e}");
    let e = Grammar::parse("x ::= \"a\"").unwrap_err();
    assert!(e.0.contains("root"), "{e}");
    let e = Grammar::parse("root ::= root \"a\" | \"b\"").unwrap_err();
    assert!(e.0.contains("left-recursive"), "{e}");
    assert!(Grammar::parse("root ::= \"a").is_err());
    assert!(Grammar::parse("root ::= [b-a]").is_err());
    assert!(Grammar::parse("root ::= \"a\"{3,1}").is_err());
}

#[test]
fn matcher_takes_characters_split_across_bytes() {
    let gr = Arc::new(g("root ::= [\u{e0}-\u{ff}] \"!\""));
    let mut m = Matcher::new(gr.clone());
    let e = "\u{e9}".as_bytes();
    assert!(m.feed_byte(e[0]));
    assert!(!m.can_end());
    assert!(m.feed_byte(e[1]));
    assert!(m.feed(b"!"));
    assert!(m.can_end() && !m.can_continue());
    // A lead byte no allowed character starts with is refused at once.
    let mut m = Matcher::new(gr);
    assert!(!m.feed_byte(0xE4));
    assert!(m.is_dead());
}

fn trie(vocab: &[&str], eog: usize) -> Arc<TokenTrie> {
    let mut bytes: Vec<Vec<u8>> = vocab.iter().map(|t| t.as_bytes().to_vec()).collect();
    bytes.push(Vec::new()); // the end token has no text
    let mut e = vec![false; bytes.len()];
    e[eog] = true;
    Arc::new(TokenTrie::new(bytes, e))
}

#[test]
fn mask_allows_exactly_the_tokens_the_grammar_takes() {
    let vocab = ["{", "}", "{}", "\"", "a", "ab", " ", "x"];
    let end = vocab.len();
    let t = trie(&vocab, end);
    let gr = Arc::new(g(r#"root ::= "{" "a"* "}""#));
    let mut c = Constraint::new(gr, t);
    let mut l = vec![0.0f32; end + 1];
    assert!(c.mask(&mut l));
    let allowed: Vec<usize> = (0..l.len()).filter(|&i| l[i].is_finite()).collect();
    assert_eq!(allowed, vec![0, 2]);
    assert!(c.allows(2) && !c.allows(end as u32));
    c.accept(0);
    assert!(c.allows(4) && !c.allows(5) && c.allows(1));
    c.accept(1);
    assert!(c.can_end());
    let mut l = vec![0.0f32; end + 1];
    assert!(c.mask(&mut l));
    let allowed: Vec<usize> = (0..l.len()).filter(|&i| l[i].is_finite()).collect();
    assert_eq!(allowed, vec![end], "only the end is left");
}

fn accepts_json(schema: &Value, v: &Value) -> bool {
    g(&schema::grammar(schema).unwrap()).accepts(&v.to_string())
}

#[test]
fn schema_objects_with_required_and_optional_properties() {
    let s = json!({"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}},
        "required": ["b"], "additionalProperties": false});
    assert!(accepts_json(&s, &json!({"b": "x"})));
    assert!(g(&schema::grammar(&s).unwrap()).accepts(r#"{"b": "x", "a": -12}"#));
    assert!(g(&schema::grammar(&s).unwrap()).accepts(r#"{"b": "x", "a": 3, "c": true}"#));
    assert!(g(&schema::grammar(&s).unwrap()).accepts(r#"{"b":"x","c":false}"#));
    assert!(!g(&schema::grammar(&s).unwrap()).accepts(r#"{"a": 3}"#));
    assert!(!g(&schema::grammar(&s).unwrap()).accepts(r#"{"b": 3}"#));
    assert!(!g(&schema::grammar(&s).unwrap()).accepts(r#"{"b": "x", "d": 1}"#));
    let none_required = json!({"properties": {"x": {"type": "null"}, "y": {"const": 5}}});
    assert!(accepts_json(&none_required, &json!({})));
    assert!(g(&schema::grammar(&none_required).unwrap()).accepts(r#"{"y": 5}"#));
    assert!(g(&schema::grammar(&none_required).unwrap()).accepts(r#"{"x": null, "y": 5}"#));
    assert!(!g(&schema::grammar(&none_required).unwrap()).accepts(r#"{"y": 6}"#));
}

#[test]
fn schema_arrays_enums_anyof_and_refs() {
    let s =
        json!({"type": "array", "items": {"enum": ["red", 2, null]}, "minItems": 1, "maxItems": 2});
    assert!(accepts_json(&s, &json!(["red"])));
    assert!(accepts_json(&s, &json!([2, null])));
    assert!(!accepts_json(&s, &json!([])));
    assert!(!accepts_json(&s, &json!(["red", 2, 2])));
    assert!(!accepts_json(&s, &json!(["blue"])));
    let s = json!({"anyOf": [{"type": "string", "maxLength": 2}, {"type": "number"}]});
    assert!(accepts_json(&s, &json!("ab")));
    assert!(!accepts_json(&s, &json!("abc")));
    assert!(accepts_json(&s, &json!(1.5e3)));
    let tree = json!({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object",
        "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["v", "kids"]}}});
    assert!(accepts_json(
        &tree,
        &json!({"v": 1, "kids": [{"v": 2, "kids": []}]})
    ));
    assert!(!accepts_json(&tree, &json!({"v": 1})));
    let obj = g(&schema::json_object());
    assert!(obj.accepts(r#"{"a": [1, {"b": null}], "c": "\u00e9\n"}"#));
    assert!(!obj.accepts("[1]"));
}

#[test]
fn schema_refuses_what_it_cannot_enforce() {
    for (s, word) in [
        (json!({"type": "string", "pattern": "a+"}), "pattern"),
        (json!({"type": "string", "format": "email"}), "format"),
        (json!({"type": "integer", "minimum": 3}), "minimum"),
        (json!({"oneOf": [{"type": "string"}]}), "oneOf"),
        (json!({"allOf": [{"type": "string"}]}), "allOf"),
        (json!({"$ref": "https://x/y"}), "local"),
        (
            json!({"type": "object", "required": ["z"], "properties": {}}),
            "z",
        ),
    ] {
        let e = schema::grammar(&s).unwrap_err();
        assert!(e.0.contains(word), "{s}: {e}");
    }
}

/// Properties come in the order the schema declares them (as a request's
/// body gives it), not sorted by name.
#[test]
fn schema_properties_keep_their_declared_order() {
    let schema: Value = serde_json::from_str(
        r#"{"type": "object", "properties": {"z": {"type": "integer"},
            "a": {"type": "integer"}, "m": {"type": "integer"}},
            "required": ["z", "a", "m"]}"#,
    )
    .unwrap();
    let gr = g(&schema::grammar(&schema).unwrap());
    assert!(gr.accepts(r#"{"z":1,"a":2,"m":3}"#));
    assert!(!gr.accepts(r#"{"a":2,"m":3,"z":1}"#));
    let optional: Value = serde_json::from_str(
        r#"{"type": "object", "properties": {"z": {"type": "integer"},
            "a": {"type": "integer"}, "m": {"type": "integer"}}, "required": ["m"]}"#,
    )
    .unwrap();
    let gr = g(&schema::grammar(&optional).unwrap());
    // The required one first, then the optional ones in declared order.
    assert!(gr.accepts(r#"{"m":3,"z":1,"a":2}"#));
    assert!(gr.accepts(r#"{"m":3,"a":2}"#));
    assert!(!gr.accepts(r#"{"m":3,"a":2,"z":1}"#));
}
