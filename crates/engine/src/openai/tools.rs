//! Tool calls: how each model family writes them ([`ToolFormat`], read from what its chat
//! template renders), the system message that lists the tools where the template does not,
//! the grammar of the calls, and reading calls back from a choice's output, whole or as it
//! streams.

use cinder_tokenizer::{ChatTemplate, Tokenizer};
use serde::Deserialize;

use super::Tool;

/// How a choice's output is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolOutput {
    /// Text (or JSON text, under `response_format`).
    Text,
    /// Calls when the output is calls in this format, else text (`tool_choice` auto).
    MaybeCalls(ToolFormat),
    /// Always calls in this format (`required` or a named function).
    Calls(ToolFormat),
}

impl ToolOutput {
    /// The calls of a choice's whole output, when it may make some and did.
    pub fn calls(self, output: &str) -> Option<Vec<ToolCall>> {
        match self {
            ToolOutput::Text => None,
            ToolOutput::MaybeCalls(format) | ToolOutput::Calls(format) => format.parse(output),
        }
    }
}

/// How a model writes its calls: in its family's own format where its chat template takes
/// `tools` (the template lists them and the model was trained to answer so), else as
/// cinder's JSON list, described in a system message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `[{"name": …, "arguments": {…}}, …]`.
    JsonList,
    /// Qwen 2.5 and 3 (Hermes): `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>` per call.
    Hermes,
    /// Llama 3.1 and later: one `{"name": …, "parameters": {…}}`.
    Llama3,
    /// Mistral: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`.
    Mistral,
}

/// The registry of formats: what a family's template writes when it lists a tool, and the
/// format its models call in. A template that takes tools in none of these ways gets the
/// JSON list and the system message.
const FORMATS: [(&str, ToolFormat); 3] = [
    ("<tool_call>", ToolFormat::Hermes),
    ("\"parameters\": dictionary", ToolFormat::Llama3),
    ("[AVAILABLE_TOOLS]", ToolFormat::Mistral),
];

/// A choice's output so far, read as calls.
enum Reading {
    /// It may still become calls or text.
    Undecided,
    Text,
    /// Calls, as the JSON list [`partial_calls`] reads.
    Calls(String),
}

impl ToolFormat {
    /// The format `template`'s models call in.
    pub fn of(template: Option<&ChatTemplate>) -> Self {
        let Some(probe) = template.and_then(ChatTemplate::tools_probe) else { return Self::JsonList };
        FORMATS.iter().find(|(marker, _)| probe.contains(marker)).map_or(Self::JsonList, |&(_, format)| format)
    }

    /// Whether the tools go to the chat template (else to a system message).
    pub fn in_template(self) -> bool {
        self != Self::JsonList
    }

