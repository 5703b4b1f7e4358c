//! OpenAI's Responses API (`/v1/responses`): wire shapes and their typed translation to and from OpenAI chat
//! completions, which every engine speaks. Pure: no I/O, no clock; ids and times are given.
//!
//! Request: `input` (a string, or items: messages with `input_text`/`output_text` parts, `function_call` and
//! `function_call_output`) is first made [`Item`]s with ids, the form a response keeps them in; a conversation
//! (the items of `previous_response_id`'s chain, then these) becomes chat messages: `instructions` first as the
//! system message, `system`/`developer` messages as system messages, `function_call` items as the `tool_calls` of
//! the assistant turn they follow, `function_call_output` as `role: "tool"` messages. Function tools (Responses'
//! flat shape) become chat tools; `tool_choice` passes over; `text.format` json_schema → `response_format`
//! json_schema, json_object → json_object; `max_output_tokens` → `max_tokens`.
//! Answer: the message's text → a `message` item with one `output_text` part; tool calls → `function_call` items;
//! `finish_reason` length → status `incomplete` (`incomplete_details.reason: "max_output_tokens"`).
//! Streams are translated event by event ([`StreamTranslator`]): `response.created`, `response.in_progress`, per
//! item `response.output_item.added` … `response.output_item.done` (text parts with `content_part.added`,
//! `output_text.delta`, `output_text.done`, `content_part.done`; function calls with
//! `function_call_arguments.delta`/`.done`), then `response.completed` or `response.incomplete`, or
//! `response.failed` when the engine fails mid-way; every event has its `sequence_number`.
//! Chain-of-thought (`reasoning_content`) is not carried: no `reasoning` items are made.

use std::collections::BTreeMap;

use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openai::{
    ChatMessage, ChatRequest, ChatResponse, FunctionCall, FunctionDef, ImageUrl, JsonSchema,
    MessageContent, NamedFunction, Part, ResponseFormat, SseDecoder, StreamOptions, Tool, ToolCall,
    ToolCallOut, ToolChoice, Usage,
};
use super::StreamTranslate;

// ---- requests ----

/// `POST /v1/responses`. Fields we do not know (`reasoning`, `include`, `truncation`, …) are ignored.
#[derive(Debug, Deserialize)]
pub struct ResponsesIn {
    #[serde(default)]
    pub model: String,
    pub input: Option<Input>,
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Vec<ToolIn>,
    pub tool_choice: Option<ToolChoiceIn>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<TextConfig>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stream: Option<bool>,
    /// Default true: the response is kept for `GET`, `input_items` and `previous_response_id`.
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub user: Option<String>,
    /// Run in the background and poll: not offered (a local engine answers while the caller waits).
    pub background: Option<bool>,
}

/// A string (one user message) or a list of items.
#[derive(Debug)]
pub enum Input {
    Text(String),
    Items(Vec<ItemIn>),
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Input::Text(s)),
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    ItemIn::from_value(v).map_err(|e| D::Error::custom(format!("input[{i}]: {e}")))
                })
                .collect::<Result<_, _>>()
                .map(Input::Items),
            _ => Err(D::Error::custom(
                "input: expected a string or a list of items",
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    System,
    Developer,
}

/// One input item. A message may leave out `"type": "message"` (the SDK's "easy input message").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ItemIn {
    Message {
        role: Role,
        content: ContentIn,
    },
    FunctionCall {
        call_id: String,
        name: String,
        #[serde(default)]
        arguments: String,
    },
    FunctionCallOutput {
        call_id: String,
        output: ToolOutput,
    },
    /// Reasoning items a client sends back; local chat templates have no slot for them.
    Reasoning {},
}

impl ItemIn {
    fn from_value(mut v: Value) -> Result<ItemIn, serde_json::Error> {
        if let Value::Object(map) = &mut v {
            map.entry("type")
                .or_insert_with(|| Value::String("message".into()));
        }
        serde_json::from_value(v)
    }
}

/// A message's content: a string, or parts.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentIn {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl<'de> Deserialize<'de> for ContentIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(ContentIn::Text(s)),
            v @ Value::Array(_) => serde_json::from_value(v)
                .map(ContentIn::Parts)
                .map_err(D::Error::custom),
            _ => Err(D::Error::custom(
                "content: expected a string or a list of content parts",
            )),
        }
    }
}

/// A `function_call_output`'s output: text, or a list of parts (their text is joined).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput(pub String);

