//! Tool calls: the system message that lists the tools, the grammar of a call list, and
//! reading calls back from a choice's output, whole or as it streams.

use serde::Deserialize;

use super::Tool;

/// How a choice's output is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolOutput {
    /// Text (or JSON text, under `response_format`).
    Text,
    /// Calls when the output is a call list, else text (`tool_choice` auto).
    MaybeCalls,
    /// Always a call list (`required` or a named function).
    Calls,
}

/// A choice's streamed output while it may still be a call list: its text is held back
/// until it cannot be one (under `tool_choice` auto, once it starts with anything but `[`),
/// or until its end, where a whole call list is read as calls.
#[derive(Debug, Clone)]
pub struct HeldCalls {
    output: ToolOutput,
    held: Option<String>,
}

impl HeldCalls {
    pub fn new(output: ToolOutput) -> Self {
        Self { output, held: (output != ToolOutput::Text).then(String::new) }
    }

    /// Takes the choice's next `text` (`last`: its end). Returns the text that may go out
    /// now and, at the end, the calls when the whole output was a call list.
    pub fn feed(&mut self, text: String, last: bool) -> (String, Option<Vec<ToolCall>>) {
        let Some(held) = &mut self.held else { return (text, None) };
        held.push_str(&text);
        let start = held.trim_start();
        let is_text = self.output == ToolOutput::MaybeCalls && !start.is_empty() && !start.starts_with('[');
        if !last && !is_text {
            return (String::new(), None);
        }
        let text = std::mem::take(held);
        self.held = None;
        let calls = if last { parse_tool_calls(&text) } else { None };
        (text, calls)
    }
}

/// A function call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments object as JSON text (OpenAI's form).
    pub arguments: String,
}

/// The calls in a choice's output: a JSON list of `{"name", "arguments"}` as the call
/// grammar makes the model write; `None` if the output is not one (text, or cut short).
pub fn parse_tool_calls(output: &str) -> Option<Vec<ToolCall>> {
    #[derive(Deserialize)]
    struct Written {
        name: String,
        arguments: serde_json::Value,
    }
    let written: Vec<Written> = serde_json::from_str(output.trim()).ok()?;
    (!written.is_empty()).then(|| written.into_iter().map(|c| ToolCall { name: c.name, arguments: c.arguments.to_string() }).collect())
}

/// A system message that tells the model the tools it may call and how to write a call
/// (the chat templates of small models know no tools); `required`: it must call one.
pub(super) fn tool_prompt(tools: &[&Tool], required: bool) -> String {
    let listed: Vec<serde_json::Value> = tools
        .iter()
        .map(|t| serde_json::json!({"name": t.function.name, "description": t.function.description, "parameters": t.function.parameters}))
        .collect();
    let when = if required { "Answer with" } else { "To call functions, answer with only" };
    format!(
        "You can call these functions:\n{}\n{when} a JSON list of calls: [{{\"name\": \"<function name>\", \"arguments\": {{<arguments>}}}}].",
        serde_json::Value::from(listed)
    )
}

/// The JSON schema of a call list: calls of the given tools, each `{"name", "arguments"}`
/// with the tool's argument schema; at least one, at most one if `one`; laid out on one line.
pub(super) fn call_list_schema(tools: &[&Tool], one: bool) -> serde_json::Value {
    let calls: Vec<serde_json::Value> = tools
        .iter()
        .map(|t| {
            let arguments = t.function.parameters.clone().unwrap_or_else(|| serde_json::json!({"type": "object"}));
            serde_json::json!({
                "type": "object",
                "properties": {"name": {"const": t.function.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let mut schema = serde_json::json!({"type": "array", "items": {"anyOf": calls}, "minItems": 1});
    if one {
        schema["maxItems"] = 1.into();
    }
    crate::json_layout(schema)
}