    /// The text that opens a call, and the one that closes it, where the format has them.
    fn markers(self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::JsonList => ("[", None),
            Self::Hermes => ("<tool_call>", Some("</tool_call>")),
            Self::Llama3 => ("{", None),
            Self::Mistral => ("[TOOL_CALLS]", None),
        }
    }

    fn read(self, held: &str) -> Reading {
        let (open, _) = self.markers();
        let start = held.trim_start();
        if start.len() < open.len() && open.starts_with(start) {
            return Reading::Undecided;
        }
        let Some(rest) = start.strip_prefix(open) else { return Reading::Text };
        Reading::Calls(match self {
            Self::JsonList => start.to_owned(),
            Self::Hermes => {
                let close = self.markers().1.expect("Hermes closes its calls");
                let calls: Vec<&str> = start.split(open).skip(1).map(|call| call.split(close).next().unwrap_or_default().trim()).collect();
                format!("[{}", calls.join(", "))
            }
            // The grammar writes the name first: the first `"parameters":` is the call's.
            Self::Llama3 => format!("[{}", start.replacen("\"parameters\":", "\"arguments\":", 1)),
            Self::Mistral => rest.to_owned(),
        })
    }

    /// The calls in a choice's whole output; `None` if it is not calls in this format
    /// (text, or cut short).
    pub fn parse(self, output: &str) -> Option<Vec<ToolCall>> {
        let output = output.trim();
        match self {
            Self::JsonList => parse_tool_calls(output),
            Self::Mistral => parse_tool_calls(output.strip_prefix(self.markers().0)?),
            Self::Llama3 => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Written {
                    name: String,
                    parameters: serde_json::Value,
                }
                let call: Written = serde_json::from_str(output).ok()?;
                Some(vec![ToolCall { name: call.name, arguments: call.parameters.to_string() }])
            }
            Self::Hermes => {
                let (open, close) = (self.markers().0, self.markers().1.expect("Hermes closes its calls"));
                let mut calls = Vec::new();
                let mut rest = output;
                while !rest.is_empty() {
                    let (call, after) = rest.strip_prefix(open)?.split_once(close)?;
                    calls.extend(parse_tool_calls(&format!("[{}]", call.trim()))?);
                    rest = after.trim_start();
                }
                (!calls.is_empty()).then_some(calls)
            }
        }
    }

    /// The grammar of `tools`' calls in this format (Lark, llguidance's dialect): calls only
    /// when `required`, else text that does not start a call, or calls; at most one call
    /// when `one`. A marker the vocabulary has as a control token is that token.
    pub(super) fn grammar(self, tools: &[&Tool], required: bool, one: bool, tokenizer: &Tokenizer) -> String {
        let marker = |text: &str| match tokenizer.hf().token_to_id(text).filter(|&id| tokenizer.is_special(id)) {
            Some(id) => format!("<[{id}]>"),
            None => serde_json::Value::from(text).to_string(),
        };
        let (open, close) = self.markers();
        let calls = match self {
            Self::JsonList => format!("%json {}", call_list_schema(tools, one)),
            Self::Mistral => format!("{} %json {}", marker(open), call_list_schema(tools, one)),
            Self::Llama3 => format!("%json {}", crate::json_layout(call_schema(tools, "parameters"))),
            Self::Hermes => {
                let close = close.expect("Hermes closes its calls");
                let call = format!("{} \"\\n\" %json {} \"\\n\" {}", marker(open), crate::json_layout(call_schema(tools, "arguments")), marker(close));
                if one { call } else { format!("({call}) (\"\\n\" {call})*") }
            }
        };
        // Text may not begin with what begins a call.
        let first = open.chars().next().expect("a marker");
        let text = format!("TEXT: /[^{}](.|\\n)*/", regex_escape(first));
        if required { format!("start: calls\ncalls: {calls}\n") } else { format!("start: TEXT | calls\n{text}\ncalls: {calls}\n") }
    }

    /// A call id as the template takes it: Mistral's are 9 letters and digits (the last 9
    /// of the id's, padded with zeros); the others' as given.
    pub fn call_id(self, id: &str) -> String {
        if self != Self::Mistral {
            return id.to_owned();
        }
        let alphanumeric: Vec<char> = id.chars().filter(char::is_ascii_alphanumeric).collect();
        let last: String = alphanumeric[alphanumeric.len().saturating_sub(9)..].iter().collect();
        format!("{last:0>9}")
    }
}

/// `c` as a regex character-class member.
fn regex_escape(c: char) -> String {
    if "[]\\^-".contains(c) { format!("\\{c}") } else { c.to_string() }
}