impl<'de> Deserialize<'de> for ToolOutput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(ToolOutput(s)),
            v @ Value::Array(_) => {
                let parts: Vec<ContentPart> =
                    serde_json::from_value(v).map_err(D::Error::custom)?;
                parts
                    .iter()
                    .map(|p| match p {
                        ContentPart::InputText { text } | ContentPart::OutputText { text } => {
                            Ok(text.as_str())
                        }
                        _ => Err(D::Error::custom("output: only text parts are supported")),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(|t| ToolOutput(t.join("\n")))
            }
            _ => Err(D::Error::custom(
                "output: expected a string or a list of parts",
            )),
        }
    }
}

/// A content part, in or out. Fields we do not use (`annotations`, `logprobs`, `detail`) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    InputText {
        text: String,
    },
    OutputText {
        text: String,
    },
    Refusal {
        refusal: String,
    },
    InputImage {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image_url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_id: Option<String>,
    },
    InputFile {},
}

/// A function tool, in Responses' flat shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolIn {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `"auto" | "none" | "required"`, or `{"type": "function", "name": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoiceIn {
    Mode(String),
    Function {
        #[serde(rename = "type")]
        kind: String,
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    #[serde(default)]
    pub format: TextFormat,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TextFormat {
    #[default]
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

// ---- items as a response keeps them (input and output alike) ----

/// An item with its id, as `output`, `GET …/input_items` and a chain's history hold it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    Message {
        id: String,
        status: Status,
        role: Role,
        content: Vec<PartOut>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        status: Status,
    },
    FunctionCallOutput {
        id: String,
        call_id: String,
        output: String,
        status: Status,
    },
}

impl Item {
    pub fn id(&self) -> &str {
        match self {
            Item::Message { id, .. }
            | Item::FunctionCall { id, .. }
            | Item::FunctionCallOutput { id, .. } => id,
        }
    }
}

/// A content part of a kept message: `output_text` carries `annotations` (and `logprobs`), as the SDK expects.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PartOut {
    InputText {
        text: String,
    },
    OutputText {
        text: String,
        annotations: Vec<Value>,
        logprobs: Vec<Value>,
    },
    Refusal {
        refusal: String,
    },
    InputImage {
        #[serde(skip_serializing_if = "Option::is_none")]
        image_url: Option<String>,
        detail: &'static str,
    },
}

