//! Tools in each family's own format: the chat templates render a conversation with tools
//! as `transformers` does (`tool_templates.json`, made by Python's jinja2 in
//! `scripts/make_family_fixtures.py tool_templates`), the format is read from what each
//! renders, and a tiny model with each family's template is held to that format and its
//! calls read back, whole and streamed, through a round trip.

use cinder_engine::openai::ToolFormat;
use cinder_gguf::{GgufFile, GgufWriter, MetadataValue};
use cinder_model::tiny::TinyModel;
use cinder_tokenizer::{ChatMessage, ChatTemplate};
use serde_json::{Value, json};

use crate::serve::Server;

/// Each template's format, as the registry reads it from the template's render.
const FORMATS: [(&str, ToolFormat); 6] = [
    ("Qwen-Qwen2.5-7B-Instruct.jinja", ToolFormat::Hermes),
    ("Qwen-Qwen3-0.6B.jinja", ToolFormat::Hermes),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", ToolFormat::Llama3),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", ToolFormat::Mistral),
    ("microsoft-Phi-3.5-mini-instruct.jinja", ToolFormat::JsonList),
    ("google-gemma-2-2b-it.jinja", ToolFormat::JsonList),
];

fn template_source(name: &str) -> String {
    std::fs::read_to_string(crate::installed(&format!("vocab/templates/{name}"))).unwrap()
}

#[test]
fn family_templates_render_tools_as_transformers_does() {
    let fixture = crate::fixture("tool_templates.json");
    let tools = &fixture["tools"];
    let mut failures = Vec::new();
    for (name, format) in FORMATS {
        let case = &fixture["templates"][name];
        assert!(case.is_object(), "no reference for {name}: run scripts/make_family_fixtures.py tool_templates");
        let template = ChatTemplate::new(&template_source(name), case["bos_token"].as_str().unwrap(), case["eos_token"].as_str().unwrap()).unwrap();
        assert_eq!(ToolFormat::of(Some(&template)), format, "{name}");
        for (key, expected) in case["renders"].as_object().unwrap() {
            let (conversation, with) = key.split_once('/').unwrap();
            let messages: Vec<ChatMessage> = serde_json::from_value(fixture["conversations"][conversation].clone()).unwrap();
            let rendered = template.render_with_tools(&messages, (with == "tools").then_some(tools), true);
            match (rendered, expected["text"].as_str(), expected["error"].as_str()) {
                (Ok(text), Some(python), _) if text == python => {}
                (Err(e), _, Some(python)) if e.to_string().contains(python) => {}
                (got, _, _) => failures.push(format!("{name} {key}: cinder {got:?}, jinja2 {expected}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The tiny model with `template` as its chat template.
fn tiny_with_template(dir: &std::path::Path, name: &str, template: &str) -> std::path::PathBuf {
    // Room for a family's tool prompt in byte-sized tokens.
    let file = GgufFile::from_bytes(TinyModel { context_length: 4096, ..TinyModel::default() }.to_gguf()).unwrap();
    let mut writer = GgufWriter::from_file(&file);
    writer.set_metadata("tokenizer.chat_template", MetadataValue::String(template.into()));
    let path = dir.join(format!("{name}.gguf"));
    writer.write(&path).unwrap();
    path
}

/// A tiny model under each family's template: the prompt lists the tools as the template
/// writes them (or, for templates without tools, in a system message, or the first user
/// message where the template has no system role: Gemma's), the call comes in the family's
/// format (held to it by the grammar) and back as OpenAI `tool_calls`, whole and streamed;
/// the call and its result go back through a tool-taking template in a second turn.
#[test]
fn a_tiny_model_calls_in_its_familys_format() {
    let dir = crate::scratch_dir("tool-formats");
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "The weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}}, "required": ["city"], "additionalProperties": false}}},
    ]);
    for (name, format) in FORMATS {
        let path = tiny_with_template(&dir, name, &template_source(name));
        let server = Server::start(&path, &[]);
        let user = json!({"role": "user", "content": "What's the weather in Paris?"});
        let body = json!({"messages": [user], "tools": tools, "tool_choice": "required", "parallel_tool_calls": false, "max_tokens": 200, "seed": 3, "temperature": 1, "return_token_ids": true});
        let answer = server.post("/v1/chat/completions", &body.to_string());
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
        let answer = answer.json();
        let choice = &answer["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{name}: {answer}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather", "{name}: {answer}");
        let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(["Paris", "Oslo"].contains(&arguments["city"].as_str().unwrap()), "{name}: {answer}");
        // The prompt is the template's, with the tools listed as it lists them.
        let prompt = server.post("/detokenize", &json!({"tokens": answer["prompt_token_ids"]}).to_string()).json();
        let prompt = prompt["content"].as_str().unwrap();
        assert!(prompt.contains("get_weather"), "{name}: {prompt}");
        let marker = match format {
            ToolFormat::Hermes => "<tools>",
            ToolFormat::Llama3 => "Given the following functions",
            ToolFormat::Mistral => "[AVAILABLE_TOOLS]",
            ToolFormat::JsonList => "You can call these functions",
        };
        assert!(prompt.contains(marker), "{name}: {prompt}");

        // Streamed: the call's name, then its arguments in pieces that add up to the call.
        let mut streaming = body.clone();
        streaming["stream"] = json!(true);
        let stream = server.post("/v1/chat/completions", &streaming.to_string());
        let mut streamed = String::new();
        let mut names = Vec::new();
        for line in stream.body.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|l| *l != "[DONE]") {
            let chunk: Value = serde_json::from_str(line).unwrap();
            for piece in chunk["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
                names.extend(piece["function"]["name"].as_str().map(str::to_owned));
                streamed.push_str(piece["function"]["arguments"].as_str().unwrap_or_default());
            }
        }
        assert_eq!(names, ["get_weather"], "{name}: {}", stream.body);
        assert_eq!(serde_json::from_str::<Value>(&streamed).unwrap(), arguments, "{name}: the same seed streams the same call");

        if !format.in_template() {
            continue;
        }
        // The call and its result go back through the template.
        let turn = json!({"messages": [user, choice["message"], {"role": "tool", "tool_call_id": call["id"], "content": "{\"temperature\": 21}"}], "tools": tools, "max_tokens": 4});
        let second = server.post("/v1/chat/completions", &turn.to_string());
        assert_eq!(second.status, 200, "{name}: {}", second.body);
    }
}
