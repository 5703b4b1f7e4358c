//! Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`): wire shapes and their typed translation
//! to and from OpenAI chat completions, which every engine speaks. Pure: no I/O.
//!
//! Request: `system` becomes the first message; `tool_result` blocks become `role: "tool"` messages placed before
//! the rest of their user turn; assistant `tool_use` blocks become `tool_calls`; images become `image_url` parts
//! (base64 sources as data URLs); `stop_sequences` → `stop`, `tool_choice` any → "required", `metadata.user_id` →
//! `user`, structured outputs (`output_format` or `output_config.format`, type `json_schema`) → a strict
//! `response_format` json_schema, as LiteLLM's adapter maps them. Thinking blocks in the history are dropped (local chat templates have no slot for them).
//! Answer: `finish_reason` stop → `end_turn` (or `stop_sequence` when the engine says which one hit), length →
//! `max_tokens`, tool calls → `tool_use`; tool arguments are parsed into `input` objects. Streams are translated
//! event by event (`message_start`, `ping`, per block `content_block_start`/`_delta`/`_stop`, `message_delta`,
//! `message_stop`; `error` when the engine fails mid-way).

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openai::{
    ChatMessage, ChatRequest, ChatResponse, FunctionCall, FunctionDef, ImageUrl, JsonSchema,
    MessageContent, NamedFunction, Part, ResponseFormat, SseDecoder, StreamOptions, Tool, ToolCall,
    ToolChoice, Usage,
};
use super::{ErrorKind, StreamTranslate};

/// A string, or a list of `T` (Anthropic accepts both for `content` and `system`). Deserialised by hand so that
/// a malformed block gets serde's precise message rather than "did not match any variant".
#[derive(Debug, Clone, PartialEq)]
pub enum StringOr<T> {
    String(String),
    List(Vec<T>),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for StringOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(StringOr::String(s)),
            v @ Value::Array(_) => serde_json::from_value(v)
                .map(StringOr::List)
                .map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(
                "expected a string or a list of content blocks",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct MessagesIn {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub messages: Vec<MessageIn>,
    #[serde(default)]
    pub system: Option<StringOr<Block>>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    #[serde(default)]
    pub stop_sequences: Vec<String>,
    pub stream: Option<bool>,
    #[serde(default)]
    pub tools: Vec<ToolIn>,
    pub tool_choice: Option<ToolChoiceIn>,
    pub metadata: Option<Metadata>,
    /// Structured outputs (the `structured-outputs` beta's spelling).
    pub output_format: Option<OutputFormat>,
    /// Structured outputs (the later spelling); its other keys (`effort`) are ignored.
    pub output_config: Option<OutputConfig>,
}

/// `{"type": "json_schema", "schema": {...}}`: the answer is JSON that validates against `schema`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputFormat {
    JsonSchema { schema: Value },
}

#[derive(Debug, Deserialize)]
pub struct OutputConfig {
    pub format: Option<OutputFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: Role,
    pub content: StringOr<Block>,
}

/// A content block. Fields we do not use (`cache_control`, `citations`, `signature`) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Option<StringOr<Block>>,
        #[serde(default)]
        is_error: bool,
    },
    Thinking {},
    RedactedThinking {},
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