impl PartOut {
    pub fn output_text(text: impl Into<String>) -> PartOut {
        PartOut::OutputText {
            text: text.into(),
            annotations: Vec::new(),
            logprobs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Completed,
    Incomplete,
    InProgress,
    Failed,
}

impl ResponsesIn {
    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn storing(&self) -> bool {
        self.store.unwrap_or(true)
    }

    /// What the request alone gets wrong (before any store or engine is asked), as a 400's message.
    pub fn check(&self) -> Result<(), String> {
        if self.model.is_empty() {
            return Err("model: field required".into());
        }
        if self.background == Some(true) {
            return Err(
                "background: background responses are not supported; omit it or set it to false"
                    .into(),
            );
        }
        // OpenAI's limits on `metadata`: it is kept and echoed, so it is bounded as OpenAI bounds it.
        if let Some(metadata) = &self.metadata {
            if metadata.len() > 16 {
                return Err(format!(
                    "metadata: at most 16 pairs, got {}",
                    metadata.len()
                ));
            }
            if let Some((k, _)) = metadata
                .iter()
                .find(|(k, v)| k.chars().count() > 64 || v.chars().count() > 512)
            {
                return Err(format!(
                    "metadata: keys are at most 64 characters and values at most 512 ({k:?})"
                ));
            }
        }
        if let Some(n) = self.max_output_tokens.filter(|n| *n < 1) {
            return Err(format!("max_output_tokens: must be at least 1, got {n}"));
        }
        match &self.input {
            None => Err("input: field required".into()),
            Some(Input::Items(items)) if items.is_empty() => {
                Err("input: at least one item is required".into())
            }
            _ => Ok(()),
        }
    }

    /// The input as kept items, their ids made from `id` (the response's own): `msg_…_in0`, `fc_…_in1`, ….
    pub fn items(&self, id: &str) -> Result<Vec<Item>, String> {
        let tail = id_tail(id);
        let items = match &self.input {
            None => return Ok(Vec::new()),
            Some(Input::Text(text)) => {
                return Ok(vec![Item::Message {
                    id: format!("msg_{tail}_in0"),
                    status: Status::Completed,
                    role: Role::User,
                    content: vec![PartOut::InputText { text: text.clone() }],
                }])
            }
            Some(Input::Items(items)) => items,
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item = match item {
                ItemIn::Message { role, content } => Item::Message {
                    id: format!("msg_{tail}_in{i}"),
                    status: Status::Completed,
                    role: *role,
                    content: parts_out(*role, content).map_err(|e| format!("input[{i}]: {e}"))?,
                },
                ItemIn::FunctionCall {
                    call_id,
                    name,
                    arguments,
                } => Item::FunctionCall {
                    id: format!("fc_{tail}_in{i}"),
                    call_id: call_id.clone(),
                    name: name.clone(),
                    arguments: arguments.clone(),
                    status: Status::Completed,
                },
                ItemIn::FunctionCallOutput { call_id, output } => Item::FunctionCallOutput {
                    id: format!("fco_{tail}_in{i}"),
                    call_id: call_id.clone(),
                    output: output.0.clone(),
                    status: Status::Completed,
                },
                ItemIn::Reasoning {} => continue,
            };
            out.push(item);
        }
        Ok(out)
    }

    /// The chat request for `conversation` (the chain's earlier items, then this request's), or a 400's message.
    pub fn to_chat(&self, conversation: &[Item]) -> Result<ChatRequest, String> {
        let mut messages = Vec::new();
        if let Some(instructions) = self.instructions.as_deref().filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::text("system", instructions));
        }
        messages.extend(to_messages(conversation));
        if messages.is_empty() {
            return Err("input: nothing to answer".into());
        }
        let tools = self
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| convert_tool(t).map_err(|e| format!("tools[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let tool_choice = match &self.tool_choice {
            None => None,
            Some(c) => Some(convert_tool_choice(c, &tools)?),
        };
        let stream = self.streaming();
        Ok(ChatRequest {
            model: self.model.clone(),
            messages,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_output_tokens,
            tool_choice: tool_choice.filter(|_| !tools.is_empty()),
            parallel_tool_calls: self.parallel_tool_calls.filter(|_| !tools.is_empty()),
            tools,
            response_format: self.text.as_ref().and_then(|t| response_format(&t.format)),
            user: self.user.clone(),
            ..ChatRequest::default()
        })
    }

    /// The response as it begins (`in_progress`, no output): what `response.created` carries and what the answer
    /// fills in. `model` is the name the model was resolved to.
    pub fn skeleton(&self, id: &str, created_at: i64, model: &str) -> ResponseObject {
        ResponseObject {
            id: id.to_string(),
            object: "response",
            created_at,
            status: Status::InProgress,
            error: None,
            incomplete_details: None,
            instructions: self.instructions.clone(),
            max_output_tokens: self.max_output_tokens,
            model: model.to_string(),
            output: Vec::new(),
            parallel_tool_calls: self.parallel_tool_calls.unwrap_or(true),
            previous_response_id: self.previous_response_id.clone(),
            temperature: self.temperature,
            top_p: self.top_p,
            tool_choice: self
                .tool_choice
                .clone()
                .unwrap_or_else(|| ToolChoiceIn::Mode("auto".into())),
            tools: self.tools.clone(),
            text: TextConfig {
                format: self
                    .text
                    .as_ref()
                    .map(|t| t.format.clone())
                    .unwrap_or_default(),
            },
            usage: None,
            metadata: self.metadata.clone().unwrap_or_default(),
            store: self.storing(),
            user: self.user.clone(),
        }
    }
}

/// `resp_abc` → `abc` (item ids are made from it).
fn id_tail(id: &str) -> &str {
    id.strip_prefix("resp_").unwrap_or(id)
}

fn parts_out(role: Role, content: &ContentIn) -> Result<Vec<PartOut>, String> {
    let text_part = |text: String| match role {
        Role::Assistant => PartOut::output_text(text),
        _ => PartOut::InputText { text },
    };
    match content {
        ContentIn::Text(text) => Ok(vec![text_part(text.clone())]),
        ContentIn::Parts(parts) => parts
            .iter()
            .map(|p| match p {
                ContentPart::InputText { text } | ContentPart::OutputText { text } => Ok(text_part(text.clone())),
                ContentPart::Refusal { refusal } => Ok(PartOut::Refusal {
                    refusal: refusal.clone(),
                }),
                ContentPart::InputImage { image_url: Some(url), .. } if role != Role::Assistant => {
                    Ok(PartOut::InputImage {
                        image_url: Some(url.clone()),
                        detail: "auto",
                    })
                }
                ContentPart::InputImage { image_url: None, .. } => {
                    Err("input_image: only image_url is supported (no file_id: there are no uploaded files)".into())
                }
                ContentPart::InputImage { .. } => Err("input_image belongs in user messages".to_string()),
                ContentPart::InputFile {} => Err("input_file is not supported".into()),
            })
            .collect(),
    }
}

/// Kept items → chat messages. A `function_call` joins the assistant turn just before it (or starts one);
/// a `function_call_output` is a `tool` message.
pub fn to_messages(items: &[Item]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::new();
    for item in items {
        match item {
            Item::Message { role, content, .. } => {
                let mut parts = Vec::new();
                for p in content {
                    match p {
                        PartOut::InputText { text } | PartOut::OutputText { text, .. } => {
                            parts.push(Part::Text { text: text.clone() })
                        }
                        PartOut::Refusal { refusal } => parts.push(Part::Text {
                            text: refusal.clone(),
                        }),
                        PartOut::InputImage { image_url, .. } => parts.push(Part::ImageUrl {
                            image_url: ImageUrl {
                                url: image_url.clone().unwrap_or_default(),
                            },
                        }),
                    }
                }
                let role = match role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    Role::System | Role::Developer => "system",
                };
                out.push(ChatMessage {
                    role: role.into(),
                    content: Some(simplify(parts)),
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                });
            }
            Item::FunctionCall {
                call_id,
                name,
                arguments,
                ..
            } => {
                let call = ToolCall {
                    id: call_id.clone(),
                    kind: "function",
                    function: FunctionCall {
                        name: name.clone(),
                        arguments: if arguments.trim().is_empty() {
                            "{}".into()
                        } else {
                            arguments.clone()
                        },
                    },
                };
                match out.last_mut() {
                    Some(last) if last.role == "assistant" => last.tool_calls.push(call),
                    _ => out.push(ChatMessage {
                        role: "assistant".into(),
                        content: None,
                        tool_calls: vec![call],
                        tool_call_id: None,
                    }),
                }
            }
            Item::FunctionCallOutput {
                call_id, output, ..
            } => out.push(ChatMessage {
                role: "tool".into(),
                content: Some(MessageContent::Text(output.clone())),
                tool_calls: Vec::new(),
                tool_call_id: Some(call_id.clone()),
            }),
        }
    }
    out
}

