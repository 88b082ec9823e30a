//! The prompt side of tool calls. A template that reads `tools` gets them
//! as Hugging Face passes them, and the messages as they are; one that does
//! not gets a system note listing the tools and the generic JSON form, with
//! earlier calls written into the assistant's content in that form and
//! tool results sent as user turns. A forced call (`tool_choice` required or
//! named) becomes a grammar in the family's own notation, each tool's
//! arguments following its parameter schema.

use dwarfstar_tokenizer::ChatMessage;
use serde_json::{json, Value};

use super::{tool_params, Choice, Family, ToolSpec};
use crate::serve::grammar::schema::{literal, Rules};
use crate::serve::grammar::GrammarError;

/// Whether a template renders tools itself.
pub fn template_reads_tools(template: &str) -> bool {
    template.contains("tools")
}

/// The messages (and the `tools` variable) to render, given whether the
/// template reads tools.
pub fn prepare(
    messages: Vec<ChatMessage>,
    spec: &ToolSpec,
    native: bool,
) -> (Vec<ChatMessage>, Option<Value>) {
    if native {
        let tools = spec.active().then(|| Value::Array(spec.tools.clone()));
        return (messages, tools);
    }
    let mut out: Vec<ChatMessage> = messages.into_iter().map(polyfill).collect();
    if spec.active() {
        let note = system_note(spec);
        match out.first_mut() {
            Some(m) if m.role == "system" => {
                m.content = format!("{}\n\n{note}", m.content);
            }
            _ => out.insert(0, ChatMessage::new("system", note)),
        }
    }
    (out, None)
}

/// A tool-less template's view of a message.
fn polyfill(mut m: ChatMessage) -> ChatMessage {
    if let Some(calls) = m.tool_calls.take() {
        let calls: Vec<Value> = calls
            .as_array()
            .into_iter()
            .flatten()
            .map(
                |c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}),
            )
            .collect();
        let json = json!({ "tool_calls": calls }).to_string();
        m.content = if m.content.is_empty() {
            json
        } else {
            format!("{}\n{json}", m.content)
        };
    }
    if m.role == "tool" {
        let id = m.tool_call_id.take();
        m.role = "user".into();
        m.content =
            json!({"tool_response": {"tool_call_id": id, "content": m.content}}).to_string();
    }
    m
}

fn system_note(spec: &ToolSpec) -> String {
    let tools: Vec<String> = spec
        .tools
        .iter()
        .map(|t| t["function"].to_string())
        .collect();
    format!(
        "You can call these tools (JSON Schema of each):\n{}\n\nTo call tools, answer with \
         only this JSON and nothing else:\n{{\"tool_calls\": [{{\"name\": \"TOOL NAME\", \
         \"arguments\": {{...}}}}]}}\nOtherwise answer normally.",
        tools.join("\n")
    )
}

/// The grammar of a forced call in `family`'s notation: one call, or with
/// `parallel_tool_calls` (and not a named function) up to one per tool,
/// each of the tools `spec` forces.
pub fn forced_grammar(spec: &ToolSpec, family: Family) -> Result<Option<String>, GrammarError> {
    let Some(tools) = spec.forced() else {
        return Ok(None);
    };
    if tools.is_empty() {
        return Err(GrammarError::new("no tool to call"));
    }
    let params: Vec<(String, Value)> = tools
        .iter()
        .map(|t| {
            let name = t["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (name, tool_params(t))
        })
        .collect();
    let mut rules = Rules::new();
    let mut calls = Vec::new();
    for (name, schema) in &params {
        let call = match family {
            Family::DeepSeekV4 => dsml_invoke(&mut rules, name, schema)?,
            _ => {
                let args = rules.value(schema, name)?;
                match family {
                    Family::DeepSeekV3 => format!(
                        "{} {} \"\\n```json\\n\" {args} \"\\n```<｜tool▁call▁end｜>\"",
                        literal("<｜tool▁call▁begin｜>function<｜tool▁sep｜>"),
                        literal(name)
                    ),
                    Family::DeepSeekV31 => format!(
                        "{} {} {} {args} {}",
                        literal("<｜tool▁call▁begin｜>"),
                        literal(name),
                        literal("<｜tool▁sep｜>"),
                        literal("<｜tool▁call▁end｜>")
                    ),
                    _ => {
                        let key = if family == Family::Llama3 {
                            "parameters"
                        } else {
                            "arguments"
                        };
                        format!(
                            "\"{{\" space \"\\\"name\\\"\" space \":\" space {} space \",\" space {} space \":\" space {args} \"}}\" space",
                            literal(&format!("\"{name}\"")),
                            literal(&format!("\"{key}\"")),
                        )
                    }
                }
            }
        };
        calls.push(format!("( {call} )"));
    }
    let call = calls.join(" | ");
    // How many calls the output may hold: one for a named function or
    // without parallel calls, else at most one per tool. A bound, because a
    // small model asked for a list repeats its first call until max_tokens,
    // and a cut-off list parses as nothing.
    let extra = match (&spec.choice, spec.parallel) {
        (Choice::Named(_), _) | (_, false) => 0,
        _ => tools.len().clamp(1, 8) - 1,
    };
    let repeat = |item: &str| -> String {
        let mut s = String::new();
        for _ in 0..extra {
            s = format!("( {item} {s} )?");
        }
        s
    };
    let more = |sep: &str| repeat(&format!("{sep} ( {call} )"));
    let root = match family {
        Family::Hermes => format!(
            "\"<tool_call>\\n\" ( {call} ) \"\\n</tool_call>\" {}",
            repeat(&format!("\"\\n<tool_call>\\n\" ( {call} ) \"\\n</tool_call>\""))
        ),
        Family::Llama3 => format!("( {call} )"),
        Family::Generic => format!(
            "\"{{\" space \"\\\"tool_calls\\\"\" space \":\" space \"[\" space ( {call} ) {} \"]\" space \"}}\" space",
            more("\",\" space")
        ),
        Family::DeepSeekV3 | Family::DeepSeekV31 => format!(
            "{} ( {call} ) {} {}",
            literal("<｜tool▁calls▁begin｜>"),
            more(""),
            literal("<｜tool▁calls▁end｜>")
        ),
        Family::DeepSeekV4 => format!(
            "{} ( {call} ) {} {}",
            literal("<｜DSML｜tool_calls>\n"),
            more(""),
            literal("</｜DSML｜tool_calls>")
        ),
    };
    Ok(Some(rules.finish(&root)))
}

/// One DSML `invoke` of `name`: its parameters in declared order, required
/// ones always, each value JSON (`string="false"`).
fn dsml_invoke<'a>(
    rules: &mut Rules<'a>,
    name: &str,
    schema: &'a Value,
) -> Result<String, GrammarError> {
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten();
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut body = literal(&format!("<｜DSML｜invoke name=\"{name}\">\n"));
    for (k, s) in props {
        let v = rules.value(s, k)?;
        let p = format!(
            "{} {v} {}",
            literal(&format!(
                "<｜DSML｜parameter name=\"{k}\" string=\"false\">"
            )),
            literal("</｜DSML｜parameter>\n")
        );
        if required.contains(&k.as_str()) {
            body.push_str(&format!(" {p}"));
        } else {
            body.push_str(&format!(" ( {p} )?"));
        }
    }
    body.push_str(&format!(" {}", literal("</｜DSML｜invoke>\n")));
    Ok(body)
}