impl ImageSource {
    fn url(&self) -> String {
        match self {
            ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
            ImageSource::Url { url } => url.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ToolIn {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub input_schema: Option<Value>,
    /// Client tools have none or "custom"; Anthropic's server tools (web search, ...) name their kind here.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoiceIn {
    Auto {
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    Any {
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    Tool {
        name: String,
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    None {},
}

#[derive(Debug, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub user_id: Option<String>,
}

/// What the translated request is for: a generation needs `max_tokens`, a token count does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Generate,
    CountTokens,
}

impl MessagesIn {
    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The OpenAI chat request for this call, or the message of a 400 `invalid_request_error`.
    pub fn to_openai(&self, purpose: Purpose) -> Result<ChatRequest, String> {
        if self.model.is_empty() {
            return Err("model: field required".into());
        }
        if self.messages.is_empty() {
            return Err("messages: at least one message is required".into());
        }
        let max_tokens = match (purpose, self.max_tokens) {
            (Purpose::Generate, None) => return Err("max_tokens: field required".into()),
            (Purpose::Generate, Some(n)) if n < 1 => {
                return Err(format!("max_tokens: must be at least 1, got {n}"))
            }
            (Purpose::Generate, n) => n,
            (Purpose::CountTokens, _) => None,
        };
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            // An empty system prompt is no system prompt (templates add their default only when none is given).
            let text = system_text(system)?;
            if !text.is_empty() {
                messages.push(ChatMessage::text("system", text));
            }
        }
        let last = self.messages.len() - 1;
        for (i, m) in self.messages.iter().enumerate() {
            // As Anthropic: every turn needs content, except a final assistant turn (a prefill).
            let empty = match &m.content {
                StringOr::String(s) => s.is_empty(),
                StringOr::List(b) => b.is_empty(),
            };
            if empty && !(i == last && m.role == Role::Assistant) {
                return Err(format!(
                    "messages[{i}]: content must be non-empty (only a final assistant turn may be empty)"
                ));
            }
            convert_message(m, &mut messages).map_err(|e| format!("messages[{i}]: {e}"))?;
        }
        let tools = self
            .tools
            .iter()
            .map(convert_tool)
            .collect::<Result<Vec<_>, _>>()?;
        let (tool_choice, parallel) = match &self.tool_choice {
            None => (None, None),
            Some(c) => convert_tool_choice(c),
        };
        let stream = purpose == Purpose::Generate && self.streaming();
        let mut req = ChatRequest {
            model: self.model.clone(),
            messages,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_tokens,
            stop: (!self.stop_sequences.is_empty()).then(|| self.stop_sequences.clone()),
            tool_choice: tool_choice.filter(|_| !tools.is_empty()),
            parallel_tool_calls: parallel.filter(|_| !tools.is_empty()),
            tools,
            user: self.metadata.as_ref().and_then(|m| m.user_id.clone()),
            response_format: self.response_format(),
            ..ChatRequest::default()
        };
        if req.stop.is_some() {
            req.report_stop_word();
        }
        Ok(req)
    }
}

impl MessagesIn {
    /// `output_format` wins over `output_config.format` when a request has both.
    fn response_format(&self) -> Option<ResponseFormat> {
        let format = self
            .output_format
            .as_ref()
            .or_else(|| self.output_config.as_ref()?.format.as_ref())?;
        match format {
            OutputFormat::JsonSchema { schema } => Some(ResponseFormat::JsonSchema {
                json_schema: JsonSchema {
                    name: "output".into(),
                    schema: schema.clone(),
                    strict: true,
                },
            }),
        }
    }
}

fn system_text(system: &StringOr<Block>) -> Result<String, String> {
    match system {
        StringOr::String(s) => Ok(s.clone()),
        StringOr::List(blocks) => blocks
            .iter()
            .map(|b| match b {
                Block::Text { text } => Ok(text.as_str()),
                _ => Err("system: only text blocks are allowed".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("\n")),
    }
}

fn blocks(content: &StringOr<Block>) -> Vec<Block> {
    match content {
        StringOr::String(s) => vec![Block::Text { text: s.clone() }],
        StringOr::List(b) => b.clone(),
    }
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

fn convert_message(m: &MessageIn, out: &mut Vec<ChatMessage>) -> Result<(), String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks(&m.content) {
        match (m.role, block) {
            (_, Block::Thinking {} | Block::RedactedThinking {}) => {}
            (Role::User, Block::Text { text }) => parts.push(Part::Text { text }),
            (Role::User, Block::Image { source }) => parts.push(Part::ImageUrl {
                image_url: ImageUrl { url: source.url() },
            }),
            (
                Role::User,
                Block::ToolResult {
                    tool_use_id,
                    content,
                    ..
                },
            ) => {
                // Tool answers go first, right after the assistant turn that asked for them.
                let content = match &content {
                    None => String::new(),
                    Some(c) => tool_result_text(c)?,
                };
                out.push(ChatMessage {
                    role: "tool".into(),
                    content: Some(MessageContent::Text(content)),
                    tool_calls: Vec::new(),
                    tool_call_id: Some(tool_use_id),
                });
            }
            (Role::User, Block::ToolUse { .. }) => {
                return Err("tool_use blocks belong in assistant turns".into())
            }
            (Role::Assistant, Block::Text { text: t }) => text.push_str(&t),
            (Role::Assistant, Block::ToolUse { id, name, input }) => tool_calls.push(ToolCall {
                id,
                kind: "function",
                function: FunctionCall {
                    name,
                    arguments: if input.is_null() {
                        "{}".into()
                    } else {
                        input.to_string()
                    },
                },
            }),
            (Role::Assistant, Block::Image { .. } | Block::ToolResult { .. }) => {
                return Err("assistant turns may hold only text, tool_use and thinking".into())
            }
        }
    }
    match m.role {
        Role::User if !parts.is_empty() => out.push(ChatMessage {
            role: "user".into(),
            content: Some(simplify(parts)),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }),
        Role::User => {}
        Role::Assistant => out.push(ChatMessage {
            role: "assistant".into(),
            content: (!text.is_empty() || tool_calls.is_empty())
                .then_some(MessageContent::Text(text)),
            tool_calls,
            tool_call_id: None,
        }),
    }
    Ok(())
}

fn tool_result_text(content: &StringOr<Block>) -> Result<String, String> {
    let texts = blocks(content)
        .into_iter()
        .filter_map(|b| match b {
            Block::Text { text } => Some(Ok(text)),
            Block::Image { .. } => Some(Err(
                "images inside tool_result are not supported by OpenAI-style engines".to_string(),
            )),
            _ => None,
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(texts.join("\n"))
}

fn convert_tool(t: &ToolIn) -> Result<Tool, String> {
    if let Some(kind) = t.kind.as_deref().filter(|k| *k != "custom") {
        return Err(format!(
            "tools: server tool {kind:?} ({}) is not available on local models",
            t.name
        ));
    }
    Ok(Tool {
        kind: "function",
        function: FunctionDef {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t
                .input_schema
                .clone()
                .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        },
    })
}

fn convert_tool_choice(c: &ToolChoiceIn) -> (Option<ToolChoice>, Option<bool>) {
    let no_parallel = |d: bool| d.then_some(false);
    match c {
        ToolChoiceIn::Auto {
            disable_parallel_tool_use,
        } => (
            Some(ToolChoice::Mode("auto")),
            no_parallel(*disable_parallel_tool_use),
        ),
        ToolChoiceIn::Any {
            disable_parallel_tool_use,
        } => (
            Some(ToolChoice::Mode("required")),
            no_parallel(*disable_parallel_tool_use),
        ),
        ToolChoiceIn::Tool {
            name,
            disable_parallel_tool_use,
        } => (
            Some(ToolChoice::Function {
                kind: "function",
                function: NamedFunction { name: name.clone() },
            }),
            no_parallel(*disable_parallel_tool_use),
        ),
        ToolChoiceIn::None {} => (Some(ToolChoice::Mode("none")), None),
    }
}

// ---- answers ----

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockOut {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    Thinking {
        thinking: String,
        signature: String,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct UsageOut {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl From<Usage> for UsageOut {
    /// Anthropic counts cache reads apart from `input_tokens`; OpenAI's `prompt_tokens` includes them.
    fn from(u: Usage) -> Self {
        let cached = u.cached_tokens().min(u.prompt_tokens);
        UsageOut {
            input_tokens: u.prompt_tokens - cached,
            output_tokens: u.completion_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: cached,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: String,
    pub content: Vec<BlockOut>,
    pub stop_reason: Option<&'static str>,
    pub stop_sequence: Option<String>,
    pub usage: UsageOut,
}

#[derive(Debug, Serialize)]
pub struct CountTokensOut {
    pub input_tokens: u64,
}

/// OpenAI's `finish_reason` in Anthropic's words.
pub fn stop_reason(
    finish: Option<&str>,
    stop_sequence: Option<&str>,
    tool_use: bool,
) -> &'static str {
    match finish {
        _ if tool_use => "tool_use",
        Some("tool_calls") => "tool_use",
        Some("length") => "max_tokens",
        Some("content_filter") => "refusal",
        _ if stop_sequence.is_some() => "stop_sequence",
        _ => "end_turn",
    }
}

fn message_id(engine_id: &str) -> String {
    let tail = engine_id.strip_prefix("chatcmpl-").unwrap_or(engine_id);
    if tail.is_empty() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("msg_{nanos:x}")
    } else {
        format!("msg_{tail}")
    }
}

/// Tool arguments are JSON text on OpenAI's side and an object on Anthropic's; text that is not a JSON object
/// (a model's malformed call) is kept whole under `"arguments"` rather than lost.
fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return serde_json::json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => serde_json::json!({ "arguments": arguments }),
    }
}

/// A whole (non-streamed) answer.
pub fn from_openai(resp: &ChatResponse, model: &str) -> MessageOut {
    let mut content = Vec::new();
    let msg = resp.content();
    if let Some(thinking) = msg
        .and_then(|m| m.reasoning_content.clone())
        .filter(|t| !t.is_empty())
    {
        content.push(BlockOut::Thinking {
            thinking,
            signature: String::new(),
        });
    }
    let text = resp.text();
    if !text.is_empty() {
        content.push(BlockOut::Text { text });
    }
    let calls = msg.map(|m| m.tool_calls.as_slice()).unwrap_or_default();
    for (i, call) in calls.iter().enumerate() {
        content.push(BlockOut::ToolUse {
            id: call.id.clone().unwrap_or_else(|| format!("toolu_{i}")),
            name: call.function.name.clone().unwrap_or_default(),
            input: tool_input(call.function.arguments.as_deref().unwrap_or_default()),
        });
    }
    let stop_sequence = resp.stop_sequence();
    MessageOut {
        id: message_id(&resp.id),
        kind: "message",
        role: "assistant",
        model: model.to_string(),
        content,
        stop_reason: Some(stop_reason(
            resp.finish_reason(),
            stop_sequence.as_deref(),
            !calls.is_empty(),
        )),
        stop_sequence,
        usage: resp.usage.unwrap_or_default().into(),
    }
}

// ---- streams ----

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent<'a> {
    MessageStart {
        message: MessageOut,
    },
    Ping,
    ContentBlockStart {
        index: usize,
        content_block: BlockOut,
    },
    ContentBlockDelta {
        index: usize,
        delta: Delta<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDelta,
        usage: UsageOut,
    },
    MessageStop,
    Error {
        error: ErrorDetail<'a>,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Delta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
    ThinkingDelta { thinking: &'a str },
}

#[derive(Debug, Serialize)]
pub struct MessageDelta {
    pub stop_reason: &'static str,
    pub stop_sequence: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: &'a str,
}

impl StreamEvent<'_> {
    fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::Ping => "ping",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Error { .. } => "error",
        }
    }

    /// `event: <type>\ndata: <json>\n\n`: clients pick events by the `event:` line.
    pub fn to_sse(&self) -> Vec<u8> {
        let mut out = format!("event: {}\ndata: ", self.name()).into_bytes();
        out.extend(serde_json::to_vec(self).unwrap_or_default());
        out.extend(b"\n\n");
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text,
    Thinking,
    /// A tool call, by its OpenAI `index`.
    Tool(usize),
}

/// Turns an engine's OpenAI SSE stream into Anthropic events, incrementally: each engine event is translated as
/// soon as it is complete. The closing `message_delta` waits for the usage-only chunk that follows
/// `finish_reason` (OpenAI's `include_usage`), so it carries the real token counts.
pub struct StreamTranslator {
    model: String,
    sse: SseDecoder,
    open: Option<(usize, OpenBlock)>,
    next_index: usize,
    tool_use: bool,
    /// The id of the open tool call, when the engine gave one.
    tool_id: Option<String>,
    finish_reason: Option<String>,
    stop_sequence: Option<String>,
    usage: Usage,
    ended: bool,
}

impl StreamTranslator {
    pub fn new(model: &str) -> Self {
        StreamTranslator {
            model: model.to_string(),
            sse: SseDecoder::default(),
            open: None,
            next_index: 0,
            tool_use: false,
            tool_id: None,
            finish_reason: None,
            stop_sequence: None,
            usage: Usage::default(),
            ended: false,
        }
    }

    fn close_block(&mut self, out: &mut Vec<Vec<u8>>) {
        if let Some((index, _)) = self.open.take() {
            out.push(StreamEvent::ContentBlockStop { index }.to_sse());
        }
    }

    /// Makes `kind` the open block (closing another one first); returns its index.
    fn ensure_block(
        &mut self,
        kind: OpenBlock,
        start: impl FnOnce() -> BlockOut,
        out: &mut Vec<Vec<u8>>,
    ) -> usize {
        if let Some((index, open)) = self.open {
            if open == kind {
                return index;
            }
        }
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, kind));
        out.push(
            StreamEvent::ContentBlockStart {
                index,
                content_block: start(),
            }
            .to_sse(),
        );
        index
    }

    fn chunk(&mut self, chunk: ChatResponse, out: &mut Vec<Vec<u8>>) {
        if let Some(u) = chunk.usage {
            self.usage = u;
        }
        if let Some(s) = chunk.stop_sequence() {
            self.stop_sequence = Some(s);
        }
        if let Some(delta) = chunk.content() {
            if let Some(thinking) = delta.reasoning_content.as_deref().filter(|t| !t.is_empty()) {
                let index = self.ensure_block(
                    OpenBlock::Thinking,
                    || BlockOut::Thinking {
                        thinking: String::new(),
                        signature: String::new(),
                    },
                    out,
                );
                out.push(
                    StreamEvent::ContentBlockDelta {
                        index,
                        delta: Delta::ThinkingDelta { thinking },
                    }
                    .to_sse(),
                );
            }
            if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
                let index = self.ensure_block(
                    OpenBlock::Text,
                    || BlockOut::Text {
                        text: String::new(),
                    },
                    out,
                );
                out.push(
                    StreamEvent::ContentBlockDelta {
                        index,
                        delta: Delta::TextDelta { text },
                    }
                    .to_sse(),
                );
            }
            for call in &delta.tool_calls {
                let n = call.index.unwrap_or(0);
                // A new id under the same index is a new call too (some engines send index 0 for each).
                let same = self.open.map(|(_, b)| b) == Some(OpenBlock::Tool(n))
                    && call
                        .id
                        .as_ref()
                        .is_none_or(|id| Some(id) == self.tool_id.as_ref());
                if !same {
                    self.close_block(out);
                    self.tool_id = call.id.clone();
                }
                self.tool_use = true;
                let index = self.ensure_block(
                    OpenBlock::Tool(n),
                    || BlockOut::ToolUse {
                        id: call.id.clone().unwrap_or_else(|| format!("toolu_{n}")),
                        name: call.function.name.clone().unwrap_or_default(),
                        input: serde_json::json!({}),
                    },
                    out,
                );
                if let Some(args) = call.function.arguments.as_deref().filter(|a| !a.is_empty()) {
                    out.push(
                        StreamEvent::ContentBlockDelta {
                            index,
                            delta: Delta::InputJsonDelta { partial_json: args },
                        }
                        .to_sse(),
                    );
                }
            }
        }
        if let Some(reason) = chunk.finish_reason() {
            self.finish_reason = Some(reason.to_string());
            self.close_block(out);
        }
    }

    fn tail(&mut self, out: &mut Vec<Vec<u8>>) {
        self.ended = true;
        self.close_block(out);
        let stop_reason = stop_reason(
            self.finish_reason.as_deref(),
            self.stop_sequence.as_deref(),
            self.tool_use,
        );
        out.push(
            StreamEvent::MessageDelta {
                delta: MessageDelta {
                    stop_reason,
                    stop_sequence: self.stop_sequence.clone(),
                },
                usage: self.usage.into(),
            }
            .to_sse(),
        );
        out.push(StreamEvent::MessageStop.to_sse());
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
        self.tail(out);
    }

    fn on_error(&mut self, message: &str) -> Vec<Vec<u8>> {
        StreamTranslate::fail(self, message)
    }
}

impl StreamTranslate for StreamTranslator {
    fn begin(&mut self) -> Vec<Vec<u8>> {
        let message = MessageOut {
            id: message_id(""),
            kind: "message",
            role: "assistant",
            model: self.model.clone(),
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: UsageOut::default(),
        };
        vec![
            StreamEvent::MessageStart { message }.to_sse(),
            StreamEvent::Ping.to_sse(),
        ]
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        super::feed_chunks(self, bytes)
    }

    fn finish(&mut self, _total_ns: u64) -> Vec<Vec<u8>> {
        super::finish_chunks(self)
    }

    fn fail(&mut self, message: &str) -> Vec<Vec<u8>> {
        self.ended = true;
        vec![StreamEvent::Error {
            error: ErrorDetail {
                kind: "api_error",
                message,
            },
        }
        .to_sse()]
    }
}

// ---- errors ----

fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadRequest | ErrorKind::Conflict | ErrorKind::Unprocessable => {
            "invalid_request_error"
        }
        ErrorKind::Unauthorized => "authentication_error",
        ErrorKind::Forbidden => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::PayloadTooLarge => "request_too_large",
        ErrorKind::Unavailable => "overloaded_error",
        ErrorKind::NotImplemented
        | ErrorKind::BadGateway
        | ErrorKind::GatewayTimeout
        | ErrorKind::Internal
        | ErrorKind::InsufficientMemory => "api_error",
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorDetail<'a>,
}

/// `{"type":"error","error":{"type","message"}}`.
pub fn error_body(kind: ErrorKind, message: &str) -> Vec<u8> {
    let body = ErrorEnvelope {
        kind: "error",
        error: ErrorDetail {
            kind: error_type(kind),
            message,
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests;