/// Text parts only → one string; anything else stays a list of parts.
fn simplify(parts: Vec<Part>) -> MessageContent {
    let texts: Option<Vec<&str>> = parts
        .iter()
        .map(|p| match p {
            Part::Text { text } => Some(text.as_str()),
            Part::ImageUrl { .. } => None,
        })
        .collect();
    match texts {
        Some(t) => MessageContent::Text(t.join("\n")),
        None => MessageContent::Parts(parts),
    }
}

fn convert_tool(t: &ToolIn) -> Result<Tool, String> {
    if t.kind != "function" {
        return Err(format!(
            "tool type {:?} is not available on local models (only \"function\")",
            t.kind
        ));
    }
    let name = t
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("name: field required")?;
    Ok(Tool {
        kind: "function",
        function: FunctionDef {
            name,
            description: t.description.clone(),
            parameters: t
                .parameters
                .clone()
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
        },
    })
}

fn convert_tool_choice(c: &ToolChoiceIn, tools: &[Tool]) -> Result<ToolChoice, String> {
    match c {
        ToolChoiceIn::Mode(m) => match m.as_str() {
            "auto" => Ok(ToolChoice::Mode("auto")),
            "none" => Ok(ToolChoice::Mode("none")),
            "required" => Ok(ToolChoice::Mode("required")),
            other => Err(format!(
                "tool_choice: {other:?} is not one of \"auto\", \"none\", \"required\""
            )),
        },
        ToolChoiceIn::Function { kind, name } if kind == "function" => {
            if !tools.iter().any(|t| t.function.name == *name) {
                return Err(format!("tool_choice: no function named {name:?} in tools"));
            }
            Ok(ToolChoice::Function {
                kind: "function",
                function: NamedFunction { name: name.clone() },
            })
        }
        ToolChoiceIn::Function { kind, .. } => Err(format!(
            "tool_choice: type {kind:?} is not supported (only \"function\")"
        )),
    }
}

fn response_format(format: &TextFormat) -> Option<ResponseFormat> {
    match format {
        TextFormat::Text => None,
        TextFormat::JsonObject => Some(ResponseFormat::JsonObject),
        TextFormat::JsonSchema {
            name,
            schema,
            strict,
            ..
        } => Some(ResponseFormat::JsonSchema {
            json_schema: JsonSchema {
                name: name.clone(),
                schema: schema.clone(),
                strict: strict.unwrap_or(false),
            },
        }),
    }
}