/// A choice's streamed output while it may still be calls: its text is held back until it
/// cannot be (under `tool_choice` auto, once it starts with anything but what starts a call
/// in its format). Once it is calls (the grammar makes calls of whatever starts so), each
/// call goes out as it is written: its name once complete, then its arguments piece by
/// piece; at the end, whole calls are read as calls.
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
        let (ToolOutput::MaybeCalls(format) | ToolOutput::Calls(format)) = self.output else { unreachable!("text is never held") };
        match format.read(held) {
            Reading::Calls(list) => {
                let deltas = self.call_deltas(&list);
                let calls = if last { format.parse(self.held.as_deref().expect("held")) } else { None };
                // Calls cut short end as text, as the model wrote them.
                let text = if last && calls.is_none() { self.held.take().expect("held") } else { String::new() };
                Fed { text, deltas, calls }
            }
            Reading::Text if matches!(self.output, ToolOutput::MaybeCalls(_)) => Fed { text: self.held.take().expect("held"), ..Fed::default() },
            _ if last => Fed { text: self.held.take().expect("held"), ..Fed::default() },
            _ => Fed::default(),
        }
    }

    /// The pieces of the calls written since the last ones sent, `list` the calls so far
    /// as a JSON list.
    fn call_deltas(&mut self, list: &str) -> Vec<CallDelta> {
        let written = partial_calls(list);
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

/// The JSON schema of one call of the given tools: `{"name", ARGUMENTS}` with the tool's
/// argument schema under the key `arguments` names.
fn call_schema(tools: &[&Tool], arguments: &str) -> serde_json::Value {
    let calls: Vec<serde_json::Value> = tools
        .iter()
        .map(|t| {
            let schema = t.function.parameters.clone().unwrap_or_else(|| serde_json::json!({"type": "object"}));
            let mut properties = serde_json::Map::new();
            properties.insert("name".into(), serde_json::json!({"const": t.function.name}));
            properties.insert(arguments.into(), schema);
            serde_json::json!({
                "type": "object",
                "properties": properties,
                "required": ["name", arguments],
                "additionalProperties": false,
            })
        })
        .collect();
    serde_json::json!({"anyOf": calls})
}

/// The JSON schema of a call list: calls of the given tools, each `{"name", "arguments"}`
/// with the tool's argument schema; at least one, at most one if `one`; laid out on one line.
pub(super) fn call_list_schema(tools: &[&Tool], one: bool) -> serde_json::Value {
    let mut schema = serde_json::json!({"type": "array", "items": call_schema(tools, "arguments"), "minItems": 1});
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
        let mut held = HeldCalls::new(ToolOutput::MaybeCalls(ToolFormat::JsonList));
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
        let mut cut = HeldCalls::new(ToolOutput::Calls(ToolFormat::JsonList));
        cut.feed(r#"[{"name": "get_weather", "arguments": {"#.into(), false);
        assert_eq!(cut.feed(String::new(), true).text, r#"[{"name": "get_weather", "arguments": {"#);
        let mut text = HeldCalls::new(ToolOutput::MaybeCalls(ToolFormat::JsonList));
        assert_eq!(text.feed("Sunny".into(), false).text, "Sunny");
    }

    #[test]
    fn each_format_is_read_back_whole_and_as_it_streams() {
        let weather = ToolCall { name: "get_weather".into(), arguments: r#"{"city":"Oslo"}"#.into() };
        let time = ToolCall { name: "get_time".into(), arguments: "{}".into() };
        let outputs = [
            (ToolFormat::Hermes, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>", vec![weather.clone(), time.clone()]),
            (ToolFormat::Llama3, r#"{"name": "get_weather", "parameters": {"city": "Oslo"}}"#, vec![weather.clone()]),
            (ToolFormat::Mistral, r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": {}}]"#, vec![weather.clone(), time.clone()]),
        ];
        for (format, output, calls) in outputs {
            assert_eq!(format.parse(output).as_ref(), Some(&calls), "{format:?}");
            assert_eq!(ToolFormat::JsonList.parse(output), None, "{format:?}");
            // Streamed a character at a time: held back, each call's name once, its
            // arguments in pieces adding up to what was written.
            let mut held = HeldCalls::new(ToolOutput::MaybeCalls(format));
            let mut deltas = Vec::new();
            for c in output.chars() {
                let fed = held.feed(c.to_string(), false);
                assert!(fed.text.is_empty(), "{format:?}: {fed:?}");
                deltas.extend(fed.deltas);
            }
            assert_eq!(held.feed(String::new(), true).calls, Some(calls.clone()), "{format:?}");
            for (index, call) in calls.iter().enumerate() {
                let pieces: Vec<&CallDelta> = deltas.iter().filter(|d| d.index == index).collect();
                assert_eq!(pieces[0].name.as_deref(), Some(call.name.as_str()), "{format:?}");
                let arguments: String = pieces.iter().map(|d| d.arguments.as_str()).collect();
                let written: serde_json::Value = serde_json::from_str(&arguments).unwrap();
                assert_eq!(written.to_string(), call.arguments, "{format:?}");
            }
            // Text is text: it goes out as soon as it cannot start a call.
            let mut text = HeldCalls::new(ToolOutput::MaybeCalls(format));
            assert_eq!(text.feed("Sunny".into(), false).text, "Sunny", "{format:?}");
        }
        let mut partial = HeldCalls::new(ToolOutput::MaybeCalls(ToolFormat::Hermes));
        assert_eq!(partial.feed("<tool".into(), false), Fed::default(), "a call's start is held");
        assert_eq!(partial.feed(String::new(), true).text, "<tool");
        assert_eq!(ToolFormat::Hermes.parse("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {"), None, "cut short");
    }

    #[test]
    fn mistral_call_ids_are_nine_letters_and_digits() {
        assert_eq!(ToolFormat::Mistral.call_id("call_0123456789abcdef"), "789abcdef");
        assert_eq!(ToolFormat::Mistral.call_id("toolu_ab"), "00tooluab");
        assert_eq!(ToolFormat::Hermes.call_id("call_1"), "call_1");
    }
}
