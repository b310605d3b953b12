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
/// until it cannot be one (under `tool_choice` auto, once it starts with anything but `[`).
/// Once it is one (the call grammar makes a list of whatever starts with `[`), each call goes
/// out as it is written: its name once complete, then its arguments piece by piece; at the
/// end, a whole call list is read as calls.
#[derive(Debug, Clone)]
pub struct HeldCalls {
    output: ToolOutput,
    held: Option<String>,
    /// The calls sent so far, as far as they were sent.
    sent: Vec<PartialCall>,
}

/// What a choice's next text gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fed {
    /// Text that may go out now.
    pub text: String,
    /// The calls' new pieces.
    pub deltas: Vec<CallDelta>,
    /// At the end, the calls when the whole output was a call list.
    pub calls: Option<Vec<ToolCall>>,
}

/// A piece of call `index`: its name on its first piece, then more of its arguments' JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct CallDelta {
    pub index: usize,
    pub name: Option<String>,
    pub arguments: String,
}

impl HeldCalls {
    pub fn new(output: ToolOutput) -> Self {
        Self { output, held: (output != ToolOutput::Text).then(String::new), sent: Vec::new() }
    }

    /// Takes the choice's next `text` (`last`: its end).
    pub fn feed(&mut self, text: String, last: bool) -> Fed {
        let Some(held) = &mut self.held else { return Fed { text, ..Fed::default() } };
        held.push_str(&text);
        let start = held.trim_start();
        if start.starts_with('[') {
            let deltas = self.call_deltas();
            let held = self.held.as_deref().expect("held");
            let calls = if last { parse_tool_calls(held) } else { None };
            // A list cut short ends as text, as the model wrote it.
            let text = if last && calls.is_none() { self.held.take().expect("held") } else { String::new() };
            return Fed { text, deltas, calls };
        }
        let is_text = self.output == ToolOutput::MaybeCalls && !start.is_empty();
        if !last && !is_text {
            return Fed::default();
        }
        Fed { text: self.held.take().expect("held"), ..Fed::default() }
    }

    /// The pieces of the calls written since the last ones sent.
    fn call_deltas(&mut self) -> Vec<CallDelta> {
        let written = partial_calls(self.held.as_deref().unwrap_or_default());
        let mut deltas = Vec::new();
        for (index, call) in written.into_iter().enumerate() {
            let Some(name) = call.name.clone() else { break };
            match self.sent.get_mut(index) {
                None => {
                    deltas.push(CallDelta { index, name: Some(name), arguments: call.arguments.clone() });
                    self.sent.push(call);
                }
                Some(sent) if call.arguments.len() > sent.arguments.len() => {
                    deltas.push(CallDelta { index, name: None, arguments: call.arguments[sent.arguments.len()..].to_owned() });
                    sent.arguments = call.arguments;
                }
                Some(_) => {}
            }
        }
        deltas
    }
}

/// A call as far as it is written: its name once complete, its arguments' JSON so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartialCall {
    pub name: Option<String>,
    pub arguments: String,
}

/// The calls of a call list being written, `[{"name": …, "arguments": {…}}, …]` as the call
/// grammar has the model write it: scanned as JSON text, strings and nesting tracked.
pub fn partial_calls(text: &str) -> Vec<PartialCall> {
    let mut calls: Vec<PartialCall> = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut string_start = 0;
    // Inside a call object: the key last read, whether its value comes next, and where the
    // arguments' value started.
    let mut key = String::new();
    let mut value_next = false;
    let mut arguments_at: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                if depth == 2 && arguments_at.is_none() {
                    let string: String = serde_json::from_str(&text[string_start..=i]).unwrap_or_default();
                    if !value_next {
                        key = string;
                    } else {
                        if let Some(call) = calls.last_mut().filter(|_| key == "name") {
                            call.name = Some(string);
                        }
                        value_next = false;
                    }
                }
            }
            continue;
        }
        if depth == 2 && value_next && key == "arguments" && arguments_at.is_none() && !c.is_whitespace() {
            arguments_at = Some(i);
        }
        match c {
            '"' => {
                in_string = true;
                string_start = i;
            }
            '{' | '[' => {
                depth += 1;
                if c == '{' && depth == 2 {
                    calls.push(PartialCall::default());
                    (key, value_next) = (String::new(), false);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                if let (Some(at), 2) = (arguments_at, depth) {
                    if let Some(call) = calls.last_mut() {
                        call.arguments = text[at..=i].to_owned();
                    }
                    arguments_at = None;
                    value_next = false;
                }
            }
            ':' if depth == 2 => value_next = true,
            ',' if depth == 2 => value_next = false,
            _ => {}
        }
    }
    if let (Some(at), Some(call)) = (arguments_at, calls.last_mut()) {
        call.arguments = text[at..].to_owned();
    }
    calls
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_read_as_they_are_written() {
        let list = r#"[{"name": "get_weather", "arguments": {"city": "Pa\"ris", "days": [1, {"x": "}"}]}}, {"name": "get_time", "arguments": {}}]"#;
        let whole = partial_calls(list);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].name.as_deref(), Some("get_weather"));
        assert_eq!(whole[0].arguments, r#"{"city": "Pa\"ris", "days": [1, {"x": "}"}]}"#);
        assert_eq!((whole[1].name.as_deref(), whole[1].arguments.as_str()), (Some("get_time"), "{}"));
        // Cut anywhere, what is read is a prefix of the whole.
        for (cut, _) in list.char_indices() {
            for (part, full) in partial_calls(&list[..cut]).iter().zip(&whole) {
                assert!(full.arguments.starts_with(&part.arguments), "{cut}: {part:?}");
                assert!(part.name.is_none() || part.name == full.name, "{cut}: {part:?}");
            }
        }
        assert_eq!(partial_calls(r#"[{"name": "get_w"#), vec![PartialCall::default()]);
    }

    #[test]
    fn held_calls_stream_their_arguments_and_end_as_calls() {
        let mut held = HeldCalls::new(ToolOutput::MaybeCalls);
        let pieces = [r#" [{"name": "get_"#, r#"weather", "argu"#, r#"ments": {"city"#, r#"": "Oslo"}}"#, "]"];
        let mut deltas = Vec::new();
        for piece in pieces {
            let fed = held.feed(piece.into(), false);
            assert!(fed.text.is_empty() && fed.calls.is_none(), "{fed:?}");
            deltas.extend(fed.deltas);
        }
        let end = held.feed(String::new(), true);
        assert_eq!(end.calls, Some(vec![ToolCall { name: "get_weather".into(), arguments: r#"{"city":"Oslo"}"#.into() }]));
        assert_eq!(deltas[0], CallDelta { index: 0, name: Some("get_weather".into()), arguments: String::new() });
        let arguments: String = deltas.iter().map(|d| d.arguments.as_str()).collect();
        assert_eq!(arguments, r#"{"city": "Oslo"}"#);
        assert!(deltas.len() >= 3 && deltas[1..].iter().all(|d| d.name.is_none()), "{deltas:?}");

        // A list cut short ends as its text; text that cannot be a list goes out at once.
        let mut cut = HeldCalls::new(ToolOutput::Calls);
        cut.feed(r#"[{"name": "get_weather", "arguments": {"#.into(), false);
        assert_eq!(cut.feed(String::new(), true).text, r#"[{"name": "get_weather", "arguments": {"#);
        let mut text = HeldCalls::new(ToolOutput::MaybeCalls);
        assert_eq!(text.feed("Sunny".into(), false).text, "Sunny");
    }
}