// ---- answers ----

/// A response: what `POST` answers, `GET` returns and the stream's first and last events carry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: i64,
    pub status: Status,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub model: String,
    pub output: Vec<Item>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub tool_choice: ToolChoiceIn,
    pub tools: Vec<ToolIn>,
    pub text: TextConfig,
    pub usage: Option<UsageOut>,
    pub metadata: BTreeMap<String, String>,
    pub store: bool,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseError {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncompleteDetails {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct UsageOut {
    pub input_tokens: u64,
    pub input_tokens_details: InputDetails,
    pub output_tokens: u64,
    pub output_tokens_details: OutputDetails,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct InputDetails {
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct OutputDetails {
    pub reasoning_tokens: u64,
}

impl From<Usage> for UsageOut {
    /// OpenAI's Responses count cached prompt tokens inside `input_tokens`, as chat's `prompt_tokens` does.
    fn from(u: Usage) -> Self {
        UsageOut {
            input_tokens: u.prompt_tokens,
            input_tokens_details: InputDetails {
                cached_tokens: u.cached_tokens().min(u.prompt_tokens),
            },
            output_tokens: u.completion_tokens,
            output_tokens_details: OutputDetails::default(),
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// `DELETE /v1/responses/{id}`'s answer.
#[derive(Debug, Serialize)]
pub struct Deleted {
    pub id: String,
    pub object: &'static str,
    pub deleted: bool,
}

impl Deleted {
    pub fn new(id: &str) -> Deleted {
        Deleted {
            id: id.to_string(),
            object: "response.deleted",
            deleted: true,
        }
    }
}

/// `GET /v1/responses/{id}/input_items`' answer: a page of items.
#[derive(Debug, Serialize)]
pub struct ItemList<'a> {
    pub object: &'static str,
    pub data: Vec<&'a Item>,
    pub first_id: Option<&'a str>,
    pub last_id: Option<&'a str>,
    pub has_more: bool,
}

/// Which page of `input_items`: `order` (`desc`, OpenAI's default, or `asc`), `limit` (1–100, default 20) and
/// `after` (an item id: the page starts after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub ascending: bool,
    pub limit: usize,
    pub after: Option<String>,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            ascending: false,
            limit: 20,
            after: None,
        }
    }
}

impl Page {
    /// From the query's values (`order`, `limit`, `after`); a bad one is a 400's message.
    pub fn parse(
        order: Option<&str>,
        limit: Option<&str>,
        after: Option<String>,
    ) -> Result<Page, String> {
        let ascending = match order {
            None | Some("desc") => false,
            Some("asc") => true,
            Some(o) => return Err(format!("order: {o:?} is not \"asc\" or \"desc\"")),
        };
        let limit = match limit {
            None => 20,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => return Err(format!("limit: {l:?} is not a number from 1 to 100")),
            },
        };
        Ok(Page {
            ascending,
            limit,
            after,
        })
    }

    pub fn of<'a>(&self, items: &'a [Item]) -> Result<ItemList<'a>, String> {
        let mut ordered: Vec<&Item> = items.iter().collect();
        if !self.ascending {
            ordered.reverse();
        }
        let start = match &self.after {
            None => 0,
            Some(after) => {
                ordered
                    .iter()
                    .position(|i| i.id() == after)
                    .ok_or_else(|| format!("after: no input item {after:?} in this response"))?
                    + 1
            }
        };
        let rest = &ordered[start..];
        let data: Vec<&Item> = rest.iter().take(self.limit).copied().collect();
        Ok(ItemList {
            object: "list",
            first_id: data.first().map(|i| i.id()),
            last_id: data.last().map(|i| i.id()),
            has_more: rest.len() > data.len(),
            data,
        })
    }
}

/// The status a chat `finish_reason` gives a response, and why it is incomplete.
fn ending(finish: Option<&str>) -> (Status, Option<IncompleteDetails>) {
    match finish {
        Some("length") => (
            Status::Incomplete,
            Some(IncompleteDetails {
                reason: "max_output_tokens",
            }),
        ),
        Some("content_filter") => (
            Status::Incomplete,
            Some(IncompleteDetails {
                reason: "content_filter",
            }),
        ),
        _ => (Status::Completed, None),
    }
}

fn call_item(tail: &str, n: usize, call: &ToolCallOut, status: Status) -> Item {
    Item::FunctionCall {
        id: format!("fc_{tail}_{n}"),
        call_id: call
            .id
            .clone()
            .unwrap_or_else(|| format!("call_{tail}_{n}")),
        name: call.function.name.clone().unwrap_or_default(),
        arguments: call.function.arguments.clone().unwrap_or_default(),
        status,
    }
}

/// A whole (non-streamed) answer, filled into `skeleton`.
pub fn from_chat(resp: &ChatResponse, mut skeleton: ResponseObject) -> ResponseObject {
    let tail = id_tail(&skeleton.id).to_string();
    let (status, incomplete) = ending(resp.finish_reason());
    let item_status = if status == Status::Incomplete {
        Status::Incomplete
    } else {
        Status::Completed
    };
    let text = resp.text();
    let calls = resp
        .content()
        .map(|m| m.tool_calls.as_slice())
        .unwrap_or_default();
    let mut output = Vec::new();
    if !text.is_empty() || calls.is_empty() {
        output.push(Item::Message {
            id: format!("msg_{tail}"),
            status: item_status,
            role: Role::Assistant,
            content: vec![PartOut::output_text(text)],
        });
    }
    for (n, call) in calls.iter().enumerate() {
        output.push(call_item(&tail, n, call, Status::Completed));
    }
    skeleton.status = status;
    skeleton.incomplete_details = incomplete;
    skeleton.output = output;
    skeleton.usage = Some(resp.usage.unwrap_or_default().into());
    skeleton
}

// ---- streams ----

/// One stream event; serialised with its `type` and, beside it, its `sequence_number`.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum Event<'a> {
    #[serde(rename = "response.created")]
    Created { response: &'a ResponseObject },
    #[serde(rename = "response.in_progress")]
    InProgress { response: &'a ResponseObject },
    #[serde(rename = "response.output_item.added")]
    ItemAdded { output_index: usize, item: &'a Item },
    #[serde(rename = "response.content_part.added")]
    PartAdded {
        item_id: &'a str,
        output_index: usize,
        content_index: usize,
        part: &'a PartOut,
    },
    #[serde(rename = "response.output_text.delta")]
    TextDelta {
        item_id: &'a str,
        output_index: usize,
        content_index: usize,
        delta: &'a str,
        /// Always `[]` (no log probabilities are asked of the engine); the SDK's event type requires the field.
        logprobs: [(); 0],
    },
    #[serde(rename = "response.output_text.done")]
    TextDone {
        item_id: &'a str,
        output_index: usize,
        content_index: usize,
        text: &'a str,
        logprobs: [(); 0],
    },
    #[serde(rename = "response.content_part.done")]
    PartDone {
        item_id: &'a str,
        output_index: usize,
        content_index: usize,
        part: &'a PartOut,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    ArgumentsDelta {
        item_id: &'a str,
        output_index: usize,
        delta: &'a str,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    ArgumentsDone {
        item_id: &'a str,
        output_index: usize,
        name: &'a str,
        arguments: &'a str,
    },
    #[serde(rename = "response.output_item.done")]
    ItemDone { output_index: usize, item: &'a Item },
    #[serde(rename = "response.completed")]
    Completed { response: &'a ResponseObject },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: &'a ResponseObject },
    #[serde(rename = "response.failed")]
    Failed { response: &'a ResponseObject },
}

#[derive(Serialize)]
struct Sequenced<'a> {
    #[serde(flatten)]
    event: &'a Event<'a>,
    sequence_number: u64,
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::Created { .. } => "response.created",
            Event::InProgress { .. } => "response.in_progress",
            Event::ItemAdded { .. } => "response.output_item.added",
            Event::PartAdded { .. } => "response.content_part.added",
            Event::TextDelta { .. } => "response.output_text.delta",
            Event::TextDone { .. } => "response.output_text.done",
            Event::PartDone { .. } => "response.content_part.done",
            Event::ArgumentsDelta { .. } => "response.function_call_arguments.delta",
            Event::ArgumentsDone { .. } => "response.function_call_arguments.done",
            Event::ItemDone { .. } => "response.output_item.done",
            Event::Completed { .. } => "response.completed",
            Event::Incomplete { .. } => "response.incomplete",
            Event::Failed { .. } => "response.failed",
        }
    }
}

/// What is open in the output: the last item, while the engine may still add to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Message,
    /// A tool call, by its chat `index`.
    Call(usize),
}

/// Turns an engine's OpenAI SSE stream into Responses events, incrementally: each engine event is translated as
/// soon as it is complete. The closing `response.completed` waits for the usage-only chunk that follows
/// `finish_reason` (chat's `include_usage`), so it carries the real token counts. The response it ends with is
/// kept ([`StreamTranslator::finished`]) for the store.
pub struct StreamTranslator {
    response: ResponseObject,
    sse: SseDecoder,
    seq: u64,
    open: Option<Open>,
    /// The id of the open tool call, when the engine gave one.
    call_id: Option<String>,
    calls: usize,
    finish_reason: Option<String>,
    usage: Usage,
    ended: bool,
}

impl StreamTranslator {
    /// `skeleton`: the response as it begins ([`ResponsesIn::skeleton`]).
    pub fn new(skeleton: ResponseObject) -> Self {
        StreamTranslator {
            response: skeleton,
            sse: SseDecoder::default(),
            seq: 0,
            open: None,
            call_id: None,
            calls: 0,
            finish_reason: None,
            usage: Usage::default(),
            ended: false,
        }
    }

    /// The whole response, once the stream has ended (completed, incomplete or failed).
    pub fn finished(&self) -> Option<&ResponseObject> {
        self.ended.then_some(&self.response)
    }

    fn emit(&mut self, event: Event<'_>, out: &mut Vec<Vec<u8>>) {
        let mut frame = format!("event: {}\ndata: ", event.name()).into_bytes();
        let body = Sequenced {
            event: &event,
            sequence_number: self.seq,
        };
        frame.extend(serde_json::to_vec(&body).unwrap_or_default());
        frame.extend(b"\n\n");
        self.seq += 1;
        out.push(frame);
    }

    fn tail(&self) -> String {
        id_tail(&self.response.id).to_string()
    }

    /// Closes the open item: its text part (`output_text.done`, `content_part.done`) or its arguments
    /// (`function_call_arguments.done`), then `output_item.done`.
    fn close(&mut self, status: Status, out: &mut Vec<Vec<u8>>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let index = self.response.output.len() - 1;
        // The open item is the last of `output` (it was pushed when opened and nothing is pushed while it is).
        let mut item = self.response.output[index].clone();
        match (&mut item, open) {
            (
                Item::Message {
                    id,
                    content,
                    status: s,
                    ..
                },
                Open::Message,
            ) => {
                *s = status;
                let text = match content.first() {
                    Some(PartOut::OutputText { text, .. }) => text.clone(),
                    _ => String::new(),
                };
                let part = PartOut::output_text(text.clone());
                let id = id.clone();
                self.emit(
                    Event::TextDone {
                        item_id: &id,
                        output_index: index,
                        content_index: 0,
                        text: &text,
                        logprobs: [],
                    },
                    out,
                );
                self.emit(
                    Event::PartDone {
                        item_id: &id,
                        output_index: index,
                        content_index: 0,
                        part: &part,
                    },
                    out,
                );
            }
            (
                Item::FunctionCall {
                    id,
                    name,
                    arguments,
                    status: s,
                    ..
                },
                Open::Call(_),
            ) => {
                *s = Status::Completed;
                let (id, name, arguments) = (id.clone(), name.clone(), arguments.clone());
                self.emit(
                    Event::ArgumentsDone {
                        item_id: &id,
                        output_index: index,
                        name: &name,
                        arguments: &arguments,
                    },
                    out,
                );
            }
            _ => {}
        }
        self.emit(
            Event::ItemDone {
                output_index: index,
                item: &item,
            },
            out,
        );
        self.response.output[index] = item;
    }

    fn text(&mut self, delta: &str, out: &mut Vec<Vec<u8>>) {
        if self.open != Some(Open::Message) {
            self.close(Status::Completed, out);
            let id = format!("msg_{}", self.tail());
            // A second message (text after a tool call) gets its own id.
            let id = if self.response.output.iter().any(|i| i.id() == id) {
                format!("{id}_{}", self.response.output.len())
            } else {
                id
            };
            let item = Item::Message {
                id: id.clone(),
                status: Status::InProgress,
                role: Role::Assistant,
                content: Vec::new(),
            };
            let index = self.response.output.len();
            self.emit(
                Event::ItemAdded {
                    output_index: index,
                    item: &item,
                },
                out,
            );
            let part = PartOut::output_text("");
            self.emit(
                Event::PartAdded {
                    item_id: &id,
                    output_index: index,
                    content_index: 0,
                    part: &part,
                },
                out,
            );
            self.response.output.push(Item::Message {
                id,
                status: Status::InProgress,
                role: Role::Assistant,
                content: vec![part],
            });
            self.open = Some(Open::Message);
        }
        let index = self.response.output.len() - 1;
        let item_id = self.response.output[index].id().to_string();
        if let Some(Item::Message { content, .. }) = self.response.output.last_mut() {
            if let Some(PartOut::OutputText { text, .. }) = content.first_mut() {
                text.push_str(delta);
            }
        }
        self.emit(
            Event::TextDelta {
                item_id: &item_id,
                output_index: index,
                content_index: 0,
                delta,
                logprobs: [],
            },
            out,
        );
    }

    fn call(&mut self, call: &ToolCallOut, out: &mut Vec<Vec<u8>>) {
        let n = call.index.unwrap_or(0);
        // A new id under the same index is a new call too (some engines send index 0 for each).
        let same = self.open == Some(Open::Call(n))
            && call
                .id
                .as_ref()
                .is_none_or(|id| Some(id) == self.call_id.as_ref());
        if !same {
            self.close(Status::Completed, out);
            self.call_id = call.id.clone();
            let tail = self.tail();
            let mut item = call_item(&tail, self.calls, call, Status::InProgress);
            self.calls += 1;
            if let Item::FunctionCall { arguments, .. } = &mut item {
                arguments.clear();
            }
            let index = self.response.output.len();
            self.emit(
                Event::ItemAdded {
                    output_index: index,
                    item: &item,
                },
                out,
            );
            self.response.output.push(item);
            self.open = Some(Open::Call(n));
        }
        let index = self.response.output.len() - 1;
        let Some(Item::FunctionCall {
            id,
            name,
            arguments,
            ..
        }) = self.response.output.last_mut()
        else {
            return;
        };
        if name.is_empty() {
            if let Some(n) = &call.function.name {
                name.clone_from(n);
            }
        }
        let Some(delta) = call.function.arguments.as_deref().filter(|a| !a.is_empty()) else {
            return;
        };
        arguments.push_str(delta);
        let item_id = id.clone();
        self.emit(
            Event::ArgumentsDelta {
                item_id: &item_id,
                output_index: index,
                delta,
            },
            out,
        );
    }

    fn chunk(&mut self, chunk: ChatResponse, out: &mut Vec<Vec<u8>>) {
        if let Some(u) = chunk.usage {
            self.usage = u;
        }
        if let Some(delta) = chunk.content() {
            if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
                self.text(text, out);
            }
            for call in &delta.tool_calls {
                self.call(call, out);
            }
        }
        if let Some(reason) = chunk.finish_reason() {
            self.finish_reason = Some(reason.to_string());
            let (status, _) = ending(Some(reason));
            self.close(status, out);
        }
    }

    /// The engine's stream is over: close what is open and send the whole response.
    fn end(&mut self, out: &mut Vec<Vec<u8>>) {
        let (status, incomplete) = ending(self.finish_reason.as_deref());
        self.close(status, out);
        self.ended = true;
        self.response.status = status;
        self.response.incomplete_details = incomplete;
        self.response.usage = Some(self.usage.into());
        let response = self.response.clone();
        let event = match status {
            Status::Incomplete => Event::Incomplete {
                response: &response,
            },
            _ => Event::Completed {
                response: &response,
            },
        };
        self.emit(event, out);
    }
}

impl super::ChunkEvents for StreamTranslator {
    fn decoder(&mut self) -> &mut SseDecoder {
        &mut self.sse
    }

    fn ended(&self) -> bool {
        self.ended
    }

    fn answered(&self) -> bool {
        self.finish_reason.is_some()
    }

    fn on_chunk(&mut self, chunk: ChatResponse, out: &mut Vec<Vec<u8>>) {
        self.chunk(chunk, out);
    }

    fn on_end(&mut self, out: &mut Vec<Vec<u8>>) {
        self.end(out);
    }

    fn on_error(&mut self, message: &str) -> Vec<Vec<u8>> {
        StreamTranslate::fail(self, message)
    }
}

impl StreamTranslate for StreamTranslator {
    fn begin(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let response = self.response.clone();
        self.emit(
            Event::Created {
                response: &response,
            },
            &mut out,
        );
        self.emit(
            Event::InProgress {
                response: &response,
            },
            &mut out,
        );
        out
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        super::feed_chunks(self, bytes)
    }

    fn finish(&mut self, _total_ns: u64) -> Vec<Vec<u8>> {
        super::finish_chunks(self)
    }

    fn fail(&mut self, message: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        self.ended = true;
        self.response.status = Status::Failed;
        self.response.error = Some(ResponseError {
            code: "server_error",
            message: message.to_string(),
        });
        self.response.usage = Some(self.usage.into());
        let response = self.response.clone();
        self.emit(
            Event::Failed {
                response: &response,
            },
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests;
